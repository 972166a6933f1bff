"""Full-dimension item vectors on the device: a release's file (memory-mapped or in memory) plus rows
added or replaced after load, read back as float32.

The release's rows stay in their file; with `np.load(mmap_mode="r")` only the pages of rows actually read
become resident (and they are file-backed, so the kernel can drop them again). Rows added after load and
new versions of replaced rows are float32 in memory. numpy only.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from shared.errors import DataError

CHUNK_ROWS = 16_384  # rows converted to float32 at a time when every row is read


class VectorStore:
    """(N, E) item vectors: `base` rows 0..N0-1 (float32, or int8 with `base_scales`), then added rows."""

    def __init__(self, base: np.ndarray, base_scales: np.ndarray | None = None) -> None:
        if base.ndim != 2 or (base.dtype == np.int8) != (base_scales is not None):
            raise DataError("item vectors must be (N, E) float32, or int8 with one scale per row")
        if base_scales is not None and base_scales.shape != (len(base),):
            raise DataError(f"{len(base)} int8 item vectors need {len(base)} scales")
        self.base, self.base_scales = base, base_scales
        self.added = np.zeros((0, base.shape[1]), dtype=np.float32)
        self.patched_rows = np.zeros(0, dtype=np.int64)  # sorted base rows replaced after load
        self.patched = np.zeros((0, base.shape[1]), dtype=np.float32)

    @property
    def n_rows(self) -> int:
        return len(self.base) + len(self.added)

    @property
    def dim(self) -> int:
        return int(self.base.shape[1])

    def rows(self, rows: np.ndarray) -> np.ndarray:
        """(k, E) float32 vectors of `rows` (any order, repeats allowed)."""
        rows = np.asarray(rows, dtype=np.int64)
        if not len(self.added) and not len(self.patched_rows):  # the common case: one gather, no copy
            return self._read_base(rows)
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        in_base = rows < len(self.base)
        out[in_base] = self._read_base(rows[in_base])
        out[~in_base] = self.added[rows[~in_base] - len(self.base)]
        if len(self.patched_rows):
            at = np.minimum(np.searchsorted(self.patched_rows, rows), len(self.patched_rows) - 1)
            hit = self.patched_rows[at] == rows
            out[hit] = self.patched[at[hit]]
        return out

    def chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, float32 block) over every row in order, CHUNK_ROWS at a time (patches applied)."""
        for lo in range(0, self.n_rows, CHUNK_ROWS):
            hi = min(lo + CHUNK_ROWS, self.n_rows)
            if hi <= len(self.base) and not self._patched_between(lo, hi):
                yield lo, self._read_base_block(lo, hi)
            else:
                yield lo, self.rows(np.arange(lo, hi))

    def append(self, vectors: np.ndarray) -> np.ndarray:
        """Add float32 rows at the end; returns their row numbers."""
        first = self.n_rows
        self.added = np.concatenate([self.added, self._checked(vectors)])
        return np.arange(first, self.n_rows)

    def replace(self, rows: np.ndarray, vectors: np.ndarray) -> None:
        """New float32 vectors for existing `rows` (distinct row numbers < n_rows)."""
        rows, vectors = np.asarray(rows, dtype=np.int64), self._checked(vectors)
        added = rows >= len(self.base)
        self.added[rows[added] - len(self.base)] = vectors[added]
        keep = ~np.isin(self.patched_rows, rows[~added])
        merged_rows = np.concatenate([self.patched_rows[keep], rows[~added]])
        merged = np.concatenate([self.patched[keep], vectors[~added]])
        order = np.argsort(merged_rows, kind="stable")
        self.patched_rows, self.patched = merged_rows[order], merged[order]

    def _read_base(self, rows: np.ndarray) -> np.ndarray:
        block = np.asarray(self.base[rows], dtype=np.float32)  # a gather: only these rows' pages are read
        if self.base_scales is not None:
            block *= self.base_scales[rows, None]
        return block

    def _read_base_block(self, lo: int, hi: int) -> np.ndarray:
        block = np.asarray(self.base[lo:hi], dtype=np.float32)
        return block if self.base_scales is None else block * self.base_scales[lo:hi, None]

    def _patched_between(self, lo: int, hi: int) -> bool:
        return bool(np.searchsorted(self.patched_rows, hi) > np.searchsorted(self.patched_rows, lo))

    def _checked(self, vectors: np.ndarray) -> np.ndarray:
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise DataError(f"item vectors must have shape (k, {self.dim}), got {vectors.shape}")
        if not np.isfinite(vectors).all():
            raise DataError("item vectors must be finite")
        return vectors
