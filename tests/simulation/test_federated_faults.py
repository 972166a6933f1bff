"""Real Flower simulation runs under injected faults (simulation/fault_injection.py): dropouts at each stage
and malicious replies are left out, counted in the round's ledger entry and the run summary, and no round
fails."""

from __future__ import annotations

from pathlib import Path

import pytest
from federated_toy import read_jsonl, tiny_config

from server.audit.verify import verify_ledger
from shared.data.source import configured_split
from shared.run_folder import RunFolder
from shared.signing import load_public_key
from simulation.fault_injection import FAULTS, STAGES, FaultPlan, Stage, faulty_apps
from simulation.federated import run_federated

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("encoder-cache")


def run(tmp_path: Path, cache: Path, plan: FaultPlan, **overrides: str) -> tuple[list[dict], dict]:
    config = tiny_config(tmp_path, cache, privacy__target_epsilon="100", **overrides)
    result = run_federated(config, configured_split(config.data), progress=False, wrap=faulty_apps(plan))
    folder = RunFolder(config.federated.run_dir)
    report = verify_ledger(folder.ledger, load_public_key(folder.public_key))
    assert report.ok, report.problems
    entries = read_jsonl(folder.ledger)
    for e in entries:  # every sampled user is summed, refused or counted as rejected
        assert e["aggregated_users"] + e["rejected_updates"] + e["refused_users"] == e["realised_cohort"]
    return entries, result.summary


def test_devices_dropping_before_training_are_left_out_and_counted(tmp_path: Path, cache: Path) -> None:
    entries, summary = run(tmp_path, cache, FaultPlan(seed=1, device_dropout=0.3), federated__rounds="3")
    assert [e["round"] for e in entries] == [1, 2, 3] and summary["rounds"] == 3
    assert sum(e["rejected_updates"] for e in entries) > 0  # about 30% of the sampled users
    assert all(e["rejected_nodes"] == 0 and e["aggregated_users"] > 0 for e in entries)
    assert summary["rejections"]["rejected_users"] == sum(e["rejected_updates"] for e in entries)


def test_each_malicious_reply_is_rejected_and_counted_by_reason(tmp_path: Path, cache: Path) -> None:
    plan = FaultPlan(seed=2, malicious_fraction=0.05)  # one node of two each round, faults cycled by round
    entries, summary = run(tmp_path, cache, plan, federated__rounds=str(len(FAULTS)))
    expected = {
        "nan": "non_finite", "huge_norm": "oversized", "wrong_shape": "wrong_shape",
        "old_round": "stale_round", "replay": "replayed", "duplicate": "duplicate",
    }  # fmt: skip
    for entry, fault in zip(entries, FAULTS, strict=True):
        assert entry["rejection_reasons"] == {expected[fault]: 1}, (fault, entry["rejection_reasons"])
        assert entry["rejected_nodes"] == 1
    # a duplicate is refused as a second reply: the first was summed, so no user is lost
    assert entries[-1]["rejected_updates"] == 0 and entries[0]["rejected_updates"] > 0
    assert summary["rejections"]["by_reason"] == {v: 1 for v in expected.values()}


@pytest.mark.parametrize("stage", STAGES)
def test_secure_rounds_survive_dropouts_at_each_stage(tmp_path: Path, cache: Path, stage: Stage) -> None:
    """Four nodes, 30% of them (one or two) dropping at `stage`, 30% of the devices before training: every
    round completes; a round whose secrets cannot be rebuilt (two of four gone at unmask) fails cleanly,
    releasing the round's noise alone, and still counts for privacy."""
    plan = FaultPlan(seed=4, device_dropout=0.3, node_dropout=0.3, node_dropout_stages=(stage,))
    entries, summary = run(
        tmp_path, cache, plan, federated__rounds="3", federated__nodes="4", privacy__secure_aggregation="true"
    )
    assert [e["round"] for e in entries] == [1, 2, 3] and summary["rounds"] == 3
    for e in entries:
        record = e["secure_aggregation"]
        assert record["participants"] == 4
        if record["failed"]:  # nothing summed: every node's users are rejected, the noise alone released
            assert e["aggregated_users"] == 0 and record["server_noise_std"] > 0
        else:
            assert record["masked_inputs"] + e["rejected_nodes"] == 4
    assert sum(e["rejected_updates"] for e in entries) > 0
    assert all(float(e["user_epsilon"]["pld"]) > 0 for e in entries)
