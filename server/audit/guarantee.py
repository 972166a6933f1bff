"""The report's guarantee in words: unit, neighbouring relation, setting, secure aggregation, what is
released, (epsilon, delta) and why delta, caps and record-level DP; and what the guarantee does not cover.

One epsilon is the headline (`headline_epsilon`): the user-level epsilon of everything the ledger released,
model rounds, trending releases and start checks composed together (the auditor's PLD, zero-out
neighbours). Every other epsilon the report shows is in `other_epsilons`, each with a label saying what it
is: the ledger's own claim,
the RDP cross-check, the replace-one epsilon, the epsilon against the server under secure aggregation (no
amplification by sampling), the cap bounds, a release's model epsilon at its round, record-level and local.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import dp_accounting
from dp_accounting.pld import privacy_loss_distribution as pld_lib

from server.audit.accountant import VALUE_DISCRETIZATION_INTERVAL
from server.audit.cap_check import report_section
from server.audit.verify import LedgerVerification
from server.ledger_entries import (
    is_popularity_release,
    is_start_check,
    is_training_round,
    is_trending,
    is_trending_release,
)

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

NEIGHBOURING_RELATION = (
    "zero-out (add or remove one user's data, all of it, in every round, with the population count N fixed "
    "and published): the absent user still counts in N and contributes nothing. A neighbour that replaces "
    "one user's data by another's is at most two zero-out steps; its epsilon is reported beside the "
    "headline (replace_one)"
)
# Exact values the ledger publishes per round or release, not noised and not covered by epsilon; beyond the
# realised cohort (in NOT_COVERED): field -> what it says
EXACT_FIELDS = {
    "refused_users": "how many sampled devices refused to train (participation cap reached)",
    "rejected_updates": "how many users' updates (or trending contributions) the server rejected",
    "aggregated_users": "how many users' updates went into the sum",
    "rejected_nodes": "how many nodes' replies the server rejected in a round",
    "rejection_reasons": "the rejected replies of a round counted by reason (non-finite, wrong shape, ...)",
    "secure_aggregation": "secure aggregation's counts of participating, masked and dropped nodes",
    "time_utc": "the wall-clock time of each round and release",
}
_RELATION = dp_accounting.NeighboringRelation


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
        "neighbouring_relation": NEIGHBOURING_RELATION,
        "setting": [_setting(mode) for mode in modes],
        "secure_aggregation": _secure_aggregation_words([e for e in entries if is_training_round(e)]),
        "released": "the model after every round (each entry binds model_sha256_after); the epsilon covers "
        "the whole sequence, so releasing only the final model is covered too (post-processing)"
        + (
            "; and the DP trending counts of every trending release (each entry binds counts_sha256)"
            if any(is_trending_release(e) for e in entries)
            else ""
        )
        + (
            "; and the DP counts of the popularity prior's release before round 1 (its entry binds "
            "counts_sha256; the prior log(1 + count) is in every later model)"
            if any(is_popularity_release(e) for e in entries)
            else ""
        )
        + (
            "; and the start check's noised gain sum and decision (the trained model or its public start, "
            "each entry binds both sha256 and the shipped one)"
            if any(is_start_check(e) for e in entries)
            else ""
        ),
        "rounds": len([e for e in entries if is_training_round(e)]),
        "trending_releases": len([e for e in entries if is_trending_release(e)]),
        "popularity_releases": len([e for e in entries if is_popularity_release(e)]),
        "start_checks": len([e for e in entries if is_start_check(e)]),
        "delta": delta,
        "delta_reason": (
            f"delta = N^-1.1 with N = {population} users: below 1/N, so a mechanism that simply published "
            "one random user's data could not meet it"
            if population
            else "no population recorded"
        ),
        "delta_times_n": delta * population if delta is not None and population else None,
        "headline_epsilon": headline_epsilon(entries, verification),
        "other_epsilons": other_epsilons(entries, verification),
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


def headline_epsilon(entries: Sequence[dict[str, Any]], verification: LedgerVerification) -> dict[str, Any]:
    """The one epsilon the report leads with: user-level, of every model round, trending release and start
    check."""
    rounds = len([e for e in entries if is_training_round(e)])
    releases = len([e for e in entries if is_trending_release(e)])
    checks = len([e for e in entries if is_start_check(e)])
    priors = len([e for e in entries if is_popularity_release(e)])
    also = f", {checks} start check(s)" if checks else ""
    also += f", {priors} popularity prior count release(s)" if priors else ""
    return {
        "epsilon": safe_number(verification.recomputed_epsilon),
        "delta": verification.delta,
        "label": (
            f"user-level epsilon of everything released: {rounds} model round(s){also} and {releases} "
            "trending release(s) composed together (PLD, recomputed by this auditor from the signed ledger; "
            "zero-out neighbours, against anyone who sees the releases)"
        ),
    }


def other_epsilons(
    entries: Sequence[dict[str, Any]], verification: LedgerVerification
) -> list[dict[str, Any]]:
    """Every other epsilon, each labelled with what it is (none of them is the headline)."""
    delta = verification.delta
    out = [
        _labelled(
            "claimed_pld",
            verification.claimed_epsilon,
            "the ledger's own claim after its last entry (the training server's PLD accountant); the "
            "headline is the auditor's recomputation of it",
        ),
        _labelled(
            "rdp_cross_check",
            verification.recomputed_rdp_epsilon,
            "RDP cross-check of the same releases (a looser bound than PLD, not the guarantee)",
        ),
    ]
    mechanism = _mechanism_rounds(entries)
    if delta is not None and mechanism:
        out.append(
            _labelled(
                "replace_one",
                pld_epsilon(mechanism, delta=delta, relation=_RELATION.REPLACE_ONE),
                "user-level epsilon of everything released for replace-one neighbours (one user's data "
                "replaced by another's, N unchanged; PLD, Poisson-subsampled Gaussian, dp_accounting "
                "REPLACE_ONE)",
            )
        )
        out.append(_against_server(entries, delta))
    cap = verification.participation_cap
    if cap is not None:
        out.append(
            _labelled(
                "cap_poisson_bound",
                verification.recomputed_poisson_epsilon,
                f"participation cap k = {cap}: the Poisson-sampling bound over all rounds",
            )
        )
        out.append(
            _labelled(
                "cap_bound",
                verification.recomputed_cap_epsilon,
                f"participation cap k = {cap}: the cap bound (k Gaussian rounds without amplification per "
                "start of the run)",
            )
        )
    record = [e for e in entries if "record_epsilon" in e]
    if record:
        out.append(
            _labelled(
                "record_level",
                _number(record[-1].get("record_epsilon")),
                f"record-level DP-SGD on the devices, at delta {record[-1].get('record_delta')}: per "
                "training example, not per user, and no substitute for the headline",
            )
        )
    local = verification.local_dp
    if local:
        every = local["every_round"]
        out.append(
            _labelled(
                "local_add_remove",
                _number(every.get("epsilon_add_remove")),
                f"local DP, a device's reports in all {every['rounds']} local rounds, without amplification "
                "(against anyone who sees the reports, the server included), add/remove",
            )
        )
    return out


def pld_epsilon(
    rounds: Sequence[tuple[float, float]], *, delta: float, relation: dp_accounting.NeighboringRelation
) -> float:
    """PLD epsilon at `delta` of these (sample_rate, noise_multiplier) Poisson-subsampled Gaussian rounds
    (sensitivity 1: each user's contribution has L2 norm at most 1 after scaling by C) under `relation`."""
    if not rounds:
        return 0.0
    if any(z <= 0 for _, z in rounds):
        return math.inf
    total: pld_lib.PrivacyLossDistribution | None = None
    counts: dict[tuple[float, float], int] = {}
    for item in rounds:
        counts[item] = counts.get(item, 0) + 1
    for (q, z), count in counts.items():
        one = pld_lib.from_gaussian_mechanism(
            standard_deviation=z,
            sensitivity=1.0,
            sampling_prob=q,
            value_discretization_interval=VALUE_DISCRETIZATION_INTERVAL,
            neighboring_relation=relation,
        )
        many = one.self_compose(count) if count > 1 else one
        total = many if total is None else total.compose(many)
    assert total is not None
    return float(total.get_epsilon_for_delta(delta))


def _against_server(entries: Sequence[dict[str, Any]], delta: float) -> dict[str, Any]:
    """Epsilon against the server under secure aggregation: the server chooses the sample and adds its own
    top-up, so only the nodes' noise protects a user from it and there is no amplification by sampling:
    q = 1 and z = the nodes' std / C' in each securely aggregated round (rounds that summed nothing cost
    nothing)."""
    secure = [e for e in entries if isinstance(e.get("secure_aggregation"), dict)]
    name = "against_server"
    if not secure:
        return _labelled(
            name,
            None,
            "against the server: no secure aggregation in this run, so the server sees each node's sum in "
            "the clear and is trusted (no epsilon holds against it; see not covered)",
        )
    clear = len(entries) - len(secure)
    rounds = []
    for entry in secure:
        record = entry["secure_aggregation"]
        if record.get("failed"):
            continue
        sensitivity, std = record.get("sensitivity"), record.get("distributed_noise_std")
        if not _positive_number(sensitivity) or not isinstance(std, int | float):
            return _labelled(name, None, "against the server: the secure aggregation record is incomplete")
        rounds.append((1.0, float(std) / float(sensitivity)))
    value = pld_epsilon(rounds, delta=delta, relation=_RELATION.ADD_OR_REMOVE_ONE)
    label = (
        f"against the server, under secure aggregation: q = 1 in the {len(rounds)} securely aggregated "
        "round(s) and release(s) that summed something (the server knows the sample and its own top-up, so "
        "there is no amplification by sampling), noise = the nodes' std / C'"
    )
    if clear:
        value, label = (
            math.inf,
            label
            + (
                f"; {clear} entr{'y' if clear == 1 else 'ies'} without secure aggregation reached the server "
                "in the clear, so against the server no finite epsilon holds"
            ),
        )
    return _labelled(name, value, label)


def not_covered(entries: Sequence[dict[str, Any]]) -> list[str]:
    """NOT_COVERED and the exact values this ledger publishes (not noised, so not covered by epsilon)."""
    items = list(NOT_COVERED)
    present = [field for field in EXACT_FIELDS if any(field in e for e in entries)]
    for field in present:
        values = [
            e[field] for e in entries if isinstance(e.get(field), int) and not isinstance(e[field], bool)
        ]
        total = f" (in all {sum(values)})" if values and field != "time_utc" else ""
        items.append(
            f"`{field}` of each entry, published exactly: {EXACT_FIELDS[field]}{total}. It is not noised "
            "and not covered by epsilon."
        )
    for entry in entries:
        if is_trending(entry) and "as_of_s" in entry:
            source = entry.get("as_of_source", "not recorded")
            release = (
                "The popularity prior's count release before round 1"
                if is_popularity_release(entry)
                else f"The trending release after round {entry.get('after_round')}"
            )
            items.append(
                f"{release}: its window end as_of_s = "
                f"{entry['as_of_s']} (source: {source}), published exactly. It is covered only when it is "
                "public (configured, or the release's own time); one derived from users' data (a replay's "
                "last timestamp) moves every user's window and is not covered."
            )
    return items


def _mechanism_rounds(entries: Sequence[dict[str, Any]]) -> list[tuple[float, float]]:
    rounds = []
    for entry in entries:
        q, z = entry.get("sample_rate"), entry.get("noise_multiplier")
        if not isinstance(q, int | float) or not isinstance(z, int | float) or not _positive_number(q):
            return []
        rounds.append((float(q), float(z)))
    return rounds


def _labelled(name: str, value: float | None, label: str) -> dict[str, Any]:
    return {"name": name, "epsilon": safe_number(value), "label": label}


def _number(value: Any) -> float | None:
    if value == "inf":
        return math.inf
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _positive_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def _setting(mode: str) -> str:
    return {
        "central": "central DP: devices clip their update, the server adds Gaussian noise to the sum",
        "local": "local DP: each device adds Gaussian noise to its own clipped update before sending it",
        "none": "no differential privacy: updates are clipped but not noised (epsilon is infinite)",
    }.get(mode, f"unknown mode {mode!r}")


def safe_number(value: float | None) -> float | str | None:
    return "inf" if isinstance(value, float) and math.isinf(value) else value
