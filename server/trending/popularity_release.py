"""The popularity prior of a federated run: one DP count release before the first training round, and the
prior log(1 + max(count, 0)) that the server's model and every node's model use from then on.

The mechanism is the trending one (server/trending/trending_query.py, client/trending_contribution.py; unit of
privacy: the user): users are Poisson-sampled with rate q_p (`popularity.sample_rate`); each sampled device
contributes 1/sqrt(k) on each of its k = `model.popularity_items_per_user` most recent distinct items among
its TRAINING rows (node.shared.rows: the held-out validation and test targets are never counted, so the prior
cannot leak them) in the `popularity.window_days` before the window end (0 days: its whole history; the end
is `trending.as_of_s`, else the release's own time), so its vector has L2 norm <= 1; nodes return only sums;
the server adds N(0, z_p^2) to every item (z_p = `popularity.noise_multiplier`; 0 in privacy mode "none") and
publishes counts = (sum + noise) * sqrt(k) / q_p. The prior is log(1 + max(count, 0)) (what central training
uses with exact counts: simulation/central_training.py).

When: FedhomeConfig.runs_popularity_release (PopularityReleaseConfig: "auto" with the model's prior in mode
"central" at target epsilon >= `popularity.min_epsilon`, or mode "none"; never in mode "local" or under
secure aggregation). Accounting: one RoundEvent(q_p, z_p) in the run's accountant, planned for in the one
calibration of the training z (shared/privacy/planned_noise.py), so the nodes' pinned z agrees. A release
over budget (a configured z) is refused: the run trains without a prior (zeros), and the summary says so.

Record and resume: the counts file trending/popularity-prior-counts.npy (atomic), then the entry (kind
"trending_counts", "purpose": "popularity_prior", after_round 0) committed through
RunAccess.commit_entry: checkpointed (round 0) with the accountant that includes it before it reaches the
ledger, so `fedhome-audit verify` accounts it like any trending release. Then popularity_prior.npy in the run
folder (atomic), which whatever rebuilds the run's model later reads (shared/run_folder.py:
load_popularity_prior). The release is made once: a run whose ledger holds the entry (a resume) re-reads the
prior from the counts file the entry names and signs; counts without an entry (a kill before the checkpoint)
are deleted and the release is made again, accounted once. A run resumed after round 1 without the entry
(the release was refused) goes on without.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from server.ledger_entries import POPULARITY_PURPOSE, popularity_release_entry
from server.rounds.run_hooks import RunAccess
from server.trending.trending_query import trending_query
from server.trending.trending_round import (
    CountRelease,
    TrendingQuery,
    remove_unaccounted_counts,
    run_count_release,
)
from shared.errors import BudgetExhaustedError, DataError
from shared.model import TwoTower
from shared.model.features import popularity_from_counts
from shared.privacy.planned_noise import popularity_release_event
from shared.release_manifest import file_digest, popularity_prior_sha256
from shared.run_folder import RunFolder, save_popularity_prior

log = logging.getLogger(__name__)

PRIOR_COUNTS = "trending/popularity-prior-counts.npy"
_SAMPLE_SALT, _NOISE_SALT = 8, 9  # the release's seeds when privacy.seed is fixed (tests, reproductions)


def popularity_release(run: RunAccess) -> CountRelease:
    """The popularity prior's count release, made before the first training round."""
    config = run.config
    return CountRelease(
        purpose=POPULARITY_PURPOSE,
        event=popularity_release_event(config),
        max_items=config.model.popularity_items_per_user,
        window_days=config.popularity.window_days,
        as_of_s=config.trending.as_of_s,
        counts_file=PRIOR_COUNTS,
        what="the popularity prior's count release before round 1",
        salts=(_SAMPLE_SALT, _NOISE_SALT),
    )


def prior_of_entry(root: Path, entry: Mapping[str, Any]) -> np.ndarray:
    """The prior (n_items,) float32 from the counts file a popularity release's ledger `entry` names under the
    run folder `root`; DataError when the file is missing, is not the one the entry signs, or does not hold
    one count per item."""
    path = root / str(entry["counts_file"])
    if not path.is_file() or file_digest(path)["sha256"] != entry["counts_sha256"]:
        raise DataError(f"{path}: missing, or not the popularity counts the ledger entry signs")
    counts = np.load(path, allow_pickle=False)
    n_items = entry.get("n_items")
    if counts.ndim != 1 or (n_items is not None and counts.shape != (n_items,)):
        raise DataError(f"{path}: counts of shape {counts.shape}, the entry names {n_items} items")
    return popularity_from_counts(counts)


class PopularityRelease:
    """The popularity prior's count release, a round hook (server/rounds/run_hooks.py) that acts before the
    rounds: it makes the release (or, on resume, reads it back), saves the prior to the run folder, hands it
    to the run for the nodes and puts it into the server's `model` (its evaluations use it)."""

    def __init__(
        self,
        folder: RunFolder,
        *,
        n_items: int,
        model: TwoTower | None = None,
        query: TrendingQuery = trending_query,
    ) -> None:
        self.folder, self.n_items, self.model, self.query = folder, n_items, model, query
        self.enabled = False
        self.note = ""  # why no prior, when there is none
        self.refused: list[str] = []
        self.entry: Mapping[str, Any] | None = None
        self.prior: np.ndarray | None = None  # (n_items,) float32, once made or read back

    def on_resume(self, entries: Sequence[dict[str, Any]]) -> None:
        remove_unaccounted_counts(self.folder.root, entries)

    def before_rounds(self, run: RunAccess, grid: Any) -> None:
        self.enabled = run.config.runs_popularity_release
        self.entry = popularity_release_entry(run.ledger_entries())  # made before (a resumed run)
        if self.entry is None:
            self.folder.popularity_prior.unlink(missing_ok=True)  # no entry accounts for one
            if not self.enabled:
                self.note = run.config.popularity_release_note
                return
            if run.completed_rounds > 0:
                self.note = (
                    f"not in the ledger and {run.completed_rounds} round(s) done: made only before round 1"
                )
                return
            remove_unaccounted_counts(self.folder.root, run.ledger_entries())
            try:
                self.entry = run_count_release(
                    run, grid, popularity_release(run), n_items=self.n_items, query=self.query
                )
            except BudgetExhaustedError as exc:
                log.warning("%s: the run trains without a popularity prior", exc)
                self.refused.append(str(exc))
                self.note = "refused: over the privacy budget"
                return
        self.prior = prior_of_entry(self.folder.root, self.entry)
        save_popularity_prior(self.folder, self.prior)
        run.use_popularity_prior(self.prior)
        if self.model is not None:
            self.model.items.set_popularity(self.prior)
        log.info(
            "popularity prior from the count release before round 1: cohort %s, %d items counted, user "
            "epsilon %s",
            self.entry.get("realised_cohort"),
            int((self.prior > 0).sum()),
            self.entry["user_epsilon"]["pld"],
        )

    def after_round(self, run: RunAccess, grid: Any, row: dict[str, Any]) -> None:
        """The release precedes the rounds."""

    def at_end(self, run: RunAccess, grid: Any) -> None:
        """The release precedes the rounds."""

    def summary(self) -> dict[str, Any]:
        """The run summary's block: whether the release was on, made or refused (and why not), its entry and
        the user epsilon spent after it (its own cost: nothing precedes it), and the prior it gave."""
        entry, prior = self.entry or {}, self.prior
        keys = ["after_round", "sample_rate", "noise_multiplier", "count_noise_std", "max_items"]
        keys += [
            "window_days",
            "realised_cohort",
            "counts_file",
            "counts_sha256",
            "entry_hash",
            "user_epsilon",
        ]
        return {
            "enabled": self.enabled,
            "made": self.entry is not None,
            "refused": self.refused,
            "note": self.note,
            **{key: entry.get(key) for key in keys},
            "items_with_positive_counts": None if prior is None else int((prior > 0).sum()),
            "prior_file": None if prior is None else self.folder.popularity_prior.name,
            "prior_sha256": None if prior is None else popularity_prior_sha256(prior),
        }
