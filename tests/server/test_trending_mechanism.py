"""The trending mechanism on the server: noise as accounted, an unbiased estimator, replies checked."""

from __future__ import annotations

import math

import numpy as np
import pytest

from client.trending_contribution import TrendingWindow, contribution_sum, contribution_vector
from server.strategy import poisson_sample
from server.trending.trending_query import check_trending_sum, noised_counts
from shared.errors import UpdateRejectedError
from shared.privacy.noise import GaussianNoise


@pytest.mark.parametrize("seed", [None, 3])
def test_the_noise_added_has_the_accounted_std(seed: int | None) -> None:
    z, q, k = 1.7, 0.4, 4
    result = noised_counts(np.zeros(200_000), noise=GaussianNoise(seed=seed), noise_multiplier=z,
                           sample_rate=q, max_items=k)  # fmt: skip
    noise_on_sum = result.counts.astype(np.float64) * q / math.sqrt(k)
    assert result.noise_std == z and result.count_std == pytest.approx(z * math.sqrt(k) / q)
    assert np.std(noise_on_sum) == pytest.approx(z, rel=0.02)
    assert abs(np.mean(noise_on_sum)) < 5 * z / math.sqrt(noise_on_sum.size)


def toy_population(n_users: int = 300, n_items: int = 15) -> tuple[np.ndarray, ...]:
    """Random logs whose popular items are skewed; timestamps in [0, 100)."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 9, n_users)
    owner = np.repeat(np.arange(n_users), lengths)
    item = rng.choice(n_items, size=owner.size, p=np.arange(n_items, 0, -1) / np.arange(n_items, 0, -1).sum())
    return owner, item, rng.integers(0, 100, owner.size)


@pytest.mark.integration
def test_the_count_estimate_is_unbiased_on_a_toy_population() -> None:
    owner, item, time = toy_population()
    window = TrendingWindow(as_of_s=100, window_s=60, max_items=3, n_items=15)
    users = np.arange(300)
    true = sum(contribution_vector(item[owner == u], time[owner == u], window) for u in users)
    true = np.asarray(true) * math.sqrt(window.max_items)  # users counting each item
    assert true.max() > 40 and np.allclose(true, np.round(true))
    q, z, draws = 0.3, 1.0, 3000
    rng, noise = np.random.default_rng(1), GaussianNoise(seed=2)
    total = np.zeros(15)
    for _ in range(draws):
        sampled = poisson_sample(300, sample_rate=q, rng=rng)
        total += noised_counts(contribution_sum(owner, item, time, sampled, window), noise=noise,
                               noise_multiplier=z, sample_rate=q, max_items=3).counts  # fmt: skip
    variance = true * (1 - q) / q + window.max_items * z**2 / q**2  # sampling + noise, per draw
    standard_error = np.sqrt(variance / draws)
    assert np.all(np.abs(total / draws - true) < 5 * standard_error), (total / draws - true) / standard_error


def test_replies_that_cannot_be_sums_of_contributions_are_rejected() -> None:
    k, count = 4, 3
    good = np.zeros(10)
    good[[1, 2]] = [3 / math.sqrt(k), 1 / math.sqrt(k)]
    np.testing.assert_array_equal(check_trending_sum(good, count=count, n_items=10, max_items=k), good)
    bad = {
        "negative": np.where(np.arange(10) == 0, -0.5, 0.0),
        "too large an item": np.where(np.arange(10) == 0, 4 / math.sqrt(k), 0.0),
        "too long": np.full(10, 1 / math.sqrt(k) * 3),
        "not finite": np.where(np.arange(10) == 0, np.nan, 0.0),
        "wrong shape": np.zeros(9),
    }
    for name, values in bad.items():
        with pytest.raises(UpdateRejectedError):
            check_trending_sum(values, count=count, n_items=10, max_items=k)
            pytest.fail(name)
