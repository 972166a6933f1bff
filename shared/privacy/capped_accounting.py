"""User-level accounting under a participation cap: epsilon = min(Poisson bound, cap bound), both valid.

The mechanism: every round each user is Poisson-sampled with rate q, but a device that has already
contributed to k training rounds of the run refuses (it is simply not in that round's sum). Two bounds
hold for the same mechanism (the argument is written out in docs/federated.md):

- Poisson bound: the usual composition of Poisson-subsampled Gaussian rounds (a capped device is a round
  whose contribution is zero, which the subsampled Gaussian already dominates);
- cap bound: for every fixed draw of the sampling coins a user enters at most k training rounds, each a
  Gaussian mechanism with sensitivity C and noise z C, so the k-fold composition of the Gaussian mechanism
  WITHOUT amplification bounds every draw, and by joint convexity of the hockey-stick divergence the mixture
  over the coins too. Rounds the cap does not limit (RoundEvent.capped False, e.g. trending rounds) enter
  the cap bound with their own Poisson sampling.

Both are bounds on delta(epsilon) of one mechanism at one delta, so their minimum is a bound; the same holds
under each accountant (PLD primary, RDP cross-check), taken separately.

Resumes: a resumed run may restart the devices' counts (a simulated node's context.state does not survive a
new simulation), so each start of the run is a segment in which a user may contribute up to k more rounds;
the cap bound allows min(k, capped rounds of the segment) rounds per segment.

Assumptions: devices run fedhome's ClientApp and honour the cap (the server cannot check a refusal: it sees
only a node's count of refused users); k counts the rounds of one run (run id), not across runs.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from shared.errors import ConfigError, DataError
from shared.privacy.accounting import RoundEvent, UserLevelAccountant, pld_epsilon, rdp_epsilon

Bound = Literal["poisson", "cap"]


def cap_events(events: Sequence[RoundEvent], *, segment_starts: Sequence[int], cap: int) -> list[RoundEvent]:
    """The worst case the cap allows, as events to compose: every uncapped event as it is, and in each
    segment (events[start:next_start]) the min(cap, n) capped events with the smallest noise multipliers as
    Gaussian mechanisms without sampling (sample_rate 1). Composition of Gaussians only grows with each
    round added and with a smaller z, so no other choice of at most `cap` rounds per segment is worse."""
    if cap < 1:
        raise ConfigError(f"a participation cap must be >= 1, got {cap}")
    starts = sorted(set(segment_starts) | {0})
    bounds = [*starts, len(events)]
    worst: list[RoundEvent] = []
    for lo, hi in itertools.pairwise(bounds):
        capped = sorted(e.noise_multiplier for e in events[lo:hi] if e.capped)
        worst.extend(RoundEvent(sample_rate=1.0, noise_multiplier=z, capped=True) for z in capped[:cap])
    return [*(e for e in events if not e.capped), *worst]


def cap_bound(
    events: Sequence[RoundEvent], *, segment_starts: Sequence[int], cap: int, delta: float
) -> dict[str, float]:
    """User-level epsilon at `delta` of the cap bound: {"pld": .., "rdp": ..}."""
    worst = cap_events(events, segment_starts=segment_starts, cap=cap)
    return {"pld": pld_epsilon(worst, delta=delta), "rdp": rdp_epsilon(worst, delta=delta)}


class CappedAccountant(UserLevelAccountant):
    """UserLevelAccountant of a run with participation cap k: `spent()` is the smaller of the two bounds,
    per accountant, and the budget check (`epsilon_if`) uses it too, so a capped run can run more rounds."""

    def __init__(self, *, delta: float, participation_cap: int) -> None:
        super().__init__(delta=delta)
        if participation_cap < 1:
            raise ConfigError(f"participation_cap must be >= 1, got {participation_cap}")
        self.participation_cap = participation_cap
        self.segment_starts: list[int] = [0]

    def new_segment(self) -> None:
        """The run (re)starts here: devices may count their rounds from zero again (a resume)."""
        if self.segment_starts[-1] != len(self.events):
            self.segment_starts.append(len(self.events))

    def bounds(self, events: Sequence[RoundEvent] | None = None) -> dict[Bound, dict[str, float]]:
        """{"poisson": {"pld", "rdp"}, "cap": {"pld", "rdp"}} after `events` (default: the rounds so far)."""
        events = self.events if events is None else events
        poisson = {"pld": pld_epsilon(events, delta=self.delta), "rdp": rdp_epsilon(events, delta=self.delta)}
        cap = cap_bound(
            events, segment_starts=self.segment_starts, cap=self.participation_cap, delta=self.delta
        )
        return {"poisson": poisson, "cap": cap}

    def spent(self) -> dict[str, float]:
        bounds = self.bounds()
        return {name: min(bounds["poisson"][name], bounds["cap"][name]) for name in ("pld", "rdp")}

    def binding(self) -> Bound:
        """Which bound gives the reported PLD epsilon (the Poisson bound on a tie)."""
        bounds = self.bounds()
        return "cap" if bounds["cap"]["pld"] < bounds["poisson"]["pld"] else "poisson"

    def epsilon_if(self, event: RoundEvent) -> float:
        events = [*self.events, event]
        poisson = pld_epsilon(events, delta=self.delta)
        cap = cap_events(events, segment_starts=self.segment_starts, cap=self.participation_cap)
        return min(poisson, pld_epsilon(cap, delta=self.delta))

    def to_dict(self) -> dict[str, Any]:
        state = super().to_dict()
        state.update(participation_cap=self.participation_cap, segment_starts=list(self.segment_starts))
        return state

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CappedAccountant:
        base = UserLevelAccountant.from_dict(data)
        try:
            accountant = cls(delta=base.delta, participation_cap=int(data["participation_cap"]))
            starts = [int(s) for s in data["segment_starts"]]
        except (KeyError, TypeError, ValueError, ConfigError) as exc:
            raise DataError(f"malformed capped accountant state: {exc}") from exc
        if not starts or starts[0] != 0 or starts != sorted(starts) or starts[-1] > len(base.events):
            raise DataError(f"malformed capped accountant state: segment starts {starts}")
        accountant.events, accountant.segment_starts = base.events, starts
        return accountant


def make_accountant(*, delta: float, participation_cap: int) -> UserLevelAccountant:
    """The run's accountant: capped when participation_cap >= 1, the plain Poisson one when it is 0."""
    if participation_cap == 0:
        return UserLevelAccountant(delta=delta)
    return CappedAccountant(delta=delta, participation_cap=participation_cap)


def accountant_from_dict(data: Mapping[str, Any]) -> UserLevelAccountant:
    """The accountant saved by either class's `to_dict`."""
    if "participation_cap" in data:
        return CappedAccountant.from_dict(data)
    return UserLevelAccountant.from_dict(data)


def individual_epsilon(noise_multipliers: Sequence[float], *, delta: float) -> float:
    """One user's own bound, given the rounds they actually took part in (their receipts): the composition
    of those rounds' Gaussian mechanisms without amplification, at `delta` (PLD). It holds conditionally on
    the sampling coins (who took part when), which are independent of the data; it is no bound for other
    users, and it ignores rounds the cap does not limit (trending). 0 rounds: 0."""
    events = [RoundEvent(sample_rate=1.0, noise_multiplier=z, capped=True) for z in noise_multipliers]
    return pld_epsilon(events, delta=delta)
