"""The online loop at a tiny scale (2 days, 200 shoppers, every arm) and its click model."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from client.device.device_folder import events_path
from client.device.event_store import EventStore
from server.audit.audit_cli import main as audit_main
from server.audit.verify import verify_ledger
from shared.config import FedhomeConfig, OnlineConfig, SyntheticShopConfig, with_overrides
from shared.data.synthetic.catalogue import build_catalogue
from shared.data.synthetic.shop import generate_shop, shopper_tastes
from shared.errors import ConfigError
from shared.signing import generate_private_key, load_public_key
from simulation.click_model import ClickModel
from simulation.online_loop import (
    FederatedArm,
    OnlineResult,
    OnlineWorld,
    build_world,
    plan_day,
    run_online,
    write_outputs,
)
from simulation.sim_cli import build_parser, online_configs

pytestmark = pytest.mark.integration

TINY_ONLINE = {"days": "2", "shoppers": "200", "items": "200", "rounds_per_day": "2", "seed": "3"}
# a small model and the torch encoder (TINY_RUN's), so that the loop's nightly work takes seconds
TINY_BASE = {
    "data.synthetic.n_categories": "5",
    "encoder.backend": "torch",
    "encoder.device": "cpu",
    "model.dim": "16",
    "model.residual_rank": "8",
    "model.max_history": "8",
    "federated.n_negatives": "32",
    "federated.max_examples_per_user": "8",
}


def configs(cache: Path, **online: str) -> tuple[OnlineConfig, FedhomeConfig]:
    online_config: OnlineConfig = with_overrides(OnlineConfig(), {**TINY_ONLINE, **online})
    base: FedhomeConfig = with_overrides(FedhomeConfig(), {**TINY_BASE, "encoder.cache_dir": str(cache)})
    return online_config, base


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def world(cache: Path) -> OnlineWorld:
    return build_world(*configs(cache))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, cache: Path) -> tuple[OnlineResult, Path]:
    out = tmp_path_factory.mktemp("online")
    result = run_online(*configs(cache), out)
    write_outputs(result, out, command="test")
    return result, out


def rows_of(out: Path) -> list[dict[str, Any]]:
    with (out / "online.csv").open() as f:
        return list(csv.DictReader(f))


def test_the_loop_runs_every_arm_and_writes_its_outputs(run: tuple[OnlineResult, Path]) -> None:
    rows = rows_of(run[1])
    assert [(r["day"], r["arm"]) for r in rows] == [
        (str(d), arm) for d in range(2) for arm in ("popularity", "text", "federated", "central")
    ]
    for row in rows:
        assert int(row["visits"]) > 0 and int(row["impressions"]) > 0
        assert 0.0 <= float(row["ctr"]) <= 1.0 and 0.0 < float(row["coverage"]) <= 1.0
        assert int(row["carts"]) <= int(row["clicks"]) and int(row["purchases"]) <= int(row["carts"])
    assert sum(int(r["clicks"]) for r in rows) > 0
    for name in ("online.md", "online.png", "online.json"):
        assert (run[1] / name).stat().st_size > 0
    assert "| federated |" in (run[1] / "online.md").read_text()


def test_arms_share_their_shoppers_and_start_from_the_same_release(run: tuple[OnlineResult, Path]) -> None:
    day0 = [r for r in rows_of(run[1]) if r["day"] == "0"]
    assert len({r["visits"] for r in day0}) == 1  # the same visitors in every arm
    model_arms = [r for r in day0 if r["arm"] != "popularity"]  # day 0: all of them rank with the start
    assert len({(r["clicks"], r["coverage"], r["ild"]) for r in model_arms}) == 1


def test_downloads_count_the_files_that_changed(run: tuple[OnlineResult, Path]) -> None:
    rows = {(r["arm"], r["day"]): r for r in rows_of(run[1])}
    for arm in ("text", "federated", "central"):  # a first install: all but the files the device derives
        assert 0 < int(rows[arm, "0"]["download_bytes"]) < int(rows[arm, "0"]["release_bytes"])
    assert int(rows["text", "1"]["download_bytes"]) == 0  # the start never changes
    new_model = int(rows["federated", "1"]["download_bytes"])  # the model's files, not the catalogue's
    assert 0 < new_model < int(rows["federated", "0"]["download_bytes"]) and new_model < 2_000_000
    assert 0 < int(rows["popularity", "1"]["download_bytes"]) < 10_000  # the counts alone


def test_the_federated_arms_ledger_verifies_within_its_lifetime_budget(
    run: tuple[OnlineResult, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    result, _ = run
    folder = result.ledgers["federated"]
    public = folder / "ledger_public_key.pem"
    report = verify_ledger(folder, load_public_key(public))
    assert report.ok, report.problems
    assert report.entries == 2  # 1 night (after day 0; the last day's release would never be served) x 2
    plan = result.plans["federated"]
    assert plan["planned_rounds"] == 2 and plan["target_epsilon"] == 8.0
    assert (report.target_epsilon, report.planned_rounds) == (8.0, 2)  # the plan is in the signed entries
    assert report.claimed_epsilon is not None and report.claimed_epsilon <= 8.0 * (1 + 1e-9)
    assert report.claimed_epsilon > 0.5 * 8.0  # z was calibrated to spend it over the horizon
    assert audit_main(["verify", str(folder), "--public-key", str(public)]) == 0
    assert "OK" in capsys.readouterr().out


def test_a_round_past_the_horizon_is_refused(world: OnlineWorld, tmp_path: Path) -> None:
    small = dataclasses.replace(world, online=dataclasses.replace(world.online, days=2, rounds_per_day=1))
    arm = FederatedArm("federated", small, tmp_path / "federated", generate_private_key())
    arm.learn(0)
    spent = arm.epsilon()
    assert not arm.stopped and spent is not None and spent <= 8.0 * (1 + 1e-9)
    arm.learn(1)  # a second night: the lifetime budget covered one
    assert "budget" in arm.stopped and arm.coordinator.completed_rounds == 1
    assert arm.epsilon() == spent


def test_events_land_in_the_devices_event_stores(cache: Path, tmp_path: Path) -> None:
    online, base = configs(cache, days="1", shoppers="40", arms="text", event_store="sqlite")
    result = run_online(online, base, tmp_path)
    world = result.world
    plan = plan_day(world, 0)
    clicks = result.rows[0].page_clicks
    logged = 0
    for k, shopper in enumerate(plan.shoppers.tolist()):
        store = EventStore(events_path(tmp_path / "arms" / "text" / "devices" / f"device-{shopper:06d}"))
        today = [e for e in store.events() if e.timestamp >= world.start_s]
        store.close()
        assert set(plan.organic[k]) <= set(today)  # the organic browsing, then the page's answers
        logged += sum(1 for e in today if e.event == "view") - sum(e.event == "view" for e in plan.organic[k])
    assert logged == clicks > 0  # each click on the page is one view in the device's store


def test_the_day_plan_and_the_clicks_are_deterministic_under_a_seed(world: OnlineWorld) -> None:
    a, b = plan_day(world, 1), plan_day(world, 1)
    assert np.array_equal(a.shoppers, b.shoppers) and np.array_equal(a.uniforms, b.uniforms)
    assert a.organic == b.organic and np.array_equal(a.intent, b.intent)
    other = plan_day(dataclasses.replace(world, online=dataclasses.replace(world.online, seed=4)), 1)
    assert not np.array_equal(a.shoppers, other.shoppers)
    model = ClickModel(world.shop, world.tastes)
    m = a.shoppers.size
    cards = (np.repeat(a.shoppers, 8), np.tile(np.arange(8), m), np.repeat(a.intent, 8))
    place = (np.zeros(8 * m, dtype=np.int64), np.tile(np.arange(8), m))
    first = model.respond(*cards, *place, a.uniforms[:, :8].reshape(8 * m, 3))
    second = model.respond(*cards, *place, b.uniforms[:, :8].reshape(8 * m, 3))
    assert np.array_equal(first.click, second.click) and np.array_equal(first.purchase, second.purchase)
    coins = np.random.default_rng(1).random((8 * m, 3))  # other coins: other answers
    assert not np.array_equal(first.click, model.respond(*cards, *place, coins).click)


def test_clicks_fall_with_position_at_equal_attractiveness(world: OnlineWorld) -> None:
    model = ClickModel(world.shop, world.tastes)
    rng = np.random.default_rng(0)
    n, positions = 40_000, 8
    shopper = np.zeros((n, positions), dtype=np.int64)
    item = np.zeros((n, positions), dtype=np.int64)  # one item everywhere: equal attractiveness
    intent = np.full((n, positions), int(world.shop.leaf[0]))
    position = np.broadcast_to(np.arange(positions), (n, positions))
    for section in (0, 1):
        answers = model.respond(
            shopper, item, intent, np.full((n, positions), section), position, rng.random((n, positions, 3))
        )
        rate = answers.click.mean(axis=0)
        assert np.all(np.diff(rate) < 0), rate
        expected = model.examination(np.full(positions, section), np.arange(positions))
        expected *= model.attractiveness(shopper[0], item[0], intent[0])
        assert np.allclose(rate, expected, atol=4 * np.sqrt(expected / n))
    assert (
        model.examination(np.array([1]), np.array([0]))[0]
        < model.examination(np.array([0]), np.array([0]))[0]
    )


def test_the_shops_tastes_are_those_its_sessions_were_drawn_from() -> None:
    config = SyntheticShopConfig(n_users=300, n_items=400, n_categories=5, seed=5)
    shop, log = build_catalogue(config), generate_shop(config).log
    tastes = shopper_tastes(shop, config)
    dept = shop.taxonomy.leaf_dept[shop.leaf[log.item]]

    def favourite_share(users: np.ndarray) -> float:  # of the rows, those in the user's favourite leaf
        return float(np.mean(shop.leaf[log.item] == tastes.fav_leaf[users, dept]))

    shuffled = np.random.default_rng(0).permutation(config.n_users)[log.user]
    assert favourite_share(log.user) > 1.5 * favourite_share(shuffled)  # measured: 0.47 against 0.23


def test_the_online_verb_splits_its_settings() -> None:
    args = build_parser().parse_args(
        ["online", "--days", "3", "--set", "online.visit_rate=0.5", "--set", "federated.local_steps=2"]
    )
    online, base = online_configs(args)
    assert (online.days, online.visit_rate, base.federated.local_steps) == (3, 0.5, 2)
    bad = build_parser().parse_args(["online", "--set", "online.dayz=3"])
    with pytest.raises(ConfigError, match=r"online\.dayz'; did you mean online\.days"):
        online_configs(bad)
    with pytest.raises(ConfigError, match="arms"):
        with_overrides(OnlineConfig(), {"arms": "text,text"})
