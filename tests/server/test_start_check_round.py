"""The start check inside a run, without Flower (nodes faked): which model ships, what the ledger records and
accounts, the budget, resume and a kill before the ledger entry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from coordinator_toy import POPULATION, drop_last_lines
from start_check_toy import INITIAL, Z_S, FakeGainQuery, config_of, run

from server.audit.verify import verify_ledger
from server.rounds.privacy_plan import PrivacyPlan
from server.trending.trending_query import TrendingReplies
from server.trending.trending_round import TrendingSchedule
from shared.model.params import params_sha256
from shared.privacy.accounting import RoundEvent, pld_epsilon
from shared.signing import generate_private_key

TRAIN = RoundEvent(sample_rate=0.5, noise_multiplier=1.0)
CHECK = RoundEvent(sample_rate=1.0, noise_multiplier=Z_S)


def test_a_trained_model_that_loses_ships_the_start_and_the_ledger_says_so(tmp_path: Path) -> None:
    key, query = generate_private_key(), FakeGainQuery(gain=-1.0)
    coordinator, check = run(config_of(tmp_path / "run", 2), key, query)
    trained = coordinator.state.params
    assert not np.array_equal(trained, INITIAL)  # training moved the model
    assert check.shipped == "start" and np.array_equal(check.shipped_params(trained), INITIAL)
    (call,) = query.calls  # the nodes were sent the trained and the start parameters, every user (q_s = 1)
    assert np.array_equal(call["trained"], trained) and np.array_equal(call["start"], INITIAL)
    assert call["noise_multiplier"] == Z_S and sum(len(s) for s in call["assignment"].values()) == 10
    entries = coordinator.ledger.entries()
    assert [e.get("kind") for e in entries] == [None, None, "start_check"]
    entry = entries[-1]
    assert entry["after_round"] == 2 and entry["decision"] == "start" and entry["mode"] == "central"
    assert entry["noise_std"] == Z_S and entry["noised_gain_sum"] < 0 and entry["realised_cohort"] == 10
    assert entry["model_sha256_start"] == params_sha256(INITIAL) == entries[0]["model_sha256_before"]
    assert entry["model_sha256_trained"] == params_sha256(trained) == entries[1]["model_sha256_after"]
    assert entry["model_sha256_shipped"] == entry["model_sha256_start"]
    expected = pld_epsilon([TRAIN, TRAIN, CHECK], delta=coordinator.plan.delta)
    assert coordinator.epsilon() == pytest.approx(expected, rel=1e-12)
    assert entry["user_epsilon"]["pld"] == pytest.approx(expected, rel=1e-12)
    assert expected > pld_epsilon([TRAIN, TRAIN], delta=coordinator.plan.delta) * 1.05  # the check costs
    report = verify_ledger(tmp_path / "run", key.public_key())
    assert report.ok, report.problems
    assert report.recomputed_epsilon == pytest.approx(expected, rel=2e-3)
    assert [row["decision"] for row in report.start_checks] == ["start"]
    summary = check.summary()
    assert summary["ran"] and summary["decision"] == "start" and summary["noise_std"] == Z_S


def test_a_trained_model_that_wins_ships_trained(tmp_path: Path) -> None:
    key = generate_private_key()
    coordinator, check = run(config_of(tmp_path / "run", 2), key, FakeGainQuery(gain=1.0))
    trained = coordinator.state.params
    assert check.shipped == "trained" and check.shipped_params(trained) is trained
    entry = coordinator.ledger.entries()[-1]
    assert entry["decision"] == "trained" and entry["model_sha256_shipped"] == params_sha256(trained)
    assert verify_ledger(tmp_path / "run", key.public_key()).ok


def test_the_margin_asks_for_more_than_a_positive_noised_sum(tmp_path: Path) -> None:
    """10 users gaining 0.1 each: a sum of 1, two noise stds (0.5); a margin of 4 stds ships the start."""
    key = generate_private_key()
    config = config_of(tmp_path / "run", 1, start_check__margin="4", start_check__noise_multiplier="0.5")
    coordinator, check = run(config, key, FakeGainQuery(gain=0.1))
    entry = coordinator.ledger.entries()[-1]
    assert entry["margin"] == 4.0 and 0 < entry["noised_gain_sum"] < 4 * 0.5 and check.shipped == "start"


def test_a_resumed_run_does_not_check_twice(tmp_path: Path) -> None:
    key, query = generate_private_key(), FakeGainQuery(gain=-1.0)
    config = config_of(tmp_path / "run", 2)
    first, _ = run(config, key, query)
    entries = first.ledger.entries()
    again, check = run(
        config, key, query
    )  # the run is resumed after its end (e.g. a kill before the summary)
    assert len(query.calls) == 1 and again.ledger.entries() == entries
    assert check.shipped == "start" and again.epsilon() == pytest.approx(first.epsilon(), rel=1e-12)


def test_a_check_killed_before_its_ledger_entry_is_restored_from_the_checkpoint(tmp_path: Path) -> None:
    key, query = generate_private_key(), FakeGainQuery(gain=-1.0)
    config = config_of(tmp_path / "run", 2)
    first, _ = run(config, key, query)
    entry = first.ledger.entries()[-1]
    drop_last_lines(tmp_path / "run" / "ledger.jsonl", 1)  # the check's entry never reached the ledger
    resumed, check = run(config, key, query)
    assert len(query.calls) == 1, "the check's accountant and entry were checkpointed: it must not rerun"
    assert resumed.ledger.entries()[-1] == entry and check.shipped == "start"
    assert resumed.epsilon() == pytest.approx(first.epsilon(), rel=1e-12)
    assert verify_ledger(tmp_path / "run", key.public_key()).ok


def test_more_rounds_after_a_check_check_again_after_the_new_last_round(tmp_path: Path) -> None:
    key, query = generate_private_key(), FakeGainQuery(gain=1.0)
    run(config_of(tmp_path / "run", 1), key, query)
    coordinator, check = run(config_of(tmp_path / "run", 2), key, query)
    kinds = [(e.get("round"), e.get("kind"), e.get("after_round")) for e in coordinator.ledger.entries()]
    assert kinds == [(1, None, None), (None, "start_check", 1), (2, None, None), (None, "start_check", 2)]
    expected = pld_epsilon([TRAIN, CHECK, TRAIN, CHECK], delta=coordinator.plan.delta)
    assert coordinator.epsilon() == pytest.approx(expected, rel=1e-12) and check.shipped == "trained"
    assert verify_ledger(tmp_path / "run", key.public_key()).ok


def test_a_check_over_budget_is_refused_and_the_trained_model_ships(tmp_path: Path) -> None:
    key, query = generate_private_key(), FakeGainQuery(gain=-1.0)
    config = config_of(tmp_path / "run", 2)
    budget = pld_epsilon([TRAIN, TRAIN], delta=PrivacyPlan.build(config, POPULATION.n_users).delta) * 1.01
    config = config_of(tmp_path / "run", 2, privacy__target_epsilon=str(budget))
    coordinator, check = run(config, key, query)
    assert [e.get("kind") for e in coordinator.ledger.entries()] == [None, None] and not query.calls
    assert check.shipped == "trained" and len(check.refused) == 1 and "past the budget" in check.refused[0]
    assert check.summary()["ran"] is False and check.summary()["refused"] == check.refused


def test_without_noise_the_check_runs_free_and_says_mode_none(tmp_path: Path) -> None:
    key = generate_private_key()
    config = config_of(tmp_path / "run", 1, privacy__mode="none", privacy__noise_multiplier="0")
    coordinator, check = run(config, key, FakeGainQuery(gain=-0.5))
    entry = coordinator.ledger.entries()[-1]
    assert entry["mode"] == "none" and entry["noise_multiplier"] == 0 and entry["noise_std"] == 0
    assert entry["noised_gain_sum"] == -5.0 and check.shipped == "start"
    assert verify_ledger(tmp_path / "run", key.public_key()).ok


def test_a_check_turned_off_does_not_run_and_the_summary_says_why(tmp_path: Path) -> None:
    key, query = generate_private_key(), FakeGainQuery(gain=-1.0)
    coordinator, check = run(config_of(tmp_path / "run", 1, start_check__enabled="off"), key, query)
    assert not query.calls and check.shipped == "trained" and len(coordinator.ledger.entries()) == 1
    assert check.summary()["enabled"] is False and "off" in check.summary()["note"]


def no_trending_counts(grid: Any, assignment: dict[int, np.ndarray], **settings: Any) -> TrendingReplies:
    count = sum(len(slots) for slots in assignment.values())
    return TrendingReplies(np.zeros(settings["n_items"]), count, 0, 0)


def test_the_final_trending_release_and_the_check_are_each_made_once_across_a_resume(tmp_path: Path) -> None:
    """Both act at the end (trending first); a kill after both, or between the two, repeats neither."""
    key, query = generate_private_key(), FakeGainQuery(gain=1.0)
    config = config_of(tmp_path / "run", 1, trending__final="true", trending__as_of_s="1000")

    def trending() -> TrendingSchedule:
        return TrendingSchedule(tmp_path / "run", n_items=4, query=no_trending_counts)

    first, _ = run(config, key, query, before=[trending()])
    kinds = [e.get("kind") for e in first.ledger.entries()]
    assert kinds == [None, "trending_counts", "start_check"]
    again, _ = run(config, key, query, before=[trending()])  # resumed after both: neither is made again
    assert [e.get("kind") for e in again.ledger.entries()] == kinds and len(query.calls) == 1
    drop_last_lines(tmp_path / "run" / "ledger.jsonl", 1)  # killed before the check's entry was appended
    resumed, check = run(config, key, query, before=[trending()])
    assert [e.get("kind") for e in resumed.ledger.entries()] == kinds and len(query.calls) == 1
    assert resumed.epsilon() == pytest.approx(first.epsilon(), rel=1e-12) and check.shipped == "trained"
    assert verify_ledger(tmp_path / "run", key.public_key()).ok
