"""The error tree of fedhome: every error we raise on purpose derives from FedhomeError."""

from __future__ import annotations


class FedhomeError(Exception):
    """Base of every error fedhome raises on purpose."""


class ConfigError(FedhomeError):
    """A configuration value is missing, of the wrong type or out of range."""


class DataError(FedhomeError):
    """Input data is malformed. Names the file and line when the data came from a file."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None) -> None:
        self.path = path
        self.line = line
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(f"{where}{message}")


class EncoderError(FedhomeError):
    """The sentence encoder could not be loaded or run."""


class BudgetExhaustedError(FedhomeError):
    """A round would spend more privacy budget than the run is allowed."""


class SignatureError(FedhomeError):
    """A signature or a file hash did not verify."""


class UpdateRejectedError(FedhomeError):
    """A device update was malformed or oversized and was not aggregated. `reason` is a short public label the
    ledger counts rejections by ("non_finite", "wrong_shape", "oversized", "stale_round", "replayed",
    "duplicate", "unqueried", "node_error", "malformed")."""

    def __init__(self, message: str, *, reason: str = "malformed") -> None:
        self.reason = reason
        super().__init__(message)
