"""Record-level DP-SGD on a device with Opacus: the epsilon it accounts, its clipping, its saved state."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
import torch
from local_toy import EMPTY_USERS, Toy, build
from opacus.accountants import RDPAccountant

import client.training.dp_sgd as record_level
from client.training.dp_sgd import RecordLevelTrainer
from shared.config import PrivacyConfig
from shared.errors import ConfigError

torch.set_num_threads(1)
FEW, MANY = 6, 13  # users with 5 and 12 examples


def trainer(toy: Toy, user: int, **privacy: Any) -> RecordLevelTrainer:
    settings: dict[str, Any] = {"record_level": True, "seed": 0, **privacy}
    config = PrivacyConfig(**settings)
    return RecordLevelTrainer(
        toy.model,
        toy.seqs,
        user,
        layout=toy.layout,
        blocked=toy.blocked,
        config=toy.trainer.config,
        privacy=config,
    )


@pytest.mark.integration
def test_epsilon_grows_across_rounds_and_survives_a_save_and_load() -> None:
    toy = build(local_steps=2, max_examples_per_user=32)
    device = trainer(toy, MANY, record_noise_multiplier=1.5)
    epsilons = []
    for round_seed in range(3):
        result = device.train_round(toy.params, round_seed=round_seed)
        assert result.steps == 2 and np.isfinite(result.update).all() and np.abs(result.update).sum() > 0
        epsilons.append(result.record_epsilon)
    assert 0 < epsilons[0] < epsilons[1] < epsilons[2]
    saved = json.loads(json.dumps(device.state_dict()))
    restored = trainer(toy, MANY, record_noise_multiplier=1.5)
    assert restored.record_epsilon == 0.0
    restored.load_state_dict(saved)
    assert restored.record_epsilon == pytest.approx(epsilons[-1])
    assert restored.train_round(toy.params, round_seed=3).record_epsilon == pytest.approx(
        device.train_round(toy.params, round_seed=3).record_epsilon
    )
    assert restored.record_epsilon > epsilons[-1]


@pytest.mark.integration
def test_epsilon_is_opacus_rdp_of_the_steps_taken() -> None:
    toy = build(local_steps=3, max_examples_per_user=32)  # the public rate 8 / 32, whatever the user has
    device = trainer(toy, MANY, record_noise_multiplier=1.2, record_delta=1e-4)
    device.train_round(toy.params, round_seed=0)
    device.train_round(toy.params, round_seed=1)
    accountant = RDPAccountant()
    accountant.history = [(1.2, 0.25, 6)]
    assert device.record_epsilon == pytest.approx(accountant.get_epsilon(delta=1e-4))
    assert device.state_dict()["history"] == [[1.2, 0.25, 6]]


@pytest.mark.integration
def test_epsilon_is_from_public_terms_not_the_example_count() -> None:
    # users with 5 and 12 examples, and one without: the same rounds give the same record epsilon, which
    # is Opacus's RDP of the public rate min(1, 8 / max_examples_per_user), z and the steps
    toy = build(local_steps=2, max_examples_per_user=32)
    devices = [trainer(toy, user, record_noise_multiplier=1.1) for user in (FEW, MANY, EMPTY_USERS[0])]
    for round_seed in (0, 1):
        results = [device.train_round(toy.params, round_seed=round_seed) for device in devices]
        assert [r.steps for r in results] == [2, 2, 2]
        assert len({r.record_epsilon for r in results}) == 1
    assert record_level.record_sample_rate(toy.trainer.config) == 0.25
    accountant = RDPAccountant()
    accountant.history = [(1.1, 0.25, 4)]
    expected = accountant.get_epsilon(delta=1e-5)
    assert [device.record_epsilon for device in devices] == [pytest.approx(expected)] * 3
    assert [device.state_dict() for device in devices] == [
        {"mechanism": "rdp", "history": [[1.1, 0.25, 4]]}
    ] * 3


def test_the_public_rate_is_capped_at_one() -> None:
    assert record_level.record_sample_rate(build(max_examples_per_user=5).trainer.config) == 1.0
    assert record_level.record_divisor(build(max_examples_per_user=5).trainer.config) == 5
    assert record_level.record_divisor(build(max_examples_per_user=32).trainer.config) == 8


def test_without_noise_or_clipping_a_step_is_the_plain_gradient_step() -> None:
    toy = build(local_steps=1)
    device = trainer(toy, FEW, record_noise_multiplier=0.0, record_max_grad_norm=1e9)
    result = device.train_round(toy.params, round_seed=4)
    assert result.record_epsilon == float("inf")  # no noise, no record-level guarantee
    got = result.update
    expected = toy.trainer.user_update(toy.params, FEW, round_seed=4)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


def test_each_record_is_clipped() -> None:
    toy = build(local_steps=1, local_learning_rate=2.0)
    device = trainer(toy, FEW, record_noise_multiplier=0.0, record_max_grad_norm=1e-3)
    update = device.train_round(toy.params, round_seed=0).update
    assert 0 < np.linalg.norm(update) <= 2.0 * 1e-3 * (1 + 1e-5)  # lr x the mean of clipped gradients


def test_empty_poisson_batches_are_steps_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(record_level, "EXPECTED_BATCH", 1)  # sample rate 1/32: many empty batches
    toy = build(local_steps=30, max_examples_per_user=32)
    device = trainer(toy, MANY)
    result = device.train_round(toy.params, round_seed=0)
    assert result.steps == 30 and np.isfinite(result.update).all()
    assert device.state_dict()["history"] == [[1.0, pytest.approx(1 / 32), 30]]


@pytest.mark.parametrize("user", EMPTY_USERS)
def test_a_user_without_examples_takes_noise_only_steps_and_spends_like_the_others(user: int) -> None:
    # a zero update and epsilon 0 would tell the device's example count (none): it steps on the noise alone
    toy = build(local_steps=2)
    result = trainer(toy, user).train_round(toy.params, round_seed=0)
    other = trainer(toy, FEW).train_round(toy.params, round_seed=0)
    assert (result.steps, result.record_epsilon) == (2, other.record_epsilon) and result.record_epsilon > 0
    assert np.isfinite(result.update).all() and result.update.any() and result.update.dtype == np.float32
    quiet = trainer(toy, user, record_noise_multiplier=0.0).train_round(toy.params, round_seed=0)
    assert not quiet.update.any() and quiet.record_epsilon == float("inf")


def test_noise_is_fresh_each_round_and_seeded_only_on_request() -> None:
    toy = build(local_steps=1)
    updates = [trainer(toy, FEW).train_round(toy.params, round_seed=r).update for r in (0, 0, 1)]
    np.testing.assert_array_equal(updates[0], updates[1])  # fixed seed and round: reproducible
    assert not np.array_equal(updates[0], updates[2])
    private = [trainer(toy, FEW, seed=-1).train_round(toy.params, round_seed=0).update for _ in range(2)]
    assert not np.array_equal(private[0], private[1])


def test_malformed_state_is_rejected() -> None:
    device = trainer(build(), FEW)
    for state in ({}, {"mechanism": "rdp", "history": [[1.0, 2.0, 3]]}, {"mechanism": "prv", "history": []}):
        with pytest.raises(ConfigError):
            device.load_state_dict(state)


@pytest.mark.integration
def test_opacus_does_not_take_the_root_logger() -> None:
    # in a fresh interpreter: importing Opacus calls logging.basicConfig, which would add a root handler
    code = (
        "import logging, client.training.dp_sgd as r; before = list(logging.getLogger().handlers); "
        "r._privacy_engine(); print(logging.getLogger().handlers == before == [])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "True"


def test_update_scales_are_refused_in_record_level_mode() -> None:
    toy = build(update_scales=("users.out_proj=0.1",))
    with pytest.raises(ConfigError, match="update_scales"):
        trainer(toy, FEW)
