"""A tiny federated setup for the local-training tests: a random two-tower model, users, blocked items."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from client.training.round_update import LocalTrainer
from shared.config import FederatedConfig, ModelConfig
from shared.data.split import UserSequences
from shared.model import ItemFeatures, TwoTower
from shared.model.params import ParamLayout, get_flat, trainable_layout

N_ITEMS, TEXT_DIM, N_BLOCKED = 30, 12, 4
MODEL = ModelConfig(dim=8, max_history=4, n_heads=2, n_layers=1, residual_rank=4)
SUBSET = ("items.up", "items.bias", "log_temperature")
# user 0: one row (no example); user 1: only repeats (no example); the others 2..16 rows
ROWS: list[list[int]] = [
    [3],
    [5, 5, 5],
    *([(7 * u + 3 * i) % (N_ITEMS - N_BLOCKED) for i in range(2 + u)] for u in range(12)),
]
EMPTY_USERS = (0, 1)


def features(*, seed: int = 0, popularity: bool = False) -> ItemFeatures:
    """Random unit text vectors and codes; with `popularity`, a random popularity prior too."""
    rng = np.random.default_rng(seed)
    text = rng.normal(size=(N_ITEMS, TEXT_DIM)).astype(np.float32)
    prior = rng.uniform(0.0, 3.0, N_ITEMS).astype(np.float32)
    return ItemFeatures(
        text=text / np.linalg.norm(text, axis=1, keepdims=True),
        category=rng.integers(0, 3, N_ITEMS),
        price_bucket=rng.integers(0, 9, N_ITEMS),
        promotion=rng.integers(0, 2, N_ITEMS),
        popularity=prior if popularity else None,
    )


def random_model(*, seed: int = 1, item_id_residual: bool = False, popularity: bool = False) -> TwoTower:
    """A model with every parameter drawn at random (so zero-initialised layers matter), in eval mode;
    `popularity`: with a popularity prior and its learned weight."""
    config = dataclasses.replace(MODEL, item_id_residual=item_id_residual, popularity_prior=popularity)
    model = TwoTower(features(popularity=popularity), config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
    return model.eval()


def sequences(rows: list[list[int]]) -> UserSequences:
    """Users' item sequences, one event an hour, event types cycling."""
    offsets = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
    items = np.array([i for r in rows for i in r], dtype=np.int32)
    events = (np.arange(items.shape[0]) % 3).astype(np.int8)
    return UserSequences(offsets, items, events, 1_700_000_000 + 3_600 * np.arange(items.shape[0]))


@dataclass
class Toy:
    model: TwoTower
    seqs: UserSequences
    blocked: np.ndarray  # (N_ITEMS,) the last N_BLOCKED items: in no sequence
    layout: ParamLayout
    trainer: LocalTrainer
    params: np.ndarray  # (P,) the model's trained parameters

    @property
    def users(self) -> np.ndarray:
        return np.arange(self.seqs.n_users)


def build(trainable: tuple[str, ...] = ("all",), *, popularity: bool = False, **overrides: Any) -> Toy:
    """The toy setup with a FederatedConfig of small defaults and the given overrides (`popularity`: a
    model with a popularity prior)."""
    settings: dict[str, Any] = {
        "local_learning_rate": 0.5,
        "n_negatives": 16,
        "max_examples_per_user": 5,
        "chunk_size": 4,
        "update_scales": (),  # the plain parametrisation unless a test asks for scales
        **overrides,
    }
    config = FederatedConfig(trainable=trainable, **settings)
    model = random_model(popularity=popularity)
    seqs = sequences(ROWS)
    blocked = np.zeros(N_ITEMS, dtype=bool)
    blocked[-N_BLOCKED:] = True
    layout = trainable_layout(model, trainable)
    trainer = LocalTrainer(model, seqs, layout=layout, blocked=blocked, config=config)
    return Toy(model, seqs, blocked, layout, trainer, get_flat(model, layout))
