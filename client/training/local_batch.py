"""Fixed-shape index tensors of a chunk of users for the batched (vmap) local loss, built outside vmap.

`torch.unique` and other data-dependent shapes cannot run inside `torch.func.vmap`, so everything that
depends on which items a user touched is computed here in numpy: each user's own item set (the items of
their histories and positives, sorted, padded to the chunk's widest set), local indices into it, each
example's exclusion mask over the round's shared negatives, and a weight that pads every user to the same
number of examples (weight 1/n on the user's n real examples, 0 on padding copies of a real example).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

from shared.data.split import UserSequences
from shared.errors import ConfigError
from shared.model import HistoryBatch, gather_histories
from shared.model.examples import training_rows

# Fixed cost of one batched computation in padded examples' work: measured on one thread at Beauty's size
# (12k items x 384-d text, P = 139k), a chunk of B users with M examples each took ~7.4 + B (0.27 + 0.14 M)
# ms, so one chunk costs about as much as 50 padded examples.
CHUNK_OVERHEAD_EXAMPLES = 50


@dataclass(frozen=True)
class Negatives:
    """The round's shared negatives: uniform with replacement over the allowed items (a public law)."""

    items: Tensor  # (K,) int64 item index
    log_count: float  # log(K q) = log(K / n_allowed), the logQ correction of every draw


def draw_negatives(allowed: np.ndarray, k: int, *, round_seed: int) -> Negatives:
    """K uniform draws from `allowed` (sorted item indices) by a generator seeded with the round seed, so
    every device of a round draws the same negatives whatever users it hosts."""
    if allowed.size == 0:
        raise ConfigError("no item may be drawn as a negative: every item is blocked")
    generator = torch.Generator().manual_seed(round_seed)
    picks = torch.randint(int(allowed.size), (k,), generator=generator)  # (K,)
    items = torch.from_numpy(allowed.astype(np.int64))[picks]
    return Negatives(items, float(np.log(k / allowed.size)))


class UserExamples:
    """Each user's most recent training prefixes (rows of `training_rows`), at most `max_examples`."""

    def __init__(self, seqs: UserSequences, *, max_examples: int) -> None:
        _, self.rows = training_rows(seqs)  # (n_examples,) flat rows, ascending, so grouped by user
        self.seqs, self.max_examples = seqs, max_examples
        self.ends = np.searchsorted(self.rows, seqs.offsets[1:])  # (n_users,) one past each user's last
        self.starts = np.searchsorted(self.rows, seqs.offsets[:-1])

    def count(self, users: np.ndarray) -> np.ndarray:
        """(B,) number of examples each user trains on."""
        return np.minimum(self.ends[users] - self.starts[users], self.max_examples)

    def rows_of(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(owner (T,), rows (T,)): the examples of `users` in order, owner = position in `users`."""
        counts = self.count(users)
        owner = np.repeat(np.arange(users.shape[0]), counts)
        first = np.repeat(self.ends[users] - np.cumsum(counts), counts)  # user's first row - its offset
        return owner, self.rows[first + np.arange(owner.shape[0])]


def plan_chunks(counts: np.ndarray, *, max_users: int) -> list[slice]:
    """Cut users sorted by example count (ascending) into runs of at most `max_users` that minimise the
    padded work, sum over chunks of (users x the chunk's largest count + CHUNK_OVERHEAD_EXAMPLES): users of
    similar counts share a chunk, and a few very active users do not pad everyone else."""
    n = counts.shape[0]
    best, cut = np.zeros(n + 1), np.zeros(n + 1, dtype=np.int64)
    for end in range(1, n + 1):
        starts = np.arange(max(0, end - max_users), end)
        cost = best[starts] + (end - starts) * counts[end - 1] + CHUNK_OVERHEAD_EXAMPLES
        pick = int(np.argmin(cost))
        best[end], cut[end] = cost[pick], starts[pick]
    bounds, end = [], n
    while end > 0:
        bounds.append(slice(int(cut[end]), end))
        end = int(cut[end])
    return bounds[::-1]


@dataclass(frozen=True)
class ChunkBatch:
    """One chunk of B users, each padded to M examples; U = the widest per-user item set; K negatives."""

    items: Tensor  # (B, U) int64 each user's history and positive items, sorted (padding: a repeat)
    history: Tensor  # (B, M, L) int64 index into the user's `items` row (0 at padding)
    events: Tensor  # (B, M, L) int64 event code + 1, 0 = padding
    gaps: Tensor  # (B, M, L) int64 recency bucket
    hour: Tensor  # (B, M) int64
    weekday: Tensor  # (B, M) int64
    positive: Tensor  # (B, M) int64 index of the target into the user's `items` row
    exclude: Tensor  # (B, M, K) bool negative in the example's history or equal to its target
    weight: Tensor  # (B, M) float32 1/n on the user's n real examples, 0 on padding

    def tensors(self) -> tuple[Tensor, ...]:
        """The per-user inputs of the loss, in its argument order (each batched along dim 0)."""
        return (
            self.items,
            self.history,
            self.events,
            self.gaps,
            self.hour,
            self.weekday,
            self.positive,
            self.exclude,
            self.weight,
        )


def build_chunk(
    examples: UserExamples, users: np.ndarray, negatives: Tensor, *, max_history: int
) -> ChunkBatch:
    """The ChunkBatch of `users` (B,), each with at least one example."""
    owner, rows = examples.rows_of(users)  # (T,), (T,)
    return chunk_of_rows(examples.seqs, users[owner], owner, rows, negatives, max_history=max_history)


def build_records(examples: UserExamples, user: int, negatives: Tensor, *, max_history: int) -> ChunkBatch:
    """One user's examples as separate records (record-level DP-SGD): a ChunkBatch of n "users" with one
    example each and their own item sets, so each record's loss and gradient depend on that record alone."""
    _, rows = examples.rows_of(np.array([user]))
    owner = np.arange(rows.shape[0])
    return chunk_of_rows(
        examples.seqs, np.full(rows.shape[0], user), owner, rows, negatives, max_history=max_history
    )


def chunk_of_rows(
    seqs: UserSequences,
    user_of_row: np.ndarray,
    owner: np.ndarray,
    rows: np.ndarray,
    negatives: Tensor,
    *,
    max_history: int,
) -> ChunkBatch:
    """The ChunkBatch of examples `rows` (T,) of users `user_of_row` (T,), grouped by `owner` (T,), owners
    0..B-1 in order, each with at least one example."""
    n_owners = int(owner[-1]) + 1 if owner.size else 0
    batch = trim_padding(gather_histories(seqs, user_of_row, rows, seqs.timestamps[rows], max_history))
    targets = seqs.items[rows].astype(np.int64)  # (T,)
    valid = batch.items >= 0  # (T, L)
    item_sets, history, positive = _local_items(owner, batch.items, valid, targets, n_owners)
    exclude = _exclusions(batch.items, valid, targets, negatives.numpy())  # (T, K)
    source, weight = _padding(owner, n_owners)  # (B, M), (B, M)
    return ChunkBatch(
        items=torch.from_numpy(item_sets),
        history=torch.from_numpy(history[source]),
        events=torch.from_numpy(batch.events[source]),
        gaps=torch.from_numpy(batch.gaps[source]),
        hour=torch.from_numpy(batch.hour[source]),
        weekday=torch.from_numpy(batch.weekday[source]),
        positive=torch.from_numpy(positive[source]),
        exclude=torch.from_numpy(exclude[source]),
        weight=torch.from_numpy(weight),
    )


def trim_padding(batch: HistoryBatch) -> HistoryBatch:
    """`batch` without its leading slots that are padding in every history (the same user vectors: the
    user tower masks padding keys and reads only the last slot, and a history of length l <= max_history
    keeps its slots' position embeddings). Kept whole when some history is empty, the one case where the
    padding slots do count (all keys masked gives a uniform softmax over them)."""
    lengths = (batch.items >= 0).sum(axis=1)  # (T,)
    if lengths.size == 0 or int(lengths.min()) == 0:
        return batch
    cut = batch.items.shape[1] - int(lengths.max())  # leading slots that are padding everywhere
    return replace(batch, items=batch.items[:, cut:], events=batch.events[:, cut:], gaps=batch.gaps[:, cut:])


def _local_items(
    owner: np.ndarray, items: np.ndarray, valid: np.ndarray, targets: np.ndarray, n_users: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(item sets (B, U), history (T, L), positive (T,)): each user's sorted distinct items and the local
    index of every history item and target in its owner's set. Keyed by owner * n + item, so one np.unique
    over the chunk groups the items by user."""
    n = int(max(items.max(initial=0), targets.max(initial=0))) + 1
    history_keys = owner[:, None] * n + np.where(valid, items, 0)  # (T, L)
    keys, inverse = np.unique(
        np.concatenate([history_keys.ravel(), owner * n + targets]), return_inverse=True
    )
    key_owner = keys // n
    first = np.searchsorted(key_owner, np.arange(n_users))  # (B,) first key of each user
    slot = np.arange(keys.shape[0]) - first[key_owner]  # position of each key in its user's set
    width = int(slot.max()) + 1
    item_sets = np.repeat(keys[first] % n, width).reshape(n_users, width)  # padding: the user's first item
    item_sets[key_owner, slot] = keys % n
    local = slot[inverse]
    history = local[: history_keys.size].reshape(items.shape)
    return item_sets, np.where(valid, history, 0), local[history_keys.size :]


def _exclusions(
    items: np.ndarray, valid: np.ndarray, targets: np.ndarray, negatives: np.ndarray
) -> np.ndarray:
    """(T, K) bool: negative k is one of example t's history items or its target (an accidental hit)."""
    distinct, slot_of = np.unique(negatives, return_inverse=True)  # negatives repeat: draws with replacement
    touched = np.concatenate([np.where(valid, items, -1), targets[:, None]], axis=1)  # (T, L + 1)
    where = np.minimum(np.searchsorted(distinct, touched), distinct.shape[0] - 1)
    hit = distinct[where] == touched  # (T, L + 1); -1 (padding) never matches
    marks = np.zeros((touched.shape[0], distinct.shape[0]), dtype=bool)  # (T, K distinct)
    marks[np.nonzero(hit)[0], where[hit]] = True
    return marks[:, slot_of.reshape(-1)]


def _padding(owner: np.ndarray, n_users: int) -> tuple[np.ndarray, np.ndarray]:
    """(source (B, M), weight (B, M)): which example fills each slot (padding slots repeat the user's first
    example, so they stay finite) and its weight (1/n real, 0 padding)."""
    counts = np.bincount(owner, minlength=n_users)  # (B,) every count >= 1
    width = int(counts.max())
    first = np.cumsum(counts) - counts
    slot = np.arange(width)[None, :]
    real = slot < counts[:, None]  # (B, M)
    source = first[:, None] + np.where(real, slot, 0)
    weight = np.where(real, 1.0 / counts[:, None], 0.0).astype(np.float32)
    return source, weight
