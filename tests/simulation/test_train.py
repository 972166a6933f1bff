"""Centralised two-tower training: examples, refit data, seeding, a short run that learns real structure."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from shared.config import EvalConfig, ModelConfig, TrainConfig
from shared.data.schema import UNKNOWN_TIME, Catalogue, Dataset, InteractionLog
from shared.data.split import Split, UserSequences, leave_one_out
from shared.errors import DataError
from shared.model import HistoryBatch, ItemFeatures
from simulation.baselines import Popularity
from simulation.central_training import exclude_, make_scorer, train, training_rows
from simulation.evaluate import evaluate

MODEL = ModelConfig(dim=16, max_history=5, n_heads=2, n_layers=1, residual_rank=8, dropout=0.0)
EVAL = EvalConfig(batch_size=256)


def cyclic_shop(
    n_users: int = 300, n_clusters: int = 6, per_cluster: int = 20, length: int = 8, seed: int = 0
) -> tuple[Dataset, np.ndarray]:
    """A shop whose structure text similarity alone misses: items form clusters with nearby text vectors,
    and a shopper's next item is always in the NEXT cluster (c -> c + 1 mod K), a popular one more often.
    Returns the dataset and its (n_items, 16) unit "text embeddings"."""
    rng = np.random.default_rng(seed)
    n_items = n_clusters * per_cluster
    cluster = np.repeat(np.arange(n_clusters), per_cluster)
    centroids = rng.normal(size=(n_clusters, 16))
    text = centroids[cluster] + 0.3 * rng.normal(size=(n_items, 16))
    text = (text / np.linalg.norm(text, axis=1, keepdims=True)).astype(np.float32)
    within = 1.0 / np.arange(1, per_cluster + 1)  # Zipf popularity inside each cluster
    within /= within.sum()
    users, items = [], []
    for u in range(n_users):
        c = rng.integers(n_clusters)
        for _ in range(length):
            items.append(c * per_cluster + rng.choice(per_cluster, p=within))
            users.append(u)
            c = (c + 1) % n_clusters
    n = len(items)
    catalogue = Catalogue(
        item_ids=[str(i) for i in range(n_items)],
        titles=[f"item {i}" for i in range(n_items)],
        categories=[f"Cluster{c}" for c in cluster],
        brands=[""] * n_items,
        descriptions=[""] * n_items,
        price=np.full(n_items, np.nan, dtype=np.float32),
        created_at=np.full(n_items, UNKNOWN_TIME, dtype=np.int64),
        on_promotion=np.zeros(n_items, dtype=bool),
    )
    log = InteractionLog(
        user_ids=[str(u) for u in range(n_users)],
        user=np.array(users, dtype=np.int32),
        item=np.array(items, dtype=np.int32),
        timestamp=1_700_000_000 + 3_600 * np.arange(n, dtype=np.int64),
        event=np.zeros(n, dtype=np.int8),
        value=np.full(n, np.nan, dtype=np.float32),
    )
    return Dataset("cyclic", catalogue, log), text


@pytest.fixture(scope="module")
def shop() -> tuple[Split, ItemFeatures]:
    dataset, text = cyclic_shop()
    return leave_one_out(dataset), ItemFeatures.from_catalogue(dataset.catalogue, text)


def quick(**overrides: Any) -> TrainConfig:
    base: dict[str, Any] = {
        "epochs": 4,
        "batch_size": 64,
        "learning_rate": 1e-2,
        "refit": False,
        "threads": 1,
    }
    return TrainConfig(**{**base, **overrides})


def test_training_rows_are_every_position_after_the_first_except_repeats() -> None:
    seqs = UserSequences(
        np.array([0, 4, 4, 5, 7]),
        np.array([5, 6, 5, 7, 8, 9, 1], np.int32),  # user 0 returns to item 5: not a target the second time
        np.zeros(7, np.int8),
        np.zeros(7, np.int64),
    )
    users, rows = training_rows(seqs)
    assert users.tolist() == [0, 0, 3] and rows.tolist() == [1, 3, 6]


def test_history_and_blocked_items_leave_the_softmax_but_the_target_stays() -> None:
    logits = torch.zeros(2, 6)
    batch = HistoryBatch(
        items=np.array([[-1, 1, 2], [3, 3, 4]]),
        events=np.array([[0, 1, 1], [1, 1, 1]]),
        gaps=np.array([[0, 1, 1], [1, 1, 1]]),
        hour=np.zeros(2, dtype=np.int64),
        weekday=np.zeros(2, dtype=np.int64),
    )
    blocked = torch.tensor([False, False, False, False, False, True])
    exclude_(logits, batch, torch.tensor([2, 0]), blocked)
    assert torch.isinf(logits).tolist() == [
        [False, True, False, False, False, True],  # item 2 is row 0's target: kept
        [False, False, False, True, True, True],
    ]


@pytest.mark.integration
def test_short_training_run_beats_popularity_and_text_similarity(shop: tuple[Split, ItemFeatures]) -> None:
    split, features = shop
    result = train(
        split, features, model_config=MODEL, train_config=quick(), eval_config=EVAL, progress=False
    )
    trained = evaluate(split, make_scorer(result.model, split), stage="test", config=EVAL).overall.ndcg_10
    popularity = evaluate(split, Popularity.fit(split).score, stage="test", config=EVAL).overall.ndcg_10
    torch.manual_seed(0)
    untrained = train(
        split,
        features,
        model_config=MODEL,
        train_config=quick(learning_rate=1e-9, epochs=1),
        eval_config=EVAL,
        progress=False,
    )
    text_only = evaluate(
        split, make_scorer(untrained.model, split), stage="test", config=EVAL
    ).overall.ndcg_10
    assert trained > 2 * popularity and trained > 2 * text_only
    assert result.best_valid_ndcg_10 == max(e.valid_ndcg_10 for e in result.epochs)
    assert len(result.epochs) >= result.best_epoch >= 1


@pytest.mark.integration
def test_training_is_seeded(shop: tuple[Split, ItemFeatures]) -> None:
    split, features = shop

    def weights(seed: int) -> dict[str, torch.Tensor]:
        config = quick(epochs=1, seed=seed)
        return train(
            split, features, model_config=MODEL, train_config=config, eval_config=EVAL, progress=False
        ).model.state_dict()

    first, again, other = weights(3), weights(3), weights(4)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


@pytest.mark.integration
def test_refit_trains_a_fresh_model_for_the_chosen_epoch_count(shop: tuple[Split, ItemFeatures]) -> None:
    split, features = shop
    config = quick(epochs=2, refit=True, patience=1)
    result = train(split, features, model_config=MODEL, train_config=config, eval_config=EVAL, progress=False)
    assert result.refit and len(result.refit_epochs) == result.best_epoch
    assert all(np.isnan(e.valid_ndcg_10) for e in result.refit_epochs)


@pytest.mark.integration
def test_sampled_softmax_training_also_learns(shop: tuple[Split, ItemFeatures]) -> None:
    split, features = shop
    config = quick(loss="sampled", n_negatives=32)
    result = train(split, features, model_config=MODEL, train_config=config, eval_config=EVAL, progress=False)
    popularity = evaluate(split, Popularity.fit(split).score, stage="test", config=EVAL).overall.ndcg_10
    trained = evaluate(split, make_scorer(result.model, split), stage="test", config=EVAL).overall.ndcg_10
    assert trained > 2 * popularity


def test_a_split_without_validation_users_is_refused() -> None:
    dataset, text = cyclic_shop(n_users=10, length=2)  # two rows each: nobody is evaluated
    split = leave_one_out(dataset)
    features = ItemFeatures.from_catalogue(dataset.catalogue, text)
    with pytest.raises(DataError, match="validation"):
        train(split, features, model_config=MODEL, train_config=quick(), eval_config=EVAL, progress=False)


def test_features_must_match_the_catalogue(shop: tuple[Split, ItemFeatures]) -> None:
    split, features = shop
    fewer = ItemFeatures(
        features.text[:-1], features.category[:-1], features.price_bucket[:-1], features.promotion[:-1]
    )
    with pytest.raises(DataError, match="items"):
        train(split, fewer, model_config=MODEL, train_config=quick(), eval_config=EVAL, progress=False)
