"""`fedhome-sim`: models on a shop, federated training, canary audits, the synthetic shop as CSV, the
online loop."""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from tqdm.contrib.logging import logging_redirect_tqdm

from shared.config import FedhomeConfig, OnlineConfig, online_with_overrides, with_overrides
from shared.errors import FedhomeError
from simulation.canary_audit import BREAKAGES
from simulation.results_folder import markdown_table, population_line, write_results
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


def _add_set_argument(parser: argparse.ArgumentParser, help_text: str) -> None:
    """`--set KEY=VALUE`, repeatable: config overrides (shared/config.py validates them)."""
    parser.add_argument(
        "--set",
        dest="overrides",
        type=_parse_override,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=help_text,
    )


def _add_shop_arguments(parser: argparse.ArgumentParser, *, out_help: str) -> None:
    """The options `run` and `federated` share: data format, output folder, synthetic size, overrides."""
    parser.add_argument("--format", default=None, help="auto, csv, movielens, amazon2014, amazon-jsonl")
    parser.add_argument("--out", type=Path, default=None, help=out_help)
    parser.add_argument("--users", type=int, default=None, help="synthetic shop: number of shoppers")
    parser.add_argument("--items", type=int, default=None, help="synthetic shop: number of items")
    _add_set_argument(
        parser, "override any config value, e.g. --set train.epochs=3 --set federated.sample_rate=0.02"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument(
        "--skip-bad-rows", action="store_true", help="skip and count malformed rows (data.skip_bad_rows)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedhome-sim", description=__doc__)
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="log debug messages, with Flower's, alembic's and Ray's notices and warnings",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="fit and evaluate models on a shop; write a results folder")
    run.add_argument(
        "--dataset", default="synthetic", help="'synthetic' or a data folder/file (default synthetic)"
    )
    _add_shop_arguments(run, out_help="results folder (default runs/<dataset>-<time>)")
    run.add_argument("--model", type=_parse_models, default=list(MODEL_NAMES), help="comma list or 'all'")

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
    cal.add_argument(
        "--trending-releases", type=int, default=0, help="DP trending releases the epsilon also covers"
    )
    cal.add_argument("--trending-sample-rate", type=float, default=1.0, help="their q_t")
    cal.add_argument("--trending-noise-multiplier", type=float, default=2.0, help="their z_t")
    cal.add_argument(
        "--start-check-noise-multiplier",
        type=float,
        default=10.0,
        help="z_s of the run's start check, which the epsilon also covers (a run's default; 0: no check)",
    )
    cal.add_argument("--start-check-sample-rate", type=float, default=1.0, help="its q_s")

    can = sub.add_parser(
        "canary",
        help="empirical privacy audit with canary clients; exits 1 when the one-run lower bound beats the "
        "accountant, 3 when the canaries cannot test the claim",
        description="Trains with canary clients (Andrew et al. 2024) and compares the epsilon estimate, the "
        "heuristic Clopper-Pearson threshold bound and the one-run lower bound (Steinke, Nasr & Jagielski "
        "2023; the one that decides) with the analytic epsilon. Refuses (exit 3) before training when even "
        "perfectly separated canaries could not certify a bound above the claimed epsilon. Writes "
        "canary_audit.json into --out.",
    )
    can.add_argument("--dataset", default="synthetic", help="'synthetic' or a data folder/file")
    _add_shop_arguments(can, out_help="folder for canary_audit.json (default runs/canary-<model>)")
    can.add_argument("--model", choices=["recommender", "linear"], default="recommender")
    can.add_argument("--rounds", type=int, default=None, help="federated.rounds")
    noise = can.add_mutually_exclusive_group(required=True)
    noise.add_argument("--epsilon", type=float, help="calibrate z to this user-level epsilon")
    noise.add_argument("--noise-multiplier", type=float, help="z")
    can.add_argument(
        "--canaries",
        type=_canary_count,
        default=1200,
        help="canary directions, each inserted w.p. 1/2, or 'auto': the fewest with the power to fail",
    )
    can.add_argument(
        "--allow-underpowered",
        action="store_true",
        help="train even when the canaries cannot test the claim (reports CANNOT TEST, still exits 3)",
    )
    can.add_argument(
        "--break",
        dest="breakage",
        choices=BREAKAGES,
        default="none",
        help="audit a deliberately broken mechanism (the accountant still assumes z)",
    )
    can.add_argument("--linear-users", type=int, default=20_000, help="--model linear: users")
    can.add_argument("--linear-dim", type=int, default=10_000, help="--model linear: parameters")
    can.add_argument("--seed", type=int, default=0, help="canaries, sampling and noise")

    onl = sub.add_parser(
        "online",
        help="the online loop, simulated: shoppers live with each arm's homepage for days; writes a table, "
        "a CSV and a plot",
        description="Each day the synthetic shop's shoppers open a homepage composed on their device from "
        "the arm's current release, click, cart and buy by a taste-driven click model, and the arms learn "
        "overnight (popularity counts, the text-similarity start, federated rounds under user-level DP with "
        "one lifetime budget, central non-private retraining). Options: the online.* keys of --set "
        "(shared/config.py: OnlineConfig); any other --set key sets the arms' model, federated, privacy or "
        "train settings.",
    )
    onl.add_argument(
        "--out", type=Path, default=Path("runs/online"), help="output folder (default runs/online)"
    )
    onl.add_argument("--days", type=int, default=None, help="online.days")
    onl.add_argument("--shoppers", type=int, default=None, help="online.shoppers")
    onl.add_argument("--items", type=int, default=None, help="online.items")
    onl.add_argument("--rounds-per-day", type=int, default=None, help="online.rounds_per_day")
    onl.add_argument("--epsilon", type=float, default=None, help="online.epsilon (user level, lifetime)")
    onl.add_argument("--arms", default=None, help="online.arms, a comma list")
    onl.add_argument("--seed", type=int, default=None, help="online.seed")
    _add_set_argument(
        onl, "override a config value: online.* (e.g. online.visit_rate=0.3) or any other section's key"
    )
    onl.add_argument("--no-progress", action="store_true", help="hide the progress bar")

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
    # fixed releases: the target covers them and the training rounds together
    fixed = [
        RoundEvent(sample_rate=args.trending_sample_rate, noise_multiplier=args.trending_noise_multiplier)
    ] * args.trending_releases
    if args.start_check_noise_multiplier > 0:  # the start check after the last round (a run's default)
        z_s, q_s = args.start_check_noise_multiplier, args.start_check_sample_rate
        fixed.append(RoundEvent(sample_rate=q_s, noise_multiplier=z_s))
    z = calibrate_noise_multiplier(
        target_epsilon=args.epsilon,
        delta=delta,
        sample_rate=args.sample_rate,
        rounds=args.rounds,
        fixed_events=fixed,
    )
    events = [RoundEvent(sample_rate=args.sample_rate, noise_multiplier=z)] * args.rounds + fixed
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


def _canary_count(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {text!r}") from None


def command_canary(args: argparse.Namespace) -> int:
    import torch

    from shared.privacy.accounting import calibrate_noise_multiplier, default_delta
    from simulation.canary_audit import UnderpoweredAudit, canaries_needed, run_canary_audit, write_audit
    from simulation.canary_models import linear_setup, recommender_setup

    config = config_from_args(argparse.Namespace(**{**vars(args), "seed": None}))
    torch.set_num_threads(1)
    if args.model == "linear":
        config = with_overrides(
            config, {"federated.server_optimizer": "sgd", "federated.server_learning_rate": "1"}
        )
        setup = linear_setup(n_users=args.linear_users, dim=args.linear_dim, seed=args.seed)
    else:
        setup = recommender_setup(config)
    z = args.noise_multiplier
    if z is None:
        expected = args.canaries
        if expected == "auto":
            needed = canaries_needed(args.epsilon, n_users=setup.n_users, dim=setup.start.size)
            expected = 1200 if needed is None else needed
        population = setup.n_users + expected // 2  # the expected inserted count; the audit uses the real one
        z = calibrate_noise_multiplier(
            target_epsilon=args.epsilon,
            delta=default_delta(population),
            sample_rate=config.federated.sample_rate,
            rounds=config.federated.rounds,
        )
    try:
        result = run_canary_audit(
            setup,
            config,
            canaries=args.canaries,
            noise_multiplier=z,
            breakage=args.breakage,
            seed=args.seed,
            require_power=not args.allow_underpowered,
        )
    except UnderpoweredAudit as refused:
        print(f"CANNOT TEST: {refused}", file=sys.stderr)
        return 3
    path = write_audit(result, args.out or Path("runs") / f"canary-{args.model}")
    print(result.summary())
    print(f"written to {path}")
    return {"OK": 0, "FAILED": 1}.get(result.verdict, 3)


def online_configs(args: argparse.Namespace) -> tuple[OnlineConfig, FedhomeConfig]:
    """The online loop's section (--set online.*, and the verb's flags) and the arms' base config (every
    other --set key), each validated once."""
    online: dict[str, Any] = {}
    other: dict[str, Any] = {}
    for key, value in args.overrides:
        if key.startswith("online."):
            online[key.removeprefix("online.")] = value
        else:
            other[key] = value
    for flag in ("days", "shoppers", "items", "rounds_per_day", "epsilon", "arms", "seed"):
        value = getattr(args, flag)
        if value is not None:
            online[flag] = str(value)
    base: FedhomeConfig = with_overrides(FedhomeConfig(), other)
    return online_with_overrides(OnlineConfig(), online), base


def command_online(args: argparse.Namespace) -> int:
    from simulation.online_loop import run_online, write_outputs

    online, base = online_configs(args)
    progress = not args.no_progress and sys.stderr.isatty()
    result = run_online(online, base, args.out, progress=progress)
    command = "fedhome-sim " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    table = write_outputs(result, args.out, command=command)
    print(f"\n{table}\nper day: {result.wall_s / online.days:.1f} s; written to {args.out} "
          f"(online.md, online.csv, online.png, online.json; {result.wall_s:.0f} s)")  # fmt: skip
    return 0


def command_generate(args: argparse.Namespace) -> int:
    from shared.data.synthetic import write_shop_csv

    config = config_from_args(args)
    report = write_shop_csv(config.data.synthetic, args.out)
    print(report)
    return 0


QUIET_LOGGERS = {
    "flwr": logging.WARNING,  # its DEBUG lines (the logger is set to DEBUG at import) and INFO notices
    "alembic": logging.WARNING,  # its plugin and migration INFO lines when Flower imports it
    "absl": logging.ERROR,  # dp-accounting's RDP order warnings
}


def configure_logging(*, verbose: bool) -> None:
    """The root handler at INFO (DEBUG with `verbose`), every record printed once through it; without
    `verbose`, the QUIET_LOGGERS levels, no notice of Flower's deprecated `run_simulation` (fedhome uses it
    on purpose) and no FutureWarning from Ray. Warnings are logged, so they too pass the progress bars."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.captureWarnings(True)
    flwr = logging.getLogger("flwr")
    # Flower's own console handler prints what also reaches the root handler: each line twice (matched by
    # its class name, flwr.supercore.logger.ConsoleHandler: importing Flower here would slow every command)
    for handler in [h for h in flwr.handlers if type(h).__name__ == "ConsoleHandler"]:
        flwr.removeHandler(handler)
    if verbose:
        for name in QUIET_LOGGERS:  # whatever quieted them before (an earlier main() in this process)
            logging.getLogger(name).setLevel(logging.NOTSET)
        flwr.removeFilter(_not_deprecation_notice)
        flwr.setLevel(logging.DEBUG)
        return
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    flwr.addFilter(_not_deprecation_notice)
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"ray\.")


def _not_deprecation_notice(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("DEPRECATED FEATURE")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(verbose=args.verbose)
    commands = {
        "run": command_run,
        "federated": command_federated,
        "calibrate": command_calibrate,
        "canary": command_canary,
        "generate": command_generate,
        "online": command_online,
    }
    try:
        with logging_redirect_tqdm():  # log lines are written above a progress bar, not through it
            return commands[args.command](args)
    except FedhomeError as exc:
        print(f"fedhome-sim: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
