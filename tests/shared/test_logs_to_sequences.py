"""The one example builder between devices' logs and the trainer's sequences (shared/data/device_rows.py)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from shared.data.device_rows import sequences_from_logs
from shared.data.schema import EVENT_CODE
from shared.errors import DataError


@dataclass(frozen=True)
class Row:
    item_id: str
    event: str
    timestamp: int


def test_logs_become_time_ordered_sequences_of_catalogue_rows() -> None:
    rows = {"a": 0, "b": 1, "c": 2}
    logs = [
        [Row("b", "cart", 20), Row("a", "view", 10), Row("c", "view", 20)],
        [],
        [Row("c", "purchase", 5)],
    ]
    built = sequences_from_logs(logs, rows)
    seqs = built.sequences
    assert built.unknown_items == 0
    assert seqs.offsets.tolist() == [0, 3, 3, 4]
    assert seqs.of(0).tolist() == [0, 1, 2]  # by time; the two rows of second 20 keep the order given
    codes = [EVENT_CODE[name] for name in ("view", "cart", "view", "purchase")]
    assert seqs.events.tolist() == codes
    assert seqs.timestamps.tolist() == [10, 20, 20, 5]
    assert seqs.items.dtype == np.int32 and seqs.events.dtype == np.int8


def test_unknown_items_are_left_out_and_counted() -> None:
    log = [Row("a", "view", 1), Row("gone", "view", 2), Row("a", "cart", 3)]
    built = sequences_from_logs([log], {"a": 4})
    assert built.unknown_items == 1
    assert built.sequences.of(0).tolist() == [4, 4]


def test_an_unknown_event_type_is_refused() -> None:
    with pytest.raises(DataError, match="unknown event type"):
        sequences_from_logs([[Row("a", "like", 1)]], {"a": 0})
