"""The device side of the user-level mechanism as ONE object: clip each user's update to L2 norm C, and
in local-DP mode add Gaussian noise of std z * C to it.

Every path that sends an update goes through `UserClipping`: a shard of virtual devices and a single device
(client/training/round_update.py, `clipped_sum`), a record-level device's whole DP-SGD update and its local
noise (client/client_app.py, `clip` and `local_noise`), and the canaries of the empirical audit
(simulation/canary_audit.py, `clipped_sum` again).

The clipping rule, the same in every entry point: an update of L2 norm n > C is scaled by
(C / n) * (1 - margin); an update of norm <= C (a zero update included) is left as it is. The margin (1e-5,
what local training has always used) covers float rounding, so that every clipped update's exact norm is
<= C: `clip` and `clip_rows` take float64 norms and round each scaled entry once (<= 6e-8 relative);
`clipped_sum`, the batched path, takes float32 norms of dense blocks (~1e-6 relative) and float64 ones of
factored blocks (client/training/local_factored.py), and scales in float32. Non-finite updates never reach
a sum.

Importing this module imports neither torch nor opacus (the device SDK, client/device/, has no torch): the
torch entry points import torch when first called.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from shared.errors import ConfigError, UpdateRejectedError

if TYPE_CHECKING:
    import torch

    from shared.privacy.noise import GaussianNoise

CLIP_MARGIN = 1e-5  # a clipped update ends up to 1e-5 (relative) shorter than C: float32 norms are inexact


class RowFactors(Protocol):
    """B users' updates of one weight kept as factors (ghost clipping, client/training/local_factored.py)."""

    def squared_norms(self) -> torch.Tensor:
        """(B,) float64 squared L2 norms of the users' updates."""
        ...

    def weighted_sum(self, weights: torch.Tensor) -> torch.Tensor:
        """(size,) float32 sum over users of weights_b times user b's update."""
        ...

    def zero_rows(self, keep: torch.Tensor) -> RowFactors:
        """The same with user b's update zeroed where not keep[b]."""
        ...


@dataclass(frozen=True)
class UserClipping:
    """Clipping of each user's update to L2 norm `clip_norm` (C, the sensitivity of a sum of updates), and
    the local-DP noise on a clipped update, with one margin (see the module docstring)."""

    clip_norm: float
    margin: float = CLIP_MARGIN

    def __post_init__(self) -> None:
        if not (math.isfinite(self.clip_norm) and self.clip_norm > 0):
            raise ConfigError(f"clip_norm must be positive and finite, got {self.clip_norm}")
        if not 0 <= self.margin < 1:
            raise ConfigError(f"the clipping margin must be in [0, 1), got {self.margin}")

    def clip(self, update: np.ndarray) -> tuple[np.ndarray, float]:
        """One user's update (any shape) clipped: a float32 copy, and its original L2 norm (float64).

        Raises UpdateRejectedError when an entry is NaN or infinite, in float32 (a value that overflows
        float32 included): such an update must never reach a sum."""
        with np.errstate(over="ignore"):
            clipped = np.array(update, dtype=np.float32)
        if not np.all(np.isfinite(clipped)):
            raise UpdateRejectedError("update has non-finite entries (NaN or inf)")
        exact = clipped.astype(np.float64)
        norm = float(np.linalg.norm(exact.ravel()))
        if norm <= self.clip_norm:
            return clipped, norm
        return (exact * (self.clip_norm / norm * (1.0 - self.margin))).astype(np.float32), norm

    def row_scales(self, norms: torch.Tensor) -> torch.Tensor:
        """(B,) float64 factor for each user's update of L2 norm norms[b]: (C / norm) (1 - margin) above C,
        1 otherwise (a NaN norm gets 1: the caller zeroes such rows)."""
        import torch

        norms = norms.double()
        shrunk = self.clip_norm / norms * (1.0 - self.margin)
        return torch.where(norms > self.clip_norm, shrunk, torch.ones_like(norms))

    def clip_rows(self, updates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch of users' updates (B, P), one a row, each clipped: (clipped rows in the input's dtype,
        (B,) float64 original norms). A row with a NaN or infinite entry comes back as a ZERO row with norm
        NaN: it adds nothing to a sum, and the caller counts it as rejected with `torch.isnan(norms)`."""
        import torch

        if updates.dim() != 2:
            raise UpdateRejectedError(f"expected a (B, P) batch of updates, got shape {tuple(updates.shape)}")
        if updates.dtype not in (torch.float32, torch.float64):
            raise UpdateRejectedError(f"updates must be float32 or float64, got {updates.dtype}")
        finite = torch.isfinite(updates).all(dim=1)  # (B,)
        rows = torch.where(finite[:, None], updates, torch.zeros_like(updates))
        norms = torch.linalg.vector_norm(rows, dim=1, dtype=torch.float64)  # (B,)
        clipped = (rows.double() * self.row_scales(norms)[:, None]).to(rows.dtype)
        return clipped, torch.where(finite, norms, torch.full_like(norms, math.nan))

    def clipped_sum(
        self, blocks: Sequence[torch.Tensor | RowFactors], *, factor: float = 1.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum (P,) float64, norms (B,) float64) of B users' updates factor * cat(blocks, dim=1), each
        clipped first; a block is (B, size) dense or RowFactors. What `clip_rows` then a sum gives, in two
        passes over the numbers instead of about ten and without concatenating them: block norms (float32
        for dense blocks), one factor per user, one weighted sum (a matrix product) per block. A user whose
        update is not finite adds nothing (norm NaN or inf; so does one whose float32 norm overflows)."""
        import torch

        squares = torch.stack([_squared_norms(block) for block in blocks])  # (n, B) float64
        norms = squares.sum(dim=0).sqrt() * abs(factor)  # (B,)
        finite = torch.isfinite(norms)
        scale = torch.where(finite, self.row_scales(norms), torch.zeros_like(norms)).float()  # (B,)
        if not bool(finite.all()):
            blocks = [_zero_rows(block, finite) for block in blocks]
        sums = [
            scale[None, :].to(b.dtype) @ b if isinstance(b, torch.Tensor) else b.weighted_sum(scale)
            for b in blocks
        ]
        total = torch.cat([s.reshape(-1) for s in sums]).double() * factor  # (P,)
        return total, norms

    def local_noise(
        self, noise: GaussianNoise, shape: int | tuple[int, ...], *, noise_multiplier: float, users: int = 1
    ) -> np.ndarray:
        """Local-DP noise (float64) on the sum of `users` clipped updates: each user's N(0, (z C)^2) per
        coordinate, z = noise_multiplier, drawn as one N(0, users (z C)^2) (the sum of independent normal
        draws is distributed exactly so: n times fewer draws)."""
        if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
            raise ConfigError(f"local_noise_multiplier must be >= 0, got {noise_multiplier}")
        if users < 0:
            raise ConfigError(f"users must be >= 0, got {users}")
        return noise.sample(shape, std=noise_multiplier * self.clip_norm * math.sqrt(users))


def _squared_norms(block: torch.Tensor | RowFactors) -> torch.Tensor:
    import torch

    if isinstance(block, torch.Tensor):
        return torch.linalg.vector_norm(block, dim=1).square().double()
    return block.squared_norms()


def _zero_rows(block: torch.Tensor | RowFactors, keep: torch.Tensor) -> torch.Tensor | RowFactors:
    import torch

    if isinstance(block, torch.Tensor):
        return torch.where(keep[:, None], block, torch.zeros_like(block))
    return block.zero_rows(keep)
