"""A round's replies are summed once per queried node: a second reply from a node, or a reply from a node
that was not queried, is refused and counted (trending queries and training rounds)."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from server.rounds.messaging import train_round
from server.trending.trending_query import trending_query
from shared.messages import REPLY_CHECK, RoundSettings, TrainReply, echo_reply_check

N_ITEMS, K = 4, 2


pytestmark = pytest.mark.usefixtures("flower_task_identity")


class FakeGrid:
    """Answers every query with the prepared replies, whoever they claim to come from; a train reply without
    a reply check echoes the one its node was sent (a reply from a node not sent one carries none)."""

    def __init__(self, replies: list[Any]) -> None:
        self.replies = replies

    def send_and_receive(self, messages: list[Any], *, timeout: float) -> list[Any]:
        sent = {m.metadata.dst_node_id: m.content for m in messages}
        for reply in self.replies:
            if reply.metadata.src_node_id in sent and REPLY_CHECK not in reply.content.config_records:
                echo_reply_check(sent[reply.metadata.src_node_id], reply.content)
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


def stale_reply(node: int, count: int, **echo: Any) -> SimpleNamespace:
    """A train reply carrying its own reply check (run "r", round 1, nonce "n" unless `echo` says)."""
    out = train_reply(node, count)
    out.content[REPLY_CHECK] = ConfigRecord({"run-id": "r", "round": 1, "nonce": "n", **echo})
    return out


@pytest.mark.parametrize(
    ("echo", "reason"),
    [({"round": 0}, "stale_round"), ({"run-id": "old"}, "stale_round"), ({}, "replayed")],
)
def test_a_reply_to_another_round_or_a_replayed_one_is_refused_and_counted(
    echo: dict[str, Any], reason: str
) -> None:
    out = train([stale_reply(1, 2, **echo), train_reply(2, 1)])  # node 1's nonce is never "n"
    assert out.count == 1 and out.rejected_nodes == 1 and out.rejected_users == 2
    assert out.rejections == {reason: 1}


def test_a_duplicate_and_a_missing_reply_are_counted_by_reason() -> None:
    out = train([train_reply(1, 2), train_reply(1, 2)])
    assert out.count == 2 and out.rejections == {"duplicate": 1, "no_reply": 1} and out.rejected_users == 1


def test_a_node_summing_fewer_devices_than_sampled_is_kept_and_the_rest_rejected() -> None:
    out = train([train_reply(1, 1), train_reply(2, 1)])  # node 1 was sent 2 slots: one device dropped
    assert out.count == 2 and out.rejected_nodes == 0 and out.rejected_users == 1
