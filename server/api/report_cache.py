"""The privacy report and dashboard pages as the service serves them: each built once per state of what it is
built from and kept, one build at a time (concurrent requests wait for that build and get its value), so
the unauthenticated report routes cost a hash and a look-up, not a rebuild (about 1.5 s of CPU each).

The state of a run (`run_state`) is the sha256 of its ledger (an append or any edit changes it, one that
keeps the size and modification time too; about 1 ms per MB of ledger) and the stat of the other files in
the run folder and its trending/ folder (the counts files and the canary audit the auditor reads)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any, TypeVar, cast

from server.api.verified_files import Stat, file_stat
from shared.release_manifest import file_digest

T = TypeVar("T")
LEDGER = "ledger.jsonl"


def run_state(run_dir: Path) -> tuple[str, tuple[tuple[str, Stat | None], ...]]:
    """What the report of the run in `run_dir` is built from: its ledger's sha256 and its other files'
    stats (FileNotFoundError when it has no ledger)."""
    files = [*run_dir.iterdir(), *run_dir.glob("trending/*")]
    others = [p for p in files if p.name != LEDGER and p.is_file()]
    return file_digest(run_dir / LEDGER)["sha256"], tuple((str(p), file_stat(p)) for p in sorted(others))


def folder_state(folder: Path) -> tuple[tuple[str, Stat | None], ...]:
    """The stats of a folder's files (a release's, for the report of that release)."""
    return tuple((p.name, file_stat(p)) for p in sorted(folder.iterdir()) if p.is_file())


class ReportCache:
    """The newest value built for each page, with the state it was built for. `on_build(page)` is called
    after each build (the service counts them in its metrics)."""

    def __init__(self, on_build: Callable[[str], None]) -> None:
        self._on_build = on_build
        self._lock = threading.Lock()
        self._built: dict[tuple[str, str], tuple[Hashable, Any]] = {}

    def get(self, page: str, state: Hashable, build: Callable[[], T], *, slot: str = "") -> T:
        """The value of `page` (and `slot`: one per release page) for `state`: the one built before for
        that state, else `build()`'s, built once however many requests ask at the same time (a failed
        build is not kept: the next request builds again)."""
        cached = self._built.get((page, slot))
        if cached is not None and cached[0] == state:  # no lock needed to read what is built
            return cast(T, cached[1])
        with self._lock:  # one build at a time: those waiting find its value when they get the lock
            cached = self._built.get((page, slot))
            if cached is not None and cached[0] == state:
                return cast(T, cached[1])
            value = build()
            self._built[(page, slot)] = (state, value)
            self._on_build(page)
            return value
