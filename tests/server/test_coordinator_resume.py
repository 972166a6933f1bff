"""Resuming a run from its folder after a kill at any point of a round, without Flower (nodes are faked)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from coordinator_toy import POPULATION, KillAfter, Killed, drop_last_lines, toy_coordinator

from server.audit.verify import verify_ledger
from server.ledger import PrivacyLedger
from server.rounds.coordinator import Coordinator
from server.rounds.privacy_plan import PrivacyPlan, noise_multiplier_summary
from server.rounds.run_hooks import RunHook
from shared.errors import ConfigError
from shared.privacy.accounting import RoundEvent, pld_epsilon
from shared.run_folder import RunFolder, load_latest_checkpoint
from shared.signing import Ed25519PrivateKey, generate_private_key


def make(
    folder: Path,
    key: Ed25519PrivateKey,
    rounds: int,
    *,
    hooks: Sequence[RunHook] = (),
    extra: dict[str, str] | None = None,
) -> Coordinator:
    return toy_coordinator(RunFolder(folder), key, rounds, extra=extra, hooks=hooks)


def run_to(folder: Path, key: Ed25519PrivateKey, rounds: int) -> Coordinator:
    coordinator = make(folder, key, rounds)
    coordinator.resume()
    coordinator.run(None, progress=False)
    return coordinator


def rounds_of(path: Path) -> list[int]:
    return [json.loads(line)["round"] for line in path.read_text().splitlines()]


def test_a_checkpoint_whose_ledger_entry_was_not_yet_written_is_repaired_on_resume(tmp_path: Path) -> None:
    key = generate_private_key()
    folder = RunFolder(tmp_path / "run")
    run_to(folder.root, key, 3)
    checkpoint = load_latest_checkpoint(folder)
    assert checkpoint is not None
    drop_last_lines(folder.ledger, 1)  # killed after the checkpoint of round 3, before its ledger entry
    resumed = make(folder.root, key, 5)
    assert resumed.resume() and resumed.state.round == 3
    entries = PrivacyLedger(folder.ledger).entries()
    assert [e["round"] for e in entries] == [1, 2, 3] and entries[-1] == checkpoint["ledger_entry"]
    event = RoundEvent(sample_rate=0.5, noise_multiplier=1.0)
    assert resumed.epsilon() == pytest.approx(pld_epsilon([event] * 3, delta=resumed.plan.delta), rel=1e-12)
    resumed.run(None, progress=False)
    assert rounds_of(folder.ledger) == [1, 2, 3, 4, 5] and rounds_of(folder.metrics) == [0, 1, 2, 3, 4, 5]
    report = verify_ledger(folder.ledger, key.public_key())
    assert report.ok, report.problems
    assert resumed.epsilon() == pytest.approx(pld_epsilon([event] * 5, delta=resumed.plan.delta), rel=1e-12)
    straight = run_to(tmp_path / "straight", generate_private_key(), 5)
    np.testing.assert_allclose(resumed.state.params, straight.state.params, rtol=1e-6, atol=1e-7)


def test_a_ledger_two_rounds_behind_the_checkpoint_is_refused(tmp_path: Path) -> None:
    key = generate_private_key()
    folder = RunFolder(tmp_path / "run")
    run_to(folder.root, key, 3)
    drop_last_lines(folder.ledger, 2)
    with pytest.raises(ConfigError, match="ledger ends at round 1 but the newest checkpoint is round 3"):
        make(folder.root, key, 5).resume()
    assert rounds_of(folder.ledger) == [1]  # nothing written


def test_a_ledger_of_another_run_is_refused(tmp_path: Path) -> None:
    key = generate_private_key()
    run_to(tmp_path / "run", key, 2)
    run_to(tmp_path / "other", key, 2)
    (tmp_path / "run" / "ledger.jsonl").write_bytes((tmp_path / "other" / "ledger.jsonl").read_bytes())
    with pytest.raises(ConfigError, match="not the entry in the checkpoint"):
        make(tmp_path / "run", key, 3).resume()


def test_a_lost_and_a_torn_metrics_row_are_restored_once(tmp_path: Path) -> None:
    key = generate_private_key()
    folder = RunFolder(tmp_path / "run")
    run_to(folder.root, key, 4)
    drop_last_lines(folder.metrics, 1)  # killed after the ledger entry of round 4, before its metrics row
    with folder.metrics.open("a") as out:
        out.write('{"cohort": 3, "rou')  # ... in the middle of writing it
    resumed = run_to(folder.root, key, 6)
    rows = [json.loads(line) for line in folder.metrics.read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1, 2, 3, 4, 5, 6]
    assert "valid_x" in rows[4] and "valid_x" not in rows[5]  # round 4 was due for an evaluation
    assert resumed.state.round == 6


def test_a_start_killed_before_its_first_checkpoint_starts_afresh(tmp_path: Path) -> None:
    key = generate_private_key()
    folder = RunFolder(tmp_path / "run")
    folder.create()
    folder.metrics.write_text('{"round": 0, "user_epsilon": 0.0}\n')  # the round-0 evaluation, then a kill
    coordinator = make(folder.root, key, 2)
    assert not coordinator.resume()
    coordinator.run(None, progress=False)
    assert rounds_of(folder.metrics) == [0, 1, 2] and rounds_of(folder.ledger) == [1, 2]


@pytest.mark.integration
def test_a_run_resumed_with_more_rounds_keeps_and_reports_the_z_its_rounds_used(tmp_path: Path) -> None:
    key = generate_private_key()
    folder = RunFolder(tmp_path / "run")
    calibrated = {
        "privacy.noise_multiplier": "0",
        "privacy.target_epsilon": "6",
    }  # z calibrated for the rounds
    first = make(folder.root, key, 4, hooks=[KillAfter(2)], extra=calibrated)
    first.resume()
    with pytest.raises(Killed):
        first.run(None, progress=False)
    z = first.plan.noise_multiplier
    resumed = make(folder.root, key, 8, extra=calibrated)  # the same run, extended to 8 rounds
    assert PrivacyPlan.build(resumed.config, POPULATION.n_users).noise_multiplier > z * 1.05  # 8 rounds: more
    assert resumed.resume() and resumed.state.round == 2
    assert resumed.plan.noise_multiplier == z  # the run's z, not one calibrated for 8 rounds
    reason = resumed.run(None, progress=False)
    entries = PrivacyLedger(folder.ledger).entries()
    assert [e["noise_multiplier"] for e in entries] == [z] * len(entries) and len(entries) >= 4
    assert all(
        e["noise_std"] == pytest.approx(z * e["clip_norm"]) for e in entries
    )  # applied what it accounted
    # the budget was calibrated for 4 rounds at z: the extension stops when it is spent, not at a new z
    assert reason.startswith("privacy budget") and resumed.epsilon() <= 6 * (1 + 1e-9)
    event = RoundEvent(sample_rate=0.5, noise_multiplier=z)
    assert resumed.epsilon() == pytest.approx(
        pld_epsilon([event] * len(entries), delta=resumed.plan.delta), rel=1e-9
    )
    summary = noise_multiplier_summary(entries, planned=resumed.plan.noise_multiplier)
    assert summary["noise_multiplier"] == z
    assert summary["noise_multiplier_spans"] == [
        {"first_round": 1, "last_round": len(entries), "noise_multiplier": z}
    ]
    report = verify_ledger(folder.ledger, key.public_key())
    assert report.ok, report.problems


def test_a_summary_of_rounds_with_two_z_names_both_and_reports_no_single_z() -> None:
    entries: list[dict[str, Any]] = [
        {"round": 1, "noise_multiplier": 0.347},
        {"round": 2, "noise_multiplier": 0.347},
        {"kind": "trending_counts", "after_round": 2, "noise_multiplier": 5.0},
        {"round": 3, "noise_multiplier": 0.369},
    ]
    summary = noise_multiplier_summary(entries, planned=0.369)
    assert summary["noise_multiplier"] is None
    assert summary["noise_multiplier_spans"] == [
        {"first_round": 1, "last_round": 2, "noise_multiplier": 0.347},
        {"first_round": 3, "last_round": 3, "noise_multiplier": 0.369},
    ]
    assert noise_multiplier_summary([], planned=0.5) == {
        "noise_multiplier": 0.5,
        "noise_multiplier_spans": [],
    }
