"""The signed release index: which releases exist and which are withdrawn, with a serial and an expiry.

A device trusts an index only when it is signed by the pinned key, its `serial` is not below the highest
serial the device accepted before, and it has not expired (`expires_utc`). The serial stops a replayed
older index (say, one from before a withdrawal) from undoing what a device already saw (rollback); the
expiry bounds how long an attacker who can only replay old signed indexes keeps a device that never saw a
withdrawal on the withdrawn release (freeze): at most the index lifetime. The service re-signs the index
before it expires (`fedhome-server refresh-index`, or the service itself when it holds the signing key).
This is TUF's timestamp role reduced to one file.

A release's entry also names the head of its catalogue deltas (shared/catalogue_delta_format.py): the newest
delta's sequence and the sha256 of its signed manifest. The service re-signs the index (next serial) with
every delta it publishes, so the index's serial and expiry protect the deltas too (TUF's snapshot role
folded into the same file): a device learns which delta is current from the index, not from an unsigned
or replayable list, and an attacker replaying an old index or delta is refused or, at worst, holds a
device on an old delta for one index lifetime.

{"releases": [{"version", "withdrawn", "reason", "delta"?: {"sequence": int >= 1, "manifest_sha256"}}],
 "serial": int >= 1, "expires_utc": "YYYY-MM-DDTHH:MM:SSZ", "key_id", "signature"}; the signature covers
the canonical JSON of everything but itself. A release without "delta" has no delta published.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any, Final

from shared.errors import DataError, SignatureError
from shared.signing import Ed25519PrivateKey, Ed25519PublicKey, canonical_json, key_id, sign, verify

INDEX_LIFETIME_S: Final = 7 * 24 * 3600  # a week: re-signed daily, a device tolerates a missed day or six
_TIME_FORMAT: Final = "%Y-%m-%dT%H:%M:%SZ"
_SIGNED: Final = ("releases", "serial", "expires_utc", "key_id")


def utc_text(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(int(seconds), tz=datetime.UTC).strftime(_TIME_FORMAT)


def utc_seconds(text: str) -> float:
    try:
        moment = datetime.datetime.strptime(text, _TIME_FORMAT).replace(tzinfo=datetime.UTC)
    except (TypeError, ValueError) as exc:
        raise DataError(f"expires_utc must look like 2026-01-31T12:00:00Z, got {text!r}") from exc
    return moment.timestamp()


def sign_index(
    releases: list[dict[str, Any]], key: Ed25519PrivateKey, *, serial: int, expires_s: float
) -> dict[str, Any]:
    """The signed index of `releases` with this serial, expiring at `expires_s` (Unix seconds)."""
    if type(serial) is not int or serial < 1:
        raise ValueError(f"serial must be an int >= 1, got {serial!r}")
    index: dict[str, Any] = {
        "releases": releases,
        "serial": serial,
        "expires_utc": utc_text(expires_s),
        "key_id": key_id(key.public_key()),
    }
    index["signature"] = sign(key, canonical_json(index))
    return index


def verify_signature(index: Mapping[str, Any], public_key: Ed25519PublicKey) -> dict[str, Any]:
    """The signed part of `index` (extra fields dropped) after checking the key and the signature."""
    if not isinstance(index, Mapping):
        raise DataError("not a release index (a JSON object)")
    if index.get("key_id") != key_id(public_key):
        raise SignatureError("the release index is not signed by the pinned key")
    signed = {k: index[k] for k in _SIGNED if k in index}
    verify(public_key, canonical_json(signed), str(index.get("signature", "")))
    return {**signed, "signature": index["signature"]}


def _check_fields(index: Mapping[str, Any]) -> None:
    missing = [k for k in _SIGNED if k not in index]
    if missing:  # signed, but in the first format, without rollback and freeze protection
        raise DataError(
            f"the release index has no {', '.join(missing)}: re-sign it (fedhome-server refresh-index)"
        )
    if type(index["serial"]) is not int or index["serial"] < 1 or not isinstance(index["releases"], list):
        raise DataError("the release index's serial must be an int >= 1 and its releases a list")


def verify_index(
    index: Mapping[str, Any], public_key: Ed25519PublicKey, *, now_s: float, min_serial: int
) -> dict[str, Any]:
    """The index, when it is signed by `public_key`, not older than serial `min_serial` and not expired at
    `now_s`; SignatureError (a forged, altered or replayed index) or DataError (malformed, expired)."""
    verified = verify_signature(index, public_key)
    _check_fields(verified)
    if verified["serial"] < min_serial:
        raise SignatureError(
            f"release index serial {verified['serial']} is older than serial {min_serial} accepted before: "
            "a replayed index, refused"
        )
    if now_s >= utc_seconds(str(verified["expires_utc"])):
        raise DataError(
            f"the release index expired at {verified['expires_utc']}: the service must re-sign it "
            "(fedhome-server refresh-index); nothing changed on the device"
        )
    return verified


def delta_head(index: Mapping[str, Any], version: int) -> tuple[int, str] | None:
    """(sequence, manifest_sha256) of the newest catalogue delta the (verified) index names for release
    `version`; None when it names none. DataError when the release is not in the index or the head is
    malformed."""
    entries = [r for r in index["releases"] if isinstance(r, Mapping) and r.get("version") == version]
    if not entries:
        raise DataError(f"release {version} is not in the release index")
    head = entries[0].get("delta")
    if head is None:
        return None
    sequence = head.get("sequence") if isinstance(head, Mapping) else None
    digest = head.get("manifest_sha256") if isinstance(head, Mapping) else None
    if type(sequence) is not int or sequence < 1 or not isinstance(digest, str) or len(digest) != 64:
        raise DataError(f"release {version}'s delta head in the index is malformed: {head!r}")
    return sequence, digest
