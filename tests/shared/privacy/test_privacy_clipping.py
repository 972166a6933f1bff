"""Clipping bounds every update's L2 norm by C (the sensitivity), for any input, and keeps its direction."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from shared.errors import ConfigError, UpdateRejectedError
from shared.privacy.clipping import clip_rows, clip_update

finite = st.floats(min_value=-(2.0**100), max_value=2.0**100, allow_nan=False, width=32)
updates = arrays(np.float32, st.integers(1, 300), elements=finite)
clip_norms = st.floats(min_value=1e-6, max_value=1e6)


def exact_norm(x: np.ndarray | torch.Tensor) -> float:
    return float(np.linalg.norm(np.asarray(x, dtype=np.float64).ravel()))


@settings(max_examples=200, deadline=None)
@given(update=updates, clip_norm=clip_norms)
def test_clipped_norm_never_exceeds_the_bound(update: np.ndarray, clip_norm: float) -> None:
    clipped, norm = clip_update(update, clip_norm=clip_norm)
    assert clipped.dtype == np.float32 and clipped.shape == update.shape
    assert exact_norm(clipped) <= clip_norm
    assert norm == pytest.approx(exact_norm(update), rel=1e-12)


@settings(max_examples=100, deadline=None)
@given(update=updates, clip_norm=clip_norms)
def test_clipping_keeps_the_direction_and_leaves_small_updates_alone(
    update: np.ndarray, clip_norm: float
) -> None:
    clipped, norm = clip_update(update, clip_norm=clip_norm)
    if norm <= clip_norm:
        np.testing.assert_array_equal(clipped, update)
    else:
        scale = clip_norm / norm
        np.testing.assert_allclose(
            clipped, update.astype(np.float64) * scale, rtol=1e-5, atol=1e-7 * clip_norm
        )
        assert exact_norm(clipped) == pytest.approx(clip_norm, rel=2e-6)


def test_golden_three_four_five() -> None:
    clipped, norm = clip_update(np.array([3.0, 4.0]), clip_norm=1.0)
    assert norm == 5.0
    np.testing.assert_allclose(clipped, [0.6, 0.8], rtol=2e-6)  # float32 rounding, then the 1e-6 margin


def test_zero_update_stays_zero_and_input_is_not_modified() -> None:
    clipped, norm = clip_update(np.zeros(5), clip_norm=1.0)
    assert norm == 0.0 and not clipped.any()
    original = np.array([30.0, 40.0], dtype=np.float32)
    clip_update(original, clip_norm=1.0)
    np.testing.assert_array_equal(original, [30.0, 40.0])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_updates_are_rejected(bad: float) -> None:
    with pytest.raises(UpdateRejectedError):
        clip_update(np.array([1.0, bad]), clip_norm=1.0)


@pytest.mark.parametrize("clip_norm", [0.0, -1.0, float("nan"), float("inf")])
def test_clip_norm_must_be_positive_and_finite(clip_norm: float) -> None:
    with pytest.raises(ConfigError):
        clip_update(np.ones(3), clip_norm=clip_norm)
    with pytest.raises(ConfigError):
        clip_rows(torch.ones(2, 3), clip_norm=clip_norm)


@settings(max_examples=60, deadline=None)
@given(
    batch=arrays(np.float32, st.tuples(st.integers(1, 8), st.integers(1, 50)), elements=finite), c=clip_norms
)
def test_clip_rows_bounds_each_row_like_clip_update(batch: np.ndarray, c: float) -> None:
    clipped, norms = clip_rows(torch.from_numpy(batch), clip_norm=c)
    assert clipped.shape == batch.shape and norms.shape == (batch.shape[0],)
    for row, out, norm in zip(batch, clipped.numpy(), norms.tolist(), strict=True):
        expected, expected_norm = clip_update(row, clip_norm=c)
        assert exact_norm(out) <= c
        assert norm == pytest.approx(expected_norm, rel=1e-6)
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6 * c)


def test_clip_rows_zero_rows_stay_zero_and_bad_rows_become_zero_with_nan_norm() -> None:
    batch = torch.tensor([[0.0, 0.0], [3.0, 4.0], [float("nan"), 1.0], [0.3, 0.4]])
    clipped, norms = clip_rows(batch, clip_norm=1.0)
    torch.testing.assert_close(clipped, torch.tensor([[0.0, 0.0], [0.6, 0.8], [0.0, 0.0], [0.3, 0.4]]))
    assert norms[0] == 0 and norms[1] == pytest.approx(5.0) and torch.isnan(norms[2])
    assert norms[3] == pytest.approx(0.5)


def test_clip_rows_needs_a_batch_of_flat_updates() -> None:
    with pytest.raises(UpdateRejectedError):
        clip_rows(torch.ones(3), clip_norm=1.0)
