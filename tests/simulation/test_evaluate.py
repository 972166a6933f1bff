"""Tests of the evaluation harness: metrics by hand, masking, ties, slices, batching, bad scorers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from toy import toy_dataset

from shared.config import EvalConfig
from shared.data.split import Split, Stage, leave_one_out
from shared.errors import ConfigError, DataError
from simulation.evaluate import (
    Scorer,
    bucket_labels,
    evaluate,
    history_mask,
    metrics_from_ranks,
    target_ranks,
    top_k_items,
)


def toy_split(sequences: list[list[int]], n_items: int, *, cold: tuple[int, ...] = ()) -> Split:
    """A split of users with the given item sequences (row order), with `cold` items held out."""
    split = leave_one_out(toy_dataset(sequences, n_items))
    if not cold:
        return split
    mask = np.zeros(n_items, bool)
    mask[list(cold)] = True
    keep = ~mask[split.train.items]
    lengths = np.bincount(
        np.repeat(np.arange(split.train.n_users), split.train.lengths())[keep], minlength=len(sequences)
    )
    offsets = np.concatenate(([0], np.cumsum(lengths)))
    train = type(split.train)(
        offsets, split.train.items[keep], split.train.events[keep], split.train.timestamps[keep]
    )
    return Split(
        split.dataset, split.full, train, split.eval_users, split.valid_target, split.test_target, mask
    )


def fixed_scorer(table: np.ndarray) -> Scorer:
    """A scorer returning row `u` of `table` for user u, whatever the stage."""

    def score(users: np.ndarray, stage: Stage) -> np.ndarray:
        return table[users]

    return score


CONFIG = EvalConfig(batch_size=2, activity_buckets=(1, 3))


# --- metric functions by hand -------------------------------------------------------------------


def test_ndcg_and_hits_at_hand_computed_ranks() -> None:
    ranks = np.array([0, 2, 10, 19, 20])
    m = metrics_from_ranks(ranks, np.full((5, 10), -1), n_items=100)
    assert m.n_users == 5
    assert m.hr_10 == pytest.approx(2 / 5)
    assert m.ndcg_10 == pytest.approx((1.0 + 1.0 / math.log2(4)) / 5)  # rank 10 counts 0 for NDCG@10
    assert m.recall_20 == pytest.approx(4 / 5)  # ranks 10 and 19 count for Recall@20, rank 20 does not
    assert m.coverage_10 == 0.0


def test_empty_slice_is_nan_and_none_in_json() -> None:
    m = metrics_from_ranks(np.array([], np.int64), np.zeros((0, 10), np.int64), n_items=5)
    assert m.n_users == 0 and math.isnan(m.ndcg_10)
    assert m.to_dict()["ndcg_10"] is None


def test_coverage_counts_distinct_items_in_any_top10() -> None:
    top = np.full((2, 10), -1)
    top[0, :3] = [0, 1, 2]
    top[1, :3] = [2, 3, 4]
    assert metrics_from_ranks(np.array([0, 0]), top, n_items=10).coverage_10 == pytest.approx(5 / 10)


def test_rank_counts_better_scores_and_ties_by_index() -> None:
    scores = np.array([[0.5, 0.9, 0.5, 0.1, 0.5]], np.float32)
    none = np.zeros_like(scores, dtype=bool)
    assert target_ranks(scores, np.array([1]), none)[0] == 0
    assert target_ranks(scores, np.array([0]), none)[0] == 1  # behind item 1 only
    assert target_ranks(scores, np.array([2]), none)[0] == 2  # tie with 0 (smaller index) counts, 4 does not
    assert target_ranks(scores, np.array([4]), none)[0] == 3
    assert target_ranks(scores, np.array([3]), none)[0] == 4


def test_masked_items_do_not_count_and_target_stays() -> None:
    scores = np.array([[0.9, 0.8, 0.7, 0.6]], np.float32)
    masked = np.array([[True, False, False, True]])
    assert target_ranks(scores, np.array([2]), masked)[0] == 1  # only item 1 is better and unmasked
    assert target_ranks(scores, np.array([3]), masked)[0] == 2  # masked target is still ranked


def test_top_k_breaks_ties_by_index_and_skips_masked() -> None:
    scores = np.array([[1.0, 3.0, 2.0, 2.0, 2.0, 0.0], [5.0, 4.0, 3.0, 2.0, 1.0, 0.0]], np.float32)
    masked = np.zeros_like(scores, dtype=bool)
    masked[1, 0] = True
    top = top_k_items(scores, masked, k=3)
    assert top.tolist() == [[1, 2, 3], [1, 2, 3]]


def test_top_k_pads_when_fewer_candidates_than_k() -> None:
    scores = np.array([[1.0, -np.inf, 2.0]], np.float32)
    masked = np.array([[False, False, True]])
    assert top_k_items(scores, masked, k=4).tolist() == [[0, 1, -1, -1]]


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_rank_and_top_k_agree_with_a_stable_sort(data: st.DataObject) -> None:
    n = data.draw(st.integers(2, 15))
    values = st.lists(st.sampled_from([0.0, 0.5, 1.0, 2.0, -np.inf]), min_size=n, max_size=n)
    scores = np.array([data.draw(values)], np.float32)
    masked = np.array([data.draw(st.lists(st.booleans(), min_size=n, max_size=n))])
    target = data.draw(st.integers(0, n - 1))
    masked[0, target] = False
    order = [i for i in np.argsort(-scores[0], kind="stable") if not masked[0, i]]
    assert target_ranks(scores, np.array([target]), masked)[0] == order.index(target)
    k = data.draw(st.integers(1, n))
    expected = sorted(order[:k]) + [-1] * (k - min(k, len(order)))
    assert top_k_items(scores, masked, k=k)[0].tolist() == expected


def test_bucket_labels() -> None:
    assert bucket_labels((5, 10, 20)) == ["<=5", "6-10", "11-20", ">20"]
    assert bucket_labels((1, 2)) == ["<=1", "2", ">2"]


# --- the harness on a tiny split ------------------------------------------------------------------

# user 0: train [0, 1], valid 2, test 3      user 1: train [4], valid 5, test 0
# user 2: train [1, 2, 3, 4], valid 5, test 1 (the test item is also in the history)
# user 3: two rows only, never evaluated
SEQUENCES = [[0, 1, 2, 3], [4, 5, 0], [1, 2, 3, 4, 5, 1], [6, 7]]


def test_history_mask_covers_rows_before_the_target() -> None:
    split = toy_split(SEQUENCES, n_items=8)
    users = np.array([0, 1, 2])
    valid = history_mask(split, users, "valid")
    test = history_mask(split, users, "test")
    assert [np.flatnonzero(r).tolist() for r in valid] == [[0, 1], [4], [1, 2, 3, 4]]
    assert [np.flatnonzero(r).tolist() for r in test] == [[0, 1, 2], [4, 5], [1, 2, 3, 4, 5]]


def test_evaluate_masks_history_and_ranks_by_hand() -> None:
    split = toy_split(SEQUENCES, n_items=8)
    table = np.tile(np.arange(8, 0, -1, dtype=np.float32), (4, 1))  # item 0 best, item 7 worst
    keep = EvalConfig(
        batch_size=CONFIG.batch_size, activity_buckets=CONFIG.activity_buckets, repeat_targets="keep"
    )
    result = evaluate(split, fixed_scorer(table), stage="test", config=keep)
    # user 0 target 3, masked {0,1,2}: rank 0.  user 1 target 0: rank 0.
    # user 2 target 1, masked {2,3,4,5} (1 itself stays a candidate): only item 0 is better: rank 1.
    assert result.users.tolist() == [0, 1, 2]
    assert result.ranks.tolist() == [0, 0, 1]
    assert result.n_target_in_history == 1
    assert result.overall.ndcg_10 == pytest.approx((1 + 1 + 1 / math.log2(3)) / 3)
    assert result.top10[0].tolist() == [3, 4, 5, 6, 7, -1, -1, -1, -1, -1]
    assert result.top10[2].tolist() == [0, 1, 6, 7, -1, -1, -1, -1, -1, -1]  # the target 1 is a candidate


def test_repeat_targets_are_excluded_by_default() -> None:
    split = toy_split(SEQUENCES, n_items=8)
    table = np.tile(np.arange(8, 0, -1, dtype=np.float32), (4, 1))
    result = evaluate(split, fixed_scorer(table), stage="test", config=CONFIG)
    # user 2's test target 1 occurs earlier in their history: left out, and counted
    assert result.users.tolist() == [0, 1]
    assert result.ranks.tolist() == [0, 0]
    assert result.n_target_in_history == 1
    assert result.overall.n_users == 2


def test_cold_slice_and_activity_buckets_by_hand() -> None:
    split = toy_split(SEQUENCES, n_items=8, cold=(0, 3))
    table = np.tile(np.arange(8, 0, -1, dtype=np.float32), (4, 1))
    keep = EvalConfig(
        batch_size=CONFIG.batch_size, activity_buckets=CONFIG.activity_buckets, repeat_targets="keep"
    )
    result = evaluate(split, fixed_scorer(table), stage="test", config=keep)
    # training rows with items 0 and 3 removed: user 0 [1] -> 1 row, user 1 [4] -> 1, user 2 [1,2,4] -> 3
    assert split.train.lengths()[:3].tolist() == [1, 1, 3]
    assert result.cold.n_users == 2  # users 0 and 1 have cold test targets (3 and 0)
    assert result.cold.ndcg_10 == pytest.approx(1.0)
    assert {k: m.n_users for k, m in result.buckets.items()} == {"<=1": 2, "2-3": 1, ">3": 0}
    assert result.buckets["2-3"].hr_10 == 1.0 and result.buckets["2-3"].ndcg_10 == pytest.approx(
        1 / math.log2(3)
    )
    assert result.to_dict()["buckets"][">3"]["hr_10"] is None
    assert "| cold items | 2 |" in result.to_markdown()


def test_batch_size_does_not_change_results() -> None:
    rng = np.random.default_rng(0)
    sequences = [list(rng.integers(0, 30, size=rng.integers(3, 9))) for _ in range(50)]
    split = toy_split(sequences, n_items=30)
    table = rng.integers(0, 4, size=(50, 30)).astype(np.float32)  # many ties
    results = [
        evaluate(split, fixed_scorer(table), stage="valid", config=EvalConfig(batch_size=b))
        for b in (1, 7, 64)
    ]
    for other in results[1:]:
        assert np.array_equal(other.ranks, results[0].ranks)
        assert np.array_equal(other.top10, results[0].top10)
        assert other.to_dict() | {"eval_time_s": 0} == results[0].to_dict() | {"eval_time_s": 0}


def test_users_subset_and_bad_users() -> None:
    split = toy_split(SEQUENCES, n_items=8)
    table = np.zeros((4, 8), np.float32)
    scorer = fixed_scorer(table)
    result = evaluate(split, scorer, stage="valid", config=CONFIG, users=np.array([2]))
    assert result.overall.n_users == 1
    for bad in (np.array([3]), np.array([0, 0]), np.array([9]), np.array([0.5])):
        with pytest.raises(ConfigError):
            evaluate(split, scorer, stage="valid", config=CONFIG, users=bad)


@pytest.mark.parametrize(
    "bad",
    [np.zeros((4, 7), np.float32), np.full((4, 8), np.nan, np.float32), np.zeros((4, 8), np.int64), "x"],
)
def test_refuses_bad_scorer_output(bad: object) -> None:
    split = toy_split(SEQUENCES, n_items=8)

    def scorer(users: np.ndarray, stage: Stage) -> object:
        return bad[users] if isinstance(bad, np.ndarray) else bad

    with pytest.raises(DataError, match="scorer returned"):
        evaluate(split, scorer, stage="test", config=CONFIG)  # type: ignore[arg-type]
