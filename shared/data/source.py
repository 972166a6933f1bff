"""The configured shop: the built-in synthetic one, or files in one of the supported formats."""

from __future__ import annotations

from pathlib import Path

from shared.config import DataConfig
from shared.data.loaders import LoadReport, load_dataset
from shared.data.schema import Dataset
from shared.data.split import Split, leave_one_out
from shared.data.synthetic import generate_shop


def load_configured(config: DataConfig) -> tuple[Dataset, LoadReport | None]:
    """The dataset `config` names and, for files, the loader's report (None for the synthetic shop)."""
    if config.dataset == "synthetic":
        return generate_shop(config.synthetic), None
    return load_dataset(Path(config.dataset), format=config.format, skip_bad_rows=config.skip_bad_rows)


def configured_split(config: DataConfig) -> Split:
    """The leave-one-out split of the configured dataset (deterministic: every node computes the same)."""
    dataset, _ = load_configured(config)
    return leave_one_out(dataset, cold_item_fraction=config.cold_item_fraction, seed=config.split_seed)
