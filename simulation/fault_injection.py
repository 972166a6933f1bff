"""Faults injected into a simulated federation: dropouts at each stage of a round and malicious replies.

Simulation only, so production code has no fault hooks: `faulty_apps(plan)` wraps the real ServerApp and
ClientApp (server/server_app.py, client/client_app.py) for `simulation.federated.run_federated(wrap=...)`.
The ClientApp wrapper alters what a node receives or sends, by a seeded `FaultPlan`; the ServerApp wrapper
only hands the real app a grid that delivers a reply twice when the node's wrapper asked for a duplicate
(a ClientApp cannot send two replies itself).

Who is faulty is drawn per round and stage from `FaultPlan.seed` alone, so a clean and a faulty run with
the same `privacy.seed` sample the same users and differ only by the faults:
- device dropouts (`device_dropout`): each node leaves that fraction of its sampled devices (slots) out
  of the train message before training (a shard node's devices dropping after being sampled: the reply
  counts fewer users; the server counts the missing ones as rejected users);
- node dropouts (`node_dropout` at `node_dropout_stages`): that fraction of the nodes answers the
  stage's message with an error instead of a reply (the server's view of a node gone: out from that stage
  on). Stages: "train" (the train message: in the clear before training, under secure aggregation the
  masked input after the shares), and secure aggregation's "keys", "shares", "unmask" queries;
- malicious nodes (`malicious_fraction`): that fraction of the nodes (at least one while it is > 0)
  corrupts its train reply with one fault of `faults`, the round's (cycled by round): NaN values, a huge
  norm, a wrong shape, its previous round's reply (a stale round), its previous reply replayed into this
  round, or a duplicate of its reply.

Fractions of n are rounded stochastically (floor(f n) + 1 with probability f n - floor(f n)), so their
expectation is exactly f n.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final, Literal

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.superlink.grid.inmemory_grid import InMemoryGrid

from shared.errors import ConfigError
from shared.messages import REPLY_CHECK, ROUND, SAMPLE, UPDATE
from shared.record_values import as_int
from simulation.federated import AppWrapper

Stage = Literal["keys", "shares", "train", "unmask"]
Fault = Literal["nan", "huge_norm", "wrong_shape", "old_round", "replay", "duplicate"]
STAGES: Final[tuple[Stage, ...]] = ("keys", "shares", "train", "unmask")
FAULTS: Final[tuple[Fault, ...]] = ("nan", "huge_norm", "wrong_shape", "old_round", "replay", "duplicate")
QUERY_STAGES: Final[dict[str, Stage]] = {
    "query.secagg_keys": "keys",
    "query.secagg_shares": "shares",
    "query.secagg_unmask": "unmask",
}
QUERIES: Final = ("describe", "trending", "start_check", "secagg_keys", "secagg_shares", "secagg_unmask")
DUPLICATE_MARK: Final = "fault-duplicate"  # ConfigRecord a node's reply carries to be delivered twice
LAST_REPLY: Final = "fault-last-reply"  # context.state prefix: the node's previous honest train reply
DROPOUT_ERROR_CODE: Final = 9_001  # the error a dropped node's "reply" carries (no Flower code is meant)
HUGE: Final = 1e6  # how much a huge-norm fault scales a node's sum by
STAGE_SALT: Final = {"device": 0, "keys": 1, "shares": 2, "train": 3, "unmask": 4, "malicious": 5}


@dataclass(frozen=True, kw_only=True)
class FaultPlan:
    """Which faults a simulated federation suffers; the fractions are of sampled devices (device_dropout)
    or of the federation's nodes (the others), per round and stage."""

    seed: int = 0
    device_dropout: float = 0.0
    node_dropout: float = 0.0
    node_dropout_stages: tuple[Stage, ...] = ("train",)
    malicious_fraction: float = 0.0
    faults: tuple[Fault, ...] = FAULTS

    def __post_init__(self) -> None:
        for name in ("device_dropout", "node_dropout", "malicious_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"FaultPlan.{name} must be in [0, 1], got {getattr(self, name)}")
        if not set(self.node_dropout_stages) <= set(STAGES) or not set(self.faults) <= set(FAULTS):
            raise ConfigError(f"FaultPlan stages must be among {STAGES} and faults among {FAULTS}")
        if self.malicious_fraction > 0 and not self.faults:
            raise ConfigError("FaultPlan.malicious_fraction > 0 needs at least one fault")

    def _rng(self, round_number: int, what: str) -> np.random.Generator:
        return np.random.default_rng([self.seed, round_number, STAGE_SALT[what]])

    def _chosen(self, fraction: float, n: int, rng: np.random.Generator) -> np.ndarray:
        """Indices 0..n-1 picked: a stochastically rounded fraction of n (at least one for malicious)."""
        exact = fraction * n
        k = int(exact) + int(rng.random() < exact - int(exact))
        return rng.permutation(n)[:k]

    def node_drops(self, stage: Stage, round_number: int, partition: int, n_partitions: int) -> bool:
        """Does the node of `partition` drop at `stage` of the round?"""
        if self.node_dropout == 0 or stage not in self.node_dropout_stages:
            return False
        rng = self._rng(round_number, stage)
        return partition in self._chosen(self.node_dropout, n_partitions, rng)

    def kept_slots(self, slots: np.ndarray, round_number: int, partition: int) -> np.ndarray:
        """The node's sampled slots minus the devices that drop before training."""
        if self.device_dropout == 0 or slots.size == 0:
            return slots
        rng = np.random.default_rng([self.seed, round_number, STAGE_SALT["device"], partition])
        dropped = slots[self._chosen(self.device_dropout, slots.size, rng)]
        return np.sort(np.setdiff1d(slots, dropped))

    def fault(self, round_number: int, partition: int, n_partitions: int) -> Fault | None:
        """The fault the node of `partition` commits in the round's train reply, if it is malicious then."""
        if self.malicious_fraction == 0:
            return None
        rng = self._rng(round_number, "malicious")
        exact = self.malicious_fraction * n_partitions
        k = max(1, int(exact) + int(rng.random() < exact - int(exact)))
        if partition not in rng.permutation(n_partitions)[:k]:
            return None
        return self.faults[(round_number - 1) % len(self.faults)]


def _round_of(message: Message) -> int:
    """The round a train message or a secure aggregation query belongs to."""
    content = message.content
    record = content.config_records.get(ROUND) or content.config_records.get("secagg")
    return int(record["round"]) if record is not None else 0  # type: ignore[arg-type]


def _dropped(message: Message, stage: str) -> Message:
    return Message(Error(DROPOUT_ERROR_CODE, f"simulated dropout at the {stage} stage"), reply_to=message)


def _copy_records(content: RecordDict) -> RecordDict:
    """A deep copy of a message's records (array bytes included)."""
    out = RecordDict()
    for name, record in content.items():
        if isinstance(record, ArrayRecord):
            out[name] = ArrayRecord({k: Array(v.numpy().copy()) for k, v in record.items()})
        elif isinstance(record, ConfigRecord):
            out[name] = ConfigRecord(dict(record))
        else:
            out[name] = MetricRecord(dict(record))
    return out


def _update_array(content: RecordDict) -> tuple[str, np.ndarray]:
    """(key, array) of a train reply's update: the clear sum ("sum") or the masked words ("masked")."""
    record = content.array_records[UPDATE]
    key = "masked" if "masked" in record else "sum"
    return key, record[key].numpy()


def corrupt(content: RecordDict, fault: Fault, previous: RecordDict | None) -> RecordDict:
    """The node's honest train reply `content` turned into `fault` (`previous`: its last honest reply)."""
    if fault in ("old_round", "replay"):
        stale = _copy_records(previous if previous is not None else content)
        echo = dict(content.config_records[REPLY_CHECK])
        old = dict(stale.config_records[REPLY_CHECK])
        if previous is None or fault == "replay":  # replayed into this round: only the nonce is wrong
            old.update({"run-id": echo["run-id"], "round": echo["round"], "nonce": secrets.token_hex(16)})
        if fault == "old_round" and previous is None:  # no earlier reply: one claimed for the last round
            old["round"] = as_int(echo["round"], name="round") - 1
        if fault == "replay" and previous is not None:
            old["nonce"] = str(previous.config_records[REPLY_CHECK]["nonce"])
        stale[REPLY_CHECK] = ConfigRecord(old)
        return stale
    out = _copy_records(content)
    if fault == "duplicate":
        out[DUPLICATE_MARK] = ConfigRecord({"copies": 2})
        return out
    key, values = _update_array(out)
    bad: np.ndarray
    if fault == "nan":
        bad = values.astype(np.float64)
        bad[0] = np.nan
    elif fault == "huge_norm":
        if values.dtype == np.uint64:  # masked words: the unmasked sum becomes huge
            bad = values + np.uint64(2**50)
        else:
            bad = (values.astype(np.float32) + 1.0) * np.float32(HUGE)
    else:  # wrong_shape
        bad = values[:-1]
    out[UPDATE] = ArrayRecord({key: Array(np.ascontiguousarray(bad))})
    return out


def faulty_client_app(inner: ClientApp, plan: FaultPlan) -> ClientApp:
    """A ClientApp that passes every message to `inner` and applies `plan`'s faults around it."""
    app = ClientApp()

    def node_of(context: Context) -> tuple[int, int]:
        config = context.node_config
        return int(config.get("partition-id", 0)), int(config.get("num-partitions", 1))

    def query(message: Message, context: Context) -> Message:
        stage = QUERY_STAGES.get(message.metadata.message_type)
        partition, n = node_of(context)
        if stage is not None and plan.node_drops(stage, _round_of(message), partition, n):
            return _dropped(message, stage)
        return inner(message, context)

    def train(message: Message, context: Context) -> Message:
        round_number = _round_of(message)
        partition, n = node_of(context)
        if plan.node_drops("train", round_number, partition, n):
            return _dropped(message, "train")
        slots = message.content.array_records[SAMPLE]["slots"].numpy()
        kept = plan.kept_slots(slots, round_number, partition)
        if kept.size != slots.size:
            message.content[SAMPLE] = ArrayRecord({"slots": Array(kept.astype(np.int64))})
        reply = inner(message, context)
        if reply.has_error():
            return reply
        fault = plan.fault(round_number, partition, n)
        previous = _previous_reply(context.state)
        _keep_reply(context.state, reply.content)
        if fault is None:
            return reply
        return Message(corrupt(reply.content, fault, previous), reply_to=message)

    for name in QUERIES:
        app.query(name)(query)
    app.train()(train)
    app.evaluate()(lambda message, context: inner(message, context))
    return app


def _previous_reply(state: RecordDict) -> RecordDict | None:
    names = [k for k in state if k.startswith(LAST_REPLY + ":")]
    if not names:
        return None
    return RecordDict({k.split(":", 1)[1]: state[k] for k in names})


def _keep_reply(state: RecordDict, content: RecordDict) -> None:
    for k in [k for k in state if k.startswith(LAST_REPLY + ":")]:
        del state[k]
    for name, record in _copy_records(content).items():
        state[f"{LAST_REPLY}:{name}"] = record


class DuplicatingGrid:
    """The real grid, except that a reply carrying DUPLICATE_MARK is delivered twice (the mark removed)."""

    def __init__(self, grid: Grid) -> None:
        self._grid = grid
        if isinstance(grid, InMemoryGrid):
            grid.pull_interval = 0.01  # what server/rounds/messaging.py's poll_replies_often would set

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        return list(self._deliver(self._grid.send_and_receive(messages, timeout=timeout)))

    @staticmethod
    def _deliver(replies: Iterable[Message]) -> Iterator[Message]:
        for reply in replies:
            copies = 1
            if not reply.has_error() and DUPLICATE_MARK in reply.content.config_records:
                copies = as_int(reply.content.config_records[DUPLICATE_MARK]["copies"], name="copies")
                del reply.content[DUPLICATE_MARK]
            for _ in range(copies):
                yield reply


def faulty_server_app(inner: ServerApp) -> ServerApp:
    """A ServerApp running `inner` on a DuplicatingGrid."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        inner(DuplicatingGrid(grid), context)  # type: ignore[arg-type]

    return app


def faulty_apps(plan: FaultPlan) -> AppWrapper:
    """What `run_federated(wrap=...)` takes: the real apps -> the apps under `plan`'s faults."""

    def wrap(server_app: ServerApp, client_app: ClientApp) -> tuple[ServerApp, ClientApp]:
        return faulty_server_app(server_app), faulty_client_app(client_app, plan)

    return wrap
