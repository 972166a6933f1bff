"""Diagnostics of training from the text-similarity start (benchmark tool behind docs/results.md figures).

python -m simulation.diagnose_start line-search --dataset ../shared/data/amazon_beauty
    one round's mean clipped update (1,100 users, C = 1, no noise) per parameter group, and validation
    NDCG@10 on 2,000 users after stepping the start along each group's part of it
python -m simulation.diagnose_start central-steps --dataset ../shared/data/amazon_beauty
    validation NDCG@10 on 3,000 users every 25 centralised Adam steps (batch 256) for 200 steps
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from client.train import LocalTrainer
from server.catalog import embed_catalogue
from shared.config import FedhomeConfig, TrainConfig, with_overrides
from shared.data.source import configured_split
from shared.data.split import Split
from shared.model import ItemFeatures, TwoTower
from shared.model.params import get_flat, set_flat, trainable_layout
from simulation.evaluate import evaluate
from simulation.train import Trainer, make_scorer

GROUPS = {
    "temperature": ("log_temperature",),
    "up": ("items.up.weight",),
    "bias": ("items.bias.weight",),
    "out_proj": ("users.out_proj.weight", "users.out_proj.bias"),
}
STEPS = (0.03, 0.1, 0.3, 1, 3, 10, 30)


def start_model(dataset: str) -> tuple[FedhomeConfig, Split, TwoTower]:
    config: FedhomeConfig = with_overrides(
        FedhomeConfig(), {"data.dataset": dataset, "data.cold_item_fraction": "0"}
    )
    split = configured_split(config.data)
    table = embed_catalogue(split.dataset.catalogue, config.encoder, progress=False)
    torch.manual_seed(0)
    return (
        config,
        split,
        TwoTower(ItemFeatures.from_catalogue(split.dataset.catalogue, table.vectors), config.model),
    )


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


def central_steps(dataset: str) -> None:
    config, split, model = start_model(dataset)
    trainer = Trainer(model, split.train, split.cold_items, TrainConfig())
    rng = np.random.default_rng(0)
    users = np.sort(rng.choice(split.eval_users, 3000, replace=False))
    order = rng.permutation(trainer.rows.shape[0])
    curve = []
    for step in range(201):
        if step % 25 == 0:
            curve.append((step, valid_ndcg(model, split, config, users)))
            model.train()
        pick = order[step * 256 : (step + 1) * 256]
        trainer.step(trainer.users[pick], trainer.rows[pick])
    print(curve)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["line-search", "central-steps"])
    parser.add_argument("--dataset", required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    (line_search if args.what == "line-search" else central_steps)(args.dataset)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
