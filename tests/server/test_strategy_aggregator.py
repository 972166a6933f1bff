"""User-level DP aggregation: noise on the sum, the q*N divisor, adaptive clipping, the z_update split."""

from __future__ import annotations

import math
from typing import Any, Literal

import dp_accounting
import numpy as np
import pytest
from dp_accounting import rdp
from hypothesis import given, settings
from hypothesis import strategies as st

from server.strategy import (
    AdaptiveClipping,
    Draw,
    NoiseSource,
    RecordedNoise,
    UserLevelDPAggregator,
    adaptive_from_config,
    drawn_std,
    poisson_sample,
    update_noise_multiplier,
)
from shared.config import PrivacyConfig
from shared.errors import ConfigError, DataError, UpdateRejectedError
from shared.privacy.noise import GaussianNoise

Mode = Literal["central", "local", "none"]


class NumpyNoise:
    """Test stand-in for shared.privacy.noise.GaussianNoise (seeded numpy PCG64)."""

    source = "numpy-pcg64 (test stand-in)"

    def __init__(self, seed: int) -> None:
        self._rng = np.random.default_rng(seed)

    def sample(self, shape: tuple[int, ...], *, std: float) -> np.ndarray:
        return self._rng.normal(0.0, std, size=shape)

    def normal(self, *, std: float) -> float:
        return float(self._rng.normal(0.0, std))


class SpyNoise:
    """Draws nothing: returns zeros and records the std of every request."""

    source = "zeros (test spy)"

    def __init__(self, count_draw: float = 0.0) -> None:
        self.sample_stds: list[float] = []
        self.normal_stds: list[float] = []
        self.count_draw = count_draw  # what normal() returns

    def sample(self, shape: tuple[int, ...], *, std: float) -> np.ndarray:
        self.sample_stds.append(std)
        return np.zeros(shape)

    def normal(self, *, std: float) -> float:
        self.normal_stds.append(std)
        return self.count_draw


def noise_sources() -> list[NoiseSource]:
    return [NumpyNoise(2024), GaussianNoise(seed=2024)]


@pytest.mark.parametrize("noise", noise_sources(), ids=lambda n: type(n).__name__)
def test_noise_std_on_the_sum_is_z_times_c(noise: NoiseSource) -> None:
    z, clip_norm, dim = 1.3, 0.7, 200_000
    agg = UserLevelDPAggregator(
        population=1_000,
        sample_rate=0.01,
        noise_multiplier=z,
        clip_norm=clip_norm,
        mode="central",
        noise=noise,
    )
    result = agg.aggregate(np.zeros(dim, np.float32), count=0, unclipped_count=0)
    noise_on_sum = result.mean_update.astype(np.float64) * agg.expected_cohort
    assert result.noise_std == pytest.approx(z * clip_norm)
    assert np.std(noise_on_sum) == pytest.approx(z * clip_norm, rel=0.02)
    assert abs(np.mean(noise_on_sum)) < 5 * z * clip_norm / math.sqrt(dim)
    assert result.mean_update.dtype == np.float32 and result.mean_update.shape == (dim,)


def test_divisor_is_the_expected_cohort_not_the_realised_count() -> None:
    agg = UserLevelDPAggregator(
        population=1_000,
        sample_rate=0.01,
        noise_multiplier=1.0,
        clip_norm=1.0,
        mode="central",
        noise=SpyNoise(),
    )
    update_sum = np.array([0.6, 0.8, 0.0, 1.0], np.float32)  # 4 users took part, 10 were expected
    result = agg.aggregate(update_sum, count=4, unclipped_count=4)
    np.testing.assert_allclose(result.mean_update, update_sum / 10.0, rtol=1e-6)
    assert not np.allclose(result.mean_update, update_sum / 4.0)


@given(
    population=st.integers(1, 10_000),
    rate=st.floats(1e-3, 1.0),
    count=st.integers(0, 50),
    zeros=st.integers(0, 50),
    seed=st.integers(0, 2**32 - 1),
)
@settings(max_examples=60, deadline=None)
def test_mean_is_sum_over_qn_whatever_the_count_and_zero_updates(
    population: int, rate: float, count: int, zeros: int, seed: int
) -> None:
    rows = np.random.default_rng(seed).normal(size=(count, 5))
    rows /= np.maximum(1.0, np.linalg.norm(rows, axis=1, keepdims=True))
    agg = UserLevelDPAggregator(
        population=population,
        sample_rate=rate,
        noise_multiplier=0.0,
        clip_norm=1.0,
        mode="none",
        noise=SpyNoise(),
    )
    # users whose update is zero still count as taking part; they do not change the mean
    result = agg.aggregate(rows.sum(axis=0), count=count + zeros, unclipped_count=count)
    np.testing.assert_allclose(
        result.mean_update, rows.sum(axis=0) / (rate * population), rtol=1e-5, atol=1e-30
    )


@pytest.mark.parametrize("mode", ["central", "local", "none"])
def test_noise_is_added_only_in_central_mode(mode: Mode) -> None:
    spy = SpyNoise()
    agg = UserLevelDPAggregator(
        population=100,
        sample_rate=0.1,
        noise_multiplier=1.5,
        clip_norm=2.0,
        mode=mode,
        noise=spy,
    )
    result = agg.aggregate(np.ones(3), count=5, unclipped_count=0)
    assert spy.sample_stds == ([3.0] if mode == "central" else [])
    assert result.noise_std == (3.0 if mode == "central" else 0.0)
    assert result.update_noise_multiplier == (1.5 if mode == "central" else 0.0)
    assert result.noised_unclipped_fraction is None and result.next_clip_norm == result.clip_norm == 2.0
    assert agg.noise_source == spy.source


def test_oversized_sum_is_rejected_except_when_devices_noised_it() -> None:
    big = np.array([0.0, 30.0])  # 3 users clipped to 1 cannot sum to length 30
    for mode in ("central", "none"):
        agg = UserLevelDPAggregator(
            population=100,
            sample_rate=0.1,
            noise_multiplier=1.0,
            clip_norm=1.0,
            mode=mode,
            noise=SpyNoise(),
        )
        with pytest.raises(UpdateRejectedError):
            agg.aggregate(big, count=3, unclipped_count=3)
    local = UserLevelDPAggregator(
        population=100, sample_rate=0.1, noise_multiplier=1.0, clip_norm=1.0, mode="local", noise=SpyNoise()
    )
    np.testing.assert_allclose(local.aggregate(big, count=3, unclipped_count=0).mean_update, big / 10.0)
    with pytest.raises(UpdateRejectedError):
        local.aggregate(np.array([np.nan, 0.0]), count=3, unclipped_count=0)


@pytest.mark.parametrize(("count", "unclipped"), [(3, 4), (3, -1), (-1, 0)])
def test_impossible_counts_are_rejected(count: int, unclipped: int) -> None:
    agg = UserLevelDPAggregator(
        population=100, sample_rate=0.1, noise_multiplier=1.0, clip_norm=1.0, mode="central", noise=SpyNoise()
    )
    with pytest.raises(UpdateRejectedError):
        agg.aggregate(np.zeros(2), count=count, unclipped_count=unclipped)


def test_update_noise_multiplier_formula() -> None:
    assert update_noise_multiplier(noise_multiplier=1.0, count_stddev=1.0) == pytest.approx(
        1 / math.sqrt(0.75)
    )
    assert update_noise_multiplier(noise_multiplier=0.0, count_stddev=5.0) == 0.0
    with pytest.raises(ConfigError):
        update_noise_multiplier(noise_multiplier=1.0, count_stddev=0.5)


@given(z=st.floats(0.05, 20.0), ratio=st.floats(1.01, 1e4))
@settings(max_examples=60, deadline=None)
def test_update_and_count_noise_compose_to_z(z: float, ratio: float) -> None:
    count_stddev = ratio * z / 2.0  # 2 sigma_b > z
    z_update = update_noise_multiplier(noise_multiplier=z, count_stddev=count_stddev)
    assert z_update > z
    assert z_update**-2 + (2 * count_stddev) ** -2 == pytest.approx(z**-2, rel=1e-9)


def test_split_costs_what_the_single_gaussian_costs_in_an_independent_accountant() -> None:
    z, count_stddev = 1.1, 3.0
    z_update = update_noise_multiplier(noise_multiplier=z, count_stddev=count_stddev)
    split = rdp.RdpAccountant().compose(
        dp_accounting.ComposedDpEvent(
            [dp_accounting.GaussianDpEvent(z_update), dp_accounting.GaussianDpEvent(2 * count_stddev)]
        )
    )
    single = rdp.RdpAccountant().compose(dp_accounting.GaussianDpEvent(z))
    assert split.get_epsilon(1e-6) == pytest.approx(single.get_epsilon(1e-6), rel=1e-6)
    too_cheap = rdp.RdpAccountant().compose(
        dp_accounting.ComposedDpEvent(
            [dp_accounting.GaussianDpEvent(z), dp_accounting.GaussianDpEvent(2 * count_stddev)]
        )
    )
    assert too_cheap.get_epsilon(1e-6) > single.get_epsilon(1e-6) * 1.01  # not splitting would overspend


def adaptive_aggregator(
    noise: NoiseSource, *, mode: Mode = "central", quantile: float = 0.5, clip: float = 1.0
) -> UserLevelDPAggregator:
    return UserLevelDPAggregator(
        population=1_000,
        sample_rate=0.1,
        noise_multiplier=1.0,
        clip_norm=clip,
        mode=mode,
        noise=noise,
        adaptive=AdaptiveClipping(target_unclipped_quantile=quantile, clip_learning_rate=0.2),
    )


@pytest.mark.parametrize("mode", ["central", "none"])
def test_clip_norm_shrinks_when_too_many_are_unclipped_and_grows_when_too_few(mode: Mode) -> None:
    many, few = adaptive_aggregator(SpyNoise(), mode=mode), adaptive_aggregator(SpyNoise(), mode=mode)
    result = many.aggregate(np.zeros(2), count=100, unclipped_count=90)
    assert result.noised_unclipped_fraction == pytest.approx(0.9)
    assert result.next_clip_norm == pytest.approx(math.exp(-0.2 * 0.4)) and many.clip_norm < 1.0
    assert result.clip_norm == 1.0
    result = few.aggregate(np.zeros(2), count=100, unclipped_count=10)
    assert result.next_clip_norm == pytest.approx(math.exp(0.2 * 0.4)) and few.clip_norm > 1.0


@given(count=st.integers(1, 200), data=st.data())
@settings(max_examples=60, deadline=None)
def test_direction_follows_the_sign_of_b_minus_gamma(count: int, data: st.DataObject) -> None:
    unclipped = data.draw(st.integers(0, count))
    agg = adaptive_aggregator(SpyNoise(), mode="none", quantile=0.3)
    result = agg.aggregate(np.zeros(2), count=count, unclipped_count=unclipped)
    assert np.sign(result.next_clip_norm - 1.0) == -np.sign(round(unclipped / count - 0.3, 12))


def test_count_noise_default_and_the_split_it_forces() -> None:
    spy = SpyNoise()
    agg = adaptive_aggregator(spy)  # expected cohort 100 -> sigma_b = 5
    result = agg.aggregate(np.zeros(2), count=100, unclipped_count=50)
    assert spy.normal_stds == [5.0] and result.count_noise_std == 5.0
    z_update = (1.0 - 1.0 / 100.0) ** -0.5
    assert result.update_noise_multiplier == pytest.approx(z_update)
    assert spy.sample_stds == [pytest.approx(z_update * 1.0)]
    with pytest.raises(ConfigError):  # expected cohort 10 -> sigma_b 0.5 -> 2 sigma_b = z: no budget left
        UserLevelDPAggregator(
            population=100,
            sample_rate=0.1,
            noise_multiplier=1.0,
            clip_norm=1.0,
            mode="central",
            noise=spy,
            adaptive=AdaptiveClipping(),
        )


def test_centred_count_keeps_the_estimate_unbiased_when_the_cohort_is_small() -> None:
    # 50 users took part where 100 were expected, all unclipped: the true fraction is 1; the centred
    # estimator gives (50 - 25) / 100 + 0.5 = 0.75 (unbiased only on average over cohort sizes)
    result = adaptive_aggregator(SpyNoise()).aggregate(np.zeros(2), count=50, unclipped_count=50)
    assert result.noised_unclipped_fraction == pytest.approx(0.75)


@pytest.mark.parametrize(("draw", "clamped"), [(1_000.0, 1.0), (-1_000.0, 0.0)])
def test_noised_fraction_is_clamped_to_zero_one(draw: float, clamped: float) -> None:
    result = adaptive_aggregator(SpyNoise(count_draw=draw)).aggregate(
        np.zeros(2), count=100, unclipped_count=50
    )
    assert result.noised_unclipped_fraction == clamped
    assert result.next_clip_norm == pytest.approx(math.exp(-0.2 * (clamped - 0.5)))


@pytest.mark.parametrize(("quantile", "start"), [(0.5, 0.01), (0.8, 50.0)])
def test_clip_norm_converges_to_the_target_quantile(quantile: float, start: float) -> None:
    population, rate = 2_000, 0.1
    norms = np.random.default_rng(5).lognormal(mean=0.0, sigma=0.5, size=population)
    agg = UserLevelDPAggregator(
        population=population,
        sample_rate=rate,
        noise_multiplier=0.5,
        clip_norm=start,
        mode="central",
        noise=NumpyNoise(6),
        adaptive=AdaptiveClipping(target_unclipped_quantile=quantile),
    )
    rng, history = np.random.default_rng(7), []
    for _ in range(400):
        chosen = poisson_sample(population, sample_rate=rate, rng=rng)
        unclipped = int((norms[chosen] <= agg.clip_norm).sum())
        agg.aggregate(np.zeros(3), count=chosen.size, unclipped_count=unclipped)
        history.append(agg.clip_norm)
    final = float(np.exp(np.mean(np.log(history[-100:]))))
    assert float(np.mean(norms <= final)) == pytest.approx(quantile, abs=0.04)
    assert final == pytest.approx(float(np.quantile(norms, quantile)), rel=0.1)


def test_state_round_trips_and_bad_state_is_refused() -> None:
    first = adaptive_aggregator(NumpyNoise(1))
    for unclipped in (90, 80, 95):
        first.aggregate(np.zeros(2), count=100, unclipped_count=unclipped)
    second = adaptive_aggregator(NumpyNoise(1))
    assert second.clip_norm != first.clip_norm
    second.load_state_dict(first.state_dict())
    assert second.clip_norm == first.clip_norm
    for state in ({}, {"clip_norm": -1.0}, {"clip_norm": float("nan")}, {"clip_norm": "x"}):
        with pytest.raises(DataError):
            second.load_state_dict(state)
    assert second.clip_norm == first.clip_norm


@pytest.mark.parametrize(
    "kwargs",
    [
        {"population": 0},
        {"sample_rate": 0.0},
        {"sample_rate": 1.5},
        {"noise_multiplier": -1.0},
        {"noise_multiplier": float("inf")},
        {"clip_norm": 0.0},
        {"mode": "secret"},
        {"mode": "local", "adaptive": AdaptiveClipping()},
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, Any]) -> None:
    settings_: dict[str, Any] = {
        "population": 1_000,
        "sample_rate": 0.1,
        "noise_multiplier": 1.0,
        "clip_norm": 1.0,
        "mode": "central",
        "noise": SpyNoise(),
    }
    with pytest.raises(ConfigError):
        UserLevelDPAggregator(**{**settings_, **kwargs})


def test_adaptive_clipping_from_config() -> None:
    assert adaptive_from_config(PrivacyConfig()) is None
    adaptive = adaptive_from_config(
        PrivacyConfig(
            adaptive_clipping=True,
            target_unclipped_quantile=0.7,
            clip_learning_rate=0.3,
            clip_count_stddev=4.0,
        )
    )
    assert adaptive == AdaptiveClipping(
        target_unclipped_quantile=0.7, clip_learning_rate=0.3, count_stddev=4.0
    )
    assert adaptive.count_std(100.0) == 4.0 and AdaptiveClipping().count_std(100.0) == 5.0
    with pytest.raises(ConfigError):
        AdaptiveClipping(target_unclipped_quantile=1.0)


def test_the_result_reports_the_noise_drawn_and_the_divisor_used() -> None:
    spy = SpyNoise()
    agg = adaptive_aggregator(spy)  # central, sigma_b = 5, z_update = (1 - 1/100)^-1/2
    result = agg.aggregate(np.zeros(4), count=100, unclipped_count=50)
    assert result.noise_std == pytest.approx(spy.sample_stds[0]) and len(spy.sample_stds) == 1
    assert result.count_noise_std == spy.normal_stds[0] == 5.0
    assert result.divisor == agg.expected_cohort == 100.0


def test_a_sum_said_to_arrive_noised_reports_no_noise_drawn_here() -> None:
    # secure aggregation hands the sum over noised; the server draws nothing, and says so: a caller that
    # claims noise_in_sum on a clear sum cannot make the result report noise that was never drawn
    spy = SpyNoise()
    agg = UserLevelDPAggregator(
        population=100, sample_rate=0.1, noise_multiplier=1.5, clip_norm=2.0, mode="central", noise=spy
    )
    result = agg.aggregate(np.ones(3), count=5, unclipped_count=5, noise_in_sum=3.0)
    assert spy.sample_stds == [] and result.noise_std == 0.0 and result.count_noise_std == 0.0
    assert result.update_noise_multiplier == 1.5  # what was accounted is still reported, for the verifier
    np.testing.assert_allclose(result.mean_update, np.ones(3) / 10.0)


def test_recorded_noise_keeps_each_draw_until_taken() -> None:
    recorded = RecordedNoise(NumpyNoise(3))
    assert recorded.sample((5,), std=2.0).shape == (5,)
    recorded.sample((5,), std=1.5)
    recorded.normal(std=0.5)
    vectors, scalars = recorded.take()
    assert vectors == [Draw(5, 2.0), Draw(5, 1.5)] and scalars == [Draw(1, 0.5)]
    assert drawn_std(vectors, values=5) == pytest.approx(2.5) and drawn_std(vectors, values=4) == 0.0
    assert recorded.take() == ([], []) and recorded.source == NumpyNoise.source


def test_each_round_adds_fresh_noise() -> None:
    """Noise reused across rounds would cancel in differences of released models (and compose as one
    release, not as many): two rounds of zero updates must carry independent noise."""
    dim = 4_000
    aggregator = UserLevelDPAggregator(
        population=100, sample_rate=0.1, noise_multiplier=1.0, clip_norm=1.0, mode="central",
        noise=GaussianNoise(seed=3),
    )  # fmt: skip
    first, second = (
        aggregator.aggregate(np.zeros(dim), count=0, unclipped_count=0).mean_update for _ in range(2)
    )
    correlation = float(np.corrcoef(first, second)[0, 1])
    assert abs(correlation) < 5 / math.sqrt(dim)  # independent draws: |r| ~ 1/sqrt(dim)
