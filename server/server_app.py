"""The fedhome ServerApp (Flower Message API): federated training of the two-tower model under user-level DP.

What `main` does: embed the public catalogue and publish its text vectors into the run folder (devices read
them), build the model and its trainable layout, wait for the nodes and ask how many users each hosts,
resume from the newest checkpoint if the run folder has one, make the popularity prior's DP count release when
the model has the prior (server/trending/popularity_release.py: once, before round 1; the prior then goes to
the nodes with every message), then run rounds (server/rounds/coordinator.py)
until the configured number is done or the privacy budget would be exceeded, evaluating the global model every
`eval_every` rounds, make the start check (server/rounds/start_check.py: does the trained model beat its
start on the devices' held-out rows, by a DP-accounted federated evaluation?), and write the model it ships
(the trained one, or the start when training lost) and the summary. The same app runs under the simulation
engine (`fedhome-sim federated`, `flwr run`) and against a real SuperLink.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from server.embedding.catalogue_embedding import embed_catalogue
from server.ledger import PrivacyLedger
from server.rounds.coordinator import Coordinator, Evaluator
from server.rounds.messaging import discover_population, evaluate_round, poll_replies_often, wait_for_nodes
from server.rounds.privacy_plan import noise_multiplier_summary
from server.rounds.start_check import StartCheck
from server.trending.popularity_release import PopularityRelease
from server.trending.trending_round import TrendingSchedule
from shared.config import FedhomeConfig, from_flat, to_flat
from shared.data.source import load_configured
from shared.errors import ConfigError
from shared.model import ItemFeatures, TwoTower
from shared.model.params import ParamLayout, get_flat, set_flat, trainable_layout
from shared.privacy.accounting import json_epsilon
from shared.privacy.capped_accounting import CappedAccountant
from shared.run_folder import RunFolder, save_final, write_json_atomic
from shared.signing import generate_private_key, key_id, load_private_key, save_private_key, save_public_key

log = logging.getLogger(__name__)

FEDERATED_EVAL_USERS = 2_000  # per node, for the per-round progress signal when no evaluator is given
# model, layout -> (params -> validation metrics): the simulation's harness; None: federated evaluation
EvaluatorFactory = Callable[[TwoTower, ParamLayout], Evaluator]
# settings a resumed run may change: its length, and how long it waits (a folder from before
# connect_timeout_s existed has none)
MAY_CHANGE_ON_RESUME = frozenset(
    {"federated.rounds", "federated.node_timeout_s", "federated.connect_timeout_s"}
)


def build_model(config: FedhomeConfig, folder: RunFolder, *, progress: bool) -> TwoTower:
    """Embed the catalogue (through the cache), publish the vectors to the run folder, build the model."""
    dataset, _ = load_configured(config.data)
    table = embed_catalogue(dataset.catalogue, config.encoder, progress=progress)
    np.save(folder.item_vectors, table.vectors)
    features = ItemFeatures.from_catalogue(dataset.catalogue, table.vectors)
    torch.manual_seed(config.federated.seed)
    return TwoTower(features, config.model)


def signing_key_for(config: FedhomeConfig, folder: RunFolder) -> Any:
    """The ledger signing key: the configured file, or a per-run key kept beside (not in) the run folder."""
    path = (
        Path(config.federated.signing_key)
        if config.federated.signing_key
        else (folder.root.parent / f".{folder.root.name}.ledger_signing_key.pem")
    )
    if not path.exists():
        if config.federated.signing_key:
            raise ConfigError(f"signing key {path} not found (create one with `fedhome-server keygen`)")
        save_private_key(generate_private_key(), path)
    key = load_private_key(path)
    if not folder.public_key.exists():
        save_public_key(key.public_key(), folder.public_key)
    return key


def write_config(config: FedhomeConfig, folder: RunFolder) -> None:
    """config.json; a resumed run must have been started with the same settings."""
    flat = to_flat(config)
    if folder.config.exists():
        previous = json.loads(folder.config.read_text())
        changed = sorted(k for k in flat if previous.get(k) != flat[k] and k not in MAY_CHANGE_ON_RESUME)
        if changed:
            raise ConfigError(f"{folder.root} was started with other settings ({', '.join(changed)})")
    write_json_atomic(folder.config, flat)


def run_training(
    grid: Grid, config: FedhomeConfig, *, evaluator: EvaluatorFactory | None, progress: bool
) -> dict[str, Any]:
    """The whole run; returns the summary written to the run folder."""
    folder = RunFolder(config.federated.run_dir)
    folder.create()
    write_config(config, folder)
    poll_replies_often(grid)
    # first, and with its own short timeout: too few SuperNodes is the likeliest mistake of a first deployment
    nodes = wait_for_nodes(grid, config.federated.nodes, timeout_s=config.federated.connect_timeout_s)
    model = build_model(config, folder, progress=progress)
    layout = trainable_layout(model, config.federated.trainable)
    key = signing_key_for(config, folder)
    ledger = PrivacyLedger(folder.ledger, signing_key=key)
    population = discover_population(grid, nodes, timeout_s=config.federated.node_timeout_s)
    timeout = config.federated.node_timeout_s
    # the popularity prior's count release before round 1: it puts the prior into `model` (the evaluator's)
    popularity = PopularityRelease(folder, n_items=model.items.n_items, model=model)
    evaluate: Evaluator = (
        evaluator(model, layout)
        if evaluator is not None
        else lambda p: evaluate_round(
            grid,
            population.node_ids,
            p,
            max_users=FEDERATED_EVAL_USERS,
            timeout_s=timeout,
            prior=popularity.prior,
        )
    )
    trending = TrendingSchedule(folder.root, n_items=model.items.n_items)
    initial = get_flat(model, layout)  # the start: the untrained model ranks by text similarity
    start_check = StartCheck(initial)
    coordinator = Coordinator(
        config,
        folder,
        population,
        initial,
        layout,
        ledger,
        evaluate=evaluate,
        # before the rounds the popularity prior; at the end the final trending release, then the start check
        hooks=[popularity, trending, start_check],
    )
    coordinator.resume()
    log.info(
        "%d users on %d nodes; %d trainable parameters; mode %s, z %.4f, delta %.3g; ledger key %s",
        population.n_users,
        len(population.node_ids),
        layout.dim,
        coordinator.plan.mode,
        coordinator.plan.noise_multiplier,
        coordinator.plan.delta,
        key_id(key.public_key()),
    )
    if config.federated.train_on_valid:
        log.warning("devices train on their validation rows too: validation NDCG@10 is not held out")
    stop_reason = coordinator.run(grid, progress=progress)
    shipped = start_check.shipped_params(coordinator.state.params)
    set_flat(model, layout, shipped)
    summary = {
        "run_id": coordinator.state.run_id,
        "rounds": coordinator.state.round,
        "stop_reason": stop_reason,
        "population": population.n_users,
        "nodes": len(population.node_ids),
        "trainable_parameters": layout.dim,
        "trainable": list(layout.names),
        "mode": coordinator.plan.mode,
        "trained_on_valid": config.federated.train_on_valid,  # validation figures are then not held out
        **noise_multiplier_summary(ledger.entries(), planned=coordinator.plan.noise_multiplier),
        "delta": coordinator.plan.delta,
        "user_epsilon": json_epsilon(coordinator.epsilon()),
        "user_epsilon_rdp": json_epsilon(coordinator.accountant.spent()["rdp"])
        if coordinator.plan.mode != "none"
        else "inf",
        # record-level DP-SGD on the devices (a guarantee per interaction, not per user), when used
        "record_epsilon": _record_epsilon(coordinator),
        # participation cap (0: none) and which bound gives user_epsilon (shared/privacy/capped_accounting.py)
        "participation_cap": coordinator.config.privacy.participation_cap,
        "epsilon_bound": coordinator.accountant.binding()
        if isinstance(coordinator.accountant, CappedAccountant) and coordinator.plan.mode != "none"
        else "poisson",
        "ledger_head": ledger.head_hash(),
        "rejections": coordinator.rejections(),  # replies not summed, by reason (server/rounds/messaging.py)
        # the popularity prior's DP count release before round 1 (accounted in user_epsilon above)
        "popularity_prior": popularity.summary(),
        "trending": trending.summary(
            ledger.entries()
        ),  # DP trending releases (accounted in user_epsilon above)
        # did the trained model beat its start (accounted in user_epsilon above), and which one ships
        "start_check": start_check.summary(),
        "shipped": start_check.shipped,
        "ledger_key_id": key_id(key.public_key()),
        "final_eval": coordinator.evaluate(shipped),  # of the shipped model
    }
    save_final(folder, shipped, model.state_dict(), summary)
    return summary


def _record_epsilon(coordinator: Coordinator) -> float | str | None:
    values = [float(row["record_epsilon"]) for row in coordinator.state.history if "record_epsilon" in row]
    return json_epsilon(max(values)) if values else None


def make_server_app(
    config: FedhomeConfig | None = None,
    *,
    evaluator: EvaluatorFactory | None = None,
    progress: bool | None = None,
) -> ServerApp:
    """The ServerApp: with `config` (fedhome-sim) as given; without (`flwr run`) from the run config."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_config = config or from_flat(dict(context.run_config))
        start = time.perf_counter()
        show = sys.stderr.isatty() if progress is None else progress
        summary = run_training(grid, run_config, evaluator=evaluator, progress=show)
        log.info("federated run done in %.0f s: %s", time.perf_counter() - start, summary["stop_reason"])

    return app


app = make_server_app()
