"""Training losses: softmax cross-entropy over the whole catalogue, and sampled softmax with logQ correction.

Sampled softmax estimates the full softmax's partition function from K negatives drawn with replacement
from a known distribution q. The positive keeps its plain logit; each negative's logit is corrected by
-log(K q_j), its expected count; negatives equal to the positive (accidental hits) or otherwise excluded are
dropped. Then E[sum_neg exp(o_j - log(K q_j))] = sum_{j != y} exp(o_j), so the estimated partition function
is unbiased, and with an exact sample (item j drawn K q_j times) the loss equals the full cross-entropy.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from shared.errors import ConfigError

EXCLUDED = float("-inf")


def full_softmax_loss(logits: Tensor, targets: Tensor, exclude: Tensor | None = None) -> Tensor:
    """Mean cross-entropy of `targets` (B,) under logits (B, N) over the whole catalogue.

    exclude: optional (B, N) bool, items removed from each row's softmax (e.g. the user's history, items
    held out of training); a row's target is never removed.
    """
    if exclude is not None:
        exclude = exclude.clone()
        exclude[torch.arange(targets.shape[0]), targets] = False
        logits = logits.masked_fill(exclude, EXCLUDED)
    return F.cross_entropy(logits, targets)


def sampled_softmax_loss(
    positive_logits: Tensor, negative_logits: Tensor, log_expected_count: Tensor, exclude: Tensor
) -> Tensor:
    """Mean sampled-softmax cross-entropy with logQ correction.

    positive_logits: (B,); negative_logits: (B, K) each row's logits for the K sampled negatives;
    log_expected_count: (K,) or (B, K) log(K q_j) of each negative; exclude: (B, K) bool, negatives to drop
    (accidental hits of the row's positive, the user's history).
    """
    corrected = (negative_logits - log_expected_count).masked_fill(exclude, EXCLUDED)  # (B, K)
    logits = torch.cat([positive_logits.unsqueeze(1), corrected], dim=1)  # (B, 1 + K)
    return -(positive_logits - torch.logsumexp(logits, dim=1)).mean()


class NegativeSampler:
    """Draws shared negatives with replacement from q(j) proportional to (count_j + 1)^alpha.

    counts: (N,) how often each item is a training target; allowed: (N,) bool, items that may be drawn
    (False for items held out of all training, which then get probability 0).
    """

    def __init__(self, counts: np.ndarray, *, alpha: float, allowed: np.ndarray) -> None:
        if counts.shape != allowed.shape or not allowed.any():
            raise ConfigError("negative sampler needs per-item counts and at least one allowed item")
        weight = np.where(allowed, (counts.astype(np.float64) + 1.0) ** alpha, 0.0)
        self.probability = torch.from_numpy(weight / weight.sum())  # (N,) float64

    def sample(self, k: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """(items (k,) int64, log expected count log(k q_j) (k,) float32) of k draws with replacement."""
        items = torch.multinomial(self.probability, k, replacement=True, generator=generator)
        return items, torch.log(k * self.probability[items]).float()
