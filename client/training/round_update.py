"""What a device (or a shard of many virtual devices) computes in a round: the sum of clipped updates.

For each sampled user independently: the user's last `max_examples_per_user` training prefixes, the mean
sampled-softmax loss against `n_negatives` negatives drawn uniformly (a public law: popularity counts are
private) over the items not blocked, by a generator seeded with the round seed (every device of a round draws
the same negatives, so a shard gives exactly what one device per user gives), `local_steps` full-batch SGD
steps from the global parameters, the update theta_K - theta_0 clipped to L2 norm C over all trained
parameters (shared.privacy.mechanism.UserClipping, as on every other path that sends an update). A sampled
user without examples contributes a zero update and still counts. Only the sum over the node's sampled
users leaves this module, with the count and how many updates were within C (for adaptive clipping);
per-user updates and norms are never returned or logged.

A shard computes its users in chunks of `chunk_size` with torch.func (client/training/local_loss.py);
`user_update` is the plain one-user autograd path the batched one is tested against. Dropout is not applied
(the model runs in eval mode): random masks would make a shard and single devices disagree.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.func import functional_call

from client.training.local_batch import Negatives, UserExamples, build_chunk, draw_negatives, plan_chunks
from client.training.local_loss import PREFIX, ChunkUpdates, ReferenceLoss, split_flat
from shared.config import FederatedConfig
from shared.data.split import UserSequences
from shared.errors import ConfigError, DataError
from shared.model import TwoTower, gather_histories
from shared.model.params import ParamLayout, check_flat, check_update_scales, group_scales
from shared.privacy.mechanism import UserClipping
from shared.privacy.noise import GaussianNoise

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UpdateSum:
    """What a node sends back: sums over its sampled users, never anything per user."""

    total: np.ndarray  # (dim,) float32 sum of clipped (and, in local mode, noised) per-user updates
    count: int  # sampled users included
    unclipped_count: int  # of them, how many had update norm <= C before clipping


class LocalTrainer:
    """Local training of the sampled users a node hosts (one user, or a shard of many virtual devices).

    seqs: the node's view of the training sequences, indexed by global user index; blocked: (n_items,) bool,
    items held out of all training (never drawn as negatives); layout: the trained parameters, the flat
    vector a round exchanges. Parameters outside the layout keep the values `model` has.
    """

    def __init__(
        self,
        model: TwoTower,
        seqs: UserSequences,
        *,
        layout: ParamLayout,
        blocked: np.ndarray,
        config: FederatedConfig,
    ) -> None:
        if blocked.shape != (model.items.n_items,) or blocked.dtype != np.bool_:
            raise ConfigError(f"blocked must be ({model.items.n_items},) bool, got {blocked.shape}")
        self.model, self.seqs, self.layout, self.config = model, seqs, layout, config
        self.examples = UserExamples(seqs, max_examples=config.max_examples_per_user)
        self.allowed = np.flatnonzero(~blocked)  # (n_allowed,) sorted
        steps, rate = config.local_steps, config.local_learning_rate
        check_update_scales(model, config.update_scales)
        self.scales = group_scales(layout, config.update_scales)
        self.updates = ChunkUpdates(model, layout, steps=steps, learning_rate=rate, scales=self.scales)
        self.reference = ReferenceLoss(model)

    def negatives(self, round_seed: int) -> Negatives:
        """The round's shared negatives (the same on every device for the same round seed)."""
        return draw_negatives(self.allowed, self.config.n_negatives, round_seed=round_seed)

    def clipped_sum(
        self,
        params: np.ndarray,
        users: np.ndarray,
        *,
        round_seed: int,
        clip_norm: float,
        local_noise_multiplier: float = 0.0,
        noise: GaussianNoise | None = None,
    ) -> UpdateSum:
        """Sum over `users` (distinct global user indices) of their updates clipped to L2 norm `clip_norm`.

        Clipping and noise are shared.privacy.mechanism.UserClipping's. With local_noise_multiplier z > 0
        (local DP), each user's clipped update gets N(0, (z C)^2) noise per coordinate before the sum, drawn
        as one N(0, n (z C)^2) draw for the n users (UserClipping.local_noise).
        """
        check_flat(params, self.layout)
        users = self._check_users(users)
        clipping = UserClipping(clip_norm)
        if not (math.isfinite(local_noise_multiplier) and local_noise_multiplier >= 0):
            raise ConfigError(f"local_noise_multiplier must be >= 0, got {local_noise_multiplier}")
        if local_noise_multiplier > 0 and noise is None:
            raise ConfigError("local noise needs a noise source")
        total, unclipped = self._sum(torch.from_numpy(params.astype(np.float32)), users, round_seed, clipping)
        if local_noise_multiplier > 0 and noise is not None and users.size:
            total += clipping.local_noise(
                noise, self.layout.dim, noise_multiplier=local_noise_multiplier, users=int(users.size)
            )
        return UpdateSum(total.astype(np.float32), int(users.size), unclipped)

    def _sum(
        self, params: torch.Tensor, users: np.ndarray, round_seed: int, clipping: UserClipping
    ) -> tuple[np.ndarray, int]:
        """(float64 sum (P,), unclipped count) over the users, chunk by chunk."""
        self.model.eval()
        negatives = self.negatives(round_seed)
        counts = self.examples.count(users)
        order = np.argsort(counts, kind="stable")  # users with similar example counts share a chunk
        active = order[counts[order] > 0]
        total = torch.zeros(self.layout.dim, dtype=torch.float64)
        unclipped, rejected = int(users.size - active.size), 0
        for part in plan_chunks(counts[active], max_users=self.config.chunk_size):
            chunk = build_chunk(
                self.examples, users[active[part]], negatives.items, max_history=self.model.config.max_history
            )
            blocks, factor = self.updates(params, chunk, negatives)
            clipped_total, norms = clipping.clipped_sum(blocks, factor=factor)
            total += clipped_total
            unclipped += int((norms <= clipping.clip_norm).sum())
            rejected += int((~torch.isfinite(norms)).sum())
        if rejected:
            log.warning("%d local updates were not finite and count as zero updates", rejected)
        return total.numpy(), unclipped

    def user_update(self, params: np.ndarray, user: int, *, round_seed: int) -> np.ndarray:
        """(P,) float32 unclipped update of one user, (theta_K - theta_0) / s in the update-scale
        parametrisation (FederatedConfig.update_scales; s = 1 by default): the plain autograd path."""
        check_flat(params, self.layout)
        user = int(self._check_users(np.array([user]))[0])
        _, rows = self.examples.rows_of(np.array([user]))
        if rows.size == 0:
            return np.zeros(self.layout.dim, dtype=np.float32)
        max_history = self.model.config.max_history
        batch = gather_histories(
            self.seqs, np.full(rows.size, user), rows, self.seqs.timestamps[rows], max_history
        )
        targets = torch.from_numpy(self.seqs.items[rows].astype(np.int64))  # (n,)
        negatives, rate = self.negatives(round_seed), self.config.local_learning_rate
        self.model.eval()
        start = split_flat(torch.from_numpy(params.astype(np.float32)), self.layout)
        theta = {n: t.clone().requires_grad_() for n, t in start.items()}
        for _ in range(self.config.local_steps):
            values = {**self.updates.frozen, **{PREFIX + n: t for n, t in theta.items()}}
            loss = functional_call(self.reference, values, (batch, targets, negatives))
            grads = torch.autograd.grad(loss, list(theta.values()))
            # one step: exactly -lr s^2 g in theta (training in phi, theta = s * phi)
            delta = {n: -rate * self.scales[n] ** 2 * g for n, g in zip(theta, grads, strict=True)}
            theta = {n: (t + delta[n]).detach().requires_grad_() for n, t in theta.items()}
        if self.config.local_steps > 1:
            delta = {n: theta[n].detach() - start[n] for n in theta}
        # the update in phi: delta_theta / s
        return torch.cat([(delta[n] / self.scales[n]).reshape(-1) for n in self.layout.names]).numpy()

    def _check_users(self, users: np.ndarray) -> np.ndarray:
        """`users` as int64, checked: 1-D, distinct (each user takes part at most once a round), in range."""
        users = np.asarray(users)
        if users.ndim != 1 or (users.size and not np.issubdtype(users.dtype, np.integer)):
            raise DataError("sampled users must be a 1-D array of user indices")
        users = users.astype(np.int64)
        if users.size and (users.min() < 0 or users.max() >= self.seqs.n_users):
            raise DataError("a sampled user index is outside this node's sequences")
        if np.unique(users).size != users.size:
            raise DataError("a user was sampled twice in one round")
        return users
