"""The server's user-level DP strategy: Poisson sampling, noised averaging, adaptive clipping, optimisers."""

from __future__ import annotations

from server.strategy.aggregator import (
    AdaptiveClipping,
    NoisedAggregate,
    NoiseSource,
    UserLevelDPAggregator,
    adaptive_from_config,
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
from server.strategy.poisson_sampling import check_update_sum, check_update_values, poisson_sample

__all__ = [
    "AdaptiveClipping",
    "CosineSchedule",
    "FedAdamOptimizer",
    "FedAvgMOptimizer",
    "FedAvgOptimizer",
    "NoiseSource",
    "NoisedAggregate",
    "ServerOptimizer",
    "UserLevelDPAggregator",
    "adaptive_from_config",
    "check_update_sum",
    "check_update_values",
    "make_server_optimizer",
    "poisson_sample",
    "update_noise_multiplier",
]
