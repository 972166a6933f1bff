"""How a training round's updates reach the coordinator: each node's sum in the clear
(server/rounds/messaging.py) or, with `privacy.secure_aggregation`, only their noised sum
(server/secagg/secure_round.py).

The coordinator is handed one `UpdateTransport` when it is built (`make_transport` picks it from the
configuration); it never knows which one it has, and tests hand it a fake.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from server.rounds.messaging import TrainReplies, train_round
from server.secagg.secure_round import DiscreteNoise, SecureRoundRecord, SecureSettings, secure_train_round
from shared.config import FedhomeConfig
from shared.messages import RoundSettings


@dataclass(frozen=True)
class RoundRequest:
    """What the nodes of a training round are sent: the cohort's slots per node, the global parameters
    (phi, flat), the round's settings (see Coordinator.round_settings), the clip norm C and the run's
    popularity prior."""

    round_number: int
    assignment: dict[int, np.ndarray]  # node id -> sorted local slots of its sampled users
    params: np.ndarray
    settings: RoundSettings
    clip_norm: float
    prior: np.ndarray | None = None  # the run's popularity prior (n_items,) float32; None: none


@dataclass(frozen=True)
class CollectedUpdates:
    """The round's checked sum of clipped updates, and, under secure aggregation, the noise std the sum
    already carries (the aggregator then adds none) and what the protocol recorded for the ledger."""

    replies: TrainReplies
    noise_in_sum: float | None = None
    secure_record: SecureRoundRecord | None = None


class UpdateTransport(Protocol):
    def collect(self, grid: Any, request: RoundRequest) -> CollectedUpdates: ...


@dataclass(frozen=True)
class ClearTransport:
    """Each node's sum in the clear, checked reply by reply (norm check off in local-DP mode, where the
    devices' noise makes the sum's norm unbounded)."""

    check_norm: bool
    timeout_s: float
    record_level: bool

    def collect(self, grid: Any, request: RoundRequest) -> CollectedUpdates:
        replies = train_round(
            grid,
            request.assignment,
            request.params,
            request.settings,
            clip_norm=request.clip_norm,
            check_norm=self.check_norm,
            timeout_s=self.timeout_s,
            record_level=self.record_level,
            prior=request.prior,
        )
        return CollectedUpdates(replies)


@dataclass(frozen=True)
class SecureTransport:
    """Only the noised sum over the round's nodes (secure aggregation with distributed noise)."""

    settings: SecureSettings
    record_level: bool

    def collect(self, grid: Any, request: RoundRequest) -> CollectedUpdates:
        secure = secure_train_round(
            grid,
            request.assignment,
            request.params,
            request.settings,
            clip_norm=request.clip_norm,
            secure=self.settings,
            record_level=self.record_level,
            prior=request.prior,
        )
        return CollectedUpdates(secure.replies, noise_in_sum=secure.noise_std, secure_record=secure.record)


def secure_settings(
    config: FedhomeConfig, *, mode: str, noise_multiplier: float, noise: DiscreteNoise
) -> SecureSettings:
    """Secure aggregation's settings for a sum that gets `noise_multiplier` (0 unless `mode` is central),
    noised from `noise`."""
    privacy = config.privacy
    return SecureSettings(
        mode=mode,
        noise_multiplier=noise_multiplier if mode == "central" else 0.0,
        noise=noise,
        neighbourhood=privacy.secagg_neighbours,
        step=privacy.secagg_step,
        timeout_s=config.federated.node_timeout_s,
    )


def make_transport(
    config: FedhomeConfig, *, mode: str, noise_multiplier: float, noise: DiscreteNoise
) -> UpdateTransport:
    """The transport the configuration asks for; `noise` is the run's round noise (secure aggregation's
    server top-up is drawn from it)."""
    privacy = config.privacy
    if privacy.secure_aggregation:
        settings = secure_settings(config, mode=mode, noise_multiplier=noise_multiplier, noise=noise)
        return SecureTransport(settings, record_level=privacy.record_level)
    return ClearTransport(
        check_norm=mode != "local",
        timeout_s=config.federated.node_timeout_s,
        record_level=privacy.record_level,
    )
