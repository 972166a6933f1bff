"""The typed messages between the ServerApp and the nodes (shared/messages.py): what is sent is what is read,
and a malformed or inconsistent record is refused with UpdateRejectedError, never read as something else."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from hypothesis import given
from hypothesis import strategies as st

from shared.errors import UpdateRejectedError
from shared.messages import (
    EvaluateReply,
    EvaluateRequest,
    PopulationReply,
    RoundSettings,
    StartCheckReply,
    StartCheckRequest,
    TrainInstruction,
    TrainReply,
)

SETTINGS = RoundSettings(
    round=4, run_id="run-a", sample_rate=0.05, noise_multiplier=0.955, delta=1e-6, participation_cap=3,
    clip_norm=1.0, local_noise_multiplier=0.0, round_seed=2**61 + 5, noise_seed=-1,
)  # fmt: skip


@given(
    slots=st.lists(st.integers(0, 10**6), max_size=20, unique=True),
    dim=st.integers(1, 50),
    seed=st.integers(-1, 2**62 - 1),
    n_prior=st.one_of(st.none(), st.integers(0, 30)),
)
def test_a_train_instruction_reads_back_as_sent(
    slots: list[int], dim: int, seed: int, n_prior: int | None
) -> None:
    settings = RoundSettings(**{**SETTINGS.__dict__, "noise_seed": seed})
    prior = None if n_prior is None else np.log1p(np.arange(n_prior, dtype=np.float32))
    params = np.linspace(-1, 1, dim, dtype=np.float32)
    sent = TrainInstruction(params, np.array(slots, np.int64), settings, prior)
    read = TrainInstruction.from_records(RecordDict(sent.to_records()))
    assert read.settings == settings
    np.testing.assert_array_equal(read.params, sent.params)
    np.testing.assert_array_equal(read.slots, sent.slots)
    if prior is None:
        assert read.prior is None
    else:
        assert read.prior is not None and read.prior.dtype == np.float32
        np.testing.assert_array_equal(read.prior, prior)


PRIOR = np.array([0.0, 0.69314718, 2.5], np.float32)


def test_evaluate_and_start_check_requests_carry_the_popularity_prior() -> None:
    evaluate = EvaluateRequest.from_records(
        EvaluateRequest(np.ones(3, np.float32), "valid", 5, PRIOR).to_records()
    )
    check = StartCheckRequest(np.ones(3, np.float32), np.zeros(3, np.float32), np.array([1]), 10.0, PRIOR)
    for read in (evaluate, StartCheckRequest.from_records(check.to_records())):
        assert read.prior is not None
        np.testing.assert_array_equal(read.prior, PRIOR)
    assert (
        EvaluateRequest.from_records(EvaluateRequest(np.ones(3, np.float32), "valid", 5).to_records()).prior
        is None
    )


@pytest.mark.parametrize(
    "prior",
    [
        np.array([0.0, np.nan, 1.0], np.float32),
        np.array([0.0, np.inf], np.float32),
        np.ones((2, 2), np.float32),
        np.array([1, 2, 3], np.int64),
    ],
)
def test_a_prior_that_is_not_finite_numbers_in_a_row_is_refused(prior: np.ndarray) -> None:
    content = RecordDict(TrainInstruction(np.zeros(2, np.float32), np.array([0]), SETTINGS).to_records())
    content["popularity-prior"] = ArrayRecord({"prior": Array(prior)})
    with pytest.raises(UpdateRejectedError, match="popularity prior"):
        TrainInstruction.from_records(content)


@pytest.mark.parametrize("record_epsilon", [None, 0.0, 3.25])
def test_a_train_reply_reads_back_as_sent(record_epsilon: float | None) -> None:
    sent = TrainReply(np.array([0.5, -0.25], np.float32), 3, 2, 1, record_epsilon)
    read = TrainReply.from_records(sent.to_records(), n_sampled=4)
    assert (read.count, read.unclipped_count, read.refused_count) == (3, 2, 1)
    assert read.record_epsilon == record_epsilon and read.update_sum.dtype == np.float64
    np.testing.assert_array_equal(read.update_sum, [0.5, -0.25])


@pytest.mark.parametrize(
    ("reply", "n_sampled", "problem"),
    [
        (TrainReply(np.zeros(2), 3, 2, 2), 4, "4 were sampled"),  # more users than were sampled
        (TrainReply(np.zeros(2), 3, 4, 0), 3, "4 unclipped"),  # more unclipped than summed
        (TrainReply(np.zeros(2), 2, 0, -1), 1, "-1 refused"),
        (TrainReply(np.zeros(2), 1, 0, 0, -0.5), 1, "not >= 0"),
    ],
)
def test_inconsistent_train_replies_are_refused(reply: TrainReply, n_sampled: int, problem: str) -> None:
    with pytest.raises(UpdateRejectedError, match=problem):
        TrainReply.from_records(reply.to_records(), n_sampled=n_sampled)


def test_malformed_records_are_refused_by_name() -> None:
    with pytest.raises(UpdateRejectedError, match="malformed train reply"):
        TrainReply.from_records(RecordDict({"stats": MetricRecord({"count": 1})}), n_sampled=1)
    content = TrainReply(np.zeros(2), 1, 0).to_records()
    content["stats"] = MetricRecord({"count": 1.5, "unclipped-count": 0})
    with pytest.raises(UpdateRejectedError, match="'count' is not an integer"):
        TrainReply.from_records(content, n_sampled=1)
    config = SETTINGS.to_config()
    del config["clip-norm"]
    with pytest.raises(UpdateRejectedError, match="round settings without 'clip-norm'"):
        RoundSettings.from_config(config)
    with pytest.raises(UpdateRejectedError, match="'round' is not a number"):
        RoundSettings.from_config(ConfigRecord({**SETTINGS.to_config(), "round": "4"}))
    with pytest.raises(UpdateRejectedError, match="global parameters"):
        EvaluateRequest.from_records(
            RecordDict({"evaluate": ConfigRecord({"stage": "valid", "max-users": 3})})
        )


def test_evaluation_and_population_messages_read_back_as_sent() -> None:
    request = EvaluateRequest(np.ones(3, np.float32), "valid", 2000)
    read = EvaluateRequest.from_records(request.to_records())
    assert (read.stage, read.max_users) == ("valid", 2000) and read.params.tolist() == [1.0, 1.0, 1.0]
    reply = EvaluateReply(1.5, 3.0, 10.0)
    assert EvaluateReply.from_records(reply.to_records()) == reply
    population = PopulationReply(n_users=11_166, partition_id=1)
    assert PopulationReply.from_records(population.to_records()) == population


def test_start_check_messages_read_back_as_sent() -> None:
    request = StartCheckRequest(np.ones(3, np.float32), np.zeros(3, np.float32), np.array([0, 4]), 10.0)
    read = StartCheckRequest.from_records(request.to_records())
    assert read.trained.tolist() == [1.0] * 3 and read.start.tolist() == [0.0] * 3
    assert read.slots.tolist() == [0, 4] and read.noise_multiplier == 10.0
    reply = StartCheckReply(-1.25, 3)
    assert StartCheckReply.from_records(reply.to_records(), n_sampled=3) == reply


@pytest.mark.parametrize(
    ("reply", "n_sampled", "problem"),
    [
        (StartCheckReply(0.5, 2), 3, "3 were sampled"),
        (StartCheckReply(2.5, 2), 2, "not a sum of 2 gains"),  # more than one per user
        (StartCheckReply(-2.5, 2), 2, "not a sum of 2 gains"),
        (StartCheckReply(float("nan"), 2), 2, "not a sum of 2 gains"),
    ],
)
def test_start_check_replies_that_cannot_be_sums_of_gains_are_refused(
    reply: StartCheckReply, n_sampled: int, problem: str
) -> None:
    with pytest.raises(UpdateRejectedError, match=problem):
        StartCheckReply.from_records(reply.to_records(), n_sampled=n_sampled)


def test_a_start_check_request_without_its_start_parameters_is_refused() -> None:
    content = StartCheckRequest(
        np.ones(3, np.float32), np.zeros(3, np.float32), np.array([0]), 1.0
    ).to_records()
    del content["start"]
    with pytest.raises(UpdateRejectedError, match="start check message without 'start'"):
        StartCheckRequest.from_records(content)
