"""The canary audit trains with the real Coordinator: a mutant of the Coordinator is what it catches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from server.rounds.coordinator import Coordinator
from server.rounds.update_transport import RoundRequest
from server.strategy import UserLevelDPAggregator
from shared.config import FedhomeConfig, with_overrides
from shared.messages import RoundSettings
from simulation.canary_audit import CANARY_NODE, USERS_NODE, Canaries, CanaryNodes, run_canary_audit
from simulation.canary_models import linear_setup


def test_canary_nodes_send_the_sampled_users_and_canaries_clipped_sum() -> None:
    setup = linear_setup(n_users=50, dim=40, seed=0)
    canaries = Canaries.draw(16, 40, seed=1)
    nodes = CanaryNodes(setup.trainer, canaries)
    rows = nodes.inserted_rows[:3]
    settings = RoundSettings(
        round=1, run_id="r", sample_rate=0.1, noise_multiplier=1.0, delta=1e-3, participation_cap=0,
        clip_norm=0.5, local_noise_multiplier=0.0, round_seed=7, noise_seed=-1,
    )  # fmt: skip
    request = RoundRequest(
        1, {USERS_NODE: np.array([2, 5]), CANARY_NODE: np.arange(3)}, setup.start, settings, 0.5
    )
    replies = nodes.collect(None, request).replies
    users = setup.trainer.clipped_sum(setup.start, np.array([2, 5]), round_seed=7, clip_norm=0.5)
    expected = users.total + 0.5 * canaries.directions[rows].sum(axis=0)  # each canary clipped to C
    np.testing.assert_allclose(replies.update_sum, expected, rtol=1e-4, atol=1e-5)
    assert replies.count == 5 and replies.unclipped_count == users.unclipped_count
    assert nodes.participations == 3


@pytest.mark.integration
def test_a_coordinator_whose_aggregator_adds_a_tenth_of_the_noise_fails_the_audit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A mutant inside the Coordinator (its aggregator applies z / 10 while it accounts z), audited with no
    --break: the audit runs the Coordinator, so it is caught."""

    def mutant(self: Coordinator) -> UserLevelDPAggregator:
        return UserLevelDPAggregator(
            population=self.population.n_users,
            sample_rate=self.plan.sample_rate,
            noise_multiplier=self.plan.noise_multiplier / 10,
            clip_norm=self.config.privacy.clip_norm,
            mode=self.config.privacy.mode,
            noise=self.noise,
        )

    config: FedhomeConfig = with_overrides(
        FedhomeConfig(),
        {
            "federated.rounds": "50",
            "federated.server_optimizer": "sgd",
            "federated.server_learning_rate": "1",
        },
    )
    setup = linear_setup(n_users=2000, dim=5000, seed=0)
    audit = lambda: run_canary_audit(setup, config, canaries=1200, noise_multiplier=1.43)  # noqa: E731
    assert audit().verdict == "OK"
    monkeypatch.setattr(Coordinator, "make_aggregator", mutant)
    result = audit()
    assert result.verdict == "FAILED" and result.final_model.one_run_lower_bound > result.analytic_epsilon


def test_the_audit_leaves_no_run_folder_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config: FedhomeConfig = with_overrides(FedhomeConfig(), {"federated.rounds": "3"})
    setup = linear_setup(n_users=300, dim=50, seed=0)
    result = run_canary_audit(setup, config, canaries=16, noise_multiplier=1.0, require_power=False, seed=3)
    assert result.rounds == 3 and result.verdict == "CANNOT TEST"
    assert list(tmp_path.iterdir()) == []
