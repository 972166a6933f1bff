"""The ClientApp's check of the sampled slots a train or trending message names."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from client.client_app import _slots
from shared.errors import UpdateRejectedError


def message(slots: list[int]) -> Any:
    array = SimpleNamespace(numpy=lambda: np.array(slots, np.int64))
    return SimpleNamespace(content=SimpleNamespace(array_records={"sample": {"slots": array}}))


NODE: Any = SimpleNamespace(users=np.arange(5, dtype=np.int64))


def test_slots_inside_the_population_pass() -> None:
    assert _slots(message([0, 3, 4]), NODE).tolist() == [0, 3, 4]
    assert _slots(message([]), NODE).size == 0


@pytest.mark.parametrize("slots", [[0, 5], [-1, 2], [1, 1], [2, 0, 2]])
def test_slots_outside_or_repeated_are_refused(slots: list[int]) -> None:
    """A repeated slot would train that user twice in one round (sensitivity 2C), let its device pass its
    participation cap (one count, one receipt for two contributions) and undercount its own bound."""
    with pytest.raises(UpdateRejectedError):
        _slots(message(slots), NODE)
