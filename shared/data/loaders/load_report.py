"""What a load read, kept and skipped, per file and by reason; in strict mode a bad row raises instead.

The reasons a row can be skipped are the module constants below; tests and callers compare against them.
Messages name the file, the line and the offending field, never a user id or an interaction's contents.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from shared.errors import DataError

logger = logging.getLogger(__name__)

# Why a row was rejected (the keys of FileReport.skipped).
MISSING_FIELD: Final = "missing field"
WRONG_FIELD_COUNT: Final = "wrong field count"
MALFORMED_LINE: Final = "malformed line"
BAD_ENCODING: Final = "bad encoding"
BAD_TIMESTAMP: Final = "bad timestamp"
BAD_VALUE: Final = "bad value"
BAD_EVENT: Final = "bad event"
BAD_PRICE: Final = "bad price"
BAD_FLAG: Final = "bad flag"
MISSING_ITEM: Final = "missing item"
DUPLICATE_ITEM: Final = "duplicate item"

# what a person reading the error can do: the command-line flag and the config key (not the Python keyword)
_SKIP_HINT: Final = (
    "(to skip and count such rows, rerun with --skip-bad-rows or --set data.skip_bad_rows=true)"
)


@dataclass(frozen=True)
class FileReport:
    """One input file: data rows read (header and blank lines excluded), rows loaded, rows skipped by reason.

    rows_read - rows_loaded - sum(skipped) rows were read but deliberately not used (the report's notes say
    why, e.g. Amazon metadata of items nobody reviewed).
    """

    path: str
    rows_read: int
    rows_loaded: int
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def rows_skipped(self) -> int:
        return sum(self.skipped.values())


@dataclass(frozen=True)
class LoadReport:
    """What one load did: the format used, each file's counts and notes on any reordering or filtering."""

    format: str
    files: tuple[FileReport, ...]
    notes: tuple[str, ...] = ()

    @property
    def rows_read(self) -> int:
        return sum(f.rows_read for f in self.files)

    @property
    def rows_skipped(self) -> int:
        return sum(f.rows_skipped for f in self.files)

    @property
    def skipped(self) -> dict[str, int]:
        """Rows skipped by reason, over all files."""
        total: Counter[str] = Counter()
        for f in self.files:
            total.update(f.skipped)
        return dict(total)

    def summary(self) -> str:
        """A few human-readable lines: per file read/loaded/skipped, then the notes."""
        lines = [f"format {self.format}: {self.rows_read} rows read, {self.rows_skipped} skipped"]
        for f in self.files:
            reasons = ", ".join(f"{reason}: {n}" for reason, n in sorted(f.skipped.items()))
            lines.append(
                f"  {f.path}: read {f.rows_read}, loaded {f.rows_loaded}"
                + (f", skipped ({reasons})" if reasons else "")
            )
        lines.extend(f"  note: {note}" for note in self.notes)
        return "\n".join(lines)


class FileTally:
    """Counts rows of one file while it is read; `bad` raises DataError or, in skip mode, counts the row."""

    def __init__(self, path: Path, *, skip_bad_rows: bool) -> None:
        self.path = path
        self.skip_bad_rows = skip_bad_rows
        self.rows_read = 0
        self.rows_loaded = 0
        self.skipped: Counter[str] = Counter()

    def bad(self, reason: str, line: int, detail: str = "") -> None:
        """Reject the row at `line`: raise (strict mode) or count it under `reason` (skip mode)."""
        if not self.skip_bad_rows:
            message = f"{reason}: {detail}" if detail else reason
            raise DataError(f"{message} {_SKIP_HINT}", path=str(self.path), line=line)
        self.skipped[reason] += 1

    def require_rows(self) -> None:
        """DataError unless at least one row was loaded (a file of only bad rows is not a data set)."""
        if self.rows_loaded == 0:
            raise DataError(f"no usable rows: all {self.rows_read} rows were bad", path=str(self.path))

    def report(self) -> FileReport:
        return FileReport(str(self.path), self.rows_read, self.rows_loaded, dict(self.skipped))


def log_summary(name: str, report: LoadReport, *, n_users: int, n_items: int, n_rows: int) -> None:
    """Log one line for the load and, when rows were skipped, one warning with the counts by reason."""
    logger.info(
        "loaded %s (%s): %d users, %d items, %d interactions", name, report.format, n_users, n_items, n_rows
    )
    if report.rows_skipped:
        reasons = ", ".join(f"{reason}: {n}" for reason, n in sorted(report.skipped.items()))
        logger.warning("%s: skipped %d bad rows (%s)", name, report.rows_skipped, reasons)
    for note in report.notes:
        logger.info("%s: %s", name, note)
