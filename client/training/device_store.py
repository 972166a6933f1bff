"""A device SuperNode's training rows, read afresh from its own event store, the catalogue it trains with (its
installed release's), and its local training log.

A SuperNode started with node config "train-from" = "device-store" and "device-dir" = its device folder
(client/device/device_folder.py) hosts one user, its shopper, in slot 0 (client/node.py). Every message that
needs the shopper's rows (train, trending) reads the folder's `events.sqlite` anew, so events the app recorded
between rounds are in the next round's examples, and turns them into UserSequences with the one example
builder both paths share (shared/data/device_rows.py: sequences_from_logs); the trainer
(client/training/round_update.py) then reads them exactly as it reads a simulated shard's rows. Rows are left
out, and counted in one DEBUG line that names no item, when the catalogue does not know their item.

The catalogue: the release installed in the device folder (`releases/`, what the app synced: client/device/
sync.py), verified with the app's pinned release key (node config "release-key") before each use
(`verified_release`); its catalogue is read once per release (`read_catalogue`, client/node.py). Its item
ids, its text embeddings (the release's per-row int8 text, dequantised: the server trains the same model on
the float text, a difference of the int8 rounding, at most half a step per entry) and its attribute columns
(category, price bucket, promotion) are the item features the device trains with, so
a device needs nothing of the simulation's data set: no dataset, no run folder. A device trains with no
item held out (a simulation's cold items are a measurement of the simulation's; a shop sells all it lists).
The run's messages carry only parameters and, with a popularity prior, one value per catalogue item, which
must be as many as the release has items (client/node.py Node.use_prior refuses another count); the
release must therefore be one of the run's catalogue, in its order, which every release of a run is.

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

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from client.device.device_folder import events_path, releases_path
from client.device.event_store import EventStore
from client.device.ranker import Event
from client.device.release_cache import ReleaseCache
from shared.data.device_rows import sequences_from_logs
from shared.data.split import UserSequences
from shared.derived_items import ATTRIBUTES, TEXT_INT8, TEXT_SCALES, TOWER_ATTRIBUTES
from shared.errors import DataError, SignatureError
from shared.model import ItemFeatures
from shared.signing import Ed25519PublicKey, canonical_json

log = logging.getLogger(__name__)

TRAINING_LOG_FILE = "training-log.jsonl"


@dataclass(frozen=True, eq=False)
class InstalledCatalogue:
    """The catalogue of the release installed in a device folder, as the device trains with it."""

    item_rows: dict[str, int]  # item id -> row
    features: ItemFeatures


@dataclass(frozen=True)
class VerifiedRelease:
    """The release in use in a device folder, verified: its folder and what identifies it."""

    folder: Path
    manifest: dict[str, Any]
    manifest_sha256: str  # a new release, or a repaired one, is another catalogue


def verified_release(device_dir: Path, public_key: Ed25519PublicKey) -> VerifiedRelease:
    """The release in use in `device_dir`, verified with the pinned `public_key`. DataError naming the folder
    when no release is installed or it does not verify."""
    cache = ReleaseCache(releases_path(device_dir), public_key)
    try:
        manifest = cache.verify_current()
    except (DataError, SignatureError) as exc:
        message = f"refusing to train: no verified release installed ({exc})"
        raise DataError(message, path=str(device_dir)) from exc
    folder = cache.current()
    assert folder is not None  # verify_current raised otherwise
    return VerifiedRelease(folder, manifest, hashlib.sha256(canonical_json(manifest)).hexdigest())


def read_catalogue(release: VerifiedRelease, device_dir: Path) -> InstalledCatalogue:
    """The catalogue a device trains with, read from its verified `release`. DataError naming the device
    folder when the release carries no catalogue inputs (a release of a model with an item-id residual ships
    none: shared/derived_items.py) or they do not fit one another."""
    folder, manifest, where = release.folder, release.manifest, str(device_dir)
    needed = (TEXT_INT8, TEXT_SCALES, ATTRIBUTES, TOWER_ATTRIBUTES, "items.json")
    if not set(needed) <= set(manifest["files"]):
        raise DataError("refusing to train: the installed release carries no catalogue text", path=where)
    try:
        text = np.load(folder / TEXT_INT8).astype(np.float32) * np.load(folder / TEXT_SCALES)[:, None]
        columns, width = np.load(folder / ATTRIBUTES), int(np.load(folder / TOWER_ATTRIBUTES).shape[1])
        ids = [str(item["id"]) for item in json.loads((folder / "items.json").read_text())]
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise DataError(f"refusing to train: the release is unreadable ({exc})", path=where) from exc
    if len(ids) != len(text) or len(set(ids)) != len(ids):
        raise DataError("refusing to train: the release's items do not fit its text rows", path=where)
    return InstalledCatalogue(
        item_rows={item_id: row for row, item_id in enumerate(ids)},
        features=ItemFeatures.from_attribute_columns(text, columns, width),
    )


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

    def rows(self, item_rows: Mapping[str, int], *, blocked: np.ndarray) -> UserSequences:
        """The shopper's rows (one user), read from the store now, with the catalogue's item id -> row;
        `blocked` (n_items,) bool: items held out of all training. DataError naming the folder when there is
        no readable store."""
        try:
            device = sequences_from_logs([self._events()], item_rows)
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
