"""A fast in-process replica of the federated round loop, for tuning (a benchmark tool, not the product).

Same pieces as a real run (client.training.round_update.LocalTrainer, the server's Poisson sampling,
UserLevelDPAggregator and server optimiser, update scales) without Flower, Ray, the ledger or checkpoints, in
one process and one thread, so several settings can be compared side by side on the 2-core machines. It prints
validation NDCG@10 on a fixed subset of 3,000 users every `--every` rounds. Figures from it are labelled as
such in docs/results.md; the reported results come from `fedhome-sim federated`.

    python -m simulation.benchmarks.tune_federated --dataset ../shared/data/amazon_beauty --rounds 60 \
        --noise-multiplier 0.956 --set federated.server_learning_rate=0.001
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass

import numpy as np
import torch

from client.training.round_update import LocalTrainer
from server.embedding.catalogue_embedding import embed_catalogue
from server.strategy import UserLevelDPAggregator, make_server_optimizer, poisson_sample
from shared.config import FedhomeConfig, with_overrides
from shared.data.source import configured_split
from shared.data.split import Split
from shared.model import ItemFeatures, TwoTower
from shared.model.features import popularity_from_counts, recent_item_counts
from shared.model.params import ParamLayout, get_flat, scale_vector, set_flat, trainable_layout
from shared.privacy.noise import GaussianNoise
from simulation.central_training import make_scorer
from simulation.evaluate import evaluate

PROGRESS_USERS = 3_000


@dataclass(frozen=True)
class Replica:
    """The pieces of a federation in one process: data, model, trained layout, local trainer, scales."""

    split: Split
    model: TwoTower
    layout: ParamLayout
    trainer: LocalTrainer
    scale: np.ndarray  # (dim,) theta = scale * phi (FederatedConfig.update_scales)


def build_replica(config: FedhomeConfig, *, popularity_noise: float = 0.0) -> Replica:
    """With `model.popularity_prior`, the prior comes from the exact recent-item counts plus the noise of a
    DP count release with noise multiplier `popularity_noise` (std popularity_noise * sqrt(k) per count, the
    trending estimator's at q = 1); the replica draws that noise itself, nothing is accounted here."""
    split = configured_split(config.data)
    table = embed_catalogue(split.dataset.catalogue, config.encoder, progress=False)
    torch.manual_seed(config.federated.seed)
    features = ItemFeatures.from_catalogue(split.dataset.catalogue, table.vectors)
    if config.model.popularity_prior:
        k = config.model.popularity_items_per_user
        counts = recent_item_counts(split.train, split.n_items, items_per_user=k)
        noise = np.random.default_rng(2).normal(0.0, popularity_noise * np.sqrt(k), counts.shape)
        features = features.with_popularity(popularity_from_counts(counts + noise))
    model = TwoTower(features, config.model)
    layout = trainable_layout(model, config.federated.trainable)
    trainer = LocalTrainer(
        model, split.train, layout=layout, blocked=split.cold_items, config=config.federated
    )
    return Replica(split, model, layout, trainer, scale_vector(layout, config.federated.update_scales))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--noise-multiplier", type=float, default=0.0, help="z; 0 = clipping only")
    parser.add_argument(
        "--popularity-noise", type=float, default=0.0, help="z of the popularity prior's count release"
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    overrides = dict(o.split("=", 1) for o in args.overrides)
    config: FedhomeConfig = with_overrides(
        FedhomeConfig(), {"data.dataset": args.dataset, "data.cold_item_fraction": "0", **overrides}
    )
    replica = build_replica(config, popularity_noise=args.popularity_noise)
    split, model, layout, trainer, scale = (
        replica.split,
        replica.model,
        replica.layout,
        replica.trainer,
        replica.scale,
    )
    aggregator = UserLevelDPAggregator(
        population=split.full.n_users,
        sample_rate=config.federated.sample_rate,
        noise_multiplier=args.noise_multiplier,
        clip_norm=config.privacy.clip_norm,
        mode="central" if args.noise_multiplier > 0 else "none",
        noise=GaussianNoise(seed=1),
    )
    optimizer = make_server_optimizer(config.federated)
    rng = np.random.default_rng(0)
    users = np.sort(rng.choice(split.eval_users, min(PROGRESS_USERS, split.eval_users.size), replace=False))

    def ndcg(params: np.ndarray) -> float:
        set_flat(model, layout, params)
        scorer = make_scorer(model, split)
        result = evaluate(split, scorer, stage="valid", config=config.eval, users=users)
        return round(result.overall.ndcg_10, 4)

    params = get_flat(model, layout)
    curve, start = [(0, ndcg(params))], time.perf_counter()
    for round_number in range(1, args.rounds + 1):
        cohort = poisson_sample(split.full.n_users, sample_rate=config.federated.sample_rate, rng=rng)
        update = trainer.clipped_sum(params, cohort, round_seed=round_number, clip_norm=aggregator.clip_norm)
        result = aggregator.aggregate(
            update.total.astype(np.float64), count=update.count, unclipped_count=update.unclipped_count
        )
        params = scale * optimizer.step(params / scale, result.mean_update)
        if round_number % args.every == 0:
            curve.append((round_number, ndcg(params)))
    seconds = time.perf_counter() - start
    print(json.dumps({"settings": overrides, "z": args.noise_multiplier, "curve": curve, "seconds": seconds}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
