"""What the ServerApp says to the nodes over Flower's Grid: population discovery, train and evaluate rounds.

The nodes' replies are checked here before anything is aggregated: a reply that is an error, has the wrong
shape, non-finite values, or a sum longer than its count of clipped updates allows is rejected and counted;
so is a second reply from the same node or one from a node that was not queried (it would be summed twice,
or summed without its users being sampled), and a reply that does not echo the reply check (run, round and
a fresh nonce, shared/messages.py: ReplyCheck) its node was sent: a straggler's reply to an old round, or a
replayed one. Rejections are counted by reason (`TrainReplies.rejections`, the ledger's
`rejection_reasons`).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.superlink.grid.inmemory_grid import InMemoryGrid

from server.strategy import check_update_sum
from shared.errors import ConfigError, UpdateRejectedError
from shared.messages import (
    REPLY_CHECK,
    EvaluateReply,
    EvaluateRequest,
    PopulationReply,
    ReplyCheck,
    RoundSettings,
    TrainInstruction,
    TrainReply,
)
from shared.messages import read_record_epsilon as read_reply_record_epsilon

log = logging.getLogger(__name__)

POLL_S = 0.2
SIMULATION_PULL_INTERVAL_S = 0.01


def poll_replies_often(grid: Grid) -> None:
    """Flower's simulation grid (InMemoryGrid) looks for replies every `pull_interval` s, 0.1 by default:
    every round waited on average 0.05 s after its last reply had arrived. Its replies are in memory, so
    looking every 10 ms costs next to nothing. A deployed SuperLink's grid is left as Flower sets it."""
    if isinstance(grid, InMemoryGrid):
        grid.pull_interval = SIMULATION_PULL_INTERVAL_S


@dataclass(frozen=True)
class Population:
    """The devices the federation can sample: node ids and how many users each hosts (its slots)."""

    node_ids: tuple[int, ...]
    sizes: np.ndarray  # (n_nodes,) int64

    @property
    def n_users(self) -> int:
        return int(self.sizes.sum())

    def split(self, users: np.ndarray) -> dict[int, np.ndarray]:
        """{node id: sorted local slots} of global user slots `users` (sorted int64)."""
        offsets = np.concatenate([[0], np.cumsum(self.sizes)])
        node_of = np.searchsorted(offsets, users, side="right") - 1
        return {
            self.node_ids[i]: users[node_of == i] - offsets[i]
            for i in range(len(self.node_ids))
            if np.any(node_of == i)
        }


class NodesNotConnectedError(ConfigError):
    """Fewer SuperNodes than `federated.nodes` connected within `federated.connect_timeout_s`."""


def wait_for_nodes(grid: Grid, expected: int, *, timeout_s: float) -> list[int]:
    """The node ids once at least `expected` nodes are connected; NodesNotConnectedError, saying how many
    connected and what to do, when fewer did within `timeout_s` seconds."""
    deadline = time.monotonic() + timeout_s
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= expected:
            return nodes
        if time.monotonic() >= deadline:
            lower = f", or lower federated.nodes to {len(nodes)}" if nodes else ""
            raise NodesNotConnectedError(
                f"{len(nodes)} of the {expected} SuperNodes this run needs (federated.nodes) connected "
                f"within {timeout_s:g} s (federated.connect_timeout_s): start {expected - len(nodes)} more "
                f"SuperNode(s) on this SuperLink, each with its own --node-config partition-id{lower}"
            )
        time.sleep(min(POLL_S, max(deadline - time.monotonic(), 0.0)))


def discover_population(grid: Grid, node_ids: list[int], *, timeout_s: float) -> Population:
    """Ask each node how many users it hosts; nodes are ordered by the partition id they report, so that
    global slots follow the users' order however they are spread over nodes."""
    messages = [
        Message(RecordDict({}), dst_node_id=node, message_type=f"{MessageType.QUERY}.describe")
        for node in node_ids
    ]
    sizes: dict[int, int] = {}
    order: dict[int, int] = {}
    for reply in grid.send_and_receive(messages, timeout=timeout_s):
        node = reply.metadata.src_node_id
        if reply.has_error():
            raise ConfigError(f"node {node} failed to describe itself: {reply.error}")
        try:
            described = PopulationReply.from_records(reply.content)
        except UpdateRejectedError as exc:
            raise ConfigError(f"node {node} described itself wrongly: {exc}") from exc
        sizes[node], order[node] = described.n_users, described.partition_id
    missing = [n for n in node_ids if n not in sizes]
    if missing:
        raise ConfigError(f"{len(missing)} nodes did not answer the population query")
    ordered = sorted(node_ids, key=lambda n: (order[n], n))
    return Population(tuple(ordered), np.array([sizes[n] for n in ordered], dtype=np.int64))


@dataclass(frozen=True)
class TrainReplies:
    update_sum: np.ndarray  # (dim,) float64 sum over accepted nodes
    count: int  # users whose clipped updates are in the sum
    unclipped_count: int
    rejected_nodes: int  # replies refused (error, malformed, oversized)
    rejected_users: int  # sampled users of refused or missing replies
    # record-level mode: the largest record-level epsilon a replying device reported (None otherwise)
    record_epsilon: float | None = None
    refused_users: int = 0  # sampled users whose device refused to train: it had reached its cap
    # rejected replies by reason (UpdateRejectedError.reason; "no_reply" for a node that never answered)
    rejections: dict[str, int] = field(default_factory=dict)


def reply_check(settings: RoundSettings) -> ReplyCheck:
    """A fresh reply check for one node's train message of the round (128 random bits of nonce)."""
    return ReplyCheck(settings.run_id, settings.round, secrets.token_hex(16))


def train_round(
    grid: Grid,
    assignment: dict[int, np.ndarray],
    params: np.ndarray,
    settings: RoundSettings,
    *,
    clip_norm: float,
    check_norm: bool,
    timeout_s: float,
    record_level: bool = False,
    prior: np.ndarray | None = None,
) -> TrainReplies:
    """Send the round to every node with sampled users; sum the replies that pass the checks.

    With `record_level`, every reply must carry the device's record-level epsilon ("record-epsilon"); the
    largest one over the replies (rejected ones included: their device spent it) is returned. `prior`: the
    run's popularity prior, which the nodes' models use (None: the run has none)."""
    messages, checks = [], {}
    for position, (node, slots) in enumerate(assignment.items()):
        instruction = TrainInstruction(params, slots, settings.for_node(position), prior)
        checks[node] = reply_check(settings)
        content = RecordDict({**instruction.to_records(), REPLY_CHECK: checks[node].to_config()})
        messages.append(Message(content, dst_node_id=node, message_type=MessageType.TRAIN))
    total = np.zeros(params.shape[0], dtype=np.float64)
    count = unclipped = rejected_nodes = refused = 0
    answered: set[int] = set()
    record_epsilons: list[float] = []
    reasons: Counter[str] = Counter()
    for reply in grid.send_and_receive(messages, timeout=timeout_s):
        node = reply.metadata.src_node_id
        try:
            check_reply_source(node, assignment, answered)
            if not reply.has_error():
                checks[node].check(reply.content)
            if record_level:
                record_epsilons.append(read_record_epsilon(reply))
            answer = read_train_reply(reply, len(assignment.get(node, [])))
            check_update_sum(
                answer.update_sum,
                count=answer.count,
                dim=params.shape[0],
                clip_norm=clip_norm if check_norm else np.inf,
            )
        except UpdateRejectedError as exc:
            log.warning("round reply from a node rejected: %s", exc)
            rejected_nodes += 1
            reasons[exc.reason] += 1
            continue
        total += answer.update_sum
        count += answer.count
        unclipped += answer.unclipped_count
        refused += answer.refused_count
    missing = [n for n in assignment if n not in answered]
    rejected_nodes += len(missing)
    if missing:
        reasons["no_reply"] += len(missing)
    sampled = sum(len(s) for s in assignment.values())
    record = max(record_epsilons, default=0.0) if record_level else None
    return TrainReplies(
        total, count, unclipped, rejected_nodes, sampled - count - refused, record, refused, dict(reasons)
    )


def check_reply_source(node: int, assignment: Mapping[int, object], answered: set[int]) -> None:
    """Mark `node` as answered; UpdateRejectedError when it was not queried or has already answered (the
    first reply is the one that counts, accepted or not)."""
    if node not in assignment:
        raise UpdateRejectedError("a reply from a node that was not queried", reason="unqueried")
    if node in answered:
        raise UpdateRejectedError("a second reply from the same node", reason="duplicate")
    answered.add(node)


def read_record_epsilon(reply: Message) -> float:
    """The device's record-level epsilon so far; UpdateRejectedError when the reply does not carry one."""
    if reply.has_error():
        raise UpdateRejectedError(f"the node reported an error: {reply.error.reason}", reason="node_error")
    return read_reply_record_epsilon(reply.content)


def read_train_reply(reply: Message, n_sampled: int) -> TrainReply:
    """The node's typed reply; UpdateRejectedError when it is an error or malformed, or when its counts do
    not add up to the `n_sampled` users it was sent."""
    if reply.has_error():
        raise UpdateRejectedError(f"the node reported an error: {reply.error.reason}", reason="node_error")
    return TrainReply.from_records(reply.content, n_sampled=n_sampled)


def evaluate_round(
    grid: Grid,
    node_ids: tuple[int, ...],
    params: np.ndarray,
    *,
    max_users: int,
    timeout_s: float,
    prior: np.ndarray | None = None,
) -> dict[str, float]:
    """Federated evaluation on the validation stage: mean NDCG@10 and HR@10 over the nodes' users, of the
    model with `params` and the run's popularity prior `prior` (None: none)."""
    content = EvaluateRequest(params, "valid", max_users, prior).to_records()
    messages = [Message(content, dst_node_id=n, message_type=MessageType.EVALUATE) for n in node_ids]
    ndcg = hits = n = 0.0
    for reply in grid.send_and_receive(messages, timeout=timeout_s):
        if reply.has_error():
            log.warning("evaluation failed on a node: %s", reply.error.reason)
            continue
        try:
            answer = EvaluateReply.from_records(reply.content)
        except UpdateRejectedError as exc:
            log.warning("a malformed evaluation reply: %s", exc)
            continue
        ndcg, hits, n = ndcg + answer.ndcg_sum, hits + answer.hit_sum, n + answer.n
    if n == 0:
        return {}
    return {"valid_ndcg_10": ndcg / n, "valid_hr_10": hits / n, "valid_users": n}
