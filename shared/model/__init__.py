"""The two-tower model: features, towers and losses (see DESIGN.md "The model")."""

from shared.model.features import HistoryBatch, ItemFeatures, gather_histories
from shared.model.losses import NegativeSampler, full_softmax_loss, sampled_softmax_loss
from shared.model.towers import ItemTower, TwoTower, UserTower

__all__ = [
    "HistoryBatch",
    "ItemFeatures",
    "ItemTower",
    "NegativeSampler",
    "TwoTower",
    "UserTower",
    "full_softmax_loss",
    "gather_histories",
    "sampled_softmax_loss",
]
