"""Gaussian noise for differential privacy from a cryptographically seeded generator (or a fixed seed).

Without a seed, 128 bits from the operating system's CSPRNG (`secrets.randbits`) seed numpy's PCG64DXSM
through a SeedSequence. The seed is never written anywhere (no log, no ledger, no repr, no checkpoint); it
and the generator's state live only in this process's memory, so nobody can later regenerate (and subtract)
the noise. PCG64DXSM is a statistical generator, not a CSPRNG: an attacker who saw many raw outputs
could in principle recover its state, but the outputs never leave this process un-summed; they are added
to the aggregate. A fixed seed makes the noise reproducible, which is for tests and reproductions only and
is NOT private; `source` says so, and the ledger records it.
"""

from __future__ import annotations

import math
import secrets

import numpy as np

from shared.errors import ConfigError

_OS_SOURCE = "numpy PCG64DXSM seeded with 128 bits from the OS CSPRNG (secrets); seed not recorded"


class GaussianNoise:
    """Independent N(0, std^2) draws for the noise on a sum (std = noise_multiplier * clip_norm)."""

    def __init__(self, *, seed: int | None = None) -> None:
        if seed is not None and seed < 0:
            raise ConfigError(f"seed must be >= 0 or None, got {seed}")
        entropy = secrets.randbits(128) if seed is None else seed
        self._generator = np.random.Generator(np.random.PCG64DXSM(np.random.SeedSequence(entropy)))
        self._source = (
            _OS_SOURCE if seed is None else f"numpy PCG64DXSM, fixed seed {seed} (deterministic: NOT private)"
        )

    @property
    def source(self) -> str:
        """Where the noise comes from, in words, for the privacy ledger (never the seed from the OS)."""
        return self._source

    def sample(self, shape: int | tuple[int, ...], *, std: float) -> np.ndarray:
        """float64 normal draws of the given shape with standard deviation `std` (0: zeros)."""
        _check_std(std)
        if std == 0:
            return np.zeros(shape, dtype=np.float64)
        return self._generator.normal(0.0, std, size=shape)

    def discrete(self, shape: int, *, std: float) -> np.ndarray:
        """int64 draws from the discrete Gaussian N_Z(0, std^2), P(x) proportional to exp(-x^2 / (2 std^2))
        on the integers, by Canonne, Kamath & Steinke 2020 (Algorithm 3): a discrete Laplace proposal of
        scale t = floor(std) + 1, accepted with probability exp(-(|y| - std^2 / t)^2 / (2 std^2)). Its
        sum over independent draws is what secure aggregation releases (server/secagg/secure_round.py)."""
        _check_std(std)
        if std == 0:
            return np.zeros(shape, dtype=np.int64)
        t = math.floor(std) + 1
        p = -math.expm1(-1.0 / t)  # a geometric "failures before success" count; a difference is Laplace
        out = np.zeros(shape, dtype=np.int64)
        todo = np.arange(shape)
        while todo.size:
            y = self._generator.geometric(p, todo.size) - self._generator.geometric(p, todo.size)
            accept = self._generator.random(todo.size) < np.exp(
                -((np.abs(y) - std**2 / t) ** 2) / (2 * std**2)
            )
            out[todo[accept]] = y[accept]
            todo = todo[~accept]
        return out

    def normal(self, *, std: float) -> float:
        """One normal draw with standard deviation `std` (e.g. the noise on a count)."""
        return float(self.sample(1, std=std)[0])

    def __repr__(self) -> str:
        return f"GaussianNoise({self._source!r})"


def _check_std(std: float) -> None:
    if not (math.isfinite(std) and std >= 0):
        raise ConfigError(f"noise std must be finite and >= 0, got {std}")
