"""When a federated run makes the popularity prior's DP count release (PopularityReleaseConfig,
FedhomeConfig.runs_popularity_release), and that the one calibration of the training z covers it: the z it
gives, composed with the release (and the start check) by dp_accounting directly, stays within the target."""

from __future__ import annotations

import dp_accounting
import pytest

from shared.config import FedhomeConfig, with_overrides
from shared.errors import ConfigError
from shared.privacy.accounting import RoundEvent, calibrate_noise_multiplier
from shared.privacy.planned_noise import (
    planned_delta,
    planned_fixed_events,
    planned_noise_multiplier,
    popularity_release_event,
)

ROUNDS, Q, TARGET, N = 20, 0.1, 6.0, 1000


def config(**overrides: str) -> FedhomeConfig:
    """A run with the model's popularity prior on, its release on "auto", the start check off; "__" for "."
    in keys."""
    base = {
        "model.popularity_prior": "true",
        "popularity.enabled": "auto",
        "federated.rounds": str(ROUNDS),
        "federated.sample_rate": str(Q),
        "privacy.target_epsilon": str(TARGET),
        "start_check.enabled": "off",
    }
    flat = {**base, **{key.replace("__", "."): value for key, value in overrides.items()}}
    result: FedhomeConfig = with_overrides(FedhomeConfig(), flat)
    return result


def test_auto_releases_in_central_mode_at_a_target_epsilon_of_at_least_min_epsilon() -> None:
    assert config().runs_popularity_release and config().popularity_release_note == ""
    assert config(privacy__target_epsilon="4").runs_popularity_release  # min_epsilon 4 itself
    low = config(privacy__target_epsilon="3.5")
    assert not low.runs_popularity_release and "min_epsilon" in low.popularity_release_note
    assert config(privacy__target_epsilon="3.5", popularity__min_epsilon="3").runs_popularity_release
    assert config(privacy__target_epsilon="1", popularity__enabled="on").runs_popularity_release  # forced
    # mode "none": no noise, no budget, whatever the target
    assert config(privacy__mode="none", privacy__target_epsilon="1").runs_popularity_release


@pytest.mark.parametrize(
    ("overrides", "why"),
    [
        ({"privacy__mode": "local"}, "local"),
        ({"privacy__secure_aggregation": "true"}, "secure aggregation"),
        ({"popularity__enabled": "off"}, "'off'"),
    ],
)
def test_auto_leaves_it_off_with_a_note_where_it_cannot_run(overrides: dict[str, str], why: str) -> None:
    cfg = config(**overrides)
    assert not cfg.runs_popularity_release and why in cfg.popularity_release_note
    assert planned_fixed_events(cfg) == ()


def test_without_the_models_prior_there_is_no_release_and_no_note() -> None:
    cfg = config(model__popularity_prior="false")
    assert not cfg.runs_popularity_release and cfg.popularity_release_note == ""
    # the default: the model has a prior (central runs count it) but federated runs make no release
    assert not FedhomeConfig().runs_popularity_release
    assert "popularity.enabled = 'off'" in FedhomeConfig().popularity_release_note


@pytest.mark.parametrize(
    ("overrides", "why"),
    [
        ({"privacy__mode": "local"}, "local"),
        ({"privacy__secure_aggregation": "true"}, "secure aggregation"),
        ({"model__popularity_prior": "false"}, "popularity_prior = false"),
    ],
)
def test_on_is_a_config_error_where_it_cannot_run(overrides: dict[str, str], why: str) -> None:
    with pytest.raises(ConfigError, match=f"popularity.enabled = 'on', but .*{why}"):
        config(popularity__enabled="on", **overrides)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("enabled", "maybe"),
        ("sample_rate", "0"),
        ("sample_rate", "1.5"),
        ("noise_multiplier", "0"),
        ("noise_multiplier", "inf"),
        ("window_days", "-1"),
        ("min_epsilon", "-1"),
    ],
)
def test_bad_settings_are_config_errors(key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"popularity.{key}"):
        config(**{f"popularity__{key}": value})


def test_the_release_event_is_q_p_z_p_and_noiseless_in_mode_none() -> None:
    cfg = config(popularity__noise_multiplier="3", popularity__sample_rate="0.5")
    assert popularity_release_event(cfg) == RoundEvent(sample_rate=0.5, noise_multiplier=3.0)
    assert popularity_release_event(config(privacy__mode="none")).noise_multiplier == 0.0
    assert planned_fixed_events(cfg) == (RoundEvent(sample_rate=0.5, noise_multiplier=3.0),)


def independent_epsilon(z: float, releases: list[tuple[float, float]], *, delta: float) -> float:
    """PLD epsilon of ROUNDS training rounds at (Q, z) and the fixed `releases` (q, z), built and composed
    with dp_accounting alone."""
    train = dp_accounting.PoissonSampledDpEvent(Q, dp_accounting.GaussianDpEvent(z))
    events: list[dp_accounting.DpEvent] = [dp_accounting.SelfComposedDpEvent(train, ROUNDS)]
    for q, z_r in releases:
        gaussian = dp_accounting.GaussianDpEvent(z_r)
        events.append(gaussian if q == 1.0 else dp_accounting.PoissonSampledDpEvent(q, gaussian))
    accountant = dp_accounting.pld.PLDAccountant()
    accountant.compose(dp_accounting.ComposedDpEvent(events))
    return float(accountant.get_epsilon(delta))


@pytest.mark.parametrize("q_p", [1.0, 0.5])
def test_the_calibrated_z_covers_the_release(q_p: float) -> None:
    cfg = config(popularity__noise_multiplier="3", popularity__sample_rate=str(q_p))
    z, delta = planned_noise_multiplier(cfg, N), planned_delta(cfg, N)
    assert independent_epsilon(z, [(q_p, 3.0)], delta=delta) <= TARGET
    assert independent_epsilon(z * 0.99, [(q_p, 3.0)], delta=delta) > TARGET  # and not more than needed
    assert independent_epsilon(z, [], delta=delta) < TARGET * 0.995  # training alone: less


def test_the_calibration_covers_the_release_with_the_start_check_and_not_when_it_is_off() -> None:
    both = config(
        popularity__noise_multiplier="3", start_check__enabled="auto", start_check__noise_multiplier="4"
    )
    z, delta = planned_noise_multiplier(both, N), planned_delta(both, N)
    assert independent_epsilon(z, [(1.0, 3.0), (1.0, 4.0)], delta=delta) <= TARGET
    assert independent_epsilon(z * 0.99, [(1.0, 3.0), (1.0, 4.0)], delta=delta) > TARGET
    alone = calibrate_noise_multiplier(target_epsilon=TARGET, delta=delta, sample_rate=Q, rounds=ROUNDS)
    off = config(popularity__enabled="off")
    assert planned_noise_multiplier(off, N) == alone < planned_noise_multiplier(config(), N)
