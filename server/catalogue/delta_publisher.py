"""Publishing signed catalogue deltas (format: shared/catalogue_delta_format.py) beside a release store.

Layout under the store: `deltas/catalogue.json` (the record: every item written so far, at its latest
state, in write order), `deltas/<release>/<sequence>/` (a delta's files and signed manifest) and
`deltas/<release>/index.json` (the signed list of that release's deltas). Deltas are cumulative: each
publication builds delta n+1 of the latest release from the whole record, so the record carries written
items over to a new release too (`fedhome-server release` publishes its first delta at once).

One publication at a time (an exclusive lock file), each step atomic: the delta is built in a staging
folder and renamed into place, then the record, then the signed list is replaced, and last the release
index names the new delta as the release's head (server/releases/release_store.py; devices follow the index's
head, whose serial and expiry stop a replayed or frozen view). A crash before the index is re-signed
leaves the previous delta served to devices and in the catalogue (`catalogue` applies the head the index
names, not the newest listed); the record then already holds the interrupted write, whose items appear in
the next delta.

Old deltas are pruned by each publication, after the index names the new head: since deltas are cumulative
a device needs only the head, so a release keeps its newest KEEP_DELTAS deltas and the head the index named
before (a device may be downloading it); the signed list drops the others first, then their folders go.
Staging folders that a publication killed mid-write left behind are removed when the store is opened and
no publication holds the lock.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
from pydantic import BaseModel

from server.catalogue.catalogue_items import (
    CatalogueItem,
    ItemEncoder,
    as_catalogue,
    embed_items,
    item_rows,
    merge,
)
from server.releases.release_builder import ITEMS_META, catalogue_metadata, load_run, quantize_rows
from server.releases.release_store import (
    STAGING_PREFIX,
    ReleaseStore,
    StoreError,
    remove_staging_leftovers,
)
from shared.catalogue_delta_format import (
    DELTA_BIAS,
    DELTA_F32,
    DELTA_INT8,
    DELTA_ITEMS,
    DELTA_KIND,
    DELTA_SCALES,
    manifest_sha256,
    sign_delta_list,
    verify_delta_list,
)
from shared.config import from_flat
from shared.data.schema import Catalogue
from shared.errors import ConfigError, DataError
from shared.model import TwoTower
from shared.release_index import delta_head
from shared.release_manifest import MANIFEST_NAME, file_digest, read_manifest, sign_manifest
from shared.run_folder import RunFolder, write_json_atomic
from shared.signing import Ed25519PrivateKey, Ed25519PublicKey

LIST_NAME = "index.json"
RECORD_NAME = "catalogue.json"
LOCK_NAME = ".lock"
KEEP_DELTAS: Final = 2  # a release's newest deltas kept by each publication (with the previous head)


class CorruptStoreError(StoreError, DataError):
    """A file of the service's own delta store (list, record, a delta's files) is malformed: the
    service's fault, never the caller's (server/api/http_errors.py maps it to 500)."""


@dataclass
class DeltaBase:
    """What the deltas of one release are computed from: its manifest, model, base catalogue, encoder."""

    version: int
    manifest: dict[str, Any]
    model: TwoTower
    catalogue: Catalogue
    encoder: ItemEncoder


class DeltaResult(BaseModel):
    release: int
    sequence: int
    items: int  # items in the (cumulative) delta
    added: list[str]  # ids of this write new to the release and the record
    changed: list[str]  # ids of this write that existed already
    unavailable: int  # items of the delta devices must not show (out of stock, withdrawn)
    encoded_texts: int  # texts of this delta that were not in the embedding cache
    seconds: float


def load_base(store: ReleaseStore, version: int, run_dir: Path, ledger_key: Ed25519PublicKey) -> DeltaBase:
    """The base of release `version`, from the run it was made from (its ledger verified by `ledger_key`);
    ConfigError when `run_dir` is not that run (another model, run id or item text vectors)."""
    manifest = store.manifest(version)
    model, catalogue, source = load_run(run_dir, ledger_key)  # the final model, else the release's round
    if source.model_sha256 != manifest["model"]["sha256"]:
        model, catalogue, source = load_run(run_dir, ledger_key, round_number=int(manifest["model"]["round"]))
    made_from = (source.run_id, source.model_sha256, source.encoder)
    if made_from != (manifest["run_id"], manifest["model"]["sha256"], manifest["encoder"]):
        raise ConfigError(f"{run_dir} is not the run release {version} was made from")
    config = from_flat(json.loads(RunFolder(Path(run_dir)).config.read_text()))
    return DeltaBase(version, manifest, model, catalogue, ItemEncoder(config.encoder))


class DeltaStore:
    """The catalogue deltas beside the release store `store`."""

    def __init__(self, store: ReleaseStore) -> None:
        self.store = store
        self.root = store.root / "deltas"
        releases = self.root.iterdir() if self.root.is_dir() else iter(())
        remove_staging_leftovers([p for p in releases if p.is_dir()], lock=self.root / LOCK_NAME)

    def folder(self, release: int, sequence: int) -> Path:
        return self.root / f"{release:06d}" / f"{sequence:06d}"

    def head(self, release: int) -> int | None:
        """The sequence of the delta the release index (verified, when the store has a key) names as
        `release`'s head; None when it names none."""
        try:
            head = delta_head(self.store.index(), release)
        except DataError as exc:  # the release is not in our own index, or its head is malformed
            raise CorruptStoreError(str(exc)) from exc
        return None if head is None else head[0]

    def listing(self, release: int, public_key: Ed25519PublicKey | None = None) -> dict[str, Any]:
        """The signed list of `release`'s deltas ({"release", "deltas": []} unsigned when it has none)."""
        path = self.root / f"{release:06d}" / LIST_NAME
        if not path.is_file():
            return {"release": release, "deltas": []}
        listing = _read_json(path)
        entries = listing.get("deltas") if isinstance(listing, dict) else None
        if not isinstance(entries, list) or not all(
            isinstance(e, dict) and type(e.get("sequence")) is int for e in entries
        ):
            raise CorruptStoreError("not a delta list (deltas with integer sequences)", path=str(path))
        if public_key is not None:
            try:
                verify_delta_list(listing, public_key, release)
            except DataError as exc:  # validly signed or not, our own list is wrong: SignatureError stays
                raise CorruptStoreError(str(exc), path=str(path)) from exc
        return listing

    def sequences(self, release: int) -> list[int]:
        return sorted(int(entry["sequence"]) for entry in self.listing(release)["deltas"])

    def manifest(self, release: int, sequence: int) -> dict[str, Any]:
        """A listed delta's signed manifest (DataError when it is not listed, CorruptStoreError when it is
        but its manifest is not readable)."""
        if sequence not in self.sequences(release):
            raise DataError(f"release {release} has no delta {sequence}")
        try:
            return read_manifest(self.folder(release, sequence))
        except DataError as exc:
            raise CorruptStoreError(str(exc)) from exc

    def catalogue(self, release: int, head: int | None) -> list[dict[str, Any]]:
        """The release's item metadata with delta `head` applied (the one the release index names:
        `head(release)`; a delta published but not named yet is not shown): changed items replaced in
        place, new ones appended; every item carries its "status" (what GET /v1/catalogue pages through)."""
        items = [{**item, "status": "active"} for item in _read_json(self.store.folder(release) / ITEMS_META)]
        if head is None:
            return items
        rows = {item["id"]: row for row, item in enumerate(items)}
        path = self.folder(release, head) / DELTA_ITEMS
        written = _read_json(path)
        if not isinstance(written, list) or not all(isinstance(i, dict) and "id" in i for i in written):
            raise CorruptStoreError("not a list of items with ids", path=str(path))
        for item in written:
            if item["id"] in rows:
                items[rows[item["id"]]] = item
            else:
                items.append(item)
        return items

    def record(self) -> dict[str, dict[str, Any]]:
        """Every item written so far, id -> latest state, in write order."""
        path = self.root / RECORD_NAME
        if not path.is_file():
            return {}
        record = _read_json(path)
        items = record.get("items") if isinstance(record, dict) else None
        if not isinstance(items, dict):
            raise CorruptStoreError('not a catalogue record (no "items" object)', path=str(path))
        return items

    def publish(self, base: DeltaBase, items: Sequence[CatalogueItem], key: Ed25519PrivateKey) -> DeltaResult:
        """Apply `items` to the record and publish the next delta of `base`'s release (see the module
        docstring); every item is validated before anything is written."""
        started = time.perf_counter()
        self.root.mkdir(parents=True, exist_ok=True)
        with self._lock():
            record, added, changed = merge(self.record(), items, base.catalogue, int(time.time()))
            states = list(record.values())
            sequence = max(self.sequences(base.version), default=0) + 1
            previous = self.head(base.version)
            encoded = self._build(base, states, sequence, key)
            write_json_atomic(self.root / RECORD_NAME, {"items": record})
            listed_sha256 = self._list(base.version, sequence, len(states), key)
            self.store.set_delta_head(base.version, sequence, listed_sha256, key)  # what devices follow
            self._prune(base.version, {sequence} if previous is None else {sequence, previous}, key)
        return DeltaResult(
            release=base.version,
            sequence=sequence,
            items=len(states),
            added=added,
            changed=changed,
            unavailable=sum(state["status"] != "active" for state in states),
            encoded_texts=encoded,
            seconds=round(time.perf_counter() - started, 3),
        )

    def _build(
        self, base: DeltaBase, states: list[dict[str, Any]], sequence: int, key: Ed25519PrivateKey
    ) -> int:
        """Write delta `sequence` of `base` for `states`; returns how many texts were encoded."""
        target = self.folder(base.version, sequence)
        staging = target.with_name(f"{STAGING_PREFIX}{sequence:06d}-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        try:
            items = as_catalogue(states)
            encoded = self._write_rows(base, items, states, staging)
            files = {p.name: file_digest(p) for p in sorted(staging.iterdir())}
            manifest = sign_manifest(self._fields(base, sequence, states, files), key)
            (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
            shutil.rmtree(target, ignore_errors=True)  # an unlisted leftover of an interrupted publication
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return encoded

    def _write_rows(
        self, base: DeltaBase, items: Catalogue, states: list[dict[str, Any]], folder: Path
    ) -> int:
        dim = int(base.model.items.text.shape[1])
        encoded = 0
        if items.n_items:
            text, encoded = self._embed(base, items)
            vectors, bias = item_rows(base.model, base.catalogue, items, text)
        else:
            vectors, bias = np.zeros((0, dim), np.float32), np.zeros(0, np.float32)
        q, scale = quantize_rows(vectors) if len(vectors) else (np.zeros((0, dim), np.int8), bias.copy())
        meta = [
            {**row, "description": state["description"], "status": state["status"]}
            for row, state in zip(catalogue_metadata(items), states, strict=True)
        ]
        (folder / DELTA_ITEMS).write_text(json.dumps(meta, ensure_ascii=False))
        for name, array in ((DELTA_F32, vectors), (DELTA_INT8, q), (DELTA_SCALES, scale), (DELTA_BIAS, bias)):
            np.save(folder / name, array)
        return encoded

    def _embed(self, base: DeltaBase, items: Catalogue) -> tuple[np.ndarray, int]:
        """((k, E) unit text vectors of `items`, how many texts had to be encoded): the encoder's, cached."""
        return embed_items(items, base.encoder)

    def _fields(
        self, base: DeltaBase, sequence: int, states: list[dict[str, Any]], files: dict[str, Any]
    ) -> dict[str, Any]:
        encoder = base.encoder.config
        return {
            "kind": DELTA_KIND,
            "release": base.version,
            "base_manifest_sha256": manifest_sha256(base.manifest),
            "sequence": sequence,
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "model": base.manifest["model"],
            "encoder": {**base.manifest["encoder"], "with_description": encoder.with_description},
            "items": len(states),
            "unavailable": sum(state["status"] != "active" for state in states),
            "files": files,
        }

    def _list(self, release: int, sequence: int, n_items: int, key: Ed25519PrivateKey) -> str:
        """Add delta `sequence` to the release's signed list; returns its manifest's sha256."""
        manifest = read_manifest(self.folder(release, sequence))
        entry = {
            "sequence": sequence,
            "items": n_items,
            "created_utc": manifest["created_utc"],
            "manifest_sha256": manifest_sha256(manifest),
        }
        listing = sign_delta_list(release, [*self.listing(release)["deltas"], entry], key)
        write_json_atomic(self.root / f"{release:06d}" / LIST_NAME, listing)
        return str(entry["manifest_sha256"])

    def _prune(self, release: int, heads: set[int], key: Ed25519PrivateKey) -> None:
        """Drop `release`'s deltas that devices no longer need: all but the newest KEEP_DELTAS and `heads`
        (the index's head now and before this publication). The signed list drops them first, then their
        folders go, with any folder below the newest kept one that an earlier crash left unlisted."""
        entries = self.listing(release)["deltas"]
        keep = set(sorted(int(e["sequence"]) for e in entries)[-KEEP_DELTAS:]) | heads
        kept = [entry for entry in entries if entry["sequence"] in keep]
        if len(kept) < len(entries):
            write_json_atomic(self.root / f"{release:06d}" / LIST_NAME, sign_delta_list(release, kept, key))
        for folder in (self.root / f"{release:06d}").iterdir():
            stale = folder.name.isdigit() and int(folder.name) < max(keep) and int(folder.name) not in keep
            if stale and folder.is_dir():
                shutil.rmtree(folder, ignore_errors=True)

    @contextmanager
    def _lock(self) -> Iterator[None]:
        with (self.root / LOCK_NAME).open("w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _read_json(path: Path) -> Any:
    """A JSON file of the store (CorruptStoreError naming it when it is not readable JSON)."""
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        raise CorruptStoreError("not readable JSON", path=str(path)) from exc
