"""A node puts the popularity prior a message carries into the model it trains and evaluates with
(client/node.py: Node.use_prior), zeros when a message carries none, and refuses a prior that is not one
finite value per catalogue item."""

from __future__ import annotations

import numpy as np
import pytest
from federated_toy import tiny_config
from flwr.app import Message, RecordDict

from client.client_app import handle_evaluate, handle_start_check, handle_train
from client.node import Node, node_model
from shared.errors import UpdateRejectedError
from shared.messages import (
    EvaluateRequest,
    RoundSettings,
    StartCheckRequest,
    TrainInstruction,
    TrainReply,
)
from shared.model.params import get_flat
from shared.run_folder import RunFolder

TEXT_DIM = 24
SETTINGS = RoundSettings(
    round=1, run_id="r", sample_rate=0.5, noise_multiplier=1.0, delta=1e-5, participation_cap=0,
    clip_norm=10.0, local_noise_multiplier=0.0, round_seed=3, noise_seed=-1,
)  # fmt: skip


pytestmark = pytest.mark.usefixtures("flower_task_identity")  # tests/conftest.py


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Node:
    """A node hosting every user of the tiny synthetic shop, its model with a popularity prior."""
    tmp_path = tmp_path_factory.mktemp("node")
    config = tiny_config(
        tmp_path, tmp_path / "cache", model__popularity_prior="true", start_check__enabled="auto"
    )
    folder = RunFolder(config.federated.run_dir)
    folder.item_vectors.parent.mkdir(parents=True, exist_ok=True)
    n_items = int(config.data.synthetic.n_items)
    np.save(folder.item_vectors, np.random.default_rng(0).normal(size=(n_items, TEXT_DIM)).astype(np.float32))
    shared = node_model(config)
    return Node(shared, np.arange(shared.data_split().full.n_users, dtype=np.int64), 0)


def buffer(node: Node) -> np.ndarray:
    return node.shared.model.items.popularity.numpy().copy()


def a_prior(node: Node, n: int | None = None) -> np.ndarray:
    size = node.shared.model.items.n_items if n is None else n
    return np.log1p(np.arange(size, dtype=np.float32) % 7)


def evaluate(node: Node, prior: np.ndarray | None) -> None:
    params = get_flat(node.shared.model, node.shared.layout)
    message = Message(
        EvaluateRequest(params, "valid", 5, prior).to_records(), dst_node_id=1, message_type="evaluate"
    )
    handle_evaluate(node, message)


def train(node: Node, prior: np.ndarray | None) -> TrainReply:
    params = get_flat(node.shared.model, node.shared.layout)
    instruction = TrainInstruction(params, np.arange(8, dtype=np.int64), SETTINGS, prior)
    message = Message(RecordDict(instruction.to_records()), dst_node_id=1, message_type="train")
    return TrainReply.from_records(handle_train(node, message, RecordDict({})).content, n_sampled=8)


def test_a_messages_prior_is_put_into_the_node_model_and_none_means_zeros(node: Node) -> None:
    prior = a_prior(node)
    evaluate(node, prior)
    np.testing.assert_array_equal(buffer(node), prior)
    evaluate(node, None)  # the process's nodes share the model: a message without a prior resets it
    np.testing.assert_array_equal(buffer(node), np.zeros_like(prior))
    params = get_flat(node.shared.model, node.shared.layout)
    request = StartCheckRequest(params, params, np.arange(3, dtype=np.int64), 10.0, prior)
    handle_start_check(node, Message(request.to_records(), dst_node_id=1, message_type="query.start_check"))
    np.testing.assert_array_equal(buffer(node), prior)


def test_training_uses_the_prior(node: Node) -> None:
    """The prior's learned weight gets a gradient only when there is a prior to weigh."""
    names, sizes = node.shared.layout.names, node.shared.layout.sizes
    at = sum(sizes[: names.index("items.popularity_weight")])
    assert train(node, None).update_sum[at] == 0.0
    assert abs(train(node, a_prior(node)).update_sum[at]) > 0.0


@pytest.mark.parametrize("size", [0, 1, -1])
def test_a_prior_of_the_wrong_length_is_refused_and_changes_nothing(node: Node, size: int) -> None:
    evaluate(node, a_prior(node))
    before = buffer(node)
    wrong = a_prior(node, node.shared.model.items.n_items + size) if size >= 0 else a_prior(node, 3)
    if size == 0:  # the right length, a value not finite
        wrong[2] = np.inf
    with pytest.raises(UpdateRejectedError, match="popularity prior"):
        evaluate(node, wrong)
    with pytest.raises(UpdateRejectedError, match="popularity prior"):
        train(node, wrong)
    np.testing.assert_array_equal(buffer(node), before)
