"""UserClipping, the one clipping of user updates (every entry point, one margin): it bounds every update's
L2 norm by C (the sensitivity) for any input, keeps its direction, and leaves small updates alone; its
local noise has std z C per user and coordinate."""

from __future__ import annotations

from dataclasses import FrozenInstanceError

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from shared.errors import ConfigError, UpdateRejectedError
from shared.privacy import CLIP_MARGIN, UserClipping
from shared.privacy.noise import GaussianNoise

SHRINK = 1.0 - CLIP_MARGIN
finite = st.floats(allow_nan=False, allow_infinity=False, width=32)  # any float32, zero and 3.4e38 included
updates = arrays(np.float32, st.integers(1, 300), elements=finite)
clip_norms = st.floats(min_value=1e-6, max_value=1e6)


def exact_norm(x: np.ndarray | torch.Tensor) -> float:
    return float(np.linalg.norm(np.asarray(x, dtype=np.float64).ravel()))


@settings(max_examples=200, deadline=None)
@given(update=updates, clip_norm=clip_norms)
def test_clipped_norm_never_exceeds_the_bound(update: np.ndarray, clip_norm: float) -> None:
    clipped, norm = UserClipping(clip_norm).clip(update)
    assert clipped.dtype == np.float32 and clipped.shape == update.shape
    assert exact_norm(clipped) <= clip_norm
    assert norm == pytest.approx(exact_norm(update), rel=1e-12)


@settings(max_examples=100, deadline=None)
@given(
    update=arrays(np.float32, st.integers(1, 300), elements=st.floats(-(2.0**60), 2.0**60, width=32)),
    clip_norm=clip_norms,
)
def test_clipping_keeps_the_direction_and_leaves_small_updates_alone(
    update: np.ndarray, clip_norm: float
) -> None:
    clipped, norm = UserClipping(clip_norm).clip(update)
    if norm <= clip_norm:
        np.testing.assert_array_equal(clipped, update)
    else:
        scale = clip_norm / norm * SHRINK
        np.testing.assert_allclose(
            clipped, update.astype(np.float64) * scale, rtol=1e-6, atol=1e-30 * clip_norm
        )
        assert exact_norm(clipped) == pytest.approx(clip_norm * SHRINK, rel=1e-6)


def test_golden_three_four_five() -> None:
    clipped, norm = UserClipping(1.0).clip(np.array([3.0, 4.0]))
    assert norm == 5.0
    np.testing.assert_allclose(clipped, [0.6 * SHRINK, 0.8 * SHRINK], rtol=1e-7)
    assert UserClipping(1.0).clip(np.array([3.0, 4.0]))[0].tolist() == clipped.tolist()


def test_zero_update_stays_zero_and_input_is_not_modified() -> None:
    clipped, norm = UserClipping(1.0).clip(np.zeros(5))
    assert norm == 0.0 and not clipped.any()
    original = np.array([30.0, 40.0], dtype=np.float32)
    UserClipping(1.0).clip(original)
    np.testing.assert_array_equal(original, [30.0, 40.0])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 1e300])
def test_non_finite_updates_are_rejected(bad: float) -> None:
    """1e300 is finite in float64 but not in the float32 that is sent."""
    with pytest.raises(UpdateRejectedError):
        UserClipping(1.0).clip(np.array([1.0, bad]))


@pytest.mark.parametrize("clip_norm", [0.0, -1.0, float("nan"), float("inf")])
def test_clip_norm_must_be_positive_and_finite(clip_norm: float) -> None:
    with pytest.raises(ConfigError):
        UserClipping(clip_norm)
    with pytest.raises(ConfigError):
        UserClipping(clip_norm).clip(np.ones(3))
    with pytest.raises(ConfigError):
        UserClipping(clip_norm).clip_rows(torch.ones(2, 3))


def test_one_margin_and_a_frozen_object() -> None:
    clipping = UserClipping(2.0)
    assert clipping.margin == CLIP_MARGIN == 1e-5
    with pytest.raises(FrozenInstanceError):
        clipping.clip_norm = 3.0  # type: ignore[misc]
    for margin in (-1e-5, 1.0):
        with pytest.raises(ConfigError):
            UserClipping(1.0, margin=margin)


@settings(max_examples=60, deadline=None)
@given(
    batch=arrays(np.float32, st.tuples(st.integers(1, 8), st.integers(1, 50)), elements=finite), c=clip_norms
)
def test_clip_rows_bounds_each_row_like_clip(batch: np.ndarray, c: float) -> None:
    clipping = UserClipping(c)
    clipped, norms = clipping.clip_rows(torch.from_numpy(batch))
    assert clipped.shape == batch.shape and clipped.dtype == torch.float32
    assert norms.shape == (batch.shape[0],)
    for row, out, norm in zip(batch, clipped.numpy(), norms.tolist(), strict=True):
        expected, expected_norm = clipping.clip(row)
        assert exact_norm(out) <= c
        assert norm == pytest.approx(expected_norm, rel=1e-12)
        np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-30 * c)  # norms summed in other orders


def test_clip_rows_zero_rows_stay_zero_and_bad_rows_become_zero_with_nan_norm() -> None:
    batch = torch.tensor([[0.0, 0.0], [3.0, 4.0], [float("nan"), 1.0], [0.3, 0.4]])
    clipped, norms = UserClipping(1.0).clip_rows(batch)
    expected = [[0.0, 0.0], [0.6 * SHRINK, 0.8 * SHRINK], [0.0, 0.0], [0.3, 0.4]]
    torch.testing.assert_close(clipped, torch.tensor(expected))
    assert norms[0] == 0 and norms[1] == pytest.approx(5.0) and torch.isnan(norms[2])
    assert norms[3] == pytest.approx(0.5)


@pytest.mark.parametrize("bad", [torch.ones(3), torch.ones(2, 3, dtype=torch.float16)])
def test_clip_rows_needs_a_float_batch_of_flat_updates(bad: torch.Tensor) -> None:
    with pytest.raises(UpdateRejectedError):
        UserClipping(1.0).clip_rows(bad)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    clip_norm=st.floats(1e-3, 1e3),
    factor=st.sampled_from([1.0, -0.5, -3.0]),
    scale=st.floats(1e-4, 1e4),
)
def test_clipped_sums_of_blocks_equal_clip_rows_then_sum(
    seed: int, clip_norm: float, factor: float, scale: float
) -> None:
    """The batched entry point (float32 block norms, one weighted sum) is clip_rows then a sum."""
    clipping = UserClipping(clip_norm)
    generator = torch.Generator().manual_seed(seed)
    blocks = [torch.randn(6, size, generator=generator) * scale for size in (1, 7, 40)]
    blocks[0][2] = 0.0
    for block in blocks:
        block[3] = 0.0  # a zero update stays zero and counts as unclipped
    rows = torch.cat(blocks, dim=1) * factor
    clipped, norms = clipping.clip_rows(rows)
    total, got_norms = clipping.clipped_sum(blocks, factor=factor)
    # the same margin on both sides: only float32 norms and sums differ (~1e-6 relative per row)
    assert torch.linalg.vector_norm(total - clipped.double().sum(dim=0)) <= 1e-5 * 6 * clip_norm
    torch.testing.assert_close(got_norms.double(), norms, rtol=1e-5, atol=0)
    assert torch.linalg.vector_norm(total) <= 6 * clip_norm
    for row in range(6):  # every single contribution is within C, float32 rounding included
        alone, _ = clipping.clipped_sum([b[row : row + 1] for b in blocks], factor=factor)
        assert float(torch.linalg.vector_norm(alone)) <= clip_norm


def test_the_single_update_and_the_batched_entry_points_clip_alike() -> None:
    """A record-level device (clip) and a shard (clipped_sum) send the same clipped update."""
    clipping = UserClipping(0.5)
    update = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    single, _ = clipping.clip(update)
    batched, _ = clipping.clipped_sum([torch.from_numpy(update[None, :])])
    np.testing.assert_allclose(batched.numpy(), single, rtol=1e-6, atol=1e-9)


def test_a_non_finite_row_adds_nothing() -> None:
    blocks = [torch.ones(3, 4), torch.ones(3, 2)]
    blocks[1][1, 0] = float("nan")
    total, norms = UserClipping(100.0).clipped_sum(blocks, factor=-1.0)
    assert bool(torch.isfinite(total).all())
    torch.testing.assert_close(total, torch.full((6,), -2.0, dtype=torch.float64))
    assert not bool(torch.isfinite(norms[1]))


def test_local_noise_has_std_z_c_per_user_and_coordinate() -> None:
    clipping = UserClipping(0.25)
    one = clipping.local_noise(GaussianNoise(seed=1), 200_000, noise_multiplier=2.0)
    assert one.dtype == np.float64 and float(np.std(one)) == pytest.approx(0.5, rel=0.01)
    four = clipping.local_noise(GaussianNoise(seed=2), 200_000, noise_multiplier=2.0, users=4)
    assert float(np.std(four)) == pytest.approx(1.0, rel=0.01)  # n users: n times the variance
    assert not clipping.local_noise(GaussianNoise(seed=3), 5, noise_multiplier=0.0).any()
    assert not clipping.local_noise(GaussianNoise(seed=3), 5, noise_multiplier=1.0, users=0).any()
    again = clipping.local_noise(GaussianNoise(seed=1), 200_000, noise_multiplier=2.0)
    np.testing.assert_array_equal(again, one)  # the draw is GaussianNoise's: a fixed seed repeats it


@pytest.mark.parametrize(("z", "users"), [(-1.0, 1), (float("nan"), 1), (float("inf"), 1), (1.0, -1)])
def test_local_noise_needs_a_valid_multiplier_and_user_count(z: float, users: int) -> None:
    with pytest.raises(ConfigError):
        UserClipping(1.0).local_noise(GaussianNoise(seed=0), 3, noise_multiplier=z, users=users)
