"""The typed interface between the round loop and what runs beside it (in the manner of pfl-research's
callbacks), and where the metrics rows go. A hook is told when the run resumes, before the run's rounds
(also when a resumed run goes on), after each training round, and at the end, and acts on the run only
through `RunAccess`, never through the coordinator's attributes.

`RunAccess` is what the Coordinator (server/rounds/coordinator.py) offers a hook: the run's identity and
position, its privacy plan and population, the current global parameters and round's noise, and one way to
spend privacy: check an event against the budget, record it in the run's accountant, and commit a signed
ledger entry (checkpointed with the run's state before it reaches the ledger, so a kill can never lose or
double-count it). It also holds the run's popularity prior, which goes to the nodes with every training,
evaluation and start check message. The popularity prior's count release
(server/trending/popularity_release.py), a trending release (server/trending/trending_round.py) and the start
check (server/rounds/start_check.py) are such hooks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from server.rounds.messaging import Population
from server.rounds.privacy_plan import PrivacyPlan
from shared.config import FedhomeConfig
from shared.privacy.accounting import RoundEvent
from shared.privacy.noise import GaussianNoise
from shared.run_folder import RunFolder, append_metrics


class RunAccess(Protocol):
    """The run as a hook sees it."""

    @property
    def config(self) -> FedhomeConfig: ...
    @property
    def plan(self) -> PrivacyPlan: ...
    @property
    def population(self) -> Population: ...
    @property
    def run_id(self) -> str: ...
    @property
    def completed_rounds(self) -> int: ...
    @property
    def global_params(self) -> np.ndarray:
        """The global parameters after the last completed round (read only: a copy is not made)."""
        ...

    @property
    def round_noise(self) -> GaussianNoise: ...
    @property
    def run_root(self) -> Path: ...

    def ledger_entries(self) -> list[dict[str, Any]]: ...

    def check_budget_for(self, event: RoundEvent, *, what: str) -> None:
        """BudgetExhaustedError when `event` would take the user epsilon past the budget."""
        ...

    def record_event(self, event: RoundEvent) -> dict[str, Any]:
        """Account `event`; returns the user epsilon spent so far ({"pld": ..., "rdp": ...}, JSON-safe)."""
        ...

    def accountant_versions(self) -> dict[str, str]: ...

    def commit_entry(self, fields: dict[str, Any]) -> dict[str, Any]:
        """Sign `fields`, checkpoint the run's state with the entry, append it to the ledger; the entry."""
        ...

    @property
    def popularity_prior(self) -> np.ndarray | None:
        """The popularity prior the nodes' models use, (n_items,) float32 (None: none, zeros)."""
        ...

    def use_popularity_prior(self, prior: np.ndarray) -> None:
        """Send `prior` to the nodes with every later training, evaluation and start check message."""
        ...


class RunHook(Protocol):
    def on_resume(self, entries: Sequence[dict[str, Any]]) -> None:
        """The run resumed from a checkpoint whose ledger holds `entries`: clean up what they do not
        account for."""
        ...

    def before_rounds(self, run: RunAccess, grid: Any) -> None:
        """The run is about to run its training rounds (before the starting point's evaluation): at the
        start (run.completed_rounds == 0, nothing trained yet), or going on after a resume."""
        ...

    def after_round(self, run: RunAccess, grid: Any, row: dict[str, Any]) -> None:
        """Training round `row["round"]` is complete (checkpointed, in the ledger); `row`: its metrics."""
        ...

    def at_end(self, run: RunAccess, grid: Any) -> None:
        """No training round follows (all done, or the budget is spent)."""
        ...


class MetricsSink(Protocol):
    def append(self, row: dict[str, Any]) -> None:
        """One metrics row (a round's, with its evaluation when one was due, or round 0's start)."""
        ...


@dataclass(frozen=True)
class MetricsFile:
    """Metrics rows appended to the run folder's metrics.jsonl (the rows a resume trims, see
    shared/run_folder.py)."""

    folder: RunFolder

    def append(self, row: dict[str, Any]) -> None:
        append_metrics(self.folder, row)
