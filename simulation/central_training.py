"""Centralised training of the two-tower model: the non-private upper bound for federated training.

Every training prefix is one example: row p of a user's training rows predicts that row's item from the
user's up to `max_history` earlier rows, at the request time of row p (its timestamp). Rows whose item the
user already had earlier (repeats) are not targets. Training runs epochs of shuffled mini-batches with
Adam, evaluates validation NDCG@10 after each epoch and keeps the best epoch (stopping after `patience`
epochs without improvement). With `TrainConfig.refit` a fresh model is then trained on train + validation
rows for exactly that many epochs, so the final model has seen the rows just before the test item (its
validation score is then no longer a held-out figure).

Loss: softmax cross-entropy over the whole catalogue ("full"), or sampled softmax with logQ correction over
`n_negatives` shared negatives drawn from q ~ (count + 1)^negative_alpha ("sampled"). Either way each
example's history items (except its target) and the items held out of all training (`split.cold_items`)
are excluded: the harness removes history items from the candidates anyway, and cold items must not be
seen in training, not even as negatives.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from shared.config import EvalConfig, ModelConfig, TrainConfig
from shared.data.split import Split, Stage, UserSequences
from shared.errors import DataError
from shared.model import (
    HistoryBatch,
    ItemFeatures,
    NegativeSampler,
    TwoTower,
    full_softmax_loss,
    gather_histories,
    sampled_softmax_loss,
)
from shared.model.examples import training_rows
from shared.model.features import popularity_from_counts, recent_item_counts
from shared.model.losses import EXCLUDED
from simulation.evaluate import Scorer, evaluate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EpochLog:
    epoch: int  # 1-based
    loss: float  # mean training loss of the epoch
    valid_ndcg_10: float  # NaN when not evaluated (the refit)
    seconds: float


@dataclass
class TrainResult:
    """The trained model and how it got there."""

    model: TwoTower
    best_epoch: int
    best_valid_ndcg_10: float  # of the selection run, trained on split.train only
    refit: bool  # the model was refitted on train + validation rows (its validation score is not held out)
    epochs: list[EpochLog] = field(default_factory=list)
    refit_epochs: list[EpochLog] = field(default_factory=list)
    train_time_s: float = 0.0


def exclude_(logits: Tensor, batch: HistoryBatch, targets: Tensor, blocked: Tensor) -> None:
    """In place: -inf for each row's history items other than its target, and for blocked items (N,).

    logits: (B, N), a fresh product (its backward does not need it), so masking in place is safe.
    """
    items = torch.from_numpy(batch.items)  # (B, L)
    rows = torch.arange(items.shape[0]).unsqueeze(1).expand_as(items)
    drop = (items >= 0) & (items != targets.unsqueeze(1))
    logits[rows[drop], items[drop]] = EXCLUDED
    if bool(blocked.any()):
        logits.masked_fill_(blocked.unsqueeze(0), EXCLUDED)


def set_threads(config: TrainConfig) -> None:
    """torch's intra-op thread count from `config.threads` (0 leaves torch's default)."""
    if config.threads:
        torch.set_num_threads(config.threads)


def use_bfloat16(config: TrainConfig) -> bool:
    """Whether the catalogue product runs in bfloat16: "auto" when the CPU has native bfloat16 matmuls."""
    if config.score_precision != "auto":
        return config.score_precision == "bfloat16"
    native = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    return bool(native()) and torch.backends.mkldnn.is_available()


READ_OUT = "users.out_proj."  # the user tower's read-out (TrainConfig.read_out_lr_scale)


class Trainer:
    """One training run of a TwoTower on some user sequences (see the module docstring)."""

    def __init__(
        self, model: TwoTower, seqs: UserSequences, blocked: np.ndarray, config: TrainConfig
    ) -> None:
        self.model, self.seqs, self.config = model, seqs, config
        self.users, self.rows = training_rows(seqs)
        if self.rows.shape[0] == 0:
            raise DataError("no training examples: every user has at most one training row")
        self.blocked = torch.from_numpy(blocked)  # (N,) items never trained on
        counts = np.bincount(seqs.items[self.rows], minlength=blocked.shape[0])
        self.sampler = NegativeSampler(counts, alpha=config.negative_alpha, allowed=~blocked)
        read_out = [p for n, p in model.named_parameters() if n.startswith(READ_OUT)]
        rest = [p for n, p in model.named_parameters() if not n.startswith(READ_OUT)]
        self.optimizer = torch.optim.Adam(
            [
                {"params": rest, "lr": config.learning_rate},
                {"params": read_out, "lr": config.learning_rate * config.read_out_lr_scale},
            ],
            weight_decay=config.weight_decay,
        )
        self.rng = np.random.default_rng(config.seed)
        self.bfloat16 = use_bfloat16(config)
        self.generator = torch.Generator().manual_seed(config.seed)

    def epoch(self, number: int, *, progress: bool) -> float:
        """Train one epoch over all examples in a fresh random order; returns the mean loss."""
        self.model.train()
        order = self.rng.permutation(self.rows.shape[0])
        size = self.config.batch_size
        total, bar = 0.0, tqdm(total=order.shape[0], desc=f"epoch {number}", unit="ex", disable=not progress)
        for lo in range(0, order.shape[0], size):
            pick = order[lo : lo + size]
            loss = self.step(self.users[pick], self.rows[pick])
            total += loss * pick.shape[0]
            bar.update(pick.shape[0])
            bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
        bar.close()
        return total / order.shape[0]

    def step(self, users: np.ndarray, rows: np.ndarray) -> float:
        batch = gather_histories(
            self.seqs, users, rows, self.seqs.timestamps[rows], self.model.config.max_history
        )
        targets = torch.from_numpy(self.seqs.items[rows].astype(np.int64))  # (B,)
        loss = (
            self.full_loss(batch, targets)
            if self.config.loss == "full"
            else self.sampled_loss(batch, targets)
        )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def full_loss(self, batch: HistoryBatch, targets: Tensor) -> Tensor:
        code = self.model.items.hidden()  # (N, r)
        users = self.model.user_vectors(batch, code)  # (B, E)
        logits = self.model.catalogue_scores(users, code, bfloat16=self.bfloat16)  # (B, N)
        exclude_(logits, batch, targets, self.blocked)
        return full_softmax_loss(logits, targets)

    def sampled_loss(self, batch: HistoryBatch, targets: Tensor) -> Tensor:
        negatives, log_count = self.sampler.sample(self.config.n_negatives, self.generator)  # (K,), (K,)
        history = torch.from_numpy(batch.items).clamp(min=0)  # (B, L)
        n_history, size = history.numel(), targets.shape[0]
        # every item this step touches, once: histories, positives, negatives
        items, local = torch.unique(torch.cat([history.reshape(-1), targets, negatives]), return_inverse=True)
        code = self.model.items.hidden(items)  # (k, r)
        left = self.model.user_factors(self.model.user_vectors(batch, code, items))  # (B, F)
        right = self.model.item_factors(code, items)  # (k, F)
        positive = (left * right[local[n_history : n_history + size]]).sum(dim=1)  # (B,)
        negative_rows = local[n_history + size :]  # (K,)
        negative = left @ right[negative_rows].T  # (B, K)
        seen = torch.zeros(size, items.shape[0], dtype=torch.bool)  # (B, k) history items of each row
        rows = torch.arange(size).unsqueeze(1).expand_as(history)
        valid = torch.from_numpy(batch.items >= 0)
        seen[rows[valid], local[:n_history].reshape(history.shape)[valid]] = True
        exclude = seen[:, negative_rows] | (negatives[None, :] == targets[:, None]) | self.blocked[negatives]
        return sampled_softmax_loss(positive, negative, log_count, exclude)


def make_scorer(model: TwoTower, split: Split) -> Scorer:
    """A harness Scorer: each user's history in `split.full` before the stage's target row, at its time."""
    model.eval()
    with torch.no_grad():
        vectors, bias = model.items()
        code = model.items.hidden()

    def score(users: np.ndarray, stage: Stage) -> np.ndarray:
        ends = split.history_end(stage)[users]
        batch = gather_histories(
            split.full, users, ends, split.full.timestamps[ends], model.config.max_history
        )
        with torch.no_grad():
            return model.scores(model.user_vectors(batch, code), vectors, bias).numpy()

    return score


def select_epochs(
    model: TwoTower, split: Split, config: TrainConfig, eval_config: EvalConfig, *, progress: bool
) -> tuple[int, float, list[EpochLog]]:
    """Train on split.train, evaluating validation NDCG@10 after each epoch; load the best epoch's weights
    into `model` and return (best epoch, its validation NDCG@10, the per-epoch log)."""
    if split.eval_users.size == 0:
        raise DataError("no user has a validation row (three rows or more): cannot choose the epoch count")
    trainer = Trainer(model, split.train, split.cold_items, config)
    best_epoch, best_ndcg, best_state, logs = 0, -1.0, copy.deepcopy(model.state_dict()), []
    for epoch in range(1, config.epochs + 1):
        start = time.perf_counter()
        loss = trainer.epoch(epoch, progress=progress)
        ndcg = evaluate(split, make_scorer(model, split), stage="valid", config=eval_config).overall.ndcg_10
        logs.append(EpochLog(epoch, loss, ndcg, time.perf_counter() - start))
        log.info("epoch %d: loss %.4f, valid NDCG@10 %.4f (%.1f s)", epoch, loss, ndcg, logs[-1].seconds)
        if ndcg > best_ndcg:
            best_epoch, best_ndcg, best_state = epoch, ndcg, copy.deepcopy(model.state_dict())
        elif epoch - best_epoch >= config.patience:
            break
    model.load_state_dict(best_state)
    return best_epoch, best_ndcg, logs


def with_counted_popularity(features: ItemFeatures, rows: UserSequences, config: ModelConfig) -> ItemFeatures:
    """`features` with the popularity prior counted exactly from the `rows` a central model trains on (a
    central model reads them anyway), when the model has a popularity prior."""
    if not config.popularity_prior:
        return features
    counts = recent_item_counts(rows, features.n_items, items_per_user=config.popularity_items_per_user)
    return features.with_popularity(popularity_from_counts(counts))


def refit(
    features: ItemFeatures,
    split: Split,
    model_config: ModelConfig,
    config: TrainConfig,
    epochs: int,
    *,
    progress: bool,
) -> tuple[TwoTower, list[EpochLog]]:
    """A fresh model (same seed) trained on train + validation rows for exactly `epochs` epochs."""
    set_threads(config)
    torch.manual_seed(config.seed)
    rows = split.train_and_valid()
    model = TwoTower(with_counted_popularity(features, rows, model_config), model_config)
    trainer = Trainer(model, rows, split.cold_items, config)
    logs = []
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        loss = trainer.epoch(epoch, progress=progress)
        logs.append(EpochLog(epoch, loss, float("nan"), time.perf_counter() - start))
        log.info("refit epoch %d: loss %.4f (%.1f s)", epoch, loss, logs[-1].seconds)
    return model, logs


def train(
    split: Split,
    features: ItemFeatures,
    *,
    model_config: ModelConfig,
    train_config: TrainConfig,
    eval_config: EvalConfig,
    progress: bool = True,
) -> TrainResult:
    """Choose the epoch count on validation, then (with `train_config.refit`) refit on train + validation.

    Seeded by `train_config.seed`; sets torch's thread count from `train_config.threads` (0 keeps it).
    """
    if features.n_items != split.n_items:
        raise DataError(f"item features cover {features.n_items} items, the dataset has {split.n_items}")
    set_threads(train_config)
    start = time.perf_counter()
    torch.manual_seed(train_config.seed)
    model = TwoTower(with_counted_popularity(features, split.train, model_config), model_config)
    log.info("two-tower model: %d trainable parameters", model.n_trainable())
    best_epoch, best_ndcg, logs = select_epochs(model, split, train_config, eval_config, progress=progress)
    result = TrainResult(model, best_epoch, best_ndcg, refit=False, epochs=logs)
    if train_config.refit:
        result.model, result.refit_epochs = refit(
            features, split, model_config, train_config, best_epoch, progress=progress
        )
        result.refit = True
    result.train_time_s = time.perf_counter() - start
    return result
