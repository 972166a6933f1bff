"""The start check: after the last training round, a DP-accounted federated evaluation decides whether the
trained model beats its start (the run's initial parameters: text similarity, public); if not, the run ships
the start instead, and says so (docs/federated.md, "The start check").

The mechanism (unit of privacy: the user; add/remove-one-user neighbours). The server Poisson-samples users
with rate q_s (`start_check.sample_rate`, default 1) and sends each node with sampled users the trained and
the start parameters. Each node computes, for each sampled user with a held-out validation target (the
protocol of client/federated_evaluation.py; a target that repeats an earlier item is left out), the gain
g_u = NDCG@10(trained) - NDCG@10(start), clamped to [-1, 1], and returns only the SUM over its sampled users
(users without a target add 0) and their count. One user moves the sum by at most 1 (the sensitivity). The
server adds N(0, (z_s * 1)^2), z_s = `start_check.noise_multiplier` (default 10; 0 in privacy mode "none"), to
the total, from the same generator as training, and decides:

    "trained" when noised sum > margin * noise std (`start_check.margin`, default 0), else "start".

The release is a Poisson-subsampled Gaussian sum: RoundEvent(q_s, z_s) in the run's accountant, composed with
the training rounds and trending releases, and planned for when the training z is calibrated
(shared/privacy/planned_noise.py), so the target epsilon covers it. Only the noised sum and the decision are
published (and the realised cohort and replying users, exactly, as for the other releases); nothing per user
or per node. The central harness of simulation/ is never consulted: it reads private rows in the clear. Both
models rank with the run's popularity prior when it has one (server/trending/popularity_release.py).

When (StartCheckConfig, shared/config.py): "auto" (default) in privacy mode "central" (and "none", without
noise or cost); off, with a note in the summary, in mode "local", under secure aggregation (the server would
see node sums in the clear) and with `federated.train_on_valid` (no held-out row). A check that would take
the user epsilon past the budget is refused (BudgetExhaustedError): nothing is sampled or queried, the trained
model ships, and the summary lists the refusal.

Record and resume (as for trending, server/trending/trending_round.py): the entry (kind "start_check", no
"round" but "after_round") is committed through RunAccess.commit_entry, checkpointed with the accountant that
includes the check before it reaches the ledger; a kill between the two is repaired on resume. A resumed run
whose ledger already holds the check after its last round does not run it again: it ships what that entry
decided. What ships is `StartCheck.shipped_params` (server/server_app.py writes it as the final model).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

import numpy as np
from flwr.app import Message, MessageType
from flwr.serverapp import Grid

from server.ledger_entries import StartCheckEntry, start_check_after
from server.rounds.messaging import check_reply_source
from server.rounds.privacy_plan import derived_seed
from server.rounds.run_hooks import RunAccess
from server.strategy import NoiseSource, poisson_sample
from shared.errors import BudgetExhaustedError, ConfigError, UpdateRejectedError
from shared.messages import StartCheckReply, StartCheckRequest
from shared.model.params import params_sha256
from shared.privacy.noise import GaussianNoise
from shared.privacy.planned_noise import start_check_event

log = logging.getLogger(__name__)

SENSITIVITY = 1.0  # one user's gain lies in [-1, 1]
MECHANISM = "poisson_subsampled_gaussian_sum"
START_CHECK_MESSAGE = f"{MessageType.QUERY}.start_check"
_SAMPLE_SALT, _NOISE_SALT = 6, 7  # per-check seeds when privacy.seed is fixed (tests, reproductions)
Decision = Literal["trained", "start"]


@dataclass(frozen=True)
class GainReplies:
    total: float  # sum of the accepted nodes' gain sums
    count: int  # sampled users covered by the accepted replies
    rejected_nodes: int
    rejected_users: int  # sampled users of refused or missing replies


@dataclass(frozen=True)
class NoisedGain:
    noised_sum: float  # total + N(0, noise_std^2)
    noise_std: float  # z_s * sensitivity, the std actually drawn


class GainQuery(Protocol):
    """The clear query to the nodes (`start_check_query`, or a test's fake)."""

    def __call__(
        self,
        grid: Any,
        assignment: dict[int, np.ndarray],
        *,
        trained: np.ndarray,
        start: np.ndarray,
        noise_multiplier: float,
        timeout_s: float,
        prior: np.ndarray | None,
    ) -> GainReplies: ...


def start_check_query(
    grid: Grid,
    assignment: dict[int, np.ndarray],
    *,
    trained: np.ndarray,
    start: np.ndarray,
    noise_multiplier: float,
    timeout_s: float,
    prior: np.ndarray | None = None,
) -> GainReplies:
    """Send the start check to every node with sampled users; sum the replies that pass the checks (one
    reply per queried node, its count the node's sampled users, its sum within [-count, count]). Both models
    rank with the run's popularity prior `prior` (None: none)."""
    messages = [
        Message(
            StartCheckRequest(trained, start, slots, noise_multiplier, prior).to_records(),
            dst_node_id=node,
            message_type=START_CHECK_MESSAGE,
        )
        for node, slots in assignment.items()
    ]
    total, count, rejected = 0.0, 0, 0
    answered: set[int] = set()
    for reply in grid.send_and_receive(messages, timeout=timeout_s):
        node = reply.metadata.src_node_id
        try:
            check_reply_source(node, assignment, answered)
            if reply.has_error():
                raise UpdateRejectedError(f"the node reported an error: {reply.error.reason}")
            answer = StartCheckReply.from_records(reply.content, n_sampled=len(assignment[node]))
        except UpdateRejectedError as exc:
            log.warning("start check reply from a node rejected: %s", exc)
            rejected += 1
            continue
        total += answer.gain_sum
        count += answer.count
    rejected += len([n for n in assignment if n not in answered])
    sampled = sum(len(s) for s in assignment.values())
    return GainReplies(total, count, rejected, sampled - count)


def noised_gain(total: float, *, noise: NoiseSource, noise_multiplier: float) -> NoisedGain:
    """Gaussian noise of std z_s * sensitivity on the sum of gains."""
    std = noise_multiplier * SENSITIVITY
    return NoisedGain(float(total + noise.normal(std=std)), std)


def decide(noised_sum: float, *, margin: float, noise_std: float) -> Decision:
    """The decision: "trained" when the noised sum of gains exceeds `margin` noise stds, else "start" (a tie
    ships the start: training did not earn its place)."""
    return "trained" if noised_sum > margin * noise_std else "start"


def run_start_check(
    run: RunAccess, grid: Any, *, start: np.ndarray, query: GainQuery = start_check_query
) -> dict[str, Any]:
    """One accounted start check of the current global parameters against `start`; its ledger entry.
    BudgetExhaustedError (nothing sampled, queried or written) when it would exceed the budget."""
    config, seed, plan = run.config, run.config.privacy.seed, run.plan
    if plan.mode not in ("central", "none"):
        raise ConfigError(f"the start check cannot run in privacy mode {plan.mode!r}")
    event, after = start_check_event(config), run.completed_rounds
    run.check_budget_for(event, what=f"the start check after round {after}")
    rng = np.random.default_rng(None if seed < 0 else derived_seed(seed, after, _SAMPLE_SALT))
    cohort = poisson_sample(run.population.n_users, sample_rate=event.sample_rate, rng=rng)
    noise = run.round_noise if seed < 0 else GaussianNoise(seed=derived_seed(seed, after, _NOISE_SALT))
    trained = run.global_params
    replies = query(
        grid,
        run.population.split(cohort),
        trained=trained,
        start=start,
        noise_multiplier=event.noise_multiplier,
        timeout_s=config.federated.node_timeout_s,
        prior=run.popularity_prior,
    )
    noised = noised_gain(replies.total, noise=noise, noise_multiplier=event.noise_multiplier)
    decision = decide(noised.noised_sum, margin=config.start_check.margin, noise_std=noised.noise_std)
    spent = run.record_event(event)
    hashes = {"trained": params_sha256(trained), "start": params_sha256(start)}
    n = run.population.n_users
    typed = StartCheckEntry(
        mechanism=MECHANISM, run_id=run.run_id, after_round=after,
        time_utc=datetime.now(UTC).isoformat(timespec="seconds"),
        mode="none" if plan.mode == "none" else "central", unit_of_privacy="user", sampling="poisson",
        sample_rate=event.sample_rate, population=n, expected_cohort=event.sample_rate * n,
        realised_cohort=int(cohort.size), aggregated_users=replies.count,
        rejected_updates=replies.rejected_users, sensitivity=SENSITIVITY,
        noise_multiplier=event.noise_multiplier, noise_std=noised.noise_std,
        noised_gain_sum=noised.noised_sum, margin=config.start_check.margin, decision=decision,
        model_sha256_trained=hashes["trained"], model_sha256_start=hashes["start"],
        model_sha256_shipped=hashes[decision], delta=plan.delta, user_epsilon=spent,
        accountant_versions=run.accountant_versions(), noise_rng=noise.source,
    )  # fmt: skip
    return run.commit_entry(typed.to_fields())


class StartCheck:
    """The run's start check, a round hook (server/rounds/run_hooks.py) that acts at the end; `start` is the
    run's initial parameters. After the run, `shipped` says which model ships, `shipped_params` gives it."""

    def __init__(self, start: np.ndarray, *, query: GainQuery = start_check_query) -> None:
        self.start = np.asarray(start, np.float32).copy()
        self.query = query
        self.enabled = False
        self.note = ""  # why it did not run, when it did not
        self.refused: list[str] = []
        self.entry: Mapping[str, Any] | None = None

    def on_resume(self, entries: Sequence[dict[str, Any]]) -> None:
        """Nothing to clean up: a check's entry is in the ledger, or it was never accounted."""

    def before_rounds(self, run: RunAccess, grid: Any) -> None:
        """The check runs once, at the end."""

    def after_round(self, run: RunAccess, grid: Any, row: dict[str, Any]) -> None:
        """The check runs once, at the end."""

    def at_end(self, run: RunAccess, grid: Any) -> None:
        self.enabled, after = run.config.runs_start_check, run.completed_rounds
        if not self.enabled:
            self.note = run.config.start_check_blocker or "start_check.enabled = 'off'"
            return
        if after == 0:
            self.note = "no training round completed: the model is its start"
            return
        self.entry = start_check_after(run.ledger_entries(), after)  # a resumed run checks once
        if self.entry is None:
            try:
                self.entry = run_start_check(run, grid, start=self.start, query=self.query)
            except BudgetExhaustedError as exc:
                log.warning("%s: the trained model ships unchecked", exc)
                self.refused.append(str(exc))
                return
        if self.entry.get("model_sha256_start") != params_sha256(self.start):
            raise ConfigError("the start check in the ledger names other start parameters than this run's")
        log.info(
            "start check after round %d: noised gain %.3f (noise std %.3g), ships %s",
            after,
            self.entry["noised_gain_sum"],
            self.entry["noise_std"],
            self.shipped,
        )

    @property
    def shipped(self) -> Decision:
        """Which model ships: "start" when the check said so, else "trained" (also when it did not run)."""
        return "start" if self.entry is not None and self.entry.get("decision") == "start" else "trained"

    def shipped_params(self, trained: np.ndarray) -> np.ndarray:
        """The parameters to ship: the start when the check decided so, else `trained`."""
        return self.start.copy() if self.shipped == "start" else trained

    def summary(self) -> dict[str, Any]:
        """The run summary's block: whether the check was on, ran or was refused, and what it decided."""
        entry = self.entry or {}
        keys = ["after_round", "sample_rate", "noise_multiplier", "noise_std", "margin", "noised_gain_sum"]
        keys += ["decision", "model_sha256_trained", "model_sha256_start", "entry_hash", "user_epsilon"]
        return {
            "enabled": self.enabled,
            "ran": self.entry is not None,
            "refused": self.refused,
            "note": self.note,
            **{key: entry.get(key) for key in keys},
        }
