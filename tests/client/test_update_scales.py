"""Update scales (theta = s * phi): devices train and clip in phi; the batched path still equals autograd."""

from __future__ import annotations

import numpy as np
import pytest
from local_toy import SUBSET, build

from shared.errors import ConfigError
from shared.model.params import group_scales, scale_vector

SCALES = ("items.bias=4", "log_temperature=0.5")


def test_one_step_update_in_phi_is_s_times_the_plain_update() -> None:
    plain, scaled = build(SUBSET), build(SUBSET, update_scales=SCALES)
    s = scale_vector(scaled.layout, SCALES)
    for user in (2, 5, 9):
        base = plain.trainer.user_update(plain.params, user, round_seed=4)
        np.testing.assert_allclose(
            scaled.trainer.user_update(scaled.params, user, round_seed=4), s * base, rtol=1e-5
        )


@pytest.mark.parametrize("steps", [1, 3])
def test_batched_path_equals_autograd_with_scales(steps: int) -> None:
    toy = build(SUBSET, update_scales=SCALES, local_steps=steps)
    expected = np.zeros(toy.layout.dim)
    for user in toy.users:
        update = toy.trainer.user_update(toy.params, int(user), round_seed=2).astype(np.float64)
        norm = float(np.linalg.norm(update))
        expected += update * min(1.0, 0.3 / norm) if norm > 0 else update
    result = toy.trainer.clipped_sum(toy.params, toy.users, round_seed=2, clip_norm=0.3)
    # 12 of the 14 users are clipped, and a clipped row shrinks by a further 1e-5 (the float32 margin of
    # client.training.round_update): that alone is a relative difference of about 1e-5, so allow float noise
    # on top of it
    assert np.linalg.norm(result.total - expected) / np.linalg.norm(expected) < 2e-5


def test_three_steps_in_phi_use_an_s_squared_learning_rate() -> None:
    # One parameter group scaled by s trains like the unscaled model with lr * s^2 (and reports delta / s).
    scaled = build(("items.bias",), update_scales=("items.bias=2",), local_steps=3, local_learning_rate=0.1)
    plain = build(("items.bias",), local_steps=3, local_learning_rate=0.4)
    for user in (3, 7):
        np.testing.assert_allclose(
            scaled.trainer.user_update(scaled.params, user, round_seed=1) * 2,
            plain.trainer.user_update(plain.params, user, round_seed=1),
            rtol=1e-4,
            atol=1e-7,
        )


def test_longest_prefix_wins_and_unknown_prefixes_are_refused() -> None:
    layout = build().layout
    per_name = group_scales(layout, ("items=2", "items.bias=5"))
    assert per_name["items.bias.weight"] == 5 and per_name["items.up.weight"] == 2
    assert per_name["users.out_proj.weight"] == 1
    assert group_scales(layout, ("users.out_proj=0.1",))["users.out_proj.weight"] == pytest.approx(0.1)
    with pytest.raises(ConfigError, match="match no model parameter"):
        build(update_scales=("nothing.here=2",))
    with pytest.raises(ConfigError):
        build(update_scales=("items.bias=-1",))
