"""Real Flower simulation runs of the fedhome ServerApp and ClientApp on a tiny synthetic shop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from federated_toy import read_jsonl, tiny_config

from server.audit.verify import verify_ledger
from shared.data.source import configured_split
from shared.run_folder import RunFolder
from shared.signing import load_public_key
from simulation.federated import run_federated

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("encoder-cache")


def test_short_central_dp_run_writes_a_verifiable_run_folder(tmp_path: Path, cache: Path) -> None:
    config = tiny_config(tmp_path, cache, federated__rounds="3", privacy__target_epsilon="50")
    split = configured_split(config.data)
    result = run_federated(config, split, progress=False)
    folder = RunFolder(config.federated.run_dir)
    entries = read_jsonl(folder.ledger)
    assert [e["round"] for e in entries] == [1, 2, 3]
    assert all(e["mode"] == "central" and e["sampling"] == "poisson" for e in entries)
    epsilons = [float(e["user_epsilon"]["pld"]) for e in entries]
    assert epsilons == sorted(epsilons) and 0 < epsilons[-1] <= 50
    assert entries[0]["noise_std"] == pytest.approx(entries[0]["noise_multiplier"] * entries[0]["clip_norm"])
    report = verify_ledger(folder.ledger, load_public_key(folder.public_key))
    assert report.ok, report.problems
    metrics = read_jsonl(folder.metrics)
    assert [m["round"] for m in metrics] == [0, 1, 2, 3] and all("valid_ndcg_10" in m for m in metrics)
    assert result.summary["rounds"] == 3 and result.summary["ledger_head"] == entries[-1]["entry_hash"]
    assert 0.0 <= result.test.overall.ndcg_10 <= 1.0 and result.test.overall.n_users > 0
    assert not any("PRIVATE" in p.read_text(errors="ignore") for p in folder.root.glob("*") if p.is_file())


def test_budget_stop_ends_cleanly_with_a_final_model(tmp_path: Path, cache: Path) -> None:
    config = tiny_config(
        tmp_path, cache, federated__rounds="50", privacy__target_epsilon="3", privacy__noise_multiplier="1.0"
    )
    result = run_federated(config, configured_split(config.data), progress=False)
    entries = read_jsonl(RunFolder(config.federated.run_dir).ledger)
    assert 0 < len(entries) < 50
    assert float(entries[-1]["user_epsilon"]["pld"]) <= 3.0
    assert result.summary["stop_reason"].startswith("privacy budget")
    assert RunFolder(config.federated.run_dir).final_params.exists()


def test_a_shard_gives_the_same_model_as_one_device_per_node(tmp_path: Path, cache: Path) -> None:
    common = {"federated__rounds": "2", "privacy__mode": "central", "privacy__target_epsilon": "100"}
    shard = tiny_config(tmp_path / "shard", cache, federated__devices_per_node="shard", **common)
    one = tiny_config(tmp_path / "one", cache, federated__devices_per_node="one", **common)
    split = configured_split(shard.data)
    run_federated(shard, split, progress=False)
    run_federated(one, split, progress=False)
    shard_entries = read_jsonl(RunFolder(shard.federated.run_dir).ledger)
    one_entries = read_jsonl(RunFolder(one.federated.run_dir).ledger)
    assert [e["realised_cohort"] for e in shard_entries] == [e["realised_cohort"] for e in one_entries]
    np.testing.assert_allclose(
        np.load(RunFolder(shard.federated.run_dir).final_params),
        np.load(RunFolder(one.federated.run_dir).final_params),
        rtol=1e-5,
        atol=1e-6,
    )
