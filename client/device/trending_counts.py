"""The release's DP trending counts on the device: loaded from a verified release, never recomputed here.

A release made from a run with trending releases carries `trending_counts.npy` (one float32 estimate per
catalogue item, in item order: noisy user counts, possibly negative) and, in its signed manifest's privacy
block, "trending": the ledger entry it comes from, the round it follows, its parameters and the user
epsilon spent up to it (server/releases/release_trending.py). The cache has already checked the file's sha256
against the signed manifest; here only its shape and values are checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shared.errors import DataError


@dataclass(frozen=True)
class TrendingCounts:
    counts: np.ndarray  # (n_items,) float32, in catalogue order
    after_round: int
    user_epsilon: float | str  # PLD epsilon spent up to the trending entry ("inf" without noise)
    ledger_entry_hash: str
    count_noise_std: float  # std of the noise in each published count

    def describe(self) -> dict[str, Any]:
        """What the device can show about where its Trending section comes from."""
        return {
            "after_round": self.after_round,
            "user_epsilon": self.user_epsilon,
            "count_noise_std": self.count_noise_std,
            "ledger_entry": self.ledger_entry_hash,
        }


def release_trending(folder: Path, manifest: dict[str, Any], *, n_items: int) -> TrendingCounts | None:
    """The trending counts of a verified release (None when it has none); DataError when the file is not
    one finite value per item, the manifest does not list it, or the block lacks a field or has a bad one."""
    block = manifest.get("privacy", {}).get("trending")
    if block is None:
        return None
    name = str(block.get("file", ""))
    if name not in manifest.get("files", {}):
        raise DataError(f"the release's trending counts {name!r} are not a file of its signed manifest")
    try:
        counts = np.load(Path(folder) / name, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"the release's trending counts do not load ({exc})") from exc
    if counts.shape != (n_items,) or not np.isfinite(counts).all():
        raise DataError(f"trending counts must be {n_items} finite values, got shape {counts.shape}")
    try:
        return TrendingCounts(
            counts.astype(np.float32),
            int(block["after_round"]),
            block["epsilon"],
            str(block["ledger_entry_hash"]),
            float(block["count_noise_std"]),
        )
    except KeyError as exc:
        raise DataError(f"the release's trending block has no {exc.args[0]!r}") from exc
    except (TypeError, ValueError) as exc:
        raise DataError(f"the release's trending block has a malformed value ({exc})") from exc
