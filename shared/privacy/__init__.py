"""Privacy math of user-level DP: clipping, Gaussian noise, and the (epsilon, delta) accountants."""

from shared.privacy.accounting import (
    RoundEvent,
    UserLevelAccountant,
    calibrate_noise_multiplier,
    default_delta,
    json_epsilon,
    pld_epsilon,
    rdp_epsilon,
)
from shared.privacy.clipping import clip_rows, clip_update
from shared.privacy.noise import GaussianNoise

__all__ = [
    "GaussianNoise",
    "RoundEvent",
    "UserLevelAccountant",
    "calibrate_noise_multiplier",
    "clip_rows",
    "clip_update",
    "default_delta",
    "json_epsilon",
    "pld_epsilon",
    "rdp_epsilon",
]
