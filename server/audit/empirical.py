"""Empirical privacy from canary statistics: an estimate, a heuristic bound and a rigorous lower bound.

Inputs are per-canary scores (higher = "this canary looks like it took part") and whether each canary was
really inserted. Nothing here knows about models or rounds (simulation/canary_audit.py makes the scores).

- `gaussian_fit_epsilon`: Andrew et al., "One-shot Empirical Privacy Estimation for Federated Learning"
  (ICLR 2024). Fit one Gaussian to the scores of inserted canaries and one to those of canaries never
  inserted; the estimate is the epsilon at `delta` of the pair of fitted Gaussians (the smallest epsilon
  whose hockey-stick divergence, in either direction, is <= delta). An estimate, not a bound.
- `threshold_lower_bound`: HEURISTIC. A membership test "score > t". Half of the canaries (half of each
  kind, at random) pick t, the other half measure its false-positive and false-negative rates;
  Clopper-Pearson upper confidence limits on both give eps >= log((1 - delta - FNR) / FPR) (and
  symmetrically). Clopper-Pearson assumes independent trials, i.e. one training run per canary; all
  canaries of one run share that run, so this is not a valid confidence bound and must not decide anything.
- `one_run_lower_bound`: Steinke, Nasr & Jagielski, "Privacy Auditing with One (1) Training Run" (NeurIPS
  2023). Canaries are inserted independently with probability 1/2; the auditor guesses "in" for the k
  highest scores and "out" for the k lowest; under (eps, delta)-DP the number of correct guesses is
  dominated as in their Theorem (binomial tail plus a delta term); the bound is the largest eps rejected at
  the confidence level. Several k are tried with a Bonferroni correction. This is the rigorous bound.
- `attainable_one_run_bound` / `canaries_for_power`: the power of the one-run bound before any training: the
  bound it gives when every guess is right (perfect separation). An audit whose attainable bound does not
  exceed the claimed epsilon cannot fail, whatever the mechanism does.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats

from shared.errors import ConfigError

ONE_RUN_FRACTIONS = (0.02, 0.05, 0.1, 0.2, 0.5)  # guess counts k = fraction * m / 2 at each end
EPSILON_CAP = 50.0  # estimates and bounds are reported up to this (a broken mechanism gives "infinite")
_GRID_POINTS = 20_001


@dataclass(frozen=True)
class GaussianFit:
    mean: float
    std: float


def fit_gaussian(scores: np.ndarray) -> GaussianFit:
    if scores.size < 2:
        raise ConfigError("a Gaussian fit needs at least two scores")
    return GaussianFit(float(scores.mean()), float(scores.std(ddof=1)))


def hockey_stick(p: GaussianFit, q: GaussianFit, epsilon: float) -> float:
    """delta(epsilon) = integral of max(0, p(x) - e^epsilon q(x)) dx for two 1-D Gaussians."""
    if p.std <= 0 or q.std <= 0:
        return 1.0 if (p.mean, p.std) != (q.mean, q.std) else 0.0
    if math.isclose(p.std, q.std, rel_tol=1e-12):
        # closed form (Balle & Wang 2018) for equal variances, mu = |difference of means| / std
        mu = abs(p.mean - q.mean) / p.std
        if mu == 0:
            return 0.0
        return float(
            stats.norm.cdf(-epsilon / mu + mu / 2)
            - math.exp(epsilon) * stats.norm.cdf(-epsilon / mu - mu / 2)
        )
    lo = min(p.mean - 40 * p.std, q.mean - 40 * q.std)
    hi = max(p.mean + 40 * p.std, q.mean + 40 * q.std)
    x = np.linspace(lo, hi, _GRID_POINTS)
    # log densities, so that e^epsilon q(x) never overflows
    log_p = stats.norm.logpdf(x, p.mean, p.std)
    log_q = stats.norm.logpdf(x, q.mean, q.std)
    region = log_p > epsilon + log_q
    if not region.any():
        return 0.0
    # exact masses of the region's intervals (the region is at most two intervals: quadratic log ratio)
    edges = np.flatnonzero(np.diff(region.astype(np.int8)))
    bounds = np.concatenate(
        [[lo] if region[0] else [], x[edges + 1] if edges.size else [], [hi] if region[-1] else []]
    )
    starts, ends = bounds[0::2], bounds[1::2]
    mass_p = float(np.sum(stats.norm.cdf(ends, p.mean, p.std) - stats.norm.cdf(starts, p.mean, p.std)))
    mass_q = float(np.sum(stats.norm.cdf(ends, q.mean, q.std) - stats.norm.cdf(starts, q.mean, q.std)))
    return max(0.0, mass_p - math.exp(epsilon) * mass_q)


def gaussian_pair_epsilon(inserted: GaussianFit, absent: GaussianFit, *, delta: float) -> float:
    """The smallest epsilon with hockey-stick divergence <= delta both ways between the two Gaussians."""
    _check_delta(delta)

    def worst(epsilon: float) -> float:
        return max(hockey_stick(inserted, absent, epsilon), hockey_stick(absent, inserted, epsilon)) - delta

    if worst(0.0) <= 0:
        return 0.0
    if worst(EPSILON_CAP) > 0:
        return math.inf
    return float(optimize.brentq(worst, 0.0, EPSILON_CAP, xtol=1e-6))


def gaussian_fit_epsilon(scores: np.ndarray, inserted: np.ndarray, *, delta: float) -> float:
    """Andrew et al.'s epsilon estimate from the scores of inserted and never-inserted canaries."""
    scores, inserted = _check_scores(scores, inserted)
    return gaussian_pair_epsilon(fit_gaussian(scores[inserted]), fit_gaussian(scores[~inserted]), delta=delta)


def clopper_pearson_upper(failures: int, trials: int, *, alpha: float) -> float:
    """One-sided (1 - alpha) upper confidence limit of a binomial proportion."""
    if trials <= 0:
        return 1.0
    if failures >= trials:
        return 1.0
    return float(stats.beta.ppf(1 - alpha, failures + 1, trials - failures))


def _rate_bound(fpr: float, fnr: float, delta: float) -> float:
    """max over the two directions of log((1 - delta - FNR) / FPR), 0 when neither is positive."""
    best = 0.0
    for a, b in ((fpr, fnr), (fnr, fpr)):
        numerator = 1.0 - delta - b
        if numerator > 0:
            best = max(best, math.inf if a == 0 else math.log(numerator / a))
    return best


def threshold_lower_bound(
    scores: np.ndarray,
    inserted: np.ndarray,
    *,
    delta: float,
    confidence: float = 0.95,
    seed: int = 0,
) -> float:
    """HEURISTIC: a lower bound on epsilon from a threshold test chosen on held-out canaries, with
    Clopper-Pearson limits that assume independent trials (one run does not give them). Report only."""
    scores, inserted = _check_scores(scores, inserted)
    _check_delta(delta)
    picks = np.zeros(scores.size, dtype=bool)  # a random half of the inserted and of the absent canaries
    rng = np.random.default_rng(seed)
    for group in (np.flatnonzero(inserted), np.flatnonzero(~inserted)):
        picks[rng.permutation(group)[: group.size // 2]] = True
    choose_s, choose_in = scores[picks], inserted[picks]
    test_s, test_in = scores[~picks], inserted[~picks]
    if min(choose_in.sum(), (~choose_in).sum(), test_in.sum(), (~test_in).sum()) == 0:
        raise ConfigError("each half of the canaries needs inserted and absent ones")
    threshold = _best_threshold(choose_s, choose_in, delta)
    alpha = 1.0 - confidence
    false_positive = int(np.sum(test_s[~test_in] > threshold))
    false_negative = int(np.sum(test_s[test_in] <= threshold))
    fpr = clopper_pearson_upper(false_positive, int((~test_in).sum()), alpha=alpha / 2)
    fnr = clopper_pearson_upper(false_negative, int(test_in.sum()), alpha=alpha / 2)
    return min(_rate_bound(fpr, fnr, delta), EPSILON_CAP)


def _best_threshold(scores: np.ndarray, inserted: np.ndarray, delta: float) -> float:
    candidates = np.unique(scores)
    positives, negatives = scores[inserted], scores[~inserted]
    best, best_t = -1.0, float(candidates[0])
    for t in candidates:
        fpr = (np.sum(negatives > t) + 1) / (negatives.size + 2)  # smoothed: a rate of 0 is not "infinite"
        fnr = (np.sum(positives <= t) + 1) / (positives.size + 2)
        value = _rate_bound(float(fpr), float(fnr), delta)
        if value > best:
            best, best_t = value, float(t)
    return best_t


def one_run_p_value(m: int, guesses: int, correct: int, *, epsilon: float, delta: float) -> float:
    """P[>= correct right guesses out of `guesses`] under (epsilon, delta)-DP with m canaries (Steinke et
    al.: the binomial tail of their pure-DP theorem plus their approximate-DP term 2 m delta max_i a_i,
    a_i = P[v > Binomial >= v - i] / i)."""
    if not 0 <= correct <= guesses <= m:
        raise ConfigError(f"need 0 <= correct <= guesses <= m, got {correct}, {guesses}, {m}")
    p_right = 1.0 / (1.0 + math.exp(-epsilon))
    tail = float(stats.binom.sf(correct - 1, guesses, p_right))
    pmf = stats.binom.pmf(np.arange(correct - 1, -1, -1), guesses, p_right)  # v-1, v-2, ..., 0
    cumulative = np.cumsum(pmf)
    alpha = float(np.max(cumulative / np.arange(1, correct + 1))) if correct > 0 else 0.0
    return min(1.0, tail + 2 * m * delta * alpha)


def one_run_epsilon(m: int, guesses: int, correct: int, *, delta: float, alpha: float) -> float:
    """The largest epsilon that `correct` of `guesses` rejects at level alpha (0 when none is rejected)."""
    if one_run_p_value(m, guesses, correct, epsilon=0.0, delta=delta) >= alpha:
        return 0.0
    if one_run_p_value(m, guesses, correct, epsilon=EPSILON_CAP, delta=delta) < alpha:
        return EPSILON_CAP

    def excess(epsilon: float) -> float:
        return one_run_p_value(m, guesses, correct, epsilon=epsilon, delta=delta) - alpha

    return float(optimize.brentq(excess, 0.0, EPSILON_CAP, xtol=1e-6))


def one_run_lower_bound(
    scores: np.ndarray,
    inserted: np.ndarray,
    *,
    delta: float,
    confidence: float = 0.95,
    fractions: tuple[float, ...] = ONE_RUN_FRACTIONS,
) -> float:
    """Steinke et al.'s one-run bound, best over guess counts (k = fraction * m at each end), Bonferroni."""
    scores, inserted = _check_scores(scores, inserted)
    _check_delta(delta)
    m = scores.size
    order = np.argsort(-scores, kind="stable")
    alpha = (1.0 - confidence) / len(fractions)
    best = 0.0
    for fraction in fractions:
        k = max(1, int(fraction * m / 2))
        guessed_in, guessed_out = order[:k], order[m - k :]
        correct = int(inserted[guessed_in].sum() + (~inserted[guessed_out]).sum())
        best = max(best, one_run_epsilon(m, 2 * k, correct, delta=delta, alpha=alpha))
    return best


def attainable_one_run_bound(
    m: int,
    inserted: int,
    *,
    delta: float,
    confidence: float = 0.95,
    fractions: tuple[float, ...] = ONE_RUN_FRACTIONS,
) -> float:
    """The largest `one_run_lower_bound` m canaries (`inserted` of them inserted) can give: every inserted
    canary scores above every absent one, so each of the k top guesses and k bottom guesses is right as far
    as there are inserted/absent canaries."""
    if not 0 <= inserted <= m:
        raise ConfigError(f"need 0 <= inserted <= m, got {inserted} of {m}")
    _check_delta(delta)
    alpha = (1.0 - confidence) / len(fractions)
    best = 0.0
    for fraction in fractions:
        k = max(1, int(fraction * m / 2))
        if 2 * k > m:
            continue
        correct = min(k, inserted) + min(k, m - inserted)
        best = max(best, one_run_epsilon(m, 2 * k, correct, delta=delta, alpha=alpha))
    return best


def canaries_for_power(
    epsilon: float,
    *,
    delta_for: Callable[[int], float],
    confidence: float = 0.95,
    max_canaries: int,
    min_canaries: int = 8,
) -> int | None:
    """The smallest canary count m (on a 5 % geometric grid) whose attainable one-run bound exceeds
    `epsilon`, with m/2 canaries inserted and delta = delta_for(m); None when no m <= max_canaries has the
    power (the 2 m delta term of the bound grows with m, so more canaries do not always help)."""
    m = max(min_canaries, 8)
    while m <= max_canaries:
        if attainable_one_run_bound(m, m // 2, delta=delta_for(m), confidence=confidence) > epsilon:
            return m
        m = max(m + 1, int(m * 1.05))
    return None


def _check_scores(scores: np.ndarray, inserted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    inserted = np.asarray(inserted, dtype=bool)
    if scores.ndim != 1 or scores.shape != inserted.shape:
        raise ConfigError("scores and inserted must be 1-D arrays of the same length")
    if not np.isfinite(scores).all():
        raise ConfigError("canary scores must be finite")
    if inserted.sum() < 2 or (~inserted).sum() < 2:
        raise ConfigError("need at least two inserted and two absent canaries")
    return scores, inserted


def _check_delta(delta: float) -> None:
    if not 0.0 < delta < 1.0:
        raise ConfigError(f"delta must be in (0, 1), got {delta}")
