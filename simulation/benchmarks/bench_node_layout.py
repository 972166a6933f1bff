"""Benchmark: the same federated rounds with shards against one device per Flower node, on user subsets.

Flower 1.42's simulation engine cannot host one node per user for all 22,332 Beauty users (its in-memory
link state walks every stored message for every node: docs/results.md), so this measures the ratio on
the first K users of a dataset (their interactions in the dataset's own order, the whole item catalogue,
so the model is the full one). For each K it runs `fedhome-sim federated` twice with the same seeds (the
same Poisson cohorts), once with `federated.nodes` shard nodes and once with K one-user nodes, and prints
per-round seconds (median and range from each run's metrics.jsonl, the first round left out), the run's
wall time and the rest of it (`other_s`: start-up, the population query, the final evaluation). A benchmark,
not a test: nothing per user is printed.

    python -m simulation.benchmarks.bench_node_layout --dataset ../shared/data/amazon_beauty --users 2000 4000
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

INTERACTIONS = "interactions.csv"
ITEMS = "items.csv"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, help="a folder with interactions.csv and items.csv")
    parser.add_argument("--users", type=int, nargs="+", default=[2000], help="subset sizes K")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sample-rate", type=float, default=0.05, help="q (cohort ~ q * K)")
    parser.add_argument("--noise-multiplier", type=float, default=0.955)
    parser.add_argument("--work", type=Path, default=None, help="where subsets and runs go (default: temp)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    return parser.parse_args(argv)


def write_subset(dataset: Path, users: int, out: Path) -> int:
    """The first `users` users of `dataset` (all their rows, in order) and its whole item file; returns
    the number of interactions written."""
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(dataset / ITEMS, out / ITEMS)
    kept: set[str] = set()
    rows = 0
    with (dataset / INTERACTIONS).open(newline="") as src, (out / INTERACTIONS).open("w", newline="") as dst:
        reader, writer = csv.reader(src), csv.writer(dst)
        writer.writerow(next(reader))
        for row in reader:
            if row[0] not in kept:
                if len(kept) == users:
                    continue
                kept.add(row[0])
            writer.writerow(row)
            rows += 1
    if len(kept) < users:
        raise SystemExit(f"{dataset} has only {len(kept)} users, asked for {users}")
    return rows


def run(subset: Path, out: Path, layout: str, args: argparse.Namespace) -> dict[str, object]:
    command = [
        sys.executable, "-m", "simulation.sim_cli", "federated",
        "--dataset", str(subset), "--rounds", str(args.rounds), "--no-progress", "--out", str(out),
        "--set", "data.cold_item_fraction=0", "--set", "federated.eval_every=0",
        "--set", f"federated.sample_rate={args.sample_rate}",
        "--set", f"privacy.noise_multiplier={args.noise_multiplier}", "--set", "privacy.seed=3",
        "--set", f"federated.devices_per_node={layout}",
        *[part for o in args.overrides for part in ("--set", o)],
    ]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rounds = [m for m in metrics if "seconds" in m and "cohort" in m]
    later = [float(m["seconds"]) for m in rounds[1:]] or [float(rounds[0]["seconds"])]
    return {
        "layout": layout,
        "cohorts": [int(m["cohort"]) for m in rounds],
        "round_s_median": round(statistics.median(later), 3),
        "round_s_range": [round(min(later), 3), round(max(later), 3)],
        "wall_s": round(wall, 1),
        "rounds_s": round(sum(float(m["seconds"]) for m in rounds), 1),
        "other_s": round(wall - sum(float(m["seconds"]) for m in rounds), 1),  # start-up, population, eval
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    dataset = Path(args.dataset)
    if not (dataset / INTERACTIONS).is_file():
        raise SystemExit(f"{dataset} has no {INTERACTIONS} (the benchmark data is not on this machine?)")
    work = args.work or Path(tempfile.mkdtemp(prefix="fedhome-node-layout-"))
    for users in args.users:
        subset = work / f"subset-{users}"
        interactions = write_subset(dataset, users, subset)
        results = [run(subset, work / f"run-{users}-{layout}", layout, args) for layout in ("shard", "one")]
        shard, one = results
        for result in results:
            print(json.dumps({"users": users, "interactions": interactions, **result}), flush=True)
        ratio = float(one["round_s_median"]) / float(shard["round_s_median"])  # type: ignore[arg-type]
        print(json.dumps({"users": users, "ratio_round_s_median": round(ratio, 1)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
