"""The federated view of a model: its trained parameters as one flat float32 vector, and back.

Federated rounds exchange only the parameters named by `FederatedConfig.trainable` (dotted-name prefixes of
`model.named_parameters()`, or "all"), concatenated in `named_parameters()` order. Everything else (the
frozen text embeddings, parameters left out of federated training) stays as the model was built.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from shared.errors import ConfigError, UpdateRejectedError


@dataclass(frozen=True)
class ParamLayout:
    """Which parameters a flat vector holds, in order, and their shapes."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(int(np.prod(shape)) for shape in self.shapes)

    @property
    def dim(self) -> int:
        return sum(self.sizes)

    def describe(self) -> dict[str, list[int]]:
        return {name: list(shape) for name, shape in zip(self.names, self.shapes, strict=True)}


def trainable_layout(model: nn.Module, prefixes: Sequence[str]) -> ParamLayout:
    """The layout of the parameters whose dotted names start with one of `prefixes` ("all": every one that
    requires a gradient). Raises ConfigError when a prefix matches nothing."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if "all" not in prefixes:
        unmatched = [pre for pre in prefixes if not any(_matches(n, pre) for n, _ in params)]
        if unmatched:
            raise ConfigError(f"trainable prefixes match no trainable parameter: {unmatched}")
        params = [(n, p) for n, p in params if any(_matches(n, pre) for pre in prefixes)]
    return ParamLayout(tuple(n for n, _ in params), tuple(tuple(p.shape) for _, p in params))


def _matches(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def check_update_scales(model: nn.Module, scales: Sequence[str]) -> None:
    """Raise ConfigError for a "prefix=scale" entry whose prefix names no parameter of `model` (a typo)."""
    names = [n for n, _ in model.named_parameters()]
    unmatched = [
        p for p, _, _ in (e.partition("=") for e in scales) if not any(_matches(n, p) for n in names)
    ]
    if unmatched:
        raise ConfigError(f"update_scales prefixes match no model parameter: {unmatched}")


def group_scales(layout: ParamLayout, scales: Sequence[str]) -> dict[str, float]:
    """{parameter name: scale} from "prefix=scale" entries (the longest matching prefix wins; default 1).
    Entries for parameters that are not trained have no effect (check_update_scales catches typos)."""
    parsed = sorted(
        ((p, float(v)) for p, _, v in (e.partition("=") for e in scales)), key=lambda x: -len(x[0])
    )
    return {name: next((v for p, v in parsed if _matches(name, p)), 1.0) for name in layout.names}


def scale_vector(layout: ParamLayout, scales: Sequence[str]) -> np.ndarray:
    """(layout.dim,) float32 per-coordinate scale of `group_scales`."""
    per_name = group_scales(layout, scales)
    return (
        np.concatenate(
            [
                np.full(size, per_name[n], dtype=np.float32)
                for n, size in zip(layout.names, layout.sizes, strict=True)
            ]
        )
        if layout.names
        else np.zeros(0, dtype=np.float32)
    )


def get_flat(model: nn.Module, layout: ParamLayout) -> np.ndarray:
    """(layout.dim,) float32 copy of the model's parameters in the layout's order."""
    named = dict(model.named_parameters())
    parts = [named[name].detach().reshape(-1).to(torch.float32) for name in layout.names]
    return torch.cat(parts).numpy().copy() if parts else np.zeros(0, dtype=np.float32)


def set_flat(model: nn.Module, layout: ParamLayout, flat: np.ndarray) -> None:
    """Copy `flat` (layout.dim,) into the model's parameters, in place."""
    check_flat(flat, layout)
    named = dict(model.named_parameters())
    offset = 0
    with torch.no_grad():
        for name, shape, size in zip(layout.names, layout.shapes, layout.sizes, strict=True):
            chunk = torch.from_numpy(np.ascontiguousarray(flat[offset : offset + size], dtype=np.float32))
            named[name].copy_(chunk.reshape(shape))
            offset += size


def unflatten(flat: torch.Tensor, layout: ParamLayout) -> dict[str, torch.Tensor]:
    """{name: view of `flat` (..., dim) reshaped to (..., *shape)}; leading batch dimensions are kept."""
    out, offset = {}, 0
    lead = tuple(flat.shape[:-1])
    for name, shape, size in zip(layout.names, layout.shapes, layout.sizes, strict=True):
        out[name] = flat[..., offset : offset + size].reshape((*lead, *shape))
        offset += size
    return out


def check_flat(flat: np.ndarray, layout: ParamLayout) -> None:
    """UpdateRejectedError unless `flat` is a finite 1-D vector of the layout's size."""
    if flat.ndim != 1 or flat.shape[0] != layout.dim:
        raise UpdateRejectedError(f"parameter vector has shape {flat.shape}, expected ({layout.dim},)")
    if not np.isfinite(flat).all():
        raise UpdateRejectedError("parameter vector contains NaN or infinite values")


def params_sha256(flat: np.ndarray) -> str:
    """Hex sha256 of the float32 little-endian bytes of a parameter vector (what the ledger records)."""
    return hashlib.sha256(np.ascontiguousarray(flat, dtype="<f4").tobytes()).hexdigest()
