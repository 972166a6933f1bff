"""Every user's local-training update for a chunk of users as one batched computation (torch.func vmap).

One user's loss is the mean over their examples of the sampled-softmax cross-entropy against the round's
shared negatives (logQ-corrected, history items and accidental hits excluded), the same loss the
centralised trainer minimises, computed through the model's own pieces (`items.hidden`, `users.encode`,
`user_factors`, `item_factors`) so that it follows the model when the model changes. `vmap` adds the user
dimension; the parameters are NOT batched in the first step, so everything that depends only on them and
the shared negatives (the negatives' codes and factors) is computed once per chunk, and only the
gradients (which are per user) are batched.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from client.training.local_batch import ChunkBatch, Negatives
from client.training.local_factored import FACTORED, Factored, FactoredUserLoss, factors, probe_shapes
from shared.model import HistoryBatch, TwoTower, sampled_softmax_loss
from shared.model.losses import EXCLUDED
from shared.model.params import ParamLayout

PREFIX = "model."  # parameter names of the model inside UserLoss


class UserLoss(nn.Module):
    """One user's loss; every input is that user's own (see ChunkBatch, without its leading B)."""

    def __init__(self, model: TwoTower) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        items: Tensor,  # (U,) the user's item set
        history: Tensor,  # (M, L) index into `items`
        events: Tensor,  # (M, L)
        gaps: Tensor,  # (M, L)
        hour: Tensor,  # (M,)
        weekday: Tensor,  # (M,)
        positive: Tensor,  # (M,) index into `items`
        exclude: Tensor,  # (M, K)
        weight: Tensor,  # (M,) 1/n real, 0 padding
        negatives: Tensor,  # (K,) shared
        log_count: float,
    ) -> Tensor:
        m = self.model
        text = m.items.text[items]  # (U, E)
        vectors = text + m.items.up(m.items.hidden(items))  # (U, E) item vectors, as `m.items(items)[0]`
        users = self.user_vectors(vectors, history, events, gaps, hour, weekday)  # (M, E)
        scaled = users * m.temperature()  # (M, E)
        bias = m.items.bias(text[positive]).squeeze(-1)  # (M,)
        positive_logit = (scaled * vectors[positive]).sum(dim=-1) + bias  # (M,)
        negative = negative_scores(m, scaled, negatives)  # (M, K)
        corrected = (negative - log_count).masked_fill(exclude, EXCLUDED)  # (M, K)
        logits = torch.cat([positive_logit.unsqueeze(-1), corrected], dim=-1)  # (M, 1 + K)
        return (weight * (torch.logsumexp(logits, dim=-1) - positive_logit)).sum()

    def user_vectors(
        self, vectors: Tensor, history: Tensor, events: Tensor, gaps: Tensor, hour: Tensor, weekday: Tensor
    ) -> Tensor:
        """(M, E) user vectors from the user's item vectors (U, E) and local history indices (M, L): what
        `UserTower.forward` computes, with `in_proj` applied to the U distinct items, not M x L slots."""
        proj = self.model.users.in_proj
        valid = (events > 0).unsqueeze(-1)  # (M, L, 1)
        projected = torch.where(valid, proj(vectors)[history], proj.bias)  # (M, L, d), padding = in_proj(0)
        last = vectors[history[:, -1]] * valid[:, -1].to(vectors.dtype)  # (M, E), zero for an empty history
        return self.model.users.encode(projected, last, events, gaps, hour, weekday)


def negative_scores(model: TwoTower, scaled: Tensor, negatives: Tensor) -> Tensor:
    """(M, K) scores t <u, v_j> + b_j of users with temperature-scaled vectors `scaled` = t u (M, E) against
    the items `negatives` (K,), computed without forming their item vectors or codes.

    The item vector is v = x + W_up (W_down x + W_attr a (+ id)) for text x and attributes a, and the bias
    b = w_b x + b_b, so t <u, v> + b = <t u + W_down^T W_up^T t u + w_b, x> + <W_attr^T W_up^T t u, a> + b_b:
    the users are moved into text space once, a user's gradient of W_down costs M E r instead of K E r
    (K = 512 >> M), and the frozen text gets no gradient work. Follows ItemTower.hidden; a test holds
    it equal to the model's own scores."""
    tower = model.items
    code_side = scaled @ tower.up.weight  # (M, r)
    query = scaled + code_side @ tower.down.weight + tower.bias.weight  # (M, E)
    attribute_side = code_side @ tower.embed_attributes.weight  # (M, A)
    scores = query @ tower.text[negatives].T + attribute_side @ tower.attributes[negatives].T  # (M, K)
    if tower.id_emb is not None:
        scores = scores + code_side @ tower.id_emb(negatives).T
    return scores + tower.bias.bias


class ChunkUpdates:
    """Unclipped updates theta_K - theta_0 of `steps` full-batch SGD steps of each user of a chunk."""

    def __init__(
        self,
        model: TwoTower,
        layout: ParamLayout,
        *,
        steps: int,
        learning_rate: float,
        scales: dict[str, float] | None = None,
    ) -> None:
        self.loss, self.layout = UserLoss(model), layout
        self.factored_loss = FactoredUserLoss(model)
        self.steps, self.learning_rate = steps, learning_rate
        # theta = s * phi per parameter: training runs in phi (an s^2 larger step), updates come out in phi
        self.scales = {PREFIX + n: (scales or {}).get(n, 1.0) for n in layout.names}
        trained = set(layout.names)
        # detached, so that nothing outside the layout records a gradient
        self.frozen = {PREFIX + n: p.detach() for n, p in model.named_parameters() if n not in trained}

    def __call__(
        self, params: Tensor, chunk: ChunkBatch, negatives: Negatives
    ) -> tuple[list[Tensor | Factored], float]:
        """The chunk's updates from the global `params` (P,), as (blocks, factor): update = factor * the
        blocks (B, size) concatenated in layout order. One step gives the gradients and -lr (the caller
        folds the factor into its clipping and sum: one pass less over B x P numbers), with the large
        weights' blocks as Factored (client/training/local_factored.py)."""
        start = {PREFIX + n: t for n, t in split_flat(params, self.layout).items()}
        if self.steps == 1:
            return self.factored(start, chunk, negatives), -self.learning_rate
        out = vmap(self.one_user(start, negatives))(*chunk.tensors())
        size = chunk.items.shape[0]
        blocks: list[Tensor | Factored] = [
            _scaled(out[PREFIX + n].reshape(size, -1), self.scales[PREFIX + n]) for n in self.layout.names
        ]
        return blocks, 1.0  # several steps: the blocks are theta_K - theta_0 already

    def factored(
        self, start: dict[str, Tensor], chunk: ChunkBatch, negatives: Negatives
    ) -> list[Tensor | Factored]:
        """One step's per-user gradients (in phi), the FACTORED weights as factors and the rest as blocks."""
        size, n_items, n_examples = chunk.items.shape[0], chunk.items.shape[1], chunk.history.shape[1]
        shapes = probe_shapes(self.loss.model, n_items, n_examples)
        probes = {k: torch.zeros(size, *shape) for k, shape in shapes.items()}
        held = {k: t for k, t in start.items() if k[len(PREFIX) :] in FACTORED}  # constant in the gradient
        rest = {k: t for k, t in start.items() if k not in held}

        def loss(theta: dict[str, Tensor], probe: dict[str, Tensor], *data: Tensor) -> tuple[Tensor, Any]:
            inputs = (probe, *data, negatives.items, negatives.log_count)
            return functional_call(self.factored_loss, {**self.frozen, **held, **theta}, inputs)

        def per_user(probe: dict[str, Tensor], *data: Tensor) -> Any:
            return grad(loss, argnums=(0, 1), has_aux=True)(rest, probe, *data)

        (gradients, probe_grads), rows = vmap(per_user)(probes, *chunk.tensors())
        blocks: list[Tensor | Factored] = []
        for name in self.layout.names:
            scale = self.scales[PREFIX + name]
            if name in FACTORED:
                blocks.append(factors(name, probe_grads, rows, scale))
            else:
                blocks.append(_scaled(gradients[PREFIX + name].reshape(size, -1), scale))
        return blocks

    def one_user(self, start: dict[str, Tensor], negatives: Negatives) -> Callable[..., dict[str, Tensor]]:
        def loss(theta: dict[str, Tensor], *data: Tensor) -> Tensor:
            inputs = (*data, negatives.items, negatives.log_count)
            return functional_call(self.loss, {**self.frozen, **theta}, inputs)

        def update(*data: Tensor) -> dict[str, Tensor]:
            if self.steps == 1:  # the gradient in theta; the caller's block scaling turns it into phi's
                return grad(loss)(start, *data)
            theta, s = start, self.scales
            for _ in range(self.steps):
                gradient = grad(loss)(theta, *data)
                theta = {k: theta[k] - self.learning_rate * s[k] ** 2 * gradient[k] for k in theta}
            return {k: (theta[k] - start[k]) / s[k] ** 2 for k in theta}  # blocks are scaled by s after

        return update


class ReferenceLoss(nn.Module):
    """One user's loss computed the plain way (the model's own numpy-fed `user_vectors`, `torch.unique`,
    `sampled_softmax_loss`), as the centralised trainer does: the reference the batched path must match."""

    def __init__(self, model: TwoTower) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: HistoryBatch, targets: Tensor, negatives: Negatives) -> Tensor:
        m, k = self.model, negatives.items.shape[0]
        history = torch.from_numpy(batch.items).clamp(min=0)  # (n, L)
        n_history, size = history.numel(), targets.shape[0]
        every = torch.cat([history.reshape(-1), targets, negatives.items])
        items, local = torch.unique(every, return_inverse=True)  # (k,), (n L + n + K,)
        code = m.items.hidden(items)  # (k, r)
        left = m.user_factors(m.user_vectors(batch, code, items))  # (n, F)
        right = m.item_factors(code, items)  # (k, F)
        positive = (left * right[local[n_history : n_history + size]]).sum(dim=1)  # (n,)
        negative_rows = local[n_history + size :]  # (K,)
        seen = torch.zeros(size, items.shape[0], dtype=torch.bool)  # (n, k) each example's history items
        rows = torch.arange(size).unsqueeze(1).expand_as(history)
        valid = torch.from_numpy(batch.items >= 0)
        seen[rows[valid], local[:n_history].reshape(history.shape)[valid]] = True
        exclude = seen[:, negative_rows] | (negatives.items[None, :] == targets[:, None])  # (n, K)
        log_count = torch.full((k,), negatives.log_count)
        return sampled_softmax_loss(positive, left @ right[negative_rows].T, log_count, exclude)


def _scaled(block: Tensor, scale: float) -> Tensor:
    return block if scale == 1.0 else block * scale


def split_flat(flat: Tensor, layout: ParamLayout) -> dict[str, Tensor]:
    """{name: view of `flat` (P,) shaped like the parameter}; `params.unflatten` fails on 0-d parameters."""
    views, offset = {}, 0
    for name, shape, size in zip(layout.names, layout.shapes, layout.sizes, strict=True):
        views[name] = flat[offset : offset + size].reshape(shape)
        offset += size
    return views
