"""`fedhome-sim`: run baselines and the two-tower model on a shop, or write the synthetic shop as CSV."""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from shared.config import FedhomeConfig, with_overrides
from shared.errors import FedhomeError
from simulation.report import markdown_table, population_line, write_results
from simulation.run import MODEL_NAMES, ModelName, prepare, run_model

log = logging.getLogger(__name__)


def _parse_models(text: str) -> list[ModelName]:
    names = list(MODEL_NAMES) if text == "all" else [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODEL_NAMES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown model(s) {unknown}; choose from {', '.join(MODEL_NAMES)} or all"
        )
    return names  # type: ignore[return-value]


def _parse_override(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. train.epochs=3), got {text!r}")
    return key.strip(), value.strip()


def _add_shop_arguments(parser: argparse.ArgumentParser, *, out_help: str) -> None:
    """The options `run` and `federated` share: data format, output folder, synthetic size, overrides."""
    parser.add_argument("--format", default=None, help="auto, csv, movielens, amazon2014, amazon-jsonl")
    parser.add_argument("--out", type=Path, default=None, help=out_help)
    parser.add_argument("--users", type=int, default=None, help="synthetic shop: number of shoppers")
    parser.add_argument("--items", type=int, default=None, help="synthetic shop: number of items")
    parser.add_argument(
        "--set",
        dest="overrides",
        type=_parse_override,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config value, e.g. --set train.epochs=3 --set federated.sample_rate=0.02",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedhome-sim", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="fit and evaluate models on a shop; write a results folder")
    run.add_argument(
        "--dataset", default="synthetic", help="'synthetic' or a data folder/file (default synthetic)"
    )
    _add_shop_arguments(run, out_help="results folder (default runs/<dataset>-<time>)")
    run.add_argument("--model", type=_parse_models, default=list(MODEL_NAMES), help="comma list or 'all'")
    run.add_argument("--skip-bad-rows", action="store_true", help="skip and count malformed rows")

    fed = sub.add_parser(
        "federated",
        help="federated training under user-level DP in Flower's simulation engine; writes a run folder",
        description="Resumes from the run folder's newest checkpoint when it has one.",
    )
    fed.add_argument("--dataset", default="synthetic", help="'synthetic' or a data folder/file")
    _add_shop_arguments(fed, out_help="run folder (default runs/federated-<dataset>)")
    fed.add_argument("--rounds", type=int, default=None, help="federated.rounds")
    fed.add_argument("--epsilon", type=float, default=None, help="privacy.target_epsilon (user level)")
    fed.add_argument("--mode", choices=["central", "local", "none"], default=None, help="privacy.mode")

    cal = sub.add_parser(
        "calibrate", help="the noise multiplier z that spends a user-level (epsilon, delta) in T rounds"
    )
    cal.add_argument("--epsilon", type=float, required=True, help="target user-level epsilon")
    cal.add_argument("--rounds", type=int, required=True, help="rounds T")
    cal.add_argument("--sample-rate", type=float, required=True, help="Poisson sampling rate q")
    group = cal.add_mutually_exclusive_group(required=True)
    group.add_argument("--delta", type=float, help="delta")
    group.add_argument("--population", type=int, help="number of users N (delta = N^-1.1)")

    gen = sub.add_parser("generate", help="write the synthetic shop as items.csv + interactions.csv")
    gen.add_argument("out", type=Path, help="folder to write")
    gen.add_argument("--users", type=int, default=None)
    gen.add_argument("--items", type=int, default=None)
    gen.add_argument("--seed", type=int, default=None)
    return parser


def config_from_args(args: argparse.Namespace) -> FedhomeConfig:
    overrides: dict[str, Any] = dict(args.overrides) if hasattr(args, "overrides") else {}
    for flag, key in (
        ("dataset", "data.dataset"),
        ("format", "data.format"),
        ("users", "data.synthetic.n_users"),
        ("items", "data.synthetic.n_items"),
        ("seed", "data.synthetic.seed"),
        ("rounds", "federated.rounds"),
        ("epsilon", "privacy.target_epsilon"),
        ("mode", "privacy.mode"),
    ):
        value = getattr(args, flag, None)
        if value is not None:
            overrides[key] = str(value)
    if getattr(args, "skip_bad_rows", False):
        overrides["data.skip_bad_rows"] = "true"
    config: FedhomeConfig = with_overrides(FedhomeConfig(), overrides)
    return config


def command_run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    start = time.perf_counter()
    progress = not args.no_progress and sys.stderr.isatty()
    prep = prepare(config, progress=progress)
    if prep.load_report is not None:
        print(prep.load_report.summary())
    runs = [run_model(prep, name) for name in args.model]
    wall_s = time.perf_counter() - start
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder = args.out or Path("runs") / f"{Path(prep.dataset.name).name}-{stamp}"
    command = "fedhome-sim " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    write_results(folder, prep, runs, command=command, wall_s=wall_s)
    print(f"\n{population_line(prep, runs)}\n")
    print(markdown_table(runs))
    print(f"\nresults written to {folder} ({wall_s:.0f} s)")
    return 0


def command_federated(args: argparse.Namespace) -> int:
    from simulation.federated import run_federated, write_federated_results

    config = config_from_args(args)
    name = Path(config.data.dataset).name
    folder = args.out or Path("runs") / f"federated-{name}"
    config = with_overrides(config, {"federated.run_dir": str(folder)})
    progress = not args.no_progress and sys.stderr.isatty()
    prep = prepare(config, progress=progress)
    result = run_federated(config, prep.split, progress=progress)
    command = "fedhome-sim " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    print(write_federated_results(result, command=command))
    return 0


def command_calibrate(args: argparse.Namespace) -> int:
    from shared.privacy.accounting import (
        RoundEvent,
        calibrate_noise_multiplier,
        default_delta,
        pld_epsilon,
        rdp_epsilon,
    )

    delta = args.delta if args.delta is not None else default_delta(args.population)
    z = calibrate_noise_multiplier(
        target_epsilon=args.epsilon, delta=delta, sample_rate=args.sample_rate, rounds=args.rounds
    )
    events = [RoundEvent(sample_rate=args.sample_rate, noise_multiplier=z)] * args.rounds
    print(
        json.dumps(
            {
                "noise_multiplier": z,
                "delta": delta,
                "user_epsilon_pld": pld_epsilon(events, delta=delta),
                "user_epsilon_rdp": rdp_epsilon(events, delta=delta),
            }
        )
    )
    return 0


def command_generate(args: argparse.Namespace) -> int:
    from shared.data.synthetic import write_shop_csv

    config = config_from_args(args)
    report = write_shop_csv(config.data.synthetic, args.out)
    print(report)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        commands = {
            "run": command_run,
            "federated": command_federated,
            "calibrate": command_calibrate,
            "generate": command_generate,
        }
        return commands[args.command](args)
    except FedhomeError as exc:
        print(f"fedhome-sim: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
