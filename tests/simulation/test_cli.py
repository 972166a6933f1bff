"""`fedhome-sim` end to end on a small synthetic shop: real encoder, real training, a real results folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from simulation.sim_cli import build_parser, config_from_args, main

SMALL = ["--users", "300", "--items", "200", "--no-progress"]


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run")
    cache = tmp_path_factory.mktemp("cache")
    code = main(
        [
            "run",
            *SMALL,
            "--model",
            "all",
            "--out",
            str(out),
            "--set",
            f"encoder.cache_dir={cache}",
            "--set",
            "encoder.backend=torch",
            "--set",
            "train.epochs=3",
            "--set",
            "mf.epochs=3",
        ]
    )
    assert code == 0
    return out


@pytest.mark.integration
def test_run_writes_metrics_table_and_config(run_folder: Path) -> None:
    metrics = json.loads((run_folder / "metrics.json").read_text())
    assert set(metrics["models"]) == {"popularity", "text", "mf", "two-tower"}
    for model in metrics["models"].values():
        for stage in ("valid", "test"):
            overall = model[stage]["overall"]
            assert overall["n_users"] > 0
            assert 0.0 <= overall["ndcg_10"] <= overall["hr_10"] <= overall["recall_20"] <= 1.0
    config = json.loads((run_folder / "config.json").read_text())
    assert config["data"]["synthetic"]["n_users"] == 300
    assert config["train"]["epochs"] == 3
    table = (run_folder / "results.md").read_text()
    assert "| two-tower |" in table and "| popularity |" in table


def test_models_that_read_the_history_beat_popularity(run_folder: Path) -> None:
    models = json.loads((run_folder / "metrics.json").read_text())["models"]
    popularity = models["popularity"]["test"]["overall"]["ndcg_10"]
    assert models["text"]["test"]["overall"]["ndcg_10"] > 2 * popularity
    assert models["two-tower"]["test"]["overall"]["ndcg_10"] > 2 * popularity


def test_missing_dataset_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", "--dataset", str(tmp_path / "nowhere"), "--model", "popularity", "--no-progress"])
    assert code == 2
    assert "nowhere" in capsys.readouterr().err


def test_bad_override_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", *SMALL, "--model", "popularity", "--set", "train.epochs=zero"]) == 2
    captured = capsys.readouterr()
    assert "'epochs'" in captured.err and "'zero'" in captured.err and "int" in captured.err
    assert captured.out == ""  # refused before anything ran
    with pytest.raises(SystemExit) as refused:
        main(["run", "--model", "nonsense"])
    assert refused.value.code == 2 and "'nonsense'" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["run", "federated", "canary"])
def test_every_command_that_loads_a_shop_takes_skip_bad_rows(command: str) -> None:
    # the loaders' bad-row error tells a person to rerun with --skip-bad-rows, whichever command they ran
    extra = ["--epsilon", "8"] if command == "canary" else []
    args = build_parser().parse_args([command, "--skip-bad-rows", *extra])
    assert config_from_args(args).data.skip_bad_rows
    assert not config_from_args(build_parser().parse_args([command, *extra])).data.skip_bad_rows


def test_generate_writes_the_csv_layout(tmp_path: Path) -> None:
    assert main(["generate", str(tmp_path / "shop"), "--users", "50", "--items", "40"]) == 0
    header = (tmp_path / "shop" / "interactions.csv").read_text().splitlines()[0]
    assert header.startswith("user_id,item_id,timestamp")
    code = main(
        [
            "run",
            "--dataset",
            str(tmp_path / "shop"),
            "--model",
            "popularity",
            "--no-progress",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code == 0
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["dataset"] == "shop"


@pytest.mark.integration
def test_calibrate_finds_the_noise_that_spends_the_budget(capsys: pytest.CaptureFixture[str]) -> None:
    # NOTES.md: epsilon 8 at q = 0.05 (delta = N^-1.1 for Beauty's 22,363 users) allows 500 rounds at z 0.956
    args = [
        "calibrate",
        "--epsilon",
        "8",
        "--rounds",
        "500",
        "--sample-rate",
        "0.05",
        "--population",
        "22363",
    ]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["noise_multiplier"] == pytest.approx(0.956, abs=2e-3)
    assert out["user_epsilon_pld"] <= 8.0 < out["user_epsilon_rdp"]
    assert out["delta"] == pytest.approx(22363**-1.1)
