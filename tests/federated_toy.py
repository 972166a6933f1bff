"""Tiny settings for real Flower simulation runs of fedhome: a 40-user synthetic shop on two nodes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from shared.config import FedhomeConfig, with_overrides
from simulation.federated import TINY_RUN

TINY = TINY_RUN


def tiny_settings(tmp_path: Path, cache: Path, **overrides: str) -> dict[str, str]:
    """TINY with the run folder and encoder cache; keyword overrides name keys with "__" for "."."""
    return {
        **TINY,
        "encoder.cache_dir": str(cache),
        "federated.run_dir": str(tmp_path / "run"),
        **{k.replace("__", "."): v for k, v in overrides.items()},
    }


def tiny_config(tmp_path: Path, cache: Path, **overrides: str) -> FedhomeConfig:
    config: FedhomeConfig = with_overrides(FedhomeConfig(), tiny_settings(tmp_path, cache, **overrides))
    return config


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file (a ledger, metrics): values as json.loads gives them (Any)."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
