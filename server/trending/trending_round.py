"""A trending round of a federated run: budget check, Poisson sample, query, noise, counts file, ledger.

When (`TrendingConfig`): after every `every_rounds` training rounds and/or once after the last one
(`final`). Each release is accounted by the run's own accountant as RoundEvent(q_t, z_t), composed with
the training rounds; a release that would take the user epsilon past the budget is refused
(BudgetExhaustedError) and nothing is sampled, queried or written.

Order (what makes a kill safe): the counts file (atomic), the checkpoint of the current round again, now
holding the accountant with this release and the trending entry, then the ledger entry. A resumed run whose
ledger lacks that entry appends it from the checkpoint (server/rounds/coordinator.py); a counts file whose
entry never reached a checkpoint was not accounted and is deleted on resume (`remove_unaccounted_counts`). A
kill between a training round and its periodic release skips that release; the final one is made on resume if
missing.

The entry (kind "trending_counts", no "round": "after_round" is the training round it follows; "purpose":
"trending") records the mechanism's parameters, the realised cohort, the noise std applied, the sha256 of the
counts file and the epsilon spent so far, under the same chain and signature as the training rounds
(server/ledger.py). The popularity prior's one count release before round 1 is made by the same code
(`run_count_release` with its own `CountRelease`: server/trending/popularity_release.py).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from server.ledger_entries import (
    TRENDING_KIND,
    TRENDING_PURPOSE,
    Purpose,
    TrendingEntry,
    entries_after_last_round,
    is_trending,
    is_trending_release,
)
from server.rounds.privacy_plan import derived_seed
from server.rounds.run_hooks import RunAccess
from server.rounds.update_transport import secure_settings
from server.strategy import poisson_sample
from server.trending.trending_query import (
    SENSITIVITY,
    NoisedCounts,
    TrendingReplies,
    noised_counts,
    secure_trending_query,
    trending_query,
)
from shared.errors import BudgetExhaustedError
from shared.privacy.accounting import RoundEvent
from shared.privacy.noise import GaussianNoise
from shared.release_manifest import file_digest

log = logging.getLogger(__name__)

ESTIMATOR = "(sum + noise) * sqrt(max_items) / sample_rate"
SECONDS_PER_DAY = 86_400
_SAMPLE_SALT, _NOISE_SALT = 5, 4  # per-release seeds when privacy.seed is fixed (tests, reproductions)


def trending_due(run: RunAccess, *, final: bool) -> bool:
    """Is a trending release due now: after this training round (periodic), or at the end of the run
    (`final`)? Never twice after the same round, never before the first round."""
    trending, after = run.config.trending, run.completed_rounds
    due = trending.final if final else trending.every_rounds > 0 and after % trending.every_rounds == 0
    return after > 0 and due and not released_after(run.ledger_entries(), after)


def released_after(entries: Sequence[dict[str, Any]], after: int) -> bool:
    """Does the ledger hold the trending release after round `after` among the entries that follow its last
    training round (another hook's entry, the start check, may come after it)?"""
    after_last = entries_after_last_round(entries)
    return any(is_trending_release(e) and e.get("after_round") == after for e in after_last)


def trending_event(run: RunAccess) -> RoundEvent:
    """RoundEvent(q_t, z_t) of one release (z_t = 0 in privacy mode "none": counts without noise)."""
    trending = run.config.trending
    z = 0.0 if run.plan.mode == "none" else trending.noise_multiplier
    return RoundEvent(sample_rate=trending.sample_rate, noise_multiplier=z)


@dataclass(frozen=True, kw_only=True)
class CountRelease:
    """One accounted count release by the trending mechanism: what it is for, its event, its k and window,
    where its counts go, and the salts of its seeds when privacy.seed is fixed."""

    purpose: Purpose
    event: RoundEvent  # (q, z): z = 0 in privacy mode "none"
    max_items: int  # k
    window_days: float  # 0: the whole history before the window end
    as_of_s: int  # the window end as configured; 0: the release's own time
    counts_file: str  # relative to the run folder, under trending/
    what: str  # for messages: "the trending release after round 3"
    salts: tuple[int, int] = (_SAMPLE_SALT, _NOISE_SALT)  # (sample, noise)

    @property
    def window_s(self) -> float:
        """The window's length in seconds (inf: the whole history)."""
        return self.window_days * SECONDS_PER_DAY if self.window_days > 0 else math.inf


def trending_release(run: RunAccess) -> CountRelease:
    """The trending release due after the current training round (TrendingConfig)."""
    trending, after = run.config.trending, run.completed_rounds
    return CountRelease(
        purpose=TRENDING_PURPOSE,
        event=trending_event(run),
        max_items=trending.max_items,
        window_days=trending.window_days,
        as_of_s=trending.as_of_s,
        counts_file=f"trending/after-round-{after:05d}.npy",
        what=f"the trending release after round {after}",
    )


class TrendingQuery(Protocol):
    """The clear query to the nodes (server/trending/trending_query.py: trending_query, or a test's fake)."""

    def __call__(
        self,
        grid: Any,
        assignment: dict[int, np.ndarray],
        *,
        as_of_s: int,
        window_s: float,
        max_items: int,
        n_items: int,
        timeout_s: float,
    ) -> TrendingReplies: ...


def run_trending_round(
    run: RunAccess, grid: Any, *, n_items: int, query: TrendingQuery = trending_query
) -> dict[str, Any]:
    """One accounted trending release over a catalogue of `n_items` after the current training round;
    returns its ledger entry. `query` asks the nodes in the clear (secure aggregation has its own)."""
    return run_count_release(run, grid, trending_release(run), n_items=n_items, query=query)


def run_count_release(
    run: RunAccess, grid: Any, release: CountRelease, *, n_items: int, query: TrendingQuery = trending_query
) -> dict[str, Any]:
    """One accounted count release (`release`) over a catalogue of `n_items` after the current training
    round (0: before the first); returns its ledger entry. BudgetExhaustedError (nothing sampled, queried or
    written) when it would take the user epsilon past the budget."""
    config, seed = run.config, run.config.privacy.seed
    event, after = release.event, run.completed_rounds
    run.check_budget_for(event, what=release.what)
    sample_salt, noise_salt = release.salts
    rng = np.random.default_rng(None if seed < 0 else derived_seed(seed, after, sample_salt))
    cohort = poisson_sample(run.population.n_users, sample_rate=event.sample_rate, rng=rng)
    as_of, as_of_source = window_end(release.as_of_s)
    assignment, secure_record = run.population.split(cohort), None
    noise = run.round_noise if seed < 0 else GaussianNoise(seed=derived_seed(seed, after, noise_salt))
    window_s, max_items = release.window_s, release.max_items
    if config.privacy.secure_aggregation:
        mode = "none" if run.plan.mode == "none" else "central"
        secure = secure_settings(config, mode=mode, noise_multiplier=event.noise_multiplier, noise=noise)
        header = {"run-id": run.run_id, "round": after}
        replies, result, secure_record = secure_trending_query(
            grid, assignment, header=header, as_of_s=as_of, window_s=window_s, max_items=max_items,
            n_items=n_items, sample_rate=event.sample_rate, secure=secure,
        )  # fmt: skip
    else:
        replies = query(
            grid, assignment, as_of_s=as_of, window_s=window_s, max_items=max_items, n_items=n_items,
            timeout_s=config.federated.node_timeout_s,
        )  # fmt: skip
        result = noised_counts(
            replies.total,
            noise=noise,
            noise_multiplier=event.noise_multiplier,
            sample_rate=event.sample_rate,
            max_items=max_items,
        )
    spent = run.record_event(event)
    relative = write_counts(run.run_root, release.counts_file, result.counts)
    fields = trending_fields(
        run, release, cohort.size, replies, result, spent=spent, as_of=as_of, counts_file=relative
    )
    secure_fields = None if secure_record is None else secure_record.to_json()
    typed = TrendingEntry(
        **fields,
        as_of_source=as_of_source,
        n_items=n_items,
        noise_rng=noise.source,
        secure_aggregation=secure_fields,
        purpose=release.purpose,
    )
    return run.commit_entry(typed.to_fields())


def window_end(configured: int) -> tuple[int, Literal["configured", "release_time"]]:
    """The trending window's end and its source: the configured `trending.as_of_s`, else (0) the release's
    own wall-clock time. Both are public; it is never derived from a user's data here (a caller that sets
    the configuration from the data must not: docs/federated.md)."""
    if configured:
        return configured, "configured"
    return int(time.time()), "release_time"


def write_counts(root: Path, relative: str, counts: np.ndarray) -> str:
    """The published counts as `relative` under root (float32, atomic: trending/after-round-NNNNN.npy for a
    trending release); `relative`."""
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("wb") as handle:
        np.save(handle, counts.astype(np.float32), allow_pickle=False)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    return relative


def remove_unaccounted_counts(root: Path, entries: Sequence[dict[str, Any]]) -> list[str]:
    """Delete the counts files in root/trending/ that no ledger entry names (a kill between writing the
    file and checkpointing its entry: never accounted, so never to be published); returns their names."""
    named = {str(e.get("counts_file")) for e in entries if is_trending(e)}
    removed = []
    for path in sorted((root / "trending").glob("*.npy")):
        if f"trending/{path.name}" not in named:
            path.unlink()
            removed.append(f"trending/{path.name}")
    if removed:
        log.warning("removed trending counts no ledger entry accounts for: %s", ", ".join(removed))
    return removed


def trending_fields(
    run: RunAccess,
    release: CountRelease,
    cohort: int,
    replies: TrendingReplies,
    result: NoisedCounts,
    *,
    spent: dict[str, Any],
    as_of: int,
    counts_file: str,
) -> dict[str, Any]:
    """The ledger fields of one count release (everything an auditor needs to recompute its cost)."""
    event, plan, n, k = release.event, run.plan, run.population.n_users, release.max_items
    return {
        "kind": TRENDING_KIND,
        "mechanism": "poisson_subsampled_gaussian_sum",
        "run_id": run.run_id,
        "after_round": run.completed_rounds,
        "time_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "mode": "none" if plan.mode == "none" else "central",
        "unit_of_privacy": "user",
        "sampling": "poisson",
        "sample_rate": event.sample_rate,
        "population": n,
        "expected_cohort": event.sample_rate * n,
        "realised_cohort": cohort,
        "aggregated_users": replies.count,
        "rejected_updates": replies.rejected_users,
        "max_items": k,
        "item_weight": 1.0 / math.sqrt(k),
        "sensitivity": SENSITIVITY,
        "window_days": release.window_days,
        "as_of_s": as_of,
        "noise_multiplier": event.noise_multiplier,
        "noise_std": result.noise_std,
        "count_noise_std": result.count_std,
        "estimator": ESTIMATOR,
        "counts_file": counts_file,
        "counts_sha256": file_digest(run.run_root / counts_file)["sha256"],
        "delta": plan.delta,
        "user_epsilon": spent,
        "accountant_versions": run.accountant_versions(),
    }


class TrendingSchedule:
    """The run's trending releases, a round hook (server/rounds/run_hooks.py): after every `every_rounds`
    rounds and/or at the end (TrendingConfig). A release over budget is refused and noted; training goes on
    under its own budget check. On resume, counts files that no ledger entry accounts for are deleted."""

    def __init__(self, run_root: Path, *, n_items: int, query: TrendingQuery = trending_query) -> None:
        self.run_root, self.n_items, self.query = run_root, n_items, query
        self.refused: list[str] = []

    def on_resume(self, entries: Sequence[dict[str, Any]]) -> None:
        remove_unaccounted_counts(self.run_root, entries)

    def before_rounds(self, run: RunAccess, grid: Any) -> None:
        """Trending releases follow training rounds, never precede the first."""

    def after_round(self, run: RunAccess, grid: Any, row: dict[str, Any]) -> None:
        if trending_due(run, final=False):
            self._release(run, grid)

    def at_end(self, run: RunAccess, grid: Any) -> None:
        if trending_due(run, final=True):
            self._release(run, grid)

    def _release(self, run: RunAccess, grid: Any) -> None:
        try:
            entry = run_trending_round(run, grid, n_items=self.n_items, query=self.query)
        except BudgetExhaustedError as exc:
            log.warning("%s", exc)
            self.refused.append(str(exc))
            return
        log.info(
            "trending release after round %d: cohort %d, user epsilon %s",
            entry["after_round"],
            entry["realised_cohort"],
            entry["user_epsilon"]["pld"],
        )

    def summary(self, entries: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """The releases in the ledger `entries` (file, entry hash, epsilon so far) and the refused ones."""
        keys = ("after_round", "counts_file", "counts_sha256", "entry_hash", "user_epsilon")
        releases = [{k: e[k] for k in keys} for e in entries if is_trending_release(e)]
        return {"releases": releases, "refused": self.refused}
