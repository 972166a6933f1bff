"""Amazon review dumps (McAuley lab, 2014 / 2018 / 2023): a reviews file plus its `meta_` file, plain or .gz.

File names: 2014 `reviews_<Cat>[_5].json[.gz]` + `meta_<Cat>.json[.gz]` (metadata lines are Python literals);
2018 `<Cat>[_5].json[.gz]` + `meta_<Cat>.json[.gz]`; 2023 `<Cat>.jsonl[.gz]` + `meta_<Cat>.jsonl[.gz]`.
Each review is an event of type "purchase" (a review stands for a purchase) with value = its star rating.
Reviews are not in time order within a user: each user's rows are sorted by timestamp (stable: ties keep
file order). The catalogue holds the metadata of reviewed items only, in metadata file order (a category's
metadata lists hundreds of thousands of items nobody in the review file touched); the report counts the
rows left out. Metadata lines of unreviewed items are recognised by their id and not parsed.
"""

from __future__ import annotations

import re
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import numpy as np

from shared.data.loaders import amazon_records as rec
from shared.data.loaders import load_report as r
from shared.data.loaders.common import CatalogueBuilder, Lines, sort_within_users
from shared.data.schema import EVENT_CODE, Catalogue, Dataset, InteractionLog
from shared.errors import DataError

Edition = Literal["amazon2014", "amazon-jsonl"]
_SUFFIXES: Final = (".json", ".json.gz", ".jsonl", ".jsonl.gz")
_FIVE_CORE: Final = re.compile(r"_5(core)?$")
_PURCHASE: Final = EVENT_CODE["purchase"]


@dataclass(frozen=True)
class AmazonFiles:
    """A reviews file, its metadata file, the data set's name and which edition the names suggest."""

    reviews: Path
    meta: Path
    name: str
    edition: Edition


def _stem(path: Path) -> str | None:
    """The name without its JSON suffix (and .gz), or None when it is not a JSON(-lines) file."""
    for suffix in _SUFFIXES:
        if path.name.endswith(suffix) and len(path.name) > len(suffix):
            return path.name[: -len(suffix)]
    return None


def _pair(reviews: Path) -> AmazonFiles | None:
    stem = _stem(reviews)
    if stem is None or stem.startswith("meta_"):
        return None
    name = stem.removeprefix("reviews_")
    category = _FIVE_CORE.sub("", name)
    metas = sorted(p for p in reviews.parent.iterdir() if p.is_file() and _stem(p) == f"meta_{category}")
    if not metas:
        return None
    edition: Edition = "amazon2014" if stem.startswith("reviews_") else "amazon-jsonl"
    return AmazonFiles(reviews, metas[0], name, edition)


def find_amazon_files(path: Path) -> AmazonFiles | None:
    """The review/metadata pair at `path` (a reviews file, or a folder holding exactly one pair)."""
    if path.is_file():
        return _pair(path)
    if not path.is_dir():
        return None
    pairs = [p for f in sorted(path.iterdir()) if f.is_file() and (p := _pair(f)) is not None]
    if len(pairs) > 1:
        names = ", ".join(p.reviews.name for p in pairs)
        raise DataError(
            f"several Amazon review files ({names}): pass the path of the one to load", path=str(path)
        )
    return pairs[0] if pairs else None


def load_amazon(
    path: Path, *, edition: Edition | None = None, skip_bad_rows: bool = False
) -> tuple[Dataset, r.LoadReport]:
    """Load an Amazon review dump; a bad row raises DataError (file, line) or is skipped and counted.

    `edition` "amazon2014" reads Python-literal metadata lines; None decides from the file names.
    """
    files = find_amazon_files(path)
    if files is None:
        raise DataError("no Amazon reviews file with a matching meta_ file", path=str(path))
    python_literals = (edition or files.edition) == "amazon2014"
    reviews_tally = r.FileTally(files.reviews, skip_bad_rows=skip_bad_rows)
    reviews = _read_reviews(reviews_tally, python_literals=python_literals)
    meta_tally = r.FileTally(files.meta, skip_bad_rows=skip_bad_rows)
    catalogue, notes = _read_meta(meta_tally, set(reviews.item_ids), python_literals=python_literals)
    if catalogue.n_items == 0:
        raise DataError(
            f"no usable metadata row for any of the {len(reviews.item_index)} reviewed items",
            path=str(files.meta),
        )
    log, n_moved = sort_within_users(reviews.to_log(catalogue, reviews_tally))
    reviews_tally.require_rows()
    notes.append(
        f"each user's reviews sorted by timestamp (stable); {n_moved} of {log.n_users} users reordered"
    )
    report = r.LoadReport(
        edition or files.edition, (reviews_tally.report(), meta_tally.report()), tuple(notes)
    )
    dataset = Dataset(files.name, catalogue, log)
    r.log_summary(dataset.name, report, n_users=log.n_users, n_items=catalogue.n_items, n_rows=log.n_rows)
    return dataset, report


class _Reviews:
    """Review rows as read, items still as ids (the catalogue is read after the reviews)."""

    def __init__(self) -> None:
        self.user_index: dict[str, int] = {}
        self.item_index: dict[str, int] = {}
        self.user = array("i")
        self.item = array("i")
        self.timestamp = array("q")
        self.value = array("d")
        self.line = array("q")

    @property
    def item_ids(self) -> list[str]:
        return list(self.item_index)

    def add(self, line: int, user_id: str, item_id: str, timestamp: int, value: float) -> None:
        self.user.append(self.user_index.setdefault(user_id, len(self.user_index)))
        self.item.append(self.item_index.setdefault(item_id, len(self.item_index)))
        self.timestamp.append(timestamp)
        self.value.append(value)
        self.line.append(line)

    def to_log(self, catalogue: Catalogue, tally: r.FileTally) -> InteractionLog:
        """The log over `catalogue`; reviews of items it lacks go to `tally` (raise, or skip and count)."""
        found = (catalogue.index_of(item_id) for item_id in self.item_index)
        to_index = np.array([-1 if i is None else i for i in found], dtype=np.int64)
        return self._log(to_index, tally)

    def _log(self, to_index: np.ndarray, tally: r.FileTally) -> InteractionLog:
        item = to_index[np.asarray(self.item, dtype=np.int64)] if len(self.item) else np.zeros(0, np.int64)
        item_ids = list(self.item_index)
        for row in np.flatnonzero(item < 0):
            tally.bad(
                r.MISSING_ITEM, int(self.line[row]), f"item {item_ids[self.item[row]]!r} has no metadata"
            )
        keep = item >= 0
        tally.rows_loaded = int(keep.sum())
        user = np.asarray(self.user, dtype=np.int64)[keep]
        # renumber the users left; provisional numbers follow first appearance, so sorted order keeps it
        kept_users, dense = np.unique(user, return_inverse=True)
        user_ids = list(self.user_index)
        return InteractionLog(
            user_ids=[user_ids[u] for u in kept_users],
            user=dense.astype(np.int32),
            item=item[keep].astype(np.int32),
            timestamp=np.asarray(self.timestamp, dtype=np.int64)[keep],
            event=np.full(int(keep.sum()), _PURCHASE, dtype=np.int8),
            value=np.asarray(self.value, dtype=np.float32)[keep],
        )


def _read_reviews(tally: r.FileTally, *, python_literals: bool) -> _Reviews:
    reviews = _Reviews()
    lines = Lines(tally.path)
    for text in lines:
        if not text.strip():
            continue
        tally.rows_read += 1
        line = lines.line_no
        record = None if line in lines.bad_lines else rec.parse_record(text, python_literals=python_literals)
        user_id, item_id = (rec.review_user(record), rec.review_item(record)) if record else (None, None)
        seconds = rec.review_time_s(record) if record else None
        rating = rec.review_rating(record) if record else None
        if line in lines.bad_lines:
            tally.bad(r.BAD_ENCODING, line, lines.encoding_message())
        elif record is None:
            tally.bad(r.MALFORMED_LINE, line, "not a JSON object")
        elif user_id is None:
            tally.bad(r.MISSING_FIELD, line, "no reviewerID / user_id")
        elif item_id is None:
            tally.bad(r.MISSING_FIELD, line, "no asin / parent_asin")
        elif seconds is None:
            tally.bad(r.BAD_TIMESTAMP, line, "unixReviewTime / timestamp missing or not a time")
        elif rating is None:
            tally.bad(r.BAD_VALUE, line, "overall / rating is not a number")
        else:
            reviews.add(line, user_id, item_id, seconds, rating)
    if tally.rows_read == 0:
        raise DataError("empty file", path=str(tally.path), line=lines.line_no)
    if not reviews.line:
        tally.require_rows()  # nothing loaded: raises
    return reviews


def _read_meta(tally: r.FileTally, wanted: set[str], *, python_literals: bool) -> tuple[Catalogue, list[str]]:
    """The catalogue of the `wanted` items, in file order, and notes on what was left out."""
    items = CatalogueBuilder()
    lines = Lines(tally.path)
    n_unreadable_price = 0
    for text in lines:
        if not text.strip():
            continue
        tally.rows_read += 1
        peeked = rec.peek_item_id(text)
        if peeked is not None and peeked not in wanted:
            continue  # an item nobody reviewed: not parsed
        line = lines.line_no
        record = None if line in lines.bad_lines else rec.parse_record(text, python_literals=python_literals)
        fields = rec.item_fields(record) if record else None
        if line in lines.bad_lines:
            tally.bad(r.BAD_ENCODING, line, lines.encoding_message())
        elif fields is None:
            kind = "a JSON object or a Python-literal dict" if python_literals else "a JSON object"
            tally.bad(r.MALFORMED_LINE, line, f"not {kind}")
        elif fields.item_id is None:
            tally.bad(r.MISSING_FIELD, line, "no asin / parent_asin")
        elif fields.item_id not in wanted:
            continue
        elif not items.add(
            fields.item_id,
            title=fields.title,
            category=fields.category,
            brand=fields.brand,
            description=fields.description,
            price=fields.price,
            created_at=fields.created_at,
        ):
            tally.bad(r.DUPLICATE_ITEM, line, f"item {fields.item_id!r} already appeared")
        else:
            tally.rows_loaded += 1
            n_unreadable_price += fields.price_unreadable
    if tally.rows_read == 0:
        raise DataError("empty file", path=str(tally.path), line=lines.line_no)
    unused = tally.rows_read - tally.rows_loaded - sum(tally.skipped.values())
    notes = [f"{unused} metadata rows of items without reviews left out of the catalogue"]
    if n_unreadable_price:
        notes.append(f"{n_unreadable_price} items have a price that could not be read; set to unknown")
    return items.build(), notes
