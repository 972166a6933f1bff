"""Federated evaluation on a node: NDCG@10 and HR@10 of the global model on the node's own users, and the
start check's sum of per-user gains of the trained model over its start (`start_gain_sum`).

The same protocol as the central harness (simulation/evaluate.py): the stage's target ranked against the
whole catalogue minus the user's earlier items, ties broken by item index, users whose target repeats an
earlier item left out. Only sums leave the node.
"""

from __future__ import annotations

import numpy as np
import torch

from shared.data.split import Split
from shared.errors import ConfigError, DataError
from shared.model import TwoTower, gather_histories
from shared.model.params import ParamLayout, set_flat

TOP_K = 10
BATCH_USERS = 512


def ranking_sums(
    model: TwoTower, split: Split, users: np.ndarray, *, stage: str, max_users: int = 0
) -> tuple[float, float, int]:
    """(sum of NDCG@10, sum of HR@10, users evaluated) over `users` that have a `stage` target.

    max_users > 0 evaluates only the first that many such users (a cheap progress signal)."""
    _, ndcg, hits = user_ndcg(model, split, users, stage=stage, max_users=max_users)
    return float(ndcg.sum()), float(hits.sum()), int(ndcg.size)


def user_ndcg(
    model: TwoTower, split: Split, users: np.ndarray, *, stage: str, max_users: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(evaluated users (m,) int64, their NDCG@10 (m,) float64, their HR@10 (m,) float64), in the order of
    `users`: the users with a `stage` target that does not repeat an earlier item of theirs (the others are
    left out, as in the harness). Which users are evaluated depends on the data alone, never on the model.

    max_users > 0 evaluates only the first that many users with a target."""
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
    evaluated: list[int] = []
    ranks: list[int] = []
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
            evaluated.append(int(user))
            ranks.append(_rank(scores[row], int(target), earlier))
    rank = np.asarray(ranks, np.float64)
    hit = rank < TOP_K
    ndcg = np.where(hit, 1.0 / np.log2(rank + 2), 0.0)
    return np.asarray(evaluated, np.int64), ndcg, hit.astype(np.float64)


def start_gain_sum(
    model: TwoTower,
    layout: ParamLayout,
    split: Split,
    users: np.ndarray,
    *,
    trained: np.ndarray,
    start: np.ndarray,
) -> float:
    """The start check's node sum (server/rounds/start_check.py): over `users`, g_u = NDCG@10 on the
    validation row with `trained` minus with `start` (both flat parameter vectors of `layout`), clamped to
    [-1, 1] whatever the ranking code returns, so one user moves the sum by at most 1 (the sensitivity the
    server's noise is calibrated to). A user without a validation target, or whose target repeats an earlier
    item, contributes 0. Leaves `model` holding `start`."""
    set_flat(model, layout, trained)
    trained_users, trained_ndcg, _ = user_ndcg(model, split, users, stage="valid")
    set_flat(model, layout, start)
    start_users, start_ndcg, _ = user_ndcg(model, split, users, stage="valid")
    if not np.array_equal(trained_users, start_users):  # the evaluated users depend on the data alone
        raise DataError("the start check evaluated different users for the two models")
    return float(np.clip(trained_ndcg - start_ndcg, -1.0, 1.0).sum())


def _rank(scores: np.ndarray, target: int, earlier: np.ndarray) -> int:
    """0-based rank of `target` among the candidates (all items but `earlier`), ties by item index."""
    masked = scores.copy()
    masked[earlier] = -np.inf
    value = masked[target]
    better = int(np.count_nonzero(masked > value))
    ties = int(np.count_nonzero(masked[:target] == value))
    return better + ties
