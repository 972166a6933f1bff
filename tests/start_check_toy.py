"""Runs with the start check, without Flower: the coordinator with fake nodes (coordinator_toy.py), and the
start check's query to the nodes faked too, with every sampled user gaining (or losing) a given amount."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from coordinator_toy import POPULATION, FakeNodes

from server.ledger import PrivacyLedger
from server.rounds.coordinator import Coordinator
from server.rounds.run_hooks import RunHook
from server.rounds.start_check import GainReplies, StartCheck
from shared.config import FedhomeConfig, with_overrides
from shared.model.params import ParamLayout
from shared.run_folder import RunFolder
from shared.signing import Ed25519PrivateKey

LAYOUT = ParamLayout(("w",), ((12,),))
INITIAL = np.linspace(-1, 1, 12, dtype=np.float32)
Z_S = 0.5  # small, so that a gain of +-1 per user decides for sure (10 users: +-10 against std 0.5)


@dataclass
class FakeGainQuery:
    """Every sampled user gains `gain` (in [-1, 1]); records what each call was sent."""

    gain: float
    calls: list[dict[str, Any]] = field(default_factory=list)

    def __call__(self, grid: Any, assignment: dict[int, np.ndarray], **settings: Any) -> GainReplies:
        self.calls.append({"assignment": assignment, **settings})
        count = sum(len(slots) for slots in assignment.values())
        return GainReplies(self.gain * count, count, 0, 0)


def config_of(folder: Path, rounds: int, **settings: str) -> FedhomeConfig:
    """A run of `rounds` rounds at z 1, q 0.5 on the 10 users of coordinator_toy's POPULATION; `settings`
    are overrides with "__" for "." (start_check__noise_multiplier="2")."""
    base = {
        "federated.run_dir": str(folder),
        "federated.rounds": str(rounds),
        "federated.sample_rate": "0.5",
        "federated.eval_every": "0",
        "privacy.noise_multiplier": "1.0",
        "privacy.target_epsilon": "100",
        "privacy.seed": "5",
        "start_check.noise_multiplier": str(Z_S),
    }
    overrides = {key.replace("__", "."): value for key, value in settings.items()}
    config: FedhomeConfig = with_overrides(FedhomeConfig(), {**base, **overrides})
    return config


def run(
    config: FedhomeConfig, key: Ed25519PrivateKey, query: FakeGainQuery, *, before: Sequence[RunHook] = ()
) -> tuple[Coordinator, StartCheck]:
    """A coordinator with fake nodes and the start check hook, after the hooks `before` (as the ServerApp puts
    the trending releases first), resumed from the run folder when it has a checkpoint, run to its end."""
    folder = RunFolder(config.federated.run_dir)
    folder.create()
    check = StartCheck(INITIAL, query=query)
    coordinator = Coordinator(
        config,
        folder,
        POPULATION,
        INITIAL,
        LAYOUT,
        PrivacyLedger(folder.ledger, signing_key=key),
        evaluate=lambda p: {},
        transport=FakeNodes(),
        hooks=[*before, check],
    )
    coordinator.resume()
    coordinator.run(None, progress=False)
    return coordinator, check
