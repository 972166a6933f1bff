"""The fedhome ClientApp (Flower Message API): a node hosting one device or a shard of virtual devices.

Messages it answers (the ServerApp in server/server_app.py sends them):
- query "describe": how many users (devices) this node hosts. Their slots are 0..n-1; the server samples
  slots, never sees user identities or data.
- train: global trainable parameters, the sampled slots, the round seed and clip norm -> the SUM of the
  sampled users' clipped updates (noised per user in local-DP mode), their count, and how many were
  unclipped (only with adaptive clipping; else 0), with the message's reply check (run, round, nonce)
  echoed unchanged so that the server can tell a replayed or stale reply (shared/messages.py:
  ReplyCheck). The noise multiplier and whether a fixed noise seed is
  accepted come from the node's own configuration, never from the round's settings
  (client/training/own_privacy.py): a round asking for less noise, or sending a fixed seed to a node not
  configured deterministic, is refused. Clipping and local noise are shared.privacy.mechanism.UserClipping's
  on every path. Per-user updates never leave the node. With `privacy.record_level` (one device per node)
  the device trains its user by record-level DP-SGD (client/training/dp_sgd.py), clips that update the same
  way, keeps the Opacus accountant in `context.state` across rounds, and also reports "record-epsilon".
- evaluate: global parameters -> sums of NDCG@10 and HR@10 over the node's users with a validation target.
- train, evaluate and start_check messages may carry the run's popularity prior (n_items float32: the DP count
  release made before round 1, server/trending/popularity_release.py); the node puts it in its model
  (`Node.use_prior`; zeros when a message carries none) and refuses one of the wrong length or with
  non-finite values.

Participation caps (client/training/participation_counts.py): a sampled device that has already contributed to
its cap of training rounds in this run refuses and is left out of the sum; the reply says how many refused
("refused-count"). Node config "participation-cap" gives the node's devices their own (lower) cap,
"device-dir" the folder where the node's one device keeps its receipts (client/device/receipts.py), and
"counts-dir" a folder where any node (a shard too) keeps its devices' counts. Outside Flower's simulation
engine a node asked for a cap without either folder refuses to train: a restarted SuperNode would otherwise
start its devices' counts from zero.
- queries "secagg_keys", "secagg_shares", "secagg_unmask" and a train message carrying "secagg": secure
  aggregation (client/masked_update.py): the train reply is then masked, and the server learns only
  the sum over the round's nodes.
- query "start_check": the trained and the start (initial) parameters and the sampled slots -> the SUM over
  the sampled users of g_u = NDCG@10(trained) - NDCG@10(start) on their held-out validation row, each
  clamped to [-1, 1] (0 without such a row), and the count of sampled users
  (client/federated_evaluation.py: start_gain_sum). Refused unless the node's own configuration runs the
  check with the z_s the message names (client/training/own_privacy.py). Nothing per user leaves.
- query "trending": the sampled slots and the window -> the SUM of the sampled users' trending contribution
  vectors (client/trending_contribution.py: at most k recent distinct items each, L2 norm <= 1) and their
  count, from the users' training rows (in simulation the held-out rows are never released). Nothing per user
  leaves. The popularity prior's count release is this query too (an unbounded window: the whole history).

Where a node's users come from, node config "train-from" (client/node.py):
- "partition" (the default): users of the simulation data set, by `node_config["partition-id"]` and
  `["num-partitions"]` (set by Flower's simulation engine, or by `flower-supernode --node-config`). With
  `devices_per_node = "shard"` partition p hosts the p-th of num_partitions contiguous blocks of users; with
  "one" it hosts exactly user p. Either way, nodes ordered by partition id list the users in index order, so
  the server's slot numbering (and hence its Poisson sample for a given seed) is the same whichever way the
  population is spread over nodes.
- "device-store": a real device's SuperNode (`flower-supernode --node-config "train-from='device-store'
  device-dir='/path/to/device'"`). It hosts one user, its shopper (slot 0; describe says n_users 1, so the
  server's N is the number of such nodes), whose rows are the device folder's SQLite event store, the one
  the SDK writes (client/device/event_store.py), read afresh for every train and trending message and turned
  into training sequences by the example builder the simulation's rows also feed
  (client/training/device_store.py, shared/data/device_rows.py). Its receipts, participation counts and a
  local training log (round, events and examples trained on: client/training/device_store.py) stay in that
  folder. The catalogue, its text vectors and attributes are those of the release installed in the folder
  (node config "release-key": the app's pinned key verifies it), so a device reads nothing of the
  simulation's data set or run folder. A device trains on every event it holds, so the run must say
  `federated.train_on_valid = true` (else every message is refused with a ConfigError, describe included):
  the start check is then off (a start_check query is refused as well), and evaluate answers with no users
  (no held-out row; one shopper's metric would be one user's value in the clear). A folder without a
  readable store or verified release refuses the round (DataError naming the folder, in the device's own
  log: the server is told DEVICE_REFUSAL only, kept_on_device); an empty store sends a zero update that
  counts. "device-dir" alone keeps its old meaning (receipts of a partition node's one device).
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.federated_evaluation import ranking_sums, start_gain_sum
from client.masked_update import handle_keys, handle_shares, handle_unmask, is_secure, masked_content
from client.node import Node, load_node
from client.training.dp_sgd import RecordLevelTrainer
from client.training.participation_counts import (
    Participation,
    RoundTerms,
    own_cap,
    require_lasting_counts,
)
from client.training.round_update import LocalTrainer, UpdateSum
from client.trending_contribution import TrendingWindow, shard_sum
from shared.config import FedhomeConfig, from_flat
from shared.errors import DataError, SignatureError, UpdateRejectedError
from shared.messages import (
    STATS,
    EvaluateReply,
    EvaluateRequest,
    PopulationReply,
    RoundSettings,
    StartCheckReply,
    StartCheckRequest,
    TrainInstruction,
    TrainReply,
    echo_reply_check,
    read_slots,
)
from shared.model.params import check_flat, set_flat
from shared.privacy.mechanism import UserClipping
from shared.privacy.noise import GaussianNoise
from shared.record_values import as_float, as_int

log = logging.getLogger(__name__)
RECORD_STATE = "record-level"  # context.state entry: the device's Opacus accountant state, as JSON
CONTRIBUTION_BOUND = 1.0  # L2 bound of one user's trending contribution (client/trending_contribution.py)
# what the server hears of a device's refusal for a reason on the device (kept_on_device)
DEVICE_REFUSAL = "the device refused: its event store or release could not be read (details stay on it)"
Handler = Callable[[Message, Context], Message]


def _params(params: np.ndarray, node: Node) -> np.ndarray:
    """The global parameters, checked against the node's model layout."""
    check_flat(params, node.shared.layout)
    return params.astype(np.float32, copy=False)


def _slots(slots: np.ndarray, node: Node) -> np.ndarray:
    """The sampled slots: distinct and inside the node's population. A repeated slot would put its user in
    the sum twice (sensitivity 2C) and count as one round toward its participation cap and receipts."""
    if slots.ndim != 1 or (slots.size and (slots.min() < 0 or slots.max() >= node.users.size)):
        raise UpdateRejectedError("sampled slots outside this node's population")
    if np.unique(slots).size != slots.size:
        raise UpdateRejectedError("sampled slots repeat a slot")
    return slots


def handle_describe(node: Node, message: Message) -> Message:
    reply = PopulationReply(n_users=int(node.users.size), partition_id=node.partition_id)
    return Message(reply.to_records(), reply_to=message)


def round_terms(settings: RoundSettings, *, secure: bool) -> RoundTerms:
    """What a device's receipt records of the round (client/device/receipts.py)."""
    return RoundTerms(
        run_id=settings.run_id,
        round=settings.round,
        clip_norm=settings.clip_norm,
        noise_multiplier=settings.noise_multiplier,
        sample_rate=settings.sample_rate,
        delta=settings.delta,
        participation_cap=settings.participation_cap,
        secure_aggregation=secure,
    )


def handle_train(node: Node, message: Message, state: RecordDict) -> Message:
    """A train round; `state` is the node's context.state (participation counts, and in record-level mode
    the device's accountant, live there)."""
    instruction = TrainInstruction.from_records(message.content)
    settings = instruction.settings
    params, slots = _params(instruction.params, node), _slots(instruction.slots, node)
    node.use_prior(instruction.prior)
    terms = round_terms(settings, secure=is_secure(message))
    own = node.privacy  # the node's own terms: the server's settings cannot lower them
    noise = own.noise_source(settings)
    local_z = own.local_noise_multiplier(settings)
    cap = own_cap(settings.participation_cap, node.device_cap)
    require_lasting_counts(cap, folder=node.folder, counts_dir=node.counts_dir, simulated=node.simulated)
    trainer = node.local_trainer()  # a device that trains from its store reads it now, or refuses the round
    counts = Participation(
        state,
        run_id=settings.run_id,
        n_devices=node.users.size,
        folder=node.folder,
        counts_dir=node.counts_dir,
    )
    slots, refused = counts.admit(slots, cap=cap)
    users = node.users[slots]
    record_epsilon = None
    if node.shared.config.privacy.record_level:
        result, record_epsilon = record_level_sum(
            node, trainer, state, params, users, settings, noise, local_z
        )
    else:
        result = trainer.clipped_sum(
            params,
            users,
            round_seed=settings.round_seed,
            clip_norm=settings.clip_norm,
            local_noise_multiplier=local_z,
            noise=noise,
        )
    counts.record(slots, terms, cap=cap)
    if node.store is not None and users.size:  # the device's own log of what it trained on: never sent
        node.store.log_round(
            run_id=settings.run_id,
            round_number=settings.round,
            events=int(trainer.seqs.lengths()[users].sum()),
            examples=int(trainer.examples.count(users).sum()),
        )
    unclipped = own.unclipped_count(result.unclipped_count)
    reply = TrainReply(result.total, result.count, unclipped, refused, record_epsilon)
    if is_secure(message):
        stats = dict(reply.stats()[STATS])
        z, population = own.secure_noise_multiplier(trending=False), own.population
        content = masked_content(
            message, state, result, stats, noise, noise_multiplier=z, bound=settings.clip_norm,
            population=population,
        )  # fmt: skip
        return Message(echo_reply_check(message.content, content), reply_to=message)
    return Message(echo_reply_check(message.content, reply.to_records()), reply_to=message)


def record_level_sum(
    node: Node,
    local: LocalTrainer,
    state: RecordDict,
    params: np.ndarray,
    users: np.ndarray,
    settings: RoundSettings,
    noise: GaussianNoise,
    local_noise_multiplier: float,
) -> tuple[UpdateSum, float]:
    """The device's record-level DP-SGD update clipped to the round's C (and noised with the device's
    `local_noise_multiplier` z in local mode: client/training/own_privacy.py), as a sum over its one user
    (its rows and examples those of `local`, the node's LocalTrainer), and its record-level epsilon so far;
    the accountant lives in `state` between rounds.
    A device that refused (at its participation cap: `users` empty) sends an empty sum and its epsilon."""
    if users.size > 1 or node.users.size != 1:
        raise UpdateRejectedError("a record-level device trains exactly its one user")
    shared = node.shared
    trainer = RecordLevelTrainer(
        shared.model,
        local.seqs,
        int(node.users[0]),
        layout=shared.layout,
        blocked=shared.blocked,
        config=shared.config.federated,
        privacy=shared.config.privacy,
        examples=local.examples,
    )
    if RECORD_STATE in state.config_records:
        trainer.load_state_dict(json.loads(str(state.config_records[RECORD_STATE]["accountant"])))
    if users.size == 0:
        return UpdateSum(np.zeros(shared.layout.dim, np.float32), 0, 0), trainer.record_epsilon
    update = trainer.train_round(params, round_seed=settings.round_seed)
    state[RECORD_STATE] = ConfigRecord({"accountant": json.dumps(trainer.state_dict())})
    clipping = UserClipping(settings.clip_norm)  # the mechanism of LocalTrainer.clipped_sum
    try:
        clipped, norm = clipping.clip(update.update)
    except UpdateRejectedError:  # not finite: a zero update that still counts, as in LocalTrainer
        log.warning("a record-level update was not finite and counts as a zero update")
        clipped, norm = np.zeros(shared.layout.dim, np.float32), 0.0
    if local_noise_multiplier > 0:
        z = local_noise_multiplier
        clipped = (clipped + clipping.local_noise(noise, clipped.shape, noise_multiplier=z)).astype(
            np.float32
        )
    return UpdateSum(clipped, 1, int(norm <= settings.clip_norm)), update.record_epsilon


def handle_evaluate(node: Node, message: Message) -> Message:
    """Sums of NDCG@10 and HR@10 over the node's users with a validation target. A device that trains from
    its store has none (it trains on every event it holds) and answers with no users: its one shopper's
    metric would also be a value of one user in the clear."""
    shared = node.shared
    request = EvaluateRequest.from_records(message.content)
    if node.store is not None:
        return Message(EvaluateReply(0.0, 0.0, 0).to_records(), reply_to=message)
    node.use_prior(request.prior)
    set_flat(shared.model, shared.layout, _params(request.params, node))
    ndcg, hit, n = ranking_sums(
        shared.model, shared.data_split(), node.users, stage=request.stage, max_users=request.max_users
    )
    return Message(EvaluateReply(ndcg, hit, n).to_records(), reply_to=message)


def handle_start_check(node: Node, message: Message) -> Message:
    """The start check: the sum of the sampled users' clamped NDCG@10 gains of the trained model over its
    start, and how many users were sampled."""
    request = StartCheckRequest.from_records(message.content)
    if node.store is not None:
        raise UpdateRejectedError(
            "this device trains from its own store on every event it holds: no held-out row is left for a "
            "start check (its run has federated.train_on_valid = true, which turns the check off)"
        )
    node.privacy.check_start_check(request.noise_multiplier)
    shared = node.shared
    trained, start = _params(request.trained, node), _params(request.start, node)
    users = node.users[_slots(request.slots, node)]
    node.use_prior(request.prior)
    split = shared.data_split()
    total = start_gain_sum(shared.model, shared.layout, split, users, trained=trained, start=start)
    return Message(StartCheckReply(total, int(users.size)).to_records(), reply_to=message)


def handle_trending(node: Node, message: Message, state: RecordDict) -> Message:
    """A trending round: the sum of the sampled users' contribution vectors (n_items,) and their count."""
    settings = message.content.config_records["trending"]
    window = TrendingWindow(
        as_of_s=as_int(settings["as-of-s"], name="as-of-s"),
        window_s=as_float(settings["window-s"], name="window-s"),
        max_items=as_int(settings["max-items"], name="max-items"),
        n_items=node.shared.n_items,
    )
    users = node.users[_slots(read_slots(message.content), node)]
    total = shard_sum(node.local_rows(), users, window)
    if is_secure(message):  # the node adds its share of the noise; the server sees only the noised total
        stats: dict[str, int] = {"count": int(users.size), "refused-count": 0}
        result, noise, own = UpdateSum(total, int(users.size), 0), GaussianNoise(), node.privacy
        z = own.secure_noise_multiplier(trending=True)
        content = masked_content(
            message, state, result, stats, noise, noise_multiplier=z, bound=CONTRIBUTION_BOUND,
            population=own.population,
        )  # fmt: skip
        return Message(content, reply_to=message)
    content = RecordDict(
        {
            "trending": ArrayRecord({"sum": Array(total)}),
            "stats": MetricRecord({"count": int(users.size)}),
        }
    )
    return Message(content, reply_to=message)


def kept_on_device(handler: Handler) -> Handler:
    """`handler`, whose errors on a device that trains from its store stay on the device: Flower sends an
    exception's text to the server (its error reply's reason), and a device's DataError or SignatureError
    names its folder and what in it could not be read. Such an error is logged here, in full, and the
    server gets DEVICE_REFUSAL only. Configuration errors (the run's settings, public) and refusals of
    the protocol's own checks (UpdateRejectedError) pass as they are, as does everything on a simulation
    node."""

    @functools.wraps(handler)
    def guarded(message: Message, context: Context) -> Message:
        try:
            return handler(message, context)
        except (DataError, SignatureError, OSError) as exc:
            if context.node_config.get("train-from") != "device-store":
                raise
            log.error("this device refused a %s message: %s", message.metadata.message_type, exc)
            raise UpdateRejectedError(DEVICE_REFUSAL) from exc

    return guarded


def make_client_app(config: FedhomeConfig | None = None) -> ClientApp:
    """The ClientApp: with `config` (fedhome-sim) as given; without (`flwr run`) from the run config."""
    app = ClientApp()

    def node_for(context: Context) -> Node:
        return load_node(config or from_flat(dict(context.run_config)), context)

    @app.query("describe")
    @kept_on_device
    def describe(message: Message, context: Context) -> Message:
        return handle_describe(node_for(context), message)

    @app.query("trending")
    @kept_on_device
    def trending(message: Message, context: Context) -> Message:
        return handle_trending(node_for(context), message, context.state)

    @app.query("start_check")
    @kept_on_device
    def start_check(message: Message, context: Context) -> Message:
        return handle_start_check(node_for(context), message)

    @app.query("secagg_keys")
    def secagg_keys(message: Message, context: Context) -> Message:
        return handle_keys(message, context.state)

    @app.query("secagg_shares")
    def secagg_shares(message: Message, context: Context) -> Message:
        return handle_shares(message, context.state)

    @app.query("secagg_unmask")
    def secagg_unmask(message: Message, context: Context) -> Message:
        return handle_unmask(message, context.state)

    @app.train()
    @kept_on_device
    def train(message: Message, context: Context) -> Message:
        return handle_train(node_for(context), message, context.state)

    @app.evaluate()
    @kept_on_device
    def evaluate(message: Message, context: Context) -> Message:
        return handle_evaluate(node_for(context), message)

    return app


app = make_client_app()
