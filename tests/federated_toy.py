"""Tiny settings for real Flower simulation runs of fedhome: a 40-user synthetic shop on two nodes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from shared.config import FedhomeConfig, with_overrides

TINY = {
    "data.synthetic.n_users": "40",
    "data.synthetic.n_items": "60",
    "data.synthetic.n_categories": "4",
    "data.cold_item_fraction": "0",
    "encoder.backend": "torch",
    "encoder.device": "cpu",
    "model.dim": "16",
    "model.residual_rank": "8",
    "model.max_history": "8",
    "federated.sample_rate": "0.5",
    "federated.n_negatives": "16",
    "federated.max_examples_per_user": "4",
    "federated.nodes": "2",
    "federated.eval_every": "1",
    "federated.local_learning_rate": "0.5",
    "privacy.clip_norm": "0.5",
    "privacy.seed": "11",
    # the start check and the popularity prior's count release (both on by default in central mode) have their
    # own runs (test_start_check_federated.py, test_popularity_federated.py); the others keep their ledgers
    # to the training rounds they are about
    "start_check.enabled": "off",
    "popularity.enabled": "off",
}


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
