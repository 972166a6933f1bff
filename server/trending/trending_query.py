"""DP trending counts on the server: ask the nodes for their sums, check them, noise the total, estimate.

The mechanism (unit of privacy: the user; add/remove-one-user neighbours). Users are Poisson-sampled with
rate q_t; each sampled user's contribution vector has L2 norm <= 1 (client/trending_contribution.py: at most k
distinct recent items, each 1/sqrt(k)); the nodes return sums; the server adds N(0, z_t^2) independently to
every item of the total (noise std z_t * sensitivity 1) from the same generator as training (OS-seeded
PCG64DXSM), then publishes

    counts = (sum + noise) * sqrt(k) / q_t,

an unbiased estimate of how many users touched each item in the window (each user's k most recent
distinct items counted once), with noise std z_t * sqrt(k) / q_t per item. The release is exactly a
Poisson-subsampled Gaussian mechanism with noise multiplier z_t: RoundEvent(q_t, z_t) for the accountant.
Only the noised counts are published; the realised cohort size is published exactly, as for training.
With `privacy.secure_aggregation` the nodes add the noise and the server sees only the noised total
(`secure_trending_query`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from server.rounds.messaging import check_reply_source
from server.secagg.secagg_stages import Record
from server.secagg.secure_round import SecureRoundRecord, SecureSettings, secure_sum
from server.strategy import NoiseSource, check_update_sum
from shared.errors import UpdateRejectedError
from shared.record_values import as_int

log = logging.getLogger(__name__)

SENSITIVITY = 1.0  # L2 bound of one user's contribution vector
TRENDING_MESSAGE = f"{MessageType.QUERY}.trending"
VALUE_SLACK = 1e-9  # absolute, on each item's sum


@dataclass(frozen=True)
class TrendingReplies:
    total: np.ndarray  # (n_items,) float64, sum over the accepted nodes
    count: int  # users whose vectors are in the sum
    rejected_nodes: int
    rejected_users: int  # sampled users of refused or missing replies


@dataclass(frozen=True)
class NoisedCounts:
    counts: np.ndarray  # (n_items,) float32: noisy_sum * sqrt(k) / q_t (may be negative; not clipped)
    noise_std: float  # std of the noise actually added to each item's sum
    count_std: float  # std of the noise in the published counts: noise_std * sqrt(k) / q_t


def trending_query(
    grid: Grid,
    assignment: dict[int, np.ndarray],
    *,
    as_of_s: int,
    window_s: float,
    max_items: int,
    n_items: int,
    timeout_s: float,
) -> TrendingReplies:
    """Send the trending query to every node with sampled users; sum the replies that pass the checks (one
    reply per queried node: check_reply_source)."""
    settings = ConfigRecord({"as-of-s": int(as_of_s), "window-s": float(window_s), "max-items": max_items})
    messages = [
        Message(
            RecordDict(
                {"sample": ArrayRecord({"slots": Array(slots.astype(np.int64))}), "trending": settings}
            ),
            dst_node_id=node,
            message_type=TRENDING_MESSAGE,
        )
        for node, slots in assignment.items()
    ]
    total = np.zeros(n_items, np.float64)
    count = rejected = 0
    answered: set[int] = set()
    for reply in grid.send_and_receive(messages, timeout=timeout_s):
        node = reply.metadata.src_node_id
        try:
            check_reply_source(node, assignment, answered)
            node_sum, node_count = read_trending_reply(
                reply, n_sampled=len(assignment[node]), n_items=n_items, max_items=max_items
            )
        except UpdateRejectedError as exc:
            log.warning("trending reply from a node rejected: %s", exc)
            rejected += 1
            continue
        total += node_sum
        count += node_count
    rejected += len([n for n in assignment if n not in answered])
    sampled = sum(len(s) for s in assignment.values())
    return TrendingReplies(total, count, rejected, sampled - count)


def secure_trending_query(
    grid: Grid,
    assignment: dict[int, np.ndarray],
    *,
    header: dict[str, Any],
    as_of_s: int,
    window_s: float,
    max_items: int,
    n_items: int,
    sample_rate: float,
    secure: SecureSettings,
) -> tuple[TrendingReplies, NoisedCounts, SecureRoundRecord]:
    """The trending query by secure aggregation (server/secagg/secure_round.py): the nodes add the noise
    (std z_t * C' per item, C' = 1 + step * sqrt(n_items)), the server sees only the noised total."""
    settings = ConfigRecord({"as-of-s": int(as_of_s), "window-s": float(window_s), "max-items": max_items})

    def content_of(i: int, slots: np.ndarray) -> dict[str, Record]:
        return {"sample": ArrayRecord({"slots": Array(slots.astype(np.int64))}), "trending": settings}

    out = secure_sum(
        grid, assignment, header, TRENDING_MESSAGE, content_of, dim=n_items, bound=SENSITIVITY, secure=secure
    )
    sampled = sum(len(s) for s in assignment.values())
    replies = TrendingReplies(out.total, out.count, out.rejected_nodes, sampled - out.count)
    scale = math.sqrt(max_items) / sample_rate
    counts = NoisedCounts((out.total * scale).astype(np.float32), out.noise_std, out.noise_std * scale)
    return replies, counts, out.record


def read_trending_reply(
    reply: Message, *, n_sampled: int, n_items: int, max_items: int
) -> tuple[np.ndarray, int]:
    """A node's (sum, count); UpdateRejectedError unless it could be a sum of `n_sampled` valid vectors:
    the right shape, finite, L2 norm <= count, every item in [0, count / sqrt(k)]."""
    if reply.has_error():
        raise UpdateRejectedError(f"the node reported an error: {reply.error.reason}")
    try:
        node_sum = reply.content.array_records["trending"]["sum"].numpy()
        count = as_int(reply.content.metric_records["stats"]["count"], name="count")
    except (KeyError, TypeError, ValueError) as exc:
        raise UpdateRejectedError(f"malformed trending reply: {exc}") from exc
    if count != n_sampled:
        raise UpdateRejectedError(f"trending reply counts {count} users, {n_sampled} were sampled")
    return check_trending_sum(node_sum, count=count, n_items=n_items, max_items=max_items), count


def check_trending_sum(node_sum: np.ndarray, *, count: int, n_items: int, max_items: int) -> np.ndarray:
    """The sum as float64 when it could be a sum of `count` contribution vectors: shape (n_items,), finite,
    L2 norm <= count * 1, every item in [0, count / sqrt(k)]; UpdateRejectedError otherwise."""
    check_update_sum(node_sum, count=count, dim=n_items, clip_norm=SENSITIVITY)
    values = node_sum.astype(np.float64)
    if values.size and (values.min() < -VALUE_SLACK or values.max() > count / math.sqrt(max_items) + 1e-6):
        raise UpdateRejectedError("trending sum has an item outside [0, count / sqrt(k)]")
    return values


def noised_counts(
    total: np.ndarray, *, noise: NoiseSource, noise_multiplier: float, sample_rate: float, max_items: int
) -> NoisedCounts:
    """Gaussian noise of std z_t * sensitivity on every item of `total`, then the unbiased count estimate."""
    std = noise_multiplier * SENSITIVITY
    noisy = total + noise.sample(total.shape, std=std)
    scale = math.sqrt(max_items) / sample_rate
    return NoisedCounts((noisy * scale).astype(np.float32), std, std * scale)
