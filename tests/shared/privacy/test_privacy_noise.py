"""Gaussian noise: the intended std, normal shape, OS-seeded by default, reproducible only when asked."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from shared.errors import ConfigError
from shared.privacy import noise as noise_module
from shared.privacy.noise import GaussianNoise


@settings(max_examples=20, deadline=None)
@given(std=st.floats(min_value=1e-3, max_value=1e3), seed=st.integers(0, 2**32))
def test_std_is_within_two_percent_of_intended(std: float, seed: int) -> None:
    draws = GaussianNoise(seed=seed).sample(40_000, std=std)
    # the sample std of 40k normal draws has a relative standard error of 1/sqrt(80k) ~ 0.35%
    assert np.std(draws) == pytest.approx(std, rel=0.02)
    assert abs(np.mean(draws)) < 0.03 * std  # ~6 standard errors of the mean


def test_draws_are_normal_by_kolmogorov_smirnov() -> None:
    draws = GaussianNoise(seed=11).sample(20_000, std=2.5)
    assert stats.kstest(draws / 2.5, "norm").pvalue > 1e-3


def test_shapes_dtype_and_zero_std() -> None:
    noise = GaussianNoise(seed=0)
    assert noise.sample((3, 4), std=1.0).shape == (3, 4)
    assert noise.sample(5, std=1.0).dtype == np.float64
    assert not noise.sample(7, std=0.0).any()
    assert isinstance(noise.normal(std=1.0), float)


@pytest.mark.parametrize("std", [-1.0, float("nan"), float("inf")])
def test_bad_std_is_refused(std: float) -> None:
    with pytest.raises(ConfigError):
        GaussianNoise(seed=0).sample(3, std=std)


def test_fixed_seed_is_reproducible_and_says_it_is_not_private() -> None:
    a, b = GaussianNoise(seed=3), GaussianNoise(seed=3)
    np.testing.assert_array_equal(a.sample(10, std=1.0), b.sample(10, std=1.0))
    assert not np.array_equal(
        GaussianNoise(seed=4).sample(10, std=1.0), GaussianNoise(seed=3).sample(10, std=1.0)
    )
    assert "fixed seed 3" in a.source and "NOT private" in a.source


def test_default_is_seeded_from_secrets_with_128_bits_and_the_seed_is_not_shown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seed = 0x0123456789ABCDEF0123456789ABCDEF
    asked: list[int] = []

    def fake_randbits(k: int) -> int:
        asked.append(k)
        return seed

    monkeypatch.setattr(noise_module.secrets, "randbits", fake_randbits)
    noise = GaussianNoise()
    expected = np.random.Generator(np.random.PCG64DXSM(np.random.SeedSequence(seed))).normal(0.0, 1.0, 5)
    np.testing.assert_array_equal(noise.sample(5, std=1.0), expected)
    assert asked == [128]
    assert "OS CSPRNG" in noise.source and str(seed) not in noise.source and str(seed) not in repr(noise)


def test_two_unseeded_generators_differ() -> None:
    assert not np.array_equal(GaussianNoise().sample(8, std=1.0), GaussianNoise().sample(8, std=1.0))


def discrete_gaussian_pmf(std: float, support: np.ndarray) -> np.ndarray:
    """exp(-x^2 / (2 std^2)) normalised over the integers (the tail beyond 40 std is below 1e-300)."""
    everything = np.arange(-int(40 * std) - 1, int(40 * std) + 2)
    weights = np.exp(-(everything.astype(np.float64) ** 2) / (2 * std**2))
    return np.exp(-(support.astype(np.float64) ** 2) / (2 * std**2)) / weights.sum()


@pytest.mark.parametrize("std", [0.7, 1.5, 4.0])
def test_discrete_gaussian_draws_follow_the_discrete_gaussian_pmf(std: float) -> None:
    draws = GaussianNoise(seed=21).discrete(300_000, std=std)
    assert draws.dtype == np.int64
    support = np.arange(-3 * int(np.ceil(std)), 3 * int(np.ceil(std)) + 1)
    expected = discrete_gaussian_pmf(std, support) * draws.size
    observed = np.array([(draws == k).sum() for k in support])
    # each cell within 5 binomial standard deviations (a chi-square per cell; 300k draws)
    assert np.all(np.abs(observed - expected) <= 5 * np.sqrt(expected) + 5)
    variance = float((discrete_gaussian_pmf(std, np.arange(-60, 61)) * np.arange(-60, 61) ** 2).sum())
    assert draws.var() == pytest.approx(variance, rel=0.02)  # below std^2 for small std, as it should be


def test_discrete_gaussian_at_secure_aggregation_scale() -> None:
    draws = GaussianNoise(seed=22).discrete(200_000, std=3.0e5)
    assert abs(draws.mean()) < 3.0e5 * 5 / np.sqrt(draws.size)
    assert draws.std() == pytest.approx(3.0e5, rel=0.01)
    assert np.all(GaussianNoise(seed=1).discrete(5, std=0.0) == 0)
    with pytest.raises(ConfigError):
        GaussianNoise(seed=1).discrete(5, std=-1.0)
