"""`fedhome-server catalogue-add ITEMS.jsonl`: the admin route's publication offline, from a file of items.

Each line of ITEMS.jsonl is one item as the route takes it
(server/catalogue/catalogue_items.py:CatalogueItem); a bad line is refused with its line number and nothing is
published. The delta is published for the latest release (or --release) from the run it was made from (--run),
signed with --signing-key.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from server.catalogue.catalogue_items import CatalogueItem
from shared.errors import DataError


def add_parser(sub: Any) -> None:
    """The `catalogue-add` subcommand on `sub` (argparse subparsers)."""
    command = sub.add_parser(
        "catalogue-add", help="add or change catalogue items and publish a signed catalogue delta"
    )
    command.add_argument("items", type=Path, help="JSON lines, one item each (id, title, category, ...)")
    command.add_argument("--store", type=Path, required=True, help="the release store folder")
    command.add_argument("--run", type=Path, required=True, help="the run the release was made from")
    command.add_argument("--signing-key", type=Path, required=True, help="the server's Ed25519 key (PEM)")
    command.add_argument(
        "--ledger-public-key",
        type=Path,
        default=None,
        help="key the run's ledger is checked with (default: the signing key's public half)",
    )
    command.add_argument("--release", type=int, default=None, help="base release (default: the latest)")


def read_items(path: Path) -> list[CatalogueItem]:
    """The items of a JSON-lines file (blank lines skipped); DataError naming the line of a bad one."""
    items: list[CatalogueItem] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read the items ({exc})", path=str(path)) from exc
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            items.append(CatalogueItem.model_validate_json(line))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'line'}: {e['msg']}" for e in exc.errors()
            )
            raise DataError(problems, path=str(path), line=number) from exc
    ids = [item.id for item in items]
    if len(set(ids)) != len(ids):
        raise DataError("the file names an item more than once", path=str(path))
    if not items:
        raise DataError("no items in the file", path=str(path))
    return items


def command_catalogue_add(args: argparse.Namespace) -> int:
    from server.catalogue.delta_publisher import DeltaStore, load_base
    from server.releases.release_store import ReleaseStore
    from shared import signing

    items = read_items(args.items)
    key = signing.load_private_key(args.signing_key)
    ledger_key = (
        signing.load_public_key(args.ledger_public_key) if args.ledger_public_key else key.public_key()
    )
    store = ReleaseStore(args.store)
    version = args.release if args.release is not None else store.latest()
    if version is None or version not in store.versions():
        raise DataError(f"no release {version} in {args.store}")
    result = DeltaStore(store).publish(load_base(store, version, args.run, ledger_key), items, key)
    print(json.dumps(result.model_dump()))
    return 0
