"""One-step per-user gradients with the four large matrices kept as factors (ghost clipping).

A user's gradient of a weight W used as y = x W^T (or y = x W) is a sum of outer products over the rows
it was applied to: G = left^T right, left (n, out) and right (n, in) holding the rows' output gradients and
inputs. For the item tower's `down` and `up` and the user tower's `in_proj` and `out_proj` (98k of the
model's 139k parameters) the per-user rows are few (a user's distinct items and examples), so keeping
(left, right) instead of G saves writing and reading a (users x 98k) block: the norm comes from
||left^T right||^2 = sum((left left^T) * (right right^T)) (in float64: no cancellation can hide a large
gradient from the clipping), and the clipped sum from one matrix product over all rows of a chunk.

The output gradients come from zero "probes" added to each use's output and differentiated with the
other parameters (the weights themselves are held constant there: for a linear use, dL/dW = g^T x exactly).
The probes go into the one loss definition, client/training/local_loss.py's `user_loss` (FactoredUserLoss).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from shared.model import TwoTower

# weight -> its uses, in the order their rows are stacked: (probe name, rows of the user's items or examples)
FACTORED: dict[str, tuple[str, ...]] = {
    "items.down.weight": ("down_items", "down_users"),
    "items.up.weight": ("up_items", "up_users"),
    "users.in_proj.weight": ("in_items",),
    "users.out_proj.weight": ("out_users",),
}


@dataclass(frozen=True)
class Factored:
    """Per-user gradients G_b = scale * left_b^T right_b of one weight: left (B, n, out), right (B, n, in)."""

    left: Tensor
    right: Tensor
    scale: float  # the weight's update scale s (the update in phi is s times the gradient in theta)

    def squared_norms(self) -> Tensor:
        """(B,) float64 ||G_b||_F^2, from the (n x n) Gram matrices of the rows."""
        left, right = self.left.double(), self.right.double()
        grams = (left @ left.transpose(1, 2)) * (right @ right.transpose(1, 2))  # (B, n, n)
        return grams.sum(dim=(1, 2)) * self.scale**2

    def weighted_sum(self, weights: Tensor) -> Tensor:
        """(out * in,) float32 sum_b weights_b G_b, as one matrix product over every row of the chunk."""
        rows_left = (self.left * weights[:, None, None]).reshape(-1, self.left.shape[-1])  # (B n, out)
        rows_right = self.right.reshape(-1, self.right.shape[-1])  # (B n, in)
        return (rows_left.T @ rows_right).reshape(-1) * self.scale

    def zero_rows(self, keep: Tensor) -> Factored:
        """The same with user b's rows zeroed where not keep[b] (a non-finite update adds nothing)."""
        mask = keep[:, None, None]
        zero = torch.zeros((), dtype=self.left.dtype)
        return Factored(torch.where(mask, self.left, zero), torch.where(mask, self.right, zero), self.scale)


def probe_shapes(model: TwoTower, n_items: int, n_examples: int) -> dict[str, tuple[int, int]]:
    """Per-user shape of each probe, for a user with `n_items` items in their set and `n_examples` slots."""
    rank, text_dim = model.items.up.weight.shape[1], model.items.text.shape[1]
    dim = model.users.in_proj.weight.shape[0]
    return {
        "down_items": (n_items, rank),
        "down_users": (n_examples, text_dim),
        "up_items": (n_items, text_dim),
        "up_users": (n_examples, rank),
        "in_items": (n_items, dim),
        "out_users": (n_examples, text_dim),
    }


def factors(name: str, probe_grads: dict[str, Tensor], rows: dict[str, Tensor], scale: float) -> Factored:
    """The Factored per-user gradients of weight `name` from the probes' gradients and the input rows."""
    if name == "items.down.weight":  # (r, E): text -> code on items; code_side -> query on examples
        left = torch.cat([probe_grads["down_items"], rows["code_side"]], dim=1)
        right = torch.cat([rows["text"], probe_grads["down_users"]], dim=1)
    elif name == "items.up.weight":  # (E, r): code -> vectors on items; scaled -> code_side on examples
        left = torch.cat([probe_grads["up_items"], rows["scaled"]], dim=1)
        right = torch.cat([rows["code"], probe_grads["up_users"]], dim=1)
    elif name == "users.in_proj.weight":  # (d, E): vectors -> table on items
        left, right = probe_grads["in_items"], rows["vectors"]
    else:  # users.out_proj.weight (E, d): read -> out on examples
        left, right = probe_grads["out_users"], rows["read"]
    return Factored(left.detach(), right.detach(), scale)
