"""Test tiers. Every test is `unit` unless its module or itself is marked `integration` (a real Flower run, a
real server or a subprocess, or seconds of compute), `browser` (headless chromium) or `deployment` (a
SuperLink with SuperNodes). `pytest -m unit` is the fast tier for daily work (scripts/test_fast.sh); the full
suite (scripts/test.sh, CI) runs every tier."""

from __future__ import annotations

import pytest

SLOW_TIERS = ("integration", "browser", "deployment")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if not any(item.get_closest_marker(tier) for tier in SLOW_TIERS):
            item.add_marker(pytest.mark.unit)
