"""The round loop of federated training under user-level DP: budget check, Poisson sampling, noised
aggregation, server optimiser, signed ledger entry, checkpoint — one complete round at a time.

Order within a round (what makes a kill at any point safe, see shared/run_folder.py): compute the new
parameters, write the checkpoint (it carries the round's signed ledger entry), append the entry to the
ledger, append the metrics row. A resumed run starts from the newest checkpoint and first appends that
checkpoint's entry if the ledger stops one round short.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from server.ledger import PrivacyLedger
from server.rounds.cap_fields import cap_ledger_fields
from server.rounds.messaging import Population
from server.rounds.privacy_plan import EPSILON_SLACK, PrivacyPlan, RoundNoise, derived_seed
from server.rounds.record_level_fields import record_epsilon_so_far, record_level_fields
from server.rounds.update_transport import collect_updates
from server.strategy import (
    NoisedAggregate,
    ServerOptimizer,
    UserLevelDPAggregator,
    adaptive_from_config,
    make_server_optimizer,
    poisson_sample,
)
from server.trending.trending_round import is_trending, remove_unaccounted_counts
from shared.config import FedhomeConfig
from shared.errors import BudgetExhaustedError, ConfigError
from shared.model.params import ParamLayout, params_sha256, scale_vector
from shared.privacy.accounting import (
    RoundEvent,
    json_epsilon,
)
from shared.privacy.capped_accounting import CappedAccountant, accountant_from_dict, make_accountant
from shared.run_folder import RunFolder, load_latest_checkpoint, save_checkpoint, trim_metrics

log = logging.getLogger(__name__)

Evaluator = Callable[[np.ndarray], dict[str, float]]


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
    ) -> None:
        self.config, self.folder, self.population = config, folder, population
        self.ledger, self.evaluate = ledger, evaluate
        self.plan = PrivacyPlan.build(config, population.n_users)
        self.accountant = make_accountant(
            delta=self.plan.delta, participation_cap=config.privacy.participation_cap
        )
        self.noise = RoundNoise(config.privacy.seed)
        self.aggregator = UserLevelDPAggregator(
            population=population.n_users,
            sample_rate=self.plan.sample_rate,
            noise_multiplier=self.plan.noise_multiplier,
            clip_norm=config.privacy.clip_norm,
            mode=config.privacy.mode,
            noise=self.noise,
            adaptive=adaptive_from_config(config.privacy),
        )
        self.optimizer: ServerOptimizer = make_server_optimizer(config.federated)
        # theta = scale * phi (FederatedConfig.update_scales): updates arrive in phi, the optimiser steps phi
        self.scale = scale_vector(layout, config.federated.update_scales)
        self.state = RunState(0, initial_params.astype(np.float32), uuid.uuid4().hex[:12])
        self.stop_reason = ""
        self.pending_row: dict[str, Any] | None = None  # set by resume(): a metrics row lost to a kill

    # -- resume -------------------------------------------------------------------------------------
    def resume(self) -> bool:
        """Load the newest checkpoint, if any, and reconcile ledger and metrics with it. True when resumed.

        The ledger must end at the checkpoint's round, or one round short (killed between writing the
        checkpoint and appending its entry: the entry is appended now). Anything else is refused. Metric
        rows after the checkpoint's round, and a torn last row, are dropped; a missing row of the checkpoint's
        round becomes `pending_row`, for the caller to complete and append.
        """
        checkpoint = load_latest_checkpoint(self.folder)
        if checkpoint is None:
            if self.ledger.last_round() > 0:
                raise ConfigError(f"{self.folder.ledger} has entries but the run has no checkpoint")
            trim_metrics(self.folder, -1)  # a start killed before its first round completed (its round 0)
            return False
        last = int(checkpoint["round"])
        self._reconcile_ledger(last, checkpoint["ledger_entry"])
        remove_unaccounted_counts(self.folder.root, self.ledger.entries())
        self.state = RunState(last, checkpoint["params"], checkpoint["run_id"], checkpoint["history"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.aggregator.load_state_dict(checkpoint["aggregator"])
        self.accountant = accountant_from_dict(checkpoint["accountant"])
        if isinstance(self.accountant, CappedAccountant):
            self.accountant.new_segment()  # the nodes' participation counts may start from zero again
        if trim_metrics(self.folder, last) < last:
            self.pending_row = dict(self.state.history[-1])
        log.info("resumed run %s after round %d", self.state.run_id, last)
        return True

    def _reconcile_ledger(self, last: int, entry: dict[str, Any]) -> None:
        ledger_round = self.ledger.last_round()
        if is_trending(entry) and entry.get("prev_hash") == self.ledger.head_hash():
            self.ledger.append_signed(entry)  # killed before the trending entry reached the ledger
            log.info("ledger entry of the trending release after round %d restored from its checkpoint", last)
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
        if self.plan.mode == "none":
            return
        epsilon = self.accountant.epsilon_if(self.training_event())
        if epsilon > self.plan.target_epsilon * (1 + EPSILON_SLACK):
            raise BudgetExhaustedError(
                f"round {self.state.round + 1} would bring user-level epsilon to {epsilon:.3f}, past the "
                f"budget of {self.plan.target_epsilon} (delta {self.plan.delta:.3g}): training stops here"
            )

    def sample(self, round_number: int) -> np.ndarray:
        seed = self.config.privacy.seed
        rng = np.random.default_rng(None if seed < 0 else derived_seed(seed, round_number, 0))
        return poisson_sample(self.population.n_users, sample_rate=self.plan.sample_rate, rng=rng)

    def training_event(self) -> RoundEvent:
        """A training round for the accountant: capped when the run has a participation cap."""
        return RoundEvent(
            sample_rate=self.plan.sample_rate,
            noise_multiplier=self.plan.noise_multiplier,
            capped=self.config.privacy.participation_cap > 0,
        )

    def round_settings(self, round_number: int) -> dict[str, int | float | str]:
        privacy = self.config.privacy
        local = self.plan.noise_multiplier if self.plan.mode == "local" else 0.0
        return {
            "round": round_number,
            # what each device's receipt records (client/device/receipts.py)
            "run-id": self.state.run_id,
            "sample-rate": self.plan.sample_rate,
            "noise-multiplier": self.plan.noise_multiplier,
            "delta": self.plan.delta,
            "participation-cap": privacy.participation_cap,
            "round-seed": derived_seed(self.config.federated.seed, round_number, 2) % (2**62),
            "clip-norm": self.aggregator.clip_norm,
            "local-noise-multiplier": local,
            "noise-seed": -1 if privacy.seed < 0 else derived_seed(privacy.seed, round_number, 3) % (2**62),
        }

    def run_round(self, grid: Any) -> dict[str, Any]:
        """One complete round; returns its metrics row."""
        self.check_budget()
        round_number = self.state.round + 1
        start = time.perf_counter()
        self.noise.for_round(round_number)
        cohort = self.sample(round_number)
        replies, secure = collect_updates(self, grid, round_number, cohort)
        result = self.aggregator.aggregate(
            replies.update_sum,
            count=replies.count,
            unclipped_count=replies.unclipped_count,
            noise_in_sum=None if secure is None else secure.noise_std,
        )
        before = self.state.params
        after = self.scale * self.optimizer.step(before / self.scale, result.mean_update)
        self.accountant.record(self.training_event())
        record = record_epsilon_so_far(replies, self.state.history)
        entry = self.ledger.sign(
            {
                **self.ledger_fields(round_number, cohort.size, replies, result, before, after),
                **record_level_fields(record, replies, record_delta=self.config.privacy.record_delta),
                **cap_ledger_fields(self.accountant, refused_users=replies.refused_users),
                **({} if secure is None else {"secure_aggregation": secure.record.to_json()}),
            }
        )
        row = {
            "round": round_number,
            "cohort": int(cohort.size),
            "rejected_users": replies.rejected_users,
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
        return row

    def epsilon(self) -> float:
        if self.plan.mode == "none":
            return math.inf
        return float(self.accountant.spent()["pld"])

    def ledger_fields(
        self,
        round_number: int,
        cohort: int,
        replies: Any,
        result: NoisedAggregate,
        before: np.ndarray,
        after: np.ndarray,
    ) -> dict[str, Any]:
        spent = (
            {k: json_epsilon(v) for k, v in self.accountant.spent().items()}
            if self.plan.mode != "none"
            else {
                "pld": "inf",
                "rdp": "inf",
            }
        )
        fields = {
            "run_id": self.state.run_id,
            "round": round_number,
            "time_utc": datetime.now(UTC).isoformat(timespec="seconds"),
            "mode": self.plan.mode,
            "unit_of_privacy": "user",
            "sampling": "poisson",
            "sample_rate": self.plan.sample_rate,
            "population": self.population.n_users,
            "expected_cohort": self.plan.sample_rate * self.population.n_users,
            "realised_cohort": cohort,
            "aggregated_users": replies.count,
            "rejected_updates": replies.rejected_users,
            "divisor": self.plan.sample_rate * self.population.n_users,
            "clip_norm": result.clip_norm,
            "next_clip_norm": result.next_clip_norm,
            "noise_multiplier": self.plan.noise_multiplier,
            "update_noise_multiplier": result.update_noise_multiplier,
            "noise_std": result.noise_std,
            "count_noise_std": result.count_noise_std,
            "local_noise_multiplier": self.plan.noise_multiplier if self.plan.mode == "local" else 0.0,
            "noise_rng": self.noise.source,
            "model_sha256_before": params_sha256(before),
            "model_sha256_after": params_sha256(after),
            "delta": self.plan.delta,
            "user_epsilon": spent,
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
