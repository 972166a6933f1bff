"""Empirical privacy audit of federated training with canary clients (`fedhome-sim canary`).

After Andrew et al., "One-shot Empirical Privacy Estimation for Federated Learning" (ICLR 2024): m canary
directions u_i (random unit vectors in the space devices send updates in) are drawn; each is inserted as a
client independently with probability 1/2, so the m directions double as the randomised inclusion of
Steinke, Nasr & Jagielski (2023). An inserted canary is sampled by Poisson sampling like every user and,
when sampled, sends a large update along u_i (`CANARY_MAGNITUDE` x C) that goes through the same clipping
to C as everyone's (the clients' own code, shared.privacy.mechanism.UserClipping.clipped_sum). Training is
the product's round loop, server.rounds.coordinator.Coordinator, with the audit's devices as its update
transport (`CanaryNodes`): the canaries are members of its population, its own Poisson sampling picks
them, its own UserLevelDPAggregator noises the sum and divides by qN, its own server optimiser steps, and
its ledger and checkpoints are written (to a temporary run folder). Afterwards:
- final-model statistic: cos(phi_T - phi_0, u_i), what an adversary who sees only the release can compute;
- all-rounds statistic: max over rounds of cos(phi_t - phi_{t-1}, u_i), round t's released change of the
  model (its noised mean update times the server learning rate under FedAvg), for an adversary who sees
  every round's model (`ReleasedModels`, the Coordinator's evaluate callable, due after every round).
Each statistic gives Andrew et al.'s epsilon estimate, a heuristic threshold bound (Clopper-Pearson on
per-canary trials that one run does not make independent: reported, never decisive) and the rigorous
one-run lower bound of Steinke et al. (server/audit/empirical.py). The audit fails when the one-run bound
exceeds the analytic epsilon the accountant claims for this run: the mechanism leaks more than it says.

Power: before training, the audit computes the one-run bound its canaries would give if every inserted
canary scored above every absent one (empirical.attainable_one_run_bound). When that does not exceed the
claimed epsilon the audit cannot fail, so it refuses (UnderpoweredAudit, with the canary count that would
have the power when there is one within MAX_CANARY_FLOATS), or, with `require_power=False`, runs and
reports "CANNOT TEST", never OK. `canaries="auto"` picks the smallest count with the power.

`--break noise-off` / `--break noise-tenth` reach the Coordinator only through the privacy configuration it
reads (mode "none", or z / 10), while the audit's claim stays the intended z: what the audit then catches
is the Coordinator applying less noise than claimed. The local training is the product's LocalTrainer
(simulation/benchmarks/tune_federated.py's replica, without Flower); `--model linear` audits a small linear-
regression federation instead (the calibration table of docs/results.md).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch

from client.training.round_update import UpdateSum
from server.audit import empirical
from server.ledger import PrivacyLedger
from server.rounds.coordinator import Coordinator
from server.rounds.messaging import Population, TrainReplies
from server.rounds.update_transport import CollectedUpdates, RoundRequest
from shared.config import FedhomeConfig, with_overrides
from shared.errors import ConfigError
from shared.model.params import ParamLayout, scale_vector
from shared.privacy.accounting import RoundEvent, default_delta, pld_epsilon
from shared.privacy.mechanism import UserClipping
from shared.run_folder import RunFolder
from shared.signing import generate_private_key

CANARY_MAGNITUDE = 100.0  # a canary's raw update norm in units of C: only clipping keeps it at C
MAX_CANARY_FLOATS = 400_000_000  # m x dim float32 directions kept in memory (1.6 GB)
Breakage = Literal["none", "noise-off", "noise-tenth"]
BREAKAGES: tuple[Breakage, ...] = ("none", "noise-off", "noise-tenth")
CanaryCount = int | Literal["auto"]


class UnderpoweredAudit(ConfigError):
    """The canaries cannot certify a lower bound above the claimed epsilon: the audit could not fail."""

    def __init__(self, message: str, *, attainable: float, claimed: float, needed: int | None) -> None:
        super().__init__(message)
        self.attainable, self.claimed, self.needed = attainable, claimed, needed


class RoundTrainer(Protocol):
    """What the audit needs from local training: the clipped update sum of a cohort
    (client.training.round_update)."""

    def clipped_sum(
        self, params: np.ndarray, users: np.ndarray, *, round_seed: int, clip_norm: float
    ) -> UpdateSum: ...


@dataclass(frozen=True)
class Canaries:
    directions: np.ndarray  # (m, dim) float32 unit rows
    inserted: np.ndarray  # (m,) bool: took part as a client (each independently with probability 1/2)

    @classmethod
    def draw(cls, m: int, dim: int, *, seed: int) -> Canaries:
        if m < 8:
            raise ConfigError(f"an audit needs at least 8 canaries, got {m}")
        if m * dim > MAX_CANARY_FLOATS:
            raise ConfigError(f"{m} canaries x {dim} parameters do not fit in memory; use fewer canaries")
        rng = np.random.default_rng(seed)
        directions = rng.standard_normal((m, dim), dtype=np.float32)
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        return cls(directions, rng.random(m) < 0.5)

    def clipped_sum(self, rows: np.ndarray, *, clip_norm: float) -> np.ndarray:
        """The sum (dim,) float64 of canaries `rows`' clipped updates (raw norm CANARY_MAGNITUDE x C), clipped
        and summed by the clients' own code (UserClipping.clipped_sum, as LocalTrainer)."""
        raw = self.directions[rows] * np.float32(CANARY_MAGNITUDE * clip_norm)  # (s, dim)
        total, _ = UserClipping(clip_norm).clipped_sum([torch.from_numpy(raw)])
        return np.asarray(total.numpy(), dtype=np.float64)

    def cosines(self, vector: np.ndarray) -> np.ndarray:
        norm = float(np.linalg.norm(vector))
        return (
            np.zeros(self.inserted.size)
            if norm == 0
            else (self.directions @ vector.astype(np.float32)) / norm
        )


@dataclass
class StatisticResult:
    """One statistic's numbers: the fitted Gaussians, the estimate and the two lower bounds."""

    inserted_mean: float
    inserted_std: float
    absent_mean: float
    absent_std: float
    epsilon_estimate: float
    threshold_lower_bound: float
    one_run_lower_bound: float

    @classmethod
    def of(
        cls, scores: np.ndarray, inserted: np.ndarray, *, delta: float, confidence: float
    ) -> StatisticResult:
        fit_in = empirical.fit_gaussian(scores[inserted])
        fit_out = empirical.fit_gaussian(scores[~inserted])
        return cls(
            inserted_mean=fit_in.mean,
            inserted_std=fit_in.std,
            absent_mean=fit_out.mean,
            absent_std=fit_out.std,
            epsilon_estimate=empirical.gaussian_pair_epsilon(fit_in, fit_out, delta=delta),
            threshold_lower_bound=empirical.threshold_lower_bound(
                scores, inserted, delta=delta, confidence=confidence
            ),
            one_run_lower_bound=empirical.one_run_lower_bound(
                scores, inserted, delta=delta, confidence=confidence
            ),
        )

    @property
    def lower_bound(self) -> float:
        """The rigorous bound the verdict uses (the threshold bound is heuristic and only reported)."""
        return self.one_run_lower_bound


@dataclass
class CanaryAuditResult:
    """What `fedhome-sim canary` reports (canary_audit.json)."""

    model: str
    rounds: int
    sample_rate: float
    noise_multiplier: float  # the z the accountant was told
    applied_noise_multiplier: float  # the z the aggregator really used (differs only when broken)
    breakage: str
    population: int  # users + inserted canaries
    canaries: int
    inserted: int
    delta: float
    analytic_epsilon: float  # PLD, user level, for the z the accountant was told
    confidence: float
    final_model: StatisticResult
    all_rounds: StatisticResult
    wall_s: float
    canary_participations: int
    attainable_lower_bound: float  # the one-run bound if every guess were right: the audit's power
    canaries_needed: int | None  # the smallest count with the power (None: none within memory)
    problems: list[str] = field(default_factory=list)
    decision_bound: str = "one-run (Steinke, Nasr & Jagielski 2023); the threshold bound is heuristic"

    @property
    def powered(self) -> bool:
        return self.attainable_lower_bound > self.analytic_epsilon

    @property
    def ok(self) -> bool:
        return self.powered and not self.problems

    @property
    def verdict(self) -> str:
        return "FAILED" if self.problems else ("OK" if self.powered else "CANNOT TEST")

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["ok"] = self.ok
        data["powered"] = self.powered
        data["verdict"] = self.verdict
        return data

    def summary(self) -> str:
        rows = [
            f"canary audit ({self.model}, {self.rounds} rounds, q={self.sample_rate}, "
            f"z={self.noise_multiplier:.4g}, "
            f"{self.inserted} of {self.canaries} canaries inserted, breakage: {self.breakage})",
            f"analytic user-level epsilon (PLD) at delta={self.delta:.3g}: {self.analytic_epsilon:.3f}",
            f"power: the best one-run lower bound {self.canaries} canaries can give at "
            f"{self.confidence:.0%} confidence is {self.attainable_lower_bound:.3f}",
        ]
        for name, stat in (("final model", self.final_model), ("all rounds", self.all_rounds)):
            rows.append(
                f"{name}: estimate {stat.epsilon_estimate:.3f}, one-run lower bound "
                f"{stat.one_run_lower_bound:.3f} at {self.confidence:.0%} confidence (decides); "
                f"threshold bound {stat.threshold_lower_bound:.3f} (heuristic: Clopper-Pearson assumes "
                "independent trials, which one run does not give; not used)"
            )
        if self.problems:
            rows.append("FAILED: " + "; ".join(self.problems))
        elif self.powered:
            rows.append("OK: the one-run lower bound does not exceed the analytic epsilon")
        else:
            rows.append(
                "CANNOT TEST: "
                + underpowered_message(
                    canaries=self.canaries,
                    attainable=self.attainable_lower_bound,
                    claimed=self.analytic_epsilon,
                    needed=self.canaries_needed,
                    confidence=self.confidence,
                )
            )
        rows.append(f"wall time {self.wall_s:.1f} s")
        return "\n".join(rows)


@dataclass(frozen=True)
class AuditSetup:
    """A federation to audit: its trainer, start parameters in update space, and the real-user count.

    `layout` names the trained parameters (None: one group "w"); with the configuration's
    `federated.update_scales` it gives theta = scale * phi, what the Coordinator holds and the trainer
    takes."""

    trainer: RoundTrainer
    start: np.ndarray  # (dim,) float32 phi_0
    n_users: int
    name: str
    layout: ParamLayout | None = None

    def param_layout(self) -> ParamLayout:
        return self.layout or ParamLayout(("w",), ((self.start.size,),))


USERS_NODE, CANARY_NODE = 0, 1  # the audit's two devices: the real users, and the inserted canaries


class CanaryNodes:
    """The Coordinator's update transport in an audit: node USERS_NODE hosts the real users (the setup's
    trainer, at the round's parameters and round seed), node CANARY_NODE the inserted canaries (its slot j
    is the j-th inserted canary). Each reply is the clipped sum of the request's sampled users, as a device
    sends it; the Coordinator does the rest."""

    def __init__(self, trainer: RoundTrainer, canaries: Canaries) -> None:
        self.trainer, self.canaries = trainer, canaries
        self.inserted_rows = np.flatnonzero(canaries.inserted)
        self.participations = 0  # canary updates sent over the run

    def collect(self, grid: Any, request: RoundRequest) -> CollectedUpdates:
        del grid
        empty = np.zeros(0, dtype=np.int64)
        users = request.assignment.get(USERS_NODE, empty)
        slots = request.assignment.get(CANARY_NODE, empty)
        total = np.zeros(self.canaries.directions.shape[1], dtype=np.float64)
        count = unclipped = 0
        if users.size:
            update = self.trainer.clipped_sum(
                request.params, users, round_seed=request.settings.round_seed, clip_norm=request.clip_norm
            )
            total += update.total.astype(np.float64)
            count, unclipped = update.count, update.unclipped_count
        if slots.size:
            total += self.canaries.clipped_sum(self.inserted_rows[slots], clip_norm=request.clip_norm)
            count += int(slots.size)  # a canary's update is always clipped: not in the unclipped count
            self.participations += int(slots.size)
        return CollectedUpdates(TrainReplies(total, count, unclipped, 0, 0))


class ReleasedModels:
    """The Coordinator's evaluate callable (due after every round, and at the start): reads each released
    model theta, in update space phi = theta / scale, for the all-rounds statistic."""

    def __init__(self, canaries: Canaries, scale: np.ndarray) -> None:
        self.canaries, self.scale = canaries, scale
        self.previous: np.ndarray | None = None
        self.best_round_cosine = np.full(canaries.inserted.size, -np.inf)

    def __call__(self, params: np.ndarray) -> dict[str, float]:
        phi = params.astype(np.float64) / self.scale
        if self.previous is not None:
            cosines = self.canaries.cosines(phi - self.previous)
            self.best_round_cosine = np.maximum(self.best_round_cosine, cosines)
        self.previous = phi
        return {}


class DiscardedMetrics:
    """The Coordinator's metrics sink in an audit: the rows are not needed."""

    def append(self, row: dict[str, Any]) -> None:
        del row


def coordinator_config(
    config: FedhomeConfig, folder: Path, *, noise_multiplier: float, delta: float, seed: int
) -> FedhomeConfig:
    """The configuration the audit's Coordinator runs: the audited one with the audit's z (0: mode "none",
    no noise), delta and noise seed, an evaluation (a look at the released model) after every round, and a
    budget that never stops the run (the audit compares with its own analytic epsilon)."""
    return with_overrides(
        config,
        {
            "federated.run_dir": str(folder),
            "federated.eval_every": "1",
            "privacy.mode": "central" if noise_multiplier > 0 else "none",
            "privacy.noise_multiplier": str(noise_multiplier if noise_multiplier > 0 else 1.0),
            "privacy.delta": repr(delta),
            "privacy.target_epsilon": "1e12",
            "privacy.participation_cap": "0",
            "privacy.adaptive_clipping": "false",
            "privacy.secure_aggregation": "false",
            "privacy.record_level": "false",
            "privacy.seed": str(seed),
        },
    )


@contextlib.contextmanager
def quiet_round_logs() -> Iterator[None]:
    """The Coordinator's and the ledger's per-round INFO lines are not the audit's output."""
    loggers = [logging.getLogger(name) for name in ("server.rounds.coordinator", "server.ledger")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def train_with_canaries(
    setup: AuditSetup,
    config: FedhomeConfig,
    canaries: Canaries,
    *,
    noise_multiplier: float,
    delta: float,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, int]:
    """`config.federated.rounds` rounds of the real Coordinator with the inserted canaries in its population;
    (final phi_T, each canary's largest per-round cosine, canary participations)."""
    layout = setup.param_layout()
    scale = scale_vector(layout, config.federated.update_scales).astype(np.float64)
    nodes = CanaryNodes(setup.trainer, canaries)
    released = ReleasedModels(canaries, scale)
    population = Population(
        (USERS_NODE, CANARY_NODE), np.array([setup.n_users, nodes.inserted_rows.size], dtype=np.int64)
    )
    with tempfile.TemporaryDirectory(prefix="canary-audit-") as tmp:
        folder = RunFolder(Path(tmp) / "run")
        folder.create()
        run_config = coordinator_config(
            config, folder.root, noise_multiplier=noise_multiplier, delta=delta, seed=seed
        )
        coordinator = Coordinator(
            run_config,
            folder,
            population,
            (setup.start.astype(np.float64) * scale).astype(np.float32),
            layout,
            PrivacyLedger(folder.ledger, signing_key=generate_private_key()),
            evaluate=released,
            transport=nodes,
            metrics=DiscardedMetrics(),
        )
        with quiet_round_logs():
            reason = coordinator.run(None, progress=False)
        if coordinator.completed_rounds != config.federated.rounds:
            raise ConfigError(f"the audited run stopped early: {reason}")
        final = coordinator.state.params.astype(np.float64) / scale
    return final, released.best_round_cosine, nodes.participations


def max_canaries(dim: int) -> int:
    """The most canary directions of `dim` parameters that MAX_CANARY_FLOATS allows."""
    return MAX_CANARY_FLOATS // max(dim, 1)


def canaries_needed(epsilon: float, *, n_users: int, dim: int, confidence: float = 0.95) -> int | None:
    """The smallest canary count whose attainable one-run bound exceeds `epsilon` (half of them inserted,
    delta = default_delta(n_users + m/2)); None when none within MAX_CANARY_FLOATS has the power."""
    return empirical.canaries_for_power(
        epsilon,
        delta_for=lambda m: default_delta(n_users + m // 2),
        confidence=confidence,
        max_canaries=max_canaries(dim),
    )


def underpowered_message(
    *,
    canaries: int,
    attainable: float,
    claimed: float,
    needed: int | None,
    confidence: float,
    limit: int | None = None,
) -> str:
    """Why an audit cannot test its claim, and what would."""
    advice = (
        f"about {needed} canaries would have the power (--canaries {needed} or --canaries auto)"
        if needed is not None
        else "no canary count within the memory limit (MAX_CANARY_FLOATS"
        + (f": {limit} canaries" if limit else "")
        + ") has the power, as the bound's 2 m delta term grows with m; claim a smaller epsilon or "
        "audit a larger population (smaller delta)"
    )
    return (
        f"the audit cannot test this claim with these canaries: the best one-run lower bound "
        f"{canaries} canaries can give at {confidence:.0%} confidence (every guess right) is "
        f"{attainable:.3f}, not above the claimed epsilon {claimed:.3f}, so no mechanism could fail "
        f"it; {advice}"
    )


def run_canary_audit(
    setup: AuditSetup,
    config: FedhomeConfig,
    *,
    canaries: CanaryCount,
    noise_multiplier: float,
    breakage: Breakage = "none",
    confidence: float = 0.95,
    seed: int = 0,
    require_power: bool = True,
) -> CanaryAuditResult:
    """Train `config.federated.rounds` rounds with canaries and compare the audit with the accountant.

    Raises UnderpoweredAudit before training when the canaries cannot certify a bound above the analytic
    epsilon (unless `require_power` is False: then the result says CANNOT TEST). `canaries="auto"` picks the
    smallest count that has the power."""
    if breakage not in BREAKAGES:
        raise ConfigError(f"breakage must be one of {BREAKAGES}, got {breakage!r}")
    if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
        raise ConfigError("a canary audit checks a noised mechanism: noise_multiplier must be > 0")
    started = time.perf_counter()
    fed = config.federated
    events = [RoundEvent(fed.sample_rate, noise_multiplier)] * fed.rounds
    dim, limit = setup.start.size, max_canaries(setup.start.size)
    if canaries == "auto":
        # a first guess from the epsilon at the smallest population's delta, then up until it has the power
        count = canaries_needed(
            pld_epsilon(events, delta=default_delta(setup.n_users)),
            n_users=setup.n_users,
            dim=dim,
            confidence=confidence,
        )
        count = limit if count is None else count
    else:
        count = canaries
    while True:
        canary_set = Canaries.draw(count, dim, seed=seed + 1)
        population = setup.n_users + int(canary_set.inserted.sum())
        delta = default_delta(population)
        analytic = pld_epsilon(events, delta=delta)
        attainable = empirical.attainable_one_run_bound(
            count, int(canary_set.inserted.sum()), delta=delta, confidence=confidence
        )
        if attainable > analytic or canaries != "auto" or count >= limit:
            break
        count = min(limit, int(count * 1.1) + 1)
    needed = (
        count
        if attainable > analytic
        else canaries_needed(analytic, n_users=setup.n_users, dim=dim, confidence=confidence)
    )
    if attainable <= analytic and require_power:
        raise UnderpoweredAudit(
            underpowered_message(
                canaries=count,
                attainable=attainable,
                claimed=analytic,
                needed=needed,
                confidence=confidence,
                limit=limit,
            ),
            attainable=attainable,
            claimed=analytic,
            needed=needed,
        )
    applied = {"none": noise_multiplier, "noise-off": 0.0, "noise-tenth": noise_multiplier / 10}[breakage]
    phi, best_round_cosine, participations = train_with_canaries(
        setup, config, canary_set, noise_multiplier=applied, delta=delta, seed=seed + 2
    )
    final = StatisticResult.of(
        canary_set.cosines(phi - setup.start.astype(np.float64)),
        canary_set.inserted,
        delta=delta,
        confidence=confidence,
    )
    every = StatisticResult.of(best_round_cosine, canary_set.inserted, delta=delta, confidence=confidence)
    problems = [
        f"{name}: one-run lower bound {stat.lower_bound:.3f} exceeds the analytic epsilon {analytic:.3f}"
        for name, stat in (("final model", final), ("all rounds", every))
        if stat.lower_bound > analytic
    ]
    return CanaryAuditResult(
        model=setup.name,
        rounds=fed.rounds,
        sample_rate=fed.sample_rate,
        noise_multiplier=noise_multiplier,
        applied_noise_multiplier=applied,
        breakage=breakage,
        population=population,
        canaries=count,
        inserted=int(canary_set.inserted.sum()),
        delta=delta,
        analytic_epsilon=analytic,
        confidence=confidence,
        final_model=final,
        all_rounds=every,
        wall_s=time.perf_counter() - started,
        canary_participations=participations,
        attainable_lower_bound=attainable,
        canaries_needed=needed,
        problems=problems,
    )


def write_audit(result: CanaryAuditResult, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "canary_audit.json"
    path.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return path
