"""The auditor's privacy report of a run (`fedhome-audit report`): what the guarantee is, whether it holds.

Built from the signed ledger and the public key only, so it works on a copy of the run folder on any
machine: every statement about the guarantee comes from verified ledger entries (server/audit/verify.py)
and the auditor's own recomputation. Files in the run folder that are not signed (a canary audit's
canary_audit.json) are shown as such and never change the verdict of the ledger checks.

The content is one JSON-safe dict (`build_report`); server/audit/report_html.py renders the same dict as a
self-contained HTML page, so the two can never disagree. The guarantee in words is server/audit/guarantee.py,
the mismatches between what ran and what the accountants assume server/audit/mismatches.py (with the
groups of rounds whose realised cohorts fail verify's dispersion check, server/audit/cohorts.py).

Notes are what passes but must be said: a claim above the recomputed epsilon (conservative), a dispersion
check too short to decide, and a ledger head that nothing pins (neither --expect-head nor a release bound to
this ledger), in which case entries cut off the end of the ledger cannot be detected.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from server.audit.cohorts import dispersion_mismatches
from server.audit.guarantee import guarantee, not_covered, safe_number
from server.audit.mismatches import mismatches
from server.audit.verify import TRUNCATION_NOTE, LedgerVerification, verify_ledger
from server.ledger_entries import is_start_check, is_training_round, is_trending, popularity_release_entry
from shared.errors import DataError, FedhomeError
from shared.release_manifest import popularity_prior_sha256, verify_release
from shared.signing import Ed25519PublicKey

REPORT_VERSION = 1
_ROUND_PROBLEM = re.compile(r"^round (\d+) \(line \d+\): ")


def build_report(
    run: Path,
    public_key: Ed25519PublicKey,
    *,
    expected_head: str | None = None,
    release: Path | None = None,
) -> dict[str, Any]:
    """The report of the run folder (or ledger file) `run`, verified with `public_key`; with `release` (a
    release folder) also whether that release verifies and is bound to an entry of this ledger."""
    run = Path(run)
    verification = verify_ledger(run, public_key, expected_head=expected_head)
    entries = _entries(run)
    last = entries[-1] if entries else {}
    folder = run if run.is_dir() else run.parent
    binding = release_binding(release, entries, public_key, folder=folder)
    if binding.get("ok") and TRUNCATION_NOTE in verification.notes:  # the release pins its ledger head
        verification.notes.remove(TRUNCATION_NOTE)
        verification.notes.append(
            f"the ledger head is pinned by the release up to round {binding['bound_round']}: entries after "
            "it cut off the end of the ledger cannot be detected (pin the head with --expect-head)"
        )
    stated = guarantee(entries, verification)
    stated["other_epsilons"].extend(_release_epsilons(binding))
    return {
        "report_version": REPORT_VERSION,
        "run_id": last.get("run_id"),
        "verification": _verification(verification, entries),
        "guarantee": stated,
        "accountants": _accountants(last),
        "rounds": [_round_row(entry) for entry in entries if is_training_round(entry)],
        "trending": _trending_rows(verification.trending, entries),  # accounted in the same epsilon
        "start_check": _start_check_rows(verification),  # accounted in the same epsilon
        "mismatches": mismatches(entries) + dispersion_mismatches(verification.cohort_dispersion),
        "not_covered": not_covered(entries),
        "empirical_audit": _canary_audit(folder),
        "release": binding,
        "tools": {"fedhome-audit": _version("fedhome"), "dp-accounting": _version("dp-accounting")},
    }


def release_binding(
    release: Path | None,
    entries: list[dict[str, Any]],
    public_key: Ed25519PublicKey,
    *,
    folder: Path | None = None,
) -> dict[str, Any]:
    """Does the release verify, and does its manifest name an entry of this ledger with the same epsilon?
    `folder`: the run folder (where the popularity prior's counts file may be)."""
    if release is None:
        return {"manifest": None, "note": "no release was given; the ledger head is reported above"}
    problems: list[str] = []
    try:
        manifest = verify_release(release, public_key)
    except FedhomeError as exc:
        return {"manifest": None, "ok": False, "problems": [f"the release does not verify: {exc}"]}
    privacy = manifest.get("privacy", {})
    head, rounds = privacy.get("ledger_head"), privacy.get("ledger_entries")
    models = [e for e in entries if is_training_round(e) or is_start_check(e)]  # what a release binds to
    bound = [e for e in models if e.get("entry_hash") == head]
    round_of, model = _bound_round(bound[0]) if bound else (None, None)
    if not bound:
        problems.append(f"the release's ledger head {head} is not a round or start check of this ledger")
    elif round_of != rounds:
        problems.append(f"the release says round {rounds}; its ledger head is round {round_of}")
    elif bound[0].get("user_epsilon", {}).get("pld") != privacy.get("epsilon"):
        problems.append("the release's epsilon differs from the ledger's at its round")
    elif model != manifest.get("model", {}).get("sha256"):
        problems.append(
            "the release's model is not the model the ledger records after its round (or, bound to a start "
            "check, the model that check shipped)"
        )
    problems.extend(_trending_binding(manifest, entries))
    problems.extend(_popularity_binding(manifest, entries, folder))
    return {
        "manifest": {k: manifest.get(k) for k in ("version", "created_utc", "run_id", "model", "privacy")},
        "ok": not problems,
        "problems": problems,
        "bound_round": round_of,
        "bound_kind": None if not bound else bound[0].get("kind", "training_round"),
    }


def _bound_round(entry: dict[str, Any]) -> tuple[Any, Any]:
    """(round, model sha256) a release bound to `entry` must state: a training round's own and the model
    after it, or for a start check the round it follows and the model it shipped (the trained one, or the
    start when training lost)."""
    if is_start_check(entry):
        return entry.get("after_round"), entry.get("model_sha256_shipped")
    return entry.get("round"), entry.get("model_sha256_after")


def _release_epsilons(binding: dict[str, Any]) -> list[dict[str, Any]]:
    """The epsilons a bound release's manifest states, labelled (they are not the headline)."""
    manifest = binding.get("manifest")
    if not binding.get("ok") or not isinstance(manifest, dict):
        return []
    privacy = manifest.get("privacy") or {}
    label = (
        f"the release's model alone, at its round {binding.get('bound_round')} (training rounds up to it; "
        "not the trending releases nor later rounds)"
    )
    if binding.get("bound_kind") == "start_check":
        label = (
            f"the release's model, bound to the start check after round {binding.get('bound_round')} (the "
            "training rounds up to it and the check that chose between the trained model and its start)"
        )
    out = [{"name": "release_model", "epsilon": privacy.get("epsilon"), "label": label}]
    if "epsilon_all" in privacy:
        out.append(
            {
                "name": "release_all",
                "epsilon": privacy["epsilon_all"],
                "label": "the release's epsilon_all: what this release publishes (its model and its "
                "trending counts)",
            }
        )
    return out


def _start_check_rows(report: LedgerVerification) -> list[dict[str, Any]]:
    """verify's start check rows with the auditor's PLD epsilon after each check and the check's own cost
    (that epsilon minus the one of the entry before it: what deciding trained-or-start cost)."""
    after: dict[int, tuple[float, float]] = {}
    previous = 0.0
    for check in report.epsilons:
        if check.kind == "start_check":
            now = check.recomputed_pld
            after[check.round] = (now, math.inf if math.isinf(now) else now - previous)
        previous = check.recomputed_pld
    rows = []
    for row in report.start_checks:
        epsilon, cost = after.get(row["after_round"], (None, None))
        rows.append({**row, "epsilon_after": safe_number(epsilon), "epsilon_cost": safe_number(cost)})
    return rows


def _trending_rows(rows: list[dict[str, Any]], entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """verify's trending rows with each release's window end and where it came from."""
    by_hash = {e.get("entry_hash"): e for e in entries if is_trending(e)}
    out = []
    for row in rows:
        entry = by_hash.get(row.get("entry_hash"), {})
        out.append({**row, "as_of_s": entry.get("as_of_s"), "as_of_source": entry.get("as_of_source")})
    return out


def _trending_binding(manifest: dict[str, Any], entries: list[dict[str, Any]]) -> list[str]:
    """A release's trending counts must come from a trending entry of this ledger, with its epsilon and
    the sha256 that entry signs."""
    block = manifest.get("privacy", {}).get("trending")
    if block is None:
        return []
    bound = [e for e in entries if is_trending(e) and e.get("entry_hash") == block.get("ledger_entry_hash")]
    if not bound:
        return ["the release's trending counts name no trending entry of this ledger"]
    listed = manifest.get("files", {}).get(str(block.get("file")), {})
    if listed.get("sha256") != bound[0].get("counts_sha256"):
        return ["the release's trending counts file is not the one its ledger entry signs"]
    if bound[0].get("user_epsilon", {}).get("pld") != block.get("epsilon"):
        return ["the release's trending epsilon differs from its ledger entry's"]
    privacy = manifest.get("privacy", {})
    larger = _larger_epsilon(privacy.get("epsilon"), block.get("epsilon"))
    if larger is None or privacy.get("epsilon_all") != larger:
        return [
            f"the release's epsilon_all {privacy.get('epsilon_all')!r} is not the larger of its model's and "
            f"its trending counts' epsilon ({larger!r}): it must cover both"
        ]
    return []


def _popularity_binding(
    manifest: dict[str, Any], entries: list[dict[str, Any]], folder: Path | None
) -> list[str]:
    """A release's popularity prior (in its item bias) must come from this ledger's popularity count release:
    the entry its block names, the counts sha256 and epsilon that entry signs, and, when the counts file is
    beside the ledger and matches the entry, the prior log(1 + max(count, 0)) those counts give. A run with
    such a release must name it."""
    block = manifest.get("privacy", {}).get("popularity_prior")
    entry = popularity_release_entry(entries)
    if block is None:
        return [] if entry is None else ["the release does not name the run's popularity prior count release"]
    if entry is None or entry.get("entry_hash") != block.get("ledger_entry_hash"):
        return ["the release's popularity prior names no popularity count release of this ledger"]
    if block.get("counts_sha256") != entry.get("counts_sha256"):
        return ["the release's popularity counts are not the ones its ledger entry signs"]
    if block.get("epsilon") != entry.get("user_epsilon", {}).get("pld"):
        return ["the release's popularity prior epsilon differs from its ledger entry's"]
    counts_file = None if folder is None else folder / str(entry.get("counts_file"))
    if counts_file is None or not counts_file.is_file():
        return []  # a ledger audited without its counts: the prior's sha256 is not recomputed
    if hashlib.sha256(counts_file.read_bytes()).hexdigest() != entry.get("counts_sha256"):
        return []  # verify reports the mismatched counts file
    counts = np.load(counts_file, allow_pickle=False).astype(np.float64)
    prior = np.log1p(np.maximum(counts, 0.0)).astype(np.float32)  # the prior's definition, re-derived
    if popularity_prior_sha256(prior) != block.get("prior_sha256"):
        return ["the release's popularity prior is not log(1 + count) of the counts its ledger entry signs"]
    return []


def _larger_epsilon(*values: Any) -> float | str | None:
    """The larger of epsilons as manifests write them (a number, or "inf"); None when one is neither."""
    numbers = []
    for value in values:
        if value == "inf":
            numbers.append(math.inf)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            numbers.append(float(value))
        else:
            return None
    return "inf" if math.isinf(max(numbers)) else max(numbers)


def _entries(run: Path) -> list[dict[str, Any]]:
    """Every ledger line that parses as a JSON object (the verifier reports on the others)."""
    ledger = run / "ledger.jsonl" if run.is_dir() else run
    entries = []
    for raw in ledger.read_bytes().split(b"\n"):
        try:
            entry = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            continue
        if isinstance(entry, dict):
            entries.append(entry)
    return entries


def _verification(report: LedgerVerification, entries: list[dict[str, Any]]) -> dict[str, Any]:
    by_round: dict[int, list[str]] = {}
    general = []
    for problem in report.problems:
        match = _ROUND_PROBLEM.match(problem)
        if match:
            by_round.setdefault(int(match.group(1)), []).append(problem)
        else:
            general.append(problem)
    rounds = [int(e["round"]) for e in entries if isinstance(e.get("round"), int)]
    return {
        "ok": report.ok,
        "entries": report.entries,
        "key_id": report.key_id,
        "head_hash": report.head_hash,
        "problems": report.problems,
        "general_problems": general,
        "notes": report.notes,
        "head_pinned": report.head_pinned,
        "cohort_dispersion": report.cohort_dispersion,
        "entry_results": [
            {"round": r, "ok": r not in by_round, "problems": by_round.get(r, [])} for r in rounds
        ],
        "claimed_epsilon": safe_number(report.claimed_epsilon),
        "recomputed_epsilon": safe_number(report.recomputed_epsilon),
        "recomputed_rdp_epsilon": safe_number(report.recomputed_rdp_epsilon),
        "target_epsilon": safe_number(report.target_epsilon),
        "planned_rounds": report.planned_rounds,
        "epsilon_by_round": [
            {
                "round": c.round,
                "kind": c.kind,
                "claimed_pld": safe_number(c.claimed_pld),
                "recomputed_pld": safe_number(c.recomputed_pld),
                "claimed_rdp": safe_number(c.claimed_rdp),
            }
            for c in report.epsilons
        ],
    }


def _accountants(entry: dict[str, Any]) -> list[dict[str, Any]]:
    versions = (
        entry.get("accountant_versions", {}) if isinstance(entry.get("accountant_versions"), dict) else {}
    )
    assumptions = (
        "Poisson sampling of each user with rate q, independently each round; each user's whole update "
        "clipped to L2 norm C; Gaussian noise with std z*C per coordinate added to the sum; the sum divided "
        "by the fixed q*N; add/remove-one-user neighbours"
    )
    return [
        {
            "name": "PLD (primary, training server)",
            "library": f"dp-accounting {versions.get('dp-accounting', '?')}",
            "assumptions": assumptions,
        },
        {
            "name": "RDP (cross-check, training server)",
            "library": f"opacus {versions.get('opacus', '?')}",
            "assumptions": assumptions,
        },
        {
            "name": "PLD, round by round (this auditor)",
            "library": f"dp-accounting {_version('dp-accounting')}",
            "assumptions": assumptions + "; recomputed from the signed entries alone",
        },
    ]


def _round_row(entry: dict[str, Any]) -> dict[str, Any]:
    epsilon = entry["user_epsilon"] if isinstance(entry.get("user_epsilon"), dict) else {}
    keys = ("round", "sampling", "sample_rate", "population", "expected_cohort", "realised_cohort")
    more = ("rejected_updates", "clip_norm", "noise_multiplier", "update_noise_multiplier", "noise_std")
    row = {key: entry.get(key) for key in (*keys, *more)}
    row["epsilon_pld"] = epsilon.get("pld")
    row["epsilon_rdp"] = epsilon.get("rdp")
    for key in ("refused_users", "participation_cap", "epsilon_bound"):
        if key in entry:
            row[key] = entry[key]
    secure = entry.get("secure_aggregation")
    if isinstance(secure, dict):  # what the round's secure aggregation summed (docs/federated.md)
        row["secure_aggregation"] = {
            k: secure.get(k) for k in ("participants", "masked_inputs", "dropped", "sensitivity", "failed")
        }
    return row


def _canary_audit(folder: Path) -> dict[str, Any] | None:
    path = folder / "canary_audit.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not valid JSON: {exc}") from exc
    return {"source": f"{path.name} (not signed: the run's own canary audit, shown for information)", **data}


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"
