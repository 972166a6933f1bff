"""The accountant benchmark does a run's per-round accounting and ends where the accountant itself does."""

from __future__ import annotations

import pytest

from shared.privacy.accounting import RoundEvent, default_delta, pld_epsilon
from simulation.benchmarks import bench_accountant


def test_round_costs_compose_one_more_round_each_round() -> None:
    """One row a round, each timing a round that recorded one more event: the epsilon after round k is the
    accountant's for k rounds (a benchmark that left out `record` would time cache hits on one round)."""
    rows = bench_accountant.round_costs(rounds=5, sample_rate=0.05, noise_multiplier=1.0, delta=1e-6)
    event = RoundEvent(sample_rate=0.05, noise_multiplier=1.0)
    expected = [pld_epsilon([event] * k, delta=1e-6) for k in range(1, 6)]
    assert [row.epsilon for row in rows] == expected
    assert expected == sorted(set(expected))  # rising: each row is a different composition


@pytest.mark.integration
def test_main_prints_the_totals(capsys: pytest.CaptureFixture[str]) -> None:
    bench_accountant.main(["--rounds", "10", "--population", "3000"])
    out = capsys.readouterr().out
    assert "10 rounds:" in out and "ms a round" in out and "caches cleared" in out
    events = [RoundEvent(sample_rate=0.05, noise_multiplier=0.955)] * 10
    assert f"after 10 rounds: {pld_epsilon(events, delta=default_delta(3000)):.4f} (PLD)" in out


def test_cold_spent_recomputes_the_same_epsilon() -> None:
    """Clearing the caches must not change what the accountant answers afterwards."""
    events = [RoundEvent(sample_rate=0.05, noise_multiplier=1.0)] * 30
    before = pld_epsilon(events, delta=1e-6)
    bench_accountant.cold_spent(rounds=30, sample_rate=0.05, noise_multiplier=1.0, delta=1e-6)
    assert pld_epsilon(events, delta=1e-6) == before
