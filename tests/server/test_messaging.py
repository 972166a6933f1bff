"""The server's view of the population (slots over nodes) and the per-node round settings."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from flwr.superlink.grid.inmemory_grid import InMemoryGrid

from server.rounds.messaging import SIMULATION_PULL_INTERVAL_S, Population, node_settings, poll_replies_often


def test_slots_map_to_nodes_in_partition_order() -> None:
    population = Population(node_ids=(70, 5, 12), sizes=np.array([3, 0, 2]))
    assert population.n_users == 5
    assignment = population.split(np.array([0, 2, 3, 4]))
    assert list(assignment) == [70, 12]  # a node with no sampled user gets no message
    np.testing.assert_array_equal(assignment[70], [0, 2])
    np.testing.assert_array_equal(assignment[12], [0, 1])
    assert population.split(np.array([], dtype=np.int64)) == {}


def test_fixed_noise_seeds_differ_per_node_and_os_entropy_stays_so() -> None:
    settings: dict[str, int | float] = {"round": 3, "noise-seed": 1234, "clip-norm": 1.0}
    seeds = {node_settings(settings, position)["noise-seed"] for position in range(4)}
    assert len(seeds) == 4  # independent local-DP noise on each node, even in deterministic runs
    assert node_settings({**settings, "noise-seed": -1}, 2)["noise-seed"] == -1
    assert node_settings(settings, 1)["clip-norm"] == 1.0 and settings["noise-seed"] == 1234


def test_the_simulation_grid_is_polled_often_and_other_grids_are_left_alone() -> None:
    # Flower's simulation grid; its link state is never touched here
    grid = InMemoryGrid(state_factory=SimpleNamespace(state=lambda: None))  # type: ignore[arg-type]
    assert grid.pull_interval == 0.1  # Flower's default: up to 0.1 s lost after a round's last reply
    poll_replies_often(grid)
    assert grid.pull_interval == SIMULATION_PULL_INTERVAL_S == 0.01

    class DeployedGrid:  # a SuperLink's grid: no pull_interval of Flower's to change
        pull_interval = 3.0

    other = DeployedGrid()
    poll_replies_often(other)  # type: ignore[arg-type]
    assert other.pull_interval == 3.0
