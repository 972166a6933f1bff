"""The one calibration of a run's training z (shared/privacy/planned_noise.py) covers the start check: the z
it gives, composed with the check's event by dp_accounting directly (not through fedhome's accounting),
stays within the target epsilon and close to it; with the check off, the z is the one without it."""

from __future__ import annotations

import dp_accounting
import pytest

from shared.config import FedhomeConfig, with_overrides
from shared.privacy.accounting import calibrate_noise_multiplier
from shared.privacy.planned_noise import planned_delta, planned_fixed_events, planned_noise_multiplier

ROUNDS, Q, TARGET, N = 20, 0.1, 3.0, 1000


def config(**overrides: str) -> FedhomeConfig:
    base = {
        "federated.rounds": str(ROUNDS),
        "federated.sample_rate": str(Q),
        "privacy.target_epsilon": str(TARGET),
    }
    flat = {**base, **{key.replace("__", "."): value for key, value in overrides.items()}}
    result: FedhomeConfig = with_overrides(FedhomeConfig(), flat)
    return result


def independent_epsilon(z: float, *, q_s: float | None, z_s: float, delta: float) -> float:
    """PLD epsilon of ROUNDS training rounds at (Q, z) and, unless q_s is None, the start check (q_s, z_s),
    built and composed with dp_accounting alone (dp_accounting's default, finer discretisation)."""
    train = dp_accounting.PoissonSampledDpEvent(Q, dp_accounting.GaussianDpEvent(z))
    events: list[dp_accounting.DpEvent] = [dp_accounting.SelfComposedDpEvent(train, ROUNDS)]
    if q_s is not None:
        check = dp_accounting.GaussianDpEvent(z_s)
        events.append(check if q_s == 1.0 else dp_accounting.PoissonSampledDpEvent(q_s, check))
    accountant = dp_accounting.pld.PLDAccountant()
    accountant.compose(dp_accounting.ComposedDpEvent(events))
    return float(accountant.get_epsilon(delta))


@pytest.mark.parametrize("q_s", [1.0, 0.5])
def test_the_calibrated_z_covers_the_start_check(q_s: float) -> None:
    with_check = config(start_check__noise_multiplier="3", start_check__sample_rate=str(q_s))
    assert with_check.runs_start_check  # "auto" in central mode
    z, delta = planned_noise_multiplier(with_check, N), planned_delta(with_check, N)
    assert independent_epsilon(z, q_s=q_s, z_s=3.0, delta=delta) <= TARGET
    assert independent_epsilon(z * 0.99, q_s=q_s, z_s=3.0, delta=delta) > TARGET  # and not more than needed
    assert independent_epsilon(z, q_s=None, z_s=3.0, delta=delta) < TARGET * 0.99  # training alone: less


def test_without_the_check_the_z_is_the_one_calibrated_for_training_alone() -> None:
    with_check, delta = config(start_check__noise_multiplier="3"), planned_delta(config(), N)
    alone = calibrate_noise_multiplier(target_epsilon=TARGET, delta=delta, sample_rate=Q, rounds=ROUNDS)
    for off in (config(start_check__enabled="off"), config(privacy__mode="local")):  # off, or cannot run
        assert not off.runs_start_check and planned_fixed_events(off) == ()
        assert planned_noise_multiplier(off, N) == alone
    assert planned_noise_multiplier(with_check, N) > alone * 1.01
    assert planned_noise_multiplier(config(privacy__mode="none"), N) == 0.0
