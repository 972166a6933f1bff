"""The project's CSV layout: a folder with `items.csv` and `interactions.csv` (read and written here).

items.csv: item_id,title (required), then optional category (a path "A > B > C"), brand, asin, description,
price, created_at (unix seconds or ISO 8601, empty = unknown), on_promotion (1/0, true/false; empty = no).
Many real catalogues hold only an id and a title; an absent column reads as empty for every item.
interactions.csv: user_id,item_id,timestamp (unix seconds) (required), then optional event (view, cart,
purchase, favourite, rating; empty or absent = purchase, since in review data a review stands for a
purchase) and value (a rating or amount; empty = none).

Row order is kept exactly: the evaluation protocol takes each user's rows in file order (several rows of a
user often share a timestamp). Ids are kept as strings. Files are UTF-8 (optionally gzipped, `*.csv.gz`).
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Final

import numpy as np

from shared.data.loaders import load_report as r
from shared.data.loaders.common import (
    EVENT_ALIASES,
    CatalogueBuilder,
    Lines,
    LogBuilder,
    parse_flag,
    parse_float,
    parse_time_s,
    users_out_of_time_order,
)
from shared.data.schema import EVENT_CODE, EVENT_TYPES, UNKNOWN_TIME, Catalogue, Dataset
from shared.errors import DataError

ITEMS_FILE: Final = "items.csv"
INTERACTIONS_FILE: Final = "interactions.csv"
ITEM_COLUMNS: Final = ("item_id", "title")
ITEM_OPTIONAL: Final = ("category", "brand", "asin", "description", "price", "created_at", "on_promotion")
_ITEM_WRITTEN: Final = (*ITEM_COLUMNS, *(c for c in ITEM_OPTIONAL if c != "asin"))
INTERACTION_COLUMNS: Final = ("user_id", "item_id", "timestamp")
INTERACTION_OPTIONAL: Final = ("event", "value")
_PURCHASE: Final = EVENT_CODE["purchase"]

Row = tuple[int, list[str]]  # (line number where the row starts, its fields)


def find_file(folder: Path, name: str) -> Path:
    """`folder/name`, or `folder/name.gz` when only the gzipped file is there."""
    plain = folder / name
    gz = folder / f"{name}.gz"
    return gz if gz.is_file() and not plain.is_file() else plain


def load_csv(folder: Path, *, skip_bad_rows: bool = False) -> tuple[Dataset, r.LoadReport]:
    """Load the CSV layout in `folder`; a bad row raises DataError (file, line) or is skipped and counted."""
    notes: list[str] = []
    items_tally = r.FileTally(find_file(folder, ITEMS_FILE), skip_bad_rows=skip_bad_rows)
    catalogue = _read_items(items_tally, notes)
    items_tally.require_rows()
    log_tally = r.FileTally(find_file(folder, INTERACTIONS_FILE), skip_bad_rows=skip_bad_rows)
    log = _read_interactions(log_tally, catalogue.index_of, notes).build()
    log_tally.require_rows()
    n_backwards = users_out_of_time_order(log)
    if n_backwards:
        notes.append(f"{n_backwards} users have rows out of timestamp order; file row order kept as given")
    report = r.LoadReport("csv", (items_tally.report(), log_tally.report()), tuple(notes))
    dataset = Dataset(folder.resolve().name, catalogue, log)
    r.log_summary(dataset.name, report, n_users=log.n_users, n_items=catalogue.n_items, n_rows=log.n_rows)
    return dataset, report


def save_csv(dataset: Dataset, folder: Path) -> None:
    """Write `dataset` in this layout (every optional column included) so that `load_csv` reads it back."""
    folder.mkdir(parents=True, exist_ok=True)
    cat = dataset.catalogue
    with (folder / ITEMS_FILE).open("w", encoding="utf-8", newline="") as f:
        out = csv.writer(f)
        out.writerow(_ITEM_WRITTEN)
        for i, item_id in enumerate(cat.item_ids):
            created = int(cat.created_at[i])
            out.writerow(
                (
                    item_id,
                    cat.titles[i],
                    cat.categories[i],
                    cat.brands[i],
                    cat.descriptions[i],
                    _number(cat.price[i]),
                    "" if created == UNKNOWN_TIME else created,
                    int(cat.on_promotion[i]),
                )
            )
    log = dataset.log
    with (folder / INTERACTIONS_FILE).open("w", encoding="utf-8", newline="") as f:
        out = csv.writer(f)
        out.writerow((*INTERACTION_COLUMNS, *INTERACTION_OPTIONAL))
        for row in range(log.n_rows):
            out.writerow(
                (
                    log.user_ids[log.user[row]],
                    cat.item_ids[log.item[row]],
                    int(log.timestamp[row]),
                    EVENT_TYPES[log.event[row]],
                    _number(log.value[row]),
                )
            )


def _number(x: np.floating) -> str:
    """Shortest text that reads back to the same float32; "" for NaN."""
    return "" if np.isnan(x) else str(np.float32(x))


def _rows(
    tally: r.FileTally, required: Sequence[str], optional: Sequence[str], notes: list[str]
) -> tuple[dict[str, int], Iterator[Row]]:
    """The header's column positions and an iterator over well-formed data rows (bad ones go to `tally`)."""
    lines = Lines(tally.path)
    reader = csv.reader(iter(lines), strict=True)
    header = _read_header(reader, lines, tally.path)
    missing = [c for c in required if c not in header]
    if missing:
        raise DataError(
            f"missing column(s) {', '.join(missing)}; the header is {', '.join(header)}",
            path=str(tally.path),
            line=1,
        )
    unknown = [c for c in header if c not in required and c not in optional]
    if unknown:
        notes.append(f"{tally.path.name}: ignored unknown column(s) {', '.join(unknown)}")
    return header, _data_rows(reader, lines, tally, len(header))


def _read_header(reader: Iterator[list[str]], lines: Lines, path: Path) -> dict[str, int]:
    try:
        names = next(reader, None)
    except csv.Error as e:
        raise DataError(f"malformed header ({e})", path=str(path), line=1) from e
    if names is None:
        raise DataError("empty file: no header", path=str(path), line=1)
    if lines.bad_lines:
        raise DataError(f"header is {lines.encoding_message()}", path=str(path), line=1)
    header = {name.strip().lower(): i for i, name in enumerate(names)}
    if len(header) != len(names):
        raise DataError("duplicate column names in the header", path=str(path), line=1)
    return header


def _data_rows(reader: Iterator[list[str]], lines: Lines, tally: r.FileTally, width: int) -> Iterator[Row]:
    end = lines.line_no
    while True:
        start = end + 1
        try:
            fields = next(reader, None)
        except csv.Error as e:
            end = lines.line_no
            tally.rows_read += 1
            tally.bad(r.MALFORMED_LINE, start, f"not valid CSV ({e})")
            continue
        end = lines.line_no
        if fields is None:
            break
        if not fields:
            continue  # a blank line holds no row
        tally.rows_read += 1
        if lines.bad_lines and any(n in lines.bad_lines for n in range(start, end + 1)):
            tally.bad(r.BAD_ENCODING, start, lines.encoding_message())
        elif len(fields) != width:
            tally.bad(r.WRONG_FIELD_COUNT, start, f"{len(fields)} fields where the header has {width}")
        else:
            yield start, fields
    if tally.rows_read == 0:
        raise DataError("empty file: a header but no rows", path=str(tally.path), line=end)


def _read_items(tally: r.FileTally, notes: list[str]) -> Catalogue:
    header, rows = _rows(tally, ITEM_COLUMNS, ITEM_OPTIONAL, notes)
    col_id, col_title = (header[c] for c in ITEM_COLUMNS)
    col_cat, col_brand, col_desc, col_price, col_created, col_promo = (
        header.get(c) for c in ITEM_OPTIONAL if c != "asin"
    )
    items = CatalogueBuilder()
    for line, f in rows:
        item_id = f[col_id].strip()
        price = parse_float(f[col_price]) if col_price is not None else np.nan
        created = (
            parse_time_s(f[col_created])
            if col_created is not None and f[col_created].strip()
            else UNKNOWN_TIME
        )
        promo = parse_flag(f[col_promo]) if col_promo is not None else False
        if not item_id:
            tally.bad(r.MISSING_FIELD, line, "empty item_id")
        elif price is None or price < 0:
            tally.bad(r.BAD_PRICE, line, "price is not a non-negative number")
        elif created is None:
            tally.bad(r.BAD_TIMESTAMP, line, "created_at is not unix seconds or an ISO-8601 time")
        elif promo is None:
            tally.bad(r.BAD_FLAG, line, "on_promotion is not 1/0 or true/false")
        elif not items.add(
            item_id,
            title=f[col_title],
            category=f[col_cat] if col_cat is not None else "",
            brand=f[col_brand] if col_brand is not None else "",
            description=f[col_desc] if col_desc is not None else "",
            price=price,
            created_at=created,
            on_promotion=promo,
        ):
            tally.bad(r.DUPLICATE_ITEM, line, f"item_id {item_id!r} already appeared")
        else:
            tally.rows_loaded += 1
    return items.build()


def _read_interactions(
    tally: r.FileTally, lookup: Callable[[str], int | None], notes: list[str]
) -> LogBuilder:
    header, rows = _rows(tally, INTERACTION_COLUMNS, INTERACTION_OPTIONAL, notes)
    col_user, col_item, col_time = (header[c] for c in INTERACTION_COLUMNS)
    col_event, col_value = header.get("event"), header.get("value")
    log = LogBuilder()
    for line, f in rows:
        user_id, item_id = f[col_user].strip(), f[col_item].strip()
        item = lookup(item_id)
        timestamp = parse_time_s(f[col_time])
        event = (
            EVENT_ALIASES.get(f[col_event].strip().lower() or "purchase")
            if col_event is not None
            else _PURCHASE
        )
        value = parse_float(f[col_value]) if col_value is not None else np.nan
        if not user_id or not item_id:
            tally.bad(r.MISSING_FIELD, line, "empty user_id" if not user_id else "empty item_id")
        elif item is None:
            tally.bad(r.MISSING_ITEM, line, f"item_id {item_id!r} is not in {ITEMS_FILE}")
        elif timestamp is None:
            tally.bad(r.BAD_TIMESTAMP, line, "timestamp is not unix seconds")
        elif event is None:
            tally.bad(r.BAD_EVENT, line, f"event is not one of {', '.join(EVENT_TYPES)}")
        elif value is None:
            tally.bad(r.BAD_VALUE, line, "value is not a number")
        else:
            log.add(user_id, item, timestamp, event, value)
            tally.rows_loaded += 1
    return log
