"""The evaluation harness: leave-one-out, full ranking over the catalogue, the same for every model.

Protocol (../shared/data/README.md, DESIGN.md): for each evaluated user, the target is the row after the
stage's history (the validation row, or the test row); every item of the user's history before that row
(`split.full` up to `split.history_end(stage)`, cold items included) is removed from the candidates; the
target is ranked against all remaining catalogue items.

Decisions, documented here once:
- A target that also occurs earlier in the user's history (a repeat: on the synthetic shop, the cart or
  purchase of an item viewed minutes before) cannot be a recommendation, since earlier items are removed from
  the candidates. With `EvalConfig.repeat_targets="exclude"` (the default) such users are left out of the
  stage; with "keep" the target stays a candidate, the one history item not masked, which flatters any model
  that scores recent items highly. Either way their number is `EvalResult.n_target_in_history`. On
  amazon_beauty there are none; on amazon_scientific 50 of 8,442 test targets.
- Ties are broken by item index, as a stable sort of descending scores would: the target's rank (0-based) is
  the number of unmasked candidates with a higher score plus those with an equal score and a smaller index.
  The top-10 used for coverage follows the same rule.
- Metrics with one target: HR@k = [rank < k]; NDCG@k = 1/log2(rank + 2) if rank < k else 0; Recall@20 =
  HR@20. Coverage@10 = share of catalogue items in the top-10 of at least one evaluated user of the slice.
- Activity buckets count a user's TRAINING rows (`split.train`, cold items already removed).
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shared.config import EvalConfig
from shared.data.split import Split, Stage
from shared.errors import ConfigError, DataError

log = logging.getLogger(__name__)

# (batch of user indices, stage) -> (batch, n_items) scores; higher is better.
Scorer = Callable[[np.ndarray, Stage], np.ndarray]

TOP_K = 10
RECALL_K = 20


@dataclass(frozen=True)
class Metrics:
    """Metrics of one slice of users; NaN when the slice is empty (None in `to_dict`)."""

    n_users: int
    hr_10: float
    ndcg_10: float
    recall_20: float
    coverage_10: float

    def to_dict(self) -> dict[str, float | int | None]:
        out: dict[str, float | int | None] = {"n_users": self.n_users}
        for name in ("hr_10", "ndcg_10", "recall_20", "coverage_10"):
            value = getattr(self, name)
            out[name] = None if math.isnan(value) else value
        return out


@dataclass(frozen=True)
class EvalResult:
    """Everything one evaluation measured. `users`, `ranks` and `top10` are per user, in evaluation order."""

    stage: Stage
    overall: Metrics
    cold: Metrics  # users whose target item is a cold item (held out of all training)
    buckets: dict[str, Metrics]  # by number of training rows, labels like "<=5", "6-10", ">20"
    n_target_in_history: int  # users whose target also occurs earlier in their history (see repeat_targets)
    eval_time_s: float  # wall time of the whole evaluation, the scorer's calls included
    users: np.ndarray = field(repr=False, compare=False)  # (n,) int user index
    ranks: np.ndarray = field(repr=False, compare=False)  # (n,) int64 0-based rank of the target
    top10: np.ndarray = field(
        repr=False, compare=False
    )  # (n, 10) int item indices in ascending order, -1 pad

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (per-user arrays left out)."""
        return {
            "stage": self.stage,
            "overall": self.overall.to_dict(),
            "cold": self.cold.to_dict(),
            "buckets": {label: m.to_dict() for label, m in self.buckets.items()},
            "n_target_in_history": self.n_target_in_history,
            "eval_time_s": self.eval_time_s,
        }

    def to_markdown(self, *, title: str | None = None) -> str:
        """A markdown table: one row for all users, the cold slice and each activity bucket."""
        rows = [("all", self.overall), ("cold items", self.cold)]
        rows += [(f"train rows {label}", m) for label, m in self.buckets.items()]
        lines = [f"**{title}** ({self.stage})", ""] if title else []
        lines += ["| users | n | HR@10 | NDCG@10 | Recall@20 | Coverage@10 |", "|---|---|---|---|---|---|"]
        for label, m in rows:
            cells = [_fmt(v) for v in (m.hr_10, m.ndcg_10, m.recall_20, m.coverage_10)]
            lines.append(f"| {label} | {m.n_users} | " + " | ".join(cells) + " |")
        return "\n".join(lines)


def _fmt(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.4f}"


def target_ranks(scores: np.ndarray, targets: np.ndarray, masked: np.ndarray) -> np.ndarray:
    """(B,) 0-based rank of each row's target among its unmasked items; ties go to the smaller item index.

    scores: (B, n_items); targets: (B,) item index; masked: (B, n_items) bool, items removed from the
    candidates (the target itself is always a candidate, whatever `masked` says about it).
    """
    rows = np.arange(scores.shape[0])
    target_score = scores[rows, targets][:, None]
    before = np.arange(scores.shape[1])[None, :] < targets[:, None]
    better = (scores > target_score) | ((scores == target_score) & before)
    return np.count_nonzero(better & ~masked, axis=1).astype(np.int64)


def top_k_items(scores: np.ndarray, masked: np.ndarray, k: int = TOP_K) -> np.ndarray:
    """(B, k) the k best unmasked items of each row (ties to the smaller index), listed in ascending item
    index; rows with fewer than k candidates are padded with -1."""
    n_items = scores.shape[1]
    kth = n_items - min(k, n_items)
    low = np.where(masked, scores.dtype.type(-np.inf), scores)
    # The k-th best score of each row; with fewer than k candidates it is -inf and candidates count below.
    threshold = np.partition(low, kth, axis=1)[:, kth : kth + 1]
    chosen = low > threshold
    at = (low == threshold) & ~masked
    room = k - np.count_nonzero(chosen, axis=1)
    tied = np.flatnonzero(np.count_nonzero(at, axis=1) > room)
    at[tied] &= np.cumsum(at[tied], axis=1) <= room[tied, None]  # ties at the cut: smaller indices first
    chosen |= at
    out = np.full((scores.shape[0], k), -1, dtype=np.int64)
    row, col = np.nonzero(chosen)
    counts = np.bincount(row, minlength=scores.shape[0])
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    out[row, np.arange(row.shape[0]) - starts[row]] = col
    return out


def metrics_from_ranks(ranks: np.ndarray, top10: np.ndarray, n_items: int) -> Metrics:
    """Slice metrics from per-user 0-based target ranks and top-10 lists (-1 = padding)."""
    n = int(ranks.shape[0])
    if n == 0:
        nan = float("nan")
        return Metrics(n_users=0, hr_10=nan, ndcg_10=nan, recall_20=nan, coverage_10=nan)
    hit10 = ranks < TOP_K
    ndcg = np.where(hit10, 1.0 / np.log2(ranks + 2.0), 0.0)
    shown = np.unique(top10[top10 >= 0])
    return Metrics(
        n_users=n,
        hr_10=float(hit10.mean()),
        ndcg_10=float(ndcg.mean()),
        recall_20=float((ranks < RECALL_K).mean()),
        coverage_10=float(shown.shape[0] / n_items),
    )


def bucket_labels(bounds: tuple[int, ...]) -> list[str]:
    """Labels of the activity buckets for upper bounds (5, 10, 20): "<=5", "6-10", "11-20", ">20"."""
    if not bounds:
        return ["all"]
    labels = [f"<={bounds[0]}"]
    for low, high in itertools.pairwise(bounds):
        labels.append(str(high) if high == low + 1 else f"{low + 1}-{high}")
    return [*labels, f">{bounds[-1]}"]


def history_mask(split: Split, users: np.ndarray, stage: Stage) -> np.ndarray:
    """(B, n_items) bool: items in each user's history before the stage's target row."""
    starts = split.full.offsets[users]
    lengths = split.history_end(stage)[users] - starts
    rows = np.repeat(np.arange(users.shape[0]), lengths)
    flat = np.arange(rows.shape[0]) - np.repeat(np.cumsum(lengths) - lengths, lengths) + starts[rows]
    mask = np.zeros((users.shape[0], split.n_items), dtype=bool)
    mask[rows, split.full.items[flat]] = True
    return mask


def target_in_history(split: Split, users: np.ndarray, stage: Stage) -> np.ndarray:
    """(B,) bool: the user's `stage` target already occurs in their history before it."""
    starts = split.full.offsets[users]
    lengths = split.history_end(stage)[users] - starts
    rows = np.repeat(np.arange(users.shape[0]), lengths)
    flat = np.arange(rows.shape[0]) - np.repeat(np.cumsum(lengths) - lengths, lengths) + starts[rows]
    hits = split.full.items[flat] == split.target(stage)[users][rows]
    return np.bincount(rows[hits], minlength=users.shape[0]) > 0


def _check_scores(scores: object, n_users: int, n_items: int) -> np.ndarray:
    if not isinstance(scores, np.ndarray):
        raise DataError(f"scorer returned {type(scores).__name__}, expected a numpy array")
    if scores.shape != (n_users, n_items):
        raise DataError(f"scorer returned shape {scores.shape}, expected ({n_users}, {n_items})")
    if not np.issubdtype(scores.dtype, np.floating):
        raise DataError(f"scorer returned dtype {scores.dtype}, expected floating point")
    if np.isnan(scores).any():
        raise DataError("scorer returned NaN scores")
    return scores


def _check_users(split: Split, users: np.ndarray | None, stage: Stage) -> np.ndarray:
    if users is None:
        return split.eval_users.astype(np.int64)
    users = np.asarray(users)
    if users.ndim != 1 or not np.issubdtype(users.dtype, np.integer):
        raise ConfigError("users must be a 1-d array of user indices")
    users = users.astype(np.int64)
    if users.size and (users.min() < 0 or users.max() >= split.full.n_users):
        raise ConfigError("users contains an index outside the dataset")
    if np.unique(users).shape[0] != users.shape[0]:
        raise ConfigError("users contains duplicates")
    if (split.target(stage)[users] < 0).any():
        raise ConfigError("users contains users without a target (fewer than three rows)")
    return users


def evaluate(
    split: Split, scorer: Scorer, *, stage: Stage, config: EvalConfig, users: np.ndarray | None = None
) -> EvalResult:
    """Rank every evaluated user's `stage` target against the whole catalogue; see the module docstring.

    users: a subset of `split.eval_users` (default: all of them). The scorer is called once per batch of
    `config.batch_size` users and must return finite-or-infinite, never NaN, floating scores.
    """
    start = time.perf_counter()
    users = _check_users(split, users, stage)
    repeat = target_in_history(split, users, stage)
    if config.repeat_targets == "exclude":
        users = users[~repeat]
    targets = split.target(stage)[users].astype(np.int64)
    ranks = np.empty(users.shape[0], dtype=np.int64)
    top10 = np.empty((users.shape[0], TOP_K), dtype=np.int64)
    for lo in range(0, users.shape[0], config.batch_size):
        batch = slice(lo, lo + config.batch_size)
        scores = _check_scores(scorer(users[batch], stage), users[batch].shape[0], split.n_items)
        masked = history_mask(split, users[batch], stage)
        rows = np.arange(masked.shape[0])
        masked[rows, targets[batch]] = False
        ranks[batch] = target_ranks(scores, targets[batch], masked)
        top10[batch] = top_k_items(scores, masked)
    result = _summarise(split, stage, config, users, targets, ranks, top10, int(repeat.sum()), start)
    log.info("evaluated %d users on %s in %.2f s", users.shape[0], stage, result.eval_time_s)
    return result


def _summarise(
    split: Split,
    stage: Stage,
    config: EvalConfig,
    users: np.ndarray,
    targets: np.ndarray,
    ranks: np.ndarray,
    top10: np.ndarray,
    repeated: int,
    start: float,
) -> EvalResult:
    n_items = split.n_items
    cold = split.cold_items[targets]
    activity = split.train.lengths()[users]
    bucket = np.searchsorted(np.asarray(config.activity_buckets, dtype=np.int64), activity, side="left")
    buckets = {
        label: metrics_from_ranks(ranks[bucket == b], top10[bucket == b], n_items)
        for b, label in enumerate(bucket_labels(config.activity_buckets))
    }
    return EvalResult(
        stage=stage,
        overall=metrics_from_ranks(ranks, top10, n_items),
        cold=metrics_from_ranks(ranks[cold], top10[cold], n_items),
        buckets=buckets,
        n_target_in_history=repeated,
        eval_time_s=time.perf_counter() - start,
        users=users,
        ranks=ranks,
        top10=top10,
    )
