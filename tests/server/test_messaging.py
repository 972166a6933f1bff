"""The server's view of the population (slots over nodes) and the per-node round settings."""

from __future__ import annotations

import numpy as np

from server.messaging import Population, _node_settings


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
    seeds = {_node_settings(settings, position)["noise-seed"] for position in range(4)}
    assert len(seeds) == 4  # independent local-DP noise on each node, even in deterministic runs
    assert _node_settings({**settings, "noise-seed": -1}, 2)["noise-seed"] == -1
    assert _node_settings(settings, 1)["clip-norm"] == 1.0 and settings["noise-seed"] == 1234
