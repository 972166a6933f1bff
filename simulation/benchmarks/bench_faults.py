"""The federation under faults: clean, dropouts and malicious nodes, in the clear and with secure aggregation.

Each case is a real Flower simulation of the synthetic shop with the same seeds and rounds as its clean
run (simulation/fault_injection.py injects the faults); the table gives each case's final test NDCG@10, its
change against the clean run of the same aggregation, the rounds that completed, how many secure rounds
failed (noise alone released), and the rejections the run summary counted, by reason.

    python -m simulation.benchmarks.bench_faults [--users 3000] [--rounds 5] [--nodes 10] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.config import FedhomeConfig, with_overrides
from shared.data.source import configured_split
from shared.run_folder import RunFolder
from simulation.fault_injection import STAGES, FaultPlan, Stage, faulty_apps
from simulation.federated import run_federated


def node_dropout(seed: int, stage: Stage) -> FaultPlan:
    return FaultPlan(seed=seed, node_dropout=0.3, node_dropout_stages=(stage,))


@dataclass(frozen=True)
class Case:
    name: str
    secure: bool
    plan: FaultPlan | None  # None: the clean run


def cases(seed: int) -> list[Case]:
    """Clean, 30% dropouts, 5% malicious nodes; with secure aggregation the nodes also drop at each stage."""
    out = []
    for secure in (False, True):
        out += [
            Case("clean", secure, None),
            Case("30% devices drop", secure, FaultPlan(seed=seed, device_dropout=0.3)),
            Case("5% malicious nodes", secure, FaultPlan(seed=seed, malicious_fraction=0.05)),
        ]
        if secure:
            out += [Case(f"30% nodes drop at {stage}", secure, node_dropout(seed, stage)) for stage in STAGES]
    return out


def config_for(case: Case, args: argparse.Namespace, run_dir: Path) -> FedhomeConfig:
    settings = {
        "data.synthetic.n_users": str(args.users),
        "federated.rounds": str(args.rounds),
        "federated.nodes": str(args.nodes),
        "federated.eval_every": "0",
        "federated.run_dir": str(run_dir),
        "privacy.seed": str(args.seed),
        "privacy.secure_aggregation": "true" if case.secure else "false",
        "start_check.enabled": "off",
        "popularity.enabled": "off",
        **dict(kv.split("=", 1) for kv in args.set),
    }
    config: FedhomeConfig = with_overrides(FedhomeConfig(), settings)
    return config


def run_case(case: Case, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    config = config_for(
        case, args, root / f"{'secure' if case.secure else 'clear'}-{len(list(root.iterdir()))}"
    )
    start = time.perf_counter()
    wrap = faulty_apps(case.plan) if case.plan is not None else None
    result = run_federated(config, configured_split(config.data), progress=False, wrap=wrap)
    entries = [
        json.loads(line) for line in RunFolder(config.federated.run_dir).ledger.read_text().splitlines()
    ]
    secure = [e["secure_aggregation"] for e in entries if isinstance(e.get("secure_aggregation"), dict)]
    return {
        "case": case.name,
        "aggregation": "secure" if case.secure else "clear",
        "plan": None if case.plan is None else {**case.plan.__dict__},
        "rounds": result.summary["rounds"],
        "failed_rounds": sum(1 for s in secure if s.get("failed")),
        "user_epsilon": result.summary["user_epsilon"],
        "test_ndcg_10": result.test.overall.ndcg_10,
        "valid_ndcg_10": result.valid.overall.ndcg_10,
        "rejections": result.summary.get("rejections", {}),
        "aggregated_users": sum(e["aggregated_users"] for e in entries),
        "realised_cohort": sum(e["realised_cohort"] for e in entries),
        "wall_s": round(time.perf_counter() - start, 1),
    }


def table(rows: list[dict[str, Any]]) -> str:
    clean = {r["aggregation"]: r["test_ndcg_10"] for r in rows if r["case"] == "clean"}
    lines = [
        "| aggregation | case | rounds | failed rounds | users summed / sampled | test NDCG@10 | vs clean "
        "| rejected nodes by reason |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        base = clean.get(r["aggregation"])
        change = f"{(r['test_ndcg_10'] - base) / base:+.1%}" if base else "-"
        by_reason = ", ".join(f"{k} {v}" for k, v in r["rejections"].get("by_reason", {}).items()) or "none"
        lines.append(
            f"| {r['aggregation']} | {r['case']} | {r['rounds']} | {r['failed_rounds']} "
            f"| {r['aggregated_users']} / {r['realised_cohort']} | {r['test_ndcg_10']:.4f} | {change} "
            f"| {by_reason} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=3000, help="synthetic shoppers")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--nodes", type=int, default=10, help="simulated nodes (shards)")
    parser.add_argument("--seed", type=int, default=0, help="privacy.seed and the fault plans' seed")
    parser.add_argument("--only", choices=("clear", "secure"), help="run one aggregation's cases only")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    chosen = [c for c in cases(args.seed) if args.only is None or c.secure == (args.only == "secure")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-faults-") as tmp:
        for case in chosen:
            rows.append(run_case(case, args, Path(tmp)))
            print(f"done: {rows[-1]['aggregation']} {case.name} ({rows[-1]['wall_s']} s)", file=sys.stderr)
    print(table(rows))
    if args.json:
        args.json.write_text(
            json.dumps({"args": vars(args) | {"json": str(args.json)}, "rows": rows}, indent=2)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
