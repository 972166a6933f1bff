"""One line of an Amazon review or metadata dump -> a dict -> the fields the canonical form needs.

Covers the McAuley lab dumps of 2014 (metadata lines are Python literals, read with ast.literal_eval, never
eval), 2018 (JSON lines, `asin`, `category`, `brand`, price as "$12.99") and 2023 (JSON lines, `parent_asin`,
`categories`, `store`, `details`, review `timestamp` in milliseconds). Text is HTML-unescaped; a price or a
date that cannot be read becomes unknown (the loader counts those), never an error: these fields are messy
in the real dumps.
"""

from __future__ import annotations

import ast
import html
import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from shared.data.schema import UNKNOWN_TIME

Record = dict[str, Any]

_PARENT_ID: Final = re.compile(r"""["']parent_asin["']\s*:\s*["']([^"'\\]+)["']""")
_ID: Final = re.compile(r"""["']asin["']\s*:\s*["']([^"'\\]+)["']""")
_PRICE: Final = re.compile(r"^\s*\$?\s*(\d[\d,]*(?:\.\d+)?)")
_DATE_FORMATS: Final = ("%B %d, %Y", "%b %d, %Y", "%Y-%m-%d")
_NO_CATEGORY: Final = ("(no genres listed)",)


def parse_record(text: str, *, python_literals: bool) -> Record | None:
    """The dict on one line (JSON, or a Python literal when allowed); None when the line is not one."""
    try:
        record = json.loads(text)
    except (ValueError, RecursionError):
        record = _literal(text) if python_literals else None
    return record if isinstance(record, dict) else None


def _literal(text: str) -> object:
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None


def peek_item_id(text: str) -> str | None:
    """The item id of a raw metadata line found without parsing it (parent_asin first), None if not found."""
    found = _PARENT_ID.search(text) or _ID.search(text)
    return found.group(1) if found else None


# ---- reviews ----


def review_user(record: Record) -> str | None:
    return _id(record.get("reviewerID", record.get("user_id")))


def review_item(record: Record) -> str | None:
    return _id(record.get("parent_asin") or record.get("asin"))


def review_time_s(record: Record) -> int | None:
    """Unix seconds: `unixReviewTime` (2014/2018, seconds) or `timestamp` (2023, milliseconds)."""
    if "unixReviewTime" in record:
        return _whole(record["unixReviewTime"], 1)
    if "timestamp" in record:
        return _whole(record["timestamp"], 1000)
    return None


def review_rating(record: Record) -> float | None:
    """The star rating (`overall` or `rating`); NaN when absent, None when present but not a number."""
    rating = record.get("overall", record.get("rating"))
    if rating is None:
        return math.nan
    number = _number(rating)
    return number if number is not None and math.isfinite(number) else None


def _id(value: object) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    return (value.strip() or None) if isinstance(value, str) else None


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _whole(value: object, per_second: int) -> int | None:
    number = _number(value)
    if number is None or not math.isfinite(number) or number < 0:
        return None
    return int(number) // per_second


# ---- metadata ----


@dataclass(frozen=True)
class ItemFields:
    """What the catalogue keeps of one metadata record."""

    item_id: str | None
    title: str
    category: str
    brand: str
    description: str
    price: float  # NaN when unknown
    created_at: int  # unix seconds or UNKNOWN_TIME
    price_unreadable: bool  # a price was given but could not be read


def item_fields(record: Record) -> ItemFields:
    details = record.get("details")
    details = details if isinstance(details, dict) else {}
    price_given = record.get("price") not in (None, "", "None")
    price = _price(record.get("price"))
    return ItemFields(
        item_id=_id(record.get("parent_asin") or record.get("asin")),
        title=_text(record.get("title")),
        category=_category(record),
        brand=_text(record.get("brand") or record.get("store") or details.get("Brand") or ""),
        description=_text(record.get("description")),
        price=price,
        created_at=_date(details.get("Date First Available") or record.get("date")),
        price_unreadable=price_given and math.isnan(price),
    )


def _text(value: object) -> str:
    """A string field, or the strings of a list joined by spaces; HTML entities decoded."""
    if isinstance(value, list):
        value = " ".join(v for v in value if isinstance(v, str))
    if not isinstance(value, str):
        return ""
    value = value.strip()
    return html.unescape(value) if "&" in value else value


def _category(record: Record) -> str:
    """Category path "A > B > C": the first list of 2014 `categories`, 2018 `category`, 2023 `categories`."""
    for key in ("categories", "category"):
        value = record.get(key)
        if isinstance(value, list) and value:
            path = value[0] if isinstance(value[0], list) else value
            parts = [_text(p) for p in path]
            return " > ".join(p for p in parts if p and p not in _NO_CATEGORY)
    main = _text(record.get("main_category") or record.get("main_cat"))
    return "" if "<" in main else main


def _price(value: object) -> float:
    if isinstance(value, str):
        found = _PRICE.match(value)
        value = found.group(1).replace(",", "") if found else None
    number = _number(value)
    return number if number is not None and math.isfinite(number) and number >= 0 else math.nan


def _date(value: object) -> int:
    if not isinstance(value, str):
        return UNKNOWN_TIME
    for fmt in _DATE_FORMATS:
        try:
            seconds = int(datetime.strptime(value.strip(), fmt).replace(tzinfo=UTC).timestamp())
        except ValueError:
            continue
        return max(seconds, UNKNOWN_TIME)
    return UNKNOWN_TIME
