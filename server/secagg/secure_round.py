"""The server's side of secure aggregation with distributed noise (`privacy.secure_aggregation`): the
ServerApp learns the sum of the round's node replies and nothing about any one of them, and in central
mode that sum already carries the round's noise, so the server never sees an un-noised sum.

One round (a training round, or a DP trending release: server/trending/trending_query.py), over the nodes with
sampled users (participants 0..n-1, in the order the round's assignment lists them; the stages' messages are
in server/secagg/secagg_stages.py, the nodes' side in client/masked_update.py, the primitives in
shared/secagg_primitives.py):

1. keys: every participant returns two fresh X25519 public keys. Non-repliers are out of the round.
2. shares: each replier gets its live neighbours' keys (a circulant graph, `privacy.secagg_neighbours`
   each, or all) and returns its mask key and self-mask seed, Shamir-shared among its neighbours and
   itself (a strict majority rebuilds) and sealed for each holder.
3. train: each node gets the shares sealed for it and the neighbours to mask with; it trains, adds its
   share of the noise and returns y = Q(sum) + noise + masks, modulo 2^64. The number of unclipped users
   is not sent (it is an exact count, and only adaptive clipping, refused here, needs it).
4. unmask: each surviving node returns the shares of the self-mask seeds of survivors and of the mask
   keys of the nodes that dropped after step 2; the server rebuilds those secrets, removes every mask and
   decodes the sum.

Noise (central mode): the released sum must carry N_Z(0, sigma^2) with sigma = z * C' / step in grid
units, C' = C + step * sqrt(dim) the per-user sensitivity after fixed-point rounding (so the accounted
multiplier is exactly z). Each node adds a discrete Gaussian of variance count * sigma^2 / cohort for its
`count` summed users (the cohort is the round's sampled users); the server adds the rest,
sigma^2 * (1 - summed / cohort), for the users of dropped or refusing nodes. A sum of independent discrete
Gaussians is within a negligible distance of one discrete Gaussian at these scales (Kairouz, Liu & Steinke
2021; per-node sigma is ~10^5 grid units), which has the RDP of the continuous Gaussian (Canonne, Kamath &
Steinke 2020): docs/federated.md has the argument and its assumptions.

What it does not do: it trusts the server to relay the public keys faithfully (no device PKI), and a
sum cannot be checked node by node: an oversized update shows only in the whole sum, which is then
dropped and the round's noise alone released (post-processing of the noised sum; the round still counts
for privacy). A failed protocol (too few nodes left to rebuild a secret) sums nothing and the
round's noise alone is released, as for a round whose replies were all rejected.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np
from flwr.app import Message, MessageType
from flwr.serverapp import Grid

from server.rounds.messaging import TrainReplies, read_record_epsilon, reply_check
from server.secagg.secagg_stages import (
    Participant,
    ProtocolFailed,
    Record,
    exchange_keys,
    masked_inputs,
    share_secrets,
    unmask,
)
from server.strategy import check_update_sum, check_update_values
from shared.errors import UpdateRejectedError
from shared.messages import REPLY_CHECK, RoundSettings, TrainInstruction
from shared.secagg_primitives import decode, neighbours, sensitivity

log = logging.getLogger(__name__)


class DiscreteNoise(Protocol):
    def discrete(self, shape: int, *, std: float) -> np.ndarray: ...


@dataclass(frozen=True)
class SecureRoundRecord:
    """What the ledger records about one securely aggregated round."""

    participants: int  # nodes with sampled users
    masked_inputs: int  # nodes whose masked input was summed
    dropped: int  # nodes that dropped after sharing their secrets (their masks were rebuilt and removed)
    neighbours: int  # the graph's degree (participants - 1 when complete)
    quantisation_step: float
    dim: int
    sensitivity: float  # C' = C + step * sqrt(dim)
    distributed_noise_std: float  # std, per coordinate, added by the nodes together (0 unless central)
    server_noise_std: float  # the server's top-up for users whose node added none
    failed: str  # "" or why nothing could be summed

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SecureSum:
    total: np.ndarray  # (dim,) float64: the released sum, noised in central mode
    count: int  # users in the sum
    refused: int  # sampled users whose device refused (participation cap)
    rejected_nodes: int
    noise_std: float  # std per coordinate already in `total` (z * C' in central mode)
    record: SecureRoundRecord


@dataclass(frozen=True)
class SecureReplies:
    replies: TrainReplies
    noise_std: float  # std per coordinate already in replies.update_sum (z * C' in central mode)
    record: SecureRoundRecord


@dataclass(frozen=True)
class SecureSettings:
    """A round's secure-aggregation parameters: the privacy mode and noise, the graph, the encoding."""

    mode: str
    noise_multiplier: float
    noise: DiscreteNoise
    neighbourhood: int
    step: float
    timeout_s: float


def secure_train_round(
    grid: Grid,
    assignment: dict[int, np.ndarray],
    params: np.ndarray,
    settings: RoundSettings,
    *,
    clip_norm: float,
    secure: SecureSettings,
    record_level: bool = False,
    prior: np.ndarray | None = None,
) -> SecureReplies:
    """Secure aggregation of one training round; the returned sum is noised in central mode. `prior`: the
    run's popularity prior, which the nodes' models use (None: none)."""

    checks = {i: reply_check(settings) for i in range(len(assignment))}
    check_of = {node: checks[i] for i, node in enumerate(assignment)}

    def content_of(i: int, slots: np.ndarray) -> dict[str, Record]:
        instruction = TrainInstruction(params, slots, settings.for_node(i), prior)
        return {**instruction.to_records(), REPLY_CHECK: checks[i].to_config()}

    record_epsilons: list[float] = []
    reasons: Counter[str] = Counter()

    def on_reply(reply: Message) -> None:
        try:  # a straggler's reply to an old round, or a replayed one, is dropped before it is summed
            check_of[reply.metadata.src_node_id].check(reply.content)
            if record_level:
                record_epsilons.append(read_record_epsilon(reply))
        except UpdateRejectedError as exc:
            reasons[exc.reason] += 1
            raise

    header = {"run-id": settings.run_id, "round": settings.round}
    out = secure_sum(
        grid, assignment, header, MessageType.TRAIN, content_of, dim=params.shape[0], bound=clip_norm,
        secure=secure, on_reply=on_reply,
    )  # fmt: skip
    rest = out.rejected_nodes - sum(reasons.values())  # out at a protocol stage, or the whole round failed
    if rest > 0:
        reasons["round_failed" if out.record.failed else "dropped"] += rest
    cohort = sum(len(s) for s in assignment.values())
    replies = TrainReplies(
        update_sum=out.total,
        count=out.count,
        unclipped_count=0,  # not collected: see the module's docstring
        rejected_nodes=out.rejected_nodes,
        rejected_users=cohort - out.count - out.refused,
        record_epsilon=max(record_epsilons, default=0.0) if record_level else None,
        refused_users=out.refused,
        rejections=dict(reasons),
    )
    return SecureReplies(replies, out.noise_std, out.record)


def secure_sum(
    grid: Grid,
    assignment: dict[int, np.ndarray],
    header: dict[str, Any],
    message_type: str,
    content_of: Callable[[int, np.ndarray], dict[str, Record]],
    *,
    dim: int,
    bound: float,
    secure: SecureSettings,
    on_reply: Callable[[Message], None] | None = None,
) -> SecureSum:
    """The noised (central mode) sum over the nodes of `assignment` of their replies to `message_type`,
    each user's contribution bounded by `bound` in L2; `content_of(i, slots)` builds participant i's
    message besides the protocol's own records."""
    step = secure.step
    c_prime = sensitivity(bound, step=step, dim=dim)
    cohort = sum(len(s) for s in assignment.values())
    sigma = secure.noise_multiplier * c_prime / step if secure.mode == "central" else 0.0  # grid units
    nodes = list(assignment)
    parts = {i: Participant(i, node, assignment[node]) for i, node in enumerate(nodes)}
    graph = neighbours(len(nodes), secure.neighbourhood)
    timeout_s = secure.timeout_s
    words = np.zeros(dim, np.uint64)
    failed, summed, dropped = "", list[int](), list[int]()
    try:
        if not nodes:
            raise ProtocolFailed("no users were sampled")
        alive = exchange_keys(grid, parts, graph, header, timeout_s)
        alive = share_secrets(grid, parts, alive, header, timeout_s)
        summed, dropped = masked_inputs(
            grid, parts, alive, header, message_type=message_type,
            content_of=lambda i: content_of(i, parts[i].sample), dim=dim, step=step, timeout_s=timeout_s,
            per_user_std=sigma / math.sqrt(cohort) if cohort else 0.0, cohort=cohort, on_reply=on_reply,
        )  # fmt: skip
        words = unmask(grid, parts, summed, dropped, header, dim=dim, timeout_s=timeout_s)
    except ProtocolFailed as exc:
        failed, summed, words = str(exc), [], np.zeros(dim, np.uint64)
        log.warning("secure aggregation failed this round, nothing is summed: %s", failed)
    count = sum(parts[i].count for i in summed)
    top_up = sigma * math.sqrt(max(0.0, 1.0 - count / cohort)) if cohort else sigma
    total = _released(words, secure.noise, step=step, std=top_up)
    try:
        _check_sum(total, count=count, mode=secure.mode, bound=c_prime, std=sigma * step)
    except UpdateRejectedError as exc:  # the whole sum is spoiled: release the round's noise alone
        log.warning("secure aggregation: the round's sum is rejected, nothing is summed: %s", exc)
        failed, summed, count, top_up = f"the sum was rejected: {exc}", [], 0, sigma
        total = _released(np.zeros(dim, np.uint64), secure.noise, step=step, std=sigma)
    record = SecureRoundRecord(
        participants=len(nodes),
        masked_inputs=len(summed),
        dropped=len(dropped),
        neighbours=len(graph[0]) if graph else 0,
        quantisation_step=step,
        dim=dim,
        sensitivity=c_prime,
        distributed_noise_std=sigma * step * math.sqrt(count / cohort) if cohort else 0.0,
        server_noise_std=top_up * step,
        failed=failed,
    )
    refused = sum(parts[i].refused for i in summed)
    return SecureSum(total, count, refused, len(nodes) - len(summed), sigma * step, record)


def _released(words: np.ndarray, noise: DiscreteNoise, *, step: float, std: float) -> np.ndarray:
    """The decoded sum after the server's discrete Gaussian top-up of `std` grid units."""
    if std > 0:
        words = words + noise.discrete(words.size, std=std).view(np.uint64)
    return decode(words, step=step)


def _check_sum(total: np.ndarray, *, count: int, mode: str, bound: float, std: float) -> None:
    """UpdateRejectedError for a secure sum that cannot come from `count` users' clipped updates: in
    central mode, longer than count * C' plus what the noise (std per coordinate) reaches with
    overwhelming probability (sqrt(dim) std + 10 std: the chi tail beyond it is below e^-50)."""
    dim = total.shape[0]
    if mode == "central":
        check_update_values(total, count=count, dim=dim)
        if float(np.linalg.norm(total)) > count * bound + std * (math.sqrt(dim) + 10.0):
            raise UpdateRejectedError("the noised sum is longer than clipped updates and the noise allow")
    else:
        check_update_sum(total, count=count, dim=dim, clip_norm=bound if mode == "none" else np.inf)
