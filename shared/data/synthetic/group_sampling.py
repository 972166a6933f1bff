"""Vectorised weighted sampling inside groups, the one trick the synthetic shop is built on.

Items (or leaves, brands) are laid out so that each group (a leaf's items, a department's leaves) is a
contiguous range [lo, hi) of one array, with `cum` the inclusive cumulative sum of the weights over that
array. Drawing `u` uniform in [0, 1) and inverting the group's slice of `cum` samples an element of the group
with probability proportional to its weight, for millions of draws in one numpy call.
"""

from __future__ import annotations

import numpy as np


def sample_in_groups(cum: np.ndarray, lo: np.ndarray, hi: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Positions in [lo, hi) drawn proportionally to the weights whose inclusive cumsum is `cum`.

    lo, hi: group bounds broadcastable against u (groups must be non-empty); u: uniforms in [0, 1).
    Zero-weight elements are never drawn unless the whole group weighs zero (then hi - 1 comes back).
    """
    base = np.where(lo > 0, cum[np.maximum(lo - 1, 0)], 0.0)
    top = cum[hi - 1]
    pos = np.searchsorted(cum, base + u * (top - base), side="right")
    return np.clip(pos, lo, hi - 1)


def sample_rows(cum_rows: np.ndarray, u: np.ndarray) -> np.ndarray:
    """(m,) column drawn in each row of (m, k) cumulative weights `cum_rows`; zero-weight columns never."""
    target = u * cum_rows[:, -1]
    idx = np.count_nonzero(cum_rows <= target[:, None], axis=1)
    return np.minimum(idx, cum_rows.shape[1] - 1)


def group_bounds(sorted_groups: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) of each group id 0..n_groups-1 in an array sorted by group id (lo == hi when empty)."""
    ids = np.arange(n_groups)
    return np.searchsorted(sorted_groups, ids, side="left"), np.searchsorted(sorted_groups, ids, side="right")
