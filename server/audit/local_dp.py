"""Local DP's own guarantee: each device's report, on its own, without amplification by sampling.

In mode "local" each sampled device adds Gaussian noise of std z*C to its own clipped update before sending
it, and the server adds none. The ledger's user epsilon is the Poisson-subsampled accounting of the rounds,
which holds against someone who sees only the released models. Anyone who sees a report itself (the server,
or whoever intercepts it) knows that the device took part, so no amplification by sampling applies: a report
is one Gaussian mechanism with noise multiplier z. Its epsilon, computed here exactly with dp_accounting's
Gaussian privacy loss:

- add/remove (the report of a user's clipped update against the report of no contribution, sensitivity C);
- replace-one (one user's update against another's, both of norm <= C: sensitivity 2C).

A device whose report went into several rounds composes them: the worst case, a device sampled in every
local round, is the composition of those Gaussians, which is one Gaussian with noise (sum z_i^-2)^-1/2.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

from dp_accounting.pld.privacy_loss_mechanism import GaussianPrivacyLoss
from scipy.optimize import brentq

_SENSITIVITY = {"add_remove": 1.0, "replace_one": 2.0}  # in units of the clip norm C


def report_epsilon(noise_multiplier: float, *, delta: float) -> dict[str, float]:
    """Epsilon at `delta` of one Gaussian mechanism with this noise multiplier (sensitivity C under
    add/remove, 2C under replace-one); infinite without noise. Exact: dp_accounting's Gaussian privacy loss
    gives delta(epsilon) in closed form (Balle & Wang 2018), inverted here (no discretisation)."""
    if noise_multiplier <= 0:
        return dict.fromkeys(_SENSITIVITY, math.inf)
    return {name: _gaussian_epsilon(noise_multiplier, s, delta) for name, s in _SENSITIVITY.items()}


def _gaussian_epsilon(noise_multiplier: float, sensitivity: float, delta: float) -> float:
    loss = GaussianPrivacyLoss(noise_multiplier, sensitivity=sensitivity)
    if loss.get_delta_for_epsilon(0.0) <= delta:
        return 0.0
    high = 1.0
    while loss.get_delta_for_epsilon(high) > delta:  # delta(epsilon) decreases to 0
        high *= 2
    return float(brentq(lambda e: loss.get_delta_for_epsilon(e) - delta, 0.0, high, xtol=1e-12))


def local_dp_section(entries: Sequence[dict[str, Any]], *, delta: float | None) -> dict[str, Any] | None:
    """The local epsilons of a run's local-mode rounds (None when it has none, or no single delta)."""
    local = [e for e in entries if e.get("mode") == "local" and _non_negative(e.get("noise_multiplier"))]
    if not local or delta is None:
        return None
    by_z = Counter(float(e["noise_multiplier"]) for e in local)
    reports = [
        {"noise_multiplier": z, "rounds": count, **_named(report_epsilon(z, delta=delta))}
        for z, count in sorted(by_z.items())
    ]
    combined = 0.0 if 0 in by_z else sum(count * z**-2 for z, count in by_z.items()) ** -0.5
    every = _named(report_epsilon(combined, delta=delta))
    worst = reports[0]  # the smallest z spends the most
    return {
        "delta": delta,
        "reports": reports,
        "every_round": {"rounds": len(local), "noise_multiplier": combined, **every},
        "statement": (
            f"Local DP: each device adds Gaussian noise (std z*C) to its own clipped update, so each report "
            f"is differentially private on its own, against anyone who sees it, the server included, and "
            f"without amplification by sampling (whoever sees a report knows the device took part): at z = "
            f"{worst['noise_multiplier']:.4g}, one report costs epsilon "
            f"{_text(worst['epsilon_add_remove'])} (add/remove) or {_text(worst['epsilon_replace_one'])} "
            f"(replace-one) at delta {delta:.3g}. A device whose report went into all {len(local)} local "
            f"rounds: {_text(every['epsilon_add_remove'])} (add/remove) or "
            f"{_text(every['epsilon_replace_one'])} (replace-one). The ledger's user epsilon, amplified by "
            "Poisson sampling, holds only against those who see the released models alone."
        ),
    }


def _named(epsilons: dict[str, float]) -> dict[str, float | str]:
    return {f"epsilon_{k}": "inf" if math.isinf(v) else v for k, v in epsilons.items()}


def _text(value: float | str) -> str:
    return str(value) if isinstance(value, str) else f"{value:.4g}"


def _non_negative(value: Any) -> bool:
    return (
        isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
    )
