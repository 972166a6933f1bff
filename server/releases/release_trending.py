"""The trending counts a release carries: the latest accounted trending release of the run, bound to its
ledger entry.

A release of the model after round r carries the counts of the newest trending entry with after_round <= r
(server/trending/trending_round.py), as `trending_counts.npy` (float32, one estimate per catalogue item, in
item order), listed with its sha256 in the signed manifest like every other file. The manifest's privacy block
gets "trending": the entry's hash, the round it follows, the mechanism's parameters and the user epsilon
spent up to that entry; and "epsilon_all", the user epsilon that covers everything in the release (the
later of the model's entry and the trending entry). The counts file in the run folder must match the
sha256 the (verified) entry signs, or nothing is released.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from server.ledger_entries import is_trending
from shared.errors import DataError
from shared.release_manifest import file_digest

TRENDING_COUNTS = "trending_counts.npy"
MANIFEST_FIELDS = (
    *("after_round", "sample_rate", "noise_multiplier", "count_noise_std", "max_items", "window_days"),
    *("as_of_s", "realised_cohort", "counts_sha256"),
)


def latest_trending(
    entries: list[dict[str, Any]], round_number: int, run_dir: Path
) -> tuple[Path, dict[str, Any]] | None:
    """(counts file, manifest block) of the newest trending entry after round <= round_number, or None.
    DataError when the run folder's counts file is missing or is not the one the entry signs."""
    found = [e for e in entries if is_trending(e) and e.get("after_round", 0) <= round_number]
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
