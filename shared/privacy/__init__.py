"""Privacy math of user-level DP: clipping, Gaussian noise, and the (epsilon, delta) accountants.

Importing it imports neither torch nor opacus (the device SDK uses the accountant): the torch entry points of
UserClipping import torch when called, the RDP cross-check imports opacus on first use.
"""

from shared.privacy.accounting import (
    RoundEvent,
    UserLevelAccountant,
    calibrate_noise_multiplier,
    default_delta,
    json_epsilon,
    pld_epsilon,
    rdp_epsilon,
)
from shared.privacy.mechanism import CLIP_MARGIN, UserClipping
from shared.privacy.noise import GaussianNoise

__all__ = [
    "CLIP_MARGIN",
    "GaussianNoise",
    "RoundEvent",
    "UserClipping",
    "UserLevelAccountant",
    "calibrate_noise_multiplier",
    "default_delta",
    "json_epsilon",
    "pld_epsilon",
    "rdp_epsilon",
]
