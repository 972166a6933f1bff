"""Simulated shoppers for the demo homepage page: synthetic histories read from JSON lines, or drawn from a
run's synthetic shop; never real users' data (a run on a real dataset is refused).

File format, one shopper per line: {"id": "shopper-1", "label": "likes Home", "now": 1716000000,
"history": [{"item_id": "...", "event": "view", "timestamp": 1715990000}, ...]}. "label" is optional;
"now" (the request time the page ranks at, unix seconds) defaults to one hour after the latest event.
Event types are shared/data/schema.py's EVENT_TYPES.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from shared.config import from_flat
from shared.data.schema import EVENT_TYPES
from shared.data.source import load_configured
from shared.errors import ConfigError, DataError

MAX_SHOPPERS = 200
MAX_EVENTS = 500  # per shopper
SECONDS_PER_HOUR = 3_600
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def read_demo_shoppers(path: Path) -> list[dict[str, Any]]:
    """The shoppers of a JSON-lines file, checked: DataError naming file and line on any bad row."""
    shoppers: list[dict[str, Any]] = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read demo shoppers: {exc}", path=str(path)) from exc
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            shoppers.append(_shopper(json.loads(line)))
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(f"not a demo shopper ({exc})", path=str(path), line=number) from exc
    if len(shoppers) > MAX_SHOPPERS:
        raise DataError(f"{len(shoppers)} demo shoppers, at most {MAX_SHOPPERS}", path=str(path))
    if len({s["id"] for s in shoppers}) != len(shoppers):
        raise DataError("demo shopper ids are not unique", path=str(path))
    return shoppers


def _shopper(row: Any) -> dict[str, Any]:
    if not isinstance(row, dict) or not isinstance(row.get("id"), str) or not _ID.match(row["id"]):
        raise ValueError('"id" must be 1-64 letters, digits, "_", "." or "-"')
    history = row["history"]
    if not isinstance(history, list) or not 0 < len(history) <= MAX_EVENTS:
        raise ValueError(f'"history" must be a list of 1 to {MAX_EVENTS} events')
    events = [_event(e) for e in history]
    now = row.get("now", max(e["timestamp"] for e in events) + SECONDS_PER_HOUR)
    if not isinstance(now, int) or isinstance(now, bool):
        raise ValueError('"now" must be an integer (unix seconds)')
    label = row.get("label", row["id"])
    if not isinstance(label, str) or len(label) > 120:
        raise ValueError('"label" must be a string of at most 120 characters')
    return {"id": row["id"], "label": label, "now": now, "history": events}


def _event(event: Any) -> dict[str, Any]:
    if not isinstance(event, dict) or set(event) != {"item_id", "event", "timestamp"}:
        raise ValueError("an event has exactly item_id, event, timestamp")
    if not isinstance(event["item_id"], str) or event["event"] not in EVENT_TYPES:
        raise ValueError(f"item_id must be a string and event one of {', '.join(EVENT_TYPES)}")
    if not isinstance(event["timestamp"], int) or isinstance(event["timestamp"], bool):
        raise ValueError("timestamp must be an integer (unix seconds)")
    return {"item_id": event["item_id"], "event": event["event"], "timestamp": event["timestamp"]}


def synthetic_shoppers(
    run_dir: Path, *, n: int = 8, max_events: int = 20, seed: int = 0
) -> list[dict[str, Any]]:
    """`n` shoppers of the run's synthetic shop (their last `max_events` events), ranked one hour after
    their last event. Refused (ConfigError) when the run was not trained on the built-in synthetic shop."""
    config = from_flat(json.loads((Path(run_dir) / "config.json").read_text()))
    if config.data.dataset != "synthetic":
        raise ConfigError(f"the run used dataset {config.data.dataset!r}: demo shoppers must be synthetic")
    dataset, _ = load_configured(config.data)
    log, catalogue = dataset.log, dataset.catalogue
    counts = np.bincount(log.user, minlength=log.n_users)
    candidates = np.flatnonzero(counts >= 3)
    chosen = np.sort(
        np.random.default_rng(seed).choice(candidates, size=min(n, candidates.size), replace=False)
    )
    order = log.user_order()
    starts = np.concatenate([[0], np.cumsum(counts)])
    shoppers = []
    for number, user in enumerate(chosen, start=1):
        rows = order[starts[user] : starts[user + 1]][-max_events:]
        history = [
            {
                "item_id": catalogue.item_ids[int(log.item[r])],
                "event": EVENT_TYPES[int(log.event[r])],
                "timestamp": int(log.timestamp[r]),
            }
            for r in rows
        ]
        top = Counter(catalogue.categories[int(log.item[r])].split(">")[0].strip() for r in rows)
        label = f"Shopper {number}: {len(history)} events, mostly {top.most_common(1)[0][0] or 'the shop'}"
        shoppers.append(_shopper({"id": f"shopper-{number}", "label": label, "history": history}))
    return shoppers


def write_demo_shoppers(shoppers: list[dict[str, Any]], path: Path) -> None:
    """Write shoppers as JSON lines (the format read_demo_shoppers reads)."""
    Path(path).write_text(
        "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in shoppers), encoding="utf-8"
    )
