"""The record-level ledger fields: labelled record-level, with the unit they protect (a training example)."""

from __future__ import annotations

import numpy as np
import pytest
from ledger_toy import round_fields

from server.ledger_entries import read_entry
from server.rounds.messaging import TrainReplies
from server.rounds.record_level_fields import record_level_fields
from shared.privacy.accounting import RoundEvent, UserLevelAccountant


def replies(record_epsilon: float | None) -> TrainReplies:
    return TrainReplies(np.zeros(3), 1, 1, 0, 0, record_epsilon=record_epsilon)


def test_the_unit_of_privacy_is_one_training_example_not_one_interaction() -> None:
    fields = record_level_fields(2.5, replies(1.5), record_delta=1e-5)
    assert fields["record_unit_of_privacy"] == "training_example"
    assert (fields["record_accountant"], fields["record_delta"]) == ("rdp", 1e-5)


def test_not_in_record_level_mode_there_are_no_fields() -> None:
    assert record_level_fields(None, replies(None), record_delta=1e-5) == {}


@pytest.mark.parametrize("unit", ["training_example", "record"])  # "record": ledgers written before
def test_ledgers_with_either_unit_read_back(unit: str) -> None:
    accountant = UserLevelAccountant(delta=1e-5)
    accountant.record(RoundEvent(sample_rate=0.05, noise_multiplier=1.0))
    base = round_fields(1, accountant, q=0.05, z=1.0, mode="central")
    fields = {**base, **record_level_fields(2.5, replies(1.5), record_delta=1e-5)}
    fields["record_unit_of_privacy"] = unit
    assert read_entry(fields).to_fields()["record_unit_of_privacy"] == unit
