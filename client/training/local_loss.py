"""Every user's local-training update for a chunk of users as one batched computation (torch.func vmap).

One user's loss is the mean over their examples of the sampled-softmax cross-entropy against the round's
shared negatives (logQ-corrected, history items and accidental hits excluded), the same loss the
centralised trainer minimises. It is written once, `user_loss`, used plain (UserLoss: the vmap path of
several local steps, and record-level DP-SGD per record) and with probes (FactoredUserLoss: the one-step
ghost clipping of client/training/local_factored.py); ReferenceLoss computes it independently, through the
model's own `user_vectors`, for tests and `LocalTrainer.user_update` to check it against. `vmap` adds the
user dimension; the parameters are NOT batched in the first step, so everything that depends only on them and
the shared negatives (the negatives' codes and factors) is computed once per chunk, and only the
gradients (which are per user) are batched.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from client.training.local_batch import ChunkBatch, Negatives
from client.training.local_factored import FACTORED, Factored, factors, probe_shapes
from shared.model import HistoryBatch, TwoTower, sampled_softmax_loss
from shared.model.losses import EXCLUDED
from shared.model.params import ParamLayout

PREFIX = "model."  # parameter names of the model inside UserLoss


class UserLoss(nn.Module):
    """One user's loss (`user_loss` without probes); every input is that user's own (see ChunkBatch, without
    its leading B). The vmap path (several local steps) and record-level DP-SGD (dp_sgd.RecordLoss) use it."""

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
        inputs = (items, history, events, gaps, hour, weekday, positive, exclude, weight)
        return user_loss(self.model, None, *inputs, negatives, log_count)[0]


class FactoredUserLoss(nn.Module):
    """`user_loss` with a zero probe on the output of every use of a factored weight (one-step ghost
    clipping, client/training/local_factored.py): (loss, the rows each probe's gradient pairs with)."""

    def __init__(self, model: TwoTower) -> None:
        super().__init__()
        self.model = model

    def forward(self, probes: dict[str, Tensor], *inputs: Any) -> tuple[Tensor, dict[str, Tensor]]:
        """probes: {name: zeros shaped as probe_shapes gives}; inputs: as UserLoss.forward's."""
        return user_loss(self.model, probes, *inputs)


def user_loss(
    model: TwoTower,
    probes: dict[str, Tensor] | None,
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
) -> tuple[Tensor, dict[str, Tensor]]:
    """The one definition of a user's local loss, and the rows the factored weights are applied to.

    `probes` (None: no probes) are added to the output of each use of a FACTORED weight (the keys of
    local_factored.probe_shapes): zeros, so the loss is the same, but their gradients are the per-use output
    gradients that, paired with the returned rows, give those weights' per-user gradients as factors. The
    item vectors are `ItemTower`'s (text + up(hidden)) and the user vectors `UserTower.encode`'s, with
    `in_proj` applied to the U distinct items, not M x L slots."""
    tower, users = model.items, model.users
    text = tower.text[items]  # (U, E)
    code = _probed(tower.down(text), probes, "down_items") + tower.embed_attributes(tower.attributes[items])
    if tower.id_emb is not None:
        code = code + tower.id_emb(items)  # (U, r), as tower.hidden(items)
    vectors = _probed(text + tower.up(code), probes, "up_items")  # (U, E), as tower(items)[0]
    table = _probed_linear(users.in_proj, vectors, probes, "in_items")  # (U, d)
    valid = (events > 0).unsqueeze(-1)  # (M, L, 1)
    projected = torch.where(valid, table[history], users.in_proj.bias)  # (M, L, d), padding = in_proj(0)
    last = vectors[history[:, -1]] * valid[:, -1].to(vectors.dtype)  # (M, E), zero for an empty history
    read = users.read_out(projected, events, gaps, hour, weekday)  # (M, d)
    out = _probed_linear(users.out_proj, read, probes, "out_users")  # (M, E)
    scaled = F.normalize(last + out, dim=-1, eps=1e-12) * model.temperature()  # (M, E) t u, as encode
    positive_logit = (scaled * vectors[positive]).sum(dim=-1) + tower.offset(text[positive], items[positive])
    negative, code_side = _negative_scores(model, scaled, negatives, probes)  # (M, K), (M, r)
    corrected = (negative - log_count).masked_fill(exclude, EXCLUDED)  # (M, K)
    logits = torch.cat([positive_logit.unsqueeze(-1), corrected], dim=-1)  # (M, 1 + K)
    loss = (weight * (torch.logsumexp(logits, dim=-1) - positive_logit)).sum()
    rows = {"text": text, "code": code, "vectors": vectors, "read": read, "scaled": scaled}
    return loss, {**rows, "code_side": code_side}


def negative_scores(model: TwoTower, scaled: Tensor, negatives: Tensor) -> Tensor:
    """(M, K) scores t <u, v_j> + b_j of users with temperature-scaled vectors `scaled` = t u (M, E) against
    the items `negatives` (K,), computed without forming their item vectors or codes.

    The item vector is v = x + W_up (W_down x + W_attr a (+ id)) for text x and attributes a, and the bias
    b = w_b x + b_b, so t <u, v> + b = <t u + W_down^T W_up^T t u + w_b, x> + <W_attr^T W_up^T t u, a> + b_b:
    the users are moved into text space once, a user's gradient of W_down costs M E r instead of K E r
    (K = 512 >> M), and the frozen text gets no gradient work. Follows ItemTower.hidden; a test holds
    it equal to the model's own scores."""
    return _negative_scores(model, scaled, negatives, None)[0]


def _negative_scores(
    model: TwoTower, scaled: Tensor, negatives: Tensor, probes: dict[str, Tensor] | None
) -> tuple[Tensor, Tensor]:
    """(negative_scores (M, K), code_side (M, r)), with probes on the two uses of factored weights."""
    tower = model.items
    code_side = _probed(scaled @ tower.up.weight, probes, "up_users")  # (M, r)
    query = _probed(scaled + code_side @ tower.down.weight, probes, "down_users")  # (M, E)
    query = query + tower.bias.weight
    attribute_side = code_side @ tower.embed_attributes.weight  # (M, A)
    scores = query @ tower.text[negatives].T + attribute_side @ tower.attributes[negatives].T  # (M, K)
    if tower.id_emb is not None:
        scores = scores + code_side @ tower.id_emb(negatives).T
    if tower.popularity_weight is not None:
        scores = scores + tower.popularity_weight * tower.popularity[negatives]
    return scores + tower.bias.bias, code_side


def _probed(out: Tensor, probes: dict[str, Tensor] | None, name: str) -> Tensor:
    return out if probes is None else out + probes[name]


def _probed_linear(layer: nn.Linear, x: Tensor, probes: dict[str, Tensor] | None, name: str) -> Tensor:
    """layer(x), or with a probe: x W^T + probe + bias."""
    if probes is None:
        return layer(x)
    out = F.linear(x, layer.weight) + probes[name]
    return out if layer.bias is None else out + layer.bias


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
    `sampled_softmax_loss`), as the centralised trainer does: the reference the batched path must match.
    Kept apart from `user_loss` on purpose: an oracle that shared its code could not catch its mistakes."""

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
