"""The quality benchmark's plan, its quality.json and plots, from run folders already there (no training)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from simulation.benchmarks.bench_quality import jobs_for, main

CENTRAL = {"popularity": 0.006, "text": 0.038, "two-tower": 0.054}


def fake_central(folder: Path, shift: float) -> None:
    folder.mkdir(parents=True)
    models = {name: {"test": {"overall": {"ndcg_10": value + shift}}} for name, value in CENTRAL.items()}
    (folder / "metrics.json").write_text(json.dumps({"models": models}))


def fake_federated(folder: Path, epsilon: float | str, test: float) -> None:
    folder.mkdir(parents=True)
    summary = {"user_epsilon": epsilon, "rounds": 500, "noise_multiplier": 1.0}
    results = {
        "summary": summary,
        "wall_time_s": 600.0,
        "valid": {"overall": {"ndcg_10": test}},
        "test": {"overall": {"ndcg_10": test}},
    }
    (folder / "results.json").write_text(json.dumps(results))


def test_the_plan_runs_every_model_for_every_seed_and_the_sweep_only_on_its_set() -> None:
    sweep = jobs_for(
        "beauty", "data/beauty", out=Path("o"), seeds=[0, 1], epsilons=["8", "4", "2", "1"], extra=[]
    )
    assert [(j.kind, j.seed) for j in sweep][:4] == [("central", 0), ("central", 1), ("8", 0), ("8", 1)]
    assert {j.kind for j in sweep} == {"central", "8", "4", "2", "1", "none"} and len(sweep) == 12
    command = " ".join(next(j for j in sweep if j.kind == "none" and j.seed == 1).command)
    assert "federated --dataset data/beauty" in command and "--mode none" in command
    assert "--set federated.seed=1 --set privacy.seed=1" in command and command.endswith(
        "federated-none-seed1"
    )
    eps4 = " ".join(next(j for j in sweep if j.kind == "4").command)
    assert "--epsilon 4" in eps4 and "data.cold_item_fraction=0" in eps4
    central = " ".join(sweep[0].command)
    assert "run --dataset data/beauty" in central and "--model popularity,text,two-tower" in central


def test_quality_json_holds_means_every_seed_and_the_share_of_the_central_gain(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "runs"
    for seed, shift in ((0, 0.0), (1, 0.002)):
        fake_central(out / "synthetic" / f"central-seed{seed}", shift)
        fake_federated(out / "synthetic" / f"federated-8-seed{seed}", 7.99, 0.046 + shift)
        fake_federated(out / "synthetic" / f"federated-none-seed{seed}", "inf", 0.050 + shift)
    target = tmp_path / "docs" / "quality.json"
    argv = [
        "--sets",
        "synthetic,absent_shop",
        "--data-root",
        str(tmp_path),
        "--out",
        str(out),
        "--json",
        str(target),
    ]
    assert main(argv) == 0  # every run is already there: nothing is trained
    printed = capsys.readouterr().out
    assert "absent_shop: not in" in printed and "[4/6] synthetic 8 seed 1: test NDCG@10 0.0480" in printed
    (summary,) = json.loads(target.read_text())
    assert summary["dataset"] == "synthetic"
    assert summary["text"] == pytest.approx(0.039) and summary["central"] == pytest.approx(0.055)
    assert summary["federated"] == {"8": pytest.approx(0.047), "none": pytest.approx(0.051)}
    assert summary["runs"]["federated_8"] == {"seed0": 0.046, "seed1": pytest.approx(0.048)}
    assert summary["eps8_share_of_central_gain"] == pytest.approx((0.047 - 0.039) / (0.055 - 0.039), abs=1e-3)
    assert (target.parent / "quality-synthetic.png").read_bytes()[:4] == b"\x89PNG"


def test_kinds_limit_what_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--sets", "synthetic", "--seeds", "3", "--kinds", "none", "--out", str(tmp_path), "--dry-run"]
    assert main(argv) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith("to run fedhome-sim federated --dataset synthetic") and "--mode none" in line


def test_no_run_writes_from_the_runs_already_there(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    fake_central(out / "synthetic" / "central-seed0", 0.0)
    target = tmp_path / "quality.json"
    assert (
        main(["--sets", "synthetic", "--seeds", "0", "--out", str(out), "--json", str(target), "--no-run"])
        == 0
    )
    (summary,) = json.loads(target.read_text())
    assert summary["central"] == pytest.approx(0.054) and summary["federated"] == {}
