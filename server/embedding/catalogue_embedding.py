"""The catalogue embedding service: item text -> a versioned table of unit vectors, through an on-disk cache.

Only texts the cache has not seen (new or changed items) are encoded, and the model is loaded only when
there are such texts. The backends live in `server.embedding`: plain sentence-transformers (float32 on the
CPU, half precision on CUDA) and the int8 ONNX fast path (the default on the CPU).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from server.embedding.embedding_cache import EmbeddingCache, text_key
from server.embedding.encoder import Encoder, EncoderSpec, TorchEncoder, resolve_spec
from server.embedding.onnx_fast import OnnxInt8Encoder, ensure_int8_model
from shared.config import EncoderConfig
from shared.data.schema import Catalogue
from shared.errors import EncoderError

logger = logging.getLogger(__name__)

CHUNK_TEXTS = 4096  # texts encoded and written to the cache per step, so interrupted work is kept


@dataclass(frozen=True, eq=False)
class EmbeddingTable:
    """Item text vectors in catalogue order, tagged with the encoder that made them and a content version."""

    item_ids: list[str]
    vectors: np.ndarray  # (n_items, dim) float32, unit rows
    encoder_id: str  # "<model name>@<hash of the model files>"
    backend: str  # "torch-fp32", "torch-fp16" or "onnx-int8" (their vectors differ slightly)
    version: str  # 16 hex digits of sha256(encoder id, backend, item ids and text hashes in order)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])


def load_encoder(config: EncoderConfig, spec: EncoderSpec | None = None) -> Encoder:
    """The encoder the config asks for, loaded offline; the int8 ONNX model is built on first use."""
    spec = spec or resolve_spec(config)
    if spec.backend == "onnx-int8":
        model_path = ensure_int8_model(spec, config.cache_dir)
        return OnnxInt8Encoder(spec, model_path, batch_size=config.batch_size, threads=config.threads)
    return TorchEncoder(spec, batch_size=config.batch_size)


def embed_catalogue(
    catalogue: Catalogue,
    config: EncoderConfig,
    *,
    encoder: Encoder | None = None,
    progress: bool | None = None,
) -> EmbeddingTable:
    """Embed every item's text ("title | category | brand[ | description]"), reusing cached vectors.

    `encoder` overrides the one the config describes (and is then used for the cache namespace too);
    `progress` shows a bar, by default only when stderr is a terminal.
    """
    texts = catalogue.texts(with_description=config.with_description)
    if encoder is None:
        spec = resolve_spec(config)  # cheap: the model itself is loaded only if some text is not cached
        cache = EmbeddingCache(
            vector_cache_dir(config), encoder_id=spec.encoder_id, backend=spec.backend, dim=spec.dim
        )
        get_encoder: Callable[[], Encoder] = functools.partial(load_encoder, config, spec)
    else:
        cache = EmbeddingCache(
            vector_cache_dir(config), encoder_id=encoder.encoder_id, backend=encoder.backend, dim=encoder.dim
        )
        get_encoder = functools.partial(_given, encoder)
    vectors = embed_texts(texts, cache, get_encoder, progress=progress)
    encoder_id, backend = cache.namespace
    version = table_version(encoder_id, backend, catalogue.item_ids, texts)
    return EmbeddingTable(list(catalogue.item_ids), vectors, encoder_id, backend, version)


def embed_texts(
    texts: Sequence[str],
    cache: EmbeddingCache,
    get_encoder: Callable[[], Encoder],
    *,
    progress: bool | None = None,
) -> np.ndarray:
    """(len(texts), dim) float32 unit vectors in input order; only texts missing from the cache are encoded.

    Duplicate texts are encoded once. `get_encoder` is called only if something needs encoding.
    """
    keys = [text_key(text) for text in texts]
    vectors, found = cache.lookup(keys)
    todo: dict[bytes, list[int]] = {}  # missing key -> every position holding that text
    for position in np.flatnonzero(~found):
        todo.setdefault(keys[position], []).append(int(position))
    logger.info("%d texts: %d cached, %d distinct to encode", len(texts), int(found.sum()), len(todo))
    if not todo:
        return vectors
    encoder = get_encoder()
    # Sort by length across chunks too, so each chunk's batches are already nearly uniform.
    firsts = sorted((positions[0] for positions in todo.values()), key=lambda i: len(texts[i]))
    show = sys.stderr.isatty() if progress is None else progress
    with tqdm(total=len(firsts), disable=not show, unit="text", desc="embedding") as bar:
        for start in range(0, len(firsts), CHUNK_TEXTS):
            chunk = firsts[start : start + CHUNK_TEXTS]
            fresh = encoder.encode([texts[i] for i in chunk], on_batch=bar.update)
            _check(fresh, len(chunk), cache.dim)
            cache.put([keys[i] for i in chunk], fresh)
            for row, i in enumerate(chunk):
                vectors[todo[keys[i]]] = fresh[row]
    return vectors


def table_version(encoder_id: str, backend: str, item_ids: Sequence[str], texts: Sequence[str]) -> str:
    """16 hex digits of a sha256 over the encoder id, the backend and each (item id, text hash) in order."""
    if len(item_ids) != len(texts):
        raise EncoderError(f"{len(item_ids)} item ids but {len(texts)} texts")
    digest = hashlib.sha256(f"{encoder_id}\0{backend}\0".encode())
    for item_id, text in zip(item_ids, texts, strict=True):
        digest.update(hashlib.sha256(item_id.encode()).digest() + text_key(text))
    return digest.hexdigest()[:16]


def vector_cache_dir(config: EncoderConfig) -> Path:
    """Where embed_catalogue keeps text vectors (the ONNX model lives beside it, under `onnx/`)."""
    return config.cache_dir / "vectors"


def _given(encoder: Encoder) -> Encoder:
    return encoder


def _check(vectors: np.ndarray, n: int, dim: int) -> None:
    if vectors.shape != (n, dim) or vectors.dtype != np.float32:
        raise EncoderError(f"the encoder returned {vectors.shape} {vectors.dtype}, not ({n}, {dim}) float32")
    if not np.isfinite(vectors).all():
        raise EncoderError("the encoder returned non-finite values")
