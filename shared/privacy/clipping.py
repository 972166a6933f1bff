"""L2 clipping of user updates: the step that bounds each user's contribution (the sensitivity) to C.

Every norm here is the exact L2 norm computed in float64 over ALL entries of an update. After clipping,
that norm is <= clip_norm for every input, including float32 rounding: when scaling by C / norm lands a
hair above C (a float32 rounding of ~1e-7 relative), the update is shrunk once more by a margin of 1e-6.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from shared.errors import ConfigError, UpdateRejectedError

_MARGIN = 1.0 - 1e-6  # shrink factor applied only to the rare update that float32 rounding left above C


def _check_clip_norm(clip_norm: float) -> None:
    if not (math.isfinite(clip_norm) and clip_norm > 0):
        raise ConfigError(f"clip_norm must be positive and finite, got {clip_norm}")


def clip_update(update: np.ndarray, *, clip_norm: float) -> tuple[np.ndarray, float]:
    """One user's update scaled to L2 norm <= clip_norm (a float32 copy), and its original L2 norm.

    An update within the bound is returned unchanged (as float32); a zero update stays zero. The shape is
    kept; the norm is taken over all entries. Raises UpdateRejectedError on NaN or infinite entries, which
    must never reach the aggregate.
    """
    _check_clip_norm(clip_norm)
    values = np.asarray(update)
    if not np.all(np.isfinite(values)):
        raise UpdateRejectedError("update has non-finite entries (NaN or inf)")
    clipped = values.astype(np.float32, copy=True)
    norm = float(np.linalg.norm(clipped.ravel().astype(np.float64)))
    if norm <= clip_norm:
        return clipped, norm
    clipped *= np.float32(clip_norm / norm)
    new_norm = float(np.linalg.norm(clipped.ravel().astype(np.float64)))
    if new_norm > clip_norm:
        clipped *= np.float32(clip_norm / new_norm * _MARGIN)
    return clipped, norm


def clip_rows(updates: torch.Tensor, *, clip_norm: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-user clipping of a batch: (B, P) rows, one user each, scaled to L2 norm <= clip_norm.

    Returns the clipped rows (same dtype) and the (B,) original norms (float64). Zero rows stay zero. A row
    with a NaN or infinite entry cannot be clipped: it comes back as a ZERO row with norm NaN, so it adds
    nothing to the sum and the caller counts it as rejected with `torch.isnan(norms)`.
    """
    _check_clip_norm(clip_norm)
    if updates.dim() != 2:
        raise UpdateRejectedError(f"expected a (B, P) batch of updates, got shape {tuple(updates.shape)}")
    finite = torch.isfinite(updates).all(dim=1)  # (B,)
    rows = torch.where(finite[:, None], updates, torch.zeros_like(updates))
    norms = torch.linalg.vector_norm(rows, dim=1, dtype=torch.float64)  # (B,)
    clipped = rows * _row_factors(norms, clip_norm).to(rows.dtype)[:, None]
    new_norms = torch.linalg.vector_norm(clipped, dim=1, dtype=torch.float64)
    over = new_norms > clip_norm
    if bool(over.any()):
        fix = torch.where(over, clip_norm / new_norms * _MARGIN, torch.ones_like(new_norms))
        clipped = clipped * fix.to(rows.dtype)[:, None]
    return clipped, torch.where(finite, norms, torch.full_like(norms, math.nan))


def _row_factors(norms: torch.Tensor, clip_norm: float) -> torch.Tensor:
    """min(1, C / norm) per row (float64); a zero row gets 1 (C / 0 = inf, clamped)."""
    return torch.clamp(clip_norm / norms, max=1.0)
