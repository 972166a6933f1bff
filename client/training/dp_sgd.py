"""Record-level DP-SGD on one device with Opacus: each of the user's training examples is a record.

A record is one training example: one prefix of the user's sequence (its last `max_history` interactions
and the next item as the target), not one interaction. One interaction appears in up to 1 + max_history
examples (as the target of one, in the history of up to max_history later ones), so per interaction the
guarantee is group privacy over k = 1 + max_history records, which this module does NOT compute or report
(from (eps, delta) per record, the generic group bound is (k eps, k e^((k-1) eps) delta)). The ledger
labels the unit "training_example".

The device runs `local_steps` DP-SGD steps (Poisson sampling of records at the PUBLIC rate
q = min(1, EXPECTED_BATCH / federated.max_examples_per_user), per-record clipping to
`record_max_grad_norm`, Gaussian noise `record_noise_multiplier` * that norm, the noisy sum divided by the
public q * max_examples_per_user) over its n <= max_examples_per_user most recent examples, starting from the
global parameters, and reports the update and the record-level epsilon spent so far by Opacus's RDP
accountant at `record_delta`. The rate does not depend on n (a device with fewer examples simply gets
smaller batches and a smaller step), and a device with no example still takes its steps (noise only), so
the epsilon is a function of public terms only: eps = RDP(q, record_noise_multiplier, local_steps x the
rounds the device joined) at record_delta, which the server knows because it sampled the device. It does
not reveal the device's example count.

This epsilon protects single training examples of this user against an observer of this device's updates;
it is NOT the user-level guarantee (that comes from clipping the whole update, with
shared.privacy.mechanism.UserClipping in client/client_app.py like every other update, and the server's
noise) and must be reported separately, labelled record-level. Opacus's per-record clipping and noise are
its own: they bound records, not users. The accountant's state (a JSON-safe history) must be kept across
rounds by the caller.

Opacus sees one module, `RecordLoss` (the local loss of client/training/local_loss.py per record), whose
only parameter is the flat vector of the trained parameters; its per-record gradients come from a grad
sampler registered for it (torch.func over the records). Each record gets its own item set; the shared
negatives are public (drawn from the round seed).
"""

from __future__ import annotations

import logging
import math
import secrets
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from client.training.local_batch import Negatives, UserExamples, build_records, draw_negatives
from client.training.local_loss import PREFIX, UserLoss, split_flat
from shared.config import FederatedConfig, PrivacyConfig
from shared.data.split import UserSequences
from shared.errors import ConfigError, DataError
from shared.model import TwoTower
from shared.model.params import ParamLayout, check_flat

log = logging.getLogger(__name__)
EXPECTED_BATCH = 8  # records per DP-SGD step on average for a device with max_examples_per_user of them
MECHANISM = "rdp"


def record_sample_rate(config: FederatedConfig) -> float:
    """The public Poisson sampling rate of records, the same on every device:
    min(1, EXPECTED_BATCH / max_examples_per_user)."""
    return min(1.0, EXPECTED_BATCH / config.max_examples_per_user)


def record_divisor(config: FederatedConfig) -> int:
    """The public divisor of a step's noisy sum: the expected batch of a device with max_examples_per_user
    examples, q * max_examples_per_user = min(EXPECTED_BATCH, max_examples_per_user)."""
    return min(EXPECTED_BATCH, config.max_examples_per_user)


@dataclass(frozen=True)
class RecordLevelUpdate:
    """One round of record-level DP-SGD on a device."""

    update: np.ndarray  # (P,) float32 theta_K - theta_0 (not clipped at user level: the caller does that)
    record_epsilon: float  # record-level epsilon spent on this device so far (RDP), at record_delta
    record_delta: float
    steps: int  # DP-SGD steps this round (local_steps, also when the user has no example: noise only)


class RecordLoss(nn.Module):
    """Per-record losses (B,) of a batch of records; the trained parameters as ONE flat Parameter (the
    layout's vector), the only thing Opacus clips and noises. The model is kept out of the module tree."""

    def __init__(self, model: TwoTower, layout: ParamLayout, negatives: Negatives, start: np.ndarray) -> None:
        super().__init__()
        self.flat = nn.Parameter(torch.from_numpy(np.array(start, dtype=np.float32)))  # (P,)
        trained = set(layout.names)
        frozen = {PREFIX + n: p.detach() for n, p in model.named_parameters() if n not in trained}
        self.parts = (UserLoss(model), layout, negatives, frozen)  # a tuple: invisible to Opacus

    def forward(self, *records: Tensor) -> Tensor:
        """records: ChunkBatch.tensors() of B records (each with one example) -> (B,) losses."""
        if records[0].shape[0] == 0:  # an empty Poisson batch
            return self.flat[:0] * 0.0
        return vmap(self.record_loss, in_dims=(None, *[0] * len(records)))(self.flat, *records)

    def record_loss(self, flat: Tensor, *record: Tensor) -> Tensor:
        """The loss of one record with the trained parameters `flat` (P,)."""
        loss, layout, negatives, frozen = self.parts
        theta = {PREFIX + n: t for n, t in split_flat(flat, layout).items()}
        return functional_call(loss, {**frozen, **theta}, (*record, negatives.items, negatives.log_count))


def record_grad_sampler(
    layer: RecordLoss, activations: list[Tensor], backprops: Tensor
) -> dict[Tensor, Tensor]:
    """Opacus grad sampler of RecordLoss: per-record gradients (B, P) of backprop_i * loss_i."""
    flat = layer.flat.detach()
    if backprops.shape[0] == 0:
        return {layer.flat: flat.new_zeros(0, flat.shape[0])}

    def weighted(theta: Tensor, backprop: Tensor, *record: Tensor) -> Tensor:
        return layer.record_loss(theta, *record) * backprop

    in_dims = (None, 0, *[0] * len(activations))
    return {layer.flat: vmap(grad(weighted), in_dims=in_dims)(flat, backprops, *activations)}


class RecordLevelTrainer:
    """Record-level DP-SGD for ONE user on one device; the accountant state persists via state_dict()."""

    def __init__(
        self,
        model: TwoTower,
        seqs: UserSequences,
        user: int,
        *,
        layout: ParamLayout,
        blocked: np.ndarray,
        config: FederatedConfig,
        privacy: PrivacyConfig,
        examples: UserExamples | None = None,
    ) -> None:
        """`examples`: the node's UserExamples of `seqs` (with config.max_examples_per_user), to share."""
        if not 0 <= user < seqs.n_users:
            raise DataError("the device's user index is outside its sequences")
        if config.update_scales:
            raise ConfigError(
                "record-level DP-SGD (Opacus) trains in the model's own parametrisation: "
                "set federated.update_scales to empty (--set federated.update_scales=)"
            )
        self.model, self.user, self.layout, self.config, self.privacy = model, user, layout, config, privacy
        if examples is not None and (
            examples.seqs is not seqs or examples.max_examples != config.max_examples_per_user
        ):
            raise ConfigError("shared examples must be of these sequences, with max_examples_per_user")
        self.examples = examples or UserExamples(seqs, max_examples=config.max_examples_per_user)
        self.allowed = np.flatnonzero(~blocked)
        self.history: list[tuple[float, float, int]] = []  # the accountant's (z, q, steps) entries

    @property
    def record_epsilon(self) -> float:
        """Record-level epsilon spent so far (RDP, at record_delta); 0 before any step."""
        return _epsilon(self.history, self.privacy.record_delta)

    def train_round(self, params: np.ndarray, *, round_seed: int) -> RecordLevelUpdate:
        """`local_steps` DP-SGD steps from the global `params` (P,) over the user's records."""
        check_flat(params, self.layout)
        start = torch.from_numpy(np.array(params, dtype=np.float32))
        sampling, noise = _generators(self.privacy.seed, round_seed)
        if self.examples.count(np.array([self.user]))[0] == 0:
            update = self._noise_only(start.shape[0], noise)  # no record: each step is the noise alone
        else:
            negatives = draw_negatives(self.allowed, self.config.n_negatives, round_seed=round_seed)
            max_history = self.model.config.max_history
            records = build_records(self.examples, self.user, negatives.items, max_history=max_history)
            self.model.eval()  # dropout off: the loss is a deterministic function of the records
            module = RecordLoss(self.model, self.layout, negatives, params)
            self._dp_sgd(module, records.tensors(), sampling, noise)
            update = module.flat.detach() - start
        steps = self.config.local_steps
        return RecordLevelUpdate(update.numpy(), self.record_epsilon, self.privacy.record_delta, steps)

    def _dp_sgd(
        self,
        module: RecordLoss,
        records: tuple[Tensor, ...],
        sampling: torch.Generator,
        noise: torch.Generator,
    ) -> None:
        """local_steps DP-SGD steps, Poisson sampling at the public rate, with a fresh accountant that
        continues the history. Built from Opacus's parts rather than make_private, which would derive the
        rate (and the divisor) from the device's record count."""
        engine = _privacy_engine()  # imports Opacus (quietly) and registers RecordLoss's grad sampler
        from opacus import GradSampleModule
        from opacus.optimizers import DPOptimizer
        from opacus.utils.uniform_sampler import UniformWithReplacementSampler

        accountant = engine.accountant
        if self.history:
            accountant.load_state_dict({"history": list(self.history), "mechanism": MECHANISM})
        rate = record_sample_rate(self.config)
        private = GradSampleModule(module, batch_first=True, loss_reduction="mean")
        optimizer = DPOptimizer(
            torch.optim.SGD([module.flat], lr=self.config.local_learning_rate),
            noise_multiplier=self.privacy.record_noise_multiplier,
            max_grad_norm=self.privacy.record_max_grad_norm,
            expected_batch_size=record_divisor(self.config),  # public, not q * n
            loss_reduction="mean",
            generator=noise,
        )
        optimizer.attach_step_hook(accountant.get_optimizer_hook_fn(sample_rate=rate))
        sampler = UniformWithReplacementSampler(
            num_samples=int(records[0].shape[0]),
            sample_rate=rate,
            generator=sampling,
            steps=self.config.local_steps,
        )
        private.train()
        with warnings.catch_warnings():
            # the records are inputs without gradients: torch says the full backward hook fires anyway (fine)
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            for indices in sampler:  # local_steps Poisson batches, some of them empty
                chosen = torch.as_tensor(indices, dtype=torch.long)
                optimizer.zero_grad(set_to_none=True)
                losses = private(*(t[chosen] for t in records))  # (b,)
                (losses.mean() if losses.numel() else losses.sum()).backward()
                optimizer.step()
        self.history = [(float(z), float(q), int(k)) for z, q, k in accountant.history]

    def _noise_only(self, dim: int, noise: torch.Generator) -> Tensor:
        """The local_steps DP-SGD steps of a device without records (every batch empty): SGD on the noise
        alone, -lr sum_k N(0, (z c)^2) / divisor, accounted like any other steps at the public rate."""
        z, c = self.privacy.record_noise_multiplier, self.privacy.record_max_grad_norm
        steps = self.config.local_steps
        draws = torch.normal(0.0, z * c, size=(steps, dim), generator=noise)
        update = -self.config.local_learning_rate * draws.sum(0) / record_divisor(self.config)
        accountant = _privacy_engine().accountant
        if self.history:
            accountant.load_state_dict({"history": list(self.history), "mechanism": MECHANISM})
        for _ in range(steps):
            accountant.step(noise_multiplier=z, sample_rate=record_sample_rate(self.config))
        self.history = [(float(z_), float(q), int(k)) for z_, q, k in accountant.history]
        return update.float()

    def state_dict(self) -> dict[str, Any]:
        """The accountant's state, JSON-safe: {"mechanism": "rdp", "history": [[z, q, steps], ...]}."""
        return {"mechanism": MECHANISM, "history": [list(entry) for entry in self.history]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from a state_dict() (e.g. kept in Flower's context.state between rounds)."""
        try:
            history = [(float(z), float(q), int(k)) for z, q, k in state["history"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError("record-level accountant state is malformed") from exc
        if state.get("mechanism") != MECHANISM or any(
            z < 0 or not 0 < q <= 1 or k < 0 for z, q, k in history
        ):
            raise ConfigError("record-level accountant state is not a valid RDP history")
        self.history = history


def _epsilon(history: list[tuple[float, float, int]], delta: float) -> float:
    if not history:
        return 0.0
    if any(z == 0 for z, _, _ in history):  # a step without noise: no record-level guarantee at all
        return math.inf
    accountant = _privacy_engine().accountant
    accountant.load_state_dict({"history": list(history), "mechanism": MECHANISM})
    return float(accountant.get_epsilon(delta=delta))


def _generators(seed: int, round_seed: int) -> tuple[torch.Generator, torch.Generator]:
    """(Poisson sampling, noise) generators: from the OS CSPRNG, or for tests (seed >= 0, NOT private)
    from the seed and the round (never the same noise twice)."""
    if seed < 0:
        return (
            torch.Generator().manual_seed(secrets.randbits(63)),
            torch.Generator().manual_seed(secrets.randbits(63)),
        )
    base = np.random.SeedSequence([seed, round_seed % 2**63]).generate_state(2, dtype=np.uint64)
    return torch.Generator().manual_seed(int(base[0]) >> 1), torch.Generator().manual_seed(int(base[1]) >> 1)


_OPACUS: list[Any] = []


def _privacy_engine() -> Any:
    """A fresh Opacus PrivacyEngine with the RDP accountant. Opacus is imported on first use (importing it
    calls logging.basicConfig, which would take the root logger from our entry points: undone here), and
    RecordLoss's grad sampler is registered then."""
    if not _OPACUS:
        root = logging.getLogger()
        before = list(root.handlers)
        from opacus import PrivacyEngine
        from opacus.grad_sample import register_grad_sampler

        for handler in root.handlers[:]:
            if handler not in before:
                root.removeHandler(handler)
        register_grad_sampler(RecordLoss)(record_grad_sampler)
        _OPACUS.append(PrivacyEngine)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Secure RNG turned off")  # our generators: _generators
        return _OPACUS[0](accountant=MECHANISM)
