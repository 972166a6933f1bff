"""Simple baselines scored by the evaluation harness: popularity, text similarity, matrix factorisation.

Each exposes `score(users, stage) -> (batch, n_items) float32`, a `simulation.evaluate.Scorer`. What a model
may learn from is `split.train` only; what it may condition on when scoring a user is that user's history
before the stage's target (`split.full` up to `split.history_end(stage)`), as the protocol allows.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from shared.config import MFConfig
from shared.data.split import Split, Stage, UserSequences
from shared.errors import ConfigError, DataError

log = logging.getLogger(__name__)


class Popularity:
    """Score = number of training interactions of the item, so cold items score 0.

    With `count_valid_for_test`, the test stage also counts the validation rows of evaluated users (the
    history everyone has before the test row; cold items still excluded): the validation stage is
    unaffected. The reference test NDCG@10 of ~0.0061 on amazon_beauty is measured that way; training rows
    alone give ~0.0054.
    """

    def __init__(self, valid_counts: np.ndarray, test_counts: np.ndarray) -> None:
        self.valid_counts = valid_counts.astype(np.float32)
        self.test_counts = test_counts.astype(np.float32)

    @classmethod
    def fit(cls, split: Split, *, count_valid_for_test: bool = False) -> Popularity:
        counts = np.bincount(split.train.items, minlength=split.n_items)
        test_counts = counts.copy()
        if count_valid_for_test:
            valid_items = split.valid_target[split.eval_users]
            valid_items = valid_items[~split.cold_items[valid_items]]
            test_counts += np.bincount(valid_items, minlength=split.n_items)
        return cls(counts, test_counts)

    def score(self, users: np.ndarray, stage: Stage) -> np.ndarray:
        counts = self.valid_counts if stage == "valid" else self.test_counts
        return np.repeat(counts[None, :], users.shape[0], axis=0)


class TextSimilarity:
    """No training: cosine between each item's text embedding and the user's recent items.

    The user vector is the decayed sum of the embeddings of the last `last_k` history items (weight
    `decay**j` for the j-th most recent, j = 0 for the last one), so `last_k=1` is the last item alone.
    Scores are cosines in [-1, 1]; a user without history scores 0 everywhere.
    """

    def __init__(
        self, split: Split, item_embeddings: np.ndarray, *, last_k: int = 1, decay: float = 0.5
    ) -> None:
        if item_embeddings.ndim != 2 or item_embeddings.shape[0] != split.n_items:
            raise DataError(
                f"item embeddings have shape {item_embeddings.shape}, expected ({split.n_items}, d)"
            )
        if last_k < 1 or not 0.0 < decay <= 1.0:
            raise ConfigError(f"need last_k >= 1 and decay in (0, 1], got {last_k} and {decay}")
        norms = np.linalg.norm(item_embeddings, axis=1, keepdims=True)
        unit = (item_embeddings / np.where(norms > 0, norms, 1.0)).astype(np.float32)
        self.split = split
        self.padded = np.vstack([unit, np.zeros((1, unit.shape[1]), np.float32)])  # row -1: no item
        self.weights = (decay ** np.arange(last_k)).astype(np.float32)  # (k,), most recent first

    def user_vectors(self, users: np.ndarray, stage: Stage) -> np.ndarray:
        """(B, d) unit vectors (zero without history) of the users' recent items."""
        end = self.split.history_end(stage)[users]
        start = self.split.full.offsets[users]
        pos = end[:, None] - 1 - np.arange(self.weights.shape[0])[None, :]  # (B, k) rows, most recent first
        items = np.where(pos >= start[:, None], self.split.full.items[np.maximum(pos, 0)], -1)
        vectors = np.einsum("k,bkd->bd", self.weights, self.padded[items])
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.where(norms > 0, norms, 1.0)

    def score(self, users: np.ndarray, stage: Stage) -> np.ndarray:
        return self.user_vectors(users, stage) @ self.padded[:-1].T


class MatrixFactorization(nn.Module):
    """score(u, i) = <p_u, q_i> + b_i, trained with a full softmax over the catalogue on `split.train`.

    Every training row (u, i) is one example: cross-entropy of item i among all items given user u. A user's
    vector is learned from the rows it is fitted on, so a model for the test stage is fitted again on
    train + validation rows (as the two-tower model is), or its user vectors are two interactions stale.
    """

    def __init__(self, n_users: int, n_items: int, config: MFConfig) -> None:
        super().__init__()
        self.user = nn.Embedding(n_users, config.dim)  # (n_users, d)
        self.item = nn.Embedding(n_items, config.dim)  # (n_items, d)
        self.bias = nn.Parameter(torch.zeros(n_items))  # (n_items,)
        for table in (self.user, self.item):
            nn.init.normal_(table.weight, std=config.init_std)

    def forward(self, users: torch.Tensor) -> torch.Tensor:
        return self.user(users) @ self.item.weight.T + self.bias  # (B, n_items) logits

    @classmethod
    def fit(
        cls, split: Split, config: MFConfig | None = None, *, rows: UserSequences | None = None
    ) -> MatrixFactorization:
        """Train on `rows` (default `split.train`; `split.train_and_valid()` before the test stage)."""
        config = config or MFConfig()
        rows = split.train if rows is None else rows
        torch.manual_seed(config.seed)
        model = cls(rows.n_users, split.n_items, config)
        users = torch.from_numpy(np.repeat(np.arange(rows.n_users), rows.lengths()))
        items = torch.from_numpy(rows.items.astype(np.int64))
        optimiser = torch.optim.AdamW(
            model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
        )
        shuffle = torch.Generator().manual_seed(config.seed)
        for epoch in range(config.epochs):
            order = torch.randperm(users.shape[0], generator=shuffle)
            total = 0.0
            for batch in order.split(config.batch_size):
                loss = nn.functional.cross_entropy(model(users[batch]), items[batch])
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                total += float(loss.detach()) * batch.shape[0]
            log.info("MF epoch %d: training loss %.4f", epoch + 1, total / max(users.shape[0], 1))
        return model.eval()

    @torch.no_grad()
    def score(self, users: np.ndarray, stage: Stage) -> np.ndarray:
        return self(torch.from_numpy(users.astype(np.int64))).numpy().astype(np.float32, copy=False)
