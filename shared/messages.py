"""The messages between the ServerApp and the nodes, typed: a training round's instructions and a node's
reply, the evaluation request and reply, the start check's request and reply, and the population query's
reply. A training instruction, an evaluation request and a start check request may carry the run's
popularity prior (n_items float32, `PRIOR`; server/trending/popularity_release.py), which the node puts in
its model before using it (without one the node's prior is zeros). Each has `to_records` (the
Flower records it travels as) and `from_records` (the typed value back, checked); the hyphenated record
keys are written here and nowhere else.

A reply is untrusted input for the server: `from_records` of a reply raises UpdateRejectedError naming what
is wrong, and the server counts and drops it. Instructions are checked the same way on the node. Secure
aggregation's stage messages and the trending query have their own formats (server/secagg/,
client/masked_update.py, server/trending/trending_query.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Final

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, ConfigRecordValues, MetricRecord, RecordDict

from shared.errors import UpdateRejectedError
from shared.record_values import as_float, as_int

# the records' names in a message's content
GLOBAL: Final = "global"  # ArrayRecord {"params"}: the global parameters, flat float32
SAMPLE: Final = "sample"  # ArrayRecord {"slots"}: the node's sampled local slots, int64
ROUND: Final = "round"  # ConfigRecord: RoundSettings
UPDATE: Final = "update"  # ArrayRecord {"sum"}: a node's sum of clipped updates
STATS: Final = "stats"  # MetricRecord: the counts (and record-level epsilon) of a train reply
EVALUATE: Final = "evaluate"  # ConfigRecord: EvaluateRequest
METRICS: Final = "metrics"  # MetricRecord: EvaluateReply
POPULATION: Final = "population"  # MetricRecord: PopulationReply
START: Final = "start"  # ArrayRecord {"params"}: the run's initial (start) parameters, flat float32
START_CHECK: Final = "start-check"  # ConfigRecord: StartCheckRequest's noise multiplier
GAIN: Final = "gain"  # MetricRecord: StartCheckReply
PRIOR: Final = "popularity-prior"  # ArrayRecord {"prior"}: the run's popularity prior, (n_items,) float32
# ConfigRecord {"run-id", "round", "nonce"}: sent with each train message, echoed unchanged in its reply
REPLY_CHECK: Final = "reply-check"
GAIN_SLACK = 1e-9  # absolute: a sum of `count` gains in [-1, 1] lies in [-count, count]
SEED_RANGE = 2**62  # seeds travel as integers below this (record values are 64-bit)


@dataclass(frozen=True, kw_only=True)
class RoundSettings:
    """What every node of a training round is told (and each device's receipt records): the run and round,
    the privacy terms the round is accounted with, the clip norm C, and the seeds."""

    round: int
    run_id: str
    sample_rate: float
    noise_multiplier: float  # the accounted z (of the central noise, or of each device's in local mode)
    delta: float
    participation_cap: int  # 0: none
    clip_norm: float
    local_noise_multiplier: float  # > 0 only in local-DP mode: each device noises its own update
    round_seed: int  # the local training's randomness (negatives, example order)
    noise_seed: int  # local-DP noise; -1: OS entropy (a fixed seed is for tests and reproductions only)

    def for_node(self, position: int) -> RoundSettings:
        """The settings for the node at `position` of the round: a fixed noise seed differs per node, so
        that local-DP noise is independent across nodes even in deterministic runs (-1 stays -1)."""
        seed = self.noise_seed
        return replace(self, noise_seed=seed if seed < 0 else (seed + position) % SEED_RANGE)

    def to_config(self) -> ConfigRecord:
        values: dict[str, ConfigRecordValues] = {
            "round": self.round,
            "run-id": self.run_id,
            "sample-rate": self.sample_rate,
            "noise-multiplier": self.noise_multiplier,
            "delta": self.delta,
            "participation-cap": self.participation_cap,
            "clip-norm": self.clip_norm,
            "local-noise-multiplier": self.local_noise_multiplier,
            "round-seed": self.round_seed,
            "noise-seed": self.noise_seed,
        }
        return ConfigRecord(values)

    @classmethod
    def from_config(cls, record: ConfigRecord) -> RoundSettings:
        try:
            return cls(
                round=as_int(record["round"], name="round"),
                run_id=str(record["run-id"]),
                sample_rate=as_float(record["sample-rate"], name="sample-rate"),
                noise_multiplier=as_float(record["noise-multiplier"], name="noise-multiplier"),
                delta=as_float(record["delta"], name="delta"),
                participation_cap=as_int(record["participation-cap"], name="participation-cap"),
                clip_norm=as_float(record["clip-norm"], name="clip-norm"),
                local_noise_multiplier=as_float(
                    record["local-noise-multiplier"], name="local-noise-multiplier"
                ),
                round_seed=as_int(record["round-seed"], name="round-seed"),
                noise_seed=as_int(record["noise-seed"], name="noise-seed"),
            )
        except KeyError as exc:
            raise UpdateRejectedError(f"round settings without {exc}") from exc


@dataclass(frozen=True)
class TrainInstruction:
    """A training round for one node: the global parameters, its sampled slots, the round's settings and the
    run's popularity prior (None: the run has none)."""

    params: np.ndarray  # (dim,) float32
    slots: np.ndarray  # (n,) int64, local slots of the node's sampled users
    settings: RoundSettings
    prior: np.ndarray | None = None  # (n_items,) float32

    def to_records(self) -> dict[str, ArrayRecord | MetricRecord | ConfigRecord]:
        """The content's records (secure aggregation adds its own beside them)."""
        return {
            GLOBAL: global_params_record(self.params),
            SAMPLE: ArrayRecord({"slots": Array(self.slots.astype(np.int64))}),
            ROUND: self.settings.to_config(),
            **prior_records(self.prior),
        }

    @classmethod
    def from_records(cls, content: RecordDict) -> TrainInstruction:
        try:
            settings = RoundSettings.from_config(content.config_records[ROUND])
        except KeyError as exc:
            raise UpdateRejectedError(f"a train message without {exc}") from exc
        return cls(read_global_params(content), read_slots(content), settings, read_prior(content))


@dataclass(frozen=True)
class TrainReply:
    """A node's answer to a training round: the sum of its devices' clipped updates and the counts that
    bound it (count users summed, of which `unclipped_count` were not clipped; `refused_count` devices
    refused, at their participation cap), and in record-level mode the largest record-level epsilon of its
    devices."""

    update_sum: np.ndarray  # (dim,) float32
    count: int
    unclipped_count: int
    refused_count: int = 0
    record_epsilon: float | None = None

    def to_records(self) -> RecordDict:
        return RecordDict(
            {UPDATE: ArrayRecord({"sum": Array(self.update_sum.astype(np.float32))}), **self.stats()}
        )

    def stats(self) -> dict[str, MetricRecord]:
        """The counts alone (what a securely aggregated reply sends beside its masked sum)."""
        values: dict[str, int | float | list[int] | list[float]] = {
            "count": self.count,
            "unclipped-count": self.unclipped_count,
            "refused-count": self.refused_count,
        }
        if self.record_epsilon is not None:
            values["record-epsilon"] = self.record_epsilon
        return {STATS: MetricRecord(values)}

    @classmethod
    def from_records(cls, content: RecordDict, *, n_sampled: int) -> TrainReply:
        """The reply of a node that was sent `n_sampled` slots: its counts add up to at most them (a sampled
        device that dropped before training is left out of the sum and of both counts; the server counts it
        as rejected)."""
        try:
            update_sum = content.array_records[UPDATE]["sum"].numpy()
            stats = content.metric_records[STATS]
            count = as_int(stats["count"], name="count")
            unclipped = as_int(stats["unclipped-count"], name="unclipped-count")
            refused = as_int(stats.get("refused-count", 0), name="refused-count")
        except (KeyError, TypeError, ValueError) as exc:
            raise UpdateRejectedError(f"malformed train reply: {exc}") from exc
        if refused < 0 or count + refused > n_sampled or not 0 <= unclipped <= count:
            raise UpdateRejectedError(
                f"reply counts {count} users ({unclipped} unclipped) and {refused} refused, "
                f"{n_sampled} were sampled"
            )
        return cls(
            update_sum.astype(np.float64),
            count,
            unclipped,
            refused,
            read_record_epsilon(content) if "record-epsilon" in content.metric_records[STATS] else None,
        )


def read_record_epsilon(content: RecordDict) -> float:
    """A reply's record-level epsilon (a device's, so far); UpdateRejectedError when it is missing, or not a
    number >= 0."""
    try:
        value = content.metric_records[STATS]["record-epsilon"]
    except KeyError as exc:
        raise UpdateRejectedError(f"a record-level reply without its record-level epsilon: {exc!r}") from exc
    epsilon = as_float(value, name="record-epsilon")
    if not epsilon >= 0:
        raise UpdateRejectedError(f"record-level epsilon {epsilon} is not >= 0")
    return epsilon


@dataclass(frozen=True)
class EvaluateRequest:
    """Federated evaluation: rank with `params` for up to `max_users` of the node's users at `stage`."""

    params: np.ndarray
    stage: str  # "valid" or "test"
    max_users: int
    prior: np.ndarray | None = None  # (n_items,) float32, the run's popularity prior (None: none)

    def to_records(self) -> RecordDict:
        settings = ConfigRecord({"stage": self.stage, "max-users": self.max_users})
        return RecordDict(
            {GLOBAL: global_params_record(self.params), EVALUATE: settings, **prior_records(self.prior)}
        )

    @classmethod
    def from_records(cls, content: RecordDict) -> EvaluateRequest:
        try:
            settings = content.config_records[EVALUATE]
            stage, max_users = str(settings["stage"]), as_int(settings["max-users"], name="max-users")
        except KeyError as exc:
            raise UpdateRejectedError(f"an evaluate message without {exc}") from exc
        return cls(read_global_params(content), stage, max_users, read_prior(content))


@dataclass(frozen=True)
class EvaluateReply:
    """Sums over the node's evaluated users (a mean is taken over all nodes' sums)."""

    ndcg_sum: float
    hit_sum: float
    n: float

    def to_records(self) -> RecordDict:
        return RecordDict(
            {METRICS: MetricRecord({"ndcg-sum": self.ndcg_sum, "hit-sum": self.hit_sum, "n": self.n})}
        )

    @classmethod
    def from_records(cls, content: RecordDict) -> EvaluateReply:
        try:
            metrics = content.metric_records[METRICS]
            return cls(
                as_float(metrics["ndcg-sum"], name="ndcg-sum"),
                as_float(metrics["hit-sum"], name="hit-sum"),
                as_float(metrics["n"], name="n"),
            )
        except KeyError as exc:
            raise UpdateRejectedError(f"an evaluate reply without {exc}") from exc


@dataclass(frozen=True)
class StartCheckRequest:
    """The start check for one node (server/rounds/start_check.py): the trained and the start parameters,
    the node's sampled slots, and the noise multiplier z_s the server will account (the node refuses any
    other than its own configuration's: client/training/own_privacy.py)."""

    trained: np.ndarray  # (dim,) float32, the global parameters after the last training round
    start: np.ndarray  # (dim,) float32, the run's initial parameters
    slots: np.ndarray  # (n,) int64, local slots of the node's sampled users
    noise_multiplier: float
    prior: np.ndarray | None = None  # (n_items,) float32, the run's popularity prior (None: none)

    def to_records(self) -> RecordDict:
        return RecordDict(
            {
                GLOBAL: global_params_record(self.trained),
                START: global_params_record(self.start),
                SAMPLE: ArrayRecord({"slots": Array(self.slots.astype(np.int64))}),
                START_CHECK: ConfigRecord({"noise-multiplier": self.noise_multiplier}),
                **prior_records(self.prior),
            }
        )

    @classmethod
    def from_records(cls, content: RecordDict) -> StartCheckRequest:
        try:
            start = content.array_records[START]["params"].numpy()
            z = as_float(content.config_records[START_CHECK]["noise-multiplier"], name="noise-multiplier")
        except KeyError as exc:
            raise UpdateRejectedError(f"a start check message without {exc}") from exc
        return cls(read_global_params(content), start, read_slots(content), z, read_prior(content))


@dataclass(frozen=True)
class StartCheckReply:
    """A node's sum of its sampled users' gains g_u = NDCG@10(trained) - NDCG@10(start), each in [-1, 1]
    (0 for a user without a held-out validation target), and how many sampled users it covers (all of
    them: the number with a target is not released)."""

    gain_sum: float
    count: int

    def to_records(self) -> RecordDict:
        return RecordDict({GAIN: MetricRecord({"sum": self.gain_sum, "count": self.count})})

    @classmethod
    def from_records(cls, content: RecordDict, *, n_sampled: int) -> StartCheckReply:
        """The reply of a node that was sent `n_sampled` slots: the count must be theirs and the sum a sum
        of that many values in [-1, 1]; UpdateRejectedError otherwise."""
        try:
            gain = content.metric_records[GAIN]
            gain_sum = as_float(gain["sum"], name="sum")
            count = as_int(gain["count"], name="count")
        except (KeyError, TypeError, ValueError) as exc:
            raise UpdateRejectedError(f"malformed start check reply: {exc}") from exc
        if count != n_sampled:
            raise UpdateRejectedError(f"start check reply counts {count} users, {n_sampled} were sampled")
        if not (math.isfinite(gain_sum) and abs(gain_sum) <= count + GAIN_SLACK):
            raise UpdateRejectedError(f"start check sum {gain_sum} is not a sum of {count} gains in [-1, 1]")
        return cls(gain_sum, count)


@dataclass(frozen=True)
class PopulationReply:
    """A node's answer to the population query: how many users (devices) it hosts, and its partition id
    (nodes are ordered by it, so global slots follow the users' order)."""

    n_users: int
    partition_id: int

    def to_records(self) -> RecordDict:
        return RecordDict(
            {POPULATION: MetricRecord({"n-users": self.n_users, "partition-id": self.partition_id})}
        )

    @classmethod
    def from_records(cls, content: RecordDict) -> PopulationReply:
        try:
            population = content.metric_records[POPULATION]
            n_users = as_int(population["n-users"], name="n-users")
        except KeyError as exc:
            raise UpdateRejectedError(f"a population reply without {exc}") from exc
        return cls(n_users, as_int(population.get("partition-id", 0), name="partition-id"))


def global_params_record(params: np.ndarray) -> ArrayRecord:
    return ArrayRecord({"params": Array(params)})


def read_slots(content: RecordDict) -> np.ndarray:
    """The sampled local slots a train message, a trending query or a start check carries (int64)."""
    try:
        return content.array_records[SAMPLE]["slots"].numpy().astype(np.int64)
    except KeyError as exc:
        raise UpdateRejectedError(f"a message without its sampled slots: {exc}") from exc


def prior_records(prior: np.ndarray | None) -> dict[str, ArrayRecord]:
    """The popularity prior's record of a message's content ({} without a prior)."""
    if prior is None:
        return {}
    return {PRIOR: ArrayRecord({"prior": Array(np.ascontiguousarray(prior, dtype=np.float32))})}


def read_prior(content: RecordDict) -> np.ndarray | None:
    """The popularity prior a message carries, (n,) float32, or None when it carries none; UpdateRejectedError
    when it is not a 1-D array of finite numbers (its length is the node's to check against its catalogue)."""
    if PRIOR not in content.array_records:
        return None
    try:
        prior = content.array_records[PRIOR]["prior"].numpy()
    except (KeyError, TypeError, ValueError) as exc:
        raise UpdateRejectedError(f"a malformed popularity prior: {exc!r}") from exc
    if prior.ndim != 1 or prior.dtype.kind != "f" or not np.isfinite(prior).all():
        raise UpdateRejectedError("the popularity prior is not a 1-D array of finite numbers")
    return prior.astype(np.float32, copy=False)


def read_global_params(content: RecordDict) -> np.ndarray:
    try:
        return content.array_records[GLOBAL]["params"].numpy()
    except KeyError as exc:
        raise UpdateRejectedError(f"a message without the global parameters: {exc}") from exc


@dataclass(frozen=True)
class ReplyCheck:
    """What binds a train reply to the one message it answers: the run, the round and a fresh random nonce
    per node and round. The node echoes the record unchanged; a reply carrying another round's record (a
    straggler's answer to an old round) or a record of this round with another nonce (a replayed reply) is
    rejected before its sum is looked at."""

    run_id: str
    round: int
    nonce: str

    def to_config(self) -> ConfigRecord:
        return ConfigRecord({"run-id": self.run_id, "round": self.round, "nonce": self.nonce})

    def check(self, content: RecordDict) -> None:
        """UpdateRejectedError (reason "stale_round" or "replayed") unless `content` echoes this check."""
        echoed = content.config_records.get(REPLY_CHECK)
        if echoed is None:
            raise UpdateRejectedError("a train reply without its round's reply check", reason="malformed")
        if echoed.get("run-id") != self.run_id or echoed.get("round") != self.round:
            raise UpdateRejectedError("a reply to another run or round", reason="stale_round")
        if echoed.get("nonce") != self.nonce:
            raise UpdateRejectedError("a replayed reply: its nonce is not this round's", reason="replayed")


def echo_reply_check(request: RecordDict, reply: RecordDict) -> RecordDict:
    """`reply` with the reply check of the train message `request` copied in (none when it carries none)."""
    if REPLY_CHECK in request.config_records:
        reply[REPLY_CHECK] = ConfigRecord(dict(request.config_records[REPLY_CHECK]))
    return reply
