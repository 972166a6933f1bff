"""Benchmark of the synthetic shop: generation time and peak memory, and a quick check that it is learnable.

    python -m simulation.benchmarks.bench_synthetic --n-users 1000000           # CSV, time + peak RSS
    python -m simulation.benchmarks.bench_synthetic --n-users 3000 --in-memory  # generate_shop, no CSV
    python -m simulation.benchmarks.bench_synthetic --n-users 3000 --proxy      # learnability (NDCG@10)

The proxy compares, under the leave-one-out protocol with the evaluation harness, plain popularity with
"items of the same sub-category as the user's last item, by popularity": a model that uses the user's
recent items must clearly beat popularity on this shop.
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from shared.config import DataConfig, EvalConfig, SyntheticShopConfig
from shared.data.split import Split, Stage, leave_one_out
from shared.data.synthetic import generate_shop, write_shop_csv
from simulation.evaluate import EvalResult, evaluate


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def popularity_scores(split: Split) -> np.ndarray:
    """(n_items,) training interaction counts."""
    return np.bincount(split.train.items, minlength=split.n_items).astype(np.float64)


def run_proxy(
    config: SyntheticShopConfig, *, cold_item_fraction: float
) -> tuple[dict[str, EvalResult], np.ndarray]:
    """Test-stage results of popularity and same-leaf popularity on the shop `config` describes, and a
    mask over the evaluated users (in evaluation order) of those whose test item is not in their history."""
    dataset = generate_shop(config)
    split = leave_one_out(dataset, cold_item_fraction=cold_item_fraction, seed=0)
    pop = popularity_scores(split)
    ranked = pop / (pop.max() + 1.0)  # in [0, 1): a same-leaf bonus of 1 dominates it
    _, leaf = np.unique(np.asarray(dataset.catalogue.categories), return_inverse=True)

    def popularity(users: np.ndarray, stage: Stage) -> np.ndarray:
        return np.broadcast_to(ranked, (users.shape[0], split.n_items)).copy()

    def same_leaf(users: np.ndarray, stage: Stage) -> np.ndarray:
        last = split.full.items[split.history_end(stage)[users] - 1]
        return ranked[None, :] + (leaf[None, :] == leaf[last][:, None])

    eval_config = EvalConfig()
    results = {
        name: evaluate(split, scorer, stage="test", config=eval_config)
        for name, scorer in (("popularity", popularity), ("same sub-category, by popularity", same_leaf))
    }
    users = split.eval_users
    fresh = np.array(
        [
            split.test_target[u] not in split.full.items[split.full.offsets[u] : split.history_end("test")[u]]
            for u in users.tolist()
        ],
        dtype=bool,
    )
    return results, fresh


def run_generation(config: SyntheticShopConfig, *, in_memory: bool, folder: Path | None) -> None:
    start = time.perf_counter()
    if in_memory:
        dataset = generate_shop(config)
        rows = dataset.log.n_rows
        where = "in memory"
    else:
        with tempfile.TemporaryDirectory() as tmp:
            target = folder or Path(tmp)
            report = write_shop_csv(config, target, progress=sys.stderr.isatty())
            rows = report.n_rows
            size_mib = (report.items_path.stat().st_size + report.interactions_path.stat().st_size) / 2**20
            where = f"CSV in {target} ({size_mib:.0f} MiB)"
    elapsed = time.perf_counter() - start
    print(f"users {config.n_users:,}  items {config.n_items:,}  interactions {rows:,}  ({where})")
    print(f"generation time {elapsed:.1f} s  peak RSS {peak_rss_mib():.0f} MiB")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n-users", type=int, default=SyntheticShopConfig.n_users)
    parser.add_argument("--n-items", type=int, default=SyntheticShopConfig.n_items)
    parser.add_argument("--seed", type=int, default=SyntheticShopConfig.seed)
    parser.add_argument(
        "--in-memory", action="store_true", help="time generate_shop instead of write_shop_csv"
    )
    parser.add_argument("--folder", type=Path, help="keep the CSV files here (default: a temporary folder)")
    parser.add_argument("--proxy", action="store_true", help="report the learnability proxy instead")
    args = parser.parse_args(argv)
    config = dataclasses.replace(
        SyntheticShopConfig(), n_users=args.n_users, n_items=args.n_items, seed=args.seed
    )
    if not args.proxy:
        run_generation(config, in_memory=args.in_memory, folder=args.folder)
        return
    cold = DataConfig().cold_item_fraction
    results, fresh = run_proxy(config, cold_item_fraction=cold)
    print(
        f"{config.n_users:,} users, {config.n_items:,} items; test targets not seen before: {fresh.sum():,}"
    )
    for name, result in results.items():
        o, c = result.overall, result.cold
        ndcg = np.where(result.ranks < 10, 1.0 / np.log2(result.ranks + 2.0), 0.0)
        print(
            f"{name:34s} test NDCG@10 {o.ndcg_10:.4f}  HR@10 {o.hr_10:.4f}  "
            f"unseen-target NDCG@10 {ndcg[fresh].mean():.4f}  "
            f"cold-slice NDCG@10 {c.ndcg_10:.4f} ({c.n_users} users)"
        )


if __name__ == "__main__":
    main()
