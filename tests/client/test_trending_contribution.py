"""A device's trending contribution: norm <= 1 for any log, the window and k respected, shard sums exact."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from client.trending_contribution import (
    TrendingWindow,
    contribution_sum,
    contribution_vector,
    recent_distinct_items,
)
from shared.errors import ConfigError

N_ITEMS = 12
logs = st.lists(
    st.tuples(st.integers(-3, N_ITEMS + 3), st.integers(0, 200)), max_size=60
)  # (item, timestamp), items outside the catalogue included
windows = st.builds(
    TrendingWindow,
    as_of_s=st.integers(0, 220),
    window_s=st.floats(0.5, 250),
    max_items=st.integers(1, 15),
    n_items=st.just(N_ITEMS),
)


def columns(log: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    return np.array([i for i, _ in log], np.int64), np.array([t for _, t in log], np.int64)


@settings(max_examples=300, deadline=None)
@given(log=logs, window=windows)
@pytest.mark.integration
def test_the_contribution_has_norm_at_most_one_for_any_log(
    log: list[tuple[int, int]], window: TrendingWindow
) -> None:
    vector = contribution_vector(*columns(log), window)
    assert vector.shape == (N_ITEMS,) and np.all(vector >= 0)
    assert np.linalg.norm(vector) <= 1.0 + 1e-12
    assert set(np.unique(vector)) <= {0.0, 1 / math.sqrt(window.max_items)}


@settings(max_examples=200, deadline=None)
@given(log=logs, window=windows)
def test_it_holds_the_k_most_recent_distinct_items_of_the_window(
    log: list[tuple[int, int]], window: TrendingWindow
) -> None:
    latest: dict[int, int] = {}
    for item, t in log:
        if window.as_of_s - window.window_s <= t < window.as_of_s and 0 <= item < N_ITEMS:
            latest[item] = max(latest.get(item, t), t)
    expected = sorted(latest, key=lambda i: (-latest[i], i))[: window.max_items]
    assert recent_distinct_items(*columns(log), window).tolist() == expected
    assert np.flatnonzero(contribution_vector(*columns(log), window)).tolist() == sorted(expected)


busy_logs = st.lists(st.tuples(st.integers(0, N_ITEMS - 1), st.integers(0, 200)), min_size=4, max_size=40)
small_k_windows = st.builds(
    TrendingWindow,
    as_of_s=st.integers(100, 220),
    window_s=st.floats(50, 250),
    max_items=st.integers(1, 4),
    n_items=st.just(N_ITEMS),
)


@settings(max_examples=150, deadline=None)
@given(
    users=st.lists(st.one_of(logs, busy_logs), min_size=1, max_size=6),
    window=st.one_of(windows, small_k_windows),
    pick=st.integers(0, 63),
)
@pytest.mark.integration
def test_a_shard_sum_equals_the_sum_of_its_users_vectors(
    users: list[list[tuple[int, int]]], window: TrendingWindow, pick: int
) -> None:
    chosen = np.array([u for u in range(len(users)) if pick >> u & 1], np.int64)
    owner = np.concatenate([np.full(len(log), u, np.int64) for u, log in enumerate(users)])
    item = np.concatenate([columns(log)[0] for log in users])
    time = np.concatenate([columns(log)[1] for log in users])
    expected = sum((contribution_vector(*columns(users[u]), window) for u in chosen), np.zeros(N_ITEMS))
    np.testing.assert_allclose(contribution_sum(owner, item, time, chosen, window), expected, atol=1e-12)


def test_an_empty_window_contributes_nothing_and_bad_windows_are_refused() -> None:
    window = TrendingWindow(as_of_s=100, window_s=10, max_items=4, n_items=N_ITEMS)
    assert not contribution_vector(np.array([1, 2]), np.array([50, 100]), window).any()  # before, at as_of
    with pytest.raises(ConfigError):
        TrendingWindow(as_of_s=100, window_s=10, max_items=0, n_items=N_ITEMS)
