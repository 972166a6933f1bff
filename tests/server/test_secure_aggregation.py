"""Secure aggregation: the server side (server/secagg/secure_round.py) against the nodes' real handlers
(client/masked_update.py), messages passed in process. The sum comes out right with and without
dropouts, one node's masked input hides its sum, the noise on the released sum has the accounted std,
and a tampered or inconsistent request is refused by the node."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import pytest
from flwr.app import ConfigRecord, Error, Message, RecordDict

from client.masked_update import (
    check_noise_share,
    handle_keys,
    handle_shares,
    handle_unmask,
    masked_content,
)
from client.training.round_update import UpdateSum
from server.audit.entry_checks import check_noise
from server.audit.trending_checks import check_trending_noise
from server.secagg.secure_round import SecureReplies, SecureSettings, secure_train_round
from shared.errors import UpdateRejectedError
from shared.messages import RoundSettings, echo_reply_check
from shared.privacy.noise import GaussianNoise
from shared.secagg_primitives import sensitivity

DIM, STEP = 40, 2.0**-24


pytestmark = pytest.mark.usefixtures("flower_task_identity")


class LoopbackGrid:
    """Delivers each message to its node's real secure-aggregation handlers, each node with its own
    context.state; a node listed in `silent[stage]` stops answering from that stage on. Train messages get
    the node's prepared UpdateSum. Every reply is kept in `seen`."""

    STAGES = ("query.secagg_keys", "query.secagg_shares", "train", "query.secagg_unmask")

    def __init__(self, sums: dict[int, UpdateSum], silent: dict[str, set[int]] | None = None) -> None:
        self.sums, self.silent = sums, silent or {}
        self.states: dict[int, RecordDict] = {node: RecordDict({}) for node in sums}
        self.seen: list[tuple[str, int, Message]] = []
        self.noise = GaussianNoise(seed=5)
        # the nodes' own configuration: the z they require of the released sum, and the N they know
        self.node_z, self.population = 0.0, max(sum(s.count for s in sums.values()), 1)

    def _is_silent(self, stage: str, node: int) -> bool:
        upto = self.STAGES[: self.STAGES.index(stage) + 1]
        return any(node in self.silent.get(s, set()) for s in upto)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float) -> list[Message]:
        replies = []
        for message in messages:
            stage, node = message.metadata.message_type, message.metadata.dst_node_id
            if self._is_silent(stage, node):
                continue
            try:
                reply = self._handle(stage, message, self.states[node])
            except UpdateRejectedError as exc:  # a node's refusal reaches the server as an error reply
                reply = Message(Error(code=0, reason=str(exc)), reply_to=message)
            self.seen.append((stage, node, reply))
            replies.append(reply)
        return replies

    def _handle(self, stage: str, message: Message, state: RecordDict) -> Message:
        if stage == "query.secagg_keys":
            return handle_keys(message, state)
        if stage == "query.secagg_shares":
            return handle_shares(message, state)
        if stage == "train":
            result = self.sums[message.metadata.dst_node_id]
            stats = {"count": result.count, "refused-count": 0, "unclipped-count": result.unclipped_count}
            content = masked_content(
                message, state, result, stats, self.noise, noise_multiplier=self.node_z, bound=1.0,
                population=self.population,
            )  # fmt: skip
            return Message(echo_reply_check(message.content, content), reply_to=message)
        return handle_unmask(message, state)


def node_sums(n_nodes: int, *, seed: int = 0, users: int = 2) -> dict[int, UpdateSum]:
    """Node id -> a sum of `users` updates of norm <= 1 (node ids 101, 102, ...)."""
    rng = np.random.default_rng(seed)
    out = {}
    for k in range(n_nodes):
        updates = rng.normal(size=(users, DIM))
        updates /= np.maximum(1.0, np.linalg.norm(updates, axis=1, keepdims=True))
        out[101 + k] = UpdateSum(updates.sum(0).astype(np.float32), users, int(k % 3 == 0))
    return out


def run(
    grid: LoopbackGrid,
    *,
    mode: str = "none",
    z: float = 0.0,
    neighbours: int = 0,
    dim: int = DIM,
    node_z: float | None = None,
) -> SecureReplies:
    """A secure round with the server's `mode` and z; the nodes are configured with `node_z` (by default
    the same z in central mode, else 0)."""
    grid.node_z = (z if mode == "central" else 0.0) if node_z is None else node_z
    assignment = {node: np.arange(s.count) for node, s in grid.sums.items()}
    settings = RoundSettings(
        round=3, run_id="r1", sample_rate=0.5, noise_multiplier=z, delta=1e-5, participation_cap=0,
        clip_norm=1.0, local_noise_multiplier=0.0, round_seed=1, noise_seed=9,
    )  # fmt: skip
    secure = SecureSettings(
        mode=mode,
        noise_multiplier=z,
        noise=GaussianNoise(seed=7),
        neighbourhood=neighbours,
        step=STEP,
        timeout_s=1.0,
    )
    return secure_train_round(
        grid,  # type: ignore[arg-type]
        assignment,
        np.zeros(dim, np.float32),
        settings,
        clip_norm=1.0,
        secure=secure,
    )


def plain_sum(sums: dict[int, UpdateSum], nodes: Iterable[int]) -> np.ndarray:
    return np.sum([sums[n].total.astype(np.float64) for n in nodes], axis=0)


def test_the_secure_sum_is_the_sum_of_the_node_sums() -> None:
    grid = LoopbackGrid(node_sums(6))
    out = run(grid)
    np.testing.assert_allclose(out.replies.update_sum, plain_sum(grid.sums, grid.sums), atol=6 * STEP)
    assert out.replies.count == 12 and out.replies.unclipped_count == 0  # an exact count: never sent
    assert (out.record.participants, out.record.masked_inputs, out.record.dropped) == (6, 6, 0)
    assert out.noise_std == 0 and out.record.neighbours == 5 and not out.record.failed
    assert out.record.sensitivity == pytest.approx(1.0 + STEP * np.sqrt(DIM))


def test_a_masked_input_hides_the_node_sum() -> None:
    grid = LoopbackGrid(node_sums(4))
    run(grid)
    masked = {
        node: r.content.array_records["update"]["masked"].numpy() for s, node, r in grid.seen if s == "train"
    }
    first = masked[101]
    encoded = np.rint(grid.sums[101].total.astype(np.float64) / STEP).astype(np.int64).view(np.uint64)
    assert np.mean(first[:DIM] == encoded) < 0.1  # masked: almost no coordinate shows the value
    top_bits = (first >> np.uint64(60)).astype(int)  # uniform words: the top 4 bits spread over 0..15
    assert len(set(top_bits.tolist())) > 8
    again = LoopbackGrid(grid.sums)
    run(again)
    second = next(r for s, n, r in again.seen if s == "train" and n == 101)
    assert not np.array_equal(second.content.array_records["update"]["masked"].numpy(), first)  # fresh keys


@pytest.mark.parametrize("neighbours", [0, 4])
def test_nodes_that_drop_after_sharing_are_left_out_and_their_masks_removed(neighbours: int) -> None:
    sums = node_sums(9, seed=1)
    grid = LoopbackGrid(sums, silent={"train": {103, 107}})
    out = run(grid, neighbours=neighbours)
    kept = [n for n in sums if n not in (103, 107)]
    np.testing.assert_allclose(out.replies.update_sum, plain_sum(sums, kept), atol=9 * STEP)
    assert out.replies.count == 14 and out.replies.rejected_nodes == 2 and out.replies.rejected_users == 4
    assert (out.record.masked_inputs, out.record.dropped, out.record.neighbours) == (
        7,
        2,
        neighbours or 8,
    )


def test_a_node_silent_from_the_key_exchange_takes_no_part() -> None:
    sums = node_sums(5, seed=2)
    out = run(LoopbackGrid(sums, silent={"query.secagg_keys": {102}}))
    np.testing.assert_allclose(out.replies.update_sum, plain_sum(sums, [101, 103, 104, 105]), atol=5 * STEP)
    assert out.record.dropped == 0 and out.record.masked_inputs == 4


def test_too_many_dropouts_sum_nothing_and_say_why() -> None:
    sums = node_sums(5, seed=3)
    out = run(LoopbackGrid(sums, silent={"train": {101, 102, 103}}))
    assert out.replies.count == 0 and out.replies.rejected_users == 10 and out.record.failed
    assert np.all(out.replies.update_sum == 0)


def test_central_noise_is_shared_by_the_nodes_and_topped_up_for_dropped_users() -> None:
    dim, z = 20_000, 1.0
    rng = np.random.default_rng(4)
    sums = {101 + k: UpdateSum(np.zeros(dim, np.float32), 2, 0) for k in range(6)}
    for node in sums:
        sums[node] = UpdateSum(rng.normal(scale=0.001, size=dim).astype(np.float32), 2, 0)
    for silent in ({}, {"train": {104}}):
        grid = LoopbackGrid(sums, silent=silent)
        out = run(grid, mode="central", z=z, dim=dim)
        kept = [n for n in sums if n not in silent.get("train", set())]
        noise = out.replies.update_sum - plain_sum(sums, kept)
        expected = z * sensitivity(1.0, step=STEP, dim=dim)
        assert out.noise_std == pytest.approx(expected)
        assert np.std(noise) == pytest.approx(expected, rel=0.03) and abs(np.mean(noise)) < 0.03
        share = len(kept) / 6  # the nodes' part of the variance; the server adds the rest
        assert out.record.distributed_noise_std == pytest.approx(expected * np.sqrt(share))
        assert out.record.server_noise_std == pytest.approx(expected * np.sqrt(1 - share))


def unmask_message(node: int, index: int, survivors: list[int], dropped: list[int]) -> Message:
    record = ConfigRecord(
        {"run-id": "r1", "round": 3, "index": index, "survivors": survivors, "dropped": dropped}
    )
    return Message(RecordDict({"secagg": record}), dst_node_id=node, message_type="query.secagg_unmask")


def masked_grid() -> LoopbackGrid:
    grid = LoopbackGrid(node_sums(4), silent={"query.secagg_unmask": {101, 102, 103, 104}})
    out = run(grid)
    assert out.record.failed  # nobody answered the unmask: nothing summed
    return grid


def test_a_node_refuses_to_reveal_both_secrets_of_a_peer_or_to_unmask_twice() -> None:
    grid = masked_grid()
    state = grid.states[101]  # index 0
    with pytest.raises(UpdateRejectedError, match="inconsistent"):
        handle_unmask(unmask_message(101, 0, [0, 1, 2], [1]), state)
    with pytest.raises(UpdateRejectedError, match="too few survivors"):
        handle_unmask(unmask_message(101, 0, [0], [1, 2, 3]), state)
    with pytest.raises(UpdateRejectedError, match="another run, round or node"):
        handle_unmask(unmask_message(101, 1, [0, 1, 2, 3], []), state)
    reply = handle_unmask(unmask_message(101, 0, [0, 1, 2, 3], []), state)
    assert set(reply.content.config_records["unmask"].keys()) == {"b-0", "b-1", "b-2", "b-3"}
    with pytest.raises(UpdateRejectedError, match="no key exchange"):
        handle_unmask(unmask_message(101, 0, [0, 1, 2, 3], []), state)


def test_a_share_relayed_to_the_wrong_node_does_not_open() -> None:
    grid = masked_grid()
    states: Any = grid.states
    record_a, record_b = states[101].config_records["secagg"], states[102].config_records["secagg"]
    record_a["inbox-2"] = record_b["inbox-2"]  # the server hands node 0 the share node 2 sealed for node 1
    with pytest.raises(UpdateRejectedError, match="does not open"):
        handle_unmask(unmask_message(101, 0, [0, 1, 2, 3], []), states[101])


def secure_entry(**secure: Any) -> dict[str, Any]:
    record = {"quantisation_step": STEP, "dim": 10_000, "sensitivity": 1.0 + STEP * 100.0, **secure}
    return {
        "mode": "central",
        "sampling": "poisson",
        "noise_multiplier": 0.9,
        "update_noise_multiplier": 0.9,
        "noise_std": 0.9 * (1.0 + STEP * 100.0),
        "clip_norm": 1.0,
        "secure_aggregation": record,
    }


def test_the_audit_checks_the_noise_against_the_fixed_point_sensitivity() -> None:
    problems: list[str] = []
    check_noise("round 1", secure_entry(), problems)
    assert problems == []
    for bad, needle in (
        (secure_entry(sensitivity=1.5), "sensitivity is not the bound"),
        ({**secure_entry(), "noise_std": 0.9}, "noise_std"),  # the noise of C, not C': short of the account
        (secure_entry(dim=-1), "positive quantisation_step"),
    ):
        found: list[str] = []
        check_noise("round 1", bad, found)
        assert any(needle in p for p in found), found


@pytest.mark.parametrize("mode", ["none", "central"])
def test_an_oversized_update_spoils_only_that_round_and_noise_alone_is_released(mode: str) -> None:
    dim = 4000
    sums = {101 + k: UpdateSum(np.full(dim, 0.001, np.float32), 2, 0) for k in range(4)}
    sums[103] = UpdateSum(np.full(dim, 1.0, np.float32), 2, 0)  # norm 63: two users clipped to 1 cannot
    out = run(LoopbackGrid(sums), mode=mode, z=1.0, dim=dim)
    assert "rejected" in out.record.failed and out.replies.count == 0 and out.replies.rejected_users == 8
    released = out.replies.update_sum
    if mode == "none":
        assert np.all(released == 0)
    else:  # the full noise on nothing: no trace of the 0.001s or the 1.0s
        assert out.record.server_noise_std == pytest.approx(out.noise_std)
        assert abs(float(released.mean())) < 5 * out.noise_std / np.sqrt(dim)
        assert float(released.std()) == pytest.approx(out.noise_std, rel=0.05)


def test_a_round_without_sampled_users_releases_the_noise_alone() -> None:
    out = run(LoopbackGrid({}), mode="central", z=1.0, dim=5000)
    assert out.record.failed == "no users were sampled" and out.replies.count == 0
    assert float(out.replies.update_sum.std()) == pytest.approx(out.noise_std, rel=0.06)


def test_the_audit_checks_a_secure_trending_release_against_its_fixed_point_sensitivity() -> None:
    c_prime = 1.0 + STEP * 100.0  # 10,000 items
    entry = {
        "mode": "central",
        "sampling": "poisson",
        "sample_rate": 1.0,
        "max_items": 4,
        "item_weight": 0.5,
        "sensitivity": 1.0,
        "noise_multiplier": 2.0,
        "noise_std": 2.0 * c_prime,
        "count_noise_std": 2.0 * c_prime * 2.0,
        "secure_aggregation": {"quantisation_step": STEP, "dim": 10_000, "sensitivity": c_prime},
    }
    problems: list[str] = []
    check_trending_noise("release", entry, problems)
    assert problems == []
    check_trending_noise("release", {**entry, "noise_std": 2.0, "count_noise_std": 4.0}, problems)
    assert any("noise_std" in p for p in problems)


@pytest.mark.parametrize(("mode", "z"), [("central", 0.5), ("central", 0.0), ("none", 0.0)])
def test_a_node_refuses_to_add_less_noise_than_its_own_z_asks(mode: str, z: float) -> None:
    """A server asking the nodes for a share of z' < z (or no noise at all) is refused by every node
    configured with z: nothing is summed and the round counts its users as rejected."""
    grid = LoopbackGrid(node_sums(4))
    out = run(grid, mode=mode, z=z, node_z=1.0)
    trains = [reply for stage, _, reply in grid.seen if stage == "train"]
    assert len(trains) == 4 and all(reply.has_error() for reply in trains)
    assert "below this node's share" in str(trains[0].error.reason)
    assert out.record.masked_inputs == 0 and out.replies.count == 0


def test_a_node_asked_for_at_least_its_share_adds_it() -> None:
    grid = LoopbackGrid(node_sums(4))
    out = run(grid, mode="central", z=1.5, node_z=1.0)  # more noise than the node needs is fine
    assert out.record.masked_inputs == 4 and out.replies.count == 8


def test_the_noise_share_is_checked_against_the_cohort_the_server_names() -> None:
    """With the round's cohort in the record, the exact share z C' sqrt(count / cohort) is required; a
    cohort larger than the node's population N (or smaller than its own count) is not possible."""
    step, dim, z = STEP, DIM, 1.0
    per_user = z * sensitivity(1.0, step=step, dim=dim) / step  # grid units, cohort 1
    kwargs: dict[str, Any] = {"step": step, "dim": dim, "count": 2, "noise_multiplier": z, "bound": 1.0}
    check_noise_share(ConfigRecord({"cohort": 9}), per_user / 3, population=100, **kwargs)
    with pytest.raises(UpdateRejectedError, match="below"):
        check_noise_share(ConfigRecord({"cohort": 9}), per_user / 3.01, population=100, **kwargs)
    with pytest.raises(UpdateRejectedError, match="below"):  # no cohort named: the population bounds it
        check_noise_share(ConfigRecord({}), per_user / 10.01, population=100, **kwargs)
    check_noise_share(ConfigRecord({}), per_user / 10, population=100, **kwargs)
    for cohort in (1, 101):
        with pytest.raises(UpdateRejectedError, match="not possible"):
            check_noise_share(ConfigRecord({"cohort": cohort}), per_user, population=100, **kwargs)
