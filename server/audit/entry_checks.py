"""Checks of one ledger entry's content: required fields, value ranges, and noise applied vs noise accounted.

Each check appends plain-language problems naming the entry ("round 3 (line 3): ...") and never raises on
malformed input: a ledger is untrusted data.
"""

from __future__ import annotations

import math
from typing import Any

from server.ledger_entries import CHAIN_FIELDS, Entry, EntrySchemaError, RoundEntry, read_entry

NOISE_RTOL = 1e-9  # noise_std = z * C is exact arithmetic on logged floats


def read_fields(where: str, entry: dict[str, Any], problems: list[str]) -> Entry | None:
    """The typed entry (server/ledger_entries.py), or None with a problem naming what is missing or
    malformed (or the entry's schema, when it is newer than this auditor knows)."""
    chain_missing = [name for name in CHAIN_FIELDS if name not in entry]
    if chain_missing:
        problems.append(f"{where}: missing fields {chain_missing}")
        return None
    try:
        return read_entry(entry)
    except EntrySchemaError as exc:
        problems.append(f"{where}: {exc}")
        return None


def check_fields(where: str, entry: dict[str, Any], problems: list[str]) -> bool:
    """True when the fields the other checks read are present, of the right type and in range."""
    typed = read_fields(where, entry, problems)
    if not isinstance(typed, RoundEntry):
        if typed is not None:
            problems.append(f"{where}: a trending entry where a training round was expected")
        return False
    ranges = [
        ("sample_rate in (0, 1]", 0 < typed.sample_rate <= 1),
        ("noise_multiplier >= 0", typed.noise_multiplier >= 0),
        ("noise_std >= 0", typed.noise_std >= 0),
        ("clip_norm > 0", typed.clip_norm > 0),
        ("delta in (0, 1)", 0 < typed.delta < 1),
    ]
    out_of_range = [rule for rule, holds in ranges if not holds]
    if out_of_range:
        problems.append(f"{where}: values out of range, need {out_of_range}")
    return not out_of_range


def check_noise(where: str, entry: dict[str, Any], problems: list[str]) -> None:
    """Noise actually applied vs the noise multiplier that was accounted, per privacy mode."""
    mode, z, std, clip = entry["mode"], entry["noise_multiplier"], entry["noise_std"], entry["clip_norm"]
    if entry["sampling"] != "poisson":
        problems.append(f"{where}: sampling {entry['sampling']!r}; the accounting assumes Poisson sampling")
    if mode == "none":
        if z != 0 or std != 0:
            problems.append(f"{where}: mode none must have noise_multiplier 0 and noise_std 0")
    elif mode == "central":
        _check_central_noise(where, entry, z=z, std=std, clip=clip, problems=problems)
    elif mode == "local":
        _check_local_noise(where, entry, z=z, std=std, problems=problems)
    else:
        problems.append(f"{where}: unknown mode {mode!r}")
    _check_divisor(where, entry, problems)


def _check_local_noise(
    where: str, entry: dict[str, Any], *, z: float, std: float, problems: list[str]
) -> None:
    """Mode local: every device adds N(0, (z_local * C)^2) to its own clipped update, the server adds none.
    The accounted z must be the z the devices were told to apply, and the server-side noise fields zero."""
    local = _number(entry.get("local_noise_multiplier"))
    if local is None:
        problems.append(f"{where}: mode local must record local_noise_multiplier (the z the devices applied)")
    elif not close(local, z, NOISE_RTOL):
        problems.append(f"{where}: local_noise_multiplier {local} != the accounted noise_multiplier {z}")
    if std != 0:
        problems.append(f"{where}: mode local adds no noise at the server, but noise_std is {std} (not 0)")
    for name in ("update_noise_multiplier", "count_noise_std"):  # no server noise, no adaptive clipping
        if name in entry and entry[name] != 0:
            problems.append(f"{where}: mode local has no server-side noise, but {name} is {entry[name]!r}")


def _check_divisor(where: str, entry: dict[str, Any], problems: list[str]) -> None:
    """The sum is divided by the fixed expected cohort q*N, never by the realised count."""
    cohort, population = _number(entry.get("expected_cohort")), _number(entry.get("population"))
    if cohort is None or population is None:
        return
    if not close(cohort, entry["sample_rate"] * population, NOISE_RTOL):
        problems.append(f"{where}: expected_cohort {cohort} is not sample_rate * population")


def _check_central_noise(
    where: str, entry: dict[str, Any], *, z: float, std: float, clip: float, problems: list[str]
) -> None:
    z_update = _number(entry.get("update_noise_multiplier", z))
    count_std = _number(entry.get("count_noise_std", 0.0))
    if z_update is None or count_std is None:
        problems.append(f"{where}: update_noise_multiplier / count_noise_std are not numbers")
        return
    bound, name = clip, "clip_norm"
    if "secure_aggregation" in entry:  # the nodes' fixed-point sums: each user moves one by up to C'
        bound, name = secure_sensitivity(where, entry, clip, problems), "sensitivity"
    if not close(std, z_update * bound, NOISE_RTOL):
        problems.append(f"{where}: noise_std {std} != update_noise_multiplier {z_update} * {name} {bound}")
    if z > implied_noise_multiplier(z_update, count_std) * (1 + NOISE_RTOL):
        problems.append(f"{where}: accounted noise_multiplier {z} exceeds what the applied noise supports")


def secure_sensitivity(where: str, entry: dict[str, Any], clip: float, problems: list[str]) -> float:
    """C' = C + step * sqrt(dim) of a securely aggregated round (C: the clip norm, or a trending release's
    sensitivity 1), recomputed from its logged step and dim; problems when the logged C' differs."""
    secure = entry["secure_aggregation"]
    step = _number(secure.get("quantisation_step")) if isinstance(secure, dict) else None
    dim = _number(secure.get("dim")) if isinstance(secure, dict) else None
    if step is None or dim is None or not (step > 0 and dim >= 1):
        problems.append(f"{where}: secure_aggregation lacks a positive quantisation_step and dim")
        return clip
    expected = clip + step * math.sqrt(dim)
    if not close(_number(secure.get("sensitivity")) or 0.0, expected, NOISE_RTOL):
        problems.append(f"{where}: secure_aggregation sensitivity is not the bound + step * sqrt(dim)")
    return expected


def implied_noise_multiplier(z_update: float, count_noise_std: float) -> float:
    """The z that the update noise and the count noise of adaptive clipping jointly support.

    Andrew et al. 2021 (as in TF Privacy): the unclipped count is a sum of (b_i - 1/2), sensitivity 1/2, so
    its noise multiplier is 2 * count_noise_std and 1/z^2 = 1/z_update^2 + 1/(2 * count_noise_std)^2.
    """
    if z_update <= 0:
        return 0.0
    if count_noise_std <= 0:
        return float(z_update)
    return float((z_update**-2 + (2 * count_noise_std) ** -2) ** -0.5)


def epsilon_value(value: Any) -> float | None:
    """A claimed epsilon: a finite number, or the string "inf"; None for anything else."""
    return math.inf if value == "inf" else _number(value)


def understated(claimed: float, recomputed: float, rtol: float) -> bool:
    """A claimed epsilon below the recomputed one by more than rtol (relative): the claim does not hold."""
    if math.isinf(recomputed):
        return not math.isinf(claimed)
    return claimed < recomputed * (1 - rtol) - 1e-12


def overstated(claimed: float, recomputed: float, rtol: float) -> bool:
    """A claimed epsilon above the recomputed one by more than rtol: conservative, so it holds."""
    if math.isinf(claimed):
        return not math.isinf(recomputed)
    return claimed > recomputed * (1 + rtol) + 1e-12


def close(a: float, b: float, rtol: float) -> bool:
    """|a - b| within rtol of the larger magnitude (infinities only equal themselves)."""
    if math.isinf(a) or math.isinf(b):
        return a == b
    return abs(a - b) <= rtol * max(abs(a), abs(b)) + 1e-12


def _number(value: Any) -> float | None:
    """A finite JSON number as a float, else None (booleans, strings, and integers beyond float range)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None
