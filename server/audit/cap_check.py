"""The auditor's own check of participation-cap entries: the cap bound recomputed, and the claimed min.

A ledger entry with "participation_cap" k (>= 1) is a training round whose devices refused to train past k
rounds of the run, within the segment "cap_segment" (a start of the run: a resume may restart the devices'
counts). Entries without the field (trending rounds, or runs without a cap) are not limited by the cap.

The cap bound, recomputed here by a different code path from shared/privacy/capped_accounting.py: in each
segment the min(k, n) capped rounds with the smallest noise multipliers are the worst case; Gaussian
mechanisms compose exactly to one Gaussian with noise (sum z_i^-2)^-1/2 (sensitivity 1), whose privacy loss
distribution is built directly (dp_accounting.pld, no sampling), then composed with the rounds the cap
does not limit as Poisson-subsampled Gaussians, round by round. RDP: dp_accounting's RdpAccountant (not
Opacus). Each entry's user_epsilon must then be the smaller of the two bounds, and user_epsilon_poisson /
user_epsilon_cap must not be below the recomputed bounds (one-sided, as in verify.py: a larger claim is
conservative and is listed in `overstated`).
"""

from __future__ import annotations

import math
from typing import Any

import dp_accounting
from dp_accounting.pld import privacy_loss_distribution as pld_lib

from server.audit.accountant import VALUE_DISCRETIZATION_INTERVAL
from server.audit.entry_checks import close, epsilon_value, overstated, understated

_ADD_OR_REMOVE = dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
EPSILON_RTOL = 1e-3  # as in verify.py: same library, different composition


class CapCheck:
    """Tracks the ledger's rounds for the cap bound and checks each capped entry's claims."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.segments: dict[int, list[float]] = {}  # segment -> noise multipliers of its capped rounds
        self.uncapped_rounds: list[tuple[float, float]] = []  # (q, z) of the rounds the cap does not limit
        self._uncapped: pld_lib.PrivacyLossDistribution | None = None  # their composition
        self.last_segment = 0
        self.overstated: list[str] = []  # "where: name" of each conservative (larger) component claim

    @classmethod
    def for_entries(cls, entries: list[dict[str, Any]], problems: list[str]) -> CapCheck | None:
        """A check for the ledger's cap (None when no entry has one); a cap that changes is a problem."""
        caps = [e["participation_cap"] for e in entries if "participation_cap" in e]
        if not caps:
            return None
        cap = caps[0]
        if type(cap) is not int or cap < 1 or any(c != cap for c in caps):
            problems.append("participation_cap must be the same whole number >= 1 in every entry")
            return None
        return cls(cap)

    def add_round(self, where: str, entry: dict[str, Any], problems: list[str]) -> None:
        q, z = float(entry["sample_rate"]), float(entry["noise_multiplier"])
        if "participation_cap" not in entry:
            self.uncapped_rounds.append((q, z))
            if z > 0:
                one = _gaussian_pld(z, sampling_prob=q)
                self._uncapped = one if self._uncapped is None else self._uncapped.compose(one)
            return
        segment = entry.get("cap_segment")
        lowest = max(self.last_segment, 1)  # segments start at 1 (server/rounds/cap_fields.py)
        if type(segment) is not int or not lowest <= segment <= self.last_segment + 1:
            problems.append(
                f"{where}: cap_segment {segment!r} should be {lowest} or one more (segments start at 1)"
            )
            segment = max(self.last_segment, 1)
        self.last_segment = segment
        self.segments.setdefault(segment, []).append(z)

    def effective_noise(self) -> float:
        """The one Gaussian (noise multiplier) equal to the worst-case composition of the capped rounds."""
        worst = [z for zs in self.segments.values() for z in sorted(zs)[: self.cap]]
        if any(z == 0 for z in worst):
            return 0.0
        precision = sum(z**-2 for z in worst)
        return math.inf if precision == 0 else precision**-0.5

    def epsilon(self, *, delta: float) -> float:
        """The cap bound (PLD) after the rounds added so far."""
        z = self.effective_noise()
        if z == 0 or any(zz == 0 for _, zz in self.uncapped_rounds):
            return math.inf
        parts = [p for p in (self._uncapped, None if math.isinf(z) else _gaussian_pld(z)) if p is not None]
        if not parts:
            return 0.0
        combined = parts[0] if len(parts) == 1 else parts[0].compose(parts[1])
        return float(combined.get_epsilon_for_delta(delta))

    def rdp_epsilon(self, *, delta: float) -> float:
        """The cap bound under dp_accounting's RDP accountant."""
        z = self.effective_noise()
        if z == 0 or any(zz == 0 for _, zz in self.uncapped_rounds):
            return math.inf
        accountant = dp_accounting.rdp.RdpAccountant(neighboring_relation=_ADD_OR_REMOVE)
        if not math.isinf(z):
            accountant.compose(dp_accounting.GaussianDpEvent(z))
        for q, zz in self.uncapped_rounds:
            accountant.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(zz)))
        return float(accountant.get_epsilon(delta))

    def check(
        self, where: str, entry: dict[str, Any], *, poisson: float, delta: float, problems: list[str]
    ) -> float:
        """The claimed bounds of a capped entry against the recomputed ones; returns min(poisson, cap)."""
        cap = self.epsilon(delta=delta)
        if "participation_cap" not in entry:
            return min(poisson, cap)
        for name, recomputed in (("user_epsilon_poisson", poisson), ("user_epsilon_cap", cap)):
            claimed = entry.get(name)
            value = epsilon_value(claimed.get("pld")) if isinstance(claimed, dict) else None
            if value is None:
                problems.append(f'{where}: {name} must hold a PLD epsilon (a number or "inf")')
            elif understated(value, recomputed, EPSILON_RTOL):
                problems.append(
                    f"{where}: claimed {name} {value} but the auditor recomputes {recomputed:.6g} "
                    "(understated)"
                )
            elif overstated(value, recomputed, EPSILON_RTOL):
                self.overstated.append(f"{where}: {name}")
        binding = "cap" if cap < poisson else "poisson"
        claimed = entry.get("epsilon_bound")
        if claimed not in ("cap", "poisson") or (
            claimed != binding and not close(cap, poisson, EPSILON_RTOL)
        ):
            problems.append(f"{where}: epsilon_bound {claimed!r}, but the {binding} bound is the smaller")
        return min(poisson, cap)


def _gaussian_pld(noise_multiplier: float, sampling_prob: float = 1.0) -> pld_lib.PrivacyLossDistribution:
    return pld_lib.from_gaussian_mechanism(
        standard_deviation=noise_multiplier,
        sensitivity=1.0,
        sampling_prob=sampling_prob,
        value_discretization_interval=VALUE_DISCRETIZATION_INTERVAL,
        neighboring_relation=_ADD_OR_REMOVE,
    )


def report_section(
    participation_cap: int | None, *, poisson: float | None, cap: float | None
) -> dict[str, Any] | None:
    """The report's statement of the cap (server/audit/audit_report.py): the cap, both bounds, which one
    binds."""
    if participation_cap is None or poisson is None or cap is None:
        return None
    binding = "cap" if cap < poisson else "poisson"
    return {
        "cap": participation_cap,
        "poisson_bound_pld": "inf" if math.isinf(poisson) else poisson,
        "cap_bound_pld": "inf" if math.isinf(cap) else cap,
        "binding": binding,
        "statement": (
            f"Each device contributes to at most {participation_cap} training rounds per start of the "
            "run and refuses to train after that. Two bounds hold for this mechanism: the Poisson-sampling "
            f"bound over all rounds and the cap bound ({participation_cap} Gaussian rounds without "
            "amplification per start of the run); the reported epsilon is the smaller, here the "
            f"{binding} bound. The cap is enforced by the devices (fedhome's ClientApp); the server only "
            "sees how many sampled devices refused."
        ),
    }
