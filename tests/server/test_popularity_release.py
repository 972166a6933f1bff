"""The popularity prior's DP count release inside a run, without Flower (nodes faked): made once before round
1 and accounted, its prior sent with every training round and the start check, read back (never made again)
on resume, and verified by the auditor with its cost in the recomputed epsilon."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dp_accounting
import numpy as np
import pytest
from coordinator_toy import POPULATION, FakeNodes, drop_last_lines
from start_check_toy import INITIAL, LAYOUT, FakeGainQuery

from server.audit.verify import verify_ledger
from server.ledger import PrivacyLedger
from server.rounds.coordinator import Coordinator
from server.rounds.run_hooks import RunAccess, RunHook
from server.rounds.start_check import StartCheck
from server.rounds.update_transport import CollectedUpdates, RoundRequest
from server.trending.popularity_release import PRIOR_COUNTS, PopularityRelease
from server.trending.trending_query import TrendingReplies
from shared.config import FedhomeConfig, with_overrides
from shared.privacy.accounting import RoundEvent, pld_epsilon
from shared.run_folder import RunFolder, load_popularity_prior
from shared.signing import Ed25519PrivateKey, generate_private_key

N_ITEMS, K, Z_P, Z_S = 5, 2, 3.0, 0.5
TRAIN = RoundEvent(sample_rate=0.5, noise_multiplier=1.0)
RELEASE = RoundEvent(sample_rate=1.0, noise_multiplier=Z_P)
CHECK = RoundEvent(sample_rate=1.0, noise_multiplier=Z_S)


@dataclass
class FakeCountQuery:
    """Every sampled user's k = 2 most recent items are items 0 and 3; records what each call asked."""

    calls: list[dict[str, Any]] = field(default_factory=list)

    def __call__(self, grid: Any, assignment: dict[int, np.ndarray], **settings: Any) -> TrendingReplies:
        self.calls.append(settings)
        count = sum(len(slots) for slots in assignment.values())
        total = np.zeros(N_ITEMS)
        total[[0, 3]] = count / math.sqrt(K)
        return TrendingReplies(total, count, 0, 0)


@dataclass
class RecordingNodes:
    """FakeNodes that record the popularity prior each training round was sent."""

    priors: list[np.ndarray | None] = field(default_factory=list)

    def collect(self, grid: Any, request: RoundRequest) -> CollectedUpdates:
        self.priors.append(None if request.prior is None else request.prior.copy())
        return FakeNodes().collect(grid, request)


class Killed(Exception):
    pass


class KillAfter:
    """Kills the run (an exception out of the round loop) after round `last` (0: before the first round,
    after the hooks before it)."""

    def __init__(self, last: int) -> None:
        self.last = last

    def on_resume(self, entries: Sequence[dict[str, Any]]) -> None:
        pass

    def before_rounds(self, run: RunAccess, grid: Any) -> None:
        if self.last == 0:
            raise Killed

    def after_round(self, run: RunAccess, grid: Any, row: dict[str, Any]) -> None:
        if row["round"] == self.last:
            raise Killed

    def at_end(self, run: RunAccess, grid: Any) -> None:
        pass


def config_of(folder: Path, rounds: int, **settings: str) -> FedhomeConfig:
    """`rounds` rounds at z 1, q 0.5 on coordinator_toy's 10 users, a popularity prior of k = 2, the release
    at z_p 3 and the start check at z_s 0.5; `settings` are overrides with "__" for "."."""
    base = {
        "federated.run_dir": str(folder),
        "federated.rounds": str(rounds),
        "federated.sample_rate": "0.5",
        "federated.eval_every": "0",
        "privacy.noise_multiplier": "1.0",
        "privacy.target_epsilon": "100",
        "privacy.seed": "5",
        "model.popularity_prior": "true",
        "popularity.enabled": "auto",
        "model.popularity_items_per_user": str(K),
        "popularity.noise_multiplier": str(Z_P),
        "start_check.noise_multiplier": str(Z_S),
    }
    overrides = {key.replace("__", "."): value for key, value in settings.items()}
    config: FedhomeConfig = with_overrides(FedhomeConfig(), {**base, **overrides})
    return config


@dataclass
class Run:
    coordinator: Coordinator
    popularity: PopularityRelease
    nodes: RecordingNodes
    counts: FakeCountQuery
    gains: FakeGainQuery


def run(config: FedhomeConfig, key: Ed25519PrivateKey, *, after: Sequence[RunHook] = ()) -> Run:
    """A coordinator with fake nodes, the popularity release, the hooks `after` and the start check, resumed
    from the run folder when it has a checkpoint, run to its end."""
    folder = RunFolder(config.federated.run_dir)
    folder.create()
    counts, gains, nodes = FakeCountQuery(), FakeGainQuery(0.5), RecordingNodes()
    popularity = PopularityRelease(folder, n_items=N_ITEMS, query=counts)
    coordinator = Coordinator(
        config,
        folder,
        POPULATION,
        INITIAL,
        LAYOUT,
        PrivacyLedger(folder.ledger, signing_key=key),
        evaluate=lambda p: {},
        transport=nodes,
        hooks=[popularity, *after, StartCheck(INITIAL, query=gains)],
    )
    coordinator.resume()
    coordinator.run(None, progress=False)
    return Run(coordinator, popularity, nodes, counts, gains)


def expected_prior(folder: Path, entry: dict[str, Any]) -> np.ndarray:
    counts = np.load(folder / entry["counts_file"])
    return np.log1p(np.maximum(counts.astype(np.float64), 0.0)).astype(np.float32)


@pytest.mark.integration
def test_the_release_is_made_once_before_round_1_and_its_prior_reaches_every_round(tmp_path: Path) -> None:
    key = generate_private_key()
    done = run(config_of(tmp_path / "run", 2), key)
    entries = done.coordinator.ledger.entries()
    assert [(e.get("kind"), e.get("round", e.get("after_round"))) for e in entries] == [
        ("trending_counts", 0),
        (None, 1),
        (None, 2),
        ("start_check", 2),
    ]
    release = entries[0]
    assert release["purpose"] == "popularity_prior" and release["counts_file"] == PRIOR_COUNTS
    assert (release["max_items"], release["sample_rate"], release["noise_multiplier"]) == (K, 1.0, Z_P)
    assert release["realised_cohort"] == POPULATION.n_users and release["window_days"] == 0.0
    assert len(done.counts.calls) == 1 and done.counts.calls[0]["window_s"] == math.inf
    assert done.counts.calls[0]["max_items"] == K
    prior = expected_prior(tmp_path / "run", release)
    assert prior.shape == (N_ITEMS,) and prior[[0, 3]].min() > 0  # 10 users on items 0 and 3, noise std 4.2
    # every training round and the start check were sent the prior; the run folder keeps it
    assert len(done.nodes.priors) == 2
    for sent in [*done.nodes.priors, done.gains.calls[0]["prior"]]:
        assert sent is not None
        np.testing.assert_array_equal(sent, prior)
    saved = load_popularity_prior(RunFolder(tmp_path / "run"))
    assert saved is not None
    np.testing.assert_array_equal(saved, prior)
    # accounted first, composed with the rounds and the check
    delta = done.coordinator.plan.delta
    assert done.coordinator.epsilon() == pytest.approx(
        pld_epsilon([RELEASE, TRAIN, TRAIN, CHECK], delta=delta), rel=1e-12
    )
    summary = done.popularity.summary()
    assert summary["made"] and summary["enabled"] and summary["entry_hash"] == release["entry_hash"]
    assert summary["user_epsilon"] == release["user_epsilon"] and summary["after_round"] == 0
    assert summary["items_with_positive_counts"] == int((prior > 0).sum())
    # the auditor accounts it with no special case, and its epsilon includes the release
    report = verify_ledger(tmp_path / "run", key.public_key())
    assert report.ok, report.problems
    assert [(row["purpose"], row["after_round"], row["counts_file_ok"]) for row in report.trending] == [
        ("popularity_prior", 0, True)
    ]
    accountant = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-4)
    train = dp_accounting.PoissonSampledDpEvent(0.5, dp_accounting.GaussianDpEvent(1.0))
    events = [dp_accounting.GaussianDpEvent(Z_P), train, train, dp_accounting.GaussianDpEvent(Z_S)]
    accountant.compose(dp_accounting.ComposedDpEvent(events))
    assert report.recomputed_epsilon == pytest.approx(accountant.get_epsilon(delta), rel=2e-3)
    assert report.epsilons[0].kind == "trending_counts" and report.epsilons[0].round == 0


@pytest.mark.integration
def test_a_resumed_run_reads_its_prior_back_and_never_releases_twice(tmp_path: Path) -> None:
    key = generate_private_key()
    with pytest.raises(Killed):
        run(config_of(tmp_path / "run", 3), key, after=[KillAfter(1)])
    first = PrivacyLedger(tmp_path / "run" / "ledger.jsonl").entries()[0]
    resumed = run(config_of(tmp_path / "run", 3), key)
    entries = resumed.coordinator.ledger.entries()
    assert [e.get("purpose") for e in entries].count("popularity_prior") == 1 and entries[0] == first
    assert resumed.counts.calls == []  # not asked again
    prior = expected_prior(tmp_path / "run", first)
    assert len(resumed.nodes.priors) == 2  # rounds 2 and 3
    for sent in resumed.nodes.priors:
        assert sent is not None
        np.testing.assert_array_equal(sent, prior)
    assert resumed.popularity.summary()["entry_hash"] == first["entry_hash"]
    delta = resumed.coordinator.plan.delta
    expected = pld_epsilon([RELEASE, TRAIN, TRAIN, TRAIN, CHECK], delta=delta)
    assert resumed.coordinator.epsilon() == pytest.approx(expected, rel=1e-12)
    assert verify_ledger(tmp_path / "run", key.public_key()).ok


@pytest.mark.integration
def test_a_release_killed_before_its_ledger_line_is_restored_from_its_checkpoint(tmp_path: Path) -> None:
    key = generate_private_key()
    folder = tmp_path / "run"
    with pytest.raises(Killed):
        run(config_of(folder, 2), key, after=[KillAfter(0)])  # the release is in the round-0 checkpoint
    first = PrivacyLedger(folder / "ledger.jsonl").entries()
    assert [e.get("purpose") for e in first] == ["popularity_prior"]
    drop_last_lines(folder / "ledger.jsonl", 1)  # killed before its line reached the ledger
    resumed = run(config_of(folder, 2), key)
    entries = resumed.coordinator.ledger.entries()
    assert entries[0] == first[0] and resumed.counts.calls == []  # restored, not made again
    assert [e.get("round", e.get("after_round")) for e in entries] == [0, 1, 2, 2]
    delta = resumed.coordinator.plan.delta
    assert resumed.coordinator.epsilon() == pytest.approx(
        pld_epsilon([RELEASE, TRAIN, TRAIN, CHECK], delta=delta), rel=1e-12
    )
    assert verify_ledger(folder, key.public_key()).ok


@pytest.mark.integration
def test_counts_killed_before_their_checkpoint_are_deleted_and_the_release_is_made_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = generate_private_key()
    folder = tmp_path / "run"

    def killed(self: Coordinator, fields: dict[str, Any]) -> dict[str, Any]:
        raise Killed

    with monkeypatch.context() as patch:
        patch.setattr(Coordinator, "commit_entry", killed)  # after the counts file, before the checkpoint
        with pytest.raises(Killed):
            run(config_of(folder, 1), key)
    assert (folder / PRIOR_COUNTS).exists() and not (folder / "ledger.jsonl").exists()
    done = run(config_of(folder, 1), key)
    entries = done.coordinator.ledger.entries()
    assert [e.get("purpose") for e in entries].count("popularity_prior") == 1 and len(done.counts.calls) == 1
    delta = done.coordinator.plan.delta
    assert done.coordinator.epsilon() == pytest.approx(
        pld_epsilon([RELEASE, TRAIN, CHECK], delta=delta), rel=1e-12
    )
    assert verify_ledger(folder, key.public_key()).ok


def test_a_release_over_budget_is_refused_and_the_run_trains_without_a_prior(tmp_path: Path) -> None:
    key = generate_private_key()
    config = config_of(tmp_path / "run", 2, popularity__enabled="on", popularity__noise_multiplier="0.3")
    budget = pld_epsilon([TRAIN, TRAIN, CHECK], delta=1e-3) * 1.5
    config = with_overrides(config, {"privacy.target_epsilon": str(budget), "privacy.delta": "1e-3"})
    done = run(config, key)
    assert [e.get("kind") for e in done.coordinator.ledger.entries()] == [None, None, "start_check"]
    summary = done.popularity.summary()
    assert (
        not summary["made"] and "past the budget" in summary["refused"][0] and summary["prior_file"] is None
    )
    assert done.nodes.priors == [None, None] and done.gains.calls[0]["prior"] is None
    assert load_popularity_prior(RunFolder(tmp_path / "run")) is None
    assert not (tmp_path / "run" / PRIOR_COUNTS).exists()


def test_without_the_models_prior_nothing_is_released_or_sent(tmp_path: Path) -> None:
    key = generate_private_key()
    done = run(config_of(tmp_path / "run", 1, model__popularity_prior="false"), key)
    assert [e.get("kind") for e in done.coordinator.ledger.entries()] == [None, "start_check"]
    assert done.counts.calls == [] and done.nodes.priors == [None]
    assert done.popularity.summary()["enabled"] is False and not done.popularity.summary()["made"]
