"""How a history's context is encoded for the user tower: recency buckets and the request's hour and weekday.

Plain numpy and no torch, so that the device (client/device/, onnxruntime + numpy only) encodes exactly what
the trainer encodes (shared/model/features.py uses these same functions).
"""

from __future__ import annotations

from typing import Final

import numpy as np

from shared.data.schema import EVENT_TYPES

N_GAP_BUCKETS: Final[int] = 16  # log2(1 + hours since the event) buckets; code 0 = padding
N_EVENT_CODES: Final[int] = len(EVENT_TYPES) + 1  # event type code + 1; code 0 = padding
SECONDS_PER_HOUR: Final[int] = 3_600
SECONDS_PER_DAY: Final[int] = 86_400


def gap_buckets(gap_s: np.ndarray) -> np.ndarray:
    """Recency codes 1..N_GAP_BUCKETS-1 for time gaps in seconds: 1 + floor(log2(1 + hours)), capped."""
    hours = np.maximum(gap_s, 0) / SECONDS_PER_HOUR
    return np.minimum(1 + np.floor(np.log2(1.0 + hours)), N_GAP_BUCKETS - 1).astype(np.int64)


def request_context(now_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(hour, weekday) of unix times `now_s`, UTC; 1970-01-01 was a Thursday (weekday 3)."""
    now_s = now_s.astype(np.int64)
    return (now_s // SECONDS_PER_HOUR) % 24, (now_s // SECONDS_PER_DAY + 3) % 7
