"""A Flower node's local side: the data and model a process's nodes share, and which users (devices) a node
hosts (`node_config["partition-id"]` and `["num-partitions"]`; see client/client_app.py)."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from flwr.app import Context

from client.training.own_privacy import OwnPrivacy
from client.training.participation_counts import DeviceFolder, device_folders
from client.training.round_update import LocalTrainer
from shared.config import FedhomeConfig, to_flat
from shared.data.source import configured_split
from shared.data.split import Split, UserSequences
from shared.errors import ConfigError, DataError, UpdateRejectedError
from shared.model import ItemFeatures, TwoTower
from shared.model.params import ParamLayout, trainable_layout
from shared.run_folder import RunFolder


@dataclass
class NodeModel:
    """What every node in a process shares for one run: the local data, the model skeleton, the trainer."""

    config: FedhomeConfig
    split: Split
    model: TwoTower
    layout: ParamLayout
    trainer: LocalTrainer
    rows: UserSequences  # the devices' own logs: training rows (and validation rows with `train_on_valid`)


@dataclass
class Node:
    """One node: the shared model and which users (devices) it hosts."""

    shared: NodeModel
    users: np.ndarray  # (n,) global user index of each slot
    partition_id: int
    device_cap: int = 0  # node config "participation-cap": the devices' own cap (0: only the run's)
    folder: DeviceFolder | None = None  # where each device keeps its receipts (None: node state only)
    counts_dir: Path | None = None  # node config "counts-dir": the devices' participation counts, on disk
    simulated: bool = False  # in Flower's simulation engine: a node cannot restart without its whole run

    @property
    def privacy(self) -> OwnPrivacy:
        """The privacy terms the node's own configuration pins (noise multiplier, noise seed, counts)."""
        return OwnPrivacy(self.shared.config, int(self.shared.split.full.n_users))

    def use_prior(self, prior: np.ndarray | None) -> None:
        """Put the run's popularity prior a message carries (None: zeros, the run has none) into the model
        the node trains and evaluates with (its `items.popularity` buffer; the process's nodes share the
        model, so every message sets it). UpdateRejectedError unless it is one finite value per catalogue
        item."""
        try:
            self.shared.model.items.set_popularity(prior)
        except DataError as exc:
            raise UpdateRejectedError(f"the message's popularity prior is refused: {exc}") from exc


# Per process: a Ray actor serves many rounds and many nodes; load the data and build the model once.
_MODELS: dict[str, NodeModel] = {}


def hosted_users(
    n_users: int, *, partition_id: int, num_partitions: int, devices_per_node: str
) -> np.ndarray:
    """Global user indices a node hosts, in slot order."""
    if not 0 <= partition_id < num_partitions:
        raise ConfigError(f"partition-id {partition_id} outside 0..{num_partitions - 1}")
    if devices_per_node == "one":
        if num_partitions != n_users:
            raise ConfigError(f"one device per node needs {n_users} nodes, got {num_partitions}")
        return np.array([partition_id], dtype=np.int64)
    bounds = np.linspace(0, n_users, num_partitions + 1).round().astype(np.int64)
    return np.arange(bounds[partition_id], bounds[partition_id + 1], dtype=np.int64)


def node_model(config: FedhomeConfig) -> NodeModel:
    key = json.dumps(to_flat(config), sort_keys=True, default=str)
    if key not in _MODELS:
        torch.set_num_threads(max(config.train.threads, 1))
        split = configured_split(config.data)
        vectors = np.load(RunFolder(config.federated.run_dir).item_vectors)
        features = ItemFeatures.from_catalogue(split.dataset.catalogue, vectors)
        torch.manual_seed(config.federated.seed)
        model = TwoTower(features, config.model)
        layout = trainable_layout(model, config.federated.trainable)
        rows = split.train_and_valid() if config.federated.train_on_valid else split.train
        trainer = LocalTrainer(model, rows, layout=layout, blocked=split.cold_items, config=config.federated)
        _MODELS[key] = NodeModel(config, split, model, layout, trainer, rows)
    return _MODELS[key]


def in_simulation_engine() -> bool:
    """Whether this ClientApp runs in Flower's simulation engine: inside a Ray actor (its only backend in
    1.42). A deployed SuperNode runs its ClientApp in a `flwr-clientapp` process that never starts Ray, so a
    deployment is never taken for a simulation; should Flower's engine change, the answer becomes False and
    capped nodes without a folder refuse (client/training/participation_counts.py), the safe side."""
    ray = sys.modules.get("ray")  # never imported here: a process that has not imported Ray is no Ray actor
    if ray is None or not ray.is_initialized():
        return False
    return ray.get_runtime_context().get_actor_id() is not None


def load_node(config: FedhomeConfig, context: Context) -> Node:
    """The node for this context: its users, and the model shared by the process's nodes."""
    shared = node_model(config)
    partition_id = int(context.node_config.get("partition-id", 0))
    num_partitions = int(context.node_config.get("num-partitions", 1))
    users = hosted_users(
        shared.split.full.n_users,
        partition_id=partition_id,
        num_partitions=num_partitions,
        devices_per_node=config.federated.devices_per_node,
    )
    folder = device_folders(
        node_device_dir=str(context.node_config.get("device-dir", "")),
        receipts_dir=config.federated.receipts_dir,
        users=users,
    )
    counts_dir = str(context.node_config.get("counts-dir", ""))
    return Node(
        shared,
        users,
        partition_id,
        int(context.node_config.get("participation-cap", 0)),
        folder,
        counts_dir=Path(counts_dir) if counts_dir else None,
        simulated=in_simulation_engine(),
    )
