"""The start check's mechanism on the server: the decision rule, noise of the accounted std on the sum of
gains, and the nodes' replies checked before they are summed."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from scipy import stats

from server.rounds.start_check import decide, noised_gain, start_check_query
from shared.messages import StartCheckReply
from shared.privacy.noise import GaussianNoise

ALPHA = 1e-6  # two-sided false-alarm rate of the statistical check


@pytest.mark.parametrize(
    ("noised_sum", "margin", "std", "decision"),
    [
        (0.1, 0.0, 10.0, "trained"),
        (0.0, 0.0, 10.0, "start"),  # a tie ships the start: training did not earn its place
        (-3.0, 0.0, 10.0, "start"),
        (19.9, 2.0, 10.0, "start"),  # within two noise stds of zero
        (20.1, 2.0, 10.0, "trained"),
        (0.5, 1.0, 0.0, "trained"),  # mode none: no noise, the margin is in units of a zero std
    ],
)
def test_the_trained_model_ships_only_when_the_noised_sum_beats_the_margin(
    noised_sum: float, margin: float, std: float, decision: str
) -> None:
    assert decide(noised_sum, margin=margin, noise_std=std) == decision


@pytest.mark.parametrize("seed", [None, 3])
def test_the_noise_on_the_sum_has_the_accounted_std(seed: int | None) -> None:
    """sum over draws of (noise / (z_s * 1))^2 is chi-square with `draws` degrees of freedom."""
    z, draws, total = 10.0, 20_000, 7.0
    noise = GaussianNoise(seed=seed)
    results = [noised_gain(total, noise=noise, noise_multiplier=z) for _ in range(draws)]
    assert {r.noise_std for r in results} == {z}  # sensitivity 1
    drawn = np.array([r.noised_sum for r in results]) - total
    statistic = float(np.sum((drawn / z) ** 2))
    low, high = stats.chi2.ppf([ALPHA / 2, 1 - ALPHA / 2], draws)
    assert low < statistic < high, f"noise std {np.std(drawn):.4g}, accounted {z}"
    assert abs(float(np.mean(drawn))) < 6 * z / np.sqrt(draws)


class FakeGrid:
    """Answers every query with the prepared replies, whoever they claim to come from."""

    def __init__(self, replies: list[Any]) -> None:
        self.replies = replies

    def send_and_receive(self, messages: list[Any], *, timeout: float) -> list[Any]:
        return self.replies


def reply(node: int, gain_sum: float, count: int, *, error: bool = False) -> SimpleNamespace:
    return SimpleNamespace(
        metadata=SimpleNamespace(src_node_id=node),
        has_error=lambda: error,
        error=SimpleNamespace(reason="refused: noise multiplier"),
        content=StartCheckReply(gain_sum, count).to_records(),
    )


ASSIGNMENT = {1: np.array([0, 1]), 2: np.array([0])}


def query(replies: list[Any]) -> Any:
    grid: Any = FakeGrid(replies)
    params = np.zeros(3, np.float32)
    return start_check_query(
        grid, ASSIGNMENT, trained=params, start=params, noise_multiplier=10.0, timeout_s=1.0
    )


@pytest.mark.usefixtures("flower_task_identity")
def test_replies_are_summed_once_per_queried_node_and_bad_ones_counted() -> None:
    out = query([reply(1, -1.5, 2), reply(2, 0.25, 1)])
    assert (out.total, out.count, out.rejected_nodes, out.rejected_users) == (-1.25, 3, 0, 0)
    out = query([reply(1, -1.5, 2), reply(1, -1.5, 2), reply(9, 1.0, 1), reply(2, 0.25, 1)])
    assert (out.total, out.count, out.rejected_nodes) == (-1.25, 3, 2)  # a second reply, a stranger
    out = query([reply(1, 2.5, 2), reply(2, 0.25, 1, error=True)])  # more than 1 per user; an error
    assert (out.total, out.count, out.rejected_nodes, out.rejected_users) == (0.0, 0, 2, 3)
    out = query([reply(1, 0.5, 2)])  # node 2 never answered
    assert (out.total, out.count, out.rejected_nodes, out.rejected_users) == (0.5, 2, 1, 1)
