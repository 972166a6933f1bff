"""The round loop of federated training under user-level DP: budget check, Poisson sampling, noised
aggregation, server optimiser, signed ledger entry, checkpoint — one complete round at a time.

Order within a round (what makes a kill at any point safe, see shared/run_folder.py): compute the new
parameters, write the checkpoint (it carries the round's signed ledger entry), append the entry to the
ledger, append the metrics row. A resumed run starts from the newest checkpoint and first appends that
checkpoint's entry if the ledger stops one round short.

Before a training round's first message goes out, the run folder gets a marker naming the round
(`round_in_flight.json`); it is removed once the round's ledger entry is appended. A resume that finds it
for the next round knows the devices may have answered a round the ledger never accounted: in central mode
nothing of it was released and the round is redone; in local mode and under secure aggregation the server
already holds noised replies of that round's devices, and redoing it would give it a second view the ledger
does not account, so the run is not resumed (fail closed).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from server.ledger import PrivacyLedger
from server.ledger_entries import RoundEntry, is_training_round
from server.rounds.cap_fields import cap_ledger_fields
from server.rounds.messaging import Population
from server.rounds.privacy_plan import (
    EPSILON_SLACK,
    PrivacyPlan,
    RoundNoise,
    derived_seed,
    noise_multiplier_spans,
)
from server.rounds.record_level_fields import record_epsilon_so_far, record_level_fields
from server.rounds.run_hooks import MetricsFile, MetricsSink, RunHook
from server.rounds.update_transport import CollectedUpdates, RoundRequest, UpdateTransport, make_transport
from server.strategy import (
    CohortSample,
    NoisedAggregate,
    ServerOptimizer,
    UserLevelDPAggregator,
    adaptive_from_config,
    make_server_optimizer,
    poisson_cohort,
)
from shared.config import FedhomeConfig
from shared.errors import BudgetExhaustedError, ConfigError
from shared.messages import SEED_RANGE, RoundSettings
from shared.model.params import ParamLayout, params_sha256, scale_vector
from shared.privacy.accounting import RoundEvent, json_epsilon
from shared.privacy.capped_accounting import CappedAccountant, accountant_from_dict, make_accountant
from shared.privacy.noise import GaussianNoise
from shared.run_folder import (
    RunFolder,
    clear_round_in_flight,
    load_latest_checkpoint,
    mark_round_in_flight,
    read_round_in_flight,
    save_checkpoint,
    trim_metrics,
)

log = logging.getLogger(__name__)

Evaluator = Callable[[np.ndarray], dict[str, float]]


def progress_postfix(row: dict[str, Any], *, last_ndcg: float | None) -> dict[str, str]:
    """The round bar's postfix after `row`: user epsilon, the newest validation NDCG@10 (`last_ndcg`, this
    round's or an earlier evaluation's; left out before the first) and the cohort."""
    postfix = {"eps": f"{row['user_epsilon']:.2f}"}
    if last_ndcg is not None:
        postfix["ndcg"] = f"{last_ndcg:.4f}"
    postfix["cohort"] = str(row["cohort"])
    return postfix


def _metric_text(value: float | None) -> str:
    """A metric for a log line: 4 decimals, "-" when the round was not evaluated."""
    return "-" if value is None else f"{value:.4f}"


@dataclass
class RunState:
    round: int
    params: np.ndarray
    run_id: str
    history: list[dict[str, Any]] = field(default_factory=list)


class Coordinator:
    """Owns the global parameters, the accountant, the ledger and the run folder of one training run."""

    def __init__(
        self,
        config: FedhomeConfig,
        folder: RunFolder,
        population: Population,
        initial_params: np.ndarray,
        layout: ParamLayout,
        ledger: PrivacyLedger,
        *,
        evaluate: Evaluator,
        transport: UpdateTransport | None = None,
        hooks: Sequence[RunHook] = (),
        metrics: MetricsSink | None = None,
    ) -> None:
        """`transport` (default: the one the configuration asks for, `make_transport`) brings each round's
        update sums; `hooks` run after each round and at the end (trending releases); `metrics` takes the
        metrics rows (default: the run folder's metrics.jsonl); `evaluate` gives validation metrics."""
        self.config, self.folder, self.population = config, folder, population
        self.ledger, self.evaluate = ledger, evaluate
        self.hooks, self.metrics = tuple(hooks), metrics or MetricsFile(folder)
        self.plan = PrivacyPlan.build(config, population.n_users)
        self.accountant = make_accountant(
            delta=self.plan.delta, participation_cap=config.privacy.participation_cap
        )
        self.noise = RoundNoise(config.privacy.seed)
        self.own_transport = transport is None  # built here from the plan (rebuilt if resume changes z)
        self.transport = transport or self.make_transport()
        self.aggregator = self.make_aggregator()
        self.optimizer: ServerOptimizer = make_server_optimizer(config.federated)
        # theta = scale * phi (FederatedConfig.update_scales): updates arrive in phi, the optimiser steps phi
        self.scale = scale_vector(layout, config.federated.update_scales)
        self.state = RunState(0, initial_params.astype(np.float32), uuid.uuid4().hex[:12])
        self.stop_reason = ""
        self.pending_row: dict[str, Any] | None = None  # set by resume(): a metrics row lost to a kill
        self.prior: np.ndarray | None = None  # the popularity prior sent to the nodes (a hook sets it)

    def make_transport(self) -> UpdateTransport:
        return make_transport(
            self.config, mode=self.plan.mode, noise_multiplier=self.plan.noise_multiplier, noise=self.noise
        )

    def make_aggregator(self) -> UserLevelDPAggregator:
        return UserLevelDPAggregator(
            population=self.population.n_users,
            sample_rate=self.plan.sample_rate,
            noise_multiplier=self.plan.noise_multiplier,
            clip_norm=self.config.privacy.clip_norm,
            mode=self.config.privacy.mode,
            noise=self.noise,
            adaptive=adaptive_from_config(self.config.privacy),
        )

    # -- the run ----------------------------------------------------------------------------------------
    def run(self, grid: Any, *, progress: bool) -> str:
        """The hooks' steps before the rounds (the popularity prior's release), then rounds until
        `federated.rounds` are done or the budget is spent, each followed by the hooks; returns why it
        stopped."""
        federated = self.config.federated
        for hook in self.hooks:
            hook.before_rounds(self, grid)
        bar = tqdm(
            total=federated.rounds,
            initial=self.state.round,
            unit="round",
            disable=not progress,
            desc="rounds",
        )
        reason = "completed all rounds"
        last_ndcg: float | None = None  # the newest evaluation's, for the bar between evaluations
        if federated.eval_every and self.state.round == 0:  # the starting point, for the curves
            spent = 0.0 if self.plan.mode == "none" else self.epsilon()  # a release before round 1 spends
            start = {"round": 0, "user_epsilon": spent, **self.evaluate(self.state.params)}
            self.metrics.append(start)
            last_ndcg = start.get("valid_ndcg_10")
            log.info("round 0: valid NDCG@10 %s", _metric_text(last_ndcg))
        if self.pending_row is not None:  # resumed after a kill that lost the last round's metrics row
            self.finish_row(self.pending_row)
            self.pending_row = None
        while self.state.round < federated.rounds:
            try:
                row = self.run_round(grid)
            except BudgetExhaustedError as exc:
                log.warning("%s", exc)
                reason = f"privacy budget: {exc}"
                break
            self.finish_row(row)
            for hook in self.hooks:
                hook.after_round(self, grid, row)
            last_ndcg = row.get("valid_ndcg_10", last_ndcg)
            bar.update(1)
            bar.set_postfix(progress_postfix(row, last_ndcg=last_ndcg), refresh=False)
            log.info(
                "round %d: cohort %d, user epsilon %.3f, valid NDCG@10 %s (%.2f s)",
                row["round"],
                row["cohort"],
                row["user_epsilon"],
                _metric_text(row.get("valid_ndcg_10")),
                row["seconds"],
            )
        bar.close()
        for hook in self.hooks:
            hook.at_end(self, grid)
        return reason

    def finish_row(self, row: dict[str, Any]) -> None:
        """Add the evaluation when this round is due for one, then hand the row to the metrics sink."""
        federated = self.config.federated
        every = federated.eval_every
        if every and (row["round"] % every == 0 or row["round"] == federated.rounds):
            row.update(self.evaluate(self.state.params))
        self.metrics.append(row)

    # -- what hooks may read and do (server/rounds/run_hooks.py: RunAccess) ------------------------------
    @property
    def run_id(self) -> str:
        return self.state.run_id

    @property
    def completed_rounds(self) -> int:
        return self.state.round

    @property
    def global_params(self) -> np.ndarray:
        return self.state.params

    @property
    def round_noise(self) -> GaussianNoise:
        return self.noise.current

    @property
    def run_root(self) -> Path:
        return self.folder.root

    def ledger_entries(self) -> list[dict[str, Any]]:
        return self.ledger.entries()

    def record_event(self, event: RoundEvent) -> dict[str, Any]:
        self.accountant.record(event)
        return self.spent()

    def accountant_versions(self) -> dict[str, str]:
        return self.accountant.versions()

    def commit_entry(self, fields: dict[str, Any]) -> dict[str, Any]:
        entry = self.ledger.sign(fields)
        self.checkpoint(entry)
        self.ledger.append_signed(entry)
        return entry

    @property
    def popularity_prior(self) -> np.ndarray | None:
        return self.prior

    def use_popularity_prior(self, prior: np.ndarray) -> None:
        self.prior = np.ascontiguousarray(prior, dtype=np.float32)

    # -- resume -------------------------------------------------------------------------------------
    def resume(self) -> bool:
        """Load the newest checkpoint, if any, and reconcile ledger and metrics with it. True when resumed.

        The ledger must end at the checkpoint's round, or one round short (killed between writing the
        checkpoint and appending its entry: the entry is appended now); the same holds for the entry of a
        hook's release after the round (trending counts, the start check), which the checkpoint carries
        when it was the last thing committed. Anything else is refused. Metric rows after the checkpoint's
        round, and a torn last row, are dropped; a missing row of the checkpoint's round becomes
        `pending_row`, for the caller to complete and append. A checkpoint of round 0 holds a release made
        before the first round (the popularity prior's counts); its round-0 metrics row is dropped and
        written again by `run`.

        A training round that was in flight when the run stopped (`round_in_flight.json`) is redone in
        central mode and refused (ConfigError) in local mode and under secure aggregation: see
        `_check_round_in_flight`.
        """
        checkpoint = load_latest_checkpoint(self.folder)
        if checkpoint is None:
            if self.ledger.entries():  # a release before round 1 is checkpointed too
                raise ConfigError(f"{self.folder.ledger} has entries but the run has no checkpoint")
            self._check_round_in_flight(0, None)
            trim_metrics(self.folder, -1)  # a start killed before its first round completed (its round 0)
            clear_round_in_flight(self.folder)
            return False
        last = int(checkpoint["round"])
        self._check_round_in_flight(last, checkpoint["run_id"])
        self._reconcile_ledger(last, checkpoint["ledger_entry"])
        self._keep_the_runs_noise_multiplier()
        for hook in self.hooks:
            hook.on_resume(self.ledger.entries())
        self.state = RunState(last, checkpoint["params"], checkpoint["run_id"], checkpoint["history"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.aggregator.load_state_dict(checkpoint["aggregator"])
        self.accountant = accountant_from_dict(checkpoint["accountant"])
        if isinstance(self.accountant, CappedAccountant):
            self.accountant.new_segment()  # the nodes' participation counts may start from zero again
        kept = trim_metrics(self.folder, last if last > 0 else -1)  # round 0's row: written again by run
        if last > 0 and kept < last:
            self.pending_row = dict(self.state.history[-1])
        clear_round_in_flight(self.folder)
        log.info("resumed run %s after round %d", self.state.run_id, last)
        return True

    def _check_round_in_flight(self, last: int, run_id: str | None) -> None:
        """Refuse to resume after round `last` of run `run_id` (None: no checkpoint, so any id) when a
        training round was in flight and the server is not trusted with its replies: local mode, or secure
        aggregation. Writes nothing; the caller removes the marker once the resume succeeded. A marker of
        round `last` (killed after its ledger entry, before the marker's removal) is left over and harmless;
        one of another run or round is refused."""
        marker = read_round_in_flight(self.folder)
        if marker is None:
            return
        marker_run, marker_round = marker
        path = self.folder.round_in_flight
        if (run_id is not None and marker_run != run_id) or marker_round not in (last, last + 1):
            raise ConfigError(
                f"cannot resume {self.folder.root}: {path} names round {marker_round} of run {marker_run}, "
                f"but the run's last committed round is {last} (of run {run_id}); a stale marker from "
                "another run? Check the folder, or start a new run in an empty run_dir"
            )
        if marker_round == last:
            return
        if self.plan.mode == "local" or self.config.privacy.secure_aggregation:
            raise ConfigError(
                f"cannot resume {self.folder.root}: round {marker_round} was in flight when the run stopped "
                f"({path}): its devices may already have sent the server their noised replies, and redoing "
                "the round would give the server a second view of that round's devices that the ledger does "
                "not account (the server is not trusted in privacy mode 'local' or under secure "
                "aggregation). Start a new run in an empty run_dir; the budget this run spent is in "
                f"{self.folder.ledger}"
            )
        log.info(
            "round %d was in flight when the run stopped: it is redone (nothing of it was released)",
            marker_round,
        )

    def _keep_the_runs_noise_multiplier(self) -> None:
        """Continue with the z the run's last round used (its ledger entry), not the z PrivacyPlan.build
        calibrated for the configured rounds: with `federated.rounds` raised on resume that would be another
        z, the accountant would compose rounds of two z and the summary report one of them. Extra rounds run
        at the run's z until the budget stops them."""
        spans = noise_multiplier_spans(self.ledger.entries())
        if not spans or spans[-1].noise_multiplier == self.plan.noise_multiplier:
            return
        z = spans[-1].noise_multiplier
        log.warning(
            "resuming with the noise multiplier z %.6g the run's rounds used, not %.6g (calibrated for %d "
            "rounds): the added rounds run at z %.6g until the privacy budget is spent",
            z,
            self.plan.noise_multiplier,
            self.config.federated.rounds,
            z,
        )
        self.plan = dataclasses.replace(self.plan, noise_multiplier=z)
        self.aggregator = self.make_aggregator()
        if self.own_transport:
            self.transport = self.make_transport()

    def _reconcile_ledger(self, last: int, entry: dict[str, Any]) -> None:
        ledger_round = self.ledger.last_round()
        if not is_training_round(entry) and entry.get("prev_hash") == self.ledger.head_hash():
            # killed before a hook's entry (trending, start check) reached the ledger
            self.ledger.append_signed(entry)
            log.info("ledger entry %s after round %d restored from its checkpoint", entry.get("kind"), last)
        elif ledger_round == last - 1:
            self.ledger.append_signed(entry)  # checks that it continues the chain
            log.info("ledger entry of round %d restored from its checkpoint", last)
        elif ledger_round != last:
            raise ConfigError(
                f"cannot resume {self.folder.root}: the ledger ends at round {ledger_round} but the newest "
                f"checkpoint is round {last}; only a ledger exactly one round short of it can be repaired"
            )
        elif self.ledger.head_hash() != entry.get("entry_hash"):
            raise ConfigError(
                f"cannot resume {self.folder.root}: the ledger's round {last} is not the entry in the "
                "checkpoint of that round (a ledger or checkpoint from another run?)"
            )

    # -- one round ------------------------------------------------------------------------------------
    def check_budget(self) -> None:
        """BudgetExhaustedError when one more round would take user epsilon past the target."""
        self.check_budget_for(
            self.training_event(), what=f"round {self.state.round + 1}", outcome="training stops here"
        )

    def check_budget_for(self, event: RoundEvent, *, what: str, outcome: str = "refused") -> None:
        """BudgetExhaustedError when `event` (`what`, in the message) would take user epsilon past the
        target."""
        if self.plan.mode == "none":
            return
        epsilon = self.accountant.epsilon_if(event)
        if epsilon > self.plan.target_epsilon * (1 + EPSILON_SLACK):
            raise BudgetExhaustedError(
                f"{what} would bring user-level epsilon to {epsilon:.3f}, past the "
                f"budget of {self.plan.target_epsilon} (delta {self.plan.delta:.3g}): {outcome}"
            )

    def sample(self, round_number: int) -> CohortSample:
        """The round's cohort, with the method and rate the sampler used (what the ledger records)."""
        seed = self.config.privacy.seed
        rng = np.random.default_rng(None if seed < 0 else derived_seed(seed, round_number, 0))
        return poisson_cohort(self.population.n_users, sample_rate=self.plan.sample_rate, rng=rng)

    def training_event(self) -> RoundEvent:
        """A training round for the accountant: capped when the run has a participation cap."""
        return RoundEvent(
            sample_rate=self.plan.sample_rate,
            noise_multiplier=self.plan.noise_multiplier,
            capped=self.config.privacy.participation_cap > 0,
        )

    def round_settings(self, round_number: int) -> RoundSettings:
        """What the round's nodes are told (and each device's receipt records: client/device/receipts.py)."""
        privacy = self.config.privacy
        noise_seed = -1 if privacy.seed < 0 else derived_seed(privacy.seed, round_number, 3) % SEED_RANGE
        return RoundSettings(
            round=round_number,
            run_id=self.state.run_id,
            sample_rate=self.plan.sample_rate,
            noise_multiplier=self.plan.noise_multiplier,
            delta=self.plan.delta,
            participation_cap=privacy.participation_cap,
            clip_norm=self.aggregator.clip_norm,
            local_noise_multiplier=self.plan.noise_multiplier if self.plan.mode == "local" else 0.0,
            round_seed=derived_seed(self.config.federated.seed, round_number, 2) % SEED_RANGE,
            noise_seed=noise_seed,
        )

    def run_round(self, grid: Any) -> dict[str, Any]:
        """One complete round; returns its metrics row."""
        self.check_budget()
        round_number = self.state.round + 1
        start = time.perf_counter()
        self.noise.for_round(round_number)
        cohort = self.sample(round_number)
        # from the first message on, a resume must know the round's devices may have answered
        mark_round_in_flight(self.folder, run_id=self.state.run_id, round_number=round_number)
        request = RoundRequest(
            round_number,
            self.population.split(cohort.users),
            self.state.params,
            self.round_settings(round_number),
            self.aggregator.clip_norm,
            self.prior,
        )
        collected = self.transport.collect(grid, request)
        replies, secure = collected.replies, collected.secure_record
        result = self.aggregator.aggregate(
            replies.update_sum,
            count=replies.count,
            unclipped_count=replies.unclipped_count,
            noise_in_sum=collected.noise_in_sum,
        )
        before = self.state.params
        after = self.scale * self.optimizer.step(before / self.scale, result.mean_update)
        self.accountant.record(self.training_event())
        record = record_epsilon_so_far(replies, self.state.history)
        typed = RoundEntry(
            **self.ledger_fields(round_number, cohort, collected, result, before, after),
            **record_level_fields(record, replies, record_delta=self.config.privacy.record_delta),
            **cap_ledger_fields(self.accountant, refused_users=replies.refused_users),
            secure_aggregation=None if secure is None else secure.to_json(),
        )
        entry = self.ledger.sign(typed.to_fields())
        row = {
            "round": round_number,
            "cohort": int(cohort.size),
            "rejected_users": replies.rejected_users,
            "rejected_nodes": replies.rejected_nodes,
            "rejections": dict(replies.rejections),
            "refused_users": replies.refused_users,
            "clip_norm": result.clip_norm,
            # only the noised fraction (adaptive clipping) is published: the exact one is not private
            "noised_unclipped_fraction": result.noised_unclipped_fraction,
            "update_norm": float(np.linalg.norm(result.mean_update)),
            "user_epsilon": self.epsilon(),
            "seconds": time.perf_counter() - start,
        }
        if record is not None:
            row["record_epsilon"] = record
        self.state = RunState(round_number, after, self.state.run_id, [*self.state.history, row])
        self.checkpoint(entry)
        self.ledger.append_signed(entry)
        clear_round_in_flight(self.folder)  # the round is accounted
        return row

    def rejections(self) -> dict[str, Any]:
        """The run's rejected replies so far, from its rounds' rows (what the summary reports): nodes and
        sampled users whose updates were not summed, and nodes by reason (TrainReplies.rejections)."""
        reasons: dict[str, int] = {}
        for row in self.state.history:
            for reason, n in row.get("rejections", {}).items():
                reasons[reason] = reasons.get(reason, 0) + int(n)
        return {
            "rejected_nodes": sum(int(row.get("rejected_nodes", 0)) for row in self.state.history),
            "rejected_users": sum(int(row.get("rejected_users", 0)) for row in self.state.history),
            "by_reason": dict(sorted(reasons.items())),
        }

    def epsilon(self) -> float:
        if self.plan.mode == "none":
            return math.inf
        return float(self.accountant.spent()["pld"])

    def spent(self) -> dict[str, Any]:
        """User epsilon spent so far under each accountant, JSON-safe ("inf" without noise)."""
        if self.plan.mode == "none":
            return {"pld": "inf", "rdp": "inf"}
        return {k: json_epsilon(v) for k, v in self.accountant.spent().items()}

    def ledger_fields(
        self,
        round_number: int,
        cohort: CohortSample,
        collected: CollectedUpdates,
        result: NoisedAggregate,
        before: np.ndarray,
        after: np.ndarray,
    ) -> dict[str, Any]:
        """The round's entry. What was applied comes from what applied it: sampling, rate and realised cohort
        from the sampler's CohortSample; the divisor, and the noise the server drew (on the sum and on the
        count), from the aggregator's result; under secure aggregation the sum's noise from the protocol
        (it arrived noised). The plan gives only what was accounted (z, delta) and the mode."""
        spent = self.spent()
        replies = collected.replies
        noise_std = result.noise_std
        if collected.secure_record is not None:  # the nodes and the protocol's top-up noised the sum
            noise_std = float(collected.noise_in_sum or 0.0)
        fields = {
            "run_id": self.state.run_id,
            "round": round_number,
            "time_utc": datetime.now(UTC).isoformat(timespec="seconds"),
            "mode": self.plan.mode,
            "unit_of_privacy": "user",
            "sampling": cohort.method,
            "sample_rate": cohort.sample_rate,
            "population": cohort.population,
            "expected_cohort": cohort.sample_rate * cohort.population,
            "realised_cohort": cohort.size,
            "aggregated_users": replies.count,
            "rejected_updates": replies.rejected_users,
            "rejected_nodes": replies.rejected_nodes,
            "rejection_reasons": dict(replies.rejections),
            "divisor": result.divisor,
            "clip_norm": result.clip_norm,
            "next_clip_norm": result.next_clip_norm,
            "noise_multiplier": self.plan.noise_multiplier,
            "update_noise_multiplier": result.update_noise_multiplier,
            "noise_std": noise_std,
            "count_noise_std": result.count_noise_std,
            "local_noise_multiplier": self.plan.noise_multiplier if self.plan.mode == "local" else 0.0,
            "noise_rng": self.noise.source,
            "model_sha256_before": params_sha256(before),
            "model_sha256_after": params_sha256(after),
            "delta": self.plan.delta,
            "user_epsilon": spent,
            "target_epsilon": None if self.plan.mode == "none" else self.plan.target_epsilon,
            "planned_rounds": self.config.federated.rounds,
            "accountant_versions": self.accountant.versions(),
        }
        return fields

    def checkpoint(self, entry: dict[str, Any]) -> None:
        save_checkpoint(
            self.folder,
            self.state.round,
            {
                "params": self.state.params,
                "run_id": self.state.run_id,
                "history": self.state.history,
                "optimizer": self.optimizer.state_dict(),
                "aggregator": self.aggregator.state_dict(),
                "accountant": self.accountant.to_dict(),
                "ledger_entry": entry,
            },
        )
