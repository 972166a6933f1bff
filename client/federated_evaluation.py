"""Federated evaluation on a node: NDCG@10 and HR@10 of the global model on the node's own users.

The same protocol as the central harness (simulation/evaluate.py): the stage's target ranked against the
whole catalogue minus the user's earlier items, ties broken by item index, users whose target repeats an
earlier item left out. Only sums leave the node.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from shared.data.split import Split
from shared.errors import ConfigError
from shared.model import TwoTower, gather_histories

TOP_K = 10
BATCH_USERS = 512


def ranking_sums(
    model: TwoTower, split: Split, users: np.ndarray, *, stage: str, max_users: int = 0
) -> tuple[float, float, int]:
    """(sum of NDCG@10, sum of HR@10, users evaluated) over `users` that have a `stage` target.

    max_users > 0 evaluates only the first that many such users (a cheap progress signal)."""
    if stage not in ("valid", "test"):
        raise ConfigError(f"unknown evaluation stage {stage!r}")
    targets = (split.valid_target if stage == "valid" else split.test_target)[users]
    ends = split.history_end(stage)[users]  # type: ignore[arg-type]
    keep = targets >= 0
    users, targets, ends = users[keep], targets[keep], ends[keep]
    if max_users > 0:
        users, targets, ends = users[:max_users], targets[:max_users], ends[:max_users]
    model.eval()
    with torch.no_grad():
        vectors, bias = model.items()
        code = model.items.hidden()
    ndcg, hits, n = 0.0, 0.0, 0
    for lo in range(0, users.size, BATCH_USERS):
        sl = slice(lo, lo + BATCH_USERS)
        batch = gather_histories(
            split.full, users[sl], ends[sl], split.full.timestamps[ends[sl]], model.config.max_history
        )
        with torch.no_grad():
            scores = model.scores(model.user_vectors(batch, code), vectors, bias).numpy()
        for row, (user, target, end) in enumerate(zip(users[sl], targets[sl], ends[sl], strict=True)):
            earlier = split.full.items[split.full.offsets[user] : end]
            if np.any(earlier == target):
                continue  # a repeat target cannot be recommended: left out, as in the harness
            rank = _rank(scores[row], int(target), earlier)
            n += 1
            if rank < TOP_K:
                hits += 1.0
                ndcg += 1.0 / math.log2(rank + 2)
    return ndcg, hits, n


def _rank(scores: np.ndarray, target: int, earlier: np.ndarray) -> int:
    """0-based rank of `target` among the candidates (all items but `earlier`), ties by item index."""
    masked = scores.copy()
    masked[earlier] = -np.inf
    value = masked[target]
    better = int(np.count_nonzero(masked > value))
    ties = int(np.count_nonzero(masked[:target] == value))
    return better + ties
