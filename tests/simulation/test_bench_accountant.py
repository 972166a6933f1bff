"""The accountant benchmark does a run's per-round accounting and ends where the accountant itself does."""

from __future__ import annotations

import pytest

from shared.privacy.accounting import RoundEvent, pld_epsilon
from simulation.benchmarks import bench_accountant


def test_round_costs_time_every_round() -> None:
    costs = bench_accountant.round_costs(rounds=5, sample_rate=0.05, noise_multiplier=1.0, delta=1e-6)
    assert len(costs) == 5 and all(c > 0 for c in costs)


@pytest.mark.integration
def test_main_prints_the_totals(capsys: pytest.CaptureFixture[str]) -> None:
    bench_accountant.main(["--rounds", "10", "--population", "3000"])
    out = capsys.readouterr().out
    assert "10 rounds:" in out and "ms a round" in out and "caches cleared" in out


def test_cold_spent_recomputes_the_same_epsilon() -> None:
    """Clearing the caches must not change what the accountant answers afterwards."""
    events = [RoundEvent(sample_rate=0.05, noise_multiplier=1.0)] * 30
    before = pld_epsilon(events, delta=1e-6)
    bench_accountant.cold_spent(rounds=30, sample_rate=0.05, noise_multiplier=1.0, delta=1e-6)
    assert pld_epsilon(events, delta=1e-6) == before
