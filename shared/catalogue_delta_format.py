"""Signed catalogue deltas: items added or changed after a release, with their item vectors, and the checks.

A delta belongs to one base release and is CUMULATIVE: delta n of release v holds every item written
since (and carried over into) release v, each at its latest state, so a device needs only the newest
delta and can skip any it missed. Sequence numbers grow by one per publication for a release; a device
never goes back to a lower one (an old, validly signed delta must not be replayed).

A delta folder holds, for its k items in one order (the same file names as a release's):
- `items.json`: k records {"id", "title", "category", "brand", "price", "created_at", "on_promotion",
  "description", "status"}; status is "active", "out_of_stock" or "withdrawn" (devices show only active
  items; the others stay rankable as history so a shopper's past still counts);
- `item_vectors_f32.npy` (k, E) float32, the release model's item-tower vectors of the items' texts and
  attributes; `item_vectors_int8.npy` (k, E) int8 and `item_scales.npy` (k,) float32, the same symmetric
  per-row quantisation as the release; `item_bias.npy` (k,) float32;
- `manifest.json`: "kind": "catalogue-delta", "release" (base version), "base_manifest_sha256" (sha256
  of the canonical JSON of the base release's signed manifest), "sequence", "created_utc", "model" and
  "encoder" (what the vectors come from), counts, and "files" with every file's sha256 and size, signed
  with Ed25519 exactly like a release manifest (shared/release_manifest.py).

The list of a release's deltas is a signed JSON object {"release", "deltas": [{"sequence", "items",
"created_utc", "manifest_sha256"}], "key_id", "signature"}. Which delta is current a device learns from
the signed release index instead (its release entry's "delta" head: shared/release_index.py), whose serial
and expiry stop a replayed or withheld delta; the list has neither.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

from shared.errors import DataError, SignatureError
from shared.release_manifest import verify_release
from shared.signing import Ed25519PrivateKey, Ed25519PublicKey, canonical_json, key_id, sign, verify

DELTA_KIND: Final[str] = "catalogue-delta"
ITEM_STATUSES: Final[tuple[str, ...]] = ("active", "out_of_stock", "withdrawn")
DELTA_ITEMS: Final[str] = "items.json"
DELTA_F32: Final[str] = "item_vectors_f32.npy"
DELTA_INT8: Final[str] = "item_vectors_int8.npy"
DELTA_SCALES: Final[str] = "item_scales.npy"
DELTA_BIAS: Final[str] = "item_bias.npy"
DELTA_FILES: Final[tuple[str, ...]] = (DELTA_ITEMS, DELTA_F32, DELTA_INT8, DELTA_SCALES, DELTA_BIAS)


@dataclass(frozen=True, eq=False)
class DeltaRows:
    """A verified delta's items and their rows, in the delta's order."""

    manifest: dict[str, Any]
    items: list[dict[str, Any]]
    vectors_f32: np.ndarray  # (k, E) float32
    vectors_int8: np.ndarray  # (k, E) int8
    scales: np.ndarray  # (k,) float32, vector ~ int8 * scale
    bias: np.ndarray  # (k,) float32

    @property
    def sequence(self) -> int:
        return int(self.manifest["sequence"])

    def active(self) -> np.ndarray:
        """(k,) bool: the items devices may show."""
        return np.array([item["status"] == "active" for item in self.items], dtype=bool)


def manifest_sha256(manifest: dict[str, Any]) -> str:
    """sha256 (hex) of a signed manifest's canonical JSON: binds a delta to one exact release."""
    return hashlib.sha256(canonical_json(manifest)).hexdigest()


def sign_delta_list(release: int, deltas: list[dict[str, Any]], key: Ed25519PrivateKey) -> dict[str, Any]:
    """The signed list of release `release`'s deltas."""
    listing: dict[str, Any] = {"release": release, "deltas": deltas, "key_id": key_id(key.public_key())}
    listing["signature"] = sign(key, canonical_json(listing))
    return listing


def verify_delta_list(listing: dict[str, Any], public_key: Ed25519PublicKey, release: int) -> list[int]:
    """The sequence numbers in a signed delta list of `release`, after checking key, signature and release."""
    signed = {k: listing.get(k) for k in ("release", "deltas", "key_id", "signature")}
    if signed["key_id"] != key_id(public_key):
        raise SignatureError("the delta list is not signed by the pinned key")
    verify(
        public_key,
        canonical_json({k: v for k, v in signed.items() if k != "signature"}),
        str(signed["signature"]),
    )
    if signed["release"] != release or not isinstance(signed["deltas"], list):
        raise DataError(f"the delta list is for release {signed['release']!r}, not {release}")
    sequences = sorted(int(entry["sequence"]) for entry in signed["deltas"])
    if len(set(sequences)) != len(sequences):
        raise DataError("the delta list names a sequence twice")
    return sequences


def verify_delta(folder: Path, public_key: Ed25519PublicKey, base_manifest: dict[str, Any]) -> DeltaRows:
    """The rows of the delta in `folder` after checking its signature (pinned key), every file's sha256,
    that it was made for exactly `base_manifest`'s release and model, and that its arrays agree in shape."""
    manifest = verify_release(folder, public_key, kind=DELTA_KIND)
    if manifest.get("release") != base_manifest.get("version") or manifest.get(
        "base_manifest_sha256"
    ) != manifest_sha256(base_manifest):
        raise DataError(f"the delta is for another release than {base_manifest.get('version')!r}")
    if manifest.get("model") != base_manifest.get("model"):
        raise DataError("the delta's vectors come from another model than its release's")
    missing = [name for name in DELTA_FILES if name not in manifest["files"]]
    if missing:
        raise DataError(f"the delta lacks {', '.join(missing)}")
    return _read_rows(Path(folder), manifest)


def _read_rows(folder: Path, manifest: dict[str, Any]) -> DeltaRows:
    try:
        items = json.loads((folder / DELTA_ITEMS).read_text(encoding="utf-8"))
        arrays = [np.load(folder / name, allow_pickle=False) for name in DELTA_FILES[1:]]
    except (OSError, ValueError) as exc:
        raise DataError(f"{folder}: unreadable delta file ({exc})") from exc
    f32, q, scales, bias = arrays
    k = len(items) if isinstance(items, list) else -1
    shapes_ok = f32.ndim == 2 and q.shape == f32.shape and scales.shape == bias.shape == (f32.shape[0],)
    dtypes_ok = (f32.dtype, q.dtype, scales.dtype, bias.dtype) == (
        np.float32,
        np.int8,
        np.float32,
        np.float32,
    )
    if k != f32.shape[0] or not shapes_ok or not dtypes_ok:
        raise DataError(f"{folder}: delta arrays disagree with its {k} items")
    if any(not isinstance(item, dict) or item.get("status") not in ITEM_STATUSES for item in items):
        raise DataError(f"{folder}: a delta item has no valid status")
    if len({item.get("id") for item in items}) != k:
        raise DataError(f"{folder}: a delta names an item twice")
    return DeltaRows(manifest, items, f32, q, scales, bias)
