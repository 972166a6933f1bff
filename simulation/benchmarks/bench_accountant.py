"""What the user-level accountant costs a federated run, round by round (a benchmark, not a test).

`python -m simulation.benchmarks.bench_accountant --rounds 500 --sample-rate 0.05 --noise-multiplier 0.955`
does what the coordinator does each round (the budget check `epsilon_if`, then `record` and `spent()` for the
ledger entry) for that many rounds on a fresh accountant, and prints the total and the per-round cost at the
start and the end of the run, the PLD epsilon the run reached, then the cost of one `spent()` with every cache
cleared (a resumed run's first).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import NamedTuple

from shared.privacy import accounting
from shared.privacy.accounting import RoundEvent, UserLevelAccountant, default_delta


class RoundCost(NamedTuple):
    seconds: float  # the round's epsilon_if + record + spent()
    epsilon: float  # PLD epsilon spent after the round (what the ledger entry records)


def round_costs(*, rounds: int, sample_rate: float, noise_multiplier: float, delta: float) -> list[RoundCost]:
    """Each round's cost and the epsilon spent after it, one row a round."""
    acc = UserLevelAccountant(delta=delta)
    event = RoundEvent(sample_rate=sample_rate, noise_multiplier=noise_multiplier)
    costs: list[RoundCost] = []
    for _ in range(rounds):
        start = time.perf_counter()
        acc.epsilon_if(event)
        acc.record(event)
        spent = acc.spent()
        costs.append(RoundCost(time.perf_counter() - start, spent["pld"]))
    return costs


def cold_spent(*, rounds: int, sample_rate: float, noise_multiplier: float, delta: float) -> float:
    """Seconds of one spent() after `rounds` rounds with no cached composition."""
    for cached in (
        accounting._pld_epsilon_of_runs,
        accounting._round_pld,
        accounting._gaussian_pld,
        accounting._rdp_epsilon_of_runs,
        accounting._round_rdp,
    ):
        cached.cache_clear()
    acc = UserLevelAccountant(delta=delta)
    acc.events.extend([RoundEvent(sample_rate=sample_rate, noise_multiplier=noise_multiplier)] * rounds)
    start = time.perf_counter()
    acc.spent()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=500)
    parser.add_argument("--sample-rate", type=float, default=0.05)
    parser.add_argument("--noise-multiplier", type=float, default=0.955)
    parser.add_argument("--population", type=int, default=22_332, help="delta = population^-1.1")
    args = parser.parse_args(argv)
    terms = {
        "rounds": args.rounds,
        "sample_rate": args.sample_rate,
        "noise_multiplier": args.noise_multiplier,
        "delta": default_delta(args.population),
    }
    rows = round_costs(**terms)
    costs = [row.seconds for row in rows]
    tenth = max(1, len(costs) // 10)
    print(f"{args.rounds} rounds: {sum(costs):.2f} s in all, {1e3 * sum(costs) / len(costs):.1f} ms a round")
    print(
        f"median of the first tenth {1e3 * statistics.median(costs[:tenth]):.1f} ms, "
        f"of the last tenth {1e3 * statistics.median(costs[-tenth:]):.1f} ms"
    )
    print(f"epsilon spent after {args.rounds} rounds: {rows[-1].epsilon:.4f} (PLD)")
    print(f"one spent() after {args.rounds} rounds, caches cleared: {cold_spent(**terms):.3f} s")


if __name__ == "__main__":
    main()
