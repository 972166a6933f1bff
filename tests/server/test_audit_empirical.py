"""The empirical-privacy statistics against independent implementations and known Gaussian mechanisms."""

from __future__ import annotations

import math

import numpy as np
import pytest
from dp_accounting.pld import privacy_loss_distribution as pld
from scipy import stats

from server.audit import empirical
from server.audit.empirical import GaussianFit
from shared.errors import ConfigError


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0])
@pytest.mark.integration
def test_gaussian_pair_epsilon_matches_dp_accounting(sigma: float) -> None:
    expected = pld.from_gaussian_mechanism(
        standard_deviation=sigma, sensitivity=1.0, value_discretization_interval=1e-4
    ).get_epsilon_for_delta(1e-5)
    closed = empirical.gaussian_pair_epsilon(GaussianFit(1, sigma), GaussianFit(0, sigma), delta=1e-5)
    # unequal-variance (numerical) path with a negligible difference in std
    grid = empirical.gaussian_pair_epsilon(
        GaussianFit(1, sigma * (1 + 1e-7)), GaussianFit(0, sigma), delta=1e-5
    )
    assert closed == pytest.approx(expected, rel=1e-4)
    assert grid == pytest.approx(expected, rel=1e-4)


def test_unequal_variances_cost_privacy_even_with_equal_means() -> None:
    same = empirical.gaussian_pair_epsilon(GaussianFit(0, 1), GaussianFit(0, 1), delta=1e-5)
    wider = empirical.gaussian_pair_epsilon(GaussianFit(0, 2), GaussianFit(0, 1), delta=1e-5)
    assert same == 0.0
    assert wider > 0.5


def test_clopper_pearson_matches_scipy_exact_interval() -> None:
    for failures, trials in [(0, 250), (3, 250), (40, 100)]:
        interval = stats.binomtest(failures, trials).proportion_ci(confidence_level=0.9, method="exact")
        upper = empirical.clopper_pearson_upper(failures, trials, alpha=0.05)
        assert upper == pytest.approx(interval.high, rel=1e-9)
    assert empirical.clopper_pearson_upper(5, 5, alpha=0.05) == 1.0


def test_one_run_p_value_without_delta_is_the_binomial_tail() -> None:
    p = empirical.one_run_p_value(1000, 100, 80, epsilon=1.0, delta=0.0)
    assert p == pytest.approx(stats.binom.sf(79, 100, 1 / (1 + math.exp(-1.0))))
    assert empirical.one_run_p_value(1000, 100, 80, epsilon=1.0, delta=1e-6) > p


def test_perfect_separation_gives_the_largest_bounds_the_canary_count_allows() -> None:
    rng = np.random.default_rng(1)
    inserted = rng.random(1000) < 0.5
    scores = rng.normal(size=1000) + 20 * inserted
    threshold = empirical.threshold_lower_bound(scores, inserted, delta=1e-5)
    one_run = empirical.one_run_lower_bound(scores, inserted, delta=1e-5)
    # 250 test canaries of each kind, no error: FPR <= 1 - 0.025^(1/250) ~ 0.0147
    assert threshold == pytest.approx(math.log((1 - 1e-5) / (1 - 0.025 ** (1 / 250))), rel=0.05)
    assert 3.0 < one_run < 8.0
    assert empirical.gaussian_fit_epsilon(scores, inserted, delta=1e-5) > 20


@pytest.mark.parametrize("seed", range(5))
def test_lower_bounds_stay_below_the_true_epsilon_of_a_gaussian_mechanism(seed: int) -> None:
    """Scores of a Gaussian mechanism with sensitivity/sigma = 1: true epsilon 4.38 at delta 1e-5."""
    true_epsilon = empirical.gaussian_pair_epsilon(GaussianFit(1, 1), GaussianFit(0, 1), delta=1e-5)
    rng = np.random.default_rng(100 + seed)
    inserted = rng.random(2000) < 0.5
    scores = rng.normal(size=2000) + inserted
    assert empirical.threshold_lower_bound(scores, inserted, delta=1e-5, seed=seed) < true_epsilon
    assert empirical.one_run_lower_bound(scores, inserted, delta=1e-5) < true_epsilon
    estimate = empirical.gaussian_fit_epsilon(scores, inserted, delta=1e-5)
    assert estimate == pytest.approx(true_epsilon, rel=0.35)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ConfigError):
        empirical.gaussian_fit_epsilon(np.zeros(3), np.array([True, False, True]), delta=1e-5)
    with pytest.raises(ConfigError):
        empirical.threshold_lower_bound(np.array([np.nan, 0, 1, 2]), np.array([1, 1, 0, 0], bool), delta=1e-5)
    with pytest.raises(ConfigError):
        empirical.gaussian_pair_epsilon(GaussianFit(1, 1), GaussianFit(0, 1), delta=0.0)


@pytest.mark.parametrize("m", [200, 1200])
def test_attainable_bound_is_the_one_run_bound_of_perfectly_separated_canaries(m: int) -> None:
    rng = np.random.default_rng(m)
    inserted = rng.random(m) < 0.5
    scores = rng.normal(size=m) + 50 * inserted
    attainable = empirical.attainable_one_run_bound(m, int(inserted.sum()), delta=1e-5)
    assert attainable == pytest.approx(empirical.one_run_lower_bound(scores, inserted, delta=1e-5))
    assert attainable < 5.0  # 1,200 canaries cannot certify epsilon 8, whatever the mechanism


@pytest.mark.integration
def test_canaries_for_power_is_the_smallest_count_whose_attainable_bound_beats_the_claim() -> None:
    def delta_for(m: int) -> float:
        return 1e-6

    m = empirical.canaries_for_power(3.0, delta_for=delta_for, max_canaries=100_000)
    assert m is not None
    assert empirical.attainable_one_run_bound(m, m // 2, delta=1e-6) > 3.0
    smaller = int(m / 1.06)
    assert empirical.attainable_one_run_bound(smaller, smaller // 2, delta=1e-6) <= 3.0
    # the 2 m delta term: with a large delta no count has the power
    assert empirical.canaries_for_power(8.0, delta_for=lambda m: 1e-3, max_canaries=100_000) is None
