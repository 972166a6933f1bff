"""Server optimisers: FedAvg, FedAvgM and FedAdam against hand-computed steps; state survives save/load."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from server.strategy import (
    CosineSchedule,
    FedAdamOptimizer,
    FedAvgMOptimizer,
    FedAvgOptimizer,
    ServerOptimizer,
    make_server_optimizer,
)
from shared.config import FederatedConfig, ServerOptimizerName
from shared.errors import ConfigError, DataError, UpdateRejectedError

FLOATS = st.floats(-1e3, 1e3, width=32)


@given(data=st.data(), dim=st.integers(1, 50))
@settings(max_examples=60, deadline=None)
def test_fedavg_with_lr_one_adds_the_mean_update(data: st.DataObject, dim: int) -> None:
    params = data.draw(hnp.arrays(np.float32, dim, elements=FLOATS))
    mean_update = data.draw(hnp.arrays(np.float32, dim, elements=FLOATS))
    new = make_server_optimizer(FederatedConfig(server_optimizer="sgd", server_learning_rate=1.0)).step(
        params, mean_update
    )
    assert new.dtype == np.float32
    np.testing.assert_array_equal(new, (params.astype(np.float64) + mean_update).astype(np.float32))


def test_fedavg_scales_by_the_learning_rate() -> None:
    new = FedAvgOptimizer(learning_rate=0.5).step(
        np.array([1.0, 2.0], np.float32), np.array([2.0, -4.0], np.float32)
    )
    np.testing.assert_allclose(new, [2.0, 0.0])


P0, U1, U2 = (
    np.array([0.0, 1.0], np.float32),
    np.array([1.0, -2.0], np.float32),
    np.array([0.5, 1.0], np.float32),
)


def test_momentum_two_steps_by_hand() -> None:
    opt = FedAvgMOptimizer(learning_rate=0.5, momentum=0.9)
    p1 = opt.step(P0, U1)  # v = [1, -2]; p = [0, 1] + 0.5 v
    np.testing.assert_allclose(p1, [0.5, 0.0], atol=1e-7)
    p2 = opt.step(p1, U2)  # v = 0.9 [1, -2] + [0.5, 1] = [1.4, -0.8]; p = [0.5, 0] + 0.5 v
    np.testing.assert_allclose(p2, [1.2, -0.4], rtol=1e-6)


def test_adam_two_steps_by_hand_without_bias_correction() -> None:
    # Reddi et al. Algorithm 2 with beta1 .9, beta2 .99, tau 1e-3, lr .1, m0 = 0, v0 = tau^2:
    # step 1: m = [.1, -.2], v = [.01000099, .04000099]; p = p0 + .1 m / (sqrt(v) + tau)
    # step 2: m = [.14, -.08], v = [.0124009801, .0496009801]
    # (with bias correction step 1 would move coordinate 0 by .0998951 instead of .0990050)
    opt = make_server_optimizer(
        FederatedConfig(
            server_optimizer="adam",
            server_learning_rate=0.1,
            server_momentum=0.9,
            server_beta2=0.99,
            server_epsilon=1e-3,
            server_bias_correction=False,
        )
    )
    p1 = opt.step(P0, U1)
    np.testing.assert_allclose(p1, [0.0990050489, 0.9004987376], rtol=1e-6)
    p2 = opt.step(p1, U2)
    np.testing.assert_allclose(p2, [0.2236048965, 0.8647385983], rtol=1e-6)


def test_make_server_optimizer_reads_the_config() -> None:
    sgd = make_server_optimizer(FederatedConfig(server_optimizer="sgd", server_learning_rate=0.3))
    assert type(sgd) is FedAvgOptimizer and sgd.learning_rate == 0.3
    momentum = make_server_optimizer(FederatedConfig(server_optimizer="momentum", server_momentum=0.8))
    assert isinstance(momentum, FedAvgMOptimizer) and momentum.momentum == 0.8
    adam = make_server_optimizer(
        FederatedConfig(server_optimizer="adam", server_beta2=0.95, server_epsilon=0.01)
    )
    assert isinstance(adam, FedAdamOptimizer) and (adam.beta1, adam.beta2, adam.tau) == (0.9, 0.95, 0.01)


def all_optimizers() -> list[ServerOptimizer]:
    return [
        make_server_optimizer(FederatedConfig(server_optimizer=name)) for name in ("sgd", "momentum", "adam")
    ]


@pytest.mark.parametrize("name", ["sgd", "momentum", "adam"])
def test_state_round_trips_mid_training(name: ServerOptimizerName) -> None:
    config = FederatedConfig(server_optimizer=name, server_learning_rate=0.1)
    rng = np.random.default_rng(3)
    updates = rng.normal(size=(4, 6)).astype(np.float32)
    params = rng.normal(size=6).astype(np.float32)
    original = make_server_optimizer(config)
    for update in updates[:2]:
        params = original.step(params, update)
    state = original.state_dict()
    restored = make_server_optimizer(config)
    restored.load_state_dict(state)
    for key in state:
        if isinstance(state[key], np.ndarray):
            state[key][:] = 1e6  # the saved state is a copy
    a, b = params, params
    for update in updates[2:]:
        a, b = original.step(a, update), restored.step(b, update)
    np.testing.assert_array_equal(a, b)
    assert restored.steps == original.steps == 4


def test_a_fresh_optimizer_does_not_match_a_resumed_one() -> None:
    # guards the round-trip test: momentum state must matter
    opt, fresh = (
        FedAvgMOptimizer(learning_rate=1.0, momentum=0.9),
        FedAvgMOptimizer(learning_rate=1.0, momentum=0.9),
    )
    opt.step(P0, U1)
    assert not np.allclose(opt.step(P0, U2), fresh.step(P0, U2))


@pytest.mark.parametrize(
    "state",
    [
        {"name": "adam", "steps": 1},
        {"name": "momentum", "steps": 1, "velocity": np.zeros((2, 2))},
        {"name": "momentum", "steps": 1, "velocity": np.array([np.nan, 0.0])},
    ],
)
def test_mismatching_state_is_refused(state: dict[str, object]) -> None:
    with pytest.raises(DataError):
        FedAvgMOptimizer(learning_rate=1.0, momentum=0.9).load_state_dict(state)
    with pytest.raises(DataError):
        FedAdamOptimizer(learning_rate=1.0, beta1=0.9, beta2=0.99, tau=1e-3).load_state_dict(
            {"name": "adam", "m": np.zeros(2), "v": np.zeros(3)}
        )


@pytest.mark.parametrize("opt", all_optimizers(), ids=lambda o: o.name)
def test_malformed_updates_are_rejected(opt: ServerOptimizer) -> None:
    params = np.zeros(3, np.float32)
    for bad in (np.zeros(2), np.zeros((3, 1)), np.array([0.0, np.nan, 0.0]), np.array([np.inf, 0.0, 0.0])):
        with pytest.raises(UpdateRejectedError):
            opt.step(params, bad)
    opt.step(params, np.ones(3, np.float32))
    if opt.name != "sgd":
        with pytest.raises(UpdateRejectedError):  # the state was built for 3 parameters
            opt.step(np.zeros(4, np.float32), np.ones(4, np.float32))


def test_bad_hyperparameters_are_refused() -> None:
    with pytest.raises(ConfigError):
        FedAvgOptimizer(learning_rate=0.0)
    with pytest.raises(ConfigError):
        FedAvgMOptimizer(learning_rate=1.0, momentum=1.0)
    with pytest.raises(ConfigError):
        FedAdamOptimizer(learning_rate=1.0, beta1=0.9, beta2=0.99, tau=0.0)


def test_bias_corrected_adam_takes_lr_sized_first_steps() -> None:
    # Kingma & Ba: the first step is lr * u / (|u| + tau) per coordinate, i.e. about lr * sign(u).
    from server.strategy import FedAdamOptimizer

    opt = FedAdamOptimizer(learning_rate=0.01, beta1=0.9, beta2=0.999, tau=1e-8, bias_correction=True)
    params = np.zeros(3, dtype=np.float32)
    update = np.array([0.5, -2.0, 1e-3])
    after = opt.step(params, update)
    np.testing.assert_allclose(after, 0.01 * np.sign(update), rtol=1e-4)
    uncorrected = FedAdamOptimizer(learning_rate=0.01, beta1=0.9, beta2=0.999, tau=1e-8)
    first = uncorrected.step(params, update)
    assert np.all(np.abs(first) > 3 * 0.01)  # m / sqrt(v) = 0.1 / sqrt(0.001): over three times lr


def test_cosine_schedule_falls_from_one_to_the_final_fraction() -> None:
    schedule = CosineSchedule(steps=5, final_fraction=0.1)
    factors = [schedule.factor(step) for step in range(7)]
    # 0.1 + 0.9 * (1 + cos(pi * s / 4)) / 2 for s = 0..4, then flat
    expected = [1.0, 0.1 + 0.45 * (1 + np.cos(np.pi / 4)), 0.55, 0.1 + 0.45 * (1 - np.cos(np.pi / 4)), 0.1]
    np.testing.assert_allclose(factors, [*expected, 0.1, 0.1], rtol=1e-12)
    assert CosineSchedule(steps=1, final_fraction=0.3).factor(0) == 1.0  # a single step runs at full rate
    for steps, final_fraction in ((0, 0.1), (3, 1.5)):
        with pytest.raises(ConfigError):
            CosineSchedule(steps=steps, final_fraction=final_fraction)


def test_cosine_schedule_scales_each_optimizer_step() -> None:
    config = FederatedConfig(
        server_optimizer="momentum",
        server_learning_rate=0.5,
        rounds=3,
        server_lr_schedule="cosine",
        server_lr_final_fraction=0.2,
    )
    opt = make_server_optimizer(config)
    assert opt.rate() == 0.5
    p1 = opt.step(P0, U1)  # rate 0.5, v = [1, -2]
    np.testing.assert_allclose(p1, [0.5, 0.0], atol=1e-7)
    assert opt.rate() == pytest.approx(0.5 * 0.6)  # halfway: 0.2 + 0.8 * 0.5
    p2 = opt.step(p1, U2)  # v = [1.4, -0.8], rate 0.3
    np.testing.assert_allclose(p2, [0.5 + 0.3 * 1.4, -0.3 * 0.8], rtol=1e-6)
    assert opt.rate() == pytest.approx(0.1)
    assert make_server_optimizer(FederatedConfig(server_learning_rate=0.5)).schedule is None


def test_a_resumed_optimizer_continues_the_schedule() -> None:
    config = FederatedConfig(
        server_optimizer="adam", server_learning_rate=0.1, rounds=4, server_lr_schedule="cosine"
    )
    rng = np.random.default_rng(5)
    updates, params = rng.normal(size=(4, 3)).astype(np.float32), np.zeros(3, np.float32)
    original = make_server_optimizer(config)
    for update in updates[:2]:
        params = original.step(params, update)
    restored = make_server_optimizer(config)
    restored.load_state_dict(original.state_dict())
    assert restored.rate() == original.rate() < 0.1
    a, b = params, params
    for update in updates[2:]:
        a, b = original.step(a, update), restored.step(b, update)
    np.testing.assert_array_equal(a, b)
    # guard: the same state under a constant rate takes a larger step, so the schedule is what matched
    constant = make_server_optimizer(FederatedConfig(server_optimizer="adam", server_learning_rate=0.1))
    constant.load_state_dict(original.state_dict())
    scheduled = make_server_optimizer(config)
    scheduled.load_state_dict(original.state_dict())
    step_constant = np.abs(constant.step(params, updates[0]) - params)
    step_scheduled = np.abs(scheduled.step(params, updates[0]) - params)
    np.testing.assert_allclose(step_scheduled, step_constant * 0.1, rtol=1e-4, atol=1e-7)
