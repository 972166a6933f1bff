"""Federated training in Flower's simulation engine: the ServerApp and ClientApp of server/ and client/,
unchanged, on simulated nodes (each a shard of virtual devices, or one device each), then the final model
evaluated by the central harness like every other model. The final model is what the run shipped: the
trained one, or its start when the run's start check found that training lost (server/rounds/start_check.py;
results.md says which).

The per-round progress signal is validation NDCG@10 on a fixed random subset of users (the harness, so the
same protocol as the final figures); the final figures use every evaluated user.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp
from flwr.simulation import run_simulation

from client.client_app import make_client_app
from server.server_app import make_server_app
from shared.config import FedhomeConfig
from shared.data.split import Split
from shared.errors import FedhomeError
from shared.model import ItemFeatures, TwoTower
from shared.model.params import ParamLayout, set_flat, trainable_layout
from shared.run_folder import RunFolder, load_final_model_state, load_popularity_prior
from simulation.central_training import make_scorer
from simulation.evaluate import EvalResult, evaluate

log = logging.getLogger(__name__)

AppWrapper = Callable[[ServerApp, ClientApp], tuple[ServerApp, ClientApp]]

PROGRESS_USERS = 3_000  # validation users evaluated every `eval_every` rounds (fixed subset)


@dataclass
class FederatedResult:
    folder: RunFolder
    summary: dict[str, Any]
    valid: EvalResult
    test: EvalResult
    wall_s: float


# A 40-user synthetic shop on two nodes, small enough for a real Flower run in seconds: the tests' runs
# (tests/federated_toy.py) and the crash benchmark (simulation/benchmarks/bench_crash.py) start from it.
TINY_RUN = {
    "data.synthetic.n_users": "40",
    "data.synthetic.n_items": "60",
    "data.synthetic.n_categories": "4",
    "data.cold_item_fraction": "0",
    "encoder.backend": "torch",
    "encoder.device": "cpu",
    "model.dim": "16",
    "model.residual_rank": "8",
    "model.max_history": "8",
    "federated.sample_rate": "0.5",
    "federated.n_negatives": "16",
    "federated.max_examples_per_user": "4",
    "federated.nodes": "2",
    "federated.eval_every": "1",
    "federated.local_learning_rate": "0.5",
    "privacy.clip_norm": "0.5",
    "privacy.seed": "11",
    # the start check and the popularity prior's count release (both on by default in central mode) have their
    # own runs (test_start_check_federated.py, test_popularity_federated.py); the others keep their ledgers
    # to the training rounds they are about
    "start_check.enabled": "off",
    "popularity.enabled": "off",
}


def progress_evaluator(split: Split, config: FedhomeConfig) -> Any:
    """A factory for the ServerApp: given the model, params -> validation metrics on a fixed user subset."""
    rng = np.random.default_rng(config.federated.seed)
    users = split.eval_users
    if users.size > PROGRESS_USERS:
        users = np.sort(rng.choice(users, PROGRESS_USERS, replace=False))

    def factory(model: TwoTower, layout: ParamLayout) -> Any:
        def evaluate_params(params: np.ndarray) -> dict[str, float]:
            set_flat(model, layout, params)
            result = evaluate(
                split, make_scorer(model, split), stage="valid", config=config.eval, users=users
            )
            return {"valid_ndcg_10": result.overall.ndcg_10, "valid_hr_10": result.overall.hr_10}

        return evaluate_params

    return factory


def backend_config(config: FedhomeConfig) -> dict[str, Any]:
    """Ray: one CPU per simulated node, at most as many nodes in flight as cores."""
    cpus = max(1, min(os.cpu_count() or 1, config.federated.nodes))
    return {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {"num_cpus": cpus, "include_dashboard": False, "logging_level": "WARNING"},
    }


SECONDS_PER_DAY = 86_400


def with_simulated_time(config: FedhomeConfig, split: Split) -> FedhomeConfig:
    """A simulation replays a log recorded in the past: trending windows end where the log ends unless
    `trending.as_of_s` is set, instead of at today's wall clock (a deployment uses the release's own time).
    The end is public information, never one shopper's exact timestamp (it is signed into the ledger): the
    synthetic shop's configured end, or for a recorded log the UTC midnight after its last training day (a
    day's resolution, said in docs/federated.md). The popularity prior's count release ends its window there
    too when it has one (`popularity.window_days` > 0)."""
    trending = config.trending
    windowed = config.runs_popularity_release and config.popularity.window_days > 0
    if not (trending.enabled or windowed) or trending.as_of_s or split.train.timestamps.size == 0:
        return config
    if config.data.dataset == "synthetic":
        shop = config.data.synthetic
        end = int(shop.start_time_s + shop.duration_days * SECONDS_PER_DAY)
    else:
        end = (int(split.train.timestamps.max()) // SECONDS_PER_DAY + 1) * SECONDS_PER_DAY
    return dataclasses.replace(config, trending=dataclasses.replace(trending, as_of_s=end))


def run_federated(
    config: FedhomeConfig, split: Split, *, progress: bool, wrap: AppWrapper | None = None
) -> FederatedResult:
    """Train in the simulation engine, then evaluate the final global model on validation and test. `wrap`
    (simulation/fault_injection.py) replaces the two apps by wrappers around them (injected faults)."""
    start = time.perf_counter()
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("OMP_NUM_THREADS", str(max(config.train.threads, 1)))
    n_nodes = split.full.n_users if config.federated.devices_per_node == "one" else config.federated.nodes
    config = dataclasses.replace(config, federated=dataclasses.replace(config.federated, nodes=n_nodes))
    config = with_simulated_time(config, split)
    server_app = make_server_app(config, evaluator=progress_evaluator(split, config), progress=progress)
    client_app = make_client_app(config)
    if wrap is not None:
        server_app, client_app = wrap(server_app, client_app)
    folder = RunFolder(config.federated.run_dir)
    folder.summary.unlink(missing_ok=True)  # rewritten when the run ends; a stale one must not pass for it
    run_simulation(server_app, client_app, num_supernodes=n_nodes, backend_config=backend_config(config))
    if not folder.summary.exists():
        raise FedhomeError(f"the federated run ended without a summary in {folder.root}: see the log above")
    return evaluate_final(config, split, folder, time.perf_counter() - start)


def load_final_model(config: FedhomeConfig, split: Split, folder: RunFolder) -> TwoTower:
    """The run's final global model, rebuilt from the run folder alone (with the popularity prior the run
    used, when it made its count release)."""
    features = ItemFeatures.from_catalogue(split.dataset.catalogue, np.load(folder.item_vectors))
    model = TwoTower(features.with_popularity(load_popularity_prior(folder)), config.model)
    model.load_state_dict(load_final_model_state(folder))
    layout = trainable_layout(model, config.federated.trainable)
    set_flat(model, layout, np.load(folder.final_params))
    return model


def evaluate_final(config: FedhomeConfig, split: Split, folder: RunFolder, wall_s: float) -> FederatedResult:
    summary = json.loads(folder.summary.read_text())
    scorer = make_scorer(load_final_model(config, split, folder), split)
    valid = evaluate(split, scorer, stage="valid", config=config.eval)
    test = evaluate(split, scorer, stage="test", config=config.eval)
    return FederatedResult(folder, summary, valid, test, wall_s)


def write_federated_results(result: FederatedResult, *, command: str) -> str:
    """results.json + results.md in the run folder; returns the markdown."""
    summary = result.summary
    rows = {
        "command": command,
        "wall_time_s": round(result.wall_s, 1),
        "summary": summary,
        "valid": result.valid.to_dict(),
        "test": result.test.to_dict(),
    }
    (result.folder.root / "results.json").write_text(json.dumps(rows, indent=2, default=str) + "\n")
    epsilon = summary["user_epsilon"]
    valid = "valid NDCG@10 (trained on, not held out)" if summary.get("trained_on_valid") else "valid NDCG@10"
    text = (
        f"`{command}` ({result.wall_s:.0f} s wall)\n\n"
        "| rounds | mode | z | user epsilon (PLD) | delta | shipped "
        f"| {valid} | test NDCG@10 | test HR@10 |\n"
        f"|---|---|---|---|---|---|---|---|---|\n"
        f"| {summary['rounds']} | {summary['mode']} | {_z_text(summary)} | {readable(epsilon)} "
        f"| {summary['delta']:.3g} | {_shipped_text(summary)} | {result.valid.overall.ndcg_10:.4f} "
        f"| {result.test.overall.ndcg_10:.4f} | {result.test.overall.hr_10:.4f} |\n\n"
        f"stopped: {summary['stop_reason']}\n\nstart check: {_start_check_text(summary)}\n"
    )
    (result.folder.root / "results.md").write_text(text)
    return text


def readable(value: Any) -> str:
    """A number as a person reads it in a summary: 4 significant digits (0.3089, 49.99, 1.2e-05); anything
    else (an infinite epsilon's "inf") as it is. results.json keeps the full values."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _shipped_text(summary: dict[str, Any]) -> str:
    """Which model the run shipped (server/rounds/start_check.py): the trained one, or its start."""
    shipped = summary.get("shipped", "trained")
    return "start (training lost)" if shipped == "start" else "trained"


def _start_check_text(summary: dict[str, Any]) -> str:
    """One line on the start check: its noised gain sum and decision, or why it did not run."""
    check = summary.get("start_check") or {}
    if check.get("ran"):
        return (
            f"noised NDCG@10 gain sum {check['noised_gain_sum']:.3f} (noise std {check['noise_std']:.3g}, "
            f"margin {check['margin']:g} std) after round {check['after_round']}: ships {check['decision']}"
        )
    if check.get("refused"):
        return f"refused ({check['refused'][-1]}); the trained model ships unchecked"
    return f"not run ({check.get('note') or 'not in this summary'}); the trained model ships unchecked"


def _z_text(summary: dict[str, Any]) -> str:
    """The z of the run's rounds, or each z with its rounds when it changed mid-run (server_app summary)."""
    z = summary["noise_multiplier"]
    if z is not None:
        return f"{z:.3f}"
    spans = summary.get("noise_multiplier_spans", [])
    return "varied: " + ", ".join(
        f"{s['noise_multiplier']:.3f} (rounds {s['first_round']}-{s['last_round']})" for s in spans
    )
