"""Local training on a device or shard: the batched path against plain autograd, clipping, shards, noise."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from local_toy import EMPTY_USERS, N_ITEMS, SUBSET, Toy, build

from shared.errors import ConfigError, DataError, UpdateRejectedError
from shared.privacy.noise import GaussianNoise

torch.set_num_threads(1)


def reference_sum(
    toy: Toy, users: np.ndarray, *, round_seed: int, clip_norm: float
) -> tuple[np.ndarray, int]:
    """Sum of each user's plain-autograd update clipped to clip_norm, and how many were within it."""
    total, unclipped = np.zeros(toy.layout.dim, dtype=np.float64), 0
    for user in users:
        update = toy.trainer.user_update(toy.params, int(user), round_seed=round_seed).astype(np.float64)
        norm = float(np.linalg.norm(update))
        unclipped += norm <= clip_norm
        total += update * min(1.0, clip_norm / norm) if norm > 0 else update
    return total, unclipped


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize(
    ("steps", "trainable", "popularity"),
    [(1, ("all",), False), (3, ("all",), False), (1, SUBSET, False), (3, SUBSET, False), (1, ("all",), True)],
)
@pytest.mark.integration
def test_batched_path_equals_plain_autograd_clipped_and_summed(
    steps: int, trainable: tuple[str, ...], popularity: bool
) -> None:
    toy = build(trainable, local_steps=steps, popularity=popularity)
    norms = [np.linalg.norm(toy.trainer.user_update(toy.params, u, round_seed=3)) for u in toy.users]
    clip_norm = float(np.median([n for n in norms if n > 0]))  # about half the users get clipped
    result = toy.trainer.clipped_sum(toy.params, toy.users, round_seed=3, clip_norm=clip_norm)
    expected, unclipped = reference_sum(toy, toy.users, round_seed=3, clip_norm=clip_norm)
    assert relative_error(result.total, expected) < 1e-5
    assert result.total.dtype == np.float32 and result.total.shape == (toy.layout.dim,)
    assert (result.count, result.unclipped_count) == (toy.users.size, unclipped)
    assert 0 < unclipped - len(EMPTY_USERS) < toy.users.size - len(EMPTY_USERS)  # both branches ran


def test_chunk_size_does_not_change_the_sum() -> None:
    params = build().params
    totals = [
        build(chunk_size=size).trainer.clipped_sum(params, np.arange(14), round_seed=1, clip_norm=0.5)
        for size in (1, 3, 64)
    ]
    for other in totals[1:]:
        assert relative_error(other.total, totals[0].total) < 1e-5
        assert (other.count, other.unclipped_count) == (totals[0].count, totals[0].unclipped_count)


def test_a_shard_gives_the_sum_of_one_device_per_user() -> None:
    shard = build(local_steps=2)
    users = np.array([9, 2, 0, 13, 5, 1, 7])
    together = shard.trainer.clipped_sum(shard.params, users, round_seed=11, clip_norm=0.3)
    alone = [
        build(local_steps=2).trainer.clipped_sum(shard.params, np.array([u]), round_seed=11, clip_norm=0.3)
        for u in users
    ]
    assert relative_error(together.total, np.sum([a.total.astype(np.float64) for a in alone], axis=0)) < 1e-5
    assert together.count == sum(a.count for a in alone) == users.size
    assert together.unclipped_count == sum(a.unclipped_count for a in alone)


@settings(max_examples=15, deadline=None)
@given(clip_norm=st.floats(1e-3, 10.0), rate=st.floats(1e-2, 1e6), user=st.integers(2, 13))
@pytest.mark.integration
def test_every_contribution_is_clipped(clip_norm: float, rate: float, user: int) -> None:
    toy = build(local_learning_rate=rate)
    one = toy.trainer.clipped_sum(toy.params, np.array([user]), round_seed=0, clip_norm=clip_norm)
    assert np.linalg.norm(one.total.astype(np.float64)) <= clip_norm * (1 + 1e-6)
    every = toy.trainer.clipped_sum(toy.params, toy.users, round_seed=0, clip_norm=clip_norm)
    assert np.linalg.norm(every.total.astype(np.float64)) <= every.count * clip_norm * (1 + 1e-6)


def test_a_huge_learning_rate_clips_every_user_with_examples() -> None:
    toy = build(local_learning_rate=1e6)
    result = toy.trainer.clipped_sum(toy.params, toy.users, round_seed=0, clip_norm=1.0)
    assert result.unclipped_count == len(EMPTY_USERS)  # only the zero updates are within C
    assert np.isfinite(result.total).all()


@pytest.mark.parametrize("user", EMPTY_USERS)
def test_a_user_without_examples_counts_but_adds_nothing(user: int) -> None:
    toy = build()
    alone = toy.trainer.clipped_sum(toy.params, np.array([user]), round_seed=0, clip_norm=1.0)
    assert (alone.count, alone.unclipped_count) == (1, 1)
    assert not alone.total.any()
    assert not toy.trainer.user_update(toy.params, user, round_seed=0).any()
    others = np.array([4, 6])
    with_user = toy.trainer.clipped_sum(toy.params, np.append(others, user), round_seed=0, clip_norm=1.0)
    without = toy.trainer.clipped_sum(toy.params, others, round_seed=0, clip_norm=1.0)
    assert with_user.count == without.count + 1
    np.testing.assert_array_equal(with_user.total, without.total)


def test_local_noise_has_std_z_times_c_per_coordinate() -> None:
    toy, z = build(), 2.0

    def noise(users: tuple[int, ...], clip: float, seed: int) -> np.ndarray:
        """The noise one call added: noisy minus clean sum, float64."""
        clean = toy.trainer.clipped_sum(toy.params, np.array(users), round_seed=0, clip_norm=clip)
        noisy = toy.trainer.clipped_sum(
            toy.params,
            np.array(users),
            round_seed=0,
            clip_norm=clip,
            local_noise_multiplier=z,
            noise=GaussianNoise(seed=seed),
        )
        return noisy.total.astype(np.float64) - clean.total

    one = np.concatenate([noise((3,), 0.25, seed) for seed in range(4)])
    assert one.size > 5_000  # a standard error of the std below 1%
    assert abs(one.std() / (z * 0.25) - 1) < 0.04
    assert abs(one.mean()) < 4 * z * 0.25 / math.sqrt(one.size)
    # each user gets its own noise, zero updates included: n users add n times the variance
    three = np.concatenate([noise((*EMPTY_USERS, 13), 1e-3, seed) for seed in range(4)])
    assert abs(three.std() / (z * 1e-3 * math.sqrt(3)) - 1) < 0.04


def test_local_noise_needs_a_source_and_a_valid_multiplier() -> None:
    toy = build()
    with pytest.raises(ConfigError):
        toy.trainer.clipped_sum(
            toy.params, toy.users, round_seed=0, clip_norm=1.0, local_noise_multiplier=1.0
        )
    with pytest.raises(ConfigError):
        toy.trainer.clipped_sum(
            toy.params,
            toy.users,
            round_seed=0,
            clip_norm=1.0,
            local_noise_multiplier=-1.0,
            noise=GaussianNoise(),
        )


def test_negatives_are_shared_within_a_round_and_change_across_rounds() -> None:
    first, second = build().trainer, build(chunk_size=2).trainer
    a, b = first.negatives(7), second.negatives(7)
    torch.testing.assert_close(a.items, b.items, rtol=0, atol=0)
    assert not torch.equal(a.items, first.negatives(8).items)
    assert a.log_count == pytest.approx(math.log(16 / 26))
    toy = build()
    same = [
        toy.trainer.clipped_sum(toy.params, toy.users, round_seed=4, clip_norm=1.0).total for _ in range(2)
    ]
    np.testing.assert_array_equal(same[0], same[1])
    other = toy.trainer.clipped_sum(toy.params, toy.users, round_seed=5, clip_norm=1.0).total
    assert not np.array_equal(same[0], other)


def test_negatives_are_uniform_over_the_allowed_items() -> None:
    negatives = build(n_negatives=26_000).trainer.negatives(0).items.numpy()
    counts = np.bincount(negatives, minlength=N_ITEMS)
    assert not counts[-4:].any()  # blocked items are never drawn
    chi_square = float((((counts[:-4] - 1_000) ** 2) / 1_000).sum())
    assert chi_square < 60  # 25 degrees of freedom: p < 1e-4 beyond 60


def test_gradients_flow_only_into_the_layouts_parameters() -> None:
    full, subset = build(), build(SUBSET)
    before = {n: p.detach().clone() for n, p in subset.model.named_parameters()}
    users = np.arange(14)
    part = subset.trainer.clipped_sum(subset.params, users, round_seed=2, clip_norm=1e9)
    subset.trainer.user_update(subset.params, 5, round_seed=2)
    for name, p in subset.model.named_parameters():
        assert p.grad is None
        torch.testing.assert_close(p.detach(), before[name], rtol=0, atol=0)
    # one step: the subset's update is the full update's entries for the subset's parameters
    everything = full.trainer.clipped_sum(full.params, users, round_seed=2, clip_norm=1e9).total
    offsets = np.cumsum((0, *full.layout.sizes))
    picks = [
        np.arange(offsets[i], offsets[i + 1])
        for i, n in enumerate(full.layout.names)
        if n in subset.layout.names
    ]
    np.testing.assert_allclose(part.total, everything[np.concatenate(picks)], rtol=1e-5, atol=1e-7)


def test_parameters_outside_the_layout_keep_the_models_values() -> None:
    toy = build(SUBSET)
    before = toy.trainer.clipped_sum(toy.params, np.arange(14), round_seed=2, clip_norm=1e9).total
    with torch.no_grad():
        toy.model.users.out_proj.weight.mul_(2.0)  # not trained, but read
    after = toy.trainer.clipped_sum(toy.params, np.arange(14), round_seed=2, clip_norm=1e9).total
    assert not np.allclose(before, after)


def test_bad_inputs_are_rejected() -> None:
    toy = build()
    with pytest.raises(DataError):
        toy.trainer.clipped_sum(toy.params, np.array([2, 2]), round_seed=0, clip_norm=1.0)
    with pytest.raises(DataError):
        toy.trainer.clipped_sum(toy.params, np.array([toy.seqs.n_users]), round_seed=0, clip_norm=1.0)
    with pytest.raises(UpdateRejectedError):
        toy.trainer.clipped_sum(toy.params[:-1], toy.users, round_seed=0, clip_norm=1.0)
    with pytest.raises(ConfigError):
        toy.trainer.clipped_sum(toy.params, toy.users, round_seed=0, clip_norm=0.0)
    empty = toy.trainer.clipped_sum(toy.params, np.array([], dtype=np.int64), round_seed=0, clip_norm=1.0)
    assert (empty.count, empty.unclipped_count, float(np.abs(empty.total).sum())) == (0, 0, 0.0)
