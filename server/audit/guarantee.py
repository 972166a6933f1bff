"""The report's guarantee in words: unit, neighbouring relation, setting, secure aggregation, what is
released, (epsilon, delta) and why delta, caps and record-level DP; and what the guarantee does not cover."""

from __future__ import annotations

import math
from typing import Any

from server.audit.cap_check import report_section
from server.audit.verify import LedgerVerification
from server.ledger_entries import is_trending

NOT_COVERED = [
    "The item catalogue (titles, categories, prices) and the sentence encoder: both are public inputs, "
    "not users' data, and carry no privacy guarantee of their own.",
    "Hyperparameter tuning and any earlier runs on the same users: only the rounds in this ledger are "
    "accounted; settings chosen by looking at other runs on the same users spend privacy not counted here.",
    "Evaluation figures computed centrally in simulation (validation and test NDCG): they read held-out "
    "interactions directly and are not differentially private.",
    "The realised cohort size of each round, published in the ledger: it is not noised and not covered by "
    "epsilon (it reveals how many sampled users took part, not who).",
    "Who took part in a round, as seen by the server: without secure aggregation the server receives each "
    "node's sum in the clear; the guarantee is against anyone who sees the released models, and trusts the "
    "server to add the noise it records (with secure aggregation, to relay the devices' public keys "
    "faithfully).",
    "A person with several accounts or devices: the unit of privacy is one user account, so k accounts "
    "of one person get a group guarantee that is weaker (roughly k times epsilon).",
    "Side channels: timing, message sizes, and failures of individual devices.",
]


def _secure_aggregation_words(rounds: list[dict[str, Any]]) -> str:
    secure = [e["secure_aggregation"] for e in rounds if isinstance(e.get("secure_aggregation"), dict)]
    if not secure:
        return "not used in this run: each node's sum of clipped updates reaches the server"
    failed = sum(1 for s in secure if s.get("failed"))
    return (
        f"used in {len(secure)} of {len(rounds)} training rounds: the server saw only the sum over each "
        "round's nodes, noised by the nodes in central mode (docs/federated.md); "
        f"{failed} round(s) summed nothing and released the round's noise alone"
    )


def guarantee(entries: list[dict[str, Any]], verification: LedgerVerification) -> dict[str, Any]:
    modes = sorted({str(e.get("mode")) for e in entries})
    populations = sorted({int(e["population"]) for e in entries if isinstance(e.get("population"), int)})
    record = [e for e in entries if "record_epsilon" in e]
    delta = verification.delta
    population = populations[-1] if populations else None
    return {
        "unit_of_privacy": entries[-1].get("unit_of_privacy", "user") if entries else "user",
        "neighbouring_relation": "add or remove one user (all of that user's interactions, in every round)",
        "setting": [_setting(mode) for mode in modes],
        "secure_aggregation": _secure_aggregation_words([e for e in entries if not is_trending(e)]),
        "released": "the model after every round (each entry binds model_sha256_after); the epsilon covers "
        "the whole sequence, so releasing only the final model is covered too (post-processing)"
        + (
            "; and the DP trending counts of every trending release (each entry binds counts_sha256)"
            if any(is_trending(e) for e in entries)
            else ""
        ),
        "rounds": len([e for e in entries if not is_trending(e)]),
        "trending_releases": len([e for e in entries if is_trending(e)]),
        "delta": delta,
        "delta_reason": (
            f"delta = N^-1.1 with N = {population} users: below 1/N, so a mechanism that simply published "
            "one random user's data could not meet it"
            if population
            else "no population recorded"
        ),
        "epsilon": {
            "claimed_pld": safe_number(verification.claimed_epsilon),
            "recomputed_pld": safe_number(verification.recomputed_epsilon),
            "recomputed_rdp": safe_number(verification.recomputed_rdp_epsilon),
        },
        "participation_cap": report_section(
            verification.participation_cap,
            poisson=verification.recomputed_poisson_epsilon,
            cap=verification.recomputed_cap_epsilon,
        ),
        "local_dp": verification.local_dp,  # each local report's own epsilon (server/audit/local_dp.py)
        "record_level": (
            {
                "epsilon": record[-1].get("record_epsilon"),
                "delta": record[-1].get("record_delta"),
                "accountant": record[-1].get("record_accountant"),
                "note": "record-level DP-SGD on the devices: a guarantee for single interactions, separate "
                "from and no substitute for the user-level one",
            }
            if record
            else None
        ),
    }


def _setting(mode: str) -> str:
    return {
        "central": "central DP: devices clip their update, the server adds Gaussian noise to the sum",
        "local": "local DP: each device adds Gaussian noise to its own clipped update before sending it",
        "none": "no differential privacy: updates are clipped but not noised (epsilon is infinite)",
    }.get(mode, f"unknown mode {mode!r}")


def safe_number(value: float | None) -> float | str | None:
    return "inf" if isinstance(value, float) and math.isinf(value) else value
