"""Tiny hand-made shops for tests: users with given item sequences, a catalogue of numbered items."""

from __future__ import annotations

import numpy as np

from shared.data.schema import UNKNOWN_TIME, Catalogue, Dataset, InteractionLog


def toy_dataset(sequences: list[list[int]], n_items: int) -> Dataset:
    """User u has the items sequences[u] in row order (timestamps = row numbers); items have bare text."""
    catalogue = Catalogue(
        item_ids=[f"i{i}" for i in range(n_items)],
        titles=[f"item {i}" for i in range(n_items)],
        categories=[""] * n_items,
        brands=[""] * n_items,
        descriptions=[""] * n_items,
        price=np.full(n_items, np.nan, np.float32),
        created_at=np.full(n_items, UNKNOWN_TIME, np.int64),
        on_promotion=np.zeros(n_items, bool),
    )
    user = np.repeat(np.arange(len(sequences)), [len(s) for s in sequences]).astype(np.int32)
    n = user.shape[0]
    log = InteractionLog(
        user_ids=[f"u{u}" for u in range(len(sequences))],
        user=user,
        item=np.concatenate([np.asarray(s, np.int32) for s in sequences]),
        timestamp=np.arange(n, dtype=np.int64),
        event=np.zeros(n, np.int8),
        value=np.full(n, np.nan, np.float32),
    )
    return Dataset("toy", catalogue, log)
