"""The federations `fedhome-sim canary` can audit: the recommender, or a small linear-regression model.

The linear federation is the calibration case: every user holds a few (x, y) pairs of a shared linear
model, sends one clipped gradient step, and the server (FedAvg, lr 1) adds the noised mean, so the final
model is a sum of Gaussian-mechanism outputs and the audit's estimate can be compared with the analytic
epsilon in a setting that is easy to reason about.
"""

from __future__ import annotations

import numpy as np
import torch

from client.training.round_update import UpdateSum
from shared.config import FedhomeConfig
from shared.errors import ConfigError
from shared.model.params import get_flat
from shared.privacy.mechanism import UserClipping
from simulation.benchmarks.tune_federated import build_replica
from simulation.canary_audit import AuditSetup


class LinearFederation:
    """n_users users with `examples` (x, y) pairs each of y = <w*, x> + noise; a round is one clipped
    gradient step of the mean squared error per user (learning rate 1).

    Like real features, x has a low intrinsic dimension: x = code @ basis with a `rank`-dimensional code,
    so the users' updates share a small subspace of the `dim` parameters (and memory stays small)."""

    def __init__(self, *, n_users: int, dim: int, rank: int = 20, examples: int = 4, seed: int = 0) -> None:
        if min(n_users, dim, rank, examples) < 1 or rank > dim:
            raise ConfigError("a linear federation needs users, examples and 1 <= rank <= dim")
        rng = np.random.default_rng(seed)
        self.basis = (rng.standard_normal((rank, dim)) / np.sqrt(rank)).astype(np.float32)  # (r, d)
        self.code = rng.standard_normal((n_users, examples, rank)).astype(np.float32)  # (n, k, r)
        truth = rng.standard_normal(rank).astype(np.float32)  # <w*, x> = <code, truth>
        noise = np.float32(0.1) * rng.standard_normal((n_users, examples)).astype(np.float32)
        self.y = self.code @ truth + noise  # (n, k)
        self.n_users, self.dim = n_users, dim

    def clipped_sum(
        self, params: np.ndarray, users: np.ndarray, *, round_seed: int, clip_norm: float
    ) -> UpdateSum:
        del round_seed  # full-batch gradients: nothing random
        code, y = self.code[users], self.y[users]  # (B, k, r), (B, k)
        residual = code @ (self.basis @ params.astype(np.float32)) - y  # (B, k): <x, w> - y
        updates = -(np.einsum("bk,bkr->br", residual, code) @ self.basis) / code.shape[1]  # (B, d) -gradient
        total, norms = UserClipping(clip_norm).clipped_sum([torch.from_numpy(updates)])  # as LocalTrainer
        return UpdateSum(total.numpy().astype(np.float32), int(users.size), int((norms <= clip_norm).sum()))


def linear_setup(*, n_users: int, dim: int, seed: int) -> AuditSetup:
    federation = LinearFederation(n_users=n_users, dim=dim, seed=seed)
    return AuditSetup(
        federation, np.zeros(dim, dtype=np.float32), n_users, f"linear (d={dim}, {n_users} users)"
    )


def recommender_setup(config: FedhomeConfig) -> AuditSetup:
    """The two-tower model on `config.data`, trained in the update-scale parametrisation phi = theta / s."""
    replica = build_replica(config)
    start = get_flat(replica.model, replica.layout) / replica.scale.astype(np.float32)
    return AuditSetup(
        replica.trainer,
        start.astype(np.float32),
        replica.split.full.n_users,
        f"two-tower on {config.data.dataset}",
        layout=replica.layout,  # the Coordinator's theta = scale * phi, as the replica's
    )
