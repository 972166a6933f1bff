"""Test tiers. Every test is `unit` unless its module or itself is marked `integration` (a real Flower run, a
real server or a subprocess, or seconds of compute), `browser` (headless chromium) or `deployment` (a
SuperLink with SuperNodes). `pytest -m unit` is the fast tier for daily work (scripts/test_fast.sh); the full
suite (scripts/test.sh, CI) runs every tier."""

from __future__ import annotations

import pytest
from flwr.supercore.task_identity import TaskIdentity

SLOW_TIERS = ("integration", "browser", "deployment")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if not any(item.get_closest_marker(tier) for tier in SLOW_TIERS):
            item.add_marker(pytest.mark.unit)


@pytest.fixture
def flower_task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower's Message needs a run id, set by the app's process outside tests (tests that build messages in
    process use this with `pytest.mark.usefixtures`)."""
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
