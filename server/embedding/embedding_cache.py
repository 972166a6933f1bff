"""Content-addressed on-disk store of text vectors: key = sha256(text), namespaced by encoder id and backend.

Layout: `<root>/<encoder_id>/<backend>/shard-<time>-<random>.npz`, one shard per write, each holding `keys`
(n, 32) uint8 sha256 digests, `vectors` (n, dim) float32 and `meta` (JSON: format, namespace, dim, sha256 of
the keys and of the vectors). A shard is written under a temporary name and renamed, so a reader never sees
half a shard and concurrent writers never clash. The index (key -> shard, row) is rebuilt in memory from
the shards' keys when a cache opens; vectors are read, and their checksum checked, only when looked up.

A shard that cannot be read, belongs to another encoder, or fails a checksum is renamed to `*.corrupt` and
its texts count as missing, so they are embedded again: a damaged cache costs time, never wrong vectors.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from shared.errors import EncoderError

logger = logging.getLogger(__name__)

FORMAT = 1
KEY_BYTES = 32  # sha256 digest
_READ_ERRORS = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)


class CorruptShardError(Exception):
    """Internal: a shard failed to read or verify (handled by setting the shard aside)."""


def text_key(text: str) -> bytes:
    """The content address of a text: sha256 of its UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


class EmbeddingCache:
    """Vectors of texts already embedded by one encoder (id = model name + hash of its files) and backend."""

    def __init__(self, root: Path, *, encoder_id: str, backend: str, dim: int) -> None:
        self.folder = Path(root) / _safe(encoder_id) / _safe(backend)
        self.namespace = (encoder_id, backend)
        self.dim = dim
        self._shards: list[Path | None] = []  # None: set aside as corrupt
        self._sizes: list[int] = []  # rows per shard
        self._index: dict[bytes, tuple[int, int]] = {}  # key -> (shard number, row)
        for path in sorted(self.folder.glob("shard-*.npz")):
            self._open_shard(path)

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: object) -> bool:
        return key in self._index

    def lookup(self, keys: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
        """(vectors (n, dim) float32, found (n,) bool) for the given keys; rows not found are zero.

        Each shard holding a wanted key is read once and verified; a damaged shard is set aside and its rows
        are reported as not found.
        """
        vectors = np.zeros((len(keys), self.dim), dtype=np.float32)
        found = np.zeros(len(keys), dtype=bool)
        wanted: dict[int, list[tuple[int, int]]] = {}  # shard -> [(position in keys, row in shard)]
        for position, key in enumerate(keys):
            hit = self._index.get(key)
            if hit is not None:
                wanted.setdefault(hit[0], []).append((position, hit[1]))
        for shard, pairs in wanted.items():
            stored = self._read_vectors(shard)
            if stored is None:
                continue
            positions, rows = np.asarray(pairs, dtype=np.int64).T
            vectors[positions] = stored[rows]
            found[positions] = True
        return vectors, found

    def put(self, keys: Sequence[bytes], vectors: np.ndarray) -> int:
        """Store vectors (n, dim) float32 under their keys as one new shard; returns how many were new."""
        if vectors.shape != (len(keys), self.dim) or vectors.dtype != np.float32:
            expected = f"({len(keys)}, {self.dim}) float32"
            raise EncoderError(f"cache expects {expected} vectors, got {vectors.shape} {vectors.dtype}")
        if not np.isfinite(vectors).all():
            raise EncoderError("refusing to cache non-finite vectors")
        fresh: dict[bytes, int] = {}
        for row, key in enumerate(keys):
            if len(key) != KEY_BYTES:
                raise EncoderError(f"cache keys are {KEY_BYTES}-byte sha256 digests, got {len(key)} bytes")
            if key not in self._index:
                fresh.setdefault(key, row)
        if fresh:
            self._write_shard(list(fresh), vectors[list(fresh.values())])
        return len(fresh)

    def _write_shard(self, keys: list[bytes], vectors: np.ndarray) -> None:
        key_array = np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(len(keys), KEY_BYTES)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        meta = {
            "format": FORMAT,
            "namespace": list(self.namespace),
            "dim": self.dim,
            "keys_sha256": hashlib.sha256(key_array.tobytes()).hexdigest(),
            "vectors_sha256": hashlib.sha256(vectors.tobytes()).hexdigest(),
        }
        path = self.folder / f"shard-{time.time_ns():020d}-{secrets.token_hex(4)}.npz"
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            staged = self.folder / f".tmp-{secrets.token_hex(8)}.npz"
            with staged.open("wb") as handle:
                np.savez(handle, keys=key_array, vectors=vectors, meta=np.array(json.dumps(meta)))
            os.replace(staged, path)
        except OSError as exc:
            raise EncoderError(f"cannot write an embedding cache shard in {self.folder}: {exc}") from exc
        self._add_to_index(path, key_array)

    def _open_shard(self, path: Path) -> None:
        try:
            with np.load(path, allow_pickle=False) as shard:
                meta = self._check_meta(shard["meta"])
                keys = shard["keys"]
            if keys.dtype != np.uint8 or keys.ndim != 2 or keys.shape[1] != KEY_BYTES:
                raise CorruptShardError(f"keys have shape {keys.shape} and dtype {keys.dtype}")
            if hashlib.sha256(keys.tobytes()).hexdigest() != meta["keys_sha256"]:
                raise CorruptShardError("keys do not match their checksum")
        except (*_READ_ERRORS, CorruptShardError) as exc:
            self._set_aside(path, exc)
            return
        self._add_to_index(path, keys)

    def _read_vectors(self, shard: int) -> np.ndarray | None:
        path = self._shards[shard]
        if path is None:
            return None
        try:
            with np.load(path, allow_pickle=False) as stored:
                meta = self._check_meta(stored["meta"])
                vectors = stored["vectors"]
            if vectors.dtype != np.float32 or vectors.shape != (self._sizes[shard], self.dim):
                raise CorruptShardError(f"vectors have shape {vectors.shape} and dtype {vectors.dtype}")
            if hashlib.sha256(np.ascontiguousarray(vectors).tobytes()).hexdigest() != meta["vectors_sha256"]:
                raise CorruptShardError("vectors do not match their checksum")
        except (*_READ_ERRORS, CorruptShardError) as exc:
            self._set_aside(path, exc)
            self._shards[shard] = None
            self._index = {key: where for key, where in self._index.items() if where[0] != shard}
            return None
        return vectors

    def _check_meta(self, raw: np.ndarray) -> dict[str, Any]:
        meta = json.loads(str(raw))
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise CorruptShardError(f"unknown shard format {meta!r:.80}")
        if meta.get("namespace") != list(self.namespace) or meta.get("dim") != self.dim:
            raise CorruptShardError(f"shard belongs to {meta.get('namespace')!r} (dim {meta.get('dim')})")
        return meta

    def _add_to_index(self, path: Path, keys: np.ndarray) -> None:
        shard = len(self._shards)
        self._shards.append(path)
        self._sizes.append(len(keys))
        for row, key in enumerate(keys):
            self._index.setdefault(key.tobytes(), (shard, row))

    def _set_aside(self, path: Path, reason: BaseException) -> None:
        logger.warning("embedding cache shard %s is damaged (%s); its texts get encoded again", path, reason)
        try:
            os.replace(path, path.with_suffix(".corrupt"))
        except OSError as exc:
            logger.warning("could not rename the damaged shard %s: %s", path, exc)


def _safe(name: str) -> str:
    """A name usable as one path component."""
    return re.sub(r"[^A-Za-z0-9@._+-]+", "_", name) or "_"
