"""The server's side of secure aggregation with distributed noise (`privacy.secure_aggregation`): the
ServerApp learns the sum of the round's node replies and nothing about any one of them, and in central
mode that sum already carries the round's noise, so the server never sees an un-noised sum.

One training round, over the nodes with sampled users (participants 0..n-1, in the order the round's
assignment lists them; the nodes' side is client/secure_aggregation.py, the primitives
shared/secure_aggregation.py):

1. keys: every participant returns two fresh X25519 public keys. Non-repliers are out of the round.
2. shares: each replier gets its live neighbours' keys (a circulant graph, `privacy.secagg_neighbours`
   each, or all) and returns its mask key and self-mask seed, Shamir-shared among its neighbours and
   itself (a strict majority rebuilds) and sealed for each holder.
3. train: each node gets the shares sealed for it and the neighbours to mask with; it trains, adds its
   share of the noise and returns y = Q(sum, unclipped count) + noise + masks, modulo 2^64.
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
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, ConfigRecordValues, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from server.messaging import TrainReplies, check_reply_source, node_settings, read_record_epsilon
from server.strategy import check_update_sum, check_update_values
from shared.errors import UpdateRejectedError
from shared.record_values import as_int
from shared.secure_aggregation import (
    MASK_PURPOSE,
    agree,
    combine_secret,
    decode,
    mask,
    neighbours,
    public_key,
    sensitivity,
    threshold,
)

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
class SecureReplies:
    replies: TrainReplies
    noise_std: float  # std per coordinate already in replies.update_sum (z * C' in central mode)
    record: SecureRoundRecord


@dataclass
class _Participant:
    index: int
    node: int
    sample: np.ndarray  # the node's sampled slots
    seal_public: bytes = b""
    mask_public: bytes = b""
    live: tuple[int, ...] = ()  # neighbours that returned keys: with this node, its secrets' holders
    sealed: dict[int, bytes] = field(default_factory=dict)  # holder -> this node's share sealed for it
    masked: np.ndarray | None = None
    count: int = 0
    refused: int = 0

    @property
    def holders(self) -> list[int]:
        return sorted([*self.live, self.index])


Participants = dict[int, _Participant]


class _ProtocolFailed(Exception):
    pass


def secure_train_round(
    grid: Grid,
    assignment: dict[int, np.ndarray],
    params: np.ndarray,
    settings: dict[str, int | float | str],
    *,
    clip_norm: float,
    mode: str,
    noise_multiplier: float,
    noise: DiscreteNoise,
    neighbourhood: int,
    step: float,
    timeout_s: float,
    record_level: bool = False,
) -> SecureReplies:
    """Secure aggregation of one training round; the returned sum is noised in central mode."""
    dim = params.shape[0]
    c_prime = sensitivity(clip_norm, step=step, dim=dim)
    cohort = sum(len(s) for s in assignment.values())
    sigma = noise_multiplier * c_prime / step if mode == "central" else 0.0  # grid units
    nodes = list(assignment)
    parts = {i: _Participant(i, node, assignment[node]) for i, node in enumerate(nodes)}
    graph = neighbours(len(nodes), neighbourhood)
    header = {"run-id": str(settings["run-id"]), "round": int(settings["round"])}
    words = np.zeros(dim + 1, np.uint64)
    record_epsilons: list[float] = []
    failed, summed, dropped = "", list[int](), list[int]()
    try:
        if not nodes:
            raise _ProtocolFailed("no users were sampled")
        alive = _exchange_keys(grid, parts, graph, header, timeout_s)
        alive = _share_secrets(grid, parts, alive, header, timeout_s)
        summed, dropped = _masked_inputs(
            grid, parts, alive, params, settings, header, dim=dim, step=step, timeout_s=timeout_s,
            per_user_std=sigma / math.sqrt(cohort) if cohort else 0.0, record_level=record_level,
            record_epsilons=record_epsilons,
        )  # fmt: skip
        words = _unmask(grid, parts, summed, dropped, header, dim=dim, timeout_s=timeout_s)
    except _ProtocolFailed as exc:
        failed, summed, words = str(exc), [], np.zeros(dim + 1, np.uint64)
        log.warning("secure aggregation failed this round, nothing is summed: %s", failed)
    count = sum(parts[i].count for i in summed)
    top_up = sigma * math.sqrt(max(0.0, 1.0 - count / cohort)) if cohort else sigma
    total, unclipped = _released(words, noise, dim=dim, step=step, std=top_up)
    try:
        _check_sum(total, unclipped, count=count, mode=mode, bound=c_prime, std=sigma * step)
    except UpdateRejectedError as exc:  # the whole sum is spoiled: release the round's noise alone
        log.warning("secure aggregation: the round's sum is rejected, nothing is summed: %s", exc)
        failed, summed, count, top_up = f"the sum was rejected: {exc}", [], 0, sigma
        total, unclipped = _released(np.zeros(dim + 1, np.uint64), noise, dim=dim, step=step, std=sigma)
    refused = sum(parts[i].refused for i in summed)
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
    replies = TrainReplies(
        update_sum=total,
        count=count,
        unclipped_count=unclipped,
        rejected_nodes=len(nodes) - len(summed),
        rejected_users=cohort - count - refused,
        record_epsilon=max(record_epsilons, default=0.0) if record_level else None,
        refused_users=refused,
    )
    return SecureReplies(replies, sigma * step, record)


def _released(
    words: np.ndarray, noise: DiscreteNoise, *, dim: int, step: float, std: float
) -> tuple[np.ndarray, int]:
    """The decoded sum after the server's discrete Gaussian top-up of `std` grid units, and the unclipped
    count (the last word)."""
    words = words.copy()
    if std > 0:
        words[:dim] += noise.discrete(dim, std=std).view(np.uint64)
    return decode(words[:dim], step=step), int(words[dim:].view(np.int64)[0])


def _check_sum(total: np.ndarray, unclipped: int, *, count: int, mode: str, bound: float, std: float) -> None:
    """UpdateRejectedError for a secure sum that cannot come from `count` users' clipped updates: in
    central mode, longer than count * C' plus what the noise (std per coordinate) reaches with
    overwhelming probability (sqrt(dim) std + 10 std: the chi tail beyond it is below e^-50)."""
    dim = total.shape[0]
    if not 0 <= unclipped <= count:
        raise UpdateRejectedError(f"unclipped count {unclipped} outside [0, {count}]")
    if mode == "central":
        check_update_values(total, count=count, dim=dim)
        if float(np.linalg.norm(total)) > count * bound + std * (math.sqrt(dim) + 10.0):
            raise UpdateRejectedError("the noised sum is longer than clipped updates and the noise allow")
    else:
        check_update_sum(total, count=count, dim=dim, clip_norm=bound if mode == "none" else np.inf)


def _query(
    grid: Grid, kind: str, contents: dict[int, RecordDict], parts: Participants, timeout_s: float
) -> Iterator[tuple[int, Message]]:
    """Send `kind` to the participants in `contents`; yield (index, reply content) for the first valid
    reply of each (errors and replies from nodes not asked are logged and dropped)."""
    by_node = {parts[i].node: i for i in contents}
    messages = [
        Message(content, dst_node_id=parts[i].node, message_type=kind) for i, content in contents.items()
    ]
    answered: set[int] = set()
    for reply in grid.send_and_receive(messages, timeout=timeout_s):
        node = reply.metadata.src_node_id
        try:
            check_reply_source(node, by_node, answered)
            if reply.has_error():
                raise UpdateRejectedError(f"the node reported an error: {reply.error.reason}")
        except UpdateRejectedError as exc:
            log.warning("secure aggregation (%s): a reply is dropped: %s", kind, exc)
            continue
        yield by_node[node], reply


def _secagg_record(header: dict[str, Any], index: int, **more: Any) -> ConfigRecord:
    return ConfigRecord({**header, "index": index, **more})


def _exchange_keys(
    grid: Grid, parts: Participants, graph: list[list[int]], header: dict[str, Any], timeout_s: float
) -> set[int]:
    contents = {i: RecordDict({"secagg": _secagg_record(header, i, neighbours=graph[i])}) for i in parts}
    alive: set[int] = set()
    for i, reply in _query(grid, f"{MessageType.QUERY}.secagg_keys", contents, parts, timeout_s):
        keys = reply.content.config_records.get("keys")
        seal_pub = keys.get("seal-public") if keys else None
        mask_pub = keys.get("mask-public") if keys else None
        if not (
            isinstance(seal_pub, bytes)
            and isinstance(mask_pub, bytes)
            and len(seal_pub) == len(mask_pub) == 32
        ):
            log.warning("secure aggregation: a node sent malformed public keys")
            continue
        parts[i].seal_public, parts[i].mask_public = seal_pub, mask_pub
        alive.add(i)
    for i in alive:
        parts[i].live = tuple(j for j in graph[i] if j in alive)
    return alive


def _share_secrets(
    grid: Grid, parts: Participants, alive: set[int], header: dict[str, Any], timeout_s: float
) -> set[int]:
    contents = {}
    for i in alive:
        keys: dict[str, ConfigRecordValues] = {}
        for j in parts[i].live:
            keys[f"seal-{j}"], keys[f"mask-{j}"] = parts[j].seal_public, parts[j].mask_public
        contents[i] = RecordDict(
            {"secagg": _secagg_record(header, i, live=list(parts[i].live)), "keys": ConfigRecord(keys)}
        )
    shared: set[int] = set()
    for i, reply in _query(grid, f"{MessageType.QUERY}.secagg_shares", contents, parts, timeout_s):
        sealed = reply.content.config_records.get("shares", ConfigRecord({}))
        expected = {f"to-{j}" for j in parts[i].live}
        if set(sealed.keys()) != expected or not all(isinstance(v, bytes) for v in sealed.values()):
            log.warning("secure aggregation: a node sent the wrong set of sealed shares")
            continue
        parts[i].sealed = {int(key[3:]): bytes(value) for key, value in sealed.items()}  # type: ignore[arg-type]
        shared.add(i)
    return shared


def _masked_inputs(
    grid: Grid,
    parts: Participants,
    alive: set[int],
    params: np.ndarray,
    settings: dict[str, int | float | str],
    header: dict[str, Any],
    *,
    dim: int,
    step: float,
    timeout_s: float,
    per_user_std: float,
    record_level: bool,
    record_epsilons: list[float],
) -> tuple[list[int], list[int]]:
    """Send the train messages; returns (summed, dropped): the indices whose masked input arrived and
    the ones that shared their secrets but sent none (their masks must be removed)."""
    global_record = ArrayRecord({"params": Array(params)})
    contents = {}
    for i in sorted(alive):
        partners = [j for j in parts[i].live if j in alive]
        inbox: dict[str, ConfigRecordValues] = {f"from-{j}": parts[j].sealed[i] for j in partners}
        contents[i] = RecordDict(
            {
                "global": global_record,
                "sample": ArrayRecord({"slots": Array(parts[i].sample.astype(np.int64))}),
                "round": ConfigRecord(node_settings(settings, i)),
                "secagg": _secagg_record(
                    header, i, **{"mask-with": partners, "step": step, "noise-std-per-user": per_user_std}
                ),
                "inbox": ConfigRecord(inbox),
            }
        )
    summed: list[int] = []
    for i, reply in _query(grid, MessageType.TRAIN, contents, parts, timeout_s):
        try:
            if record_level:
                record_epsilons.append(read_record_epsilon(reply))
            masked = reply.content.array_records["update"]["masked"].numpy()
            stats = reply.content.metric_records["stats"]
            count = as_int(stats["count"], name="count")
            refused = as_int(stats.get("refused-count", 0), name="refused-count")
        except (KeyError, TypeError, ValueError, UpdateRejectedError) as exc:
            log.warning("secure aggregation: a malformed masked input is dropped: %s", exc)
            continue
        if masked.dtype != np.uint64 or masked.shape != (dim + 1,) or count < 0 or refused < 0:
            log.warning("secure aggregation: a masked input of the wrong shape or type is dropped")
            continue
        if count + refused != len(parts[i].sample):
            log.warning("secure aggregation: a masked input with wrong counts is dropped")
            continue
        parts[i].masked, parts[i].count, parts[i].refused = masked, count, refused
        summed.append(i)
    dropped = sorted(set(alive) - set(summed))
    return sorted(summed), dropped


def _unmask(
    grid: Grid,
    parts: Participants,
    summed: list[int],
    dropped: list[int],
    header: dict[str, Any],
    *,
    dim: int,
    timeout_s: float,
) -> np.ndarray:
    if not summed:
        raise _ProtocolFailed("no masked input arrived")
    survivors, gone = set(summed), set(dropped)
    contents = {}
    for j in summed:
        mine_s = [i for i in summed if j in parts[i].holders]
        mine_d = [i for i in dropped if j in parts[i].holders]
        contents[j] = RecordDict({"secagg": _secagg_record(header, j, survivors=mine_s, dropped=mine_d)})
    b_shares: dict[int, dict[int, bytes]] = {i: {} for i in survivors}
    key_shares: dict[int, dict[int, bytes]] = {i: {} for i in gone}
    for j, reply in _query(grid, f"{MessageType.QUERY}.secagg_unmask", contents, parts, timeout_s):
        shares = reply.content.config_records.get("unmask", ConfigRecord({}))
        for key, value in shares.items():
            kind, _, peer_text = key.partition("-")
            peer = int(peer_text) if peer_text.isdigit() else -1
            target = b_shares if kind == "b" else key_shares if kind == "mask" else None
            if target is None or peer not in target or not isinstance(value, bytes):
                continue
            if j in parts[peer].holders:
                target[peer][parts[peer].holders.index(j)] = value
    total = np.zeros(dim + 1, np.uint64)
    for i in summed:
        seed = _rebuild(b_shares[i], parts[i], what="self-mask seed")
        masked = parts[i].masked
        assert masked is not None
        total += masked - mask(seed, dim + 1)
    for i in dropped:
        mask_key = _rebuild(key_shares[i], parts[i], what="mask key")
        if public_key(mask_key) != parts[i].mask_public:
            raise _ProtocolFailed("a rebuilt mask key does not match the node's public key")
        for j in parts[i].live:
            if j in survivors:
                pair = mask(agree(mask_key, parts[j].mask_public, purpose=MASK_PURPOSE), dim + 1)
                total = total - pair if j < i else total + pair  # undo what survivor j added
    return total


def _rebuild(shares: dict[int, bytes], part: _Participant, *, what: str) -> bytes:
    try:
        return combine_secret(shares, threshold=threshold(len(part.holders)))
    except (UpdateRejectedError, ValueError) as exc:
        raise _ProtocolFailed(f"could not rebuild a node's {what}: {exc}") from exc
