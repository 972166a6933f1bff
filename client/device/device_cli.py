"""`fedhome-client`: the device SDK from the command line.

A device is one folder (`--device DIR`, laid out as client/device/device_folder.py says: its event store,
release cache and receipts; the same folder the Python SDK's `Device` keeps, client/device/device.py).
- `sync --url URL --device DIR --public-key KEY`: bring the device to the service's latest live release
  (the signed index, a fallback from a withdrawn release, a repair, the catalogue delta:
  client/device/sync.py) and mark the receipts it includes; prints the SyncResult as JSON;
- `record --device DIR --item ID --event view|cart|purchase|favourite [--timestamp S]`: record one event of
  the shopper in the device's event store (unix seconds, default now); prints how many events it holds;
- `homepage (--device DIR | --cache DIR) --public-key KEY [--history FILE]`: the whole personalised homepage
  (sections with reasons and copy), composed on the device. With `--device` the history is the device's own
  events unless `--history` names a file; with `--cache` (a bare release cache, no event store) `--history`
  is needed. Its Trending section uses the release's DP trending counts when the release has them (and
  says which ledger entry and epsilon they come from);
- `recommend (--device DIR | --cache DIR) --public-key KEY [--history FILE] [--k 10]`: the top items,
  ranked on the device from the verified release, history as for `homepage`;
- `install --from RELEASE_DIR [--version N] --cache DIR --public-key KEY [--data DIR]`: verify a release
  folder against the pinned key and switch the cache to it (refused, cache unchanged, when anything does not
  verify, or when it is not release N). Installing the version in use again repairs the device's copy when
  that no longer verifies (the output then says `"repaired": true`). A device folder's cache is DIR/releases;
- `receipts --data DIR [--cache DIR --public-key KEY] [--json]`: the training rounds this device took part
  in, the release each ended up in, the run's epsilon and the device's own bound
  (client/device/receipts_cli.py).

A history file is UTF-8 JSON lines of {"item_id", "event", "timestamp"}, events as the device's event store
takes them (client/device/event_store.py).

Exit status: 0 on success, 2 with one line on stderr on bad input (a missing or malformed history file, an
unknown event, a missing device or data folder, no release installed yet) or a release that does not
verify.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from client.device import receipts_cli
from client.device.device import Device, ReleaseInUse, purchases
from client.device.device_folder import events_path
from client.device.event_store import DEVICE_EVENTS, EventStore, check_event, check_timestamp
from client.device.homepage import Section
from client.device.ranker import Event
from client.device.release_cache import ReleaseCache, copy_from
from shared.errors import ConfigError, DataError, FedhomeError
from shared.signing import Ed25519PublicKey, load_public_key

HISTORY_HELP = "JSON lines of item_id, event, timestamp (with --device: instead of the device's own events)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedhome-client", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sync = verb(
        sub,
        "sync",
        "fetch the latest live release from the model service and install it",
        "Read the service's signed release index (refused unless signed by the pinned key, not replayed "
        "and not expired), fall back when the release in use was withdrawn, install the latest live "
        "release after verifying it (or repair an altered copy of the one in use), apply its catalogue "
        "delta, and mark the device's receipts with the release in use. Prints the SyncResult as JSON.",
    )
    sync.add_argument(
        "--url", required=True, metavar="URL", help="the model service, e.g. http://127.0.0.1:8000"
    )
    sync.add_argument(
        "--device", type=Path, required=True, metavar="DIR", help="the device folder (created when missing)"
    )
    sync.add_argument(
        "--public-key", type=Path, required=True, metavar="KEY", help="the pinned release key (PEM)"
    )
    record = verb(
        sub,
        "record",
        "record one event of the shopper in the device's event store",
        "Record one event in the device's event store (it never leaves the device). An unknown event, an "
        "empty item id or a timestamp that is not unix seconds is refused (exit 2) and nothing is "
        "written.",
    )
    record.add_argument(
        "--device", type=Path, required=True, metavar="DIR", help="the device folder (created when missing)"
    )
    record.add_argument("--item", required=True, metavar="ID", help="the item's catalogue id")
    record.add_argument("--event", required=True, help=f"one of {', '.join(DEVICE_EVENTS)}")
    record.add_argument("--timestamp", type=int, default=None, metavar="S", help="unix seconds (default now)")
    homepage = verb(
        sub,
        "homepage",
        "compose the personalised homepage on the device",
        "Compose the homepage (sections, cards, reasons, copy) from the verified release in use: with "
        "--device from the device's own events (or --history FILE instead), with --cache from --history "
        "FILE. Prints JSON with the release version and where the Trending counts come from.",
    )
    recommend = verb(
        sub,
        "recommend",
        "rank the catalogue for the shopper on the device",
        "The top --k items for the shopper from the verified release in use, history items left out: with"
        " --device from the device's own events (or --history FILE instead), with --cache from --history "
        "FILE.",
    )
    recommend.add_argument("--k", type=int, default=10, help="how many items (default 10)")
    for command in (homepage, recommend):
        where = command.add_mutually_exclusive_group(required=True)
        where.add_argument(
            "--device", type=Path, metavar="DIR", help="the device folder: its release and its own events"
        )
        where.add_argument(
            "--cache", type=Path, metavar="DIR", help="a release cache alone (then --history is needed)"
        )
        command.add_argument(
            "--public-key", type=Path, required=True, metavar="KEY", help="the pinned release key (PEM)"
        )
        command.add_argument("--history", type=Path, metavar="FILE", help=HISTORY_HELP)
        command.add_argument(
            "--now", type=int, default=None, metavar="S", help="request time, unix seconds (default now)"
        )
        command.add_argument(
            "--precision",
            choices=["int8", "float32"],
            default="int8",
            help="int8 (two-stage, fast) or float32 (exact)",
        )
    install = verb(
        sub,
        "install",
        "verify a release folder and switch a release cache to it",
        "Verify a release folder against the pinned key and switch the release cache to it (refused, cache "
        "unchanged, when anything does not verify or it is not release --version); --data DIR marks the "
        "receipts it includes. A device folder's release cache is DIR/releases.",
    )
    install.add_argument("--from", dest="source", type=Path, required=True, help="a release folder")
    install.add_argument("--cache", type=Path, required=True, help="the device's release cache folder")
    install.add_argument("--public-key", type=Path, required=True, help="the pinned release key (PEM)")
    install.add_argument("--data", type=Path, help="the device's data folder: mark its receipts")
    install.add_argument("--version", type=int, help="the release version expected (another is refused)")
    receipts_cli.add_parser(sub)
    return parser


def verb(sub: Any, name: str, summary: str, description: str) -> argparse.ArgumentParser:
    """A subcommand: `summary` in fedhome-client --help, `description` in its own --help."""
    parser: argparse.ArgumentParser = sub.add_parser(name, help=summary, description=description)
    return parser


def read_history(path: Path) -> list[Event]:
    """The events of a history file (UTF-8 JSON lines of item_id, event, timestamp); DataError naming the
    file (and line) when it is missing, not UTF-8 text, or a line is not such an event (the same checks as
    EventStore.add: check_event and check_timestamp, client/device/event_store.py)."""
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
            check_timestamp(event.timestamp)
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


def sync_device(args: argparse.Namespace, key: Ed25519PublicKey) -> int:
    """The sync command: prints the SyncResult (client/device/sync.py) as JSON."""
    with Device(args.device, key) as device:
        result = device.sync(args.url)
    print(json.dumps(asdict(result)))
    return 0


def record(args: argparse.Namespace) -> int:
    """The record command: checked before the device folder is touched, so bad input writes nothing."""
    check_event(args.item, args.event)
    check_timestamp(args.timestamp)
    args.device.mkdir(parents=True, exist_ok=True)
    store = EventStore(events_path(args.device))
    try:
        store.add(args.item, args.event, args.timestamp)
        print(json.dumps({"recorded": args.event, "events": store.count()}))
    finally:
        store.close()
    return 0


def rank(args: argparse.Namespace, key: Ed25519PublicKey) -> int:
    """The homepage and recommend commands, over a device folder or a bare release cache."""
    now = int(time.time()) if args.now is None else args.now
    history = None if args.history is None else read_history(args.history)
    if args.device is not None:
        with Device(args.device, key, precision=args.precision, create=False) as device:
            if args.command == "homepage":
                return show_page(device.release(), device.homepage(now, history=history))
            return show_top(device.release(), device.recommend(args.k, now, history=history))
    if history is None:
        raise ConfigError("--cache needs --history FILE (with --device DIR the device's own events are used)")
    release = ReleaseInUse(ReleaseCache(args.cache, key), precision=args.precision)
    if args.command == "homepage":
        return show_page(release, release.homepage(history, now, purchased=purchases(history)))
    return show_top(release, release.recommend(history, now, k=args.k))


def show_page(release: ReleaseInUse, page: list[Section]) -> int:
    sections = [{"title": s.title, "cards": [asdict(c) for c in s.cards]} for s in page]
    trending = None if release.trending is None else release.trending.describe()
    out = {"release": release.version, "sections": sections, "trending": trending}
    print(json.dumps(out, ensure_ascii=False))
    return 0


def show_top(release: ReleaseInUse, items: list[str]) -> int:
    top = [{"id": i, "title": t} for i, t in zip(items, release.titles(items), strict=True)]
    print(json.dumps({"release": release.version, "for_you": top}, ensure_ascii=False))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "receipts":
            return receipts_cli.run(args)
        if args.command == "record":
            return record(args)
        key = load_public_key(args.public_key)
        if args.command == "install":
            return install(ReleaseCache(args.cache, key), args)
        if args.command == "sync":
            return sync_device(args, key)
        return rank(args, key)
    except FedhomeError as exc:
        print(f"fedhome-client: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
