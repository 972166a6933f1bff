"""The start check in the signed ledger: a run that shipped its start verifies, its epsilon includes the
check, the report shows the check and its cost and binds a release of the start; a tampered check entry
fails."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import dp_accounting
import pytest
from start_check_toy import Z_S, FakeGainQuery, config_of, run

from server.audit.audit_report import build_report
from server.audit.report_html import render_html
from server.audit.verify import verify_ledger
from server.ledger import entry_hash, signed_bytes
from shared import signing
from shared.release_manifest import MANIFEST_NAME, RELEASE_FORMAT, sign_manifest

KEY = signing.generate_private_key()
ROUNDS = 2


@pytest.fixture(scope="module")
def shipped_start(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-round run whose trained model lost: its ledger ends with a start check that shipped the start."""
    folder = tmp_path_factory.mktemp("shipped-start") / "run"
    run(config_of(folder, ROUNDS), KEY, FakeGainQuery(gain=-1.0))
    signing.save_public_key(KEY.public_key(), folder / "ledger_public_key.pem")
    return folder


def entries_of(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / "ledger.jsonl").read_text().splitlines()]


def tampered(folder: Path, tmp_path: Path, **changes: Any) -> Path:
    """A copy whose last entry (the check) is edited and signed again with the real key (a key holder
    misstating the check)."""
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    lines = (copy / "ledger.jsonl").read_text().splitlines()
    entry = json.loads(lines[-1])
    entry.update(changes)
    entry["signature"] = signing.sign(KEY, signed_bytes(entry))
    entry["entry_hash"] = entry_hash(entry)
    lines[-1] = signing.canonical_json(entry).decode()
    (copy / "ledger.jsonl").write_text("\n".join(lines) + "\n")
    return copy


def independent_epsilon(delta: float) -> float:
    """dp_accounting's PLD of the run's mechanisms, composed directly (not through fedhome's code)."""
    train = dp_accounting.PoissonSampledDpEvent(0.5, dp_accounting.GaussianDpEvent(1.0))
    accountant = dp_accounting.pld.PLDAccountant()
    accountant.compose(dp_accounting.SelfComposedDpEvent(train, ROUNDS))
    accountant.compose(dp_accounting.GaussianDpEvent(Z_S))  # q_s = 1: every user, no amplification
    return float(accountant.get_epsilon(delta))


def test_a_run_that_shipped_its_start_verifies_with_the_check_in_its_epsilon(shipped_start: Path) -> None:
    report = verify_ledger(shipped_start, KEY.public_key())
    assert report.ok, report.problems
    assert [c.kind for c in report.epsilons] == ["training_round", "training_round", "start_check"]
    assert report.delta is not None
    assert report.recomputed_epsilon == pytest.approx(independent_epsilon(report.delta), rel=2e-3)
    (row,) = report.start_checks
    assert row["decision"] == "start" and row["after_round"] == ROUNDS


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"noise_std": Z_S / 2}, "noise_std 0.25 != noise_multiplier 0.5"),
        ({"decision": "trained"}, "decides 'start'"),  # flipped, shipped model left as it was
        ({"noised_gain_sum": 7.5}, "decides 'trained'"),  # a winning sum, yet the start shipped
        ({"model_sha256_shipped": "c" * 64}, "model_sha256_shipped is not the start model"),
        ({"model_sha256_trained": "c" * 64}, "model_sha256_trained is not the model the ledger records"),
        ({"model_sha256_start": "c" * 64}, "model_sha256_start is not the model the ledger records"),
        ({"noise_multiplier": Z_S / 2, "noise_std": Z_S / 2}, "understated"),  # less noise than accounted
        ({"sensitivity": 2.0}, "sensitivity 2.0"),
        ({"sampling": "fixed_size"}, "assumes Poisson sampling"),
        ({"after_round": ROUNDS - 1}, "must follow round 2"),
        ({"decision": "maybe"}, "malformed fields ['decision']"),
    ],
)
def test_a_tampered_check_entry_fails(
    shipped_start: Path, tmp_path: Path, changes: dict[str, Any], problem: str
) -> None:
    report = verify_ledger(tampered(shipped_start, tmp_path, **changes), KEY.public_key())
    assert not report.ok and any(problem in p for p in report.problems), report.problems


def test_a_flipped_decision_with_a_consistent_shipped_model_still_fails(
    shipped_start: Path, tmp_path: Path
) -> None:
    last = entries_of(shipped_start)[-1]
    copy = tampered(
        shipped_start, tmp_path, decision="trained", model_sha256_shipped=last["model_sha256_trained"]
    )
    report = verify_ledger(copy, KEY.public_key())
    assert not report.ok and any("decides 'start'" in p for p in report.problems)


def release_of(folder: Path, entry: dict[str, Any], model_sha256: str, *, rounds: int) -> Path:
    """A signed release folder (no files) whose manifest binds it to `entry` with model `model_sha256`."""
    release = folder / "release"
    release.mkdir(parents=True)
    privacy = {"unit": "user", "epsilon": entry["user_epsilon"]["pld"], "delta": entry["delta"],
               "ledger_head": entry["entry_hash"], "ledger_entries": rounds}  # fmt: skip
    fields = {"format": RELEASE_FORMAT, "version": 1, "created_utc": "2026-12-01T00:00:00+00:00",
              "run_id": entry["run_id"], "model": {"sha256": model_sha256, "round": rounds},
              "privacy": privacy, "files": {}}  # fmt: skip
    (release / MANIFEST_NAME).write_text(json.dumps(sign_manifest(fields, KEY)))
    return release


def test_the_report_shows_the_check_and_binds_a_release_of_the_start(
    shipped_start: Path, tmp_path: Path
) -> None:
    entries = entries_of(shipped_start)
    check, last_round = entries[-1], entries[-2]
    release = release_of(tmp_path, check, check["model_sha256_start"], rounds=ROUNDS)
    report = build_report(shipped_start, KEY.public_key(), release=release)
    assert report["verification"]["ok"] and report["release"]["ok"], report["release"]
    assert report["release"]["bound_kind"] == "start_check" and report["release"]["bound_round"] == ROUNDS
    (row,) = report["start_check"]
    assert row["decision"] == "start" and row["epsilon_cost"] > 0
    assert row["epsilon_after"] == pytest.approx(report["verification"]["recomputed_epsilon"])
    assert report["guarantee"]["start_checks"] == 1 and "start check" in report["guarantee"]["released"]
    page = render_html(report)
    assert "id='start-check'" in page and "ship the START" in page
    # the trained model bound to the check is not what it shipped; nor is the start bound to the round
    wrong = release_of(tmp_path / "a", check, check["model_sha256_trained"], rounds=ROUNDS)
    assert not build_report(shipped_start, KEY.public_key(), release=wrong)["release"]["ok"]
    wrong = release_of(tmp_path / "b", last_round, check["model_sha256_start"], rounds=ROUNDS)
    assert not build_report(shipped_start, KEY.public_key(), release=wrong)["release"]["ok"]
