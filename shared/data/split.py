"""Leave-one-out split by row order, with an optional cold-start slice of items held out of all training.

The protocol (../shared/data/README.md): each user's rows in their original order; the last row is the test
item, the second-to-last the validation item, the rest is training history. Users with fewer than three rows
only contribute training rows. Cold items (a seeded random fraction of the catalogue, or the newest items
when creation times are known) are removed from every training row, so no model sees them before evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from shared.data.schema import UNKNOWN_TIME, Dataset
from shared.errors import ConfigError

Stage = Literal["valid", "test"]


@dataclass(frozen=True, eq=False)
class UserSequences:
    """Ragged per-user sequences: user u owns rows offsets[u]:offsets[u+1] of the flat arrays."""

    offsets: np.ndarray  # (n_users + 1,) int64
    items: np.ndarray  # (n,) int32 item index
    events: np.ndarray  # (n,) int8 event code
    timestamps: np.ndarray  # (n,) int64

    @property
    def n_users(self) -> int:
        return int(self.offsets.shape[0] - 1)

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def of(self, u: int) -> np.ndarray:
        return self.items[self.offsets[u] : self.offsets[u + 1]]


@dataclass(frozen=True, eq=False)
class Split:
    """The evaluation split of a dataset.

    `full` is every user's whole sequence in row order. `train` is the training part: all but the last two
    rows of evaluated users (all rows of the others), cold items removed. `eval_users` are users with at
    least three rows; `valid_target`/`test_target` are indexed by user (-1 for users not evaluated).
    """

    dataset: Dataset
    full: UserSequences
    train: UserSequences
    eval_users: np.ndarray  # (n_eval,) int32
    valid_target: np.ndarray  # (n_users,) int32
    test_target: np.ndarray  # (n_users,) int32
    cold_items: np.ndarray  # (n_items,) bool, held out of all training

    @property
    def n_items(self) -> int:
        return self.dataset.catalogue.n_items

    def target(self, stage: Stage) -> np.ndarray:
        return self.valid_target if stage == "valid" else self.test_target

    def train_and_valid(self) -> UserSequences:
        """The training rows plus each evaluated user's validation row (cold items still removed): what a
        model may train on before the test stage."""
        lengths = self.full.lengths()
        keep_len = np.where(self.valid_target >= 0, lengths - 1, lengths)
        return _keep_prefix(self.full, keep_len, self.cold_items)

    def history_end(self, stage: Stage) -> np.ndarray:
        """(n_users,) index into `full` one past the last history row available when predicting `stage`."""
        back = 2 if stage == "valid" else 1
        return self.full.offsets[1:] - back


def group_by_user(dataset: Dataset) -> UserSequences:
    """Every user's rows in their original order (a stable sort by user keeps the source order)."""
    log = dataset.log
    order = log.user_order()
    counts = np.bincount(log.user, minlength=log.n_users)
    offsets = np.zeros(log.n_users + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return UserSequences(offsets, log.item[order], log.event[order], log.timestamp[order])


def choose_cold_items(dataset: Dataset, *, fraction: float, seed: int) -> np.ndarray:
    """A (n_items,) mask of items to hold out: the newest `fraction` when every item has a creation time,
    otherwise a seeded random `fraction` of the catalogue."""
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"cold item fraction must be in [0, 1), got {fraction}")
    cat = dataset.catalogue
    n_cold = round(fraction * cat.n_items)
    mask = np.zeros(cat.n_items, dtype=bool)
    if n_cold == 0:
        return mask
    if np.all(cat.created_at != UNKNOWN_TIME):
        chosen = np.argsort(-cat.created_at, kind="stable")[:n_cold]
    else:
        chosen = np.random.default_rng(seed).choice(cat.n_items, size=n_cold, replace=False)
    mask[chosen] = True
    return mask


def leave_one_out(dataset: Dataset, *, cold_item_fraction: float = 0.0, seed: int = 0) -> Split:
    """Split `dataset` by the leave-one-out protocol; see the module docstring."""
    full = group_by_user(dataset)
    lengths = full.lengths()
    evaluated = lengths >= 3
    n_users = full.n_users
    valid_target = np.full(n_users, -1, dtype=np.int32)
    test_target = np.full(n_users, -1, dtype=np.int32)
    valid_target[evaluated] = full.items[full.offsets[1:][evaluated] - 2]
    test_target[evaluated] = full.items[full.offsets[1:][evaluated] - 1]

    cold = choose_cold_items(dataset, fraction=cold_item_fraction, seed=seed)
    train = _keep_prefix(full, np.where(evaluated, lengths - 2, lengths), cold)
    eval_users = np.flatnonzero(evaluated).astype(np.int32)
    return Split(dataset, full, train, eval_users, valid_target, test_target, cold)


def _keep_prefix(full: UserSequences, keep_len: np.ndarray, cold: np.ndarray) -> UserSequences:
    """The first keep_len[u] rows of every user u, without rows of cold items."""
    lengths = full.lengths()
    row_user = np.repeat(np.arange(full.n_users), lengths)
    position = np.arange(full.items.shape[0]) - full.offsets[row_user]
    keep = (position < keep_len[row_user]) & ~cold[full.items]
    offsets = np.zeros(full.n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(row_user[keep], minlength=full.n_users), out=offsets[1:])
    return UserSequences(offsets, full.items[keep], full.events[keep], full.timestamps[keep])
