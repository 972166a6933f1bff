"""A ServerApp SIGKILLed mid-run (its whole process group) and resumed with the same command: the ledger
verifies, rounds 1..R appear once each, epsilon is the accountant's for R rounds and within the target, and
every process either run started is gone (simulation/benchmarks/bench_crash.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from simulation.benchmarks.bench_crash import crash_and_resume

pytestmark = pytest.mark.integration

ROUNDS = 4


def test_a_run_killed_mid_round_resumes_with_no_round_lost_or_repeated_and_the_same_epsilon(
    tmp_path: Path,
) -> None:
    result = crash_and_resume(tmp_path, rounds=ROUNDS, kill_after=2)
    assert 2 <= result.ledger_round_after_kill < ROUNDS  # killed before the run could finish
    assert result.processes_killed > 0 and result.processes_left == []
    assert result.ledger_rounds == list(range(1, ROUNDS + 1))
    assert result.rounds_lost == [] and result.rounds_duplicated == []
    assert result.ledger_verifies, result.verify_problems
    assert result.epsilon_at_kill < result.epsilon_final
    assert result.epsilon_final == pytest.approx(result.epsilon_accountant, rel=1e-9)
    assert result.epsilon_final <= result.target_epsilon
    assert result.final_model
