"""`fedhome-client`: the device SDK from the command line.

- `install --from RELEASE_DIR [--version N] --cache DIR --public-key KEY`: verify a release against the
  pinned key and switch the device's cache to it (refused, cache unchanged, when anything does not verify,
  or when it is not release N). Installing the version in use again repairs the device's copy when that no
  longer verifies (the output then says `"repaired": true`);
- `recommend --cache DIR --public-key KEY --history FILE [--k 10]`: the top items for a history file
  (UTF-8 JSON lines of {"item_id", "event", "timestamp"}, events as the device's event store takes them:
  client/device/event_store.py), ranked on the device from the verified release;
- `homepage --cache DIR --public-key KEY --history FILE`: the whole personalised homepage (sections with
  reasons and copy), composed on the device; its Trending section uses the release's DP trending counts
  when the release has them (and says which ledger entry and epsilon they come from).
- `receipts --data DIR [--cache DIR --public-key KEY] [--json]`: the training rounds this device took part
  in, the release each ended up in, the run's epsilon and the device's own bound
  (client/device/receipts_cli.py).

Exit status: 0 on success, 2 on bad input (a missing or malformed history file, a missing data folder) or a
release that does not verify.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from client.device import receipts_cli
from client.device.deltas import open_ranker
from client.device.event_store import check_event
from client.device.homepage import Homepage
from client.device.ranker import Event
from client.device.release_cache import ReleaseCache, copy_from
from client.device.trending_counts import release_trending
from shared.errors import DataError, FedhomeError
from shared.signing import load_public_key


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedhome-client", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    install = sub.add_parser("install", help="verify a release and switch the device's cache to it")
    install.add_argument("--from", dest="source", type=Path, required=True, help="a release folder")
    install.add_argument("--data", type=Path, help="the device's data folder: mark its receipts")
    install.add_argument("--version", type=int, help="the release version expected (another is refused)")
    recommend = sub.add_parser("recommend", help="rank the catalogue for a history file on the device")
    recommend.add_argument(
        "--history", type=Path, required=True, help="JSON lines: item_id, event, timestamp"
    )
    recommend.add_argument("--k", type=int, default=10)
    recommend.add_argument("--now", type=int, default=None, help="request time, unix seconds (default now)")
    recommend.add_argument("--precision", choices=["int8", "float32"], default="int8")
    homepage = sub.add_parser("homepage", help="compose the personalised homepage for a history file")
    homepage.add_argument("--history", type=Path, required=True, help="JSON lines: item_id, event, timestamp")
    homepage.add_argument("--now", type=int, default=None, help="request time, unix seconds (default now)")
    for command in (install, recommend, homepage):
        command.add_argument("--cache", type=Path, required=True, help="the device's release cache folder")
        command.add_argument("--public-key", type=Path, required=True, help="the pinned release key (PEM)")
    receipts_cli.add_parser(sub)
    return parser


def read_history(path: Path) -> list[Event]:
    """The events of a history file (UTF-8 JSON lines of item_id, event, timestamp); DataError naming the
    file (and line) when it is missing, not UTF-8 text, or a line is not such an event (the same check as
    EventStore.add: client/device/event_store.py's check_event)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError("the history file is not UTF-8 text", path=str(path)) from exc
    except OSError as exc:  # missing, a folder, unreadable
        raise DataError(f"cannot read the history file ({type(exc).__name__})", path=str(path)) from exc
    events = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            event = Event(str(row["item_id"]), str(row["event"]), int(row["timestamp"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(
                f"expected item_id, event, timestamp ({type(exc).__name__})", path=str(path), line=number
            ) from exc
        try:
            check_event(event.item_id, event.event)
        except DataError as exc:
            raise DataError(str(exc), path=str(path), line=number) from exc
        events.append(event)
    return events


def install(cache: ReleaseCache, args: argparse.Namespace) -> int:
    """The install command: prints {"installed": version}, with "repaired": true when the device's copy of
    that version did not verify and was replaced, and "receipts_marked" with --data."""
    if args.data is not None:
        receipts_cli.check_data_folder(args.data)  # before anything is installed
    before = cache.state()["current"]
    broken = not cache.intact()
    installed = cache.install(copy_from(args.source), expected_version=args.version)
    out: dict[str, int | bool] = {"installed": installed}
    if broken and installed == before:
        out["repaired"] = True
    if args.data is not None:
        out["receipts_marked"] = receipts_cli.bind(args.data, cache.verify_current())
    print(json.dumps(out))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "receipts":
            return receipts_cli.run(args)
        cache = ReleaseCache(args.cache, load_public_key(args.public_key))
        if args.command == "install":
            return install(cache, args)
        manifest = cache.verify_current()
        precision = getattr(args, "precision", "int8")
        ranker = open_ranker(cache, precision=precision)  # type: ignore[arg-type]  # + its delta
        now = int(time.time()) if args.now is None else args.now
        if args.command == "homepage":
            history = read_history(args.history)
            purchased = {e.item_id for e in history if e.event == "purchase"}
            folder = cache.current()
            if folder is None:
                raise DataError("no release installed")
            trending = release_trending(folder, manifest, n_items=ranker.release_items)
            added = ranker.n_items - ranker.release_items  # items of a catalogue delta: no count yet
            counts = None if trending is None else np.pad(trending.counts, (0, added))
            homepage = Homepage(ranker, trending=counts)
            page = homepage.compose(history, now, purchased=purchased)
            sections = [{"title": s.title, "cards": [asdict(c) for c in s.cards]} for s in page]
            out = {"release": manifest["version"], "sections": sections}
            out["trending"] = None if trending is None else trending.describe()
            print(json.dumps(out, ensure_ascii=False))
            return 0
        items = ranker.recommend(read_history(args.history), now, k=args.k)
        titles = {item["id"]: item["title"] for item in ranker.items}
        print(
            json.dumps(
                {"release": manifest["version"], "for_you": [{"id": i, "title": titles[i]} for i in items]}
            )
        )
        return 0
    except FedhomeError as exc:
        print(f"fedhome-client: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
