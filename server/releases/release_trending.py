"""The count releases a model release is bound to: the latest accounted trending release of the run (its
counts the release carries), and the popularity prior's count release (its prior is in the model's item bias),
each bound to its ledger entry.

A release of the model after round r carries the counts of the newest trending entry with after_round <= r
(server/trending/trending_round.py), as `trending_counts.npy` (float32, one estimate per catalogue item, in
item order), listed with its sha256 in the signed manifest like every other file. The manifest's privacy block
gets "trending": the entry's hash, the round it follows, the mechanism's parameters and the user epsilon
spent up to that entry; and "epsilon_all", the user epsilon that covers everything in the release (the
later of the model's entry and the trending entry). The counts file in the run folder must match the
sha256 the (verified) entry signs, or nothing is released.

The popularity prior (server/trending/popularity_release.py) is not a file of the release: the model's
`item_bias.npy` includes it (bias(text) + w * prior). The manifest's privacy block gets "popularity_prior":
the release's entry hash (after round 0), the mechanism's parameters, the counts' sha256 the entry signs, the
prior's sha256 (shared/run_folder.py: popularity_prior_sha256) and the user epsilon after that entry (every
model entry's epsilon already covers it: it comes before round 1). The run folder's prior must be the one the
entry's counts give, or nothing is released.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from server.ledger_entries import is_trending_release, popularity_release_entry
from server.trending.popularity_release import prior_of_entry
from shared.errors import DataError
from shared.release_manifest import file_digest, popularity_prior_sha256
from shared.run_folder import RunFolder, load_popularity_prior

TRENDING_COUNTS = "trending_counts.npy"
MANIFEST_FIELDS = (
    *("after_round", "sample_rate", "noise_multiplier", "count_noise_std", "max_items", "window_days"),
    *("as_of_s", "realised_cohort", "counts_sha256"),
)
PRIOR_FIELDS = (*MANIFEST_FIELDS, "purpose")


def latest_trending(
    entries: list[dict[str, Any]], round_number: int, run_dir: Path
) -> tuple[Path, dict[str, Any]] | None:
    """(counts file, manifest block) of the newest trending entry after round <= round_number, or None.
    DataError when the run folder's counts file is missing or is not the one the entry signs."""
    found = [e for e in entries if is_trending_release(e) and e.get("after_round", 0) <= round_number]
    if not found:
        return None
    entry = found[-1]
    path = Path(run_dir) / str(entry["counts_file"])
    if not path.is_file() or file_digest(path)["sha256"] != entry["counts_sha256"]:
        raise DataError(f"{path}: missing, or not the trending counts the ledger entry signs")
    block = {name: entry[name] for name in MANIFEST_FIELDS}
    block.update(
        file=TRENDING_COUNTS,
        ledger_entry_hash=entry["entry_hash"],
        epsilon=entry["user_epsilon"]["pld"],
        epsilon_rdp=entry["user_epsilon"]["rdp"],
        unit="user",
    )
    return path, block


def epsilon_all(model_epsilon: float | str, trending: dict[str, Any] | None) -> float | str:
    """The user epsilon covering the model and the trending counts together: the later entry's, i.e. the
    larger one ("inf" when either is)."""
    if trending is None:
        return model_epsilon
    values = [math.inf if v == "inf" else float(v) for v in (model_epsilon, trending["epsilon"])]
    return "inf" if math.isinf(max(values)) else max(values)


def popularity_prior_block(
    entries: list[dict[str, Any]], run_dir: Path
) -> tuple[np.ndarray, dict[str, Any]] | None:
    """(prior, manifest block) of the run's popularity prior, bound to its count release's ledger entry, or
    None when the run made none. DataError when the run folder's prior (load_popularity_prior, what the run
    used) is missing, or is not the one the counts that entry signs give, or when a prior has no entry."""
    folder = RunFolder(Path(run_dir))
    prior, entry = load_popularity_prior(folder), popularity_release_entry(entries)
    if entry is None:
        if prior is not None:
            raise DataError(
                f"{folder.popularity_prior}: a popularity prior that no ledger entry accounts for"
            )
        return None
    expected = prior_of_entry(folder.root, entry)
    if prior is None or popularity_prior_sha256(prior) != popularity_prior_sha256(expected):
        raise DataError(
            f"{folder.popularity_prior}: missing, or not the prior its ledger entry's counts give"
        )
    block = {name: entry[name] for name in PRIOR_FIELDS}
    block.update(
        prior_sha256=popularity_prior_sha256(prior),
        ledger_entry_hash=entry["entry_hash"],
        epsilon=entry["user_epsilon"]["pld"],
        epsilon_rdp=entry["user_epsilon"]["rdp"],
        unit="user",
    )
    return prior, block
