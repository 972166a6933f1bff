"""The privacy/utility table and plot read run folders' results.json (no training here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from simulation.privacy_utility import main, read_run


def fake_run(folder: Path, *, epsilon: float | str, test: float) -> Path:
    folder.mkdir(parents=True)
    summary = {"user_epsilon": epsilon, "rounds": 5, "noise_multiplier": 1.2 if epsilon != "inf" else 0.0}
    results = {
        "summary": summary,
        "wall_time_s": 12.0,
        "valid": {"overall": {"ndcg_10": test + 0.001}},
        "test": {"overall": {"ndcg_10": test}},
    }
    (folder / "results.json").write_text(json.dumps(results))
    return folder


def test_table_and_plot_from_run_folders(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = [
        fake_run(tmp_path / "eps-2", epsilon=1.999, test=0.031),
        fake_run(tmp_path / "no-noise", epsilon="inf", test=0.037),
    ]
    out = tmp_path / "plot.png"
    assert main([*map(str, runs), "--reference", "text similarity=0.0382", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = capsys.readouterr().out.splitlines()
    assert "| federated (eps-2) | 2.00 | 1.200 | 5 | 0.0320 | 0.0310 | 12 |" in table
    assert any(line.startswith("| federated (no-noise) | no noise (inf)") for line in table)
    assert "| text similarity | - | - | - | - | 0.0382 | - |" in table
    assert read_run(runs[1]).epsilon == float("inf")
