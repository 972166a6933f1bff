"""A node pins its privacy terms from its own configuration (client/training/own_privacy.py): a round whose
settings ask for less local noise, or send a fixed noise seed to a node not configured deterministic, is
refused; the devices noise with their own z; the exact unclipped count leaves only with adaptive clipping; a
start check is answered only for the node's own z_s, and only where its configuration runs one."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from flwr.app import Message, RecordDict

from client.client_app import handle_start_check, handle_train
from client.node import Node
from client.training.own_privacy import OwnPrivacy
from client.training.round_update import UpdateSum
from shared.config import FedhomeConfig, with_overrides
from shared.errors import UpdateRejectedError
from shared.messages import RoundSettings, StartCheckRequest, TrainInstruction, TrainReply
from shared.privacy.noise import GaussianNoise

DIM, N_USERS = 3, 4
SETTINGS = RoundSettings(
    round=1, run_id="r", sample_rate=0.5, noise_multiplier=0.8, delta=1e-5, participation_cap=0,
    clip_norm=1.0, local_noise_multiplier=0.0, round_seed=1, noise_seed=-1,
)  # fmt: skip


pytestmark = pytest.mark.usefixtures("flower_task_identity")  # tests/conftest.py


class RecordingTrainer:
    """Stands in for LocalTrainer: one unclipped user per sampled slot; records the local z it was given."""

    def __init__(self) -> None:
        self.local_noise_multipliers: list[float] = []

    def clipped_sum(
        self,
        params: np.ndarray,
        users: np.ndarray,
        *,
        round_seed: int,
        clip_norm: float,
        local_noise_multiplier: float = 0.0,
        noise: GaussianNoise | None = None,
    ) -> UpdateSum:
        self.local_noise_multipliers.append(local_noise_multiplier)
        return UpdateSum(np.zeros(DIM, np.float32), int(users.size), int(users.size))


def config(**overrides: str) -> FedhomeConfig:
    flat = {"privacy.noise_multiplier": "0.8", **{k.replace("__", "."): v for k, v in overrides.items()}}
    result: FedhomeConfig = with_overrides(FedhomeConfig(), flat)
    return result


def node(cfg: FedhomeConfig) -> Node:
    shared: Any = SimpleNamespace(
        config=cfg,
        data_split=lambda: SimpleNamespace(full=SimpleNamespace(n_users=N_USERS)),
        layout=SimpleNamespace(dim=DIM),
        trainer=RecordingTrainer(),
        model=SimpleNamespace(items=SimpleNamespace(set_popularity=lambda prior: None)),  # no prior here
    )
    return Node(shared, np.arange(N_USERS, dtype=np.int64), 0)


def asked_z(target: Node) -> list[float]:
    trainer: Any = target.shared.trainer
    return list(trainer.local_noise_multipliers)


def train(target: Node, **settings: Any) -> TrainReply:
    round_settings = dataclasses.replace(SETTINGS, **settings)
    instruction = TrainInstruction(np.zeros(DIM, np.float32), np.array([0, 2], np.int64), round_settings)
    message = Message(RecordDict(instruction.to_records()), dst_node_id=1, message_type="train")
    reply = handle_train(target, message, RecordDict({}))
    return TrainReply.from_records(reply.content, n_sampled=2)


def test_a_local_dp_device_refuses_a_round_asking_for_less_noise_than_its_own_z() -> None:
    target = node(config(privacy__mode="local"))
    for asked in (0.0, 0.5, 0.8 * (1 - 1e-6)):
        with pytest.raises(UpdateRejectedError, match="below this node's"):
            train(target, local_noise_multiplier=asked)
    assert asked_z(target) == []  # refused before any training


def test_a_local_dp_device_noises_with_its_own_z_or_a_larger_one_asked() -> None:
    target = node(config(privacy__mode="local"))
    train(target, local_noise_multiplier=0.8)
    train(target, local_noise_multiplier=1.3)
    assert asked_z(target) == [0.8, 1.3]


@pytest.mark.integration
def test_the_local_z_a_node_pins_is_the_z_the_server_plan_calibrates() -> None:
    """With privacy.noise_multiplier 0 the node calibrates z as the server's plan does (same inputs)."""
    from server.rounds.privacy_plan import PrivacyPlan

    cfg = config(privacy__mode="local", privacy__noise_multiplier="0", federated__rounds="20")
    assert OwnPrivacy(cfg, 50).noise_multiplier == PrivacyPlan.build(cfg, 50).noise_multiplier > 0
    assert OwnPrivacy(config(privacy__mode="none"), 50).secure_noise_multiplier(trending=False) == 0.0


def test_a_fixed_noise_seed_from_the_server_is_refused_unless_the_node_is_deterministic() -> None:
    with pytest.raises(UpdateRejectedError, match="fixed noise seed"):
        train(node(config(privacy__mode="local")), local_noise_multiplier=0.8, noise_seed=9)
    with pytest.raises(UpdateRejectedError, match="fixed noise seed"):
        train(node(config()), noise_seed=9)  # central mode too: the seed of the secure noise share
    train(node(config(privacy__mode="local", privacy__seed="11")), local_noise_multiplier=0.8, noise_seed=9)
    train(node(config(privacy__mode="local")), local_noise_multiplier=0.8, noise_seed=-1)


def test_a_deterministic_node_draws_the_same_noise_from_the_same_seed() -> None:
    own = OwnPrivacy(config(privacy__seed="11"), N_USERS)
    settings = dataclasses.replace(SETTINGS, noise_seed=9)
    first, second = own.noise_source(settings), own.noise_source(settings)
    assert np.array_equal(first.sample(4, std=1.0), second.sample(4, std=1.0))


def test_the_unclipped_count_is_sent_only_with_adaptive_clipping() -> None:
    assert train(node(config())).unclipped_count == 0
    assert train(node(config(privacy__adaptive_clipping="true"))).unclipped_count == 2


def start_check(target: Node, noise_multiplier: float) -> None:
    params = np.zeros(DIM, np.float32)
    request = StartCheckRequest(params, params, np.array([0, 2], np.int64), noise_multiplier)
    message = Message(request.to_records(), dst_node_id=1, message_type="query.start_check")
    handle_start_check(target, message)


def test_a_start_check_is_refused_unless_it_asks_for_the_nodes_own_noise_multiplier() -> None:
    for asked in (0.0, 5.0, 10.0 * (1 + 1e-6), float("nan")):
        with pytest.raises(UpdateRejectedError, match=r"this node's is 10\.0"):
            start_check(node(config()), asked)
    OwnPrivacy(config(), N_USERS).check_start_check(10.0)
    OwnPrivacy(config(start_check__noise_multiplier="4"), N_USERS).check_start_check(4.0)
    OwnPrivacy(config(privacy__mode="none"), N_USERS).check_start_check(0.0)  # no noise in mode none


@pytest.mark.parametrize(
    ("overrides", "why"),
    [
        ({"federated__train_on_valid": "true"}, "validation rows"),
        ({"privacy__mode": "local"}, "local"),
        ({"start_check__enabled": "off"}, "off"),
    ],
)
def test_a_node_whose_configuration_runs_no_start_check_refuses_one(
    overrides: dict[str, str], why: str
) -> None:
    with pytest.raises(UpdateRejectedError, match=why):
        start_check(node(config(**overrides)), 10.0)
