"""The building blocks of secure aggregation (Bonawitz et al. 2017, with Bell et al. 2020's sparse
neighbourhoods), shared by the devices (client/masked_update.py) and the server
(server/secagg/secure_round.py).

- Key agreement: X25519 and HKDF-SHA256 (`cryptography`), one key pair for sealing secret shares and one
  for pairwise masks, fresh every round.
- Sealing: AES-256-GCM with the sender, receiver, run and round as associated data, so the relaying server
  can neither read a share nor pass it to another node or round.
- Secret sharing: Shamir over GF(2^128) (PyCryptodome), a 32-byte secret as two 16-byte chunks.
- Masks: the ChaCha20 keystream of a 32-byte seed read as uint64 words; arithmetic is modulo 2^64.
- Fixed point: a value v is carried as round(v / step) in two's complement modulo 2^64.
- Neighbourhoods: a circulant graph on the round's participants (each node masks with, and shares its
  secrets among, the k nearest indices on the ring; everyone when k = 0 or k >= n - 1).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from Crypto.Protocol.SecretSharing import Shamir
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from shared.errors import ConfigError, UpdateRejectedError

SECRET_BYTES = 32
SHARE_BYTES = 2 * 16  # two GF(2^128) chunks
NONCE_BYTES = 12
MASK_PURPOSE = b"fedhome secagg pairwise mask v1"
SEAL_PURPOSE = b"fedhome secagg share sealing v1"
_RAW = serialization.Encoding.Raw, serialization.PublicFormat.Raw
_INT_LIMIT = 2**62  # |fixed-point value| below this: sums of many stay far from the 2^63 wrap


@dataclass(frozen=True)
class KeyPair:
    private: bytes  # raw X25519 private key: never leaves the device
    public: bytes


def new_key_pair() -> KeyPair:
    key = X25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return KeyPair(private, key.public_key().public_bytes(*_RAW))


def public_key(private: bytes) -> bytes:
    """The raw public key of a raw X25519 private key."""
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes(*_RAW)


def new_secret() -> bytes:
    return os.urandom(SECRET_BYTES)


def agree(private: bytes, peer_public: bytes, *, purpose: bytes) -> bytes:
    """The 32-byte key that `private`'s owner and `peer_public`'s owner both derive (X25519 + HKDF)."""
    try:
        shared = X25519PrivateKey.from_private_bytes(private).exchange(
            X25519PublicKey.from_public_bytes(peer_public)
        )
    except ValueError as exc:
        raise UpdateRejectedError(f"not an X25519 key: {exc}") from exc
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(shared)


def seal(key: bytes, plaintext: bytes, *, context: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, context)


def unseal(key: bytes, sealed: bytes, *, context: bytes) -> bytes:
    """The plaintext; UpdateRejectedError when it was not sealed with `key` for `context`."""
    try:
        return AESGCM(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], context)
    except (InvalidTag, ValueError) as exc:
        raise UpdateRejectedError("a sealed share does not open (wrong key, sender or round)") from exc


def seal_context(run_id: str, round_number: int, sender: int, receiver: int) -> bytes:
    return f"fedhome-secagg|{run_id}|{round_number}|{sender}->{receiver}".encode()


def split_secret(secret: bytes, *, threshold: int, holders: int) -> list[bytes]:
    """`holders` shares of a 32-byte secret, any `threshold` of which give it back; share i (0-based) is
    for the i-th holder."""
    if len(secret) != SECRET_BYTES or not 1 <= threshold <= holders:
        raise ConfigError(f"need a {SECRET_BYTES}-byte secret and 1 <= threshold <= holders")
    if threshold == 1:  # PyCryptodome needs k >= 2; one share is then the secret itself
        return [secret] * holders
    halves = [Shamir.split(threshold, holders, secret[i : i + 16], ssss=False) for i in (0, 16)]
    return [low[1] + high[1] for low, high in zip(*halves, strict=True)]


def combine_secret(shares: dict[int, bytes], *, threshold: int) -> bytes:
    """The secret from at least `threshold` shares {holder position (0-based): share}."""
    if len(shares) < threshold:
        raise UpdateRejectedError(f"{len(shares)} shares, {threshold} needed to rebuild a secret")
    if any(len(s) != SHARE_BYTES for s in shares.values()):
        raise UpdateRejectedError("a share of the wrong length")
    if threshold == 1:
        return next(iter(shares.values()))
    chosen = sorted(shares.items())[:threshold]
    return b"".join(
        Shamir.combine([(pos + 1, share[i : i + 16]) for pos, share in chosen], ssss=False) for i in (0, 16)
    )


def mask(seed: bytes, dim: int) -> np.ndarray:
    """(dim,) uint64 words of the ChaCha20 keystream of the 32-byte `seed`."""
    encryptor = Cipher(algorithms.ChaCha20(seed, b"\0" * 16), mode=None).encryptor()
    return np.frombuffer(encryptor.update(bytes(8 * dim)), dtype="<u8").astype(np.uint64)


def encode(values: np.ndarray, *, step: float) -> np.ndarray:
    """round(values / step) as uint64 modulo 2^64; UpdateRejectedError for values out of range."""
    scaled = np.rint(np.asarray(values, np.float64) / step)
    if not np.all(np.isfinite(scaled)) or np.any(np.abs(scaled) >= _INT_LIMIT):
        raise UpdateRejectedError("a value is not finite or too large for the fixed-point encoding")
    return scaled.astype(np.int64).view(np.uint64)


def decode(words: np.ndarray, *, step: float) -> np.ndarray:
    """float64 values of a sum of encode() words (two's complement modulo 2^64)."""
    return words.astype(np.uint64).view(np.int64).astype(np.float64) * step


def neighbours(n: int, k: int) -> list[list[int]]:
    """For each of n participants (0..n-1), its neighbours on a circulant graph: the k nearest indices on
    the ring (k // 2 each side, k rounded up to even), or all others when k = 0 or k >= n - 1."""
    if k < 0:
        raise ConfigError(f"neighbourhood size must be >= 0, got {k}")
    if k == 0 or k >= n - 1:
        return [[j for j in range(n) if j != i] for i in range(n)]
    half = (k + 1) // 2
    return [sorted({(i + d) % n for d in range(-half, half + 1)} - {i}) for i in range(n)]


def threshold(holders: int) -> int:
    """Shares needed to rebuild a secret held by `holders` nodes: a strict majority."""
    return holders // 2 + 1


def sensitivity(clip_norm: float, *, step: float, dim: int) -> float:
    """The L2 bound of one user's effect on a node's fixed-point sum: C plus the rounding of `dim`
    coordinates (at most `step` each between the sums with and without the user)."""
    return float(clip_norm + step * np.sqrt(dim))
