"""User-level DP aggregation: Gaussian noise on the sum of clipped updates, divided by q*N; adaptive C."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

from server.strategy.poisson_sampling import check_update_sum, check_update_values
from shared.config import PrivacyConfig, PrivacyMode
from shared.errors import ConfigError, DataError, UpdateRejectedError

logger = logging.getLogger(__name__)


class NoiseSource(Protocol):
    """What the aggregator needs from a noise generator (shared.privacy.noise.GaussianNoise has it)."""

    @property
    def source(self) -> str:
        """Where the randomness comes from, for the ledger (e.g. OS entropy or a fixed test seed)."""
        ...

    def sample(self, shape: tuple[int, ...], *, std: float) -> np.ndarray:
        """Independent N(0, std^2) draws (float64) of the given shape."""
        ...

    def normal(self, *, std: float) -> float:
        """One N(0, std^2) draw."""
        ...


@dataclass(frozen=True)
class Draw:
    """One request a noise source served: how many values it drew, and their std."""

    values: int
    std: float


class RecordedNoise:
    """A noise source that passes every request to `inner` and records what was drawn (a Draw per request).

    The aggregator draws through one and reports the noise it applied from these records: a round in which
    nothing was drawn reports std 0, whatever the settings say.
    """

    def __init__(self, inner: NoiseSource) -> None:
        self._inner = inner
        self._vectors: list[Draw] = []  # sample(): noise on a vector (the update sum)
        self._scalars: list[Draw] = []  # normal(): one value (the unclipped count)

    @property
    def source(self) -> str:
        return self._inner.source

    def sample(self, shape: tuple[int, ...], *, std: float) -> np.ndarray:
        drawn = self._inner.sample(shape, std=std)
        self._vectors.append(Draw(int(np.size(drawn)), float(std)))
        return drawn

    def normal(self, *, std: float) -> float:
        drawn = self._inner.normal(std=std)
        self._scalars.append(Draw(1, float(std)))
        return drawn

    def take(self) -> tuple[list[Draw], list[Draw]]:
        """(vector draws, scalar draws) since the last take; the records start afresh."""
        vectors, scalars = self._vectors, self._scalars
        self._vectors, self._scalars = [], []
        return vectors, scalars


def drawn_std(draws: list[Draw], *, values: int) -> float:
    """The std per value of the noise the draws put on a vector of `values` values: the root of the summed
    variances of the draws that covered all of them (independent draws add); 0 when none was drawn."""
    return math.sqrt(sum(d.std**2 for d in draws if d.values == values))


@dataclass(frozen=True, kw_only=True)
class AdaptiveClipping:
    """Andrew et al. 2021 adaptive clipping: C <- C * exp(-clip_learning_rate * (b_bar - quantile)).

    count_stddev is sigma_b, the std of the Gaussian noise on the count of unclipped updates (in users);
    0 means the paper's default, expected cohort / 20.
    """

    target_unclipped_quantile: float = 0.5
    clip_learning_rate: float = 0.2
    count_stddev: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 < self.target_unclipped_quantile < 1.0:
            raise ConfigError("target_unclipped_quantile must be in (0, 1)")
        if not self.clip_learning_rate > 0 or not self.count_stddev >= 0:
            raise ConfigError("clip_learning_rate must be positive and count_stddev >= 0")

    def count_std(self, expected_cohort: float) -> float:
        """sigma_b actually used: count_stddev, or expected_cohort / 20 when it is 0."""
        return self.count_stddev if self.count_stddev > 0 else expected_cohort / 20.0


def adaptive_from_config(privacy: PrivacyConfig) -> AdaptiveClipping | None:
    """The AdaptiveClipping of a PrivacyConfig, or None when adaptive clipping is off."""
    if not privacy.adaptive_clipping:
        return None
    return AdaptiveClipping(
        target_unclipped_quantile=privacy.target_unclipped_quantile,
        clip_learning_rate=privacy.clip_learning_rate,
        count_stddev=privacy.clip_count_stddev,
    )


def update_noise_multiplier(*, noise_multiplier: float, count_stddev: float) -> float:
    """z_update = (z^-2 - (2 sigma_b)^-2)^(-1/2): the update's share of a total noise multiplier z.

    Andrew et al. 2021, Theorem 1: each user adds a centred bit (b - 1/2) to the count, whose sensitivity is
    1/2, so count noise of std sigma_b is a Gaussian mechanism with multiplier 2 sigma_b; releasing the
    update sum (multiplier z_update) and the count together is one Gaussian mechanism with
    z^-2 = z_update^-2 + (2 sigma_b)^-2, the z the accountants are given. Raises ConfigError when
    2 sigma_b <= z (the count would use up the whole budget).
    """
    if noise_multiplier < 0 or count_stddev < 0:
        raise ConfigError("noise_multiplier and count_stddev must be >= 0")
    if noise_multiplier == 0:
        return 0.0
    if 2.0 * count_stddev <= noise_multiplier:
        raise ConfigError(
            f"clip count noise std {count_stddev:g} is too small for noise_multiplier {noise_multiplier:g}: "
            "need 2 * count_stddev > noise_multiplier"
        )
    return float((noise_multiplier**-2 - (2.0 * count_stddev) ** -2) ** -0.5)


@dataclass(frozen=True, kw_only=True)
class NoisedAggregate:
    """One round's result, as applied: noise_std and count_noise_std are the stds of the noise this
    aggregator drew (recorded by its RecordedNoise), divisor what it divided by."""

    mean_update: np.ndarray  # (dim,) float32: (sum + noise) / divisor
    noise_std: float  # std per coordinate of the noise drawn and added to the SUM here (0: none added)
    update_noise_multiplier: float
    clip_norm: float  # C the devices clipped to this round
    next_clip_norm: float  # C for the next round (== clip_norm without adaptive clipping)
    count_noise_std: float  # std of the noise drawn on the unclipped count (0 without adaptive clipping)
    noised_unclipped_fraction: float | None  # b_bar in [0, 1] (None without adaptive clipping)
    divisor: float  # what the noised sum was divided by: the expected cohort sample_rate * population


class UserLevelDPAggregator:
    """Noise and average the sum of clipped user updates of a Poisson-sampled cohort (unit: one user).

    Assumes each user took part at most once in the round, clipped their whole update to L2 norm
    `clip_norm`, and was sampled independently with probability `sample_rate`. The divisor is always the
    expected cohort sample_rate * population, never the realised count and never example counts: that is
    the mechanism the accountants (PLD, RDP with Poisson subsampling) bound.
    mode "central": the server adds N(0, (z_update * C)^2) per coordinate to the sum; "local": devices
    noised their own updates, the server only divides; "none": no noise (epsilon is infinite).
    """

    def __init__(
        self,
        *,
        population: int,
        sample_rate: float,
        noise_multiplier: float,
        clip_norm: float,
        mode: Literal["central", "local", "none"],
        noise: NoiseSource,
        adaptive: AdaptiveClipping | None = None,
    ) -> None:
        if population < 1 or not 0.0 < sample_rate <= 1.0:
            raise ConfigError(f"need population >= 1, sample_rate in (0, 1]; got {population}, {sample_rate}")
        if not noise_multiplier >= 0 or not math.isfinite(noise_multiplier):
            raise ConfigError(f"noise_multiplier must be finite and >= 0, got {noise_multiplier}")
        if mode not in ("central", "local", "none"):
            raise ConfigError(f"unknown privacy mode {mode!r}")
        if adaptive is not None and mode == "local":
            raise ConfigError("adaptive clipping needs mode 'central' (or 'none'), not 'local'")
        self._population, self._sample_rate, self._mode = population, sample_rate, mode
        self._noise_multiplier, self._adaptive = noise_multiplier, adaptive
        self._noise = RecordedNoise(noise)
        self._clip_norm = _positive_clip_norm(clip_norm, ConfigError)
        self._count_std = 0.0
        if adaptive is not None and mode == "central":
            self._count_std = adaptive.count_std(self.expected_cohort)
        self._z_update = self._split_noise_multiplier()

    def _split_noise_multiplier(self) -> float:
        if self._mode != "central":
            return 0.0
        if self._adaptive is None:
            return self._noise_multiplier
        return update_noise_multiplier(noise_multiplier=self._noise_multiplier, count_stddev=self._count_std)

    @property
    def expected_cohort(self) -> float:
        """sample_rate * population: the fixed divisor of every round."""
        return self._sample_rate * self._population

    @property
    def clip_norm(self) -> float:
        """C the devices must clip to in the coming round."""
        return self._clip_norm

    @property
    def mode(self) -> PrivacyMode:
        return self._mode

    @property
    def noise_multiplier(self) -> float:
        """z, the total noise multiplier the accountants are given (update and count together)."""
        return self._noise_multiplier

    @property
    def update_noise_multiplier(self) -> float:
        """z_update, the multiplier of the noise the server adds to the update sum (0 unless central)."""
        return self._z_update

    @property
    def count_noise_std(self) -> float:
        """sigma_b, the std of the noise on the unclipped count (0 without adaptive clipping)."""
        return self._count_std

    @property
    def noise_source(self) -> str:
        """Where the noise comes from, for the ledger."""
        return self._noise.source

    def aggregate(
        self, update_sum: np.ndarray, *, count: int, unclipped_count: int, noise_in_sum: float | None = None
    ) -> NoisedAggregate:
        """Noise the sum of `count` clipped updates and divide by sample_rate * population.

        `unclipped_count` is the number of those users whose update norm was <= C before clipping (used
        only with adaptive clipping). Raises UpdateRejectedError for a malformed or oversized sum.
        `noise_in_sum` (secure aggregation, server/secagg/secure_round.py): the sum arrives with this noise
        std per coordinate already in it and its norm already checked; the server adds none (and the result's
        noise_std, the noise drawn here, is 0: the ledger takes the sum's noise from the protocol's record).
        """
        clip_norm = self._clip_norm
        self._noise.take()  # records start with this round
        if noise_in_sum is not None:
            if self._adaptive is not None:
                raise ConfigError("adaptive clipping is not available with secure aggregation")
            check_update_values(update_sum, count=count, dim=update_sum.shape[0])
            total = update_sum.astype(np.float64)
        else:
            total = self._checked_sum(update_sum, count=count, unclipped_count=unclipped_count)
            std = self._z_update * clip_norm
            if std > 0:
                total = total + self._noise.sample(total.shape, std=std)
        divisor = self.expected_cohort
        mean_update = (total / divisor).astype(np.float32)
        fraction = None
        if self._adaptive is not None:
            fraction = self._adapt_clip_norm(self._adaptive, count=count, unclipped_count=unclipped_count)
        vectors, scalars = self._noise.take()
        noise_std = drawn_std(vectors, values=int(total.size))
        logger.debug(
            "aggregated a round: clip norm %.4g -> %.4g, noise std drawn %.4g",
            clip_norm,
            self._clip_norm,
            noise_std,
        )
        return NoisedAggregate(
            mean_update=mean_update,
            noise_std=noise_std,
            update_noise_multiplier=self._z_update,
            clip_norm=clip_norm,
            next_clip_norm=self._clip_norm,
            count_noise_std=drawn_std(scalars, values=1),
            noised_unclipped_fraction=fraction,
            divisor=float(divisor),
        )

    def _checked_sum(self, update_sum: np.ndarray, *, count: int, unclipped_count: int) -> np.ndarray:
        if not isinstance(update_sum, np.ndarray) or update_sum.ndim != 1:
            raise UpdateRejectedError("update sum must be a flat (dim,) numpy array")
        if not 0 <= unclipped_count <= max(count, 0):
            raise UpdateRejectedError(f"unclipped count {unclipped_count} is not within [0, {count}]")
        if self._mode == "local":  # noised on the devices: no norm bound on the sum
            check_update_values(update_sum, count=count, dim=update_sum.shape[0])
        else:
            check_update_sum(update_sum, count=count, dim=update_sum.shape[0], clip_norm=self._clip_norm)
        return update_sum.astype(np.float64)

    def _adapt_clip_norm(self, adaptive: AdaptiveClipping, *, count: int, unclipped_count: int) -> float:
        """Geometric step of C toward the target unclipped quantile; returns the (noised) fraction b_bar.

        Central: b_bar = (sum_i (b_i - 1/2) + N(0, sigma_b^2)) / (q N) + 1/2, clamped to [0, 1], as in the
        paper (and TF Privacy); the centring is what makes the count's sensitivity 1/2. "none": the exact
        fraction unclipped_count / count (C stays put in an empty round).
        """
        if self._mode == "central":
            centred = unclipped_count - count / 2.0 + self._noise.normal(std=self._count_std)
            fraction = centred / self.expected_cohort + 0.5
        elif count > 0:
            fraction = unclipped_count / count
        else:
            fraction = adaptive.target_unclipped_quantile
        fraction = min(1.0, max(0.0, float(fraction)))
        # more unclipped than the target -> positive exponent argument -> C shrinks
        step = adaptive.clip_learning_rate * (fraction - adaptive.target_unclipped_quantile)
        self._clip_norm = self._clip_norm * math.exp(-step)
        return fraction

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint needs to resume: the current clip norm."""
        return {"clip_norm": self._clip_norm}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from state_dict(); raises DataError for a missing or invalid clip norm."""
        if "clip_norm" not in state:
            raise DataError("aggregator state has no clip_norm")
        self._clip_norm = _positive_clip_norm(state["clip_norm"], DataError)


def _positive_clip_norm(value: Any, error: type[ConfigError] | type[DataError]) -> float:
    try:
        clip_norm = float(value)
    except (TypeError, ValueError) as exc:
        raise error(f"clip_norm must be a number, got {type(value).__name__}") from exc
    if not (math.isfinite(clip_norm) and clip_norm > 0):
        raise error(f"clip_norm must be finite and positive, got {clip_norm}")
    return clip_norm
