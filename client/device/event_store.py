"""The device's own interaction log (SQLite): views, carts, purchases, favourites; retention and a wipe.

It never leaves the device. Retention: at most `max_events` events and none older than `max_age_days`
(both enforced on every write); `wipe()` deletes everything and compacts the file so nothing lingers in
free pages.

A store that cannot be read is refused, never silently started afresh (that would drop the user's
history without a word): opening runs `PRAGMA quick_check`, a file that exists but is empty or not a
SQLite database is a DataError naming it, and every SQLite error on the way (sqlite3.DatabaseError) becomes
a DataError naming the file (messages carry no events). A file that does not exist is a new, empty store.
`check_event` and `check_timestamp` are the one check of an event's shape, used by `add` and by the history
files of `fedhome-client` (client/device/device_cli.py).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from client.device.ranker import Event
from shared.errors import DataError

DEVICE_EVENTS = ("view", "cart", "purchase", "favourite")
SECONDS_PER_DAY = 86_400
# Event times are unix seconds up to 2100-01-01 (the bound of catalogue times, server/catalogue/): a time
# in milliseconds (an app's clock read in ms) is refused, not recorded, since the store's retention would
# then drop every older event as a year stale.
MAX_TIMESTAMP_S = 4_102_444_800


def check_event(item_id: object, event: object) -> None:
    """DataError unless `event` is one of DEVICE_EVENTS and `item_id` a non-empty string of at most 256
    characters (what the event store records and a history file may hold)."""
    if event not in DEVICE_EVENTS:
        raise DataError(f"unknown event {event!r}; expected one of {DEVICE_EVENTS}")
    if not isinstance(item_id, str) or not item_id or len(item_id) > 256:
        raise DataError("item_id must be a non-empty string of at most 256 characters")


def check_timestamp(timestamp: object) -> None:
    """DataError unless `timestamp` is None (now) or whole unix seconds in [0, MAX_TIMESTAMP_S]."""
    if timestamp is None:
        return
    if isinstance(timestamp, bool) or not isinstance(timestamp, int | np.integer):
        raise DataError(f"timestamp must be whole unix seconds, got {type(timestamp).__name__}")
    if not 0 <= int(timestamp) <= MAX_TIMESTAMP_S:
        raise DataError(f"timestamp {int(timestamp)} is not unix seconds before 2100 (milliseconds?)")


class EventStore:
    """The events in the SQLite file `path` (created when missing; refused when it exists but cannot be
    read as an event store: see the module docstring)."""

    def __init__(self, path: Path, *, max_events: int = 1_000, max_age_days: int = 365) -> None:
        if max_events < 1 or max_age_days < 1:
            raise DataError("retention limits must be positive")
        self.path = Path(path)
        self.max_events, self.max_age_s = max_events, max_age_days * SECONDS_PER_DAY
        if self.path.is_file() and self.path.stat().st_size == 0:  # SQLite would open it as a new store
            raise DataError("the event store is an empty file, not a database; refused", path=str(self.path))
        with self._database():
            self.db = sqlite3.connect(str(self.path))
        try:
            self._open()
        except DataError:
            self.db.close()
            raise

    def _open(self) -> None:
        with self._database():
            problems = [row[0] for row in self.db.execute("PRAGMA quick_check").fetchall()]
            if problems != ["ok"]:
                message = f"the event store failed its integrity check ({len(problems)} problems)"
                raise DataError(message, path=str(self.path))
            self.db.execute("PRAGMA secure_delete = ON")
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, item_id TEXT NOT NULL, "
                "event TEXT NOT NULL, timestamp INTEGER NOT NULL)"
            )
            self.db.commit()

    def add(self, item_id: str, event: str, timestamp: int | None = None) -> None:
        """Record one event (refused with DataError when malformed; nothing is written then)."""
        check_event(item_id, event)
        check_timestamp(timestamp)
        now = int(time.time()) if timestamp is None else int(timestamp)
        with self._database(), self.db:
            self.db.execute(
                "INSERT INTO events (item_id, event, timestamp) VALUES (?, ?, ?)", (item_id, event, now)
            )
            self._retain(now)

    def recent(self, n: int = 50) -> list[Event]:
        """The n most recent events, oldest first."""
        with self._database():
            rows = self.db.execute(
                "SELECT item_id, event, timestamp FROM events ORDER BY timestamp DESC, id DESC LIMIT ?", (n,)
            ).fetchall()
        return [Event(item, event, ts) for item, event, ts in reversed(rows)]

    def events(self) -> list[Event]:
        """Every event the store holds, oldest first (events of the same second in the order recorded): what
        a device SuperNode trains on (client/training/device_store.py)."""
        with self._database():
            rows = self.db.execute(
                "SELECT item_id, event, timestamp FROM events ORDER BY timestamp, id"
            ).fetchall()
        return [Event(item, event, ts) for item, event, ts in rows]

    def purchased(self) -> set[str]:
        with self._database():
            rows = self.db.execute("SELECT DISTINCT item_id FROM events WHERE event = 'purchase'").fetchall()
        return {row[0] for row in rows}

    def count(self) -> int:
        with self._database():
            return int(self.db.execute("SELECT COUNT(*) FROM events").fetchone()[0])

    def wipe(self) -> None:
        """Delete every event and compact the database file."""
        with self._database():
            with self.db:
                self.db.execute("DELETE FROM events")
            self.db.execute("VACUUM")

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def _database(self) -> Iterator[None]:
        """SQLite's errors (a corrupt or unreadable file) as a DataError naming the file."""
        try:
            yield
        except sqlite3.DatabaseError as exc:
            raise DataError(
                f"the event store cannot be read ({type(exc).__name__}: {exc})", path=str(self.path)
            ) from exc

    def _retain(self, now: int) -> None:
        self.db.execute("DELETE FROM events WHERE timestamp < ?", (now - self.max_age_s,))
        self.db.execute(
            "DELETE FROM events WHERE id NOT IN "
            "(SELECT id FROM events ORDER BY timestamp DESC, id DESC LIMIT ?)",
            (self.max_events,),
        )
