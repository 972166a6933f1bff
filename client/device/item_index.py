"""Two-stage on-device item index: coarse int8 scores of every item, then exact rescoring of the best.

Scores are t * <u, v_j> + b_j (user vector u, item vector v_j, temperature t, item bias b_j).
- Coarse stage (precision "int8"): u is projected onto the release's P principal directions Q (E, P),
  coded in 7 bits and scored against every item's int8 code of Q^T v_j (a scale per item) by onnxruntime's
  MatMulInteger, which reads the codes as bytes, item by item (int8_kernel.py): t * <Q^T u, Q^T v_j> + b_j.
- Exact stage: the best `rescore` items by coarse score are scored again with the full-dimension vectors
  (vector_store.py: the release's float32 file, memory-mapped, so only the rows read become resident; for a
  release whose vectors a device derives, the catalogue's int8 text rows with the item tower folded into
  the query, TextVectorStore, and no vector file at all).
- Precision "float32" scores every item exactly: the reference path (the browser's ranker does the same).

Resident memory of the int8 path for N items: codes P*N bytes (held item-major, (N, P), the kernel's
layout; a release stores them (P, N)); code scales, bias and a score buffer 4*N bytes each (1M items,
P = 64: 61.0 + 11.4 MiB); the full vectors only as the file pages of the rows read.

Items published after the release (catalogue deltas) are added with `extend` and changed with `replace`:
float32 vectors and biases, coded with the release's projection, rankable from the next call on.
Assumes one thread uses an index at a time (no locking).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np

from client.device.int8_kernel import CoarseKernel, item_major_u8, quantize_user
from client.device.top_n import auto_rescore, best
from client.device.vector_store import TextVectorStore, VectorStore
from shared.derived_items import ITEMS_F32, derived_names
from shared.errors import DataError
from shared.item_codes import (
    CODE_SCALES_FILE,
    CODES_FILE,
    PROJECTION_FILE,
    coarse_codes,
    code_dim_for,
    principal_projection,
)
from shared.release_manifest import read_manifest

Precision = Literal["int8", "float32"]
DEFAULT_RESCORE = 0  # 0: choose from the catalogue size, see auto_rescore
RESCORE_CHUNK = 256  # rows gathered from the full vectors at a time (256 x 384 float32 = 384 KiB)
MAX_BLOCKS = 8  # code blocks (the release's + added ones) before the added ones are merged


class ItemIndex:
    """Scores, top-k and nearest items over a release's item vectors; rows can be added or replaced."""

    def __init__(
        self,
        vectors: VectorStore,
        bias: np.ndarray,
        *,
        temperature: float,
        precision: Precision = "int8",
        projection: np.ndarray | None = None,
        codes: np.ndarray | None = None,
        code_scales: np.ndarray | None = None,
        code_dim: int = 0,
        rescore: int = DEFAULT_RESCORE,
        threads: int = 1,
        copy_bias: bool = True,
    ) -> None:
        """`code_dim`: P when the index codes the items itself (no `projection` given); 0: code_dim_for(N).
        `copy_bias=False`: the index keeps the `bias` array itself and may change it (from_release
        passes arrays it has just loaded: a copy would leave the original's memory behind in the heap)."""
        if precision not in ("int8", "float32"):
            raise DataError(f"precision must be int8 or float32, got {precision!r}")
        if rescore < 0:
            raise DataError(f"rescore must be a number of candidates, or 0 for automatic, got {rescore}")
        self.store, self.temperature, self.precision = vectors, float(temperature), precision
        self.rescore_setting = rescore
        self._bias = self._checked_bias(bias, vectors.n_rows, copy=copy_bias)
        self._blocks: list[np.ndarray] = []
        if precision == "int8":
            if projection is None:
                code_dim = code_dim or code_dim_for(vectors.n_rows, vectors.dim)
                projection = principal_projection((c for _, c in vectors.chunks()), code_dim)
            self.projection = np.asarray(projection, dtype=np.float32)
            if self.projection.ndim != 2 or self.projection.shape[0] != vectors.dim:
                raise DataError(
                    f"a projection of shape {self.projection.shape} does not fit {vectors.dim}-d items"
                )
            if codes is None or code_scales is None:
                codes, code_scales = self._code_all()
            if (
                codes.dtype != np.int8
                or codes.shape != (self.projection.shape[1], vectors.n_rows)
                or code_scales.shape != (vectors.n_rows,)
            ):
                raise DataError(
                    f"item codes {codes.dtype} {codes.shape} do not fit {vectors.n_rows} items and a "
                    f"projection of shape {self.projection.shape}"
                )
            self._blocks = [item_major_u8(codes)]  # (N, P) uint8 blocks of rows, in row order
            self._code_scales = np.asarray(code_scales, dtype=np.float32)
            self._kernel = CoarseKernel(threads)
        self._buffer = np.empty(vectors.n_rows if precision == "int8" else 0, dtype=np.float32)

    @classmethod
    def from_release(
        cls, folder: Path, *, precision: Precision = "int8", rescore: int = DEFAULT_RESCORE, threads: int = 1
    ) -> ItemIndex:
        """The index of a verified release folder. Uses the release's projection and codes when its signed
        manifest lists them (releases before they were added: computed here, once, from the item vectors);
        a file the manifest does not list is never read."""
        folder = Path(folder)
        scoring = json.loads((folder / "scoring.json").read_text())
        # only files the signed manifest lists are used: verify_release checks no other file in the folder
        manifest = read_manifest(folder)
        listed = {name for name in manifest["files"] if (folder / name).is_file()}
        mmap: Literal["r"] | None = "r" if precision == "int8" else None  # exact: every row, every request
        store: VectorStore
        if ITEMS_F32 in derived_names(manifest):  # a device keeps no vector file: rows from the text
            store = TextVectorStore.from_folder(folder, mmap=mmap is not None)
        elif ITEMS_F32 in listed:
            store = VectorStore(np.load(folder / ITEMS_F32, mmap_mode=mmap))
        else:
            store = VectorStore(
                np.load(folder / "item_vectors_int8.npy", mmap_mode=mmap), np.load(folder / "item_scales.npy")
            )
        coded = precision == "int8" and {PROJECTION_FILE, CODES_FILE, CODE_SCALES_FILE} <= listed
        return cls(
            store,
            np.load(folder / "item_bias.npy"),
            temperature=float(scoring["temperature"]),
            precision=precision,
            projection=np.load(folder / PROJECTION_FILE) if coded else None,
            codes=np.load(folder / CODES_FILE, mmap_mode="r") if coded else None,  # read once, re-laid out
            code_scales=np.load(folder / CODE_SCALES_FILE) if coded else None,
            rescore=rescore,
            threads=threads,
            copy_bias=False,
        )

    @property
    def n_items(self) -> int:
        return self.store.n_rows

    @property
    def rescore(self) -> int:
        """Candidates rescored exactly per request: the setting, or auto_rescore(n_items, P) when it is 0."""
        code_dim = self.projection.shape[1] if self.precision == "int8" else 0
        return self.rescore_setting or auto_rescore(self.n_items, code_dim)

    @property
    def bias(self) -> np.ndarray:
        """(N,) float32 item biases (read-only view)."""
        view = self._bias.view()
        view.flags.writeable = False
        return view

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """(k, E) float32 full-dimension vectors of item rows."""
        return self.store.rows(rows)

    def scores(self, user: np.ndarray) -> np.ndarray:
        """(N,) float32 t <u, v_j> + b_j: exact for the `rescore` best rows, coarse for the rest (int8)."""
        return self._full(self._query(user), self.temperature, with_bias=True)

    def similarities(self, vector: np.ndarray) -> np.ndarray:
        """(N,) float32 <vector, v_j>: exact for the `rescore` most similar rows, coarse for the rest."""
        return self._full(self._query(vector), 1.0, with_bias=False)

    def top_k(
        self, user: np.ndarray, k: int, *, rows: np.ndarray | None = None, exclude: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(rows, exact scores) of the k best items for `user`, best first: only among `rows` when given,
        never an `exclude`d row. int8: the best max(k, rescore) by coarse score are rescored exactly."""
        query = self._query(user)
        if self.precision == "float32":
            scores = self._exact_all(query, self.temperature, with_bias=True)
        else:
            scores = self._coarse(query, self.temperature, with_bias=True)
        if rows is not None:
            allowed = np.full(self.n_items, -np.inf, dtype=np.float32)
            allowed[rows] = scores[rows]
            scores = allowed
        if exclude is not None and len(exclude):
            scores[exclude] = -np.inf
        pool = k if self.precision == "float32" else max(k, self.rescore)
        candidates = best(scores, pool)
        if self.precision == "int8" and len(candidates):
            exact = self._exact(query, candidates, self.temperature, with_bias=True)
        else:
            exact = scores[candidates]
        order = np.argsort(-exact, kind="stable")[:k]
        return candidates[order], exact[order]

    def extend(self, vectors_f32: np.ndarray, bias: np.ndarray) -> np.ndarray:
        """Add items at the end: (k, E) float32 vectors and (k,) biases. Returns their rows (N..N+k-1)."""
        bias = self._checked_bias(bias, len(vectors_f32))
        rows = self.store.append(vectors_f32)
        self._bias = np.concatenate([self._bias, bias])
        if self.precision == "int8":
            codes, scales = coarse_codes(self.store.rows(rows), self.projection)
            self._blocks.append(item_major_u8(codes))
            self._code_scales = np.concatenate([self._code_scales, scales])
            if len(self._blocks) > MAX_BLOCKS:
                self._blocks = [self._blocks[0], np.concatenate(self._blocks[1:], axis=0)]
        return rows

    def replace(self, rows: np.ndarray, vectors_f32: np.ndarray, bias: np.ndarray) -> None:
        """New (k, E) float32 vectors and (k,) biases for existing, distinct `rows`."""
        rows = np.asarray(rows, dtype=np.int64)
        if (
            rows.ndim != 1
            or len(np.unique(rows)) != len(rows)
            or (len(rows) and not 0 <= rows.min() <= rows.max() < self.n_items)
        ):
            raise DataError(f"rows to replace must be distinct item rows below {self.n_items}")
        bias = self._checked_bias(bias, len(rows))
        if len(vectors_f32) != len(rows):
            raise DataError(f"{len(rows)} rows to replace but {len(vectors_f32)} vectors")
        self.store.replace(rows, vectors_f32)
        self._bias[rows] = bias
        if self.precision == "int8":
            codes, scales = coarse_codes(self.store.rows(rows), self.projection)
            lo = 0
            coded = item_major_u8(codes)
            for block in self._blocks:
                inside = (rows >= lo) & (rows < lo + len(block))
                block[rows[inside] - lo] = coded[inside]
                lo += len(block)
            self._code_scales[rows] = scales

    def resident_bytes(self) -> dict[str, int]:
        """Bytes of each array this index keeps in memory (the mapped full-vector file not included)."""
        sizes = {
            "bias": self._bias.nbytes,
            "added_vectors": self.store.added.nbytes + self.store.patched.nbytes,
        }
        if self.precision == "int8":
            sizes.update(
                codes=sum(b.nbytes for b in self._blocks),
                code_scales=self._code_scales.nbytes,
                projection=self.projection.nbytes,
                score_buffer=self._buffer.nbytes,
            )
        if not isinstance(self.store.base, np.memmap):
            sizes["vectors"] = self.store.base.nbytes
        return sizes

    def _query(self, vector: np.ndarray) -> np.ndarray:
        vector = np.asarray(vector, dtype=np.float32)
        if vector.shape != (self.store.dim,) or not np.isfinite(vector).all():
            raise DataError(f"a query vector must be finite with shape ({self.store.dim},)")
        return vector

    def _full(self, query: np.ndarray, alpha: float, *, with_bias: bool) -> np.ndarray:
        if self.precision == "float32":
            return self._exact_all(query, alpha, with_bias=with_bias)
        scores = self._coarse(query, alpha, with_bias=with_bias).copy()
        top = best(scores, self.rescore)
        scores[top] = self._exact(query, top, alpha, with_bias=with_bias)
        return scores

    def _coarse(self, query: np.ndarray, alpha: float, *, with_bias: bool) -> np.ndarray:
        """(N,) coarse scores in the index's own buffer: valid until the next call (copy to keep them)."""
        user_s8, user_scale = quantize_user(query @ self.projection)
        if len(self._buffer) != self.n_items:
            self._buffer = np.empty(self.n_items, dtype=np.float32)
        lo = 0
        for block in self._blocks:
            hi = lo + len(block)
            self._kernel.dots(
                user_s8, user_scale * alpha, block, self._code_scales[lo:hi], out=self._buffer[lo:hi]
            )
            lo = hi
        scores = self._buffer.view(np.float32)
        if with_bias:
            scores += self._bias
        return scores

    def _exact(self, query: np.ndarray, rows: np.ndarray, alpha: float, *, with_bias: bool) -> np.ndarray:
        """Exact scores of `rows` (sorted by the caller or not; read in row order for locality)."""
        order, scores = np.argsort(rows, kind="stable"), np.empty(len(rows), dtype=np.float32)
        for lo in range(0, len(rows), RESCORE_CHUNK):  # small pieces: no catalogue-size temporaries
            piece = order[lo : lo + RESCORE_CHUNK]
            scores[piece] = alpha * self.store.dots(rows[piece], query)
        return scores + self._bias[rows] if with_bias else scores

    def _exact_all(self, query: np.ndarray, alpha: float, *, with_bias: bool) -> np.ndarray:
        scores = np.empty(self.n_items, dtype=np.float32)
        for lo, block in self.store.chunks():
            scores[lo : lo + len(block)] = block @ query
        scores *= alpha
        return scores + self._bias if with_bias else scores

    def _code_all(self) -> tuple[np.ndarray, np.ndarray]:
        pieces = [coarse_codes(block, self.projection) for _, block in self.store.chunks()]
        if not pieces:
            return np.zeros((self.projection.shape[1], 0), dtype=np.int8), np.zeros(0, dtype=np.float32)
        return np.concatenate([c for c, _ in pieces], axis=1), np.concatenate([s for _, s in pieces])

    @staticmethod
    def _checked_bias(bias: np.ndarray, n: int, *, copy: bool = True) -> np.ndarray:
        # a copy unless told otherwise: the index owns (and may change) its biases
        bias = np.array(bias, dtype=np.float32, copy=True if copy else None)
        if bias.shape != (n,) or not np.isfinite(bias).all():
            raise DataError(f"item biases must be {n} finite numbers, got shape {bias.shape}")
        return bias
