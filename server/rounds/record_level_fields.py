"""Ledger fields of record-level DP-SGD on the devices (privacy.record_level): a guarantee per record, one
training example (one prefix of the user's sequence, client/training/dp_sgd.py), against an observer of a
device's updates, labelled as such; NOT the user-level guarantee. One interaction appears in up to
1 + max_history examples: per interaction it is group privacy over that many records (not computed).
Ledgers written before this unit was named carry "record" for the same unit."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from server.rounds.messaging import TrainReplies
from shared.privacy.accounting import json_epsilon

UNIT_OF_PRIVACY = "training_example"  # what one record is ("record" in older ledgers: the same unit)


def record_epsilon_so_far(replies: TrainReplies, history: Sequence[dict[str, Any]]) -> float | None:
    """The largest record-level epsilon any device has reported up to this round (None: not that mode);
    `history`: the metrics rows of the earlier rounds."""
    if replies.record_epsilon is None:
        return None
    earlier = [float(row.get("record_epsilon", 0.0)) for row in history]
    return max([replies.record_epsilon, *earlier])


def record_level_fields(
    record: float | None, replies: TrainReplies, *, record_delta: float
) -> dict[str, Any]:
    """The round's record-level ledger fields ({} when the run is not in record-level mode)."""
    if record is None or replies.record_epsilon is None:
        return {}
    return {
        "record_epsilon": json_epsilon(record),  # the largest over every device so far
        "record_epsilon_round": json_epsilon(replies.record_epsilon),  # largest over this round's devices
        "record_delta": record_delta,
        "record_accountant": "rdp",
        "record_unit_of_privacy": UNIT_OF_PRIVACY,
    }
