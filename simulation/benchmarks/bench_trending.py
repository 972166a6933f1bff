"""What one DP trending release costs and how well it ranks, on a shop's training log (no Flower).

    python -m simulation.benchmarks.bench_trending    # the synthetic shop, TrendingConfig defaults
    python -m simulation.benchmarks.bench_trending --set trending.noise_multiplier=5 --draws 50

The mechanism is the one the federated run uses (client/trending_contribution.py +
server/trending/trending_query.py): every user (or a Poisson sample with trending.sample_rate) contributes its
k most recent distinct items of the window before the end of the training log, the sum gets N(0, z_t^2) per
item, counts = noisy sum * sqrt(k) / q_t. Printed: the true counts' size, the user epsilon of one release
alone (PLD, delta = N^-1.1), what it adds to a training run (`--rounds` rounds at `federated.sample_rate`, z
calibrated with and without the release for `privacy.target_epsilon`), and the overlap of the noisy top-20
with the true top-20 over `--draws` draws of sampling and noise.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np

from client.trending_contribution import SECONDS_PER_DAY, TrendingWindow, shard_sum
from server.strategy import poisson_sample
from server.trending.trending_query import noised_counts
from shared.config import FedhomeConfig, with_overrides
from shared.data.source import configured_split
from shared.privacy.accounting import RoundEvent, calibrate_noise_multiplier, default_delta, pld_epsilon
from shared.privacy.noise import GaussianNoise

TOP = 20


def top_overlap(noisy: np.ndarray, true: np.ndarray, k: int = TOP) -> float:
    """|noisy top-k ∩ true top-k| / k (ties in the true counts broken by item index)."""
    true_top = set(np.argsort(-true, kind="stable")[:k].tolist())
    return len(true_top & set(np.argsort(-noisy, kind="stable")[:k].tolist())) / k


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="section.key=value")
    parser.add_argument("--draws", type=int, default=20, help="repetitions of sampling + noise")
    parser.add_argument("--rounds", type=int, default=60, help="training rounds the release is added to")
    args = parser.parse_args(argv)
    config: FedhomeConfig = with_overrides(FedhomeConfig(), dict(o.split("=", 1) for o in args.overrides))
    trending, start = config.trending, time.perf_counter()
    split = configured_split(config.data)
    n_users = split.train.n_users
    window = TrendingWindow(
        as_of_s=int(split.train.timestamps.max()) + 1,
        window_s=trending.window_days * SECONDS_PER_DAY,
        max_items=trending.max_items,
        n_items=split.n_items,
    )
    everyone = np.arange(n_users)
    owners = np.repeat(everyone, split.train.lengths())
    true = shard_sum(split.train, everyone, window) * math.sqrt(trending.max_items)
    noise, rng, overlaps = GaussianNoise(), np.random.default_rng(), []
    for _ in range(args.draws):
        cohort = poisson_sample(n_users, sample_rate=trending.sample_rate, rng=rng)
        result = noised_counts(
            shard_sum(split.train, cohort, window),
            noise=noise,
            noise_multiplier=trending.noise_multiplier,
            sample_rate=trending.sample_rate,
            max_items=trending.max_items,
        )
        overlaps.append(top_overlap(result.counts, true))
    delta = config.privacy.delta or default_delta(n_users)
    release = RoundEvent(sample_rate=trending.sample_rate, noise_multiplier=trending.noise_multiplier)
    common = {
        "target_epsilon": config.privacy.target_epsilon,
        "delta": delta,
        "sample_rate": config.federated.sample_rate,
        "rounds": args.rounds,
    }
    z_alone = calibrate_noise_multiplier(**common)
    z_with = calibrate_noise_multiplier(**common, fixed_events=[release])
    training = [RoundEvent(sample_rate=config.federated.sample_rate, noise_multiplier=z_alone)] * args.rounds
    report = {
        "users": n_users,
        "items": split.n_items,
        "users_in_window": int(np.unique(owners[window.in_window(split.train.timestamps)]).size),
        "true_top20_counts": [int(c) for c in np.sort(true)[::-1][:TOP]],
        "count_noise_std": trending.noise_multiplier * math.sqrt(trending.max_items) / trending.sample_rate,
        "epsilon_one_release_alone": pld_epsilon([release], delta=delta),
        "epsilon_training_alone": pld_epsilon(training, delta=delta),
        "epsilon_training_plus_release_same_z": pld_epsilon([*training, release], delta=delta),
        "z_training_alone": z_alone,
        "z_training_with_release": z_with,
        "top20_overlap_mean": float(np.mean(overlaps)),
        "top20_overlap_min": float(np.min(overlaps)),
        "delta": delta,
        "draws": args.draws,
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
