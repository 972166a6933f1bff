"""User-level accounting: golden values, independent cross-checks, properties, calibration, state (its
cost per round is a benchmark: simulation/benchmarks/bench_accountant.py)."""

from __future__ import annotations

import json
import math
import warnings

import dp_accounting
import pytest
from dp_accounting.pld import PLDAccountant
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.accountants import PRVAccountant

from shared.errors import ConfigError, DataError
from shared.privacy import accounting
from shared.privacy.accounting import (
    RoundEvent,
    UserLevelAccountant,
    calibrate_noise_multiplier,
    default_delta,
    json_epsilon,
    pld_epsilon,
    rdp_epsilon,
)

GOLDEN_PLD = [  # (sample_rate, noise_multiplier, rounds, epsilon at delta 1e-6), shared/NOTES.md
    (0.05, 1.0, 100, 4.11),
    (0.05, 1.0, 1000, 12.24),
    (0.01, 1.0, 1000, 2.13),
    (0.05, 2.0, 1000, 4.16),
]


def rounds(q: float, z: float, n: int) -> list[RoundEvent]:
    return [RoundEvent(sample_rate=q, noise_multiplier=z)] * n


def reference_pld(q: float, z: float, n: int, delta: float) -> float:
    """dp_accounting's PLD at its default (finer, 1e-4) discretisation."""
    event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z))
    return float(PLDAccountant().compose(dp_accounting.SelfComposedDpEvent(event, n)).get_epsilon(delta))


@pytest.mark.parametrize(("q", "z", "n", "golden"), GOLDEN_PLD)
def test_pld_golden_values(q: float, z: float, n: int, golden: float) -> None:
    # golden values are rounded to 2 decimals; the 1e-3 grid adds at most ~1e-3 on top
    assert pld_epsilon(rounds(q, z, n), delta=1e-6) == pytest.approx(golden, abs=0.006)


@pytest.mark.parametrize(("q", "z", "n", "golden"), GOLDEN_PLD[:2])
@pytest.mark.integration
def test_coarser_grid_stays_an_upper_bound_within_4e4_of_the_default_grid(
    q: float, z: float, n: int, golden: float
) -> None:
    ours, finer = pld_epsilon(rounds(q, z, n), delta=1e-6), reference_pld(q, z, n, 1e-6)
    assert finer <= ours <= finer * (1 + 4e-4)


def test_opacus_rdp_golden_value() -> None:
    assert rdp_epsilon(rounds(0.04, 1.5, 2250), delta=1e-5) == pytest.approx(7.3291, abs=1e-4)


@pytest.mark.parametrize(("q", "z", "n"), [(0.05, 1.0, 1000), (0.01, 0.8, 300), (0.1, 2.0, 50)])
@pytest.mark.integration
def test_pld_against_independent_accountants(q: float, z: float, n: int) -> None:
    ours = pld_epsilon(rounds(q, z, n), delta=1e-6)
    rdp_bound = dp_accounting.rdp.RdpAccountant().compose(
        dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), n
        )
    )
    assert rdp_bound.get_epsilon(1e-6) >= ours  # RDP is a valid but looser bound
    assert rdp_epsilon(rounds(q, z, n), delta=1e-6) >= ours
    prv = PRVAccountant()
    prv.history = [(z, q, n)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert prv.get_epsilon(delta=1e-6) == pytest.approx(ours, abs=0.05)


def test_no_rounds_is_zero_and_no_noise_is_infinite() -> None:
    assert pld_epsilon([], delta=1e-6) == 0.0 and rdp_epsilon([], delta=1e-6) == 0.0
    no_noise = [*rounds(0.05, 1.0, 3), RoundEvent(sample_rate=0.05, noise_multiplier=0.0)]
    assert pld_epsilon(no_noise, delta=1e-6) == math.inf
    assert rdp_epsilon(no_noise, delta=1e-6) == math.inf
    assert json_epsilon(math.inf) == "inf" and json_epsilon(1.5) == 1.5


@pytest.mark.integration
def test_different_rounds_compose_as_one_run_each() -> None:
    mixed = [*rounds(0.05, 1.0, 40), *rounds(0.02, 1.5, 60)]
    event = dp_accounting.ComposedDpEvent(
        [
            dp_accounting.SelfComposedDpEvent(
                dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), n
            )
            for q, z, n in [(0.05, 1.0, 40), (0.02, 1.5, 60)]
        ]
    )
    reference = PLDAccountant().compose(event).get_epsilon(1e-6)
    assert pld_epsilon(mixed, delta=1e-6) == pytest.approx(reference, rel=5e-4)
    assert pld_epsilon(mixed, delta=1e-6) > pld_epsilon(mixed[:40], delta=1e-6)


small_q = st.floats(min_value=0.005, max_value=0.2)
moderate_z = st.floats(min_value=0.7, max_value=4.0)


@settings(max_examples=15, deadline=None)
@given(q=small_q, z=moderate_z, n=st.integers(1, 300), extra=st.integers(1, 300))
@pytest.mark.integration
def test_epsilon_grows_with_rounds(q: float, z: float, n: int, extra: int) -> None:
    assert pld_epsilon(rounds(q, z, n), delta=1e-6) < pld_epsilon(rounds(q, z, n + extra), delta=1e-6)


@settings(max_examples=15, deadline=None)
@given(q=small_q, z=moderate_z, more=st.floats(min_value=0.05, max_value=3.0), n=st.integers(1, 300))
@pytest.mark.integration
def test_epsilon_shrinks_with_noise(q: float, z: float, more: float, n: int) -> None:
    assert pld_epsilon(rounds(q, z + more, n), delta=1e-6) < pld_epsilon(rounds(q, z, n), delta=1e-6)


@settings(max_examples=6, deadline=None)
@given(
    target=st.floats(min_value=0.5, max_value=10.0),
    q=st.floats(min_value=0.01, max_value=0.1),
    n=st.integers(1, 500),
)
@pytest.mark.integration
def test_calibration_round_trips_to_the_smallest_noise_within_the_target(
    target: float, q: float, n: int
) -> None:
    z = calibrate_noise_multiplier(target_epsilon=target, delta=1e-5, sample_rate=q, rounds=n)
    assert pld_epsilon(rounds(q, z, n), delta=1e-5) <= target
    assert pld_epsilon(rounds(q, z - 2e-3, n), delta=1e-5) > target  # smallest, to ~1e-3


def test_calibration_refuses_bad_arguments() -> None:
    with pytest.raises(ConfigError):
        calibrate_noise_multiplier(target_epsilon=0.0, delta=1e-5, sample_rate=0.05, rounds=10)
    with pytest.raises(ConfigError):
        calibrate_noise_multiplier(target_epsilon=1.0, delta=1e-5, sample_rate=0.05, rounds=0)


def test_default_delta_and_argument_checks() -> None:
    assert default_delta(10_000) == pytest.approx(10_000**-1.1, rel=1e-15)
    with pytest.raises(ConfigError):
        default_delta(1)
    for bad in (0.0, 1.0, -0.1, math.nan):
        with pytest.raises(ConfigError):
            pld_epsilon([], delta=bad)
    for q, z in [(0.0, 1.0), (1.5, 1.0), (0.1, -1.0), (0.1, math.inf)]:
        with pytest.raises(ConfigError):
            RoundEvent(sample_rate=q, noise_multiplier=z)


def test_user_level_accountant_records_and_predicts() -> None:
    acc = UserLevelAccountant(delta=1e-6)
    assert acc.spent() == {"pld": 0.0, "rdp": 0.0}
    event = RoundEvent(sample_rate=0.05, noise_multiplier=1.0)
    for _ in range(99):
        acc.record(event)
    predicted = acc.epsilon_if(event)
    acc.record(event)
    spent = acc.spent()
    assert spent["pld"] == predicted == pytest.approx(4.11, abs=0.006)
    assert spent["rdp"] > spent["pld"]


def test_accountant_state_survives_save_and_load() -> None:
    acc = UserLevelAccountant(delta=2e-6)
    for event in [*rounds(0.05, 1.0, 7), *rounds(0.03, 1.2, 5), *rounds(0.05, 1.0, 2)]:
        acc.record(event)
    state = json.loads(json.dumps(acc.to_dict()))
    loaded = UserLevelAccountant.from_dict(state)
    assert loaded.events == acc.events and loaded.delta == acc.delta
    assert loaded.spent() == acc.spent()
    assert len(state["runs"]) == 3


@pytest.mark.parametrize(
    "state",
    [
        {},
        {"format": 2, "delta": 1e-6, "runs": []},
        {"format": 1, "delta": 1e-6, "runs": [{"sample_rate": 0.1, "noise_multiplier": 1.0, "rounds": 0}]},
        {"format": 1, "delta": 1e-6, "runs": [{"sample_rate": 2.0, "noise_multiplier": 1.0, "rounds": 1}]},
        {"format": 1, "delta": "x", "runs": []},
    ],
)
def test_malformed_state_is_a_data_error(state: dict[str, object]) -> None:
    with pytest.raises(DataError):
        UserLevelAccountant.from_dict(state)


def test_versions_name_both_libraries() -> None:
    versions = UserLevelAccountant.versions()
    assert set(versions) == {"dp-accounting", "opacus"} and all(versions.values())


@settings(max_examples=12, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([0.01, 0.05, 0.3, 1.0]),
            st.floats(min_value=0.5, max_value=5.0),
            st.integers(min_value=1, max_value=600),
        ),
        min_size=1,
        max_size=3,
    )
)
@pytest.mark.integration
def test_cached_composition_is_exactly_what_the_libraries_accountants_compute(runs_spec) -> None:  # type: ignore[no-untyped-def]
    # the one-round PLD and RDP are kept between calls; the composed result must not change by a bit
    events = [e for q, z, n in runs_spec for e in rounds(q, z, n)]
    runs = accounting._runs(events)
    library_pld = accounting._pld_accountant().compose(accounting._dp_event(runs)).get_epsilon(1e-6)
    library_rdp = accounting._rdp_accountant()
    library_rdp.history = [(e.noise_multiplier, e.sample_rate, n) for e, n in runs]
    for _ in range(2):  # the second time from the kept one-round PLDs and RDPs
        accounting._pld_epsilon_of_runs.cache_clear()
        accounting._rdp_epsilon_of_runs.cache_clear()
        assert pld_epsilon(events, delta=1e-6) == library_pld
        assert rdp_epsilon(events, delta=1e-6) == library_rdp.get_epsilon(delta=1e-6)
