"""How a training round's updates reach the coordinator: each node's sum in the clear
(server/rounds/messaging.py) or, with `privacy.secure_aggregation`, only their noised sum
(server/secagg/secure_round.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from server.rounds.messaging import TrainReplies, train_round
from server.secagg.secure_round import DiscreteNoise, SecureReplies, SecureSettings, secure_train_round

if TYPE_CHECKING:
    from server.rounds.coordinator import Coordinator


def collect_updates(
    coordinator: Coordinator, grid: Any, round_number: int, cohort: np.ndarray
) -> tuple[TrainReplies, SecureReplies | None]:
    """The round's summed updates from the nodes of `cohort`: in the clear per node, or by secure
    aggregation (then also what it recorded)."""
    privacy, plan = coordinator.config.privacy, coordinator.plan
    assignment = coordinator.population.split(cohort)
    settings = coordinator.round_settings(round_number)
    params, clip_norm = coordinator.state.params, coordinator.aggregator.clip_norm
    if privacy.secure_aggregation:
        secure = secure_train_round(
            grid,
            assignment,
            params,
            settings,
            clip_norm=clip_norm,
            secure=secure_settings(coordinator, plan.noise_multiplier),
            record_level=privacy.record_level,
        )
        return secure.replies, secure
    replies = train_round(
        grid,
        assignment,
        params,
        settings,
        clip_norm=clip_norm,
        check_norm=plan.mode != "local",
        timeout_s=coordinator.config.federated.node_timeout_s,
        record_level=privacy.record_level,
    )
    return replies, None


def secure_settings(
    coordinator: Coordinator, noise_multiplier: float, noise: DiscreteNoise | None = None
) -> SecureSettings:
    """Secure aggregation's settings for a round whose sum gets `noise_multiplier` (0 unless the run is in
    central mode), noised from `noise` (default: the run's round noise)."""
    privacy, mode = coordinator.config.privacy, coordinator.plan.mode
    return SecureSettings(
        mode=mode,
        noise_multiplier=noise_multiplier if mode == "central" else 0.0,
        noise=noise or coordinator.noise,
        neighbourhood=privacy.secagg_neighbours,
        step=privacy.secagg_step,
        timeout_s=coordinator.config.federated.node_timeout_s,
    )
