"""`fedhome-sim canary`: audits that pass on the real mechanism and fail on a broken one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from simulation.sim_cli import main

LINEAR = ["canary", "--model", "linear", "--rounds", "50", "--linear-users", "2000", "--linear-dim", "5000"]


def audit(tmp_path: Path, *args: str) -> tuple[int, dict[str, Any]]:
    code = main([*LINEAR, *args, "--out", str(tmp_path)])
    return code, json.loads((tmp_path / "canary_audit.json").read_text())


@pytest.mark.parametrize("seed", ["0", "1", "2"])
@pytest.mark.integration
def test_intact_mechanism_passes_with_bounds_below_the_analytic_epsilon(tmp_path: Path, seed: str) -> None:
    code, report = audit(tmp_path, "--epsilon", "1", "--seed", seed)
    assert code == 0 and report["ok"] and report["problems"] == []
    assert report["analytic_epsilon"] == pytest.approx(1.0, abs=0.01)
    assert report["inserted"] >= 450  # ~half of the 1,200 canaries
    for statistic in ("final_model", "all_rounds"):
        bounds = report[statistic]
        assert bounds["threshold_lower_bound"] < report["analytic_epsilon"]
        assert bounds["one_run_lower_bound"] < report["analytic_epsilon"]


@pytest.mark.parametrize("breakage", ["noise-off", "noise-tenth"])
@pytest.mark.integration
def test_broken_noise_is_caught_far_above_the_claim(tmp_path: Path, breakage: str) -> None:
    code, report = audit(tmp_path, "--epsilon", "1", "--break", breakage)
    assert code == 1 and not report["ok"]
    assert report["applied_noise_multiplier"] < report["noise_multiplier"]
    final = report["final_model"]
    assert final["one_run_lower_bound"] > report["analytic_epsilon"]  # the rigorous bound decides
    assert final["epsilon_estimate"] > 10


@pytest.mark.integration
def test_recommender_audit_runs_on_a_small_shop(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    code = main(
        [
            "canary", "--users", "200", "--items", "120", "--rounds", "5", "--noise-multiplier", "1.0",
            "--canaries", "64", "--allow-underpowered", "--out", str(tmp_path / "out"),
            "--set", f"encoder.cache_dir={cache}", "--set", "encoder.backend=torch",
            "--set", "model.dim=16", "--set", "model.residual_rank=8", "--set", "federated.sample_rate=0.2",
        ]
    )  # fmt: skip
    report = json.loads((tmp_path / "out" / "canary_audit.json").read_text())
    assert report["model"].startswith("two-tower")
    assert report["rounds"] == 5 and report["canary_participations"] > 0
    assert report["population"] == 200 + report["inserted"]
    # 64 canaries among 200 users cannot certify anything: it ran, but it is never OK
    assert code == 3 and report["verdict"] == "CANNOT TEST" and not report["ok"]


def test_canary_audit_refuses_no_noise(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*LINEAR, "--noise-multiplier", "0", "--out", str(tmp_path)]) == 2
    assert "noise_multiplier must be > 0" in capsys.readouterr().err


@pytest.mark.integration
def test_an_audit_without_the_power_to_fail_refuses_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue's measured case: 1,200 canaries at epsilon 8 with the noise off printed OK."""
    code = main([*LINEAR, "--epsilon", "8", "--break", "noise-off", "--out", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 3
    assert "OK" not in out and "cannot test this claim" in err
    assert "no canary count within the memory limit" in err  # 2,000 users: delta too large for epsilon 8
    assert not (tmp_path / "canary_audit.json").exists()


@pytest.mark.integration
def test_an_underpowered_audit_that_runs_anyway_is_never_ok(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    small = ["canary", "--model", "linear", "--rounds", "5", "--linear-users", "500", "--linear-dim", "200"]
    code = main(
        [*small, "--epsilon", "8", "--break", "noise-off", "--allow-underpowered", "--out", str(tmp_path)]
    )
    report = json.loads((tmp_path / "canary_audit.json").read_text())
    assert code == 3 and report["verdict"] == "CANNOT TEST" and not report["ok"] and not report["powered"]
    assert report["attainable_lower_bound"] <= report["analytic_epsilon"]
    out = capsys.readouterr().out
    assert "CANNOT TEST" in out and "\nOK" not in out


@pytest.mark.integration
def test_auto_canaries_pick_the_fewest_with_the_power(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main([*LINEAR, "--epsilon", "3", "--canaries", "auto", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "canary_audit.json").read_text())
    assert report["powered"] and report["attainable_lower_bound"] > report["analytic_epsilon"]
    assert report["canaries"] > 1200  # 1,200 would not have the power at epsilon 3
    assert code == 0 and report["verdict"] == "OK"
    assert "heuristic" in capsys.readouterr().out
