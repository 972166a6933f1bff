"""What the accountants assume against what the ledger says ran: sampling, noise, divisor, population, and
whether the realised cohorts' sum looks like Poisson sampling at the recorded rate (the report's mismatches).
Their dispersion (a constant cohort) is checked by `verify` itself, server/audit/cohorts.py, so it fails the
verdict rather than appearing here."""

from __future__ import annotations

import math
from typing import Any

from server.audit.cohorts import cohort_check

COHORT_SIGMAS = 5.0  # realised cohorts further than this from q*N*T (in binomial sds) are a mismatch


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


def _numbers(*values: Any) -> bool:
    return all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values)
