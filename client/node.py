"""A Flower node's local side: the data and model a process's nodes share, which users (devices) a node hosts
(`node_config["partition-id"]` and `["num-partitions"]`), and where their training rows come from: the
simulation data set, or a device's own event store with the catalogue of the release it has installed (node
config "train-from"; see client/client_app.py). A device that trains from its store reads nothing of the
simulation: no data set, no run folder."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch
from flwr.app import Context

from client.training.device_store import DeviceStore, InstalledCatalogue, read_catalogue, verified_release
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
from shared.signing import Ed25519PublicKey, load_public_key

# Node config "train-from": the simulation data set's users (a partition of them), or the device's own store
TrainFrom = Literal["partition", "device-store"]


@dataclass
class NodeModel:
    """What every node in a process shares for one run: the model skeleton, and the local data: the simulation
    data set's split, rows and trainer; or, for a device that trains from its store, its installed release's
    catalogue (the rows and trainer are then built from the store for each message: Node.local_trainer)."""

    config: FedhomeConfig
    model: TwoTower
    layout: ParamLayout
    blocked: np.ndarray  # (n_items,) bool: items held out of all training (a simulation's cold items)
    split: Split | None = None  # the simulation data set (None on a device)
    trainer: LocalTrainer | None = None
    rows: UserSequences | None = None  # the devices' logs: training rows (and validation rows with
    # `train_on_valid`)
    catalogue: InstalledCatalogue | None = None  # a device's installed release (None in simulation)

    @property
    def n_items(self) -> int:
        return self.model.items.n_items

    def data_split(self) -> Split:
        """The simulation data set's split; UpdateRejectedError on a device (it has none)."""
        if self.split is None:
            raise UpdateRejectedError("a device that trains from its store holds no simulation data set")
        return self.split


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
    store: DeviceStore | None = None  # "train-from" = "device-store": the device's own events (one user)

    @property
    def population(self) -> int:
        """The N the node's own privacy terms assume: the data set's users; for a device that trains from its
        store `federated.nodes`, the SuperNodes the run waits for, each one device: the server's N (the
        sum of the nodes' describe replies) is at least that, so it can only ask for more noise than the
        device's own floor (client/training/own_privacy.py), never less."""
        if self.store is not None:
            return self.shared.config.federated.nodes
        return int(self.shared.data_split().full.n_users)

    @property
    def privacy(self) -> OwnPrivacy:
        """The privacy terms the node's own configuration pins (noise multiplier, noise seed, counts)."""
        return OwnPrivacy(self.shared.config, self.population)

    def local_rows(self) -> UserSequences:
        """The rows the node's users train (and count trending) on, indexed by the global user index of its
        slots: the simulation data set's, or the device's store read now (DataError naming the device folder
        when it cannot be read)."""
        shared = self.shared
        if self.store is None:
            assert shared.rows is not None  # a simulation node's NodeModel has its rows
            return shared.rows
        assert shared.catalogue is not None  # a device's NodeModel has its release's catalogue
        return self.store.rows(shared.catalogue.item_rows, blocked=shared.blocked)

    def local_trainer(self) -> LocalTrainer:
        """The trainer over `local_rows` (its `seqs`): the process's shared one, or for a device that trains
        from its store one over the rows read now (a LocalTrainer is cheap to build; the model is shared)."""
        shared = self.shared
        if self.store is None:
            assert shared.trainer is not None  # a simulation node's NodeModel has its trainer
            return shared.trainer
        return LocalTrainer(
            shared.model,
            self.local_rows(),
            layout=shared.layout,
            blocked=shared.blocked,
            config=shared.config.federated,
        )

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
        _MODELS[key] = NodeModel(config, model, layout, split.cold_items, split, trainer, rows)
    return _MODELS[key]


def device_model(config: FedhomeConfig, device_dir: Path, public_key: Ed25519PublicKey) -> NodeModel:
    """The model of a device that trains from its store, over the catalogue of the release installed in
    `device_dir` (verified with `public_key` at every call: client/training/device_store.py); built, and
    the catalogue read, again only when that release changes (the app synced a new one), else the process's
    one. No item is held out."""
    release = verified_release(device_dir, public_key)
    config_key = json.dumps(to_flat(config), sort_keys=True, default=str)
    device_key = f"{config_key}|{device_dir}|"
    key = device_key + release.manifest_sha256
    if key not in _MODELS:
        for stale in [k for k in _MODELS if k.startswith(device_key)]:  # the device's previous release
            del _MODELS[stale]
        catalogue = read_catalogue(release, device_dir)
        torch.set_num_threads(max(config.train.threads, 1))
        torch.manual_seed(config.federated.seed)  # what is not trained starts as at the server
        model = TwoTower(catalogue.features, config.model)
        layout = trainable_layout(model, config.federated.trainable)
        blocked = np.zeros(catalogue.features.n_items, dtype=bool)
        _MODELS[key] = NodeModel(config, model, layout, blocked, catalogue=catalogue)
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


def train_from(node_config: Mapping[str, object]) -> TrainFrom:
    """Node config "train-from": "partition" (the default: users of the simulation data set) or
    "device-store" (the device folder's own events); ConfigError for anything else. Stated, never inferred
    from a store merely existing in "device-dir", which simulation nodes use for receipts alone."""
    value = node_config.get("train-from", "partition")
    if value == "partition":
        return "partition"
    if value == "device-store":
        return "device-store"
    raise ConfigError(f'node config "train-from" must be one of {get_args(TrainFrom)}, got {value!r}')


def load_node(config: FedhomeConfig, context: Context) -> Node:
    """The node for this context: its users, and the model shared by the process's nodes."""
    if train_from(context.node_config) == "device-store":
        return store_node(config, context)
    shared = node_model(config)
    partition_id = int(context.node_config.get("partition-id", 0))
    num_partitions = int(context.node_config.get("num-partitions", 1))
    users = hosted_users(
        shared.data_split().full.n_users,
        partition_id=partition_id,
        num_partitions=num_partitions,
        devices_per_node=config.federated.devices_per_node,
    )
    folder = device_folders(
        node_device_dir=str(context.node_config.get("device-dir", "")),
        receipts_dir=config.federated.receipts_dir,
        users=users,
    )
    return Node(
        shared,
        users,
        partition_id,
        int(context.node_config.get("participation-cap", 0)),
        folder,
        counts_dir=_counts_dir(context),
        simulated=in_simulation_engine(),
    )


def store_node(config: FedhomeConfig, context: Context) -> Node:
    """A device's SuperNode that trains from its own store: one user (slot 0), its receipts, participation
    counts and training log in node config "device-dir", the catalogue of the release installed there,
    verified with the app's pinned key (node config "release-key", a PEM file). ConfigError without a device
    folder or a key, and unless the run says that devices train on every row they hold
    (`federated.train_on_valid`): the server then knows that no row is held out (it runs no start check and
    reports validation as not held out). DataError naming the folder when no verified release is there."""
    device_dir = str(context.node_config.get("device-dir", ""))
    if not device_dir:
        raise ConfigError('node config "train-from" = "device-store" needs "device-dir", the device folder')
    key_file = str(context.node_config.get("release-key", ""))
    if not key_file:
        raise ConfigError(
            'node config "train-from" = "device-store" needs "release-key", the PEM file of the public key '
            "the app pins for releases: the device trains with its installed release's catalogue"
        )
    if not config.federated.train_on_valid:
        raise ConfigError(
            'node config "train-from" = "device-store": a device trains on every event it holds, which the '
            "run must state with federated.train_on_valid = true (no row is held out: the start check is "
            "off and validation figures are not held out)"
        )
    shared = device_model(config, Path(device_dir), load_public_key(Path(key_file)))
    users = np.zeros(1, dtype=np.int64)  # slot 0: the device's one shopper, user 0 of its own rows
    return Node(
        shared,
        users,
        int(context.node_config.get("partition-id", 0)),  # only orders the nodes' slots at the server
        int(context.node_config.get("participation-cap", 0)),
        device_folders(node_device_dir=device_dir, receipts_dir="", users=users),
        counts_dir=_counts_dir(context),
        simulated=in_simulation_engine(),
        store=DeviceStore(Path(device_dir)),
    )


def _counts_dir(context: Context) -> Path | None:
    counts_dir = str(context.node_config.get("counts-dir", ""))
    return Path(counts_dir) if counts_dir else None
