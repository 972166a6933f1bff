"""The two towers: items from their frozen text embedding, users from their recent items; score = dot product.

Both towers start at the text-similarity baseline: the item vector is the (unit-norm) text embedding plus a
low-rank correction whose output layer starts at zero, and the user vector is the last history item's vector
plus a transformer read-out whose output layer starts at zero. Untrained, the model ranks the catalogue by
cosine similarity to the user's last item; training only adds to that.

No BatchNorm (Opacus), no per-item parameters unless `ModelConfig.item_id_residual`, everything traceable
by `torch.onnx.export(dynamo=False, opset_version=17)`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from shared.config import ModelConfig
from shared.history import N_EVENT_CODES, N_GAP_BUCKETS
from shared.model.features import HistoryBatch, ItemFeatures

MLP_RATIO = 2
MAX_LOG_TEMPERATURE = math.log(100.0)
NEG_INF = -1e9  # finite, so a row with every key masked gives a uniform softmax instead of NaN


class ItemTower(nn.Module):
    """Item vectors (n_items, text_dim) = text + up(down(text) + category + price + promotion [+ id])."""

    text: Tensor
    attributes: Tensor
    popularity: Tensor
    popularity_weight: nn.Parameter | None

    def __init__(self, features: ItemFeatures, config: ModelConfig) -> None:
        super().__init__()
        rank, dim = config.residual_rank, features.text_dim
        attributes = features.attributes()
        # Frozen inputs, not state: a state_dict (what federated rounds exchange) holds only learned weights.
        self.register_buffer("text", torch.from_numpy(features.text), persistent=False)  # (N, E)
        self.register_buffer("attributes", torch.from_numpy(attributes), persistent=False)  # (N, A) multi-hot
        self.down = nn.Linear(dim, rank, bias=False)
        self.embed_attributes = nn.Linear(attributes.shape[1], rank, bias=False)  # one row per feature value
        self.id_emb = nn.Embedding(features.n_items, rank) if config.item_id_residual else None
        self.up = nn.Linear(rank, dim, bias=False)
        self.bias = nn.Linear(dim, 1)  # a text-based item bias: a popularity prior new items get too
        self.bias.requires_grad_(config.item_bias)  # without it the bias stays exactly zero
        # log(1 + count) of each item among users' most recent items (ItemFeatures.popularity; zeros: none),
        # weighted by one learned scalar: score offset = bias(text) + popularity_weight * popularity
        self.register_buffer("popularity", torch.from_numpy(features.popularity_prior()), persistent=False)
        self.popularity_weight = (
            nn.Parameter(torch.tensor(float(config.popularity_weight))) if config.popularity_prior else None
        )
        nn.init.normal_(self.embed_attributes.weight, std=0.02)
        if self.id_emb is not None:
            nn.init.zeros_(self.id_emb.weight)
        for zero in (self.up.weight, self.bias.weight, self.bias.bias):
            nn.init.zeros_(zero)

    @property
    def n_items(self) -> int:
        return int(self.text.shape[0])

    def set_popularity(self, prior: np.ndarray | None) -> None:
        """Replace the popularity prior (n_items,) in place (None: zeros): a federated run's prior arrives
        after the model is built (server/trending/popularity_release.py). DataError unless it is one finite
        value per item."""
        values = ItemFeatures.check_popularity(prior, self.n_items)
        with torch.no_grad():
            self.popularity.copy_(torch.from_numpy(values))

    def forward(self, items: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(vectors (k, E), bias (k,)) of `items` (k,) int64, or of the whole catalogue when None."""
        text = self.text if items is None else self.text[items]  # (k, E)
        return text + self.up(self.hidden(items)), self.offset(text, items)

    def offset(self, text: Tensor, items: Tensor | None = None) -> Tensor:
        """(k,) the score offset of `items` (None: all) whose text vectors are `text` (k, E): the text-based
        bias plus the weighted popularity prior."""
        bias = self.bias(text).squeeze(-1)
        if self.popularity_weight is None:
            return bias
        return bias + self.popularity_weight * (self.popularity if items is None else self.popularity[items])

    def hidden(self, items: Tensor | None = None) -> Tensor:
        """(k, r) the low-rank code of `items` (k,) (None: all) that `up` turns into the correction."""
        text = self.text if items is None else self.text[items]  # (k, E)
        attributes = self.attributes if items is None else self.attributes[items]  # (k, A)
        code = self.down(text) + self.embed_attributes(attributes)  # (k, r)
        if self.id_emb is not None:
            code = code + (self.id_emb.weight if items is None else self.id_emb(items))
        return code


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention over a left-padded sequence (padding keys masked)."""

    causal: Tensor

    def __init__(self, dim: int, n_heads: int, dropout: float, max_len: int) -> None:
        super().__init__()
        self.n_heads, self.dim, self.head_dim = n_heads, dim, dim // n_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)
        causal = torch.tril(torch.ones(max_len, max_len, dtype=torch.bool))
        self.register_buffer("causal", causal, persistent=False)

    def forward(self, x: Tensor, valid: Tensor, *, last_only: bool = False) -> Tensor:
        """x (B, L, d), valid (B, L) bool -> (B, L, d), or (B, 1, d) the last position's row alone when
        `last_only` (the same numbers: every position is a key, only the last one a query)."""
        b, length, _ = x.shape
        q, k, v = self.qkv(x).split(self.dim, dim=2)  # 3 x (B, L, d)
        if last_only:  # (slicing the weight instead costs more in per-user gradients than it saves here)
            q = q[:, -1:]  # (B, 1, d)
        queries = q.shape[1]  # L, or 1 (the last position)
        q = q.reshape(b, queries, self.n_heads, self.head_dim).transpose(1, 2)  # (B, h, Q, d/h)
        k, v = (t.reshape(b, length, self.n_heads, self.head_dim).transpose(1, 2) for t in (k, v))
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))  # (B, h, Q, L)
        allowed = self.causal[length - queries : length, :length][None, None] & valid[:, None, None, :]
        att = self.drop(torch.softmax(att.masked_fill(~allowed, NEG_INF), dim=-1))
        out = (att @ v).transpose(1, 2).reshape(b, queries, self.dim)  # (B, Q, d)
        return self.proj(out)


class Block(nn.Module):
    """Pre-LayerNorm transformer block: attention then a small MLP, each with a residual."""

    def __init__(self, dim: int, n_heads: int, dropout: float, max_len: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, n_heads, dropout, max_len)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, MLP_RATIO * dim), nn.GELU(), nn.Linear(MLP_RATIO * dim, dim), nn.Dropout(dropout)
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, valid: Tensor, *, last_only: bool = False) -> Tensor:
        """x (B, L, d), valid (B, L) bool -> (B, L, d), or (B, 1, d) only the last position when
        `last_only`: attention at the other positions feeds nothing after it, so it is skipped."""
        attended = self.drop(self.attn(self.ln1(x), valid, last_only=last_only))  # (B, Q, d)
        x = (x[:, -1:] if last_only else x) + attended
        return x + self.mlp(self.ln2(x))


class UserTower(nn.Module):
    """Unit-norm user vectors from the vectors of the user's recent items and their context.

    Inputs (the ONNX graph's inputs, in this order; any length L <= max_history): history (B, L, E) item
    vectors left-padded with anything (masked), events (B, L) int64 event code + 1 (0 = padding), gaps (B, L)
    int64 recency buckets, hour (B,) int64, weekday (B,) int64. Output: (B, E) unit vectors.
    """

    def __init__(self, text_dim: int, config: ModelConfig) -> None:
        super().__init__()
        d, length = config.dim, config.max_history
        self.max_history = length
        self.in_proj = nn.Linear(text_dim, d)
        self.event_emb = nn.Embedding(N_EVENT_CODES, d)
        self.gap_emb = nn.Embedding(N_GAP_BUCKETS, d)
        self.position_emb = nn.Parameter(torch.zeros(length, d))  # position 0 = oldest slot
        self.hour_emb = nn.Embedding(24, d)
        self.weekday_emb = nn.Embedding(7, d)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            Block(d, config.n_heads, config.dropout, length) for _ in range(config.n_layers)
        )
        self.ln_out = nn.LayerNorm(d)
        self.out_proj = nn.Linear(d, text_dim)
        for emb in (self.event_emb, self.gap_emb, self.hour_emb, self.weekday_emb):
            nn.init.normal_(emb.weight, std=0.02)
        nn.init.normal_(self.position_emb, std=0.02)
        nn.init.zeros_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, history: Tensor, events: Tensor, gaps: Tensor, hour: Tensor, weekday: Tensor) -> Tensor:
        valid = (events > 0).unsqueeze(-1)  # (B, L, 1)
        history = history * valid.to(history.dtype)  # (B, L, E) padding zeroed
        return self.encode(self.in_proj(history), history[:, -1], events, gaps, hour, weekday)

    def encode(
        self, projected: Tensor, last: Tensor, events: Tensor, gaps: Tensor, hour: Tensor, weekday: Tensor
    ) -> Tensor:
        """`forward` from the history already through `in_proj` (B, L, d), padding = in_proj(0), and the
        last history item's vector (B, E), zero when the history is empty."""
        read = self.read_out(projected, events, gaps, hour, weekday)  # (B, d)
        return F.normalize(last + self.out_proj(read), dim=-1, eps=1e-12)  # (B, E)

    def read_out(
        self, projected: Tensor, events: Tensor, gaps: Tensor, hour: Tensor, weekday: Tensor
    ) -> Tensor:
        """(B, d) what `out_proj` reads: the last position after the blocks, plus the request context."""
        valid = events > 0  # (B, L)
        # a history of length l <= max_history fills the l most recent slots (left padding drops the rest)
        positions = self.position_emb[self.max_history - projected.shape[1] :]  # (l, d)
        x = projected + self.event_emb(events) + self.gap_emb(gaps) + positions
        x = self.drop(x)  # (B, L, d)
        # only the last position is read: the last block computes that row alone (~3x less work)
        for index, block in enumerate(self.blocks):
            x = block(x, valid, last_only=index == len(self.blocks) - 1)
        return self.ln_out(x[:, -1]) + self.hour_emb(hour) + self.weekday_emb(weekday)  # (B, d)


class TwoTower(nn.Module):
    """The model: score(user, item) = temperature * <user vector, item vector> + item bias."""

    def __init__(self, features: ItemFeatures, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.items = ItemTower(features, config)
        self.users = UserTower(features.text_dim, config)
        self.log_temperature = nn.Parameter(torch.tensor(math.log(config.init_temperature)))

    def temperature(self) -> Tensor:
        return self.log_temperature.clamp(max=MAX_LOG_TEMPERATURE).exp()

    def user_vectors(
        self, batch: HistoryBatch, code: Tensor | None = None, items: Tensor | None = None
    ) -> Tensor:
        """(B, E) user vectors of `batch`.

        Without `code`, the item tower runs on the B x L history items and the user tower on their vectors
        (what a device does). With `code`, the low-rank codes `self.items.hidden(items)` (k, r) of `items`
        (k,), sorted unique item indices including every history item (None: the whole catalogue), the same
        numbers come from projecting those k items into the user tower's input space once,
        in_proj(text + up(code)) = text @ W_in^T + code @ (W_in W_up)^T + b_in, and gathering rows: much
        cheaper than B x L item vectors in training, where many histories share items.
        """
        history = torch.from_numpy(batch.items).clamp(min=0)  # (B, L); padding masked below / by the tower
        events = torch.from_numpy(batch.events)
        context = (
            torch.from_numpy(batch.gaps),
            torch.from_numpy(batch.hour),
            torch.from_numpy(batch.weekday),
        )
        if code is None:
            vectors = self.items(history.reshape(-1))[0].reshape(*history.shape, -1)  # (B, L, E)
            return self.users(vectors, events, *context)
        local = history if items is None else torch.searchsorted(items, history)  # (B, L) rows of `code`
        text = self.items.text if items is None else self.items.text[items]  # (k, E)
        proj, up = self.users.in_proj, self.items.up
        table = text @ proj.weight.T + code @ (proj.weight @ up.weight).T + proj.bias  # (k, d)
        valid = (events > 0).unsqueeze(-1)  # (B, L, 1)
        projected = torch.where(valid, table[local], proj.bias)  # (B, L, d), padding = in_proj(0)
        last = local[:, -1]
        last_vectors = (text[last] + up(code[last])) * valid[:, -1].to(code.dtype)  # (B, E)
        return self.users.encode(projected, last_vectors, events, *context)

    def scores(self, users: Tensor, item_vectors: Tensor, item_bias: Tensor) -> Tensor:
        """(B, k) scores of users (B, E) against items (k, E) with their bias (k,)."""
        return self.temperature() * (users @ item_vectors.T) + item_bias

    def user_factors(self, users: Tensor) -> Tensor:
        """(B, E + r + 1) [t u, t u W_up, 1] of user vectors (B, E), t the temperature: see `item_factors`."""
        scaled = users * self.temperature()  # (B, E)
        ones = torch.ones(users.shape[0], 1, dtype=users.dtype)
        return torch.cat([scaled, scaled @ self.items.up.weight, ones], dim=1)

    def item_factors(self, code: Tensor, items: Tensor | None = None) -> Tensor:
        """(k, E + r + 1) [text, code, bias] of `items` (None: all) with codes `self.items.hidden(items)`.

        user_factors(u) @ item_factors(code).T == scores(u, *self.items()): the same numbers from one
        matrix product, without materialising the item vectors text + up(code)."""
        text = self.items.text if items is None else self.items.text[items]  # (k, E)
        return torch.cat([text, code, self.items.offset(text, items).unsqueeze(-1)], dim=1)

    def catalogue_scores(
        self, users: Tensor, code: Tensor | None = None, *, bfloat16: bool = False
    ) -> Tensor:
        """(B, N) scores of users (B, E) against the whole catalogue, as one product of factors (`code`:
        `self.items.hidden()` when already computed). With `bfloat16` the product runs in bfloat16 (fp32
        accumulation, bfloat16 output): several times faster on CPUs with AMX/AVX512-BF16, about 1e-3
        relative error per score; meant for training, not for ranking."""
        left = self.user_factors(users)  # (B, F)
        right = self.item_factors(self.items.hidden() if code is None else code)  # (N, F)
        if bfloat16:
            return (left.bfloat16() @ right.bfloat16().T).float()
        return left @ right.T

    def n_trainable(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
