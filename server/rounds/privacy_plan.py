"""A run's privacy settings fixed at its start (PrivacyPlan: mode, q, the accounted z, delta, the target),
its noise source (RoundNoise), the per-round seeds derived from a fixed seed (derived_seed), and the z its
ledger says its rounds used (noise_multiplier_spans)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from server.ledger_entries import is_training_round
from shared.config import FedhomeConfig
from shared.privacy.noise import GaussianNoise
from shared.privacy.planned_noise import planned_delta, planned_noise_multiplier

log = logging.getLogger(__name__)

EPSILON_SLACK = 1e-9  # relative: a round may bring epsilon to the budget, not past it


def derived_seed(seed: int, round_number: int, salt: int) -> int:
    """A deterministic per-round seed from a base seed (only used when a fixed seed is configured)."""
    return int(np.random.SeedSequence([seed, round_number, salt]).generate_state(1)[0])


class RoundNoise:
    """The aggregator's noise source: OS-entropy seeded, or per-round derived seeds when a seed is fixed."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.current = GaussianNoise(seed=None if seed < 0 else seed)

    def for_round(self, round_number: int) -> None:
        if self.seed >= 0:
            self.current = GaussianNoise(seed=derived_seed(self.seed, round_number, 1))

    @property
    def source(self) -> str:
        return self.current.source

    def sample(self, shape: tuple[int, ...], *, std: float) -> np.ndarray:
        return self.current.sample(shape, std=std)

    def normal(self, *, std: float) -> float:
        return self.current.normal(std=std)

    def discrete(self, shape: int, *, std: float) -> np.ndarray:
        return self.current.discrete(shape, std=std)


@dataclass(frozen=True)
class NoiseSpan:
    """Consecutive training rounds whose ledger entries accounted the same noise multiplier z."""

    first_round: int
    last_round: int
    noise_multiplier: float


def noise_multiplier_spans(entries: Iterable[Mapping[str, Any]]) -> list[NoiseSpan]:
    """The z each training round's ledger entry accounted (trending releases and start checks left out), as
    spans of rounds with one z, in round order: one span when the z never changed, none before the first
    round."""
    spans: list[NoiseSpan] = []
    for entry in entries:
        if not is_training_round(entry):
            continue
        number, z = int(entry["round"]), float(entry["noise_multiplier"])
        if spans and spans[-1].noise_multiplier == z:
            spans[-1] = NoiseSpan(spans[-1].first_round, number, z)
        else:
            spans.append(NoiseSpan(number, number, z))
    return spans


def noise_multiplier_summary(entries: Iterable[Mapping[str, Any]], *, planned: float) -> dict[str, Any]:
    """The run summary's z: the one the ledger's training rounds accounted, and the rounds of each z
    ("noise_multiplier_spans"). When z changed mid-run (a ledger resumed by a fedhome that recalibrated z
    for a raised round count) "noise_multiplier" is None rather than one of them; before any round it is
    `planned`, the z the run would use."""
    spans = noise_multiplier_spans(entries)
    z: float | None = None
    if not spans:
        z = planned
    elif len(spans) == 1:
        z = spans[0].noise_multiplier
    return {"noise_multiplier": z, "noise_multiplier_spans": [asdict(span) for span in spans]}


@dataclass
class PrivacyPlan:
    """The run's privacy parameters, fixed when the run starts (and recorded in config.json).

    A resumed run keeps the z its rounds used (Coordinator.resume: from its ledger), even when its round
    count was raised: `build` calibrates z for the configured rounds, which is right only at the start.
    """

    mode: str
    sample_rate: float
    noise_multiplier: float  # the accounted z (0 in mode "none")
    delta: float
    target_epsilon: float

    @classmethod
    def build(cls, config: FedhomeConfig, population: int) -> PrivacyPlan:
        privacy, federated = config.privacy, config.federated
        delta = planned_delta(config, population)
        z = planned_noise_multiplier(config, population)
        if privacy.mode != "none" and privacy.noise_multiplier == 0.0:
            log.info(
                "noise multiplier %.4f calibrated for epsilon %.2f over %d rounds",
                z,
                privacy.target_epsilon,
                federated.rounds,
            )
        return cls(privacy.mode, federated.sample_rate, z, delta, privacy.target_epsilon)
