"""A device SuperNode's training rows, read afresh from its own event store, and its local training log.

A SuperNode started with node config "train-from" = "device-store" and "device-dir" = its device folder
(client/device/device_folder.py) hosts one user, its shopper, in slot 0 (client/node.py). Every message that
needs the shopper's rows (train, trending) reads the folder's `events.sqlite` anew, so events the app recorded
between rounds are in the next round's examples, and turns them into UserSequences with the one example
builder both paths share (shared/data/device_rows.py: sequences_from_logs); the trainer
(client/training/round_update.py) then reads them exactly as it reads a simulated shard's rows. Rows are left
out, and counted in one DEBUG line that names no item, when the catalogue does not know their item or the run
holds the item out of all training (its cold items, `data.cold_item_fraction`: as in simulation).

Bad input: a device folder without an event store, or a store that cannot be read (corrupt, not SQLite, an
event type the schema does not know), is a DataError naming the folder: the node refuses the round rather
than train on nothing. Messages carry no event and no item id. An empty store is a shopper without examples:
a zero update that still counts, as for a sampled simulated user without examples.

The local training log, `training-log.jsonl` in the device folder: one JSON line per round the device trained
in, {"run_id", "round", "events" (rows it trained from), "examples" (training prefixes), "time_utc"}. Like
the receipts (client/device/receipts.py) it stays on the device, beside the events it counts, and leaves it
never: an app can show its shopper what their device did, and a test can see new events reach the next round.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from client.device.device_folder import events_path
from client.device.event_store import EventStore
from client.device.ranker import Event
from shared.data.device_rows import sequences_from_logs
from shared.data.schema import Catalogue
from shared.data.split import UserSequences
from shared.errors import DataError

log = logging.getLogger(__name__)

TRAINING_LOG_FILE = "training-log.jsonl"


class CatalogueRows(Mapping[str, int]):
    """A catalogue's item id -> row, read through Catalogue.index_of (no copy of its index)."""

    def __init__(self, catalogue: Catalogue) -> None:
        self.catalogue = catalogue

    def __getitem__(self, item_id: str) -> int:
        row = self.catalogue.index_of(item_id)
        if row is None:
            raise KeyError(item_id)
        return row

    def __iter__(self) -> Iterator[str]:
        return iter(self.catalogue.item_ids)

    def __len__(self) -> int:
        return self.catalogue.n_items


@dataclass(frozen=True)
class TrainedRound:
    """One line of a device's training log."""

    run_id: str
    round: int
    events: int  # rows the device trained from (known, not held-out items)
    examples: int  # training prefixes it trained on (at most federated.max_examples_per_user)
    time_utc: str


@dataclass(frozen=True)
class DeviceStore:
    """The event store and training log of the device folder `folder`."""

    folder: Path

    def rows(self, catalogue: Catalogue, *, blocked: np.ndarray) -> UserSequences:
        """The shopper's rows (one user), read from the store now; `blocked` (n_items,) bool: items the run
        holds out of all training. DataError naming the folder when there is no readable store."""
        try:
            device = sequences_from_logs([self._events()], CatalogueRows(catalogue))
        except DataError as exc:
            raise DataError(f"refusing to train: {exc}", path=str(self.folder)) from exc
        rows, held_out = without_items(device.sequences, blocked)
        if device.unknown_items or held_out:
            log.debug(
                "left out %d events of items the catalogue does not know, %d of items held out of training",
                device.unknown_items,
                held_out,
            )
        return rows

    def _events(self) -> list[Event]:
        path = events_path(self.folder)
        if not path.is_file():  # EventStore would start a new, empty store: training on nothing, silently
            raise DataError(f"the device folder holds no event store ({path.name})")
        store = EventStore(path)
        try:
            return store.events()
        finally:
            store.close()

    def log_round(self, *, run_id: str, round_number: int, events: int, examples: int) -> None:
        """Append the round to the device's training log."""
        now = datetime.now(UTC).isoformat(timespec="seconds")
        line = TrainedRound(run_id, round_number, events, examples, now)
        with (self.folder / TRAINING_LOG_FILE).open("a", encoding="utf-8") as out:
            out.write(json.dumps(asdict(line)) + "\n")

    def training_log(self) -> list[TrainedRound]:
        """The rounds the device trained in, oldest first (none when it has no log yet)."""
        path = self.folder / TRAINING_LOG_FILE
        if not path.exists():
            return []
        try:
            return [TrainedRound(**json.loads(line)) for line in path.read_text().splitlines() if line]
        except (ValueError, TypeError) as exc:
            raise DataError(f"the training log is unreadable: {exc}", path=str(path)) from exc


def without_items(seqs: UserSequences, drop: np.ndarray) -> tuple[UserSequences, int]:
    """`seqs` without the rows whose item is flagged in `drop` (n_items,) bool, and how many were dropped."""
    keep = ~drop[seqs.items]
    if keep.all():
        return seqs, 0
    owner = np.repeat(np.arange(seqs.n_users), seqs.lengths())
    kept = np.bincount(owner[keep], minlength=seqs.n_users)
    offsets = np.concatenate([[0], np.cumsum(kept)]).astype(np.int64)
    rows = UserSequences(offsets, seqs.items[keep], seqs.events[keep], seqs.timestamps[keep])
    return rows, int((~keep).sum())
