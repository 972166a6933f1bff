"""Release manifests: what a model release holds, signed; and the check every device runs before using one.

A release is a folder of files plus `manifest.json`:
- "format": RELEASE_FORMAT; "version" (an increasing integer); "created_utc"; "run_id";
- "model": {"sha256": sha256 of the released parameters, "round": the round they come from (the trained
  parameters after it, or the start parameters when the run's start check shipped the start)};
- "encoder": {"name", "backend", "package"} (the item-text encoder the item vectors come from);
- "privacy": {"unit": "user", "epsilon": user-level PLD epsilon spent, "delta", "ledger_head": the hash of
  the ledger entry of that round (or of the start check that followed it and chose the model),
  "ledger_entries", optional "record_epsilon"/"record_delta", "start_check": the check's decision,
  "trending": the trending counts' entry, "popularity_prior": the count release the model's popularity prior
  comes from (its entry hash, the counts' sha256 it signs, `popularity_prior_sha256` of the prior)};
- "files": {file name: {"sha256", "bytes"}} for every other file of the release;
- "derived" (releases whose per-item arrays devices compute, shared/derived_items.py): {"scheme", "files":
  {name: {"from": [input file names]}}}, the files of "files" that are a function of the others; a device
  that knows the scheme derives them instead of downloading them and checks its copies against its own
  record (floats are not bit-exact across machines), anyone else downloads and checks them like any file;
- "key_id" and "signature": Ed25519 over canonical_json(manifest without "signature") (shared.signing).
Catalogue deltas (shared/catalogue_delta_format.py) use the same signed form with "kind": "catalogue-delta"; a
manifest of one kind never verifies as the other.

`verify_release` is what a device (or anyone) runs: the signature against a PINNED public key, the key id,
then every listed file's size and sha256. One flipped byte anywhere fails it. File names are plain names
(no folders), so a manifest cannot point outside its release.

Limits for readers that download a release: a manifest is at most MAX_MANIFEST_BYTES, and each listed file
exactly its "bytes" (`listed_sizes`), so a downloader stops reading at those sizes instead of writing whatever
a mirror sends.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final

import numpy as np

from shared.errors import DataError, SignatureError
from shared.signing import Ed25519PrivateKey, Ed25519PublicKey, canonical_json, key_id, sign, verify

MANIFEST_NAME = "manifest.json"
# the largest manifest a reader downloads: one lists a release's files (about 2 KB for 10 files)
MAX_MANIFEST_BYTES: Final = 1 << 20
RELEASE_FORMAT = 1
RELEASE_KIND = "release"  # manifests of another kind (e.g. "catalogue-delta") carry a "kind" field
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_CHUNK = 1 << 20


def file_digest(path: Path) -> dict[str, Any]:
    """{"sha256": hex, "bytes": size} of a file, read in chunks."""
    digest, size = hashlib.sha256(), 0
    with Path(path).open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return {"sha256": digest.hexdigest(), "bytes": size}


def popularity_prior_sha256(prior: np.ndarray) -> str:
    """sha256 of a popularity prior's values (float32, little-endian, item order): what a release's manifest
    records of the prior in its model, and an auditor recomputes from the counts its ledger entry signs."""
    return hashlib.sha256(np.ascontiguousarray(prior, dtype="<f4").tobytes()).hexdigest()


def sign_manifest(fields: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """The manifest `fields` with "format", "key_id" and "signature" added."""
    for name in fields.get("files", {}):
        check_file_name(name)
    manifest = {**fields, "format": RELEASE_FORMAT, "key_id": key_id(key.public_key())}
    manifest.pop("signature", None)
    manifest["signature"] = sign(key, canonical_json(manifest))
    return manifest


def verify_manifest(
    manifest: dict[str, Any], public_key: Ed25519PublicKey, *, kind: str = RELEASE_KIND
) -> None:
    """Raise SignatureError unless `manifest` is signed by `public_key` (and names its key id); DataError
    unless it is a manifest of `kind` (a release's has no "kind"; a catalogue delta's says so)."""
    if manifest.get("key_id") != key_id(public_key):
        raise SignatureError(
            f"release signed by key {manifest.get('key_id')!r}, not the pinned key {key_id(public_key)}"
        )
    unsigned = {k: v for k, v in manifest.items() if k != "signature"}
    verify(public_key, canonical_json(unsigned), str(manifest.get("signature", "")))
    if manifest.get("format") != RELEASE_FORMAT:
        raise DataError(
            f"unknown release format {manifest.get('format')!r} (this code reads {RELEASE_FORMAT})"
        )
    if manifest.get("kind", RELEASE_KIND) != kind:
        raise DataError(f"a {manifest.get('kind')!r} manifest where a {kind!r} manifest was expected")


def read_manifest(folder: Path) -> dict[str, Any]:
    """The parsed manifest.json of a release folder (DataError when missing or not a JSON object)."""
    path = Path(folder) / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_bytes())
    except FileNotFoundError as exc:
        raise DataError(f"{path}: no release manifest") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise DataError(f"{path}: not a release manifest (no files table)")
    return manifest


def verify_release(folder: Path, public_key: Ed25519PublicKey, *, kind: str = RELEASE_KIND) -> dict[str, Any]:
    """The manifest of the release (or catalogue delta, `kind`) in `folder` after checking its signature
    and every file it lists."""
    manifest = read_manifest(folder)
    verify_manifest(manifest, public_key, kind=kind)
    verify_files(folder, manifest, manifest["files"])
    return manifest


def verify_files(folder: Path, manifest: dict[str, Any], names: Iterable[str]) -> None:
    """Check the files `names` of `folder` against their size and sha256 in the (verified) `manifest`:
    DataError when one is missing, SignatureError when one is not listed or does not match. A device checks
    the files it downloads this way, and those it derives against its own record (shared/derived_items.py)."""
    for name in names:
        check_file_name(name)
        expected, path = manifest["files"].get(name), Path(folder) / name
        if not path.is_file():
            raise DataError(f"release file {name} is missing")
        if not isinstance(expected, dict) or file_digest(path) != {
            "sha256": expected.get("sha256"),
            "bytes": expected.get("bytes"),
        }:
            raise SignatureError(f"release file {name} does not match its sha256 in the signed manifest")


def check_file_name(name: object) -> None:
    """DataError unless `name` is a plain file name a manifest may list (check it before any fetch)."""
    if not isinstance(name, str) or not _FILE_NAME.fullmatch(name) or name == MANIFEST_NAME:
        raise DataError(f"release file name {name!r} is not a plain file name")


def listed_sizes(manifest: dict[str, Any]) -> dict[str, int]:
    """{file name: size in bytes} of every file a manifest lists (read before anything else is fetched, to
    stop each download at its size); DataError when a name is not a plain file name or a size is not an
    int >= 0."""
    sizes = {}
    for name, listed in manifest["files"].items():
        check_file_name(name)
        size = listed.get("bytes") if isinstance(listed, dict) else None
        if type(size) is not int or size < 0:
            raise DataError(f"release file {name} has no size in bytes in its manifest")
        sizes[name] = size
    return sizes
