"""The device's reading of a verified release's trending counts: a malformed block is a DataError."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from client.device.trending_counts import release_trending
from shared.errors import DataError

N_ITEMS = 4
KEYS = ("after_round", "epsilon", "ledger_entry_hash", "count_noise_std")


def manifest(folder: Path) -> dict[str, Any]:
    np.save(folder / "trending_counts.npy", np.arange(N_ITEMS, dtype=np.float32))
    block = {"file": "trending_counts.npy", "after_round": 3, "epsilon": 1.5}
    block |= {"ledger_entry_hash": "ab" * 32, "count_noise_std": 2.0}
    return {"files": {"trending_counts.npy": "sha"}, "privacy": {"trending": block}}


def test_a_release_trending_block_is_read(tmp_path: Path) -> None:
    counts = release_trending(tmp_path, manifest(tmp_path), n_items=N_ITEMS)
    assert counts is not None and counts.after_round == 3 and counts.count_noise_std == 2.0


@pytest.mark.parametrize("key", KEYS)
def test_a_trending_block_missing_a_key_is_a_data_error(tmp_path: Path, key: str) -> None:
    fields = manifest(tmp_path)
    del fields["privacy"]["trending"][key]
    with pytest.raises(DataError, match=key):
        release_trending(tmp_path, fields, n_items=N_ITEMS)


def test_a_trending_block_with_a_malformed_value_is_a_data_error(tmp_path: Path) -> None:
    fields = manifest(tmp_path)
    fields["privacy"]["trending"]["after_round"] = "three"
    with pytest.raises(DataError):
        release_trending(tmp_path, fields, n_items=N_ITEMS)
