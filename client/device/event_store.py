"""The device's own interaction log (SQLite): views, carts, purchases, favourites; retention and a wipe.

It never leaves the device. Retention: at most `max_events` events and none older than `max_age_days`
(both enforced on every write); `wipe()` deletes everything and compacts the file so nothing lingers in
free pages.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from client.device.ranker import Event
from shared.errors import DataError

DEVICE_EVENTS = ("view", "cart", "purchase", "favourite")
SECONDS_PER_DAY = 86_400


class EventStore:
    def __init__(self, path: Path, *, max_events: int = 1_000, max_age_days: int = 365) -> None:
        if max_events < 1 or max_age_days < 1:
            raise DataError("retention limits must be positive")
        self.max_events, self.max_age_s = max_events, max_age_days * SECONDS_PER_DAY
        self.db = sqlite3.connect(str(path))
        self.db.execute("PRAGMA secure_delete = ON")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, item_id TEXT NOT NULL, "
            "event TEXT NOT NULL, timestamp INTEGER NOT NULL)"
        )
        self.db.commit()

    def add(self, item_id: str, event: str, timestamp: int | None = None) -> None:
        """Record one event (refused with DataError when malformed; nothing is written then)."""
        if event not in DEVICE_EVENTS:
            raise DataError(f"unknown event {event!r}; expected one of {DEVICE_EVENTS}")
        if not isinstance(item_id, str) or not item_id or len(item_id) > 256:
            raise DataError("item_id must be a non-empty string of at most 256 characters")
        now = int(time.time()) if timestamp is None else int(timestamp)
        with self.db:
            self.db.execute(
                "INSERT INTO events (item_id, event, timestamp) VALUES (?, ?, ?)", (item_id, event, now)
            )
            self._retain(now)

    def recent(self, n: int = 50) -> list[Event]:
        """The n most recent events, oldest first."""
        rows = self.db.execute(
            "SELECT item_id, event, timestamp FROM events ORDER BY timestamp DESC, id DESC LIMIT ?", (n,)
        ).fetchall()
        return [Event(item, event, ts) for item, event, ts in reversed(rows)]

    def purchased(self) -> set[str]:
        return {
            row[0] for row in self.db.execute("SELECT DISTINCT item_id FROM events WHERE event = 'purchase'")
        }

    def count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM events").fetchone()[0])

    def wipe(self) -> None:
        """Delete every event and compact the database file."""
        with self.db:
            self.db.execute("DELETE FROM events")
        self.db.execute("VACUUM")

    def close(self) -> None:
        self.db.close()

    def _retain(self, now: int) -> None:
        self.db.execute("DELETE FROM events WHERE timestamp < ?", (now - self.max_age_s,))
        self.db.execute(
            "DELETE FROM events WHERE id NOT IN "
            "(SELECT id FROM events ORDER BY timestamp DESC, id DESC LIMIT ?)",
            (self.max_events,),
        )
