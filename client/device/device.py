"""One shopper's device as an app holds it: sync releases, record events, compose the homepage, show receipts.

`Device(folder, public_key)` keeps everything in one folder, laid out as client/device/device_folder.py says
(the event store, the release cache, the receipts), and pins the release key. Everything stays on the
device: the events are read only by the ranking here; what leaves is nothing (sync only downloads).

The release in use is verified (every file's sha256 against the signed manifest, and the applied catalogue
delta) when it is first opened for ranking and again after every `sync`; it then stays open, so a page
costs one ranking pass, not a verification (`ReleaseInUse`). `fedhome-client` (client/device/device_cli.py)
composes its pages with the same `ReleaseInUse`, with or without a device folder.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import numpy as np

from client.device import receipts_cli
from client.device.deltas import open_ranker
from client.device.device_folder import events_path, releases_path
from client.device.event_store import EventStore, check_timestamp
from client.device.homepage import Homepage, Section
from client.device.item_index import Precision
from client.device.ranker import DeviceRanker, Event
from client.device.receipts import ReceiptStore, summary
from client.device.release_cache import ReleaseCache
from client.device.sync import SyncResult, sync
from client.device.trending_counts import TrendingCounts, release_trending
from shared.errors import DataError
from shared.signing import Ed25519PublicKey, load_public_key

# The most recent events a page is composed from: the user tower reads the last `max_history` of them
# (scoring.json); all of them keep items the shopper has already seen off the page and name their tastes.
HISTORY_EVENTS: Final = 200
NO_RELEASE: Final = "no release installed on this device: run sync (or install) first"


def purchases(history: Sequence[Event]) -> set[str]:
    """The item ids a history purchased (kept off the page unless their category is re-buyable)."""
    return {e.item_id for e in history if e.event == "purchase"}


class ReleaseInUse:
    """The release in use in `cache`, verified and opened for ranking: its signed manifest, its ranker (with
    the applied catalogue delta, verified again), its DP trending counts when it has them, and the
    homepage composed from them. DataError (NO_RELEASE) when none is installed; SignatureError/DataError
    when the release or its delta does not verify."""

    def __init__(self, cache: ReleaseCache, *, precision: Precision = "int8") -> None:
        folder = cache.current()
        if folder is None:
            raise DataError(NO_RELEASE)
        self.manifest: dict[str, Any] = cache.verify_current()
        self.ranker: DeviceRanker = open_ranker(cache, precision=precision)
        self.trending: TrendingCounts | None = release_trending(
            folder, self.manifest, n_items=self.ranker.release_items
        )
        added = self.ranker.n_items - self.ranker.release_items  # items of a catalogue delta: no count yet
        counts = None if self.trending is None else np.pad(self.trending.counts, (0, added))
        self.composer = Homepage(self.ranker, trending=counts)

    @property
    def version(self) -> int:
        return int(self.manifest["version"])

    def homepage(self, history: Sequence[Event], now: int, *, purchased: set[str]) -> list[Section]:
        """The page for `history` at `now` (unix seconds), `purchased` items left off
        (client/device/homepage.py)."""
        return self.composer.compose(history, now, purchased=purchased)

    def recommend(self, history: Sequence[Event], now: int, *, k: int) -> list[str]:
        """The ids of the k best items for `history` at `now`, history items left out; DataError when no event
        names an item of the release."""
        if k < 1:
            raise DataError(f"k must be at least 1, got {k}")
        return self.ranker.recommend(history, now, k=k)

    def titles(self, item_ids: Sequence[str]) -> list[str]:
        """The catalogue titles of these item ids (ids of the release or of its applied delta)."""
        return [self.ranker.items[self.ranker.index[i]]["title"] for i in item_ids]


class Device:
    """One shopper's device over `folder` (created when missing unless `create=False`, then DataError when
    it is not a folder), trusting releases signed by `public_key` (the pinned Ed25519 key, or the path of
    its PEM file). `precision`: "int8" (the two-stage index) or "float32" (exact, every item). Close it
    (or use it as a context manager) to close its event store."""

    def __init__(
        self,
        folder: Path | str,
        public_key: Ed25519PublicKey | Path | str,
        *,
        precision: Precision = "int8",
        create: bool = True,
    ) -> None:
        if precision not in ("int8", "float32"):
            raise DataError(f"precision must be int8 or float32, got {precision!r}")
        key = public_key if isinstance(public_key, Ed25519PublicKey) else load_public_key(Path(public_key))
        self.folder = Path(folder)
        if create:
            self.folder.mkdir(parents=True, exist_ok=True)
        elif not self.folder.is_dir():
            raise DataError("no such device folder (sync or record first)", path=str(self.folder))
        self.precision: Precision = precision
        self.cache = ReleaseCache(releases_path(self.folder), key)
        self.events = EventStore(events_path(self.folder))
        self._release: ReleaseInUse | None = None

    def __enter__(self) -> Device:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._release = None
        self.events.close()

    def sync(self, url: str, *, now_s: float | None = None) -> SyncResult:
        """Bring the device to the service's latest live release at `url` (client/device/sync.py: the signed
        index, fallback from a withdrawn release, repair, the catalogue delta), then mark the receipts the
        release in use includes with its version, as `fedhome-client install --data` does. SignatureError/
        DataError, with the release in use unchanged, when what the service sends does not verify."""
        self._release = None  # opened again, verified, for the next page (even when sync fails half way)
        result = sync(self.cache, url, now_s=now_s)
        if result.current is not None:
            receipts_cli.bind(self.folder, self.cache.verify_current())
        return result

    def record(self, item_id: str, event: str, timestamp: int | None = None) -> None:
        """Record one event of the shopper (`event`: view, cart, purchase or favourite; `timestamp`: unix
        seconds, default now). DataError, nothing written, when any of them is malformed."""
        check_timestamp(timestamp)
        self.events.add(item_id, event, None if timestamp is None else int(timestamp))

    def release(self) -> ReleaseInUse:
        """The release in use, opened (and verified) on first use after a sync; DataError (NO_RELEASE)
        when none is installed."""
        if self._release is None:
            self._release = ReleaseInUse(self.cache, precision=self.precision)
        return self._release

    def homepage(self, now: int | None = None, *, history: Sequence[Event] | None = None) -> list[Section]:
        """The shopper's homepage at `now` (unix seconds, default now), composed on the device from the
        release in use and the device's own events (its HISTORY_EVENTS most recent, its purchases kept off
        the page); `history` replaces the device's events (and its purchases) for this page."""
        events, purchased = self._history(history)
        return self.release().homepage(events, _now(now), purchased=purchased)

    def recommend(
        self, k: int = 10, now: int | None = None, *, history: Sequence[Event] | None = None
    ) -> list[str]:
        """The ids of the k best items for the device's own events (or `history`) at `now`, items already
        in the history left out; DataError when no event names an item of the release."""
        events, _ = self._history(history)
        return self.release().recommend(events, _now(now), k=k)

    def receipts(self) -> list[dict[str, Any]]:
        """The training rounds this device took part in, per run (client/device/receipts.py `summary`),
        with the run's epsilon from the release in use when it is of that run (its receipts marked with its
        version first)."""
        manifest = None
        if self.cache.current() is not None:
            opened = self._release
            manifest = opened.manifest if opened is not None else self.cache.verify_current()
        store = ReceiptStore(self.folder)
        try:
            if manifest is not None:
                store.bind_release(manifest)
            return summary(store.receipts(), manifest)
        finally:
            store.close()

    def wipe(self) -> None:
        """Delete every event of the shopper from the device (the file is compacted too)."""
        self.events.wipe()

    def _history(self, history: Sequence[Event] | None) -> tuple[list[Event], set[str]]:
        if history is not None:
            return list(history), purchases(history)
        return self.events.recent(HISTORY_EVENTS), self.events.purchased()


def _now(now: int | None) -> int:
    check_timestamp(now)
    return int(time.time()) if now is None else int(now)
