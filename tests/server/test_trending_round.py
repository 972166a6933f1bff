"""Trending releases inside a run, without Flower (nodes are faked): budget stop, calibration, resume."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import dp_accounting
import numpy as np
import pytest
from coordinator_toy import POPULATION, FakeNodes, drop_last_lines

from server.audit.verify import verify_ledger
from server.ledger import PrivacyLedger
from server.rounds.coordinator import Coordinator
from server.rounds.privacy_plan import PrivacyPlan
from server.trending.trending_query import TrendingReplies
from server.trending.trending_round import TrendingSchedule
from shared.config import FedhomeConfig, with_overrides
from shared.model.params import ParamLayout
from shared.privacy.accounting import RoundEvent, pld_epsilon
from shared.run_folder import RunFolder
from shared.signing import Ed25519PrivateKey, generate_private_key

N_ITEMS, K = 5, 2


def fake_trending_query(grid: Any, assignment: dict[int, np.ndarray], **_: Any) -> TrendingReplies:
    """Every sampled user touched item 0 and item 3."""
    count = sum(len(slots) for slots in assignment.values())
    total = np.zeros(N_ITEMS)
    total[[0, 3]] = count / math.sqrt(K)
    return TrendingReplies(total, count, 0, 0)


def config_of(folder: Path, rounds: int, **trending: str) -> FedhomeConfig:
    settings = {
        "federated.run_dir": str(folder),
        "federated.rounds": str(rounds),
        "federated.sample_rate": "0.5",
        "federated.eval_every": "0",
        "privacy.noise_multiplier": "1.0",
        "privacy.target_epsilon": "100",
        "privacy.seed": "5",
        "trending.max_items": str(K),
        "trending.as_of_s": "1000",
        **{f"trending.{name}": value for name, value in trending.items()},
    }
    config: FedhomeConfig = with_overrides(FedhomeConfig(), settings)
    return config


def make(config: FedhomeConfig, key: Ed25519PrivateKey) -> tuple[Coordinator, TrendingSchedule]:
    """A coordinator with fake nodes and the trending hook, whose query to the nodes is faked too."""
    run = RunFolder(config.federated.run_dir)
    run.create()
    ledger = PrivacyLedger(run.ledger, signing_key=key)
    layout = ParamLayout(("w",), ((12,),))
    initial = np.linspace(-1, 1, 12, dtype=np.float32)
    schedule = TrendingSchedule(run.root, n_items=N_ITEMS, query=fake_trending_query)
    coordinator = Coordinator(
        config,
        run,
        POPULATION,
        initial,
        layout,
        ledger,
        evaluate=lambda p: {},
        transport=FakeNodes(),
        hooks=[schedule],
    )
    return coordinator, schedule


def run(config: FedhomeConfig, key: Ed25519PrivateKey) -> tuple[Coordinator, TrendingSchedule]:
    coordinator, schedule = make(config, key)
    coordinator.resume()
    coordinator.run(None, progress=False)
    return coordinator, schedule


TRAIN = RoundEvent(sample_rate=0.5, noise_multiplier=1.0)


@pytest.mark.integration
def test_releases_are_accounted_in_order_and_the_final_one_is_not_repeated(tmp_path: Path) -> None:
    key = generate_private_key()
    config = config_of(tmp_path / "run", 3, every_rounds="2", final="true", noise_multiplier="3")
    coordinator, schedule = run(config, key)
    entries = coordinator.ledger.entries()
    assert [e.get("round", e.get("after_round")) for e in entries] == [1, 2, 2, 3, 3]
    assert [e.get("kind") for e in entries].count("trending_counts") == 2 and not schedule.refused
    release = RoundEvent(sample_rate=1.0, noise_multiplier=3.0)
    expected = pld_epsilon([TRAIN, TRAIN, release, TRAIN, release], delta=coordinator.plan.delta)
    assert coordinator.epsilon() == pytest.approx(expected, rel=1e-12)
    counts = np.load(tmp_path / "run" / entries[-1]["counts_file"])
    assert counts.shape == (N_ITEMS,) and entries[-1]["count_noise_std"] == pytest.approx(3 * math.sqrt(K))
    # the window end is the configured one, and the ledger says so (issue 16 part 5)
    assert {(e["as_of_s"], e["as_of_source"]) for e in entries if "after_round" in e} == {
        (1000, "configured")
    }
    report = verify_ledger(tmp_path / "run", key.public_key())
    assert report.ok and [row["counts_file_ok"] for row in report.trending] == [True, True]


@pytest.mark.integration
def test_subsampled_releases_are_accounted_as_poisson_sampled_gaussians_and_verify(tmp_path: Path) -> None:
    key = generate_private_key()
    config = config_of(tmp_path / "run", 2, every_rounds="1", noise_multiplier="3", sample_rate="0.25")
    coordinator, _ = run(config, key)
    entries = [e for e in coordinator.ledger.entries() if e.get("kind") == "trending_counts"]
    assert [e["sample_rate"] for e in entries] == [0.25, 0.25]
    assert entries[-1]["count_noise_std"] == pytest.approx(3 * math.sqrt(K) / 0.25)
    accountant = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-4)
    train = dp_accounting.PoissonSampledDpEvent(0.5, dp_accounting.GaussianDpEvent(1.0))
    release = dp_accounting.PoissonSampledDpEvent(0.25, dp_accounting.GaussianDpEvent(3.0))
    accountant.compose(dp_accounting.ComposedDpEvent([train, release, train, release]))
    independent = accountant.get_epsilon(coordinator.plan.delta)
    assert coordinator.epsilon() == pytest.approx(independent, rel=2e-3)
    report = verify_ledger(tmp_path / "run", key.public_key())
    assert report.ok, report.problems
    assert report.recomputed_epsilon == pytest.approx(independent, rel=2e-3)


def test_a_release_over_budget_is_refused_and_spends_nothing(tmp_path: Path) -> None:
    key = generate_private_key()
    config = config_of(tmp_path / "run", 2, final="true", noise_multiplier="0.2")
    budget = pld_epsilon([TRAIN, TRAIN], delta=PrivacyPlan.build(config, 10).delta) * 1.5
    config = with_overrides(config, {"privacy.target_epsilon": str(budget)})
    coordinator, schedule = run(config, key)
    assert [e.get("kind") for e in coordinator.ledger.entries()] == [None, None]
    assert len(schedule.refused) == 1 and "past the budget" in schedule.refused[0]
    assert coordinator.epsilon() == pytest.approx(budget / 1.5, rel=1e-12)
    assert not (tmp_path / "run" / "trending").exists()


@pytest.mark.integration
def test_calibration_covers_the_planned_releases() -> None:
    base = {"federated.rounds": "20", "federated.sample_rate": "0.1", "privacy.target_epsilon": "3"}
    plain: FedhomeConfig = with_overrides(FedhomeConfig(), base)
    with_releases: FedhomeConfig = with_overrides(
        plain, {"trending.every_rounds": "10", "trending.final": "true", "trending.noise_multiplier": "4"}
    )
    assert with_releases.trending.releases(20) == 2
    z0, z1 = PrivacyPlan.build(plain, 1000), PrivacyPlan.build(with_releases, 1000)
    assert z1.noise_multiplier > z0.noise_multiplier
    release = RoundEvent(sample_rate=1.0, noise_multiplier=4.0)
    train = RoundEvent(sample_rate=0.1, noise_multiplier=z1.noise_multiplier)
    assert pld_epsilon([train] * 20 + [release] * 2, delta=z1.delta) <= 3.0
    tighter = RoundEvent(sample_rate=0.1, noise_multiplier=z1.noise_multiplier * 0.99)
    assert pld_epsilon([tighter] * 20 + [release] * 2, delta=z1.delta) > 3.0 * 0.995


@pytest.mark.integration
def test_a_release_killed_before_its_ledger_entry_is_restored_on_resume(tmp_path: Path) -> None:
    key = generate_private_key()
    config = config_of(tmp_path / "run", 2, every_rounds="1", noise_multiplier="3")
    run(config, key)
    drop_last_lines(tmp_path / "run" / "ledger.jsonl", 1)  # the release after round 2 never reached it
    coordinator, _ = run(config_of(tmp_path / "run", 3, every_rounds="1", noise_multiplier="3"), key)
    entries = coordinator.ledger.entries()
    assert [e.get("round", e.get("after_round")) for e in entries] == [1, 1, 2, 2, 3, 3]
    release = RoundEvent(sample_rate=1.0, noise_multiplier=3.0)
    expected = pld_epsilon([TRAIN, release] * 3, delta=coordinator.plan.delta)
    assert coordinator.epsilon() == pytest.approx(expected, rel=1e-12)
    assert verify_ledger(tmp_path / "run", key.public_key()).ok


@pytest.mark.integration
def test_a_capped_run_composes_its_releases_uncapped_and_verifies(tmp_path: Path) -> None:
    key = generate_private_key()
    config = with_overrides(
        config_of(tmp_path / "run", 3, every_rounds="1", noise_multiplier="3"),
        {"privacy.participation_cap": "1"},
    )
    coordinator, _ = run(config, key)
    entries = coordinator.ledger.entries()
    assert [e.get("kind") for e in entries].count("trending_counts") == 3
    release = RoundEvent(sample_rate=1.0, noise_multiplier=3.0)
    # the cap bound: one un-amplified training round plus the three releases (the cap does not limit them)
    cap_bound = pld_epsilon([RoundEvent(sample_rate=1.0, noise_multiplier=1.0), release, release, release],
                            delta=coordinator.plan.delta)  # fmt: skip
    poisson = pld_epsilon([TRAIN, release] * 3, delta=coordinator.plan.delta)
    assert coordinator.epsilon() == pytest.approx(min(cap_bound, poisson), rel=2e-3)
    report = verify_ledger(tmp_path / "run", key.public_key())
    assert report.ok, report.problems


@pytest.mark.integration
def test_counts_whose_entry_never_reached_a_checkpoint_are_deleted_on_resume(tmp_path: Path) -> None:
    key = generate_private_key()
    run(config_of(tmp_path / "run", 2, every_rounds="1", noise_multiplier="3"), key)
    folder = tmp_path / "run"
    orphan = folder / "trending" / "after-round-00003.npy"  # killed after writing it, before its checkpoint
    np.save(orphan, np.ones(N_ITEMS, np.float32))
    assert not verify_ledger(folder, key.public_key()).ok  # unaccounted counts beside the ledger
    run(config_of(folder, 2, every_rounds="1", noise_multiplier="3"), key)
    assert not orphan.exists() and len(list((folder / "trending").glob("*.npy"))) == 2
    assert verify_ledger(folder, key.public_key()).ok
