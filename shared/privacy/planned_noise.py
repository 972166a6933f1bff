"""The noise multiplier a run's configuration gives its training rounds: `privacy.noise_multiplier`, or the
smallest z that keeps the configured rounds, the popularity prior's count release, the trending releases and
the start check within the target epsilon. One function for both sides: the server plans its rounds with it
(server/rounds/privacy_plan.py) and each node pins the z it accepts with it (client/training/own_privacy.py),
so the two agree by construction. The start check's and the popularity release's own events
(`start_check_event`, `popularity_release_event`) are defined here too, so the server accounts exactly the
events the calibration planned for."""

from __future__ import annotations

import functools

from shared.config import FedhomeConfig
from shared.privacy.accounting import RoundEvent, calibrate_noise_multiplier, default_delta


def planned_delta(config: FedhomeConfig, population: int) -> float:
    """`privacy.delta`, or N^-1.1 for a population of N users."""
    return config.privacy.delta or default_delta(population)


def start_check_event(config: FedhomeConfig) -> RoundEvent:
    """RoundEvent(q_s, z_s) of the start check (server/rounds/start_check.py): a Poisson-subsampled Gaussian
    sum of per-user gains of sensitivity 1; z_s = 0 in privacy mode "none" (no noise, no budget)."""
    check = config.start_check
    z = 0.0 if config.privacy.mode == "none" else check.noise_multiplier
    return RoundEvent(sample_rate=check.sample_rate, noise_multiplier=z)


def popularity_release_event(config: FedhomeConfig) -> RoundEvent:
    """RoundEvent(q_p, z_p) of the popularity prior's count release (server/trending/popularity_release.py):
    a Poisson-subsampled Gaussian sum of per-user vectors of L2 norm <= 1; z_p = 0 in privacy mode "none"."""
    popularity = config.popularity
    z = 0.0 if config.privacy.mode == "none" else popularity.noise_multiplier
    return RoundEvent(sample_rate=popularity.sample_rate, noise_multiplier=z)


def planned_fixed_events(config: FedhomeConfig) -> tuple[RoundEvent, ...]:
    """The run's planned releases besides its training rounds, each with its own fixed parameters: when it
    runs, the popularity prior's count release (before round 1), the trending releases
    (`TrendingConfig.releases` of them) and, when it runs, the start check."""
    trending, rounds = config.trending, config.federated.rounds
    prior = (popularity_release_event(config),) if config.runs_popularity_release else ()
    release = RoundEvent(sample_rate=trending.sample_rate, noise_multiplier=trending.noise_multiplier)
    check = (start_check_event(config),) if config.runs_start_check else ()
    return prior + (release,) * trending.releases(rounds) + check


def planned_noise_multiplier(config: FedhomeConfig, population: int) -> float:
    """z of every training round (0 in mode "none"): the configured one, or calibrated for the target
    epsilon over `federated.rounds` rounds at `federated.sample_rate`, the popularity release, the trending
    releases and the start check included (`planned_fixed_events`: fixed events the target covers too), at
    `planned_delta`."""
    privacy, federated = config.privacy, config.federated
    if privacy.mode == "none":
        return 0.0
    if privacy.noise_multiplier > 0:
        return float(privacy.noise_multiplier)
    delta = planned_delta(config, population)
    fixed = planned_fixed_events(config)
    return _calibrated(privacy.target_epsilon, delta, federated.sample_rate, federated.rounds, fixed)


@functools.lru_cache(maxsize=16)
def _calibrated(
    target_epsilon: float, delta: float, sample_rate: float, rounds: int, releases: tuple[RoundEvent, ...]
) -> float:
    return calibrate_noise_multiplier(
        target_epsilon=target_epsilon,
        delta=delta,
        sample_rate=sample_rate,
        rounds=rounds,
        fixed_events=list(releases),
    )
