"""Poisson sampling of users and the norm check on sums of clipped updates
(server.strategy.poisson_sampling)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from server.strategy import check_update_sum, check_update_values, poisson_cohort, poisson_sample
from shared.errors import ConfigError, UpdateRejectedError


def test_realised_cohort_varies_like_a_binomial() -> None:
    population, rate, rounds = 2_000, 0.05, 400
    rng = np.random.default_rng(11)
    sizes = np.array([poisson_sample(population, sample_rate=rate, rng=rng).size for _ in range(rounds)])
    expected, variance = population * rate, population * rate * (1 - rate)
    # mean within 4 standard errors of q*N; a fixed-size sample would have variance 0
    assert abs(sizes.mean() - expected) < 4 * np.sqrt(variance / rounds)
    low, high = stats.chi2.ppf([0.0005, 0.9995], rounds - 1) * variance / (rounds - 1)
    assert low < sizes.var(ddof=1) < high
    assert len(set(sizes.tolist())) > 10


def test_each_user_is_included_with_frequency_q() -> None:
    population, rate, rounds = 200, 0.1, 2_000
    rng = np.random.default_rng(12)
    counts = np.zeros(population)
    for _ in range(rounds):
        counts[poisson_sample(population, sample_rate=rate, rng=rng)] += 1
    expected = rounds * rate
    statistic = float(((counts - expected) ** 2 / (expected * (1 - rate))).sum())
    low, high = stats.chi2.ppf([0.0005, 0.9995], population)
    assert low < statistic < high  # frequencies as spread as independent Binomial(rounds, q) counts
    assert np.abs(counts - expected).max() < 5 * np.sqrt(expected * (1 - rate))


@given(
    population=st.integers(0, 3_000),
    rate=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**32 - 1),
)
@settings(max_examples=60, deadline=None)
def test_sample_is_sorted_unique_in_range_int64(population: int, rate: float, seed: int) -> None:
    chosen = poisson_sample(population, sample_rate=rate, rng=np.random.default_rng(seed))
    assert chosen.dtype == np.int64
    assert np.all(np.diff(chosen) > 0)
    assert chosen.size == 0 or (chosen[0] >= 0 and chosen[-1] < population)


def test_rate_zero_gives_nobody_and_rate_one_everybody() -> None:
    rng = np.random.default_rng(0)
    assert poisson_sample(50, sample_rate=0.0, rng=rng).size == 0
    np.testing.assert_array_equal(poisson_sample(50, sample_rate=1.0, rng=rng), np.arange(50))


@pytest.mark.parametrize(("population", "rate"), [(-1, 0.1), (10, -0.1), (10, 1.5), (10, float("nan"))])
def test_bad_sampling_arguments_are_refused(population: int, rate: float) -> None:
    with pytest.raises(ConfigError):
        poisson_sample(population, sample_rate=rate, rng=np.random.default_rng(0))


def clipped(vectors: np.ndarray, clip_norm: float) -> np.ndarray:
    """Each row scaled down to L2 norm <= clip_norm (independent of the code under test)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors * np.minimum(1.0, clip_norm / np.maximum(norms, 1e-12))


@given(
    count=st.integers(0, 40),
    dim=st.integers(1, 30),
    clip_norm=st.floats(1e-3, 1e3),
    scale=st.floats(1e-6, 1e6),
    seed=st.integers(0, 2**32 - 1),
)
@settings(max_examples=80, deadline=None)
def test_any_sum_of_clipped_updates_passes(
    count: int, dim: int, clip_norm: float, scale: float, seed: int
) -> None:
    rows = np.random.default_rng(seed).normal(size=(count, dim)) * scale
    update_sum = clipped(rows, clip_norm).astype(np.float32).sum(axis=0, dtype=np.float32)
    check_update_sum(update_sum, count=count, dim=dim, clip_norm=clip_norm)


def test_aligned_updates_reach_the_bound_and_more_is_rejected() -> None:
    direction = np.array([3.0, 4.0], np.float32) / 5.0
    check_update_sum(7 * 2.0 * direction, count=7, dim=2, clip_norm=2.0)
    with pytest.raises(UpdateRejectedError, match="longer than 7 updates"):
        check_update_sum(7 * 2.0 * 1.001 * direction, count=7, dim=2, clip_norm=2.0)
    with pytest.raises(UpdateRejectedError):  # one unclipped reply among the sum
        check_update_sum(np.array([0.0, 15.0]), count=7, dim=2, clip_norm=2.0)


def test_empty_round_accepts_only_the_zero_sum() -> None:
    check_update_sum(np.zeros(3, np.float32), count=0, dim=3, clip_norm=1.0)
    with pytest.raises(UpdateRejectedError):
        check_update_sum(np.array([0.0, 1e-3, 0.0]), count=0, dim=3, clip_norm=1.0)


@pytest.mark.parametrize(
    "update_sum",
    [
        np.array([0.1, np.nan, 0.2]),
        np.array([0.1, np.inf, 0.2]),
        np.array([0.1, 0.2]),
        np.zeros((1, 3)),
        np.zeros(4),
        np.array(["a", "b", "c"]),
        np.array([1 + 1j, 0, 0]),
    ],
)
def test_malformed_sums_are_rejected(update_sum: np.ndarray) -> None:
    with pytest.raises(UpdateRejectedError):
        check_update_sum(update_sum, count=5, dim=3, clip_norm=1.0)
    with pytest.raises(UpdateRejectedError):
        check_update_values(update_sum, count=5, dim=3)


def test_negative_count_is_rejected_and_messages_carry_no_values() -> None:
    with pytest.raises(UpdateRejectedError):
        check_update_sum(np.zeros(3), count=-1, dim=3, clip_norm=1.0)
    with pytest.raises(UpdateRejectedError) as caught:
        check_update_sum(np.array([123.456, 0.0, np.nan]), count=5, dim=3, clip_norm=1.0)
    with pytest.raises(UpdateRejectedError) as oversized:
        check_update_sum(np.array([987.654, 0.0, 0.0]), count=5, dim=3, clip_norm=1.0)
    assert "123" not in str(caught.value) and "987" not in str(oversized.value)


@pytest.mark.parametrize("clip_norm", [0.0, -1.0, float("nan")])
def test_a_bad_clip_norm_is_a_config_error(clip_norm: float) -> None:
    with pytest.raises(ConfigError):
        check_update_sum(np.zeros(3), count=1, dim=3, clip_norm=clip_norm)


def test_infinite_clip_norm_skips_only_the_norm_bound() -> None:
    # mode "local": devices noised their updates, so the sum has no norm bound; values are still checked
    check_update_sum(np.array([1e6, 0.0, 0.0]), count=0, dim=3, clip_norm=float("inf"))
    with pytest.raises(UpdateRejectedError):
        check_update_sum(np.array([np.nan, 0.0, 0.0]), count=2, dim=3, clip_norm=float("inf"))


def test_a_cohort_carries_the_method_and_rate_that_drew_it() -> None:
    cohort = poisson_cohort(300, sample_rate=0.2, rng=np.random.default_rng(4))
    np.testing.assert_array_equal(
        cohort.users, poisson_sample(300, sample_rate=0.2, rng=np.random.default_rng(4))
    )
    assert (cohort.method, cohort.sample_rate, cohort.population) == ("poisson", 0.2, 300)
    assert cohort.size == cohort.users.size
