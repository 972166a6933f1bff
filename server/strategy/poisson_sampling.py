"""Poisson sampling of the users in a round, and the norm check on a sum of clipped updates."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shared.errors import ConfigError, UpdateRejectedError

# Relative slack on the norm bound of a sum: float32 clipping and summation round a little above C.
NORM_SLACK = 1e-5


def poisson_sample(population: int, *, sample_rate: float, rng: np.random.Generator) -> np.ndarray:
    """Sorted int64 indices of the users taking part in a round: each of `population` users independently
    with probability `sample_rate` (Poisson sampling, what the accountants assume; the result may be empty).

    The realised cohort size is random (Binomial(population, sample_rate)); never resample to a fixed size.
    Amplification by sampling assumes nobody outside the server learns who was sampled, so `rng` should be
    seeded from OS entropy outside tests and reproductions.
    """
    if isinstance(population, bool) or not isinstance(population, int | np.integer) or population < 0:
        raise ConfigError(f"population must be a non-negative integer, got {population!r}")
    if not 0.0 <= sample_rate <= 1.0:
        raise ConfigError(f"sample_rate must be in [0, 1], got {sample_rate}")
    chosen = rng.random(int(population)) < sample_rate  # one independent coin per user
    return np.flatnonzero(chosen).astype(np.int64)


@dataclass(frozen=True)
class CohortSample:
    """A round's sampled users and how the sampler drew them: what the ledger records as the round's
    sampling, rate, population and realised cohort (never the plan's intent: the sampler's own account)."""

    users: np.ndarray  # sorted int64 user indices
    method: str  # "poisson" here; the verifier flags any other (the accountants assume Poisson sampling)
    sample_rate: float
    population: int

    @property
    def size(self) -> int:
        """The realised cohort size."""
        return int(self.users.size)


def poisson_cohort(population: int, *, sample_rate: float, rng: np.random.Generator) -> CohortSample:
    """poisson_sample's users, with the method and rate that drew them."""
    users = poisson_sample(population, sample_rate=sample_rate, rng=rng)
    return CohortSample(users, method="poisson", sample_rate=float(sample_rate), population=int(population))


def check_update_values(update_sum: np.ndarray, *, count: int, dim: int) -> None:
    """Reject a sum of `count` updates with a negative count, a shape other than (dim,), a dtype that is
    not real-valued, or a NaN or infinite value (UpdateRejectedError; the message carries no values)."""
    if count < 0:
        raise UpdateRejectedError(f"update sum reports a negative user count ({count})")
    if not isinstance(update_sum, np.ndarray) or update_sum.dtype.kind not in "fiu":
        raise UpdateRejectedError("update sum is not a real-valued numpy array", reason="wrong_shape")
    if update_sum.shape != (dim,):
        raise UpdateRejectedError(
            f"update sum has shape {update_sum.shape}, expected ({dim},)", reason="wrong_shape"
        )
    if not np.isfinite(update_sum).all():
        raise UpdateRejectedError("update sum contains NaN or infinite values", reason="non_finite")


def check_update_sum(update_sum: np.ndarray, *, count: int, dim: int, clip_norm: float) -> None:
    """Reject a sum of `count` user updates that cannot come from updates each clipped to `clip_norm`.

    Raises UpdateRejectedError for what check_update_values rejects, and when the L2 norm exceeds
    count * clip_norm * (1 + 1e-5): by the triangle inequality no sum of `count` clipped updates is
    longer, so this catches an oversized or unclipped reply from a device or shard. clip_norm = inf
    (devices noised their own updates, mode "local") checks only what check_update_values checks.
    """
    if not clip_norm > 0:
        raise ConfigError(f"clip_norm must be positive, got {clip_norm}")
    check_update_values(update_sum, count=count, dim=dim)
    if np.isinf(clip_norm):
        return
    norm = float(np.linalg.norm(update_sum.astype(np.float64)))
    if norm > count * clip_norm * (1.0 + NORM_SLACK):
        raise UpdateRejectedError(
            f"update sum is longer than {count} updates clipped to L2 norm {clip_norm:g} can be "
            "(oversized or unclipped reply)",
            reason="oversized",
        )
