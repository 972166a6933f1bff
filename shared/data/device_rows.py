"""Devices' own event logs as the training sequences the trainer reads: one example builder for both paths.

A device (client/device/event_store.py) keeps (item_id, event, timestamp) rows; a simulation keeps virtual
devices' rows in a Split. Training reads UserSequences either way (shared/model/examples.py picks the
targets, client/training/local_batch.py builds the prefixes), so a device that trains from its own store and
a shard of virtual devices build their examples with the same code. This module is the one step in between:
each log sorted by time (ties in the order given), item ids mapped to catalogue rows. Rows of items the
catalogue does not know (an item withdrawn since, a log from another shop) are left out and counted, never
guessed; an event type the schema does not know is a DataError.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from shared.data.schema import EVENT_CODE
from shared.data.split import UserSequences
from shared.errors import DataError


class LoggedEvent(Protocol):
    """One row of a device's log (client/device/ranker.py's Event has this shape)."""

    @property
    def item_id(self) -> str: ...

    @property
    def event(self) -> str: ...

    @property
    def timestamp(self) -> int: ...


@dataclass(frozen=True)
class DeviceRows:
    """The sequences of the logs given, in the order given, and how many rows named unknown items."""

    sequences: UserSequences
    unknown_items: int


def sequences_from_logs(logs: Sequence[Sequence[LoggedEvent]], item_rows: Mapping[str, int]) -> DeviceRows:
    """One user per log (user u = logs[u]), each user's rows in time order (a stable sort: events of the same
    second keep the order given); `item_rows` maps a catalogue item id to its row."""
    offsets = np.zeros(len(logs) + 1, dtype=np.int64)
    items: list[int] = []
    events: list[int] = []
    times: list[int] = []
    unknown = 0
    for user, log in enumerate(logs):
        kept = 0
        for event in sorted(log, key=lambda e: int(e.timestamp)):
            code = EVENT_CODE.get(event.event)
            if code is None:
                raise DataError(f"unknown event type {event.event!r}; expected one of {tuple(EVENT_CODE)}")
            row = item_rows.get(event.item_id)
            if row is None:
                unknown += 1
                continue
            items.append(int(row))
            events.append(code)
            times.append(int(event.timestamp))
            kept += 1
        offsets[user + 1] = offsets[user] + kept
    sequences = UserSequences(
        offsets=offsets,
        items=np.asarray(items, dtype=np.int32),
        events=np.asarray(events, dtype=np.int8),
        timestamps=np.asarray(times, dtype=np.int64),
    )
    return DeviceRows(sequences, unknown)
