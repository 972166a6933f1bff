"""Full-dimension item vectors on the device: a release's file (memory-mapped or in memory) plus rows
added or replaced after load, read back as float32.

The release's rows stay in their file; with `np.load(mmap_mode="r")` only the pages of rows actually read
become resident (and they are file-backed, so the kernel can drop them again). Rows added after load and
new versions of replaced rows are float32 in memory. numpy only.

TextVectorStore is the same store for a release whose item vectors a device does not keep
(shared/derived_items.py): a row's vector is computed from the catalogue's int8 text row and attribute
columns with the item tower's small weights when it is read, and a dot product with a query is taken without
the vector (the tower folded into the query), so that a new model adds no per-item vector file to the
device's storage: at 1M items the float32 vectors alone were 1.43 GiB.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from shared.derived_items import ATTRIBUTES, TEXT_INT8, TEXT_SCALES, ItemTowerWeights, item_rows
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

    def dots(self, rows: np.ndarray, query: np.ndarray) -> np.ndarray:
        """(k,) float32 <v_row, query> of `rows` (any order, repeats allowed)."""
        return self.rows(rows) @ query

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


class TextVectorStore(VectorStore):
    """(N, E) item vectors v_j = t_j + U (D t_j + sum W[:, cols_j]) of a release's catalogue text, computed
    when read (shared/derived_items.py item_rows, the formula the release's own files were derived with);
    rows added or replaced after load are float32 in memory, as in VectorStore."""

    def __init__(
        self, text_int8: np.ndarray, text_scales: np.ndarray, columns: np.ndarray, weights: ItemTowerWeights
    ) -> None:
        super().__init__(text_int8, text_scales)
        if columns.ndim != 2 or len(columns) != len(text_int8) or columns.dtype.kind != "i":
            raise DataError(
                f"{len(text_int8)} items need (N, K) integer attribute columns, got {columns.shape}"
            )
        if weights.dim != text_int8.shape[1]:
            raise DataError(
                f"item-tower weights of dimension {weights.dim} do not fit {text_int8.shape[1]}-d text"
            )
        width = weights.attributes.shape[1]
        if columns.size and (columns.min() < -1 or columns.max() >= width):
            raise DataError(f"attribute columns must lie in [-1, {width})")
        self.columns, self.weights = columns, weights

    @classmethod
    def from_folder(cls, folder: Path, *, mmap: bool = True) -> TextVectorStore:
        """The store of a release folder's catalogue inputs and item-tower weights (the text memory-mapped
        unless `mmap` is False)."""
        folder = Path(folder)
        try:
            text = np.load(folder / TEXT_INT8, mmap_mode="r" if mmap else None)
            scales, columns = np.load(folder / TEXT_SCALES), np.load(folder / ATTRIBUTES)
        except (OSError, ValueError) as exc:
            raise DataError(f"{folder}: cannot read the catalogue text ({type(exc).__name__})") from exc
        if text.dtype != np.int8 or scales.dtype != np.float32:
            raise DataError(f"{folder}: the catalogue text must be int8 rows with float32 scales")
        return cls(text, scales, columns, ItemTowerWeights.load(folder))

    def dots(self, rows: np.ndarray, query: np.ndarray) -> np.ndarray:
        """(k,) float32 <v_row, query>, the release's rows without computing their vectors:
        <v_j, x> = <t_j, x + D^T U^T x> + sum_{c in cols_j} (W^T U^T x)_c."""
        rows = np.asarray(rows, dtype=np.int64)
        from_text = rows < len(self.base)
        if len(self.patched_rows):
            from_text &= ~np.isin(rows, self.patched_rows)
        if from_text.all():
            return self._folded_dots(rows, query)
        out = np.empty(len(rows), dtype=np.float32)
        out[from_text] = self._folded_dots(rows[from_text], query)
        out[~from_text] = self.rows(rows[~from_text]) @ query
        return out

    def _folded_dots(self, rows: np.ndarray, query: np.ndarray) -> np.ndarray:
        hidden = self.weights.up.T @ query  # (r,)
        text_query = query + self.weights.down.T @ hidden  # (E,)
        per_column = np.append(self.weights.attributes.T @ hidden, np.float32(0))  # (A + 1,): -1 adds 0
        text = np.asarray(self.base[rows], dtype=np.float32)  # a gather: only these rows' pages are read
        out = (text @ text_query) * self.base_scales[rows]  # type: ignore[index]
        out += per_column[self.columns[rows]].sum(axis=1)  # column -1 picks the appended 0
        return out.astype(np.float32, copy=False)

    def _read_base(self, rows: np.ndarray) -> np.ndarray:
        vectors, _ = item_rows(super()._read_base(rows), self.columns[rows], self.weights, None)
        return vectors

    def _read_base_block(self, lo: int, hi: int) -> np.ndarray:
        vectors, _ = item_rows(super()._read_base_block(lo, hi), self.columns[lo:hi], self.weights, None)
        return vectors
