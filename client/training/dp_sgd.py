"""Record-level DP-SGD on one device with Opacus: each of the user's examples is a record.

The device runs `local_steps` DP-SGD steps (Poisson sampling of records at rate 1/ceil(n/8), per-record
clipping to `record_max_grad_norm`, Gaussian noise `record_noise_multiplier` * that norm) over its n most
recent examples, starting from the global parameters, and reports the update and the record-level epsilon
spent so far by Opacus's RDP accountant at `record_delta`. This epsilon protects single interactions of
this user against an observer of this device's updates; it is NOT the user-level guarantee (that comes
from clipping the whole update, with shared.privacy.mechanism.UserClipping in client/client_app.py like every
other update, and the server's noise) and must be reported separately, labelled record-level. Opacus's
per-record clipping and noise are its own: they bound records, not users. The accountant's state (a
JSON-safe history) must be kept across rounds by the caller.

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
from torch.utils.data import DataLoader, TensorDataset

from client.training.local_batch import Negatives, UserExamples, build_records, draw_negatives
from client.training.local_loss import PREFIX, UserLoss, split_flat
from shared.config import FederatedConfig, PrivacyConfig
from shared.data.split import UserSequences
from shared.errors import ConfigError, DataError
from shared.model import TwoTower
from shared.model.params import ParamLayout, check_flat

log = logging.getLogger(__name__)
EXPECTED_BATCH = 8  # records per DP-SGD step on average (all of them when the user has at most 8)
MECHANISM = "rdp"


@dataclass(frozen=True)
class RecordLevelUpdate:
    """One round of record-level DP-SGD on a device."""

    update: np.ndarray  # (P,) float32 theta_K - theta_0 (not clipped at user level: the caller does that)
    record_epsilon: float  # record-level epsilon spent on this device so far (RDP), at record_delta
    record_delta: float
    steps: int  # DP-SGD steps this round (0 when the user has no example)


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
        if self.examples.count(np.array([self.user]))[0] == 0:  # nothing to learn or protect: no step
            zero = np.zeros(self.layout.dim, np.float32)
            return RecordLevelUpdate(zero, self.record_epsilon, self.privacy.record_delta, 0)
        negatives = draw_negatives(self.allowed, self.config.n_negatives, round_seed=round_seed)
        max_history = self.model.config.max_history
        records = build_records(self.examples, self.user, negatives.items, max_history=max_history)
        n = int(records.items.shape[0])
        self.model.eval()  # dropout off: the loss is a deterministic function of the records
        module = RecordLoss(self.model, self.layout, negatives, params)
        sampling, noise = _generators(self.privacy.seed, round_seed)
        loader = DataLoader(
            TensorDataset(*records.tensors()), batch_size=min(EXPECTED_BATCH, n), generator=sampling
        )
        steps = self._dp_sgd(module, loader, noise)
        update = (module.flat.detach() - torch.from_numpy(np.asarray(params, np.float32))).numpy()
        return RecordLevelUpdate(update, self.record_epsilon, self.privacy.record_delta, steps)

    def _dp_sgd(
        self, module: RecordLoss, loader: DataLoader[tuple[Tensor, ...]], noise: torch.Generator
    ) -> int:
        """Run local_steps DP-SGD steps with a fresh PrivacyEngine whose accountant continues the history."""
        engine = _privacy_engine()  # warns that Opacus's own secure RNG is off: ours are OS-seeded
        if self.history:
            engine.accountant.load_state_dict({"history": list(self.history), "mechanism": MECHANISM})
        optimizer = torch.optim.SGD([module.flat], lr=self.config.local_learning_rate)
        private, optimizer, loader = engine.make_private(
            module=module,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=self.privacy.record_noise_multiplier,
            max_grad_norm=self.privacy.record_max_grad_norm,
            poisson_sampling=True,
            noise_generator=noise,
        )
        private.train()
        steps = 0
        with warnings.catch_warnings():
            # the records are inputs without gradients: torch says the full backward hook fires anyway (fine)
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            while steps < self.config.local_steps:
                for batch in loader:
                    optimizer.zero_grad(set_to_none=True)
                    losses = private(*batch)  # (b,)
                    (losses.mean() if losses.numel() else losses.sum()).backward()
                    optimizer.step()
                    steps += 1
                    if steps == self.config.local_steps:
                        break
        self.history = [(float(z), float(q), int(k)) for z, q, k in engine.accountant.history]
        return steps

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
