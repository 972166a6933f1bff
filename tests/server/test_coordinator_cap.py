"""The coordinator with a participation cap, without Flower (nodes are faked): resume segments, budget."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from server.audit.verify import verify_ledger
from server.ledger import PrivacyLedger
from server.rounds.coordinator import Coordinator
from server.rounds.messaging import Population, TrainReplies
from server.rounds.update_transport import CollectedUpdates, RoundRequest
from shared.config import FedhomeConfig, with_overrides
from shared.model.params import ParamLayout
from shared.privacy.accounting import RoundEvent
from shared.privacy.capped_accounting import CappedAccountant
from shared.run_folder import RunFolder, load_latest_checkpoint
from shared.signing import Ed25519PrivateKey, generate_private_key

DIM = 6
POPULATION = Population((7, 9), np.array([6, 4], dtype=np.int64))


class CappedNodes:
    """The update transport the coordinator is given: every sampled user answers with a zero update or
    refuses (half of them, past their cap); the announced terms must reach the nodes."""

    def collect(self, grid: Any, request: RoundRequest) -> CollectedUpdates:
        settings = request.settings  # the terms each device's receipt records
        assert settings.run_id and settings.noise_multiplier == 1.0 and settings.sample_rate == 0.5
        assert settings.delta > 0 and settings.participation_cap in (0, 1)
        count = sum(len(slots) for slots in request.assignment.values())
        refused = count // 2
        return CollectedUpdates(
            TrainReplies(np.zeros(DIM), count - refused, count - refused, 0, 0, None, refused)
        )


def run_to(folder: Path, key: Ed25519PrivateKey, rounds: int, **extra: str) -> Coordinator:
    settings = {
        "federated.run_dir": str(folder),
        "federated.rounds": str(rounds),
        "federated.sample_rate": "0.5",
        "federated.eval_every": "0",
        "privacy.noise_multiplier": "1.0",
        "privacy.target_epsilon": "100",
        "privacy.seed": "5",
        **extra,
    }
    config: FedhomeConfig = with_overrides(FedhomeConfig(), settings)
    run = RunFolder(folder)
    run.create()
    ledger = PrivacyLedger(run.ledger, signing_key=key)
    layout = ParamLayout(("w",), ((DIM,),))
    coordinator = Coordinator(
        config,
        run,
        POPULATION,
        np.zeros(DIM, np.float32),
        layout,
        ledger,
        evaluate=lambda p: {},
        transport=CappedNodes(),
    )
    coordinator.resume()
    coordinator.run(None, progress=False)
    return coordinator


@pytest.mark.integration
def test_a_resume_starts_a_new_cap_segment_and_the_ledger_still_verifies(tmp_path: Path) -> None:
    key = generate_private_key()
    run_to(tmp_path / "run", key, 3, **{"privacy.participation_cap": "1"})
    coordinator = run_to(tmp_path / "run", key, 6, **{"privacy.participation_cap": "1"})
    entries = coordinator.ledger.entries()
    assert [e["cap_segment"] for e in entries] == [1, 1, 1, 2, 2, 2]
    assert all(e["participation_cap"] == 1 and e["refused_users"] >= 0 for e in entries)
    assert isinstance(coordinator.accountant, CappedAccountant)
    assert coordinator.accountant.segment_starts == [0, 3]
    checkpoint = load_latest_checkpoint(coordinator.folder)
    assert checkpoint is not None and checkpoint["accountant"]["segment_starts"] == [0, 3]
    expected = CappedAccountant(delta=coordinator.plan.delta, participation_cap=1)
    for r in range(6):
        if r == 3:
            expected.new_segment()
        expected.record(RoundEvent(sample_rate=0.5, noise_multiplier=1.0, capped=True))
    assert entries[-1]["user_epsilon"]["pld"] == pytest.approx(expected.spent()["pld"], rel=1e-12)
    assert entries[-1]["user_epsilon_cap"]["pld"] > entries[2]["user_epsilon_cap"]["pld"]  # 2 rounds now
    report = verify_ledger(coordinator.folder.ledger, key.public_key())
    assert report.ok, report.problems


@pytest.mark.integration
def test_the_budget_check_uses_the_smaller_bound(tmp_path: Path) -> None:
    key = generate_private_key()
    budget = {"privacy.target_epsilon": "2.5", "federated.sample_rate": "0.5"}
    plain = run_to(tmp_path / "plain", key, 12, **budget)
    capped = run_to(tmp_path / "capped", key, 12, **budget, **{"privacy.participation_cap": "1"})
    assert 0 < plain.state.round < 12 and capped.state.round == 12
    assert "participation_cap" not in plain.ledger.entries()[-1]
    assert capped.ledger.entries()[-1]["epsilon_bound"] == "cap" and capped.epsilon() <= 2.5
