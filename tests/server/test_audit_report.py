"""`fedhome-audit report`: the report of a genuine run, of a tampered one, and of one that ran otherwise
than the accountants assume; on a copy of the run folder with only the public key."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from ledger_toy import DELTA, KEY, write_run

from server.audit import audit_cli
from shared import signing


def report_of(run: Path, tmp_path: Path) -> tuple[int, dict[str, Any], str]:
    key = tmp_path / "pinned_key.pem"
    signing.save_public_key(KEY.public_key(), key)
    out = tmp_path / "report"
    code = audit_cli.main(["report", str(run), "--public-key", str(key), "--out", str(out)])
    return code, json.loads((out / "report.json").read_text()), (out / "report.html").read_text()


@pytest.mark.integration
def test_genuine_run_report_on_a_copy_with_only_the_ledger(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", rounds=6)
    copy = tmp_path / "elsewhere"
    copy.mkdir()
    shutil.copy(run / "ledger.jsonl", copy / "ledger.jsonl")
    code, report, html = report_of(copy, tmp_path)
    assert code == 0
    verification, guarantee = report["verification"], report["guarantee"]
    assert verification["ok"] and verification["entries"] == 6
    assert [r["ok"] for r in verification["entry_results"]] == [True] * 6
    assert verification["recomputed_epsilon"] == pytest.approx(verification["claimed_epsilon"], rel=1e-3)
    assert (
        guarantee["unit_of_privacy"] == "user"
        and "add or remove one user" in guarantee["neighbouring_relation"]
    )
    assert guarantee["delta"] == DELTA and guarantee["rounds"] == 6
    assert guarantee["setting"] == [
        "central DP: devices clip their update, the server adds Gaussian noise to the sum"
    ]
    assert report["mismatches"] == [] and len(report["rounds"]) == 6
    assert {a["library"].split()[0] for a in report["accountants"]} == {"dp-accounting", "opacus"}
    assert any("catalogue" in item for item in report["not_covered"])
    assert "VERIFIED" in html and "data:image/png;base64," in html and html.count("<tr>") > 6


def test_tampered_entry_is_marked_in_the_report(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", rounds=4)
    lines = (run / "ledger.jsonl").read_bytes().splitlines(keepends=True)
    lines[2] = lines[2].replace(b'"clip_norm":0.5', b'"clip_norm":0.4')
    (run / "ledger.jsonl").write_bytes(b"".join(lines))
    code, report, html = report_of(run, tmp_path)
    assert code == 1 and not report["verification"]["ok"]
    results = {r["round"]: r["ok"] for r in report["verification"]["entry_results"]}
    assert results == {1: True, 2: True, 3: False, 4: True}
    assert "FAILED" in html


@pytest.mark.integration
def test_cohorts_that_are_not_poisson_sized_are_flagged(tmp_path: Path) -> None:
    def big_cohorts(r: int, fields: dict[str, Any]) -> None:
        fields["realised_cohort"] = int(fields["expected_cohort"] * 2)

    run = write_run(tmp_path / "run", rounds=5, tweak=big_cohorts)
    code, report, html = report_of(run, tmp_path)
    # genuinely signed, but cohorts that far from q*N fail verify's dispersion check (server/audit/cohorts.py)
    problems = report["verification"]["general_problems"]
    assert not report["verification"]["ok"] and [p for p in problems if "vary too much" in p]
    assert code == 1
    assert [m for m in report["mismatches"] if "binomial standard deviations" in m]
    assert "No mismatch found" not in html


@pytest.mark.integration
def test_fixed_size_sampling_is_a_mismatch(tmp_path: Path) -> None:
    def fixed_size(r: int, fields: dict[str, Any]) -> None:
        fields["sampling"] = "fixed-size"

    code, report, _ = report_of(write_run(tmp_path / "run", rounds=2, tweak=fixed_size), tmp_path)
    assert code == 1 and any("not Poisson-sampled" in m for m in report["mismatches"])


def test_noise_free_run_is_reported_as_no_privacy(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", rounds=2, z=0.0, mode="none")
    code, report, _ = report_of(run, tmp_path)
    assert code == 1
    assert report["guarantee"]["epsilon"]["recomputed_pld"] == "inf"
    assert any("without noise" in m for m in report["mismatches"])


def test_the_runs_canary_audit_is_included_and_labelled_unsigned(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", rounds=3)
    statistic = {"epsilon_estimate": 0.7, "threshold_lower_bound": 0.0, "one_run_lower_bound": 0.2}
    audit = {
        **{"ok": True, "problems": [], "inserted": 600, "canaries": 1200, "rounds": 3, "breakage": "none"},
        **{"analytic_epsilon": 1.5, "delta": DELTA, "final_model": statistic, "all_rounds": statistic},
    }
    (run / "canary_audit.json").write_text(json.dumps(audit))
    code, report, html = report_of(run, tmp_path)
    assert code == 0
    assert report["empirical_audit"]["source"].startswith("canary_audit.json (not signed")
    assert "Steinke" in html and "0.7" in html


def test_missing_ledger_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "key.pem"
    signing.save_public_key(KEY.public_key(), key)
    code = audit_cli.main(["report", str(tmp_path), "--public-key", str(key), "--out", str(tmp_path / "o")])
    assert code == 2 and "no ledger" in capsys.readouterr().err
