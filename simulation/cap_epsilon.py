"""User-level epsilon with and without a participation cap, from the accountant alone (no training).

`python -m simulation.cap_epsilon --population 3000 --sample-rate 0.05 --rounds 60 --epsilon 8` calibrates z
as `fedhome-sim federated` does (PLD, Poisson sampling, delta = N^-1.1 unless --delta), then prints for each
cap k: the Poisson bound and the cap bound after the rounds, the reported epsilon (the smaller), which one
binds, and whether the budget check would ever stop a capped run (when the cap bound of k rounds stays
below the budget, the reported epsilon never exceeds it, however many rounds run).
"""

from __future__ import annotations

import argparse

from shared.privacy.accounting import RoundEvent, calibrate_noise_multiplier, default_delta, pld_epsilon
from shared.privacy.capped_accounting import cap_bound


def rows(
    *, population: int, sample_rate: float, rounds: int, epsilon: float, delta: float, caps: list[int]
) -> tuple[float, list[dict[str, object]]]:
    """(z, one row per cap): the bounds after `rounds` rounds at the calibrated z."""
    z = calibrate_noise_multiplier(
        target_epsilon=epsilon, delta=delta, sample_rate=sample_rate, rounds=rounds
    )
    events = [RoundEvent(sample_rate=sample_rate, noise_multiplier=z, capped=True)] * rounds
    poisson = pld_epsilon(events, delta=delta)
    out: list[dict[str, object]] = []
    for cap in caps:
        capped = cap_bound(events, segment_starts=[0], cap=cap, delta=delta)["pld"]
        out.append(
            {
                "cap": cap,
                "poisson": poisson,
                "cap_bound": capped,
                "reported": min(poisson, capped),
                "binding": "cap" if capped < poisson else "poisson",
                "unlimited_rounds": capped <= epsilon,
            }
        )
    return z, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--population", type=int, default=3000)
    parser.add_argument("--sample-rate", type=float, default=0.05)
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--epsilon", type=float, default=8.0)
    parser.add_argument("--delta", type=float, default=0.0, help="0: N^-1.1")
    parser.add_argument("--caps", default="1,2,3,5,10,20")
    args = parser.parse_args(argv)
    delta = args.delta or default_delta(args.population)
    caps = [int(c) for c in args.caps.split(",")]
    z, table = rows(
        population=args.population,
        sample_rate=args.sample_rate,
        rounds=args.rounds,
        epsilon=args.epsilon,
        delta=delta,
        caps=caps,
    )
    print(f"N {args.population}, q {args.sample_rate}, T {args.rounds}, delta {delta:.3g}, z {z:.4f}")
    print("| cap k | Poisson bound | cap bound | reported epsilon | binds | budget ever stops the run |")
    print("|---|---|---|---|---|---|")
    for row in table:
        stops = "no" if row["unlimited_rounds"] else "yes (as without a cap)"
        print(
            f"| {row['cap']} | {row['poisson']:.3f} | {row['cap_bound']:.3f} | {row['reported']:.3f} "
            f"| {row['binding']} | {stops} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
