"""Diagnostics of training from the text-similarity start (benchmark tool behind docs/results.md figures).

python -m simulation.benchmarks.diagnose_start line-search --dataset ../shared/data/amazon_beauty
    one round's mean clipped update (1,100 users, C = 1, no noise) per parameter group, and validation
    NDCG@10 on 2,000 users after stepping the start along each group's part of it
python -m simulation.benchmarks.diagnose_start central-steps --dataset ../shared/data/amazon_beauty \
        [--batch 256] [--lr 1e-3] [--out-proj-lr LR] [--steps 200] [--every 25] [--negatives N --alpha A]
        [--set model.KEY=VALUE ...]
    validation NDCG@10 on 3,000 users every `every` centralised Adam steps (random batches), optionally
    with a separate learning rate for the user tower's read-out (users.out_proj) and other negatives
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from client.training.round_update import LocalTrainer
from server.embedding.catalogue_embedding import embed_catalogue
from shared.config import FedhomeConfig, TrainConfig, with_overrides
from shared.data.source import configured_split
from shared.data.split import Split
from shared.model import ItemFeatures, TwoTower
from shared.model.features import popularity_from_counts, recent_item_counts
from shared.model.params import get_flat, set_flat, trainable_layout
from shared.run_folder import RunFolder
from simulation.central_training import Trainer, make_scorer, with_counted_popularity
from simulation.evaluate import evaluate
from simulation.federated import load_final_model

GROUPS = {
    "temperature": ("log_temperature",),
    "up": ("items.up.weight",),
    "bias": ("items.bias.weight",),
    "out_proj": ("users.out_proj.weight", "users.out_proj.bias"),
}
STEPS = (0.03, 0.1, 0.3, 1, 3, 10, 30)


def start_model(
    dataset: str, overrides: dict[str, str] | None = None
) -> tuple[FedhomeConfig, Split, TwoTower]:
    config: FedhomeConfig = with_overrides(
        FedhomeConfig(), {"data.dataset": dataset, "data.cold_item_fraction": "0", **(overrides or {})}
    )
    split = configured_split(config.data)
    table = embed_catalogue(split.dataset.catalogue, config.encoder, progress=False)
    torch.manual_seed(0)
    features = ItemFeatures.from_catalogue(split.dataset.catalogue, table.vectors)
    features = with_counted_popularity(features, split.train, config.model)
    return config, split, TwoTower(features, config.model)


def valid_ndcg(model: TwoTower, split: Split, config: FedhomeConfig, users: np.ndarray) -> float:
    result = evaluate(split, make_scorer(model, split), stage="valid", config=config.eval, users=users)
    return round(result.overall.ndcg_10, 4)


def line_search(dataset: str) -> None:
    config, split, model = start_model(dataset)
    layout = trainable_layout(model, config.federated.trainable)
    trainer = LocalTrainer(
        model, split.train, layout=layout, blocked=split.cold_items, config=config.federated
    )
    start = get_flat(model, layout)
    rng = np.random.default_rng(0)
    cohort = np.sort(rng.choice(split.full.n_users, 1100, replace=False))
    mean = trainer.clipped_sum(start, cohort, round_seed=1, clip_norm=1.0).total / cohort.size
    print("clipped mean update norm", float(np.linalg.norm(mean)))
    users = np.sort(rng.choice(split.eval_users, 2000, replace=False))

    def at(params: np.ndarray) -> float:
        set_flat(model, layout, params)
        return valid_ndcg(model, split, config, users)

    print("start", at(start))
    offsets = np.concatenate([[0], np.cumsum(layout.sizes)])
    where = {name: (offsets[i], offsets[i + 1]) for i, name in enumerate(layout.names)}
    for group, names in GROUPS.items():
        part = np.zeros_like(mean)
        for name in names:
            lo, hi = where[name]
            part[lo:hi] = mean[lo:hi]
        print(group, f"norm {np.linalg.norm(part):.3f}", [(step, at(start + step * part)) for step in STEPS])


def central_steps(dataset: str, args: argparse.Namespace) -> None:
    config, split, model = start_model(dataset, dict(o.split("=", 1) for o in args.overrides))
    train = TrainConfig(batch_size=args.batch, n_negatives=args.negatives, negative_alpha=args.alpha)
    trainer = Trainer(model, split.train, split.cold_items, train)
    out_proj = [p for n, p in model.named_parameters() if n.startswith("users.out_proj")]
    rest = [p for n, p in model.named_parameters() if not n.startswith("users.out_proj")]
    trainer.optimizer = torch.optim.Adam(
        [{"params": rest, "lr": args.lr}, {"params": out_proj, "lr": args.out_proj_lr or args.lr}]
    )
    rng = np.random.default_rng(0)
    users = np.sort(rng.choice(split.eval_users, 3000, replace=False))
    curve = []
    for step in range(args.steps + 1):
        if step % args.every == 0:
            curve.append((step, valid_ndcg(model, split, config, users)))
            model.train()
        pick = rng.choice(trainer.rows.shape[0], args.batch, replace=False)
        trainer.step(trainer.users[pick], trainer.rows[pick])
    print(curve)


def prior_swap(dataset: str, run: Path, noise_multiplier: float) -> None:
    config: FedhomeConfig = with_overrides(
        FedhomeConfig(), {"data.dataset": dataset, "data.cold_item_fraction": "0"}
    )
    split = configured_split(config.data)
    model = load_final_model(config, split, RunFolder(run))
    k = config.model.popularity_items_per_user
    counts = recent_item_counts(split.train_and_valid(), split.n_items, items_per_user=k)
    noise = np.random.default_rng(5).normal(0.0, noise_multiplier * np.sqrt(k), counts.shape)
    priors = {
        "the run's prior": model.items.popularity.numpy().copy(),
        "zero prior": np.zeros(split.n_items, np.float32),
        f"train + valid counts, z {noise_multiplier}": popularity_from_counts(counts + noise),
    }
    for name, prior in priors.items():
        model.items.set_popularity(prior)
        scorer = make_scorer(model, split)
        figures = [
            round(evaluate(split, scorer, stage=stage, config=config.eval).overall.ndcg_10, 4)
            for stage in ("valid", "test")
        ]
        print(f"{name}: valid {figures[0]}, test {figures[1]}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["line-search", "central-steps", "prior-swap"])
    parser.add_argument("--run", type=Path, default=None, help="prior-swap: the federated run folder")
    parser.add_argument(
        "--prior-noise", type=float, default=2.0, help="prior-swap: z of the refreshed counts"
    )
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--out-proj-lr", type=float, default=None, help="users.out_proj lr (default: --lr)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--every", type=int, default=25)
    parser.add_argument("--negatives", type=int, default=2048)
    parser.add_argument(
        "--alpha", type=float, default=0.75, help="negatives ~ (count + 1)^alpha; 0 = uniform"
    )
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="model settings"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.what == "line-search":
        line_search(args.dataset)
    elif args.what == "prior-swap":
        if args.run is None:
            parser.error("prior-swap needs --run")
        prior_swap(args.dataset, args.run, args.prior_noise)
    else:
        central_steps(args.dataset, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
