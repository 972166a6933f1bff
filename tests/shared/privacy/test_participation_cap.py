"""Accounting under a participation cap: the cap bound against independent computations, and min(bounds)."""

from __future__ import annotations

import math

import dp_accounting
import pytest
from scipy.optimize import brentq
from scipy.stats import norm

from shared.errors import ConfigError, DataError
from shared.privacy.accounting import RoundEvent, UserLevelAccountant, pld_epsilon
from shared.privacy.capped_accounting import (
    CappedAccountant,
    accountant_from_dict,
    cap_bound,
    cap_events,
    individual_epsilon,
    make_accountant,
)

DELTA = 1e-5


def training(q: float = 0.05, z: float = 1.0) -> RoundEvent:
    return RoundEvent(sample_rate=q, noise_multiplier=z, capped=True)


def analytic_gaussian_epsilon(z: float, k: int, delta: float) -> float:
    """Balle & Wang (2018): k Gaussian mechanisms of noise z (sensitivity 1) compose to one with mu =
    sqrt(k) / z, and delta(eps) = Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2) exactly."""
    mu = math.sqrt(k) / z
    return float(
        brentq(
            lambda e: norm.cdf(-e / mu + mu / 2) - math.exp(e) * norm.cdf(-e / mu - mu / 2) - delta, 0, 500
        )
    )


@pytest.mark.parametrize(("z", "k"), [(1.0, 3), (0.8, 10), (2.0, 50)])
@pytest.mark.integration
def test_cap_bound_equals_independent_dp_accounting_and_the_exact_gaussian(z: float, k: int) -> None:
    events = [training(z=z)] * 200
    ours = cap_bound(events, segment_starts=[0], cap=k, delta=DELTA)
    pld = dp_accounting.pld.PLDAccountant(
        neighboring_relation=dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
    )  # the library's default grid, not ours
    pld.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(z), k))
    assert ours["pld"] == pytest.approx(pld.get_epsilon(DELTA), rel=1e-3)
    assert ours["pld"] == pytest.approx(analytic_gaussian_epsilon(z, k, DELTA), rel=1e-3)
    assert ours["pld"] >= analytic_gaussian_epsilon(z, k, DELTA) * (1 - 1e-9)  # an upper bound
    rdp = dp_accounting.rdp.RdpAccountant()
    rdp.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(z), k))
    assert ours["rdp"] == pytest.approx(rdp.get_epsilon(DELTA), rel=0.05)  # Opacus vs dp_accounting orders
    assert ours["rdp"] >= ours["pld"]


def test_a_small_cap_binds_and_a_large_one_leaves_the_poisson_bound() -> None:
    rounds = [training(q=0.5, z=1.0)] * 40
    small = CappedAccountant(delta=DELTA, participation_cap=2)
    large = CappedAccountant(delta=DELTA, participation_cap=40)
    plain = UserLevelAccountant(delta=DELTA)
    for event in rounds:
        small.record(event)
        large.record(event)
        plain.record(event)
    poisson = plain.spent()
    assert small.binding() == "cap" and small.spent()["pld"] < poisson["pld"]
    assert small.spent()["pld"] == pytest.approx(analytic_gaussian_epsilon(1.0, 2, DELTA), rel=1e-3)
    assert small.spent()["rdp"] < poisson["rdp"]
    assert large.binding() == "poisson" and large.spent() == poisson
    assert large.bounds()["cap"]["pld"] > poisson["pld"]


@pytest.mark.integration
def test_the_budget_check_lets_a_capped_run_go_further() -> None:
    def rounds_within(accountant: UserLevelAccountant, budget: float) -> int:
        n = 0
        while n < 200 and accountant.epsilon_if(training(q=0.5, z=1.5)) <= budget:
            accountant.record(training(q=0.5, z=1.5))
            n += 1
        return n

    plain = rounds_within(UserLevelAccountant(delta=DELTA), 6.0)
    capped = rounds_within(CappedAccountant(delta=DELTA, participation_cap=3), 6.0)
    assert plain < capped == 200  # 3 Gaussian rounds at z 1.5 cost ~5.3 < 6: the cap bound never grows


def test_each_resume_segment_allows_k_more_rounds_and_uncapped_rounds_stay_poisson() -> None:
    trending = RoundEvent(sample_rate=0.3, noise_multiplier=5.0)  # not limited by the cap
    events = [training(), training(), training(), trending, training(), training()]
    worst = cap_events(events, segment_starts=[0, 4], cap=2)
    assert sorted(e.sample_rate for e in worst) == [0.3, 1.0, 1.0, 1.0, 1.0]
    assert [e for e in worst if e.sample_rate == 0.3] == [trending]
    accountant = CappedAccountant(delta=DELTA, participation_cap=2)
    for event in events[:4]:
        accountant.record(event)
    one_segment = accountant.bounds()["cap"]["pld"]
    accountant.new_segment()
    accountant.new_segment()  # a second resume without a round in between adds nothing
    for event in events[4:]:
        accountant.record(event)
    assert accountant.segment_starts == [0, 4]
    assert (
        accountant.bounds()["cap"]["pld"] == pytest.approx(pld_epsilon(worst, delta=DELTA), rel=1e-12)
        and accountant.bounds()["cap"]["pld"] > one_segment
    )


def test_the_smallest_noise_multipliers_are_the_worst_case() -> None:
    events = [training(z=2.0), training(z=0.9), training(z=1.5)]
    worst = cap_events(events, segment_starts=[0], cap=2)
    assert sorted(e.noise_multiplier for e in worst) == [0.9, 1.5]


def test_state_survives_save_and_load_and_bad_state_is_refused() -> None:
    accountant = make_accountant(delta=DELTA, participation_cap=2)
    assert isinstance(accountant, CappedAccountant)
    for event in [training(), RoundEvent(sample_rate=1.0, noise_multiplier=10.0), training()]:
        accountant.record(event)
    accountant.new_segment()
    accountant.record(training())
    loaded = accountant_from_dict(accountant.to_dict())
    assert isinstance(loaded, CappedAccountant)
    assert loaded.events == accountant.events and loaded.segment_starts == [0, 3]
    assert loaded.bounds() == accountant.bounds()
    assert type(make_accountant(delta=DELTA, participation_cap=0)) is UserLevelAccountant
    state = accountant.to_dict() | {"segment_starts": [2, 1]}
    with pytest.raises(DataError):
        accountant_from_dict(state)
    with pytest.raises(ConfigError):
        CappedAccountant(delta=DELTA, participation_cap=0)


def test_individual_bound_is_the_cap_bound_of_that_many_rounds() -> None:
    assert individual_epsilon([], delta=DELTA) == 0.0
    three = individual_epsilon([1.0, 1.0, 1.0], delta=DELTA)
    assert three == pytest.approx(analytic_gaussian_epsilon(1.0, 3, DELTA), rel=1e-3)
    assert individual_epsilon([1.0], delta=DELTA) < three
