"""Fake nodes for the coordinator's tests without Flower: the update transport the coordinator is given."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from server.ledger import PrivacyLedger
from server.rounds.coordinator import Coordinator
from server.rounds.messaging import Population, TrainReplies
from server.rounds.run_hooks import RunAccess, RunHook
from server.rounds.update_transport import CollectedUpdates, RoundRequest
from shared.config import FedhomeConfig, with_overrides
from shared.model.params import ParamLayout
from shared.privacy.mechanism import UserClipping
from shared.run_folder import RunFolder
from shared.signing import Ed25519PrivateKey

DIM = 12
POPULATION = Population((7, 9), np.array([6, 4], dtype=np.int64))


def toy_run_config(run_dir: Path, rounds: int, extra: dict[str, str] | None = None) -> FedhomeConfig:
    """The coordinator tests' run: q 0.5, z 1.0, a budget of epsilon 100, noise seed 5, `extra` on top."""
    settings = {
        "federated.run_dir": str(run_dir),
        "federated.rounds": str(rounds),
        "federated.sample_rate": "0.5",
        "federated.eval_every": "2",
        "privacy.noise_multiplier": "1.0",
        "privacy.target_epsilon": "100",
        "privacy.seed": "5",
        **(extra or {}),
    }
    config: FedhomeConfig = with_overrides(FedhomeConfig(), settings)
    return config


def toy_coordinator(
    run: RunFolder,
    key: Ed25519PrivateKey,
    rounds: int,
    *,
    extra: dict[str, str] | None = None,
    transport: Any = None,
    hooks: Sequence[RunHook] = (),
) -> Coordinator:
    """A Coordinator over the created run folder `run` with the toy run config, a DIM-parameter model
    starting at linspace(-1, 1), a ledger signed with `key`, and FakeNodes unless `transport` is given."""
    run.create()
    return Coordinator(
        toy_run_config(run.root, rounds, extra),
        run,
        POPULATION,
        np.linspace(-1, 1, DIM, dtype=np.float32),
        ParamLayout(("w",), ((DIM,),)),
        PrivacyLedger(run.ledger, signing_key=key),
        evaluate=lambda p: {"valid_x": float(p.sum())},
        transport=FakeNodes() if transport is None else transport,
        hooks=hooks,
    )


class FakeNodes:
    """The update transport the coordinator is given: no Flower, the nodes' reply is a sum of clipped
    random updates determined by the round seed."""

    def collect(self, grid: Any, request: RoundRequest) -> CollectedUpdates:
        count = sum(len(slots) for slots in request.assignment.values())
        rng = np.random.default_rng(request.settings.round_seed)
        clip_norm = request.settings.clip_norm
        updates = [UserClipping(clip_norm).clip(rng.normal(size=DIM))[0] for _ in range(count)]
        total = np.asarray(np.sum(np.array(updates).reshape(count, DIM), axis=0, dtype=np.float64))
        return CollectedUpdates(TrainReplies(total, count, count, 0, 0))


def drop_last_lines(path: Path, n: int) -> None:
    lines = path.read_bytes().split(b"\n")[:-1]
    path.write_bytes(b"".join(line + b"\n" for line in lines[:-n]))


class Killed(Exception):
    pass


class KillAfter:
    """A hook that kills the run (an exception out of the round loop) after round `last` is committed."""

    def __init__(self, last: int) -> None:
        self.last = last

    def on_resume(self, entries: Sequence[dict[str, Any]]) -> None:
        pass

    def before_rounds(self, run: RunAccess, grid: Any) -> None:
        pass

    def after_round(self, run: RunAccess, grid: Any, row: dict[str, Any]) -> None:
        if row["round"] == self.last:
            raise Killed

    def at_end(self, run: RunAccess, grid: Any) -> None:
        pass
