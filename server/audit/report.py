"""The auditor's privacy report of a run (`fedhome-audit report`): what the guarantee is, whether it holds.

Built from the signed ledger and the public key only, so it works on a copy of the run folder on any
machine: every statement about the guarantee comes from verified ledger entries (server/audit/verify.py)
and the auditor's own recomputation. Files in the run folder that are not signed (a canary audit's
canary_audit.json) are shown as such and never change the verdict of the ledger checks.

The content is one JSON-safe dict (`build_report`); server/audit/report_html.py renders the same dict as a
self-contained HTML page, so the two can never disagree.
"""

from __future__ import annotations

import json
import math
import re
from importlib import metadata
from pathlib import Path
from typing import Any

from server.audit.cap_check import report_section
from server.audit.trending_checks import is_trending
from server.audit.verify import LedgerVerification, verify_ledger
from shared.errors import DataError, FedhomeError
from shared.release_manifest import verify_release
from shared.signing import Ed25519PublicKey

REPORT_VERSION = 1
COHORT_SIGMAS = 5.0  # realised cohorts further than this from q*N*T (in binomial sds) are a mismatch
_ROUND_PROBLEM = re.compile(r"^round (\d+) \(line \d+\): ")

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
    return {
        "report_version": REPORT_VERSION,
        "run_id": last.get("run_id"),
        "verification": _verification(verification, entries),
        "guarantee": _guarantee(entries, verification),
        "accountants": _accountants(last),
        "rounds": [_round_row(entry) for entry in entries if not is_trending(entry)],
        "trending": verification.trending,  # DP trending releases, accounted in the same epsilon
        "mismatches": mismatches(entries),
        "not_covered": NOT_COVERED,
        "empirical_audit": _canary_audit(folder),
        "release": release_binding(release, entries, public_key),
        "tools": {"fedhome-audit": _version("fedhome"), "dp-accounting": _version("dp-accounting")},
    }


def release_binding(
    release: Path | None, entries: list[dict[str, Any]], public_key: Ed25519PublicKey
) -> dict[str, Any]:
    """Does the release verify, and does its manifest name an entry of this ledger with the same epsilon?"""
    if release is None:
        return {"manifest": None, "note": "no release was given; the ledger head is reported above"}
    problems: list[str] = []
    try:
        manifest = verify_release(release, public_key)
    except FedhomeError as exc:
        return {"manifest": None, "ok": False, "problems": [f"the release does not verify: {exc}"]}
    privacy = manifest.get("privacy", {})
    head, rounds = privacy.get("ledger_head"), privacy.get("ledger_entries")
    bound = [e for e in entries if e.get("entry_hash") == head]
    if not bound:
        problems.append(f"the release's ledger head {head} is not an entry of this ledger")
    elif bound[0].get("round") != rounds:
        problems.append(f"the release says round {rounds}; its ledger head is round {bound[0].get('round')}")
    elif bound[0].get("user_epsilon", {}).get("pld") != privacy.get("epsilon"):
        problems.append("the release's epsilon differs from the ledger's at its round")
    elif bound[0].get("model_sha256_after") != manifest.get("model", {}).get("sha256"):
        problems.append("the release's model is not the model the ledger records after its round")
    problems.extend(_trending_binding(manifest, entries))
    return {
        "manifest": {k: manifest.get(k) for k in ("version", "created_utc", "run_id", "model", "privacy")},
        "ok": not problems,
        "problems": problems,
        "bound_round": bound[0].get("round") if bound else None,
    }


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
        "entry_results": [
            {"round": r, "ok": r not in by_round, "problems": by_round.get(r, [])} for r in rounds
        ],
        "claimed_epsilon": _safe(report.claimed_epsilon),
        "recomputed_epsilon": _safe(report.recomputed_epsilon),
        "recomputed_rdp_epsilon": _safe(report.recomputed_rdp_epsilon),
        "epsilon_by_round": [
            {
                "round": c.round,
                "claimed_pld": _safe(c.claimed_pld),
                "recomputed_pld": _safe(c.recomputed_pld),
                "claimed_rdp": _safe(c.claimed_rdp),
            }
            for c in report.epsilons
        ],
    }


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


def _guarantee(entries: list[dict[str, Any]], verification: LedgerVerification) -> dict[str, Any]:
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
            "claimed_pld": _safe(verification.claimed_epsilon),
            "recomputed_pld": _safe(verification.recomputed_epsilon),
            "recomputed_rdp": _safe(verification.recomputed_rdp_epsilon),
        },
        "participation_cap": report_section(
            verification.participation_cap,
            poisson=verification.recomputed_poisson_epsilon,
            cap=verification.recomputed_cap_epsilon,
        ),
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
    return row


def mismatches(entries: list[dict[str, Any]]) -> list[str]:
    """Differences between what the accountants assume and what the ledger says ran."""
    found = []
    if not entries:
        return ["the ledger has no rounds"]
    if any(e.get("sampling") != "poisson" for e in entries):
        found.append(
            "a round was not Poisson-sampled: the accountants' amplification by sampling does not apply"
        )
    if any(e.get("mode") == "none" for e in entries):
        found.append("a round ran without noise: no finite epsilon holds")
    for e in entries:
        values = (e.get("sample_rate"), e.get("population"), e.get("divisor", e.get("expected_cohort")))
        if not _numbers(*values):
            continue
        q, n, divisor = (float(v) for v in values if v is not None)
        if not math.isclose(divisor, q * n, rel_tol=1e-9):
            found.append(f"round {e.get('round')}: divided by {divisor}, not q*N = {q * n:.6g}")
    populations = {e.get("population") for e in entries}
    if len(populations) > 1:
        found.append(
            f"the population changed during the run ({sorted(map(str, populations))}): "
            "delta and q refer to different user sets"
        )
    cohort = cohort_check(entries)
    if cohort is not None and abs(cohort) > COHORT_SIGMAS:
        found.append(
            f"realised cohorts are {cohort:+.1f} binomial standard deviations from q*N per round: they do "
            "not look like Poisson sampling with the recorded rate"
        )
    return found


def cohort_check(entries: list[dict[str, Any]]) -> float | None:
    """(sum of realised cohorts - sum of q*N) / its binomial sd under the recorded q and N (None: no data)."""
    rows = [
        (float(e["sample_rate"]), float(e["population"]), float(e["realised_cohort"]))
        for e in entries
        if _numbers(e.get("sample_rate"), e.get("population"), e.get("realised_cohort"))
    ]
    if not rows:
        return None
    expected = sum(q * n for q, n, _ in rows)
    variance = sum(q * (1 - q) * n for q, n, _ in rows)
    observed = sum(c for _, _, c in rows)
    return 0.0 if variance == 0 else (observed - expected) / math.sqrt(variance)


def _canary_audit(folder: Path) -> dict[str, Any] | None:
    path = folder / "canary_audit.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not valid JSON: {exc}") from exc
    return {"source": f"{path.name} (not signed: the run's own canary audit, shown for information)", **data}


def _numbers(*values: Any) -> bool:
    return all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values)


def _safe(value: float | None) -> float | str | None:
    return "inf" if isinstance(value, float) and math.isinf(value) else value


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"
