"""The noise multiplier a run's configuration gives its training rounds: `privacy.noise_multiplier`, or the
smallest z that keeps the configured rounds and trending releases within the target epsilon. One function
for both sides: the server plans its rounds with it (server/rounds/privacy_plan.py) and each node pins the z
it accepts with it (client/training/own_privacy.py), so the two agree by construction."""

from __future__ import annotations

import functools

from shared.config import FedhomeConfig
from shared.privacy.accounting import RoundEvent, calibrate_noise_multiplier, default_delta


def planned_delta(config: FedhomeConfig, population: int) -> float:
    """`privacy.delta`, or N^-1.1 for a population of N users."""
    return config.privacy.delta or default_delta(population)


def planned_noise_multiplier(config: FedhomeConfig, population: int) -> float:
    """z of every training round (0 in mode "none"): the configured one, or calibrated for the target
    epsilon over `federated.rounds` rounds at `federated.sample_rate`, the trending releases included (fixed
    events the target covers too), at `planned_delta`."""
    privacy, federated, trending = config.privacy, config.federated, config.trending
    if privacy.mode == "none":
        return 0.0
    if privacy.noise_multiplier > 0:
        return float(privacy.noise_multiplier)
    release = RoundEvent(sample_rate=trending.sample_rate, noise_multiplier=trending.noise_multiplier)
    releases = (release,) * trending.releases(federated.rounds)
    delta = planned_delta(config, population)
    return _calibrated(privacy.target_epsilon, delta, federated.sample_rate, federated.rounds, releases)


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
