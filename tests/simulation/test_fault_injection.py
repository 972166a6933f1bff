"""The fault plan's draws and the replies it corrupts (simulation/fault_injection.py), without Flower."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from shared.errors import ConfigError
from shared.messages import REPLY_CHECK, ReplyCheck
from simulation.fault_injection import FAULTS, FaultPlan, corrupt


def honest(round_number: int, nonce: str) -> RecordDict:
    return RecordDict(
        {
            "update": ArrayRecord({"sum": Array(np.full(4, 0.1, np.float32))}),
            "stats": MetricRecord({"count": 2, "unclipped-count": 0, "refused-count": 0}),
            REPLY_CHECK: ReplyCheck("r", round_number, nonce).to_config(),
        }
    )


def test_device_dropout_drops_the_fraction_on_average_and_is_reproducible() -> None:
    plan = FaultPlan(seed=3, device_dropout=0.3)
    slots = np.arange(10)
    kept = [plan.kept_slots(slots, r, 0).size for r in range(1, 2001)]
    assert np.mean(kept) == pytest.approx(7.0, abs=0.05)
    np.testing.assert_array_equal(plan.kept_slots(slots, 5, 1), plan.kept_slots(slots, 5, 1))


def test_node_dropout_and_malice_pick_the_fraction_of_nodes() -> None:
    plan = FaultPlan(seed=1, node_dropout=0.3, node_dropout_stages=("unmask",), malicious_fraction=0.05)
    drops = [sum(plan.node_drops("unmask", r, p, 10) for p in range(10)) for r in range(1, 1001)]
    assert np.mean(drops) == pytest.approx(3.0, abs=0.05)
    assert not any(plan.node_drops("keys", 1, p, 10) for p in range(10))
    assert all(sum(plan.fault(r, p, 10) is not None for p in range(10)) == 1 for r in range(1, 50))
    with pytest.raises(ConfigError):
        FaultPlan(device_dropout=1.5)


@pytest.mark.parametrize("fault", FAULTS)
def test_every_corrupted_reply_fails_the_check_its_fault_targets(fault: str) -> None:
    check = ReplyCheck("r", 2, "now")
    bad = corrupt(honest(2, "now"), fault, previous=honest(1, "before"))  # type: ignore[arg-type]
    update = bad.array_records["update"]["sum"].numpy()
    if fault == "nan":
        assert not np.isfinite(update).all()
    elif fault == "huge_norm":
        assert np.linalg.norm(update) > 1e5
    elif fault == "wrong_shape":
        assert update.shape == (3,)
    elif fault == "duplicate":
        assert "fault-duplicate" in bad.config_records
    else:
        with pytest.raises(Exception, match="another run or round" if fault == "old_round" else "replayed"):
            check.check(bad)
    assert isinstance(bad[REPLY_CHECK], ConfigRecord)
