"""How a model's gain over its text start depends on how far the test target lies after the training rows.

    python -m simulation.benchmarks.bench_gain_by_gap --runs runs/quality/amazon_beauty/federated-8-seed0 \\
        runs/quality/amazon_beauty/federated-none-seed0 [--json out.json]

The shop, its split and its settings are the first run's (its config.json); every model is scored on the
same test targets by the harness (simulation/evaluate.py), and each user's NDCG@10 is grouped two ways:
- by the user's own gap: the test target's time minus the time of the user's last TRAINING row (the rows
  the federated runs trained on; the central model's refit also saw the validation row in between);
- by calendar time: the test target's time in quarters of all the test targets' times (late quarters lie
  furthest after most training rows, where a model that learnt the training period's popularity ages).
Models: popularity (counted on train + validation rows, as the harness's test scorer), text similarity (the
start), the centralised two-tower (trained here with the run's settings: epochs chosen on validation, refit
on train + validation rows, as `fedhome-sim run` does; seed `--central-seed`), and each run's final model
(its ledger verified with the run's own public key, server/releases/release_builder.py load_run). Per group
it prints the users, each model's NDCG@10 and each federated model's share of the central gain over text.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from server.releases.release_builder import load_run
from shared.config import from_flat, with_overrides
from shared.signing import load_public_key
from simulation.central_training import make_scorer
from simulation.evaluate import EvalResult, evaluate
from simulation.run import Prepared, fit_popularity, fit_text, fit_two_tower, prepare

DAY_S = 86_400
GAP_BOUNDS_DAYS = (1, 7, 30, 180)  # gap groups: <= 1 day, <= 7, <= 30, <= 180, more
QUARTERS = 4


def per_user_ndcg(result: EvalResult) -> dict[int, float]:
    """User -> NDCG@10 of the test target (0-based ranks, as metrics_from_ranks)."""
    ndcg = np.where(result.ranks < 10, 1.0 / np.log2(result.ranks + 2.0), 0.0)
    return dict(zip(result.users.tolist(), ndcg.tolist(), strict=True))


def groups(prep: Prepared, users: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    """The users of each gap group and each calendar quarter."""
    split = prep.split
    target_time = split.full.timestamps[split.history_end("test")[users]]  # the target row, in `full`
    train = split.train
    if (train.lengths()[users] == 0).any():
        raise RuntimeError("an evaluated user has no training row (cold items removed all of them)")
    last_train = train.timestamps[train.offsets[users + 1] - 1]
    gap_days = (target_time - last_train) / DAY_S
    edges = np.asarray(GAP_BOUNDS_DAYS, dtype=np.float64)
    gap_group = np.searchsorted(edges, gap_days, side="left")
    labels = [f"<= {b} d" for b in GAP_BOUNDS_DAYS] + [f"> {GAP_BOUNDS_DAYS[-1]} d"]
    by_gap = {label: users[gap_group == g] for g, label in enumerate(labels)}
    cuts = np.quantile(target_time, np.linspace(0, 1, QUARTERS + 1)[1:-1])
    quarter = np.searchsorted(cuts, target_time, side="right")
    by_time = {f"quarter {q + 1} of test time": users[quarter == q] for q in range(QUARTERS)}
    return {"gap since the user's last training row": by_gap, "calendar time of the test target": by_time}


def table(
    ndcg: dict[str, dict[int, float]], grouping: dict[str, np.ndarray], runs: list[str]
) -> list[dict[str, Any]]:
    rows = []
    for label, members in grouping.items():
        row: dict[str, Any] = {"group": label, "users": len(members)}
        for name, values in ndcg.items():
            row[name] = (
                float(np.mean([values[u] for u in members.tolist()])) if len(members) else float("nan")
            )
        gain = row["central"] - row["text"]
        for run in runs:
            row[f"{run} share"] = (row[run] - row["text"]) / gain if len(members) and gain > 0 else None
        rows.append(row)
    return rows


def cell(name: str, value: float | None) -> str:
    if value is None or np.isnan(value):
        return "n/a"
    return f"{value:.0%}" if name.endswith("share") else f"{value:.4f}"


def markdown(title: str, rows: list[dict[str, Any]]) -> str:
    names = [k for k in rows[0] if k not in ("group", "users")]
    lines = [
        f"**{title}**",
        "",
        "| group | users | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    for row in rows:
        cells = [cell(n, row[n]) for n in names]
        lines.append(f"| {row['group']} | {row['users']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--runs", type=Path, nargs="+", required=True, help="federated run folders of one shop"
    )
    parser.add_argument("--central-seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    config = from_flat(json.loads((args.runs[0] / "config.json").read_text()))
    config = with_overrides(config, {"train.seed": str(args.central_seed)})
    start = time.perf_counter()
    prep = prepare(config, progress=False)
    scorers = {
        "popularity": fit_popularity(prep)[1],
        "text": fit_text(prep)[1],
        "central": fit_two_tower(prep)[1],
    }
    print(f"central trained in {time.perf_counter() - start:.0f} s", flush=True)
    names = []
    for run in args.runs:
        model, _, _ = load_run(run, load_public_key(run / "ledger_public_key.pem"))
        scorers[run.name] = make_scorer(model, prep.split)
        names.append(run.name)
    results = {name: evaluate(prep.split, s, stage="test", config=config.eval) for name, s in scorers.items()}
    ndcg = {name: per_user_ndcg(r) for name, r in results.items()}
    users = results["text"].users
    if any(not np.array_equal(r.users, users) for r in results.values()):
        raise RuntimeError("the models were evaluated on different users")
    overall = {name: round(r.overall.ndcg_10, 5) for name, r in results.items()}
    out: dict[str, Any] = {"dataset": prep.dataset.name, "overall_test_ndcg_10": overall, "groups": {}}
    for title, grouping in groups(prep, users).items():
        rows = table(ndcg, grouping, names)
        out["groups"][title] = rows
        print(markdown(title, rows) + "\n", flush=True)
    print(json.dumps(overall))
    print(f"{time.perf_counter() - start:.0f} s in all")
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
