"""Checks of a trending-release ledger entry (kind "trending_counts": a trending release, or the popularity
prior's count release before round 1): fields, ranges, noise, counts file.

The mechanism the entry must describe (server/trending/trending_query.py): Poisson sampling with rate q_t,
each user's contribution vector weighted 1/sqrt(max_items) per item so its L2 norm is <= 1 (sensitivity 1),
Gaussian noise of std z_t * 1 on every item of the sum. Like server/audit/entry_checks.py, these checks append
plain-language problems and never raise on malformed input.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

from server.audit.entry_checks import NOISE_RTOL, close, read_fields, secure_sensitivity
from server.ledger_entries import TrendingEntry, is_trending


def check_trending_fields(where: str, entry: dict[str, Any], problems: list[str]) -> bool:
    """True when the fields the other checks read are present, well-typed and in range."""
    typed = read_fields(where, entry, problems)
    if not isinstance(typed, TrendingEntry):
        return False
    ranges = [
        ("sample_rate in (0, 1]", 0 < typed.sample_rate <= 1),
        ("noise_multiplier >= 0", typed.noise_multiplier >= 0),
        ("max_items >= 1", typed.max_items >= 1),
        ("delta in (0, 1)", 0 < typed.delta < 1),
        # the popularity prior's counts are released once, before round 1 (its models all use them)
        (
            "after_round 0 for purpose popularity_prior",
            typed.purpose != "popularity_prior" or not typed.after_round,
        ),
    ]
    out_of_range = [rule for rule, holds in ranges if not holds]
    if out_of_range:
        problems.append(f"{where}: values out of range, need {out_of_range}")
    return not out_of_range


def check_trending_noise(where: str, entry: dict[str, Any], problems: list[str]) -> None:
    """Sensitivity 1 from weights 1/sqrt(k), noise applied = z_t * sensitivity, the counts' noise std =
    noise_std * sqrt(k) / q_t (the estimator's scale), divisor q*N, Poisson."""
    z, std, mode = float(entry["noise_multiplier"]), float(entry["noise_std"]), entry["mode"]
    if entry["sampling"] != "poisson":
        problems.append(f"{where}: sampling {entry['sampling']!r}; the accounting assumes Poisson sampling")
    if not close(float(entry["item_weight"]), 1 / math.sqrt(entry["max_items"]), NOISE_RTOL):
        problems.append(f"{where}: item_weight is not 1/sqrt(max_items): the L2 sensitivity is not 1")
    if float(entry["sensitivity"]) != 1.0:
        problems.append(f"{where}: sensitivity {entry['sensitivity']} (the accounting assumes 1)")
    if mode == "none":
        if z != 0 or std != 0:
            problems.append(f"{where}: mode none must have noise_multiplier 0 and noise_std 0")
    elif mode != "central":
        problems.append(f"{where}: unknown mode {mode!r} for a trending release")
    else:
        bound = float(entry["sensitivity"])
        if "secure_aggregation" in entry:  # the nodes' fixed-point sums: C' = 1 + step * sqrt(n_items)
            bound = secure_sensitivity(where, entry, bound, problems)
        if not close(std, z * bound, NOISE_RTOL):
            problems.append(f"{where}: noise_std {std} != noise_multiplier {z} * sensitivity {bound}")
    q = float(entry["sample_rate"])
    count_std = float(entry["count_noise_std"])
    if not close(count_std, std * math.sqrt(entry["max_items"]) / q, NOISE_RTOL):
        problems.append(
            f"{where}: count_noise_std {count_std} != noise_std * sqrt(max_items) / sample_rate "
            "(the published counts' noise is misstated)"
        )
    cohort, population = _number(entry.get("expected_cohort")), _number(entry.get("population"))
    if cohort is not None and population is not None and not close(cohort, q * population, NOISE_RTOL):
        problems.append(f"{where}: expected_cohort {cohort} is not sample_rate * population")


def check_counts_file(where: str, entry: dict[str, Any], folder: Path, problems: list[str]) -> bool | None:
    """The published counts file beside the ledger against the entry's sha256; None when it is absent
    (a ledger verified on its own), True when it matches."""
    name = str(entry["counts_file"])
    if name.startswith("/") or ".." in Path(name).parts:
        problems.append(f"{where}: counts_file {name!r} points outside the run folder")
        return False
    path = folder / name
    if not path.is_file():
        return None
    if hashlib.sha256(path.read_bytes()).hexdigest() != entry["counts_sha256"]:
        problems.append(f"{where}: {name} does not match the counts_sha256 the entry signs")
        return False
    return True


def check_unsigned_counts(entries: list[dict[str, Any]], folder: Path, problems: list[str]) -> None:
    """Every counts file in the run folder's trending/ must be named by a trending entry of the ledger: one
    that is not was never accounted (a release whose entry was cut off the end of the ledger, or a kill
    between writing the file and signing its entry) and must not be published."""
    named = {str(e.get("counts_file")) for e in entries if is_trending(e)}
    directory = folder / "trending"
    if not directory.is_dir():
        return
    for path in sorted(directory.glob("*.npy")):
        name = f"trending/{path.name}"
        if name not in named:
            problems.append(
                f"{name}: trending counts that no ledger entry signs (unaccounted; entries cut off?)"
            )


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None
