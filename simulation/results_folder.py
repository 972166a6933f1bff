"""Results folders and tables: metrics JSON, a markdown table and the config a run used."""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import time
from pathlib import Path
from typing import Any

from shared.config import FedhomeConfig
from simulation.run import ModelRun, Prepared

COLUMNS = ("HR@10", "NDCG@10", "Recall@20", "Cov@10")


def _fmt(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.4f}"


def markdown_table(runs: list[ModelRun]) -> str:
    """One row per model: test metrics overall and on the cold-start slice, validation NDCG@10, fit time."""
    header = (
        "| model | test HR@10 | test NDCG@10 | test Recall@20 | test Cov@10 | cold NDCG@10 (users) "
        "| valid NDCG@10 | fit s |"
    )
    lines = [header, "|" + "---|" * 8]
    for r in runs:
        t, c = r.test.overall, r.test.cold
        lines.append(
            f"| {r.name} | {_fmt(t.hr_10)} | {_fmt(t.ndcg_10)} | {_fmt(t.recall_20)} | {_fmt(t.coverage_10)} "
            f"| {_fmt(c.ndcg_10)} ({c.n_users}) | {_fmt(r.valid.overall.ndcg_10)} | {r.fit_time_s:.1f} |"
        )
    return "\n".join(lines)


def bucket_table(runs: list[ModelRun]) -> str:
    """Test NDCG@10 per user-activity bucket (training rows per user)."""
    labels = list(runs[0].test.buckets) if runs else []
    lines = ["| model | " + " | ".join(f"{b} rows" for b in labels) + " |", "|" + "---|" * (len(labels) + 1)]
    for r in runs:
        cells = [f"{_fmt(r.test.buckets[b].ndcg_10)} ({r.test.buckets[b].n_users})" for b in labels]
        lines.append(f"| {r.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def population_line(prep: Prepared, runs: list[ModelRun]) -> str:
    """Who was evaluated: users per stage, repeat targets left out, cold items held out."""
    parts = [
        f"{prep.dataset.name}: {prep.split.n_items} items, {int(prep.split.cold_items.sum())} cold items"
    ]
    if runs:
        for result in (runs[0].valid, runs[0].test):
            parts.append(
                f"{result.stage}: {result.overall.n_users} users evaluated"
                f" ({result.n_target_in_history} with a repeat target)"
            )
    return "; ".join(parts)


def config_to_dict(config: FedhomeConfig) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def write_results(folder: Path, prep: Prepared, runs: list[ModelRun], *, command: str, wall_s: float) -> None:
    """Write config.json, metrics.json and results.md into `folder` (created if needed)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config_to_dict(prep.config), indent=2) + "\n")
    metrics = {
        "dataset": prep.dataset.name,
        "command": command,
        "wall_time_s": round(wall_s, 1),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "load_report": dataclasses.asdict(prep.load_report) if prep.load_report is not None else None,
        "models": {
            r.name: {
                "valid": r.valid.to_dict(),
                "test": r.test.to_dict(),
                "fit_time_s": round(r.fit_time_s, 2),
                "details": r.details,
            }
            for r in runs
        },
    }
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2, default=_json_default) + "\n")
    text = (
        f"# {prep.dataset.name}\n\n`{command}` ({wall_s:.0f} s wall)\n\n"
        f"{population_line(prep, runs)} (repeat-target policy: {prep.config.eval.repeat_targets}).\n\n"
        f"{markdown_table(runs)}\n\nTest NDCG@10 by user activity:\n\n{bucket_table(runs)}\n"
    )
    (folder / "results.md").write_text(text)


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "item"):
        return value.item()
    return str(value)
