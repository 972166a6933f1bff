"""The leave-one-out split: row order, nothing leaks, the cold slice is truly absent from training."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.data.schema import UNKNOWN_TIME, Catalogue, Dataset, InteractionLog
from shared.data.split import leave_one_out


def make_dataset(rows: list[tuple[int, int]], n_items: int, created: list[int] | None = None) -> Dataset:
    n = len(rows)
    cat = Catalogue(
        item_ids=[str(i) for i in range(n_items)],
        titles=[f"item {i}" for i in range(n_items)],
        categories=[""] * n_items,
        brands=[""] * n_items,
        descriptions=[""] * n_items,
        price=np.full(n_items, np.nan, dtype=np.float32),
        created_at=np.array(created if created else [UNKNOWN_TIME] * n_items, dtype=np.int64),
        on_promotion=np.zeros(n_items, dtype=bool),
    )
    users = sorted({u for u, _ in rows})
    log = InteractionLog(
        user_ids=[str(u) for u in users],
        user=np.array([users.index(u) for u, _ in rows], dtype=np.int32),
        item=np.array([i for _, i in rows], dtype=np.int32),
        timestamp=np.zeros(n, dtype=np.int64),
        event=np.zeros(n, dtype=np.int8),
        value=np.full(n, np.nan, dtype=np.float32),
    )
    return Dataset("toy", cat, log)


def test_row_order_defines_valid_and_test() -> None:
    # user 0's rows are interleaved with user 1's; their own order must be kept
    rows = [(0, 5), (1, 1), (0, 3), (1, 2), (0, 4), (1, 3), (0, 1), (2, 7), (2, 8)]
    split = leave_one_out(make_dataset(rows, 10))
    assert split.full.of(0).tolist() == [5, 3, 4, 1]
    assert split.valid_target[0] == 4 and split.test_target[0] == 1
    assert split.train.of(0).tolist() == [5, 3]
    assert split.train.of(1).tolist() == [1]
    # a user with two rows is not evaluated and keeps both rows for training
    assert split.eval_users.tolist() == [0, 1]
    assert split.test_target[2] == -1 and split.train.of(2).tolist() == [7, 8]
    assert split.history_end("test")[0] == split.full.offsets[1] - 1
    assert split.history_end("valid")[0] == split.full.offsets[1] - 2


def test_newest_items_are_cold_when_creation_times_are_known() -> None:
    rows = [(0, i) for i in range(5)] + [(1, i) for i in range(5, 10)]
    split = leave_one_out(make_dataset(rows, 10, created=list(range(10))), cold_item_fraction=0.2)
    assert np.flatnonzero(split.cold_items).tolist() == [8, 9]


@settings(max_examples=50, deadline=None)
@given(
    seqs=st.lists(st.lists(st.integers(0, 29), min_size=1, max_size=12), min_size=1, max_size=15),
    fraction=st.sampled_from([0.0, 0.1, 0.3]),
    seed=st.integers(0, 5),
)
def test_nothing_leaks_into_training(seqs: list[list[int]], fraction: float, seed: int) -> None:
    rows = [(u, i) for u, seq in enumerate(seqs) for i in seq]
    split = leave_one_out(make_dataset(rows, 30), cold_item_fraction=fraction, seed=seed)
    assert split.cold_items.sum() == round(fraction * 30)
    assert not split.cold_items[split.train.items].any()
    for u in range(split.full.n_users):
        seq = split.full.of(u).tolist()
        expected = seq[:-2] if len(seq) >= 3 else seq
        assert split.train.of(u).tolist() == [i for i in expected if not split.cold_items[i]]
        with_valid = seq[:-1] if len(seq) >= 3 else seq
        assert split.train_and_valid().of(u).tolist() == [i for i in with_valid if not split.cold_items[i]]
        if len(seq) >= 3:
            assert (split.valid_target[u], split.test_target[u]) == (seq[-2], seq[-1])
