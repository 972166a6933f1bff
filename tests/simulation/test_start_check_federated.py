"""A real Flower simulation run with the start check: the nodes answer the check, the run ships its start
when the trained model does not beat it by the margin, and what shipped verifies, releases and reports."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from federated_toy import read_jsonl, tiny_config

from server.audit.audit_report import build_report
from server.audit.verify import verify_ledger
from server.releases.release_builder import load_run
from server.releases.release_store import ReleaseStore
from shared.data.source import configured_split
from shared.model.params import params_sha256
from shared.run_folder import RunFolder
from shared.signing import load_private_key, load_public_key
from simulation.federated import run_federated, write_federated_results

pytestmark = pytest.mark.integration


def test_a_run_that_does_not_beat_its_start_by_the_margin_ships_the_start(tmp_path: Path) -> None:
    """A margin of 1,000 noise stds (10,000) no sum of 40 gains in [-1, 1] can pass: the start ships."""
    config = tiny_config(
        tmp_path, tmp_path / "cache", federated__rounds="1", federated__eval_every="0",
        privacy__target_epsilon="50", start_check__enabled="on", start_check__margin="1000",
    )  # fmt: skip
    result = run_federated(config, configured_split(config.data), progress=False)
    folder = RunFolder(config.federated.run_dir)
    entries = read_jsonl(folder.ledger)
    assert [e.get("kind") for e in entries] == [None, "start_check"]
    check = entries[-1]
    population = int(entries[0]["population"])
    # every user sampled (q_s = 1), and both nodes answered: the ClientApp's handler summed their gains
    assert (
        check["realised_cohort"] == check["aggregated_users"] == population and check["rejected_updates"] == 0
    )
    assert check["decision"] == "start" and check["noise_std"] == 10.0 and abs(check["noised_gain_sum"]) < 200
    assert check["model_sha256_start"] == entries[0]["model_sha256_before"] == check["model_sha256_shipped"]
    assert check["model_sha256_trained"] == entries[0]["model_sha256_after"] != check["model_sha256_start"]
    summary = result.summary
    assert (
        summary["shipped"] == "start"
        and summary["start_check"]["ran"]
        and summary["start_check"]["decision"] == "start"
    )
    assert summary["user_epsilon"] == pytest.approx(check["user_epsilon"]["pld"], rel=1e-12)
    assert params_sha256(np.load(folder.final_params)) == check["model_sha256_start"]  # what was evaluated
    public_key = load_public_key(folder.public_key)
    report = verify_ledger(folder.ledger, public_key)
    assert report.ok, report.problems
    assert "| start (training lost) |" in write_federated_results(result, command="test")

    key = load_private_key(tmp_path / f".{folder.root.name}.ledger_signing_key.pem")
    model, catalogue, source = load_run(folder.root, key.public_key())  # the final model: the start
    assert (
        source.model_sha256 == check["model_sha256_start"]
        and source.privacy["ledger_head"] == check["entry_hash"]
    )
    store = ReleaseStore(tmp_path / "releases")
    version = store.publish(model, catalogue, source, key)
    audit = build_report(folder.root, public_key, release=store.folder(version))
    assert audit["release"]["ok"], audit["release"]
    assert audit["release"]["bound_kind"] == "start_check" and audit["start_check"][0]["decision"] == "start"
