"""Tests of the baselines: what they learn from (training rows only), toy rankings, MF beats popularity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from toy import toy_dataset

from shared.config import EvalConfig, MFConfig
from shared.data.split import Split, leave_one_out
from shared.errors import ConfigError, DataError
from simulation.baselines import MatrixFactorization, Popularity, TextSimilarity
from simulation.evaluate import evaluate


def toy_split(sequences: list[list[int]], n_items: int, *, cold_item_fraction: float = 0.0) -> Split:
    """A split of users with the given item sequences (row order)."""
    return leave_one_out(toy_dataset(sequences, n_items), cold_item_fraction=cold_item_fraction, seed=1)


def random_sequences(seed: int, n_users: int = 20, n_items: int = 15) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, n_items, size=rng.integers(3, 8)).tolist() for _ in range(n_users)]


def with_other_targets(sequences: list[list[int]], seed: int, n_items: int) -> list[list[int]]:
    """The same sequences with each evaluated user's last two rows (validation, test) replaced."""
    rng = np.random.default_rng(seed)
    return [s[:-2] + rng.integers(0, n_items, size=2).tolist() if len(s) >= 3 else s for s in sequences]


ALL_USERS = np.arange(20)


# --- popularity ---------------------------------------------------------------------------------


def test_popularity_counts_training_rows_only() -> None:
    sequences = [[0, 1, 2, 3], [0, 2, 3], [1, 1, 3, 3]]
    model = Popularity.fit(toy_split(sequences, n_items=5))
    # training rows: [0, 1], [0], [1, 1]; validation and test rows (2 and 3) are not counted
    assert model.score(np.array([0, 2]), "test").tolist() == [[2, 3, 0, 0, 0]] * 2
    assert model.score(np.array([1]), "valid").dtype == np.float32


def test_popularity_ignores_valid_and_test_rows() -> None:
    sequences = random_sequences(0)
    a = Popularity.fit(toy_split(sequences, 15))
    b = Popularity.fit(toy_split(with_other_targets(sequences, 1, 15), 15))
    for stage in ("valid", "test"):
        assert np.array_equal(a.score(ALL_USERS, stage), b.score(ALL_USERS, stage))


def test_popularity_cold_items_score_zero() -> None:
    split = toy_split(random_sequences(2, n_users=40), 15, cold_item_fraction=0.2)
    scores = Popularity.fit(split, count_valid_for_test=True).score(np.array([0]), "test")[0]
    assert split.cold_items.sum() == 3 and np.all(scores[split.cold_items] == 0)


def test_popularity_count_valid_for_test_changes_only_the_test_stage() -> None:
    sequences = [[0, 1, 2, 3], [0, 2, 3], [1, 1, 4, 3]]
    split = toy_split(sequences, n_items=5)
    model = Popularity.fit(split, count_valid_for_test=True)
    assert model.score(np.array([0]), "valid").tolist() == [[2, 3, 0, 0, 0]]
    assert model.score(np.array([0]), "test").tolist() == [[2, 3, 2, 0, 1]]  # + validation items 2, 2, 4


# --- text similarity ----------------------------------------------------------------------------

EMBEDDINGS = np.array([[2.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.0]], np.float32)  # item 0 not unit length


def test_text_similarity_ranks_by_cosine_to_the_last_item() -> None:
    split = toy_split([[2, 0, 1, 3]], n_items=4)  # valid history [2, 0], test history [2, 0, 1]
    model = TextSimilarity(split, EMBEDDINGS)
    np.testing.assert_allclose(model.score(np.array([0]), "valid")[0], [1.0, 0.8, 0.0, -1.0], atol=1e-6)
    np.testing.assert_allclose(model.score(np.array([0]), "test")[0], [0.8, 1.0, 0.6, -0.8], atol=1e-6)


def test_text_similarity_decayed_mean_of_last_k() -> None:
    split = toy_split([[2, 0, 1, 3]], n_items=4)
    model = TextSimilarity(split, EMBEDDINGS, last_k=3, decay=0.5)  # valid history has only 2 items
    user = np.array([1.0, 0.5]) / np.linalg.norm([1.0, 0.5])  # e0 + 0.5 * e2
    unit = EMBEDDINGS / np.linalg.norm(EMBEDDINGS, axis=1, keepdims=True)
    np.testing.assert_allclose(model.score(np.array([0]), "valid")[0], unit @ user, atol=1e-6)


def test_text_similarity_uses_no_target() -> None:
    sequences = random_sequences(3)
    embeddings = np.random.default_rng(0).normal(size=(15, 4)).astype(np.float32)
    a = TextSimilarity(toy_split(sequences, 15), embeddings, last_k=3)
    b = TextSimilarity(toy_split(with_other_targets(sequences, 4, 15), 15), embeddings, last_k=3)
    assert np.array_equal(a.score(ALL_USERS, "valid"), b.score(ALL_USERS, "valid"))


def test_text_similarity_refuses_bad_input() -> None:
    split = toy_split([[2, 0, 1, 3]], n_items=4)
    with pytest.raises(DataError):
        TextSimilarity(split, EMBEDDINGS[:3])
    with pytest.raises(ConfigError):
        TextSimilarity(split, EMBEDDINGS, last_k=0)


# --- matrix factorisation -----------------------------------------------------------------------

SMALL_MF = MFConfig(dim=8, epochs=40, batch_size=64, learning_rate=0.05, weight_decay=0.0, seed=3)


def two_groups(seed: int) -> list[list[int]]:
    """60 users buy among items 0-19, 30 among items 20-39: popularity favours the first group."""
    rng = np.random.default_rng(seed)
    group_a = [rng.choice(20, size=8, replace=False).tolist() for _ in range(60)]
    group_b = [(20 + rng.choice(20, size=8, replace=False)).tolist() for _ in range(30)]
    return group_a + group_b


def test_mf_beats_popularity_on_two_user_groups() -> None:
    torch.set_num_threads(1)
    split = toy_split(two_groups(0), n_items=40)
    config = EvalConfig(batch_size=32)
    pop = evaluate(split, Popularity.fit(split).score, stage="test", config=config)
    mf = evaluate(split, MatrixFactorization.fit(split, SMALL_MF).score, stage="test", config=config)
    group_b = split.eval_users >= 60
    assert pop.ranks[group_b].min() >= 10  # popularity shows the second group only the first group's items
    assert (mf.ranks[group_b] < 10).mean() > 0.5
    assert mf.overall.ndcg_10 > 1.2 * pop.overall.ndcg_10


def test_mf_ignores_valid_and_test_rows() -> None:
    torch.set_num_threads(1)
    sequences = random_sequences(5)
    config = MFConfig(dim=4, epochs=2, batch_size=16, seed=0)
    a = MatrixFactorization.fit(toy_split(sequences, 15), config)
    b = MatrixFactorization.fit(toy_split(with_other_targets(sequences, 6, 15), 15), config)
    scores = a.score(ALL_USERS, "test")
    assert scores.shape == (20, 15) and scores.dtype == np.float32
    assert np.array_equal(scores, b.score(ALL_USERS, "test"))


def test_mf_config_is_validated() -> None:
    with pytest.raises(ConfigError):
        MFConfig(dim=0)
    with pytest.raises(ConfigError):
        MFConfig(weight_decay=-1.0)
