"""Independent verification of a privacy ledger: signatures, hash chain, rounds, noise, recomputed epsilon.

Needs only the ledger file and the public key, so it runs on a copy of the run folder on any machine. The
entry format (what is signed and hashed) is re-derived here from its definition in server/ledger.py's
docstring rather than imported from the writer; the epsilon comes from server/audit/accountant.py.

Tolerances. A claimed PLD epsilon must not be below the recomputed one by more than 1e-3 relative (one
sided): the writer and the auditor compute the same PLD with the same library but compose differently
(grouped FFT self-composition vs round by round), and pessimistic discretisation and tail truncation make
such valid computations differ by up to a few 1e-4 relative; a real understatement (another noise
multiplier, sample rate or round count) moves epsilon by more (a 101st round at q=0.05, z=1 adds 0.4%; z
0.1% lower, 0.2%). A claim above the recomputed epsilon is conservative, so it holds: it passes, with a note
saying by how much. The applied noise std is exact arithmetic on logged floats, so it must match within 1e-9
relative.

Mechanism checks beyond single entries: the realised cohorts of rounds with the same q and N must disperse
like Binomial(N, q) draws (server/audit/cohorts.py; a fixed-size cohort fails); local-mode entries must
record the devices' z equal to the accounted one and no server noise (server/audit/entry_checks.py), and
each report's own epsilon, without amplification, is computed (server/audit/local_dp.py).

Trending releases (kind "trending_counts", server/audit/trending_checks.py) sit in the same chain without
a "round" of their own ("after_round" must be the last round before them); their Poisson-subsampled
Gaussian is composed into the recomputed epsilon like a training round, and their counts file, when it is
beside the ledger, must match the sha256 the entry signs; a counts file in trending/ that no entry names
was never accounted and fails the ledger. Ledgers without such entries verify as before. The popularity
prior's count release is such an entry too ("purpose": "popularity_prior"), checked the same way; it must
come before the first round (after_round 0).

The start check (kind "start_check", server/audit/start_check_checks.py) likewise follows the last round
without a round of its own; its Poisson-subsampled Gaussian sum is composed into the recomputed epsilon, its
noise must be z_s times sensitivity 1, its decision must follow from its noised sum and margin, the model it
says it shipped must be the trained or the start one as decided, the trained one the model after the round it
follows and the start one the model before round 1.

Not detectable from the ledger alone: entries cut off at the END (the chain is still intact). Pin the head
hash from a signed release manifest with `expected_head` to catch that; without it the verification carries
a note (TRUNCATION_NOTE) saying so.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from server.audit.accountant import RoundByRoundPLD, rdp_epsilon
from server.audit.cap_check import CapCheck
from server.audit.cohorts import cohort_dispersion
from server.audit.entry_checks import check_fields, check_noise, epsilon_value, overstated, understated
from server.audit.local_dp import local_dp_section
from server.audit.start_check_checks import check_start_check, check_start_check_fields
from server.audit.trending_checks import (
    check_counts_file,
    check_trending_fields,
    check_trending_noise,
    check_unsigned_counts,
)
from server.ledger_entries import (
    NON_TRAINING_KINDS,
    is_start_check,
    is_training_round,
    is_trending,
    release_purpose,
)
from shared.errors import ConfigError, DataError, SignatureError
from shared.signing import Ed25519PublicKey, canonical_json, key_id, verify

GENESIS_HASH = "0" * 64
EPSILON_RTOL = 1e-3
TRUNCATION_NOTE = (
    "no expected head hash was given (--expect-head, or a release's ledger head): entries cut off the end "
    "of the ledger cannot be detected, since what remains is still an intact chain"
)


@dataclass
class EpsilonCheck:
    """Claimed vs recomputed user-level epsilon after one round (at the ledger's delta)."""

    round: int  # the training round, or the round a trending release or the start check follows
    claimed_pld: float
    recomputed_pld: float
    claimed_rdp: float
    kind: str = "training_round"  # or "trending_counts", "start_check"


@dataclass
class LedgerVerification:
    """The outcome: ok only when there is no problem at all."""

    ok: bool
    entries: int
    problems: list[str]
    key_id: str
    head_hash: str = GENESIS_HASH
    delta: float | None = None
    claimed_epsilon: float | None = None  # the last entry's user_epsilon["pld"]
    recomputed_epsilon: float | None = None  # the auditor's PLD after the last entry
    recomputed_rdp_epsilon: float | None = None  # the auditor's RDP bound after the last entry
    # the budget the run's rounds record (target_epsilon, planned_rounds: server/ledger.py); None: none
    target_epsilon: float | None = None
    planned_rounds: int | None = None
    epsilons: list[EpsilonCheck] = field(default_factory=list)
    trending: list[dict[str, Any]] = field(default_factory=list)  # one row per trending release
    start_checks: list[dict[str, Any]] = field(default_factory=list)  # one row per start check
    # participation cap (server/audit/cap_check.py): the run's k, and the auditor's two bounds after the
    # last entry; recomputed_epsilon is then the smaller one
    participation_cap: int | None = None
    recomputed_poisson_epsilon: float | None = None
    recomputed_cap_epsilon: float | None = None
    # what passes but must be said: conservative claims, undecided checks, an unpinned head
    notes: list[str] = field(default_factory=list)
    cohort_dispersion: list[dict[str, Any]] = field(default_factory=list)  # server/audit/cohorts.py
    local_dp: dict[str, Any] | None = None  # each local report's own epsilon (server/audit/local_dp.py)
    head_pinned: bool = False  # an expected head was given
    # the given key signed none of the entries and none names it: the wrong key file, not tampering (the
    # per-entry problems are still listed; `fedhome-audit verify` says only this, audit_cli.wrong_key_line)
    key_mismatch: bool = False
    ledger_key_ids: list[str] = field(default_factory=list)  # the key ids the entries name, on a mismatch

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe report (an infinite epsilon is written as "inf")."""
        return _json_safe(asdict(self))


def verify_ledger(
    path: Path, public_key: Ed25519PublicKey, *, expected_head: str | None = None
) -> LedgerVerification:
    """Verify the ledger at `path` (the ledger.jsonl file or the run folder holding it) with `public_key`."""
    ledger = _ledger_file(Path(path))
    problems: list[str] = []
    entries = _read(ledger, problems)
    report = LedgerVerification(ok=False, entries=len(entries), problems=problems, key_id=key_id(public_key))
    if not entries and not problems:
        problems.append("the ledger has no entries")
    _check_chain(entries, public_key, report)
    valid = [(line, e) for line, e in entries if _check_fields(_where(line, e), e, problems)]
    rounds = [entry for _, entry in valid if is_training_round(entry)]
    last_round: dict[str, Any] | None = None
    for line, entry in valid:
        where = _where(line, entry)
        if is_trending(entry):
            check_trending_noise(where, entry, problems)
            _trending_row(where, entry, ledger.parent, report)
        elif is_start_check(entry):
            first = rounds[0] if rounds else None
            check_start_check(where, entry, last_round=last_round, first_round=first, problems=problems)
            report.start_checks.append(_start_check_row(entry))
        else:
            check_noise(where, entry, problems)
            last_round = entry
    check_unsigned_counts([entry for _, entry in entries], ledger.parent, problems)
    dispersion = cohort_dispersion([entry for _, entry in valid], problems, report.notes)
    report.cohort_dispersion = [result.to_dict() for result in dispersion]
    _check_epsilons(valid, report)
    _check_budget(valid, report)
    report.local_dp = local_dp_section([entry for _, entry in valid], delta=report.delta)
    report.head_pinned = expected_head is not None
    if expected_head is None:
        report.notes.append(TRUNCATION_NOTE)
    elif report.head_hash != expected_head:
        problems.append(
            f"head hash {report.head_hash} is not the expected {expected_head} (entries cut off?)"
        )
    report.ok = not problems
    return report


def _check_fields(where: str, entry: dict[str, Any], problems: list[str]) -> bool:
    if is_trending(entry):
        return check_trending_fields(where, entry, problems)
    if is_start_check(entry):
        return check_start_check_fields(where, entry, problems)
    return check_fields(where, entry, problems)


def _start_check_row(entry: dict[str, Any]) -> dict[str, Any]:
    """What the report lists about a start check (its epsilon cost comes from `epsilons`)."""
    keys = ("after_round", "sample_rate", "noise_multiplier", "noise_std", "noised_gain_sum", "margin")
    more = ("decision", "model_sha256_shipped", "realised_cohort", "entry_hash")
    return {key: entry.get(key) for key in (*keys, *more)}


def _trending_row(where: str, entry: dict[str, Any], folder: Path, report: LedgerVerification) -> None:
    """What the report lists about a trending release, with the check of its counts file."""
    keys = ("after_round", "sample_rate", "noise_multiplier", "noise_std", "max_items", "window_days")
    row: dict[str, Any] = {key: entry.get(key) for key in (*keys, "realised_cohort", "counts_sha256")}
    row["purpose"] = release_purpose(entry)  # "trending", or "popularity_prior" (before round 1)
    row["counts_file_ok"] = check_counts_file(where, entry, folder, report.problems)
    row["entry_hash"] = entry.get("entry_hash")
    report.trending.append(row)


def _ledger_file(path: Path) -> Path:
    ledger = path / "ledger.jsonl" if path.is_dir() else path
    if not ledger.is_file():
        raise ConfigError(f"no ledger at {ledger}")
    return ledger


def _read(ledger: Path, problems: list[str]) -> list[tuple[int, dict[str, Any]]]:
    """(line number, entry) for every line that parses; anything else becomes a problem."""
    lines = ledger.read_bytes().split(b"\n")
    if lines[-1] != b"":
        problems.append(f"line {len(lines)}: incomplete last line (no newline; a crash mid-write or a cut)")
    entries: list[tuple[int, dict[str, Any]]] = []
    for number, raw in enumerate(lines[:-1] if lines[-1] == b"" else lines, start=1):
        entry, problem = _parse(raw)
        if problem:
            problems.append(f"line {number}: {problem}")
        if entry is not None:
            entries.append((number, entry))
    return entries


def _parse(raw: bytes) -> tuple[dict[str, Any] | None, str]:
    """(entry or None, problem or ""): an entry that parses but is not byte-canonical is kept and flagged."""
    try:
        entry = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None, "not valid JSON (or NaN/Infinity, which JSON does not allow)"
    if not isinstance(entry, dict):
        return None, "not a JSON object"
    try:
        canonical = canonical_json(entry)
    except DataError:
        return None, "holds a number too large for JSON"
    return entry, "" if raw == canonical else "not in canonical JSON form (edited after writing?)"


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def _check_chain(
    entries: list[tuple[int, dict[str, Any]]], public_key: Ed25519PublicKey, report: LedgerVerification
) -> None:
    """Key id, signature, entry hash, link to the previous entry, and rounds 1, 2, 3, ... in order."""
    problems: list[str] = report.problems
    previous_hash, previous_round = GENESIS_HASH, 0
    matches = 0  # entries that name the given key or whose signature verifies with it
    for line, entry in entries:
        where = _where(line, entry)
        named = entry.get("key_id") == report.key_id
        if not named:
            problems.append(f"{where}: key_id {entry.get('key_id')!r} is not the given key's {report.key_id}")
        try:
            signed = canonical_json({k: v for k, v in entry.items() if k not in ("signature", "entry_hash")})
            verify(public_key, signed, entry.get("signature", ""))
            verified = True
        except SignatureError:
            problems.append(f"{where}: signature does not verify with the given public key")
            verified = False
        matches += named or verified
        recomputed = hashlib.sha256(canonical_json({k: v for k, v in entry.items() if k != "entry_hash"}))
        if entry.get("entry_hash") != recomputed.hexdigest():
            problems.append(f"{where}: entry_hash does not match the entry's content")
        if entry.get("prev_hash") != previous_hash:
            problems.append(f"{where}: prev_hash does not link to the previous entry (removed or reordered?)")
        previous_hash = str(entry.get("entry_hash"))
        if entry.get("kind") in NON_TRAINING_KINDS:
            if "round" in entry or entry.get("after_round") != previous_round:
                kind = entry["kind"]
                problems.append(f"{where}: a {kind} entry must follow round {previous_round} (no round)")
            continue
        if not is_training_round(entry):
            problems.append(f"{where}: unknown entry kind {entry.get('kind')!r}")
        if entry.get("round") != previous_round + 1:
            problems.append(f"{where}: round {entry.get('round')!r} should be {previous_round + 1}")
        previous_round = entry["round"] if isinstance(entry.get("round"), int) else previous_round + 1
    report.head_hash = previous_hash
    report.key_mismatch = bool(entries) and matches == 0
    if report.key_mismatch:
        report.ledger_key_ids = sorted({str(entry.get("key_id")) for _, entry in entries})


def _check_epsilons(valid: list[tuple[int, dict[str, Any]]], report: LedgerVerification) -> None:
    """Recompute the user epsilon after every round and compare it with what each entry claims."""
    deltas = {entry["delta"] for _, entry in valid}
    if len(deltas) > 1:
        report.problems.append(f"delta changes within the run: {sorted(deltas)}")
    if not valid or len(deltas) != 1:
        return
    delta = report.delta = float(next(iter(deltas)))
    pld, rounds, generous = RoundByRoundPLD(), [], []
    cap = CapCheck.for_entries([entry for _, entry in valid], report.problems)
    for line, entry in valid:
        q, z = float(entry["sample_rate"]), float(entry["noise_multiplier"])
        pld.add_round(sample_rate=q, noise_multiplier=z)
        rounds.append((q, z))
        recomputed = pld.epsilon(delta=delta)
        if cap is not None:  # a capped run claims min(Poisson bound, cap bound)
            cap.add_round(_where(line, entry), entry, report.problems)
            recomputed = cap.check(
                _where(line, entry), entry, poisson=recomputed, delta=delta, problems=report.problems
            )
        check = _compare(_where(line, entry), entry, recomputed, report.problems)
        if check is not None:
            report.epsilons.append(check)
            if overstated(check.claimed_pld, recomputed, EPSILON_RTOL):
                generous.append(check)
    if generous:
        report.notes.append(_overstated_note(generous))
    if cap is not None and cap.overstated:
        report.notes.append(
            f"{len(cap.overstated)} participation-cap bound(s) claimed above the auditor's recomputation "
            f"(conservative, so they hold), first {cap.overstated[0]}"
        )
    report.recomputed_epsilon = report.recomputed_poisson_epsilon = pld.epsilon(delta=delta)
    report.recomputed_rdp_epsilon = rdp_epsilon(rounds, delta=delta)
    if cap is not None:
        report.participation_cap, report.recomputed_cap_epsilon = cap.cap, cap.epsilon(delta=delta)
        report.recomputed_epsilon = min(report.recomputed_epsilon, report.recomputed_cap_epsilon)
        report.recomputed_rdp_epsilon = min(report.recomputed_rdp_epsilon, cap.rdp_epsilon(delta=delta))
    report.claimed_epsilon = report.epsilons[-1].claimed_pld if report.epsilons else None


def _check_budget(valid: list[tuple[int, dict[str, Any]]], report: LedgerVerification) -> None:
    """The budget the run's training rounds record (target_epsilon, planned_rounds): one budget for the
    whole run, no round past the rounds its entry says were planned, and no entry whose recomputed epsilon
    is past the budget by more than EPSILON_RTOL (the writer's and the auditor's PLDs, both valid, differ by
    a few 1e-4). Ledgers written before the budget was recorded pass as before; a run whose earlier rounds
    record none (resumed by a newer ServerApp) gets a note."""
    rounds = [(line, entry) for line, entry in valid if is_training_round(entry)]
    targets = sorted({float(entry["target_epsilon"]) for _, entry in rounds if "target_epsilon" in entry})
    without = [entry["round"] for _, entry in rounds if "target_epsilon" not in entry]
    if len(targets) > 1:
        report.problems.append(f"the recorded budget changes within the run: target_epsilon {targets}")
    if targets and without:
        report.notes.append(f"{len(without)} round(s) record no budget (first: round {without[0]})")
    for line, entry in rounds:
        planned = entry.get("planned_rounds")
        if planned is not None and entry["round"] > planned:
            where = _where(line, entry)
            report.problems.append(f"{where}: past the {planned} rounds the run was planned over")
    report.planned_rounds = rounds[-1][1].get("planned_rounds") if rounds else None
    if not targets:
        return
    report.target_epsilon = budget = targets[-1]
    for check in report.epsilons:
        if check.recomputed_pld > budget * (1 + EPSILON_RTOL):
            report.problems.append(
                f"after round {check.round} ({check.kind}): the recomputed epsilon "
                f"{check.recomputed_pld:.6g} is past the run's recorded budget of {budget}"
            )


def _compare(
    where: str, entry: dict[str, Any], recomputed: float, problems: list[str]
) -> EpsilonCheck | None:
    claimed = entry["user_epsilon"]
    pld, rdp = epsilon_value(claimed.get("pld")), epsilon_value(claimed.get("rdp"))
    if pld is None or rdp is None:
        problems.append(f'{where}: user_epsilon must hold numbers (or "inf") for pld and rdp')
        return None
    if understated(pld, recomputed, EPSILON_RTOL):
        problems.append(
            f"{where}: claimed PLD epsilon {pld} but the auditor recomputes {recomputed:.6g} (understated)"
        )
    if rdp < recomputed * (1 - EPSILON_RTOL):
        problems.append(f"{where}: claimed RDP epsilon {rdp} is below the PLD epsilon {recomputed:.6g}")
    if not is_training_round(entry):
        return EpsilonCheck(entry["after_round"], pld, recomputed, rdp, kind=str(entry["kind"]))
    return EpsilonCheck(round=entry["round"], claimed_pld=pld, recomputed_pld=recomputed, claimed_rdp=rdp)


def _overstated_note(generous: list[EpsilonCheck]) -> str:
    """One note for every entry whose claim is above the recomputed epsilon (conservative: it holds)."""
    worst = max(generous, key=lambda c: _ratio(c.claimed_pld, c.recomputed_pld))
    kind = {"trending_counts": "trending release after round", "start_check": "start check after round"}.get(
        worst.kind, "round"
    )
    return (
        f"{len(generous)} entr{'y claims' if len(generous) == 1 else 'ies claim'} a PLD epsilon above the "
        f"auditor's recomputation by more than {EPSILON_RTOL:g} relative (conservative, so it holds); the "
        f"most at {kind} {worst.round}: claimed {worst.claimed_pld:.6g}, "
        f"recomputed {worst.recomputed_pld:.6g}"
    )


def _ratio(claimed: float, recomputed: float) -> float:
    if math.isinf(claimed):
        return math.inf
    return claimed / recomputed if recomputed > 0 else math.inf


def _where(line: int, entry: dict[str, Any]) -> str:
    if is_trending(entry):
        return f"trending release after round {entry.get('after_round', '?')} (line {line})"
    if is_start_check(entry):
        return f"start check after round {entry.get('after_round', '?')} (line {line})"
    return f"round {entry.get('round', '?')} (line {line})"


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value
