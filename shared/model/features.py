"""What the towers read: per-item features from the catalogue and fixed-length user histories (numpy).

Both are plain numpy so that the trainer, the federated client and the on-device ranker build exactly the
same inputs. A history is left-padded to `max_history` positions, oldest first, the most recent item last.
Integer codes reserve 0 for padding or "unknown".
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Final

import numpy as np

from shared.data.schema import Catalogue
from shared.data.split import UserSequences
from shared.errors import DataError
from shared.history import gap_buckets, request_context

N_PRICE_BUCKETS: Final[int] = 8  # price quantile buckets; code 0 = unknown price


@dataclass(frozen=True, eq=False)
class ItemFeatures:
    """Every item's frozen text embedding and cheap categorical codes, in catalogue index order."""

    text: np.ndarray  # (n_items, text_dim) float32, L2-normalised sentence embeddings
    category: np.ndarray  # (n_items,) int64 top-level category code, 0 = unknown
    price_bucket: np.ndarray  # (n_items,) int64 in [0, N_PRICE_BUCKETS], 0 = unknown
    promotion: np.ndarray  # (n_items,) int64 0/1
    popularity: np.ndarray | None = None  # (n_items,) float32 log(1 + count) prior (None: zeros, no prior)

    @property
    def n_items(self) -> int:
        return int(self.text.shape[0])

    @property
    def text_dim(self) -> int:
        return int(self.text.shape[1])

    def popularity_prior(self) -> np.ndarray:
        """(n_items,) float32 popularity prior, zeros when there is none."""
        return self.check_popularity(self.popularity, self.n_items)

    @staticmethod
    def check_popularity(popularity: np.ndarray | None, n_items: int) -> np.ndarray:
        """`popularity` as (n_items,) float32 (None: zeros); DataError unless it is n_items finite values."""
        if popularity is None:
            return np.zeros(n_items, dtype=np.float32)
        if popularity.shape != (n_items,) or not np.isfinite(popularity).all():
            raise DataError(f"popularity prior must be {n_items} finite values, got shape {popularity.shape}")
        return np.ascontiguousarray(popularity, dtype=np.float32)

    def with_popularity(self, popularity: np.ndarray | None) -> ItemFeatures:
        """The same features with another popularity prior (None: none)."""
        return dataclasses.replace(self, popularity=popularity)

    @property
    def n_categories(self) -> int:
        return int(self.category.max(initial=0)) + 1

    def attributes(self, n_categories: int | None = None) -> np.ndarray:
        """(n_items, n_categories + N_PRICE_BUCKETS + 2) float32 multi-hot: one-hot category, one-hot price
        bucket, promotion flag. Multiplying it by a weight matrix sums one embedding per feature.
        `n_categories` (default: this table's own) fixes the width, e.g. to a trained model's."""
        n = self.n_items
        widths = (n_categories or self.n_categories, N_PRICE_BUCKETS + 1, 1)
        out = np.zeros((n, sum(widths)), dtype=np.float32)
        rows = np.arange(n)
        out[rows, self.category] = 1.0
        out[rows, widths[0] + self.price_bucket] = 1.0
        out[:, widths[0] + widths[1]] = self.promotion
        return out

    @classmethod
    def from_attribute_columns(cls, text: np.ndarray, columns: np.ndarray, width: int) -> ItemFeatures:
        """Features from a release's catalogue inputs (a device that trains with its installed release):
        text (n_items, text_dim) and the set columns of each item's attribute multi-hot (n_items, K), -1
        where a row has fewer (shared/derived_items.py attribute_columns), `width` the multi-hot's width (the
        item tower's): the inverse of `attributes`. DataError unless each row sets exactly one category
        column and one price-bucket column."""
        n_categories = width - N_PRICE_BUCKETS - 2
        if n_categories < 1 or columns.ndim != 2 or len(columns) != len(text) or text.ndim != 2:
            raise DataError(f"attribute columns {columns.shape} (width {width}) do not fit text {text.shape}")
        if columns.size and (columns.min() < -1 or columns.max() >= width):
            raise DataError(f"attribute columns must lie in [-1, {width})")
        if not np.isfinite(text).all():
            raise DataError("text embeddings contain NaN or infinite values")
        is_category = (columns >= 0) & (columns < n_categories)
        is_price = (columns >= n_categories) & (columns < n_categories + N_PRICE_BUCKETS + 1)
        if (is_category.sum(axis=1) != 1).any() or (is_price.sum(axis=1) != 1).any():
            raise DataError("every item needs exactly one category and one price-bucket attribute column")
        rows = np.arange(len(columns))
        return cls(
            text=np.ascontiguousarray(text, dtype=np.float32),
            category=columns[rows, is_category.argmax(axis=1)].astype(np.int64),
            price_bucket=(columns[rows, is_price.argmax(axis=1)] - n_categories).astype(np.int64),
            promotion=(columns == width - 1).any(axis=1).astype(np.int64),
        )

    @classmethod
    def from_catalogue(cls, catalogue: Catalogue, text: np.ndarray) -> ItemFeatures:
        """Features of `catalogue` with its text embeddings `text` (n_items, text_dim)."""
        if text.ndim != 2 or text.shape[0] != catalogue.n_items:
            raise DataError(f"text embeddings have shape {text.shape}, expected ({catalogue.n_items}, dim)")
        if not np.isfinite(text).all():
            raise DataError("text embeddings contain NaN or infinite values")
        return cls(
            text=np.ascontiguousarray(text, dtype=np.float32),
            category=catalogue.top_category().astype(np.int64),
            price_bucket=price_buckets(catalogue.price),
            promotion=catalogue.on_promotion.astype(np.int64),
        )


def recent_item_counts(seqs: UserSequences, n_items: int, *, items_per_user: int) -> np.ndarray:
    """(n_items,) float64: how many users have each item among their `items_per_user` most recent distinct
    items in `seqs` (what a DP trending release with max_items = items_per_user estimates)."""
    counts = np.zeros(n_items, dtype=np.float64)
    for user in range(seqs.n_users):
        recent = seqs.items[seqs.offsets[user] : seqs.offsets[user + 1]][::-1]
        _, first = np.unique(recent, return_index=True)
        counts[recent[np.sort(first)[:items_per_user]]] += 1.0
    return counts


def popularity_from_counts(counts: np.ndarray) -> np.ndarray:
    """(n,) float32 log(1 + max(count, 0)): the prior from (possibly noised) counts."""
    return np.log1p(np.maximum(np.asarray(counts, dtype=np.float64), 0.0)).astype(np.float32)


def price_edges(price: np.ndarray) -> np.ndarray | None:
    """The N_PRICE_BUCKETS - 1 inner quantile edges of the known prices (None when no price is known)."""
    known = price[np.isfinite(price)]
    return np.quantile(known, np.linspace(0, 1, N_PRICE_BUCKETS + 1)[1:-1]) if known.size else None


def price_buckets(price: np.ndarray, edges: np.ndarray | None = None) -> np.ndarray:
    """(n,) int64 quantile bucket 1..N_PRICE_BUCKETS of each known price, 0 where the price is NaN.
    `edges` (default: `price_edges(price)`) lets items added later share a catalogue's buckets."""
    known = np.isfinite(price)
    edges = price_edges(price) if edges is None else edges
    out = np.zeros(price.shape[0], dtype=np.int64)
    if known.any() and edges is not None:
        out[known] = 1 + np.searchsorted(edges, price[known], side="right")
    return out


@dataclass(frozen=True, eq=False)
class HistoryBatch:
    """A batch of left-padded user histories and the request context the user tower reads."""

    items: np.ndarray  # (B, L) int64 item index, -1 = padding
    events: np.ndarray  # (B, L) int64 event code + 1, 0 = padding
    gaps: np.ndarray  # (B, L) int64 recency bucket of each event relative to the request, 0 = padding
    hour: np.ndarray  # (B,) int64 hour of day of the request, 0..23 (UTC)
    weekday: np.ndarray  # (B,) int64 day of week of the request, 0 = Monday

    @property
    def size(self) -> int:
        return int(self.items.shape[0])


def gather_histories(
    seqs: UserSequences, users: np.ndarray, ends: np.ndarray, now_s: np.ndarray, max_history: int
) -> HistoryBatch:
    """Histories of `users`: their rows in `seqs` before flat row index `ends` (the last `max_history`).

    users, ends, now_s: (B,) user index, one-past-the-last flat row of each history, request time in unix
    seconds (the time the next item is to be predicted). An empty history is all padding.
    """
    starts = seqs.offsets[users]
    if np.any(ends < starts) or np.any(ends > seqs.offsets[users + 1]):
        raise DataError("history end outside the user's rows")
    rows = ends[:, None] - max_history + np.arange(max_history)[None, :]  # (B, L) flat rows, oldest first
    valid = rows >= starts[:, None]
    if seqs.items.shape[0] == 0:  # nobody has any rows: every history is all padding
        valid[:] = False
        seqs = UserSequences(seqs.offsets, np.zeros(1, np.int32), np.zeros(1, np.int8), np.zeros(1, np.int64))
    rows = np.where(valid, rows, 0)
    gaps = gap_buckets(now_s[:, None] - seqs.timestamps[rows])
    hour, weekday = request_context(now_s)
    return HistoryBatch(
        items=np.where(valid, seqs.items[rows], -1).astype(np.int64),
        events=np.where(valid, seqs.events[rows].astype(np.int64) + 1, 0),
        gaps=np.where(valid, gaps, 0),
        hour=hour,
        weekday=weekday,
    )
