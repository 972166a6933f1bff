"""A device's contribution to DP trending counts: the distinct items of its recent log, L2 norm <= 1.

Unit of privacy: the user. Each sampled user contributes a vector over the catalogue with weight
1/sqrt(k) on each of at most k distinct items it interacted with in the window [as_of - W, as_of) (the k
most recently touched ones when there are more; ties by item index), zero elsewhere. Its L2 norm is
sqrt(m / k) <= 1 for m <= k items: the sensitivity the server's noise is calibrated to, whatever the log
holds. A node hosting many virtual devices returns only the SUM of its sampled users' vectors and their
count; no per-user vector leaves the node. numpy only (no torch), so the device SDK can use it too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from shared.data.split import UserSequences
from shared.errors import ConfigError

SECONDS_PER_DAY = 86_400


@dataclass(frozen=True, kw_only=True)
class TrendingWindow:
    """What a trending round asks of every device: the window and the per-user item limit k."""

    as_of_s: int  # end of the window (unix seconds), exclusive
    window_s: float  # its length in seconds
    max_items: int  # k
    n_items: int  # catalogue size: the vector's length

    def __post_init__(self) -> None:
        if self.max_items < 1 or self.n_items < 1 or not self.window_s > 0:
            raise ConfigError("trending window: max_items and n_items must be >= 1, window_s > 0")

    @property
    def weight(self) -> float:
        """Each contributed item's value, 1/sqrt(k): k items give L2 norm exactly 1."""
        return 1.0 / math.sqrt(self.max_items)

    def in_window(self, timestamps: np.ndarray) -> np.ndarray:
        return (timestamps >= self.as_of_s - self.window_s) & (timestamps < self.as_of_s)


def recent_distinct_items(items: np.ndarray, timestamps: np.ndarray, window: TrendingWindow) -> np.ndarray:
    """The at most k distinct catalogue rows one user touched in the window, most recent first."""
    items, timestamps = np.asarray(items, np.int64), np.asarray(timestamps, np.int64)
    keep = window.in_window(timestamps) & (items >= 0) & (items < window.n_items)
    items, timestamps = items[keep], timestamps[keep]
    if items.size == 0:
        return np.zeros(0, np.int64)
    latest: dict[int, int] = {}
    for item, time in zip(items.tolist(), timestamps.tolist(), strict=True):
        latest[item] = max(time, latest.get(item, time))
    order = sorted(latest, key=lambda item: (-latest[item], item))
    return np.array(order[: window.max_items], np.int64)


def contribution_vector(items: np.ndarray, timestamps: np.ndarray, window: TrendingWindow) -> np.ndarray:
    """One user's vector (n_items,) float64: 1/sqrt(k) on each of its recent distinct items; norm <= 1."""
    vector = np.zeros(window.n_items, np.float64)
    vector[recent_distinct_items(items, timestamps, window)] = window.weight
    return vector


def contribution_sum(
    user: np.ndarray, item: np.ndarray, timestamp: np.ndarray, users: np.ndarray, window: TrendingWindow
) -> np.ndarray:
    """The SUM over `users` (global user indices, distinct) of their contribution vectors, computed for a
    whole shard at once from the node's log columns (user, item, timestamp per row). Equal to summing
    `contribution_vector` per user (tests/client/test_trending_contribution.py)."""
    rows = np.flatnonzero(
        np.isin(user, users) & window.in_window(timestamp) & (item >= 0) & (item < window.n_items)
    )
    total = np.zeros(window.n_items, np.float64)
    if rows.size == 0:
        return total
    u, i, t = user[rows].astype(np.int64), item[rows].astype(np.int64), timestamp[rows].astype(np.int64)
    # the latest time of each (user, item): sort by user, item, then newest first; keep the first of each
    order = np.lexsort((-t, i, u))
    u, i, t = u[order], i[order], t[order]
    first = np.ones(u.size, bool)
    first[1:] = (u[1:] != u[:-1]) | (i[1:] != i[:-1])
    u, i, t = u[first], i[first], t[first]
    # per user, items by recency (newest first, ties by item index); keep the first k of each user
    order = np.lexsort((i, -t, u))
    u, i = u[order], i[order]
    starts = np.flatnonzero(np.r_[True, u[1:] != u[:-1]])
    rank = np.arange(u.size) - np.repeat(starts, np.diff(np.r_[starts, u.size]))
    np.add.at(total, i[rank < window.max_items], window.weight)
    return total


def shard_sum(sequences: UserSequences, users: np.ndarray, window: TrendingWindow) -> np.ndarray:
    """`contribution_sum` over `users` (global indices) of ragged per-user sequences (a node's log)."""
    users = np.asarray(users, np.int64)
    starts, ends = sequences.offsets[users], sequences.offsets[users + 1]
    lengths = ends - starts
    rows = np.repeat(starts - np.cumsum(np.r_[0, lengths[:-1]]), lengths) + np.arange(lengths.sum())
    owner = np.repeat(users, lengths)
    return contribution_sum(owner, sequences.items[rows], sequences.timestamps[rows], users, window)
