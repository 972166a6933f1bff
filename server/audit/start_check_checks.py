"""Checks of a start-check ledger entry (kind "start_check"): fields, noise, decision and the models it names.

The mechanism the entry must describe (server/rounds/start_check.py, re-derived here rather than imported):
Poisson sampling with rate q_s, per-user NDCG@10 gains clamped to [-1, 1] (sensitivity 1), Gaussian noise of
std z_s * 1 on their sum (none in mode "none"); the decision "trained" exactly when the noised sum exceeds
margin * noise_std, else "start"; the shipped model's sha256 the one the decision names; the trained model the
one the ledger records after the round the check follows, and the start the one before round 1. Like
server/audit/entry_checks.py, these checks append plain-language problems and never raise on malformed input.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from server.audit.entry_checks import NOISE_RTOL, close, read_fields
from server.ledger_entries import StartCheckEntry


def check_start_check_fields(where: str, entry: dict[str, Any], problems: list[str]) -> bool:
    """True when the fields the other checks read are present, well-typed and in range."""
    typed = read_fields(where, entry, problems)
    if not isinstance(typed, StartCheckEntry):
        return False
    ranges = [
        ("sample_rate in (0, 1]", 0 < typed.sample_rate <= 1),
        ("noise_multiplier >= 0", typed.noise_multiplier >= 0),
        ("noise_std >= 0", typed.noise_std >= 0),
        ("margin >= 0", typed.margin >= 0),
        ("delta in (0, 1)", 0 < typed.delta < 1),
    ]
    out_of_range = [rule for rule, holds in ranges if not holds]
    if out_of_range:
        problems.append(f"{where}: values out of range, need {out_of_range}")
    return not out_of_range


def check_start_check(
    where: str,
    entry: dict[str, Any],
    *,
    last_round: Mapping[str, Any] | None,
    first_round: Mapping[str, Any] | None,
    problems: list[str],
) -> None:
    """The mechanism (sampling, sensitivity, noise per mode, expected cohort q*N), the decision
    against the noised sum, and the three model hashes against each other and the training rounds."""
    z, std, mode = float(entry["noise_multiplier"]), float(entry["noise_std"]), entry["mode"]
    if entry["sampling"] != "poisson":
        problems.append(f"{where}: sampling {entry['sampling']!r}; the accounting assumes Poisson sampling")
    if float(entry["sensitivity"]) != 1.0:
        problems.append(f"{where}: sensitivity {entry['sensitivity']} (the accounting assumes 1)")
    if mode == "none":
        if z != 0 or std != 0:
            problems.append(f"{where}: mode none must have noise_multiplier 0 and noise_std 0")
    elif mode != "central":
        problems.append(f"{where}: unknown mode {mode!r} for a start check")
    elif not close(std, z * float(entry["sensitivity"]), NOISE_RTOL):
        problems.append(f"{where}: noise_std {std} != noise_multiplier {z} * sensitivity 1")
    expected_cohort, q, population = entry["expected_cohort"], entry["sample_rate"], entry["population"]
    if not close(float(expected_cohort), float(q) * int(population), NOISE_RTOL):
        problems.append(f"{where}: expected_cohort {expected_cohort} is not sample_rate * population")
    _check_decision(where, entry, problems)
    _check_models(where, entry, last_round=last_round, first_round=first_round, problems=problems)


def _check_decision(where: str, entry: dict[str, Any], problems: list[str]) -> None:
    threshold = float(entry["margin"]) * float(entry["noise_std"])
    expected = "trained" if float(entry["noised_gain_sum"]) > threshold else "start"
    if entry["decision"] != expected:
        problems.append(
            f"{where}: decision {entry['decision']!r}, but a noised gain sum of {entry['noised_gain_sum']} "
            f"against margin * noise_std = {threshold:.6g} decides {expected!r}"
        )
    shipped = entry["model_sha256_trained"] if entry["decision"] == "trained" else entry["model_sha256_start"]
    if entry["model_sha256_shipped"] != shipped:
        problems.append(
            f"{where}: model_sha256_shipped is not the {entry['decision']} model's sha256 the decision names"
        )


def _check_models(
    where: str,
    entry: dict[str, Any],
    *,
    last_round: Mapping[str, Any] | None,
    first_round: Mapping[str, Any] | None,
    problems: list[str],
) -> None:
    """The trained model is the one after the round the check follows; the start the one before round 1
    (when those entries record their models)."""
    trained = None if last_round is None else last_round.get("model_sha256_after")
    if trained is not None and entry["model_sha256_trained"] != trained:
        problems.append(
            f"{where}: model_sha256_trained is not the model the ledger records after round "
            f"{last_round.get('round') if last_round is not None else '?'}"
        )
    start = first_round.get("model_sha256_before") if first_round and first_round.get("round") == 1 else None
    if start is not None and entry["model_sha256_start"] != start:
        problems.append(f"{where}: model_sha256_start is not the model the ledger records before round 1")
