"""Server optimisers on the flat parameter vector: FedAvg, FedAvgM and FedAdam (pseudo-gradient -mean), with
a constant or cosine-annealed server learning rate."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from shared.config import FederatedConfig, LearningRateSchedule, ServerOptimizerName
from shared.errors import ConfigError, DataError, UpdateRejectedError


class CosineSchedule:
    """Cosine annealing without restarts (Loshchilov & Hutter 2017): the factor on the learning rate falls
    from 1 at step 0 to `final_fraction` at step `steps` - 1 along half a cosine, and stays there after."""

    def __init__(self, *, steps: int, final_fraction: float) -> None:
        if steps < 1 or not 0.0 <= final_fraction <= 1.0:
            raise ConfigError(f"need steps >= 1 and final_fraction in [0, 1], got {steps}, {final_fraction}")
        self.steps, self.final_fraction = steps, final_fraction

    def factor(self, step: int) -> float:
        progress = min(step, self.steps - 1) / max(self.steps - 1, 1)
        return self.final_fraction + (1.0 - self.final_fraction) * 0.5 * (1.0 + math.cos(math.pi * progress))


class ServerOptimizer:
    """Applies one round's noised mean update to the global parameters (flat float32 vectors).

    The pseudo-gradient is -mean_update, so every variant moves the parameters along mean_update.
    State (momentum, Adam moments) is kept in float64 and allocated on the first step.
    """

    name: ClassVar[ServerOptimizerName] = "sgd"
    _slots: ClassVar[tuple[str, ...]] = ()  # names of the state vectors

    def __init__(self, *, learning_rate: float, schedule: CosineSchedule | None = None) -> None:
        if not learning_rate > 0:
            raise ConfigError(f"server_learning_rate must be positive, got {learning_rate}")
        self.learning_rate, self.schedule = learning_rate, schedule
        self.steps = 0
        self._state: dict[str, np.ndarray] = {}

    def rate(self) -> float:
        """The learning rate of the next step (the schedule's, by the steps taken so far)."""
        factor = 1.0 if self.schedule is None else self.schedule.factor(self.steps)
        return self.learning_rate * factor

    def step(self, params: np.ndarray, mean_update: np.ndarray) -> np.ndarray:
        """New parameters (float32, same shape) after one server step along `mean_update`."""
        update = _checked(params, mean_update)
        if not self._state:
            self._state = {slot: self._initial(slot, update.shape[0]) for slot in self._slots}
        elif next(iter(self._state.values())).shape != update.shape:
            raise UpdateRejectedError("mean update does not match the optimiser state's dimension")
        delta = self._delta(update, self.rate())
        self.steps += 1
        return (params.astype(np.float64) + delta).astype(np.float32)

    def _initial(self, slot: str, dim: int) -> np.ndarray:
        return np.zeros(dim, np.float64)

    def _delta(self, update: np.ndarray, rate: float) -> np.ndarray:
        """The change to the parameters for this (float64) mean update at learning rate `rate`; updates the
        state."""
        return rate * update

    def state_dict(self) -> dict[str, Any]:
        """Name, step count and state vectors (numpy float64 arrays, copies)."""
        state: dict[str, Any] = {"name": self.name, "steps": self.steps}
        state.update({slot: array.copy() for slot, array in self._state.items()})
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from state_dict() of the same variant; raises DataError for a mismatching state."""
        if state.get("name") != self.name:
            raise DataError(f"optimiser state is for {state.get('name')!r}, not {self.name!r}")
        present = [slot for slot in self._slots if slot in state]
        if present and len(present) != len(self._slots):
            raise DataError(f"optimiser state has {present}, needs all of {list(self._slots)}")
        arrays = {slot: np.array(state[slot], dtype=np.float64) for slot in present}
        if len({a.shape for a in arrays.values()}) > 1 or any(a.ndim != 1 for a in arrays.values()):
            raise DataError("optimiser state vectors must be flat and of one length")
        if not all(np.isfinite(a).all() for a in arrays.values()):
            raise DataError("optimiser state contains NaN or infinite values")
        self.steps = int(state.get("steps", 0))
        self._state = arrays


class FedAvgOptimizer(ServerOptimizer):
    """FedAvg (McMahan et al. 2017): params + learning_rate * mean_update."""

    name = "sgd"


class FedAvgMOptimizer(ServerOptimizer):
    """FedAvgM (Hsu et al. 2019): v <- momentum * v + mean_update; params + learning_rate * v."""

    name = "momentum"
    _slots = ("velocity",)

    def __init__(
        self, *, learning_rate: float, momentum: float, schedule: CosineSchedule | None = None
    ) -> None:
        super().__init__(learning_rate=learning_rate, schedule=schedule)
        if not 0.0 <= momentum < 1.0:
            raise ConfigError(f"server_momentum must be in [0, 1), got {momentum}")
        self.momentum = momentum

    def _delta(self, update: np.ndarray, rate: float) -> np.ndarray:
        velocity = self.momentum * self._state["velocity"] + update
        self._state["velocity"] = velocity
        return rate * velocity


class FedAdamOptimizer(ServerOptimizer):
    """FedAdam exactly as Reddi et al. 2021 ("Adaptive Federated Optimization"), Algorithm 2.

    m <- beta1 m + (1 - beta1) u; v <- beta2 v + (1 - beta2) u^2; params + lr * m / (sqrt(v) + tau), with
    u = mean_update, m starting at 0 and v at tau^2. No bias correction (the paper has none). A large tau
    keeps coordinates where the update is mostly noise from taking full-size steps.

    With `bias_correction` (Kingma & Ba's Adam, as the centralised trainer uses): v starts at 0 and the step
    is lr * m_hat / (sqrt(v_hat) + tau) with m_hat = m / (1 - beta1^t), v_hat = v / (1 - beta2^t). Without
    it the early steps are up to several times lr wherever beta2 > beta1 (m warms up faster than v), which
    on amazon_beauty pushed the model far from its starting point in the first rounds.
    """

    name = "adam"
    _slots = ("m", "v")

    def __init__(
        self,
        *,
        learning_rate: float,
        beta1: float,
        beta2: float,
        tau: float,
        bias_correction: bool = False,
        schedule: CosineSchedule | None = None,
    ) -> None:
        super().__init__(learning_rate=learning_rate, schedule=schedule)
        if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0 and tau > 0):
            raise ConfigError(f"need beta1, beta2 in [0, 1) and tau > 0, got {beta1}, {beta2}, {tau}")
        self.beta1, self.beta2, self.tau = beta1, beta2, tau
        self.bias_correction = bias_correction

    def _initial(self, slot: str, dim: int) -> np.ndarray:
        start_v = 0.0 if self.bias_correction else self.tau**2
        return np.full(dim, start_v if slot == "v" else 0.0, np.float64)

    def _delta(self, update: np.ndarray, rate: float) -> np.ndarray:
        m = self.beta1 * self._state["m"] + (1.0 - self.beta1) * update
        v = self.beta2 * self._state["v"] + (1.0 - self.beta2) * update**2
        self._state["m"], self._state["v"] = m, v
        if self.bias_correction:
            t = self.steps + 1
            m, v = m / (1.0 - self.beta1**t), v / (1.0 - self.beta2**t)
        return rate * m / (np.sqrt(v) + self.tau)


def make_server_optimizer(config: FederatedConfig) -> ServerOptimizer:
    """The server optimiser named by config.server_optimizer, with the config's hyperparameters and
    learning-rate schedule (cosine annealing over config.rounds, or constant)."""
    lr, schedule = config.server_learning_rate, make_schedule(config.server_lr_schedule, config)
    if config.server_optimizer == "sgd":
        return FedAvgOptimizer(learning_rate=lr, schedule=schedule)
    if config.server_optimizer == "momentum":
        return FedAvgMOptimizer(learning_rate=lr, momentum=config.server_momentum, schedule=schedule)
    if config.server_optimizer == "adam":
        beta1, beta2, tau = config.server_momentum, config.server_beta2, config.server_epsilon
        return FedAdamOptimizer(
            learning_rate=lr,
            beta1=beta1,
            beta2=beta2,
            tau=tau,
            bias_correction=config.server_bias_correction,
            schedule=schedule,
        )
    raise ConfigError(f"unknown server optimiser {config.server_optimizer!r}")


def make_schedule(name: LearningRateSchedule, config: FederatedConfig) -> CosineSchedule | None:
    if name == "constant":
        return None
    if name == "cosine":
        return CosineSchedule(steps=config.rounds, final_fraction=config.server_lr_final_fraction)
    raise ConfigError(f"unknown server learning-rate schedule {name!r}")


def _checked(params: np.ndarray, mean_update: np.ndarray) -> np.ndarray:
    """mean_update as float64 after checking it is flat, finite and shaped like params."""
    if not isinstance(params, np.ndarray) or params.ndim != 1:
        raise UpdateRejectedError("params must be a flat numpy array")
    if not isinstance(mean_update, np.ndarray) or mean_update.shape != params.shape:
        raise UpdateRejectedError(f"mean update must have the params' shape {params.shape}")
    if not np.isfinite(mean_update).all():
        raise UpdateRejectedError("mean update contains NaN or infinite values")
    return mean_update.astype(np.float64)
