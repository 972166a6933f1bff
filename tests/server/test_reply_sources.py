"""A round's replies are summed once per queried node: a second reply from a node, or a reply from a node
that was not queried, is refused and counted (trending queries and training rounds)."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

from server.rounds.messaging import train_round
from server.trending.trending_query import trending_query
from shared.messages import RoundSettings, TrainReply

N_ITEMS, K = 4, 2


pytestmark = pytest.mark.usefixtures("flower_task_identity")


class FakeGrid:
    """Answers every query with the prepared replies, whoever they claim to come from."""

    def __init__(self, replies: list[Any]) -> None:
        self.replies = replies

    def send_and_receive(self, messages: list[Any], *, timeout: float) -> list[Any]:
        return self.replies


def reply(node: int, records: dict[str, Any]) -> SimpleNamespace:
    return SimpleNamespace(
        metadata=SimpleNamespace(src_node_id=node), has_error=lambda: False, content=RecordDict(records)
    )


def trending_reply(node: int, count: int) -> SimpleNamespace:
    node_sum = np.zeros(N_ITEMS, np.float32)
    node_sum[0] = count / math.sqrt(K)
    return reply(
        node, {"trending": ArrayRecord({"sum": Array(node_sum)}), "stats": MetricRecord({"count": count})}
    )


def train_reply(node: int, count: int) -> SimpleNamespace:
    update = np.full(3, 0.1, np.float32) * count
    return reply(node, dict(TrainReply(update, count, 0).to_records()))


ASSIGNMENT = {1: np.array([0, 1]), 2: np.array([0])}


def query(replies: list[Any]) -> Any:
    settings = {"as_of_s": 0, "window_s": 1.0, "max_items": K, "n_items": N_ITEMS, "timeout_s": 1.0}
    return trending_query(FakeGrid(replies), ASSIGNMENT, **settings)  # type: ignore[arg-type]


def train(replies: list[Any]) -> Any:
    grid: Any = FakeGrid(replies)
    settings = RoundSettings(
        round=1, run_id="r", sample_rate=0.5, noise_multiplier=1.0, delta=1e-5, participation_cap=0,
        clip_norm=1.0, local_noise_multiplier=0.0, round_seed=1, noise_seed=-1,
    )  # fmt: skip
    return train_round(
        grid, ASSIGNMENT, np.zeros(3, np.float32), settings, clip_norm=1.0, check_norm=True, timeout_s=1.0
    )


def test_trending_second_reply_from_a_node_is_refused_and_counted() -> None:
    out = query([trending_reply(1, 2), trending_reply(1, 2), trending_reply(2, 1)])
    assert out.count == 3 and out.rejected_nodes == 1 and out.rejected_users == 0
    assert out.total[0] == pytest.approx(3 / math.sqrt(K))


def test_trending_reply_from_a_node_not_queried_is_refused_and_counted() -> None:
    out = query([trending_reply(1, 2), trending_reply(9, 0), trending_reply(2, 1)])
    assert out.count == 3 and out.rejected_nodes == 1
    assert out.total[0] == pytest.approx(3 / math.sqrt(K))


def test_train_second_reply_from_a_node_is_refused_and_counted() -> None:
    out = train([train_reply(1, 2), train_reply(1, 2), train_reply(2, 1)])
    assert out.count == 3 and out.rejected_nodes == 1 and out.rejected_users == 0
    assert out.update_sum == pytest.approx(np.full(3, 0.3))


def test_train_reply_from_a_node_not_queried_is_refused_and_counted() -> None:
    out = train([train_reply(1, 2), train_reply(9, 0), train_reply(2, 1)])
    assert out.count == 3 and out.rejected_nodes == 1
