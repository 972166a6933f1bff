"""The server's view of the population (slots over nodes) and the per-node round settings."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from flwr.superlink.grid.inmemory_grid import InMemoryGrid

from server.rounds.messaging import SIMULATION_PULL_INTERVAL_S, Population, poll_replies_often
from shared.messages import RoundSettings


def test_slots_map_to_nodes_in_partition_order() -> None:
    population = Population(node_ids=(70, 5, 12), sizes=np.array([3, 0, 2]))
    assert population.n_users == 5
    assignment = population.split(np.array([0, 2, 3, 4]))
    assert list(assignment) == [70, 12]  # a node with no sampled user gets no message
    np.testing.assert_array_equal(assignment[70], [0, 2])
    np.testing.assert_array_equal(assignment[12], [0, 1])
    assert population.split(np.array([], dtype=np.int64)) == {}


def test_fixed_noise_seeds_differ_per_node_and_os_entropy_stays_so() -> None:
    settings = RoundSettings(
        round=3, run_id="r", sample_rate=0.1, noise_multiplier=1.0, delta=1e-5, participation_cap=0,
        clip_norm=1.0, local_noise_multiplier=1.0, round_seed=5, noise_seed=1234,
    )  # fmt: skip
    seeds = {settings.for_node(position).noise_seed for position in range(4)}
    assert len(seeds) == 4  # independent local-DP noise on each node, even in deterministic runs
    assert RoundSettings(**{**settings.__dict__, "noise_seed": -1}).for_node(2).noise_seed == -1
    assert settings.for_node(1).clip_norm == 1.0 and settings.noise_seed == 1234


def test_the_simulation_grid_is_polled_often_and_other_grids_are_left_alone() -> None:
    # Flower's simulation grid; its link state is never touched here (a stand-in, not a LinkStateFactory)
    grid = InMemoryGrid(state_factory=SimpleNamespace(state=lambda: None))  # type: ignore[arg-type]
    grid.pull_interval = 0.5  # whatever Flower starts it at
    poll_replies_often(grid)
    assert grid.pull_interval == SIMULATION_PULL_INTERVAL_S
    assert 0 < SIMULATION_PULL_INTERVAL_S <= 0.01  # a round waits at most this long after its last reply

    class DeployedGrid:  # a SuperLink's grid: no pull_interval of Flower's to change
        pull_interval = 3.0

    other = DeployedGrid()
    poll_replies_often(other)  # type: ignore[arg-type]
    assert other.pull_interval == 3.0
