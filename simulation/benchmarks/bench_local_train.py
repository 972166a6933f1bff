"""Benchmark of one round's local training on a dataset: seconds per Poisson cohort (a benchmark, not a test).

Builds the data, model and `client.training.round_update.LocalTrainer` exactly as a federated run does (via
`simulation.benchmarks.tune_federated.build_replica`), draws a Poisson cohort per round with a fixed seed and
times `LocalTrainer.clipped_sum` on it from the initial parameters, in one process and ONE thread (a real run
splits the cohort over `federated.nodes` nodes, one thread each, so its per-round time is about this
figure divided by the node count, plus Flower's overhead). Optionally profiles one round with
torch.profiler. Nothing per user is printed: only cohort sizes, wall and CPU seconds and the norm of the sum.

    python -m simulation.benchmarks.bench_local_train --dataset ../shared/data/amazon_beauty --rounds 3
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from server.strategy import poisson_sample
from shared.config import FedhomeConfig, with_overrides
from shared.model.params import get_flat
from simulation.benchmarks.tune_federated import build_replica


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--rounds", type=int, default=3, help="cohorts to time (round seeds 1..rounds)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the cohort sampling")
    parser.add_argument("--profile", action="store_true", help="also profile one more round (torch.profiler)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    overrides = dict(o.split("=", 1) for o in args.overrides)
    config: FedhomeConfig = with_overrides(
        FedhomeConfig(), {"data.dataset": args.dataset, "data.cold_item_fraction": "0", **overrides}
    )
    replica = build_replica(config)
    trainer, params = replica.trainer, get_flat(replica.model, replica.layout)
    rng = np.random.default_rng(args.seed)
    n_users, rate = replica.split.full.n_users, config.federated.sample_rate
    clip_norm = config.privacy.clip_norm
    for round_seed in range(1, args.rounds + 1):
        cohort = poisson_sample(n_users, sample_rate=rate, rng=rng)
        start, cpu = time.perf_counter(), time.process_time()
        update = trainer.clipped_sum(params, cohort, round_seed=round_seed, clip_norm=clip_norm)
        seconds = time.perf_counter() - start
        row = {"round": round_seed, "users": update.count, "seconds": round(seconds, 3)}
        row["cpu_s"] = round(time.process_time() - cpu, 3)  # less sensitive to other jobs than wall time
        row["ms_per_user"] = round(1e3 * seconds / max(update.count, 1), 3)
        row["sum_norm"] = float(np.linalg.norm(update.total.astype(np.float64)))
        print(json.dumps(row), flush=True)
    if args.profile:
        cohort = poisson_sample(n_users, sample_rate=rate, rng=rng)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            trainer.clipped_sum(params, cohort, round_seed=args.rounds + 1, clip_norm=clip_norm)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
