"""Choosing top rows of large score arrays, numpy only: how many candidates to rescore (auto_rescore),
which (best: the n largest, faster than a full argpartition), and a lazy descending order (descending)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

MIN_RESCORE, MAX_RESCORE = 256, 2048


def best(scores: np.ndarray, n: int) -> np.ndarray:
    """Rows of the n largest finite scores (any order).

    On large arrays a full argpartition costs several ms at 1M rows; instead a threshold is read off an
    evenly strided sample (about 16n values) with a safety margin, the rows above it are kept, and only
    those are partitioned. If too few rows pass (a skewed order), it falls back to the full argpartition,
    so the result is always the exact top n."""
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    rows: np.ndarray | None = (
        np.arange(len(scores)) if n >= len(scores) else _above_sampled_threshold(scores, n)
    )
    if rows is None:
        rows = np.argpartition(scores, len(scores) - n)[len(scores) - n :]
    return rows[np.isfinite(scores[rows])]


def _above_sampled_threshold(scores: np.ndarray, n: int) -> np.ndarray | None:
    step = len(scores) // (16 * n)
    if step < 4:
        return None
    sample = scores[::step]
    rank = min(len(sample) - 1, 2 * (n // step) + 8)  # twice the expected rank, plus a margin
    threshold = np.partition(sample, len(sample) - 1 - rank)[len(sample) - 1 - rank]
    above = np.flatnonzero(scores >= threshold)
    if len(above) < n:
        return None
    return above[np.argpartition(scores[above], len(above) - n)[len(above) - n :]]


def auto_rescore(n_items: int, code_dim: int) -> int:
    """c sqrt(N) candidates, c = 3 (64 / P)^2 for P code directions, between MIN_RESCORE and MAX_RESCORE:
    949 at 100k items and P = 64, 422 at 100k and P = 96, 2,048 at 1M. The more directions, the closer the
    coarse scores and the fewer candidates need rescoring. From bench_device (docs/results.md), recall@50
    against exact float32 for user-tower users: P = 64 at 100k, 949 candidates 0.983 (632: 0.971); at 1M,
    2,048 candidates 0.993 (a fixed 512: 0.957); P = 96 at 100k, 400 candidates 0.991 (316: 0.988)."""
    c = 3.0 * (64.0 / max(code_dim, 1)) ** 2
    return max(MIN_RESCORE, min(MAX_RESCORE, round(c * n_items**0.5)))


def descending(scores: np.ndarray, first: int) -> Iterator[int]:
    """Rows in the order of np.argsort(-scores, kind="stable"), made lazily: the `first` best rows (and
    every row tied with the last of them) by a partition and a small sort; the full stable sort only if the
    caller reads past them (the homepage's sections usually stop within section_size plus skipped rows)."""
    n = len(scores)
    head = np.zeros(0, dtype=np.int64)
    if 0 < first < n:
        cutoff = np.partition(scores, n - first)[n - first]
        head = np.flatnonzero(scores >= cutoff)
        head = head[np.lexsort((head, -scores[head]))]  # by score, best first; ties by row, as stable
        yield from head.tolist()
    if len(head) < n:
        yield from np.argsort(-scores, kind="stable")[len(head) :].tolist()
