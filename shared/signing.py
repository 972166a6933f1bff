"""Ed25519 keys, signatures and the canonical JSON that gets signed (ledger entries, release manifests).

Key files are PEM: the private key as unencrypted PKCS8 written with mode 0600 (protect it like a
password; it never leaves the server), the public key as SubjectPublicKeyInfo (give it to anyone who
verifies). A key's id is the first 16 hex digits of the sha256 of its 32 raw public bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from shared.errors import ConfigError, DataError, SignatureError

__all__ = [
    "Ed25519PrivateKey",
    "Ed25519PublicKey",
    "canonical_json",
    "generate_private_key",
    "key_id",
    "load_private_key",
    "load_public_key",
    "save_private_key",
    "save_public_key",
    "sign",
    "verify",
]


def generate_private_key() -> Ed25519PrivateKey:
    """A new Ed25519 signing key from the operating system's CSPRNG."""
    return Ed25519PrivateKey.generate()


def save_private_key(key: Ed25519PrivateKey, path: Path) -> None:
    """Write the key as PEM PKCS8 to a NEW file readable by its owner only (0600); never overwrites."""
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write_new(path, pem, mode=0o600)


def save_public_key(key: Ed25519PublicKey, path: Path) -> None:
    """Write the public key as PEM SubjectPublicKeyInfo to a new file (0644); never overwrites."""
    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    _write_new(path, pem, mode=0o644)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """The Ed25519 private key in a PEM file; ConfigError when missing, SignatureError when malformed."""
    data = _read(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise SignatureError(f"{path}: not an unencrypted PEM private key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"{path}: not an Ed25519 key ({type(key).__name__})")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """The Ed25519 public key in a PEM file; ConfigError when missing, SignatureError when malformed."""
    data = _read(path)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise SignatureError(f"{path}: not a PEM public key") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError(f"{path}: not an Ed25519 key ({type(key).__name__})")
    return key


def key_id(public_key: Ed25519PublicKey) -> str:
    """First 16 hex digits of sha256 over the 32 raw public-key bytes: a short name for a key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign(key: Ed25519PrivateKey, data: bytes) -> str:
    """The Ed25519 signature of `data`, base64 (standard alphabet, padded)."""
    return base64.b64encode(key.sign(data)).decode("ascii")


def verify(public_key: Ed25519PublicKey, data: bytes, signature: str) -> None:
    """Return when `signature` (base64) is public_key's signature of `data`; else raise SignatureError."""
    try:
        raw = base64.b64decode(signature.encode("ascii"), validate=True)
        public_key.verify(raw, data)
    except (InvalidSignature, binascii.Error, UnicodeEncodeError, AttributeError) as exc:
        raise SignatureError("signature does not verify") from exc


def canonical_json(obj: Any) -> bytes:
    """The one byte form of a JSON value that is hashed and signed: sorted keys, no spaces, UTF-8.

    NaN and infinity are not JSON and are refused (DataError): callers must write an infinite epsilon as the
    string "inf". Floats are written by Python's shortest round-trip repr, so the bytes are stable across
    runs and machines.
    """
    try:
        text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError as exc:
        raise DataError(f'cannot write canonical JSON: {exc} (write an infinite epsilon as "inf")') from exc
    except TypeError as exc:
        raise DataError(f"cannot write canonical JSON: {exc}") from exc
    return text.encode("utf-8")


def _read(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read key file {path}: {exc.strerror or exc}") from exc


def _write_new(path: Path, data: bytes, *, mode: int) -> None:
    """Create `path` exclusively with `mode` (set at creation, so the bytes are never world-readable)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError as exc:
        raise ConfigError(f"{path} already exists; refusing to overwrite a key file") from exc
    except OSError as exc:
        raise ConfigError(f"cannot create key file {path}: {exc.strerror or exc}") from exc
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
