"""The pieces of batched local training: examples, chunk index tensors, chunk plans, scores (the clipped
sums are shared.privacy.mechanism.UserClipping's: tests/shared/privacy/test_privacy_clipping.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from local_toy import MODEL, ROWS, random_model, sequences

from client.training.local_batch import UserExamples, build_chunk, draw_negatives, plan_chunks, trim_padding
from client.training.local_loss import negative_scores
from shared.errors import ConfigError
from shared.model import HistoryBatch, gather_histories
from shared.model.examples import training_rows

torch.set_num_threads(1)


@pytest.mark.parametrize("max_examples", [1, 3, 50])
def test_each_user_trains_on_its_most_recent_training_rows(max_examples: int) -> None:
    seqs = sequences(ROWS)
    examples = UserExamples(seqs, max_examples=max_examples)
    users, rows = training_rows(seqs)
    for user in range(seqs.n_users):
        expected = rows[users == user][-max_examples:]
        owner, got = examples.rows_of(np.array([user]))
        np.testing.assert_array_equal(got, expected)
        assert examples.count(np.array([user]))[0] == expected.size == owner.size
    owner, got = examples.rows_of(np.array([5, 2, 9]))
    np.testing.assert_array_equal(got, np.concatenate([rows[users == u][-max_examples:] for u in (5, 2, 9)]))
    np.testing.assert_array_equal(owner, np.repeat([0, 1, 2], examples.count(np.array([5, 2, 9]))))


def test_chunk_indices_point_at_each_examples_items() -> None:
    seqs = sequences(ROWS)
    examples = UserExamples(seqs, max_examples=4)
    users = np.array([7, 2, 13, 3])
    negatives = torch.tensor([0, 5, 5, 9, 17, 3, 21, 9])
    chunk = build_chunk(examples, users, negatives, max_history=MODEL.max_history)
    for b, user in enumerate(users):
        _, rows = examples.rows_of(np.array([user]))
        batch = gather_histories(
            seqs, np.full(rows.size, user), rows, seqs.timestamps[rows], MODEL.max_history
        )
        items = chunk.items[b].numpy()
        assert np.all(np.diff(np.unique(items)) > 0)
        np.testing.assert_allclose(chunk.weight[b, : rows.size].numpy(), 1 / rows.size)
        assert not chunk.weight[b, rows.size :].any()
        width = chunk.events.shape[-1]  # leading slots that are padding in every history are cut
        for m, row in enumerate(rows):
            assert not batch.events[m, : MODEL.max_history - width].any()
            valid = batch.items[m, -width:] >= 0
            got = items[chunk.history[b, m].numpy()][valid]
            np.testing.assert_array_equal(got, batch.items[m, -width:][valid])
            np.testing.assert_array_equal(chunk.events[b, m].numpy(), batch.events[m, -width:])
            assert items[chunk.positive[b, m]] == seqs.items[row]
            touched = set(batch.items[m][valid]) | {seqs.items[row]}
            expected = [int(n) in touched for n in negatives]
            assert chunk.exclude[b, m].tolist() == expected


def histories(rows: list[list[int]], ends_from_last: int = 0) -> HistoryBatch:
    """The toy users' `rows` as full-width histories, each ending `ends_from_last` rows before its end."""
    seqs = sequences(rows)
    ends = seqs.offsets[1:] - ends_from_last
    return gather_histories(
        seqs, np.arange(len(rows)), ends, seqs.timestamps[ends - 1] + 60, MODEL.max_history
    )


def test_trimmed_histories_give_the_same_user_vectors_and_gradients() -> None:
    model = random_model()
    batch = histories([[1, 2], [4], [6, 7]])  # at most 2 of max_history = 4 slots used
    trimmed = trim_padding(batch)
    assert trimmed.items.shape == (3, 2) and MODEL.max_history == 4
    np.testing.assert_array_equal(trimmed.items, batch.items[:, -2:])
    weights = torch.randn(3, model.items.text.shape[1], generator=torch.Generator().manual_seed(0))
    results = []
    for one in (batch, trimmed):
        model.zero_grad()
        users = model.user_vectors(one)
        (users * weights).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((users.detach(), grads))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-5, atol=1e-6)
    assert results[1][1].keys() == results[0][1].keys() and "users.position_emb" in results[0][1]
    for name, gradient in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], gradient, rtol=1e-4, atol=1e-6, msg=name)


def test_histories_are_kept_whole_when_one_is_empty_or_none_is_padded() -> None:
    with_empty = histories([[1, 2], [4]], ends_from_last=1)  # the second history is empty
    assert not (with_empty.items[1] >= 0).any()
    assert trim_padding(with_empty).items.shape == with_empty.items.shape
    full = histories([[1, 2, 3, 5, 8], [4]])
    assert trim_padding(full).items.shape == full.items.shape


@settings(max_examples=50, deadline=None)
@given(counts=st.lists(st.integers(1, 40), min_size=0, max_size=80), max_users=st.integers(1, 16))
def test_chunk_plans_cover_every_user_once_in_runs_no_longer_than_allowed(
    counts: list[int], max_users: int
) -> None:
    ordered = np.sort(np.array(counts, dtype=np.int64))
    plan = plan_chunks(ordered, max_users=max_users)
    covered = [i for part in plan for i in range(ordered.size)[part]]
    assert covered == list(range(ordered.size))
    assert all(0 < part.stop - part.start <= max_users for part in plan)


def test_chunk_plans_separate_very_active_users() -> None:
    counts = np.array([1] * 60 + [32] * 4)
    plan = plan_chunks(counts, max_users=64)
    assert [(p.start, p.stop) for p in plan] == [(0, 60), (60, 64)]


@pytest.mark.parametrize(("item_id_residual", "popularity"), [(False, False), (True, False), (False, True)])
def test_negative_scores_equal_the_models_scores(item_id_residual: bool, popularity: bool) -> None:
    model = random_model(item_id_residual=item_id_residual, popularity=popularity)
    users = torch.nn.functional.normalize(torch.randn(5, model.items.text.shape[1]), dim=-1)
    negatives = torch.tensor([3, 3, 0, 11, 25])
    vectors, bias = model.items(negatives)
    with torch.no_grad():
        expected = model.scores(users, vectors, bias)
        got = negative_scores(model, users * model.temperature(), negatives)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_negatives_need_an_allowed_item() -> None:
    with pytest.raises(ConfigError):
        draw_negatives(np.array([], dtype=np.int64), 4, round_seed=0)
