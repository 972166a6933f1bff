"""The start check on a node: the sum of per-user NDCG@10 gains of the trained model over its start
(client/federated_evaluation.py: start_gain_sum), on a tiny shop where every number is known by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from toy import toy_dataset

import client.federated_evaluation as federated_evaluation
from client.federated_evaluation import ranking_sums, start_gain_sum
from shared.config import ModelConfig
from shared.data.split import Split, leave_one_out
from shared.model import ItemFeatures, TwoTower
from shared.model.params import ParamLayout, get_flat, set_flat, trainable_layout

N_ITEMS, TARGET = 20, 15
# validation target = second-to-last item. Users 0, 1 and 4 have target 15 and never had it before; user 2's
# target repeats an earlier item (left out); user 3 is too short to have a target (contributes 0).
SEQUENCES = [
    [1, 2, 3, TARGET, 4],
    [5, 6, TARGET, 7],
    [8, TARGET, 9, TARGET, 10],
    [11, 12],
    [0, 13, 14, TARGET, 16],
]
GAINING_USERS = (0, 1, 4)


def shop() -> tuple[TwoTower, ParamLayout, Split, np.ndarray, np.ndarray]:
    """(model, layout of its item bias, split, start params, trained params). Item texts are one-hot, so the
    untrained model scores every candidate 0 (the last item, the only one with cosine 1, is an earlier item
    and excluded): the target ranks by its index, 12th or later, NDCG@10 0. The "trained" model gives item 15
    a bias of 50: it ranks first for every user whose target it is, NDCG@10 1."""
    split = leave_one_out(toy_dataset(SEQUENCES, N_ITEMS))
    features = ItemFeatures.from_catalogue(split.dataset.catalogue, np.eye(N_ITEMS, dtype=np.float32))
    torch.manual_seed(0)
    model = TwoTower(features, ModelConfig(dim=8, max_history=4, n_heads=2, n_layers=1, residual_rank=4))
    layout = trainable_layout(model, ("items.bias",))
    start = get_flat(model, layout)
    with torch.no_grad():
        model.items.bias.weight[0, TARGET] = 50.0
    trained = get_flat(model, layout)
    return model, layout, split, start, trained


def test_the_same_model_twice_gains_nothing() -> None:
    model, layout, split, start, _ = shop()
    users = np.arange(len(SEQUENCES))
    assert start_gain_sum(model, layout, split, users, trained=start, start=start) == 0.0


def test_a_model_that_ranks_the_targets_first_gains_one_per_user_with_a_fresh_target() -> None:
    model, layout, split, start, trained = shop()
    users = np.arange(len(SEQUENCES))
    assert list(np.flatnonzero(split.valid_target == TARGET)) == [0, 1, 2, 4]  # user 2: a repeat, left out
    assert start_gain_sum(model, layout, split, users, trained=trained, start=start) == pytest.approx(3.0)
    assert start_gain_sum(model, layout, split, users, trained=start, start=trained) == pytest.approx(-3.0)
    some = np.array([0, 2, 3])  # one gaining user, one repeat target, one without a target
    assert start_gain_sum(model, layout, split, some, trained=trained, start=start) == pytest.approx(1.0)
    # the evaluation the gains are differences of: by hand, NDCG@10 1 for the trained, 0 for the start
    set_flat(model, layout, trained)
    assert ranking_sums(model, split, users, stage="valid") == (pytest.approx(3.0), 3.0, 3)
    set_flat(model, layout, start)
    assert ranking_sums(model, split, users, stage="valid") == (0.0, 0.0, 3)


def test_gains_are_clamped_to_one_whatever_the_ranking_code_returns(monkeypatch: pytest.MonkeyPatch) -> None:
    """Defensive: the sensitivity of 1 must not depend on the ranking code."""
    model, layout, split, start, trained = shop()
    users = np.array(GAINING_USERS)
    answers = [np.array([3.0, -0.5, 0.25]), np.array([0.0, 2.0, 0.0])]  # the trained model's, the start's

    def fake_user_ndcg(
        model: TwoTower, split: Split, users: np.ndarray, **_: object
    ) -> tuple[np.ndarray, ...]:
        ndcg = answers.pop(0)
        return users.astype(np.int64), ndcg, ndcg

    monkeypatch.setattr(federated_evaluation, "user_ndcg", fake_user_ndcg)
    total = start_gain_sum(model, layout, split, users, trained=trained, start=start)
    assert not answers and total == pytest.approx(1.0 - 1.0 + 0.25)  # 3 -> 1, -2.5 -> -1
