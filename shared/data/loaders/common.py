"""What every loader shares: numbered line reading (plain or gzip), field parsers, item and log builders."""

from __future__ import annotations

import gzip
import io
import math
import zlib
from array import array
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from shared.data.schema import EVENT_CODE, UNKNOWN_TIME, Catalogue, InteractionLog
from shared.errors import DataError

# Event names accepted in files, beside the canonical EVENT_TYPES.
EVENT_ALIASES: dict[str, int] = {
    **EVENT_CODE,
    "favorite": EVENT_CODE["favourite"],
    "review": EVENT_CODE["purchase"],
}


def require_file(path: Path) -> Path:
    """`path` itself, or DataError when it is not an existing file."""
    if not path.is_file():
        raise DataError("missing file", path=str(path))
    return path


def open_binary(path: Path) -> io.BufferedIOBase:
    """Open a file for reading bytes, transparently gunzipping `*.gz`."""
    require_file(path)
    if path.suffix == ".gz":
        return gzip.open(path, "rb")
    return path.open("rb")


class Lines:
    """Iterate a file's lines decoded one at a time (so one bad line does not spoil the rest).

    `line_no` is the 1-based number of the line last yielded; `bad_lines` holds the numbers of lines that
    did not decode (they are yielded with replacement characters, for the caller to reject). A leading
    UTF-8 byte-order mark is dropped.
    """

    def __init__(self, path: Path, *, encoding: str = "utf-8") -> None:
        self.path = path
        self.encoding = encoding
        self.line_no = 0
        self.bad_lines: set[int] = set()

    def __iter__(self) -> Iterator[str]:
        with open_binary(self.path) as f:
            try:
                for raw in f:
                    self.line_no += 1
                    yield self._decode(raw)
            except (OSError, EOFError, zlib.error) as e:
                raise DataError(
                    f"unreadable file ({type(e).__name__})", path=str(self.path), line=self.line_no + 1
                ) from e

    def _decode(self, raw: bytes) -> str:
        try:
            text = raw.decode(self.encoding)
        except UnicodeDecodeError:
            self.bad_lines.add(self.line_no)
            text = raw.decode(self.encoding, "replace")
        if self.line_no == 1 and text.startswith("\ufeff"):
            text = text[1:]
        return text

    def encoding_message(self) -> str:
        return f"not valid {self.encoding} (re-save the file as {self.encoding})"


def parse_time_s(text: str) -> int | None:
    """Unix seconds from an integer, a number or an ISO-8601 date/time (naive = UTC); None when invalid.

    Negative times are invalid (UNKNOWN_TIME is -1).
    """
    try:
        seconds = int(text)
    except ValueError:
        seconds_or_none = _time_slow(text.strip())
        if seconds_or_none is None:
            return None
        seconds = seconds_or_none
    return seconds if seconds >= 0 else None


def _time_slow(text: str) -> int | None:
    try:
        number = float(text)
    except ValueError:
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return int(when.timestamp())
    return int(number) if math.isfinite(number) else None


def parse_float(text: str) -> float | None:
    """A finite float, NaN for an empty field, None when the text is not a number."""
    if not text.strip():
        return math.nan
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def parse_flag(text: str) -> bool | None:
    """A yes/no flag (1/0, true/false, yes/no, empty = no); None when unrecognised."""
    value = text.strip().lower()
    if value in ("1", "true", "yes", "y", "t"):
        return True
    if value in ("", "0", "false", "no", "n", "f"):
        return False
    return None


class CatalogueBuilder:
    """Collects items in arrival order; `add` refuses a duplicate id (the caller decides what that means)."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {}
        self.titles: list[str] = []
        self.categories: list[str] = []
        self.brands: list[str] = []
        self.descriptions: list[str] = []
        self.price = array("d")
        self.created_at = array("q")
        self.on_promotion = array("b")

    def add(
        self,
        item_id: str,
        *,
        title: str = "",
        category: str = "",
        brand: str = "",
        description: str = "",
        price: float = math.nan,
        created_at: int = UNKNOWN_TIME,
        on_promotion: bool = False,
    ) -> bool:
        """Append an item; False (and nothing added) when `item_id` is already present."""
        if item_id in self.index:
            return False
        self.index[item_id] = len(self.index)
        self.titles.append(title)
        self.categories.append(category)
        self.brands.append(brand)
        self.descriptions.append(description)
        self.price.append(price)
        self.created_at.append(created_at)
        self.on_promotion.append(on_promotion)
        return True

    def build(self) -> Catalogue:
        return Catalogue(
            item_ids=list(self.index),
            titles=self.titles,
            categories=self.categories,
            brands=self.brands,
            descriptions=self.descriptions,
            price=np.asarray(self.price, dtype=np.float32),
            created_at=np.asarray(self.created_at, dtype=np.int64),
            on_promotion=np.asarray(self.on_promotion, dtype=bool),
        )


class LogBuilder:
    """Collects interaction rows in arrival order; users get dense indices in order of first appearance."""

    def __init__(self) -> None:
        self.user_index: dict[str, int] = {}
        self.user = array("i")
        self.item = array("i")
        self.timestamp = array("q")
        self.event = array("b")
        self.value = array("d")

    def add(self, user_id: str, item: int, timestamp: int, event: int, value: float) -> None:
        index = self.user_index
        self.user.append(index.setdefault(user_id, len(index)))
        self.item.append(item)
        self.timestamp.append(timestamp)
        self.event.append(event)
        self.value.append(value)

    def build(self) -> InteractionLog:
        return InteractionLog(
            user_ids=list(self.user_index),
            user=np.asarray(self.user, dtype=np.int32),
            item=np.asarray(self.item, dtype=np.int32),
            timestamp=np.asarray(self.timestamp, dtype=np.int64),
            event=np.asarray(self.event, dtype=np.int8),
            value=np.asarray(self.value, dtype=np.float32),
        )


def sort_within_users(log: InteractionLog) -> tuple[InteractionLog, int]:
    """Put each user's rows in timestamp order (stable: ties keep file order) and count users reordered.

    The positions a user's rows occupy in the log do not change; only which of the user's rows sits where.
    """
    grouped = np.argsort(log.user, kind="stable")  # each user's positions, in file order
    by_time = np.argsort(log.timestamp, kind="stable")
    wanted = by_time[np.argsort(log.user[by_time], kind="stable")]  # each user's rows, in time order
    moved = grouped != wanted
    n_moved = int(np.unique(log.user[grouped[moved]]).size)
    perm = np.empty_like(grouped)
    perm[grouped] = wanted  # row at position grouped[k] becomes row wanted[k]
    sorted_log = InteractionLog(
        user_ids=log.user_ids,
        user=log.user[perm],
        item=log.item[perm],
        timestamp=log.timestamp[perm],
        event=log.event[perm],
        value=log.value[perm],
    )
    return sorted_log, n_moved


def users_out_of_time_order(log: InteractionLog) -> int:
    """How many users have a row with an earlier timestamp than a row before it."""
    grouped = np.argsort(log.user, kind="stable")
    users, times = log.user[grouped], log.timestamp[grouped]
    backwards = (np.diff(times) < 0) & (users[1:] == users[:-1])
    return int(np.unique(users[1:][backwards]).size)
