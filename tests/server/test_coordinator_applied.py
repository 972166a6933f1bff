"""The ledger records what the code applied, not what the plan intended (issue 16, part 1): the noise the
aggregator drew, the divisor it used, and the sampler's method and cohort. Without Flower (nodes faked)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from coordinator_toy import DIM, POPULATION, FakeNodes

from server.audit.verify import verify_ledger
from server.ledger import PrivacyLedger
from server.rounds.coordinator import Coordinator
from server.rounds.update_transport import CollectedUpdates, RoundRequest, UpdateTransport
from server.strategy import CohortSample, UserLevelDPAggregator
from shared.config import FedhomeConfig, with_overrides
from shared.model.params import ParamLayout
from shared.run_folder import RunFolder
from shared.signing import Ed25519PrivateKey, generate_private_key

Z, CLIP, RATE = 1.0, 0.5, 0.5


def make(folder: Path, key: Ed25519PrivateKey, transport: UpdateTransport) -> Coordinator:
    settings = {
        "federated.run_dir": str(folder),
        "federated.rounds": "3",
        "federated.sample_rate": str(RATE),
        "federated.eval_every": "0",
        "privacy.noise_multiplier": str(Z),
        "privacy.clip_norm": str(CLIP),
        "privacy.target_epsilon": "100",
        "privacy.seed": "5",
    }
    config: FedhomeConfig = with_overrides(FedhomeConfig(), settings)
    run = RunFolder(folder)
    run.create()
    ledger = PrivacyLedger(run.ledger, signing_key=key)
    layout = ParamLayout(("w",), ((DIM,),))
    return Coordinator(
        config, run, POPULATION, np.zeros(DIM, np.float32), layout, ledger, evaluate=lambda p: {},
        transport=transport,
    )  # fmt: skip


def run(coordinator: Coordinator) -> list[dict[str, Any]]:
    coordinator.resume()
    coordinator.run(None, progress=False)
    return coordinator.ledger.entries()


class ClaimsNoisedSum:
    """A clear-path transport that says the sum arrived noised (noise_in_sum = z C) though nothing noised
    it: the coordinator then hands the aggregator a noise_in_sum, as in the mutant the issue describes."""

    def collect(self, grid: Any, request: RoundRequest) -> CollectedUpdates:
        clear = FakeNodes().collect(grid, request)
        return CollectedUpdates(clear.replies, noise_in_sum=Z * request.clip_norm)


class FixedSizeSampler(Coordinator):
    """Samples exactly round(q N) users each round instead of Poisson sampling."""

    def sample(self, round_number: int) -> CohortSample:
        n = self.population.n_users
        users = np.sort(np.random.default_rng(round_number).choice(n, size=round(RATE * n), replace=False))
        return CohortSample(users.astype(np.int64), method="fixed-size", sample_rate=RATE, population=n)


def test_the_entry_records_the_noise_drawn_the_divisor_used_and_the_cohort_sampled(tmp_path: Path) -> None:
    key = generate_private_key()
    coordinator = make(tmp_path / "run", key, FakeNodes())
    entries = run(coordinator)
    assert [e["round"] for e in entries] == [1, 2, 3]
    for entry, row in zip(entries, coordinator.state.history, strict=True):
        assert entry["noise_std"] == Z * CLIP and entry["count_noise_std"] == 0.0
        assert entry["divisor"] == RATE * POPULATION.n_users and entry["sampling"] == "poisson"
        assert entry["realised_cohort"] == row["cohort"] == entry["aggregated_users"]
    assert len({e["realised_cohort"] for e in entries}) > 1  # Poisson: the cohort size varies here
    report = verify_ledger(coordinator.folder.ledger, key.public_key())
    assert report.ok, report.problems


def test_a_clear_sum_passed_as_already_noised_is_recorded_as_unnoised_and_flagged(tmp_path: Path) -> None:
    key = generate_private_key()
    coordinator = make(tmp_path / "run", key, ClaimsNoisedSum())
    entries = run(coordinator)
    assert [e["noise_std"] for e in entries] == [0.0, 0.0, 0.0]  # nothing was drawn: the ledger says so
    assert all(e["noise_multiplier"] == Z for e in entries)  # ... against the z that was accounted
    report = verify_ledger(coordinator.folder.ledger, key.public_key())
    assert not report.ok
    assert any("noise_std 0.0 != update_noise_multiplier" in p for p in report.problems), report.problems


def test_noise_weaker_than_accounted_is_recorded_and_flagged(tmp_path: Path) -> None:
    key = generate_private_key()
    coordinator = make(tmp_path / "run", key, FakeNodes())
    coordinator.aggregator = UserLevelDPAggregator(  # a broken aggregator: half the z the run accounts
        population=POPULATION.n_users, sample_rate=RATE, noise_multiplier=Z / 2, clip_norm=CLIP,
        mode="central", noise=coordinator.noise,
    )  # fmt: skip
    entries = run(coordinator)
    assert [e["noise_std"] for e in entries] == [pytest.approx(Z * CLIP / 2)] * 3
    report = verify_ledger(coordinator.folder.ledger, key.public_key())
    assert any("exceeds what the applied noise supports" in p for p in report.problems), report.problems


def test_a_sampler_other_than_poisson_is_recorded_and_flagged(tmp_path: Path) -> None:
    key = generate_private_key()
    folder = tmp_path / "run"
    plain = make(folder, key, FakeNodes())
    coordinator = FixedSizeSampler(
        plain.config, plain.folder, POPULATION, plain.state.params, ParamLayout(("w",), ((DIM,),)),
        plain.ledger, evaluate=lambda p: {}, transport=FakeNodes(),
    )  # fmt: skip
    entries = run(coordinator)
    assert [e["sampling"] for e in entries] == ["fixed-size"] * 3
    assert [e["realised_cohort"] for e in entries] == [round(RATE * POPULATION.n_users)] * 3
    report = verify_ledger(coordinator.folder.ledger, key.public_key())
    assert any("sampling 'fixed-size'" in p for p in report.problems), report.problems
