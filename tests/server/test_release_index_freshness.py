"""The release store's serial and expiry, the refresh command, the service re-signing an index near its
expiry, and a device refusing a replayed or expired index over real HTTP (nothing changes on it)."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from ledger_toy import KEY, write_run
from release_toy import random_model, source

from client.device.release_cache import ReleaseCache
from client.device.sync import sync
from server import server_cli
from server.releases.release_store import ReleaseStore
from shared.config import ServiceConfig
from shared.errors import ConfigError, DataError, SignatureError
from shared.release_index import utc_seconds
from shared.signing import canonical_json, key_id, save_private_key, save_public_key, sign
from simulation.local_service import running

DAY_S = 24 * 3600.0


def published(root: Path, n: int = 2) -> ReleaseStore:
    store = ReleaseStore(root)
    for seed in range(n):
        model, catalogue = random_model(seed)
        store.publish(model, catalogue, source(str(seed)), KEY)
    return store


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> ReleaseStore:
    return published(tmp_path_factory.mktemp("releases") / "store")


def copy_store(store: ReleaseStore, root: Path) -> ReleaseStore:
    shutil.copytree(store.root, root)
    return ReleaseStore(root)


def test_every_signed_write_takes_the_next_serial_and_a_fresh_expiry(
    store: ReleaseStore, tmp_path: Path
) -> None:
    mine = copy_store(store, tmp_path / "store")
    first = mine.index(KEY.public_key())
    assert first["serial"] == 2  # two publishes
    assert abs(utc_seconds(first["expires_utc"]) - (time.time() + mine.index_lifetime_s)) < 120
    mine.withdraw(2, reason="regression", key=KEY)
    assert mine.index(KEY.public_key())["serial"] == 3
    refreshed = mine.refresh_index(KEY)
    assert refreshed["serial"] == 4 and refreshed["releases"] == mine.index()["releases"]
    assert mine.latest() == 1  # a refresh changes nothing but the serial and the expiry


def test_concurrent_index_writes_lose_nothing(store: ReleaseStore, tmp_path: Path) -> None:
    mine = copy_store(store, tmp_path / "store")
    serial = mine.index()["serial"]
    writes = 12

    def heads() -> None:
        for sequence in range(1, writes + 1):
            mine.set_delta_head(1, sequence, f"{sequence:064x}", KEY)

    def refreshes() -> None:
        for _ in range(writes):
            mine.refresh_index(KEY)

    threads = [threading.Thread(target=heads), threading.Thread(target=refreshes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    index = mine.index(KEY.public_key())
    assert index["serial"] == serial + 2 * writes  # every write took its own serial
    assert index["releases"][0]["delta"] == {"sequence": writes, "manifest_sha256": f"{writes:064x}"}
    with pytest.raises(ConfigError, match="no release 7"):
        mine.set_delta_head(7, 1, "0" * 64, KEY)


def test_the_index_needs_a_refresh_past_half_its_lifetime(store: ReleaseStore) -> None:
    expires = utc_seconds(store.index()["expires_utc"])
    half = store.index_lifetime_s / 2
    assert not store.index_needs_refresh(expires - half - 60)
    assert store.index_needs_refresh(expires - half + 60)
    assert not ReleaseStore(store.root / "nowhere").index_needs_refresh()  # no index: nothing to re-sign


def test_an_index_of_the_first_format_is_refreshed_into_the_current_one(
    store: ReleaseStore, tmp_path: Path
) -> None:
    mine = copy_store(store, tmp_path / "store")
    old: dict[str, object] = {"releases": mine.index()["releases"], "key_id": key_id(KEY.public_key())}
    old["signature"] = sign(KEY, canonical_json(old))
    (mine.root / "index.json").write_text(json.dumps(old))
    assert mine.index_needs_refresh()
    assert mine.refresh_index(KEY)["serial"] == 1


def test_refresh_index_command(
    store: ReleaseStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mine = copy_store(store, tmp_path / "store")
    save_private_key(KEY, tmp_path / "key.pem")
    args = ["refresh-index", "--store", str(mine.root), "--signing-key", str(tmp_path / "key.pem")]
    assert server_cli.main([*args, "--lifetime-s", str(DAY_S)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["serial"] == 3 and printed["latest"] == 2
    assert abs(utc_seconds(printed["expires_utc"]) - (time.time() + DAY_S)) < 120


def service_config(root: Path, tmp: Path, *, signing: bool, lifetime_s: float) -> ServiceConfig:
    save_public_key(KEY.public_key(), tmp / "public.pem")
    save_private_key(KEY, tmp / "private.pem")
    return ServiceConfig(
        release_store=root,
        run_dir=write_run(tmp / "run", rounds=2),
        public_key=tmp / "public.pem",
        signing_key=str(tmp / "private.pem") if signing else "",
        index_lifetime_s=lifetime_s,
    )


@pytest.fixture
def served(store: ReleaseStore, tmp_path: Path) -> Iterator[tuple[str, ReleaseStore]]:
    mine = copy_store(store, tmp_path / "store")
    with running(service_config(mine.root, tmp_path, signing=True, lifetime_s=7 * DAY_S)) as url:
        yield url, mine


def test_the_service_re_signs_an_index_near_its_expiry(store: ReleaseStore, tmp_path: Path) -> None:
    mine = copy_store(store, tmp_path / "store")
    short = ReleaseStore(mine.root, index_lifetime_s=60.0)
    short.refresh_index(KEY)  # serial 3, expires in a minute: under half of a week's lifetime left
    with running(service_config(mine.root, tmp_path, signing=True, lifetime_s=7 * DAY_S)) as url:
        index = httpx.get(f"{url}/v1/releases").json()
    assert index["serial"] == 4 and utc_seconds(index["expires_utc"]) > time.time() + 6 * DAY_S
    assert index == {**mine.index(), "latest": 2}


def test_without_a_signing_key_the_service_serves_the_index_as_it_is(
    store: ReleaseStore, tmp_path: Path
) -> None:
    mine = copy_store(store, tmp_path / "store")
    before = mine.index()
    with running(service_config(mine.root, tmp_path, signing=False, lifetime_s=DAY_S)) as url:
        index = httpx.get(f"{url}/v1/releases").json()
    assert index["serial"] == before["serial"] and index["expires_utc"] == before["expires_utc"]


def test_a_device_refuses_a_replayed_index_that_would_hide_a_withdrawal(
    served: tuple[str, ReleaseStore], tmp_path: Path
) -> None:
    url, mine = served
    before_withdrawal = (mine.root / "index.json").read_bytes()
    device = ReleaseCache(tmp_path / "device", KEY.public_key())
    assert sync(device, url).current == 2
    mine.withdraw(2, reason="regression", key=KEY)
    assert sync(device, url).fell_back and device.state()["current"] == 1
    assert device.index_serial() == 3
    (mine.root / "index.json").write_bytes(before_withdrawal)  # a mirror replays the older signed index
    with pytest.raises(SignatureError, match="replayed"):
        sync(device, url)
    assert device.state() == {"current": 1, "previous": None} and device.index_serial() == 3


def test_a_device_refuses_an_expired_index_and_keeps_its_release(
    served: tuple[str, ReleaseStore], tmp_path: Path
) -> None:
    url, mine = served
    device = ReleaseCache(tmp_path / "device", KEY.public_key())
    assert sync(device, url).current == 2
    mine.withdraw(2, reason="regression", key=KEY)
    later = utc_seconds(mine.index()["expires_utc"]) + 1
    with pytest.raises(DataError, match="expired"):
        sync(device, url, now_s=later)
    assert device.state()["current"] == 2 and device.index_serial() == 2  # nothing taken from it


def test_a_corrupt_index_state_is_refused(tmp_path: Path) -> None:
    device = ReleaseCache(tmp_path / "device", KEY.public_key())
    (tmp_path / "device" / "index_state.json").write_text('{"serial": "many"}')
    with pytest.raises(DataError, match="serial"):
        device.index_serial()
