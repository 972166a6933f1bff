"""Compact codes of item vectors for fast on-device scoring: per-row int8 and a principal projection.

Both the server (writing a release) and the device (loading an old release that lacks the codes, or adding
items after load) build codes with these functions, so the two always agree. numpy only.

- `quantize_rows`: symmetric per-row int8, vector ~ q * scale (scale = max |vector| / 127 per row).
- `principal_projection`: the top `dim` right singular vectors of the item matrix (the eigenvectors of
  its uncentred second moment V^T V), as an (E, P) matrix with orthonormal columns. Uncentred on purpose:
  the scores are dot products <u, v>, and these directions keep the most of sum_j ||Q^T v_j||^2.
- `code_dim_for`: how many directions P a catalogue of N items gets (a memory budget for the codes).
- `coarse_codes`: int8 codes (P, N) of the projected vectors (one column per item: the release's format;
  the device re-lays them out item-major for its integer kernel, client/device/int8_kernel.py), with a
  scale per item.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from shared.errors import DataError

CODE_BUDGET_BYTES = 64 * 2**20  # the device keeps P x N bytes of codes resident: at most this many
MAX_CODE_DIM = 96  # beyond 96 the coarse scan costs more than the rescoring it saves (docs/results.md)
MIN_CODE_DIM = 16
PROJECTION_FILE = "item_projection.npy"  # (E, P) float32
CODES_FILE = "item_codes_int8.npy"  # (P, N) int8, one column per item
CODE_SCALES_FILE = "item_code_scales.npy"  # (N,) float32


def code_dim_for(n_items: int, dim: int) -> int:
    """P for a catalogue of `n_items` `dim`-d vectors: as many principal directions as CODE_BUDGET_BYTES
    of int8 codes allow, in steps of 16, within [MIN_CODE_DIM, MAX_CODE_DIM] and at most `dim`. More
    directions make the coarse scores closer to the exact ones, so fewer candidates need rescoring
    (top_n.auto_rescore): 96 up to 699k items, 64 at 1M (bench_device, docs/results.md)."""
    if n_items < 0 or dim < 1:
        raise DataError(f"no code dimension for {n_items} items of dimension {dim}")
    fits = 16 * (CODE_BUDGET_BYTES // (16 * max(n_items, 1)))
    return int(min(dim, max(MIN_CODE_DIM, min(MAX_CODE_DIM, fits))))


def quantize_rows(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-row int8: (q (N, E) int8, scale (N,) float32) with vectors ~ q * scale[:, None]."""
    peak = np.abs(vectors).max(axis=1) if vectors.shape[1] else np.zeros(len(vectors))
    scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(vectors / scale[:, None]), -127, 127).astype(np.int8)
    return q, scale


def principal_projection(chunks: Iterable[np.ndarray], dim: int) -> np.ndarray:
    """(E, P) float32, P = min(dim, E): the top principal directions of the rows of all `chunks`.

    Accumulates V^T V in float64 one chunk at a time, so a million-row matrix never needs to be in memory
    as float. Each direction's sign is fixed (largest absolute entry positive) so the result is
    reproducible."""
    gram: np.ndarray | None = None
    for chunk in chunks:
        block = np.asarray(chunk, dtype=np.float64)
        gram = block.T @ block if gram is None else gram + block.T @ block
    if gram is None:
        raise DataError("no item vectors to compute a projection from")
    if dim < 1:
        raise DataError(f"projection dimension must be at least 1, got {dim}")
    values, vectors = np.linalg.eigh(gram)  # ascending eigenvalues
    top = vectors[:, np.argsort(values)[::-1][: min(dim, gram.shape[0])]]
    signs = np.sign(top[np.abs(top).argmax(axis=0), np.arange(top.shape[1])])
    return (top * np.where(signs == 0, 1.0, signs)).astype(np.float32)


def coarse_codes(vectors: np.ndarray, projection: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(codes (P, N) int8, scales (N,) float32): Q^T v_j ~ codes[:, j] * scales[j] for each row v_j."""
    if vectors.ndim != 2 or vectors.shape[1] != projection.shape[0]:
        raise DataError(
            f"item vectors of shape {vectors.shape} do not fit a projection of shape {projection.shape}"
        )
    q, scale = quantize_rows(np.asarray(vectors, dtype=np.float32) @ projection)
    return np.ascontiguousarray(q.T), scale
