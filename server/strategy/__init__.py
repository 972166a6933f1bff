"""The server's user-level DP strategy: Poisson sampling, noised averaging, adaptive clipping, optimisers."""

from __future__ import annotations

from server.strategy.aggregator import (
    AdaptiveClipping,
    Draw,
    NoisedAggregate,
    NoiseSource,
    RecordedNoise,
    UserLevelDPAggregator,
    adaptive_from_config,
    drawn_std,
    update_noise_multiplier,
)
from server.strategy.optimizers import (
    CosineSchedule,
    FedAdamOptimizer,
    FedAvgMOptimizer,
    FedAvgOptimizer,
    ServerOptimizer,
    make_server_optimizer,
)
from server.strategy.poisson_sampling import (
    CohortSample,
    check_update_sum,
    check_update_values,
    poisson_cohort,
    poisson_sample,
)

__all__ = [
    "AdaptiveClipping",
    "CohortSample",
    "CosineSchedule",
    "Draw",
    "FedAdamOptimizer",
    "FedAvgMOptimizer",
    "FedAvgOptimizer",
    "NoiseSource",
    "NoisedAggregate",
    "RecordedNoise",
    "ServerOptimizer",
    "UserLevelDPAggregator",
    "adaptive_from_config",
    "check_update_sum",
    "check_update_values",
    "drawn_std",
    "make_server_optimizer",
    "poisson_cohort",
    "poisson_sample",
    "update_noise_multiplier",
]
