"""The ClientApp's check of the sampled slots a train or trending message names."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from flwr.app import RecordDict

from client.client_app import _slots
from shared.errors import UpdateRejectedError
from shared.messages import RoundSettings, TrainInstruction, read_slots


def message(slots: list[int]) -> np.ndarray:
    """The slots as a train message carries them (shared.messages.read_slots reads them out)."""
    instruction = TrainInstruction(np.zeros(1, np.float32), np.array(slots, np.int64), SETTINGS)
    return read_slots(RecordDict(instruction.to_records()))


NODE: Any = SimpleNamespace(users=np.arange(5, dtype=np.int64))
SETTINGS = RoundSettings(
    round=1, run_id="r", sample_rate=0.5, noise_multiplier=1.0, delta=1e-5, participation_cap=0,
    clip_norm=1.0, local_noise_multiplier=0.0, round_seed=1, noise_seed=-1,
)  # fmt: skip


def test_slots_inside_the_population_pass() -> None:
    assert _slots(message([0, 3, 4]), NODE).tolist() == [0, 3, 4]
    assert _slots(message([]), NODE).size == 0


@pytest.mark.parametrize("slots", [[0, 5], [-1, 2], [1, 1], [2, 0, 2]])
def test_slots_outside_or_repeated_are_refused(slots: list[int]) -> None:
    """A repeated slot would train that user twice in one round (sensitivity 2C), let its device pass its
    participation cap (one count, one receipt for two contributions) and undercount its own bound."""
    with pytest.raises(UpdateRejectedError):
        _slots(message(slots), NODE)
