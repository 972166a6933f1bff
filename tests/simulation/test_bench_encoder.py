"""The encoder benchmark's agreement measures, on hand-made vectors (no model)."""

from __future__ import annotations

import numpy as np
import pytest

from simulation.benchmarks.bench_encoder import Row, agreement, markdown, neighbour_overlap


def unit_rows(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_identical_vectors_agree_fully() -> None:
    a = unit_rows(30, 16, 0)
    mean, low, overlap = agreement(a, a.copy(), k=5)
    assert mean == pytest.approx(1.0, abs=1e-6) and low == pytest.approx(1.0, abs=1e-6) and overlap == 1.0


def test_neighbour_overlap_by_hand() -> None:
    # Points on a line: under `a` the nearest neighbour of 0 is 1; under `b` row 1 moved next to 2.
    angles_a = np.array([0.0, 0.1, 1.0, 2.0])
    angles_b = np.array([0.0, 0.95, 1.0, 2.0])
    a = np.stack([np.cos(angles_a), np.sin(angles_a)], axis=1)
    b = np.stack([np.cos(angles_b), np.sin(angles_b)], axis=1)
    # top-1 under a: 0->1, 1->0, 2->1, 3->2; under b: 0->1, 1->2, 2->1, 3->2: rows 0, 2, 3 agree.
    assert neighbour_overlap(a, b, k=1) == pytest.approx(3 / 4)


def test_unrelated_vectors_share_few_neighbours() -> None:
    assert neighbour_overlap(unit_rows(200, 16, 1), unit_rows(200, 16, 2), k=10) < 0.2


def test_markdown_row_shows_speed_up_and_agreement() -> None:
    table = markdown([Row("ref", "cpu", 100.0, None), Row("fast", "cpu", 250.0, (0.99, 0.97, 0.9))])
    assert "| fast | cpu | 250.0 | 2.50x | 0.9900 | 0.9700 | 0.900 |" in table
