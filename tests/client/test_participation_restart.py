"""Participation caps across a restarted SuperNode: a deployed node asked for a cap keeps its devices' counts
in a folder (node config "counts-dir") or refuses to train; in Flower's simulation engine the counts stay in
the node's state as before (client/training/participation_counts.py)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from federated_toy import tiny_config
from flwr.app import Context, Message, RecordDict

from client.client_app import handle_train
from client.node import Node, in_simulation_engine, load_node, node_model
from client.training.participation_counts import CountsFile
from shared.config import FedhomeConfig
from shared.errors import ConfigError, UpdateRejectedError
from shared.messages import RoundSettings, TrainInstruction, TrainReply
from shared.model.params import get_flat
from shared.run_folder import RunFolder

TEXT_DIM = 24
CAP = 1
SETTINGS = RoundSettings(
    round=1, run_id="run-a", sample_rate=0.5, noise_multiplier=1.0, delta=1e-5, participation_cap=CAP,
    clip_norm=10.0, local_noise_multiplier=0.0, round_seed=3, noise_seed=-1,
)  # fmt: skip

pytestmark = pytest.mark.usefixtures("flower_task_identity")  # tests/conftest.py


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> FedhomeConfig:
    tmp_path = tmp_path_factory.mktemp("node")
    config = tiny_config(tmp_path, tmp_path / "cache")
    folder = RunFolder(config.federated.run_dir)
    folder.item_vectors.parent.mkdir(parents=True, exist_ok=True)
    n_items = int(config.data.synthetic.n_items)
    np.save(folder.item_vectors, np.random.default_rng(0).normal(size=(n_items, TEXT_DIM)).astype(np.float32))
    return config


@pytest.fixture(scope="module")
def deployed(config: FedhomeConfig) -> Node:
    """A shard node hosting every user of the tiny shop, as a deployed SuperNode without folders sees it."""
    shared = node_model(config)
    return Node(shared, np.arange(shared.data_split().full.n_users, dtype=np.int64), 0)


def train(
    node: Node, state: RecordDict, slots: list[int], *, round_number: int = 1, cap: int = CAP
) -> TrainReply:
    settings = dataclasses.replace(SETTINGS, round=round_number, participation_cap=cap)
    params = get_flat(node.shared.model, node.shared.layout)
    instruction = TrainInstruction(params, np.array(slots, np.int64), settings)
    message = Message(RecordDict(instruction.to_records()), dst_node_id=1, message_type="train")
    return TrainReply.from_records(handle_train(node, message, state).content, n_sampled=len(slots))


def test_a_deployed_node_without_a_folder_refuses_a_capped_round_and_trains_an_uncapped_one(
    deployed: Node,
) -> None:
    assert not deployed.simulated and deployed.folder is None and deployed.counts_dir is None
    state = RecordDict({})
    with pytest.raises(UpdateRejectedError, match=r"participation cap of 1.*counts-dir"):
        train(deployed, state, [0, 1])
    assert len(state) == 0  # refused before any count or training
    assert train(deployed, state, [0, 1], cap=0).count == 2


def test_a_nodes_own_cap_alone_also_needs_a_folder(deployed: Node) -> None:
    with pytest.raises(UpdateRejectedError, match="participation cap of 2"):
        train(dataclasses.replace(deployed, device_cap=2), RecordDict({}), [0], cap=0)


def test_counts_in_a_counts_folder_survive_a_restarted_supernode(deployed: Node, tmp_path: Path) -> None:
    node = dataclasses.replace(deployed, counts_dir=tmp_path / "counts")
    first = train(node, RecordDict({}), [0, 1, 2], round_number=1)
    assert (first.count, first.refused_count) == (3, 0)
    saved = json.loads((tmp_path / "counts" / "participation-run-a.json").read_text())
    assert saved["run-id"] == "run-a" and saved["counts"][:4] == [1, 1, 1, 0]
    restarted = RecordDict({})  # a new SuperNode process: Flower's context.state starts empty
    second = train(node, restarted, [0, 1, 3], round_number=2)
    assert (second.count, second.refused_count) == (1, 2)  # slots 0 and 1 are at their cap of 1
    assert json.loads((tmp_path / "counts" / "participation-run-a.json").read_text())["counts"][:4] == [
        1,
        1,
        1,
        1,
    ]


def test_in_the_simulation_engine_counts_stay_in_node_state_as_before(deployed: Node) -> None:
    node = dataclasses.replace(deployed, simulated=True)
    state = RecordDict({})
    assert train(node, state, [0, 1], round_number=1).count == 2
    again = train(node, state, [0, 1, 2], round_number=2)
    assert (again.count, again.refused_count) == (1, 2)
    fresh = train(
        node, RecordDict({}), [0, 1], round_number=3
    )  # a new simulation: fresh states, a new segment
    assert (fresh.count, fresh.refused_count) == (2, 0)


def test_load_node_reads_counts_dir_and_outside_ray_is_not_simulated(
    config: FedhomeConfig, tmp_path: Path
) -> None:
    node_config: dict[str, bool | float | int | str] = {
        "partition-id": 1, "num-partitions": 2, "counts-dir": str(tmp_path / "c"),
    }  # fmt: skip
    context = Context(run_id=1, node_id=1, node_config=node_config, state=RecordDict({}), run_config={})
    node = load_node(config, context)
    assert node.counts_dir == tmp_path / "c" and node.simulated is False
    assert in_simulation_engine() is False
    plain = load_node(config, Context(1, 1, {"partition-id": 0, "num-partitions": 2}, RecordDict({}), {}))
    assert plain.counts_dir is None


def test_an_unreadable_counts_file_or_an_odd_run_id_refuses_rather_than_restarting(tmp_path: Path) -> None:
    file = CountsFile(tmp_path, "run-a")
    file.save(np.array([2, 0], np.int64))
    assert file.load() is not None and file.load().tolist() == [2, 0]  # type: ignore[union-attr]
    file.path.write_text('{"run-id": "run-a", "counts": [1, -1]}')
    with pytest.raises(ConfigError, match="unreadable"):
        file.load()
    file.path.write_text("{torn")
    with pytest.raises(ConfigError, match="unreadable"):
        file.load()
    with pytest.raises(UpdateRejectedError, match="run id"):
        CountsFile(tmp_path, "../elsewhere")
