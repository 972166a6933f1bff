"""Do the realised cohorts look like Poisson sampling at the recorded rate? Two checks of the signed entries.

- `cohort_check` (the report's mismatches, server/audit/mismatches.py): the summed deviation of the realised
  cohorts from q*N, in binomial standard deviations. It sees cohorts that are too large or too small on
  average, but a constant cohort of q*N scores 0.
- `cohort_dispersion` (`fedhome-audit verify`, so also the report's verdict): within each group of entries
  with the same sample rate q and population N, the realised cohorts c_1..c_m must disperse like independent
  Binomial(N, q) draws. The statistic is T = sum_i (c_i - qN)^2 / (N q (1-q)), about chi-square with m
  degrees of freedom (q and N are known, nothing is estimated). Cohorts that vary too little (a fixed-size
  sample, or a cohort drawn once and reused) make T implausibly small; cohorts that vary too much (or sit
  far from q*N) make it implausibly large. Either fails verify: the accountants' amplification by sampling
  assumes Poisson sampling at the recorded rate, so an epsilon computed for it does not hold for what ran
  (fail closed, like an entry whose "sampling" is not "poisson").

The p-values are not the chi-square approximation (poor for small N*q, where the binomial is lumpy) but
Chernoff bounds computed from the exact Binomial(N, q) distribution: P(T <= t) <= min_l e^{l t} E[e^{-l X}]^m
and P(T >= t) <= min_l e^{-l t} E[e^{l X}]^m, X = (c - qN)^2 / (N q (1-q)) of one draw. A bound is never
below the true probability, so a genuine run fails with probability at most FALSE_ALARM per tail and group,
whatever N and q. With few rounds the lower tail cannot be decided: even cohorts as constant as possible
are then not improbable enough, and the check says so (a note) instead of passing silently.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import logsumexp
from scipy.stats import binom

from server.ledger_entries import is_training_round

FALSE_ALARM = 1e-6  # per tail and group of rounds: a genuine run essentially never fails
FEW_ROUNDS = 10  # below this the lower tail has little power even where it could decide
_LOG_FALSE_ALARM = math.log(FALSE_ALARM)


@dataclass(frozen=True)
class CohortDispersion:
    """The dispersion test of the rounds with one (sample rate, population)."""

    sample_rate: float
    population: int
    rounds: int
    expected_cohort: float  # q*N
    mean_cohort: float
    sample_variance: float | None  # of the realised cohorts (ddof 1); None with one round
    binomial_variance: float  # N q (1-q)
    statistic: float | None  # T above (None when q = 1: every user is in every cohort)
    p_too_small: float | None  # Chernoff bound on P(T <= statistic) under Poisson sampling
    p_too_large: float | None  # ... on P(T >= statistic)
    rounds_needed: int | None  # rounds after which even a constant cohort is flagged
    verdict: str  # "ok", "too small", "too large", "undecided", "not everyone"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cohort_check(entries: Sequence[dict[str, Any]]) -> float | None:
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


def cohort_dispersion(
    entries: Sequence[dict[str, Any]], problems: list[str], notes: list[str]
) -> list[CohortDispersion]:
    """One test per (sample rate, population) group of the entries' realised cohorts; problems for
    cohorts that are implausible under Poisson sampling, notes where the rounds are too few to decide."""
    groups: dict[tuple[float, int], list[int]] = {}
    for entry in entries:
        q, n, c = entry.get("sample_rate"), entry.get("population"), entry.get("realised_cohort")
        if not (isinstance(q, int | float) and _numbers(q) and type(n) is int and type(c) is int):
            continue
        if not (0 < q <= 1 and n >= 1):
            continue
        if not 0 <= c <= n:
            problems.append(f"{_where(entry)}: realised_cohort {c} is not between 0 and the population {n}")
            continue
        groups.setdefault((float(q), n), []).append(c)
    if not groups and entries:
        notes.append("no entry records a realised cohort with its population: cohort dispersion not checked")
    results = [_test(q, n, cohorts) for (q, n), cohorts in groups.items()]
    for result in results:
        _explain(result, problems, notes)
    return results


def dispersion_mismatches(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The report's mismatch lines for groups whose cohorts do not disperse like Poisson sampling (rows:
    CohortDispersion.to_dict(), as LedgerVerification.cohort_dispersion holds them)."""
    words = {
        "too small": "vary too little (a fixed-size cohort?)",
        "too large": "vary too much",
        "not everyone": "are not everyone, as sampling rate 1 takes every user",
    }
    return [
        f"realised cohorts of the {row['rounds']} round(s) with q={row['sample_rate']:g}, "
        f"N={row['population']} {words[row['verdict']]}: they do not look like Poisson sampling with the "
        "recorded rate"
        for row in rows
        if row.get("verdict") in words
    ]


def _test(q: float, n: int, cohorts: list[int]) -> CohortDispersion:
    m, expected = len(cohorts), q * n
    values = np.asarray(cohorts, dtype=np.float64)
    variance = n * q * (1 - q)
    common: dict[str, Any] = {
        "sample_rate": q,
        "population": n,
        "rounds": m,
        "expected_cohort": expected,
        "mean_cohort": float(values.mean()),
        "sample_variance": float(values.var(ddof=1)) if m > 1 else None,
        "binomial_variance": variance,
    }
    if q == 1:  # Poisson sampling with rate 1 takes everyone
        verdict = "ok" if all(c == n for c in cohorts) else "not everyone"
        return CohortDispersion(
            **common, statistic=None, p_too_small=None, p_too_large=None, rounds_needed=None, verdict=verdict
        )
    k = np.arange(n + 1, dtype=np.float64)
    log_pmf, x = binom.logpmf(k, n, q), (k - expected) ** 2 / variance
    statistic = float(((values - expected) ** 2).sum() / variance)
    log_small = _log_tail_bound(log_pmf, x, m, statistic, lower=True)
    log_large = _log_tail_bound(log_pmf, x, m, statistic, lower=False)
    per_round = _log_tail_bound(log_pmf, x, 1, float(x.min()), lower=True)  # a cohort as constant as can be
    needed = None if per_round >= 0 else max(FEW_ROUNDS, math.ceil(_LOG_FALSE_ALARM / per_round - 1e-9))
    if log_small <= _LOG_FALSE_ALARM:
        verdict = "too small"
    elif log_large <= _LOG_FALSE_ALARM:
        verdict = "too large"
    elif needed is None or m < needed:
        verdict = "undecided"
    else:
        verdict = "ok"
    return CohortDispersion(
        **common,
        statistic=statistic,
        p_too_small=math.exp(log_small),
        p_too_large=math.exp(log_large),
        rounds_needed=needed,
        verdict=verdict,
    )


def _log_tail_bound(log_pmf: np.ndarray, x: np.ndarray, rounds: int, t: float, *, lower: bool) -> float:
    """log of the Chernoff bound on P(T <= t) (lower) or P(T >= t), T the sum of `rounds` independent X
    with P(X = x[i]) = exp(log_pmf[i]); the exponent's rate l = e^u is optimised over u (the bound is
    convex in l, so unimodal in u)."""
    sign = -1.0 if lower else 1.0

    def log_bound(u: float) -> float:
        rate = math.exp(u)
        return float(-sign * rate * t + rounds * logsumexp(log_pmf + sign * rate * x))

    best = minimize_scalar(log_bound, bounds=(-20.0, 20.0 if lower else 4.0), method="bounded")
    return min(0.0, float(best.fun))


def _explain(result: CohortDispersion, problems: list[str], notes: list[str]) -> None:
    group = f"the {result.rounds} round(s) with q={result.sample_rate:g}, N={result.population}"
    if result.verdict == "not everyone":
        problems.append(f"realised cohorts of {group} are not everyone, as sampling rate 1 takes every user")
    if result.statistic is None:  # q = 1: nothing to disperse
        return
    spread = (
        f"sum((c - qN)^2)/(Nq(1-q)) = {result.statistic:.4g} against {result.rounds} expected "
        f"(sample variance {_fmt(result.sample_variance)}, binomial {result.binomial_variance:.4g})"
    )
    if result.verdict == "too small":
        problems.append(
            f"realised cohorts of {group} vary too little for Poisson sampling: {spread}; P(this small) <= "
            f"{result.p_too_small:.2g} < {FALSE_ALARM:g} (a fixed-size cohort?); the accountants' "
            "amplification by sampling does not hold for what ran"
        )
    elif result.verdict == "too large":
        problems.append(
            f"realised cohorts of {group} vary too much for Poisson sampling at the recorded rate: {spread}; "
            f"P(this large) <= {result.p_too_large:.2g} < {FALSE_ALARM:g}; the accountants' amplification "
            "by sampling does not hold for what ran"
        )
    elif result.verdict == "undecided":
        needed = "no number of rounds" if result.rounds_needed is None else f"{result.rounds_needed}"
        notes.append(
            f"cohort dispersion undecided for {group}: too few rounds to tell a fixed-size cohort from "
            f"Poisson sampling at false-alarm probability {FALSE_ALARM:g} ({needed} needed): neither passed "
            "nor failed"
        )


def _where(entry: dict[str, Any]) -> str:
    if not is_training_round(entry):
        kind = str(entry.get("kind"))
        what = {"trending_counts": "trending release", "start_check": "start check"}.get(kind, kind)
        return f"{what} after round {entry.get('after_round', '?')}"
    return f"round {entry.get('round', '?')}"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def _numbers(*values: Any) -> bool:
    return all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values)
