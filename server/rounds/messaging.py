"""What the ServerApp says to the nodes over Flower's Grid: population discovery, train and evaluate rounds.

The nodes' replies are checked here before anything is aggregated: a reply that is an error, has the wrong
shape, non-finite values, or a sum longer than its count of clipped updates allows is rejected and counted;
so is a second reply from the same node or one from a node that was not queried (it would be summed twice,
or summed without its users being sampled).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, ConfigRecordValues, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.superlink.grid.inmemory_grid import InMemoryGrid

from server.strategy import check_update_sum
from shared.errors import ConfigError, UpdateRejectedError
from shared.record_values import as_float, as_int

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


def wait_for_nodes(grid: Grid, expected: int, *, timeout_s: float) -> list[int]:
    """The node ids once at least `expected` nodes are connected; ConfigError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= expected:
            return nodes
        if time.monotonic() > deadline:
            raise ConfigError(f"only {len(nodes)} of {expected} nodes connected after {timeout_s:.0f} s")
        time.sleep(POLL_S)


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
        if reply.has_error():
            raise ConfigError(f"node {reply.metadata.src_node_id} failed to describe itself: {reply.error}")
        population = reply.content.metric_records["population"]
        sizes[reply.metadata.src_node_id] = as_int(population["n-users"], name="n-users")
        order[reply.metadata.src_node_id] = as_int(population.get("partition-id", 0), name="partition-id")
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


def train_round(
    grid: Grid,
    assignment: dict[int, np.ndarray],
    params: np.ndarray,
    settings: dict[str, int | float | str],
    *,
    clip_norm: float,
    check_norm: bool,
    timeout_s: float,
    record_level: bool = False,
) -> TrainReplies:
    """Send the round to every node with sampled users; sum the replies that pass the checks.

    With `record_level`, every reply must carry the device's record-level epsilon ("record-epsilon"); the
    largest one over the replies (rejected ones included: their device spent it) is returned."""
    global_record = ArrayRecord({"params": Array(params)})
    messages = []
    for position, (node, slots) in enumerate(assignment.items()):
        content = RecordDict(
            {
                "global": global_record,
                "sample": ArrayRecord({"slots": Array(slots.astype(np.int64))}),
                "round": ConfigRecord(node_settings(settings, position)),
            }
        )
        messages.append(Message(content, dst_node_id=node, message_type=MessageType.TRAIN))
    total = np.zeros(params.shape[0], dtype=np.float64)
    count = unclipped = rejected_nodes = refused = 0
    answered: set[int] = set()
    record_epsilons: list[float] = []
    for reply in grid.send_and_receive(messages, timeout=timeout_s):
        node = reply.metadata.src_node_id
        try:
            check_reply_source(node, assignment, answered)
            if record_level:
                record_epsilons.append(read_record_epsilon(reply))
            node_sum, node_count, node_unclipped, node_refused = _read_train_reply(
                reply, len(assignment.get(node, []))
            )
            check_update_sum(
                node_sum, count=node_count, dim=params.shape[0], clip_norm=clip_norm if check_norm else np.inf
            )
        except UpdateRejectedError as exc:
            log.warning("round reply from a node rejected: %s", exc)
            rejected_nodes += 1
            continue
        total += node_sum
        count += node_count
        unclipped += node_unclipped
        refused += node_refused
    missing = [n for n in assignment if n not in answered]
    rejected_nodes += len(missing)
    sampled = sum(len(s) for s in assignment.values())
    record = max(record_epsilons, default=0.0) if record_level else None
    return TrainReplies(total, count, unclipped, rejected_nodes, sampled - count - refused, record, refused)


def check_reply_source(node: int, assignment: Mapping[int, object], answered: set[int]) -> None:
    """Mark `node` as answered; UpdateRejectedError when it was not queried or has already answered (the
    first reply is the one that counts, accepted or not)."""
    if node not in assignment:
        raise UpdateRejectedError("a reply from a node that was not queried")
    if node in answered:
        raise UpdateRejectedError("a second reply from the same node")
    answered.add(node)


def read_record_epsilon(reply: Message) -> float:
    """The device's record-level epsilon so far; UpdateRejectedError when the reply does not carry one."""
    if reply.has_error():
        raise UpdateRejectedError(f"the node reported an error: {reply.error.reason}")
    try:
        value = as_float(reply.content.metric_records["stats"]["record-epsilon"], name="record-epsilon")
    except (KeyError, TypeError, ValueError) as exc:
        raise UpdateRejectedError(f"a record-level reply without its record-level epsilon: {exc!r}") from exc
    if not value >= 0:
        raise UpdateRejectedError(f"record-level epsilon {value} is not >= 0")
    return value


def node_settings(settings: dict[str, int | float | str], position: int) -> dict[str, ConfigRecordValues]:
    """The round's settings for one node: a fixed (test) noise seed differs per node, so that local-DP
    noise is independent across nodes even in deterministic runs (-1, OS entropy, stays -1)."""
    seed = int(settings.get("noise-seed", -1))
    out: dict[str, ConfigRecordValues] = dict(settings)
    out["noise-seed"] = seed if seed < 0 else (seed + position) % (2**62)
    return out


def _read_train_reply(reply: Message, n_sampled: int) -> tuple[np.ndarray, int, int, int]:
    """(sum, count, unclipped count, refused count): count + refused must be the node's sampled users."""
    if reply.has_error():
        raise UpdateRejectedError(f"the node reported an error: {reply.error.reason}")
    try:
        node_sum = reply.content.array_records["update"]["sum"].numpy()
        stats = reply.content.metric_records["stats"]
        count, unclipped = (
            as_int(stats["count"], name="count"),
            as_int(stats["unclipped-count"], name="unclipped-count"),
        )
        refused = as_int(stats.get("refused-count", 0), name="refused-count")
    except (KeyError, TypeError, ValueError) as exc:
        raise UpdateRejectedError(f"malformed train reply: {exc}") from exc
    if refused < 0 or count + refused != n_sampled or not 0 <= unclipped <= count:
        raise UpdateRejectedError(
            f"reply counts {count} users ({unclipped} unclipped) and {refused} refused, "
            f"{n_sampled} were sampled"
        )
    return node_sum.astype(np.float64), count, unclipped, refused


def evaluate_round(
    grid: Grid, node_ids: tuple[int, ...], params: np.ndarray, *, max_users: int, timeout_s: float
) -> dict[str, float]:
    """Federated evaluation on the validation stage: mean NDCG@10 and HR@10 over the nodes' users."""
    content = RecordDict(
        {
            "global": ArrayRecord({"params": Array(params)}),
            "evaluate": ConfigRecord({"stage": "valid", "max-users": max_users}),
        }
    )
    messages = [Message(content, dst_node_id=n, message_type=MessageType.EVALUATE) for n in node_ids]
    ndcg = hits = n = 0.0
    for reply in grid.send_and_receive(messages, timeout=timeout_s):
        if reply.has_error():
            log.warning("evaluation failed on a node: %s", reply.error.reason)
            continue
        metrics = reply.content.metric_records["metrics"]
        ndcg += as_float(metrics["ndcg-sum"], name="ndcg-sum")
        hits += as_float(metrics["hit-sum"], name="hit-sum")
        n += as_float(metrics["n"], name="n")
    if n == 0:
        return {}
    return {"valid_ndcg_10": ndcg / n, "valid_hr_10": hits / n, "valid_users": n}
