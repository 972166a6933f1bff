"""The device SDK an app holds (client/device/device.py's Device) and fedhome-client's device verbs, against a
release served by the real model service on loopback: sync installs and marks receipts, recorded events
shape the homepage, bad input writes nothing, and every verb explains itself."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from ledger_toy import KEY, write_run
from release_toy import two_releases

from client.device import Card, Device, Event, Section, SyncResult
from client.device import device_cli as client_cli
from client.device.device import HISTORY_EVENTS
from client.device.device_folder import events_path, releases_path
from client.device.event_store import EventStore
from client.device.receipts import Receipt, ReceiptStore
from client.device.release_cache import copy_from
from server.releases.release_store import ReleaseStore
from shared.config import ServiceConfig, ServiceSecrets
from shared.errors import DataError, SignatureError
from simulation.local_service import running

pytestmark = pytest.mark.integration

NOW = 1_790_000_000


@dataclass(frozen=True)
class Served:
    url: str
    store: ReleaseStore
    key_file: Path
    titles: dict[str, str]  # release 2's item id -> title


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("device-facade")
    store = two_releases(tmp, KEY)
    config = ServiceConfig(
        release_store=store.root, run_dir=write_run(tmp / "run", rounds=3), public_key=tmp / "public.pem"
    )
    items = json.loads((store.folder(2) / "items.json").read_text())
    with running(config, ServiceSecrets(admin_token="")) as url:
        yield Served(url, store, tmp / "public.pem", {item["id"]: item["title"] for item in items})


def an_item(served: Served, n: int = 0) -> tuple[str, str]:
    """The n-th item of release 2 whose title no other item has (so a section title names only it)."""
    titles = list(served.titles.values())
    unique = [(i, t) for i, t in served.titles.items() if titles.count(t) == 1]
    return unique[n]


def because(page: list[Section]) -> list[str]:
    return [s.title for s in page if s.title.startswith("Because you")]


def shown(page: list[Section]) -> set[str]:
    return {card.item_id for section in page for card in section.cards}


def test_a_device_syncs_records_composes_its_homepage_and_shows_its_receipts(
    served: Served, tmp_path: Path
) -> None:
    folder = tmp_path / "phone"
    receipts = ReceiptStore(folder)  # rounds the device joined before (as its ClientApp records them)
    for round_number in (1, 2, 5):  # release 2 is run-1's model of round 3: round 5 is in no release yet
        receipts.add(Receipt("run-1", round_number, 0.5, 1.0, 0.1, 1e-5, 0, "2026-12-03T08:00:00+00:00"))
    receipts.close()
    with Device(folder, KEY.public_key()) as device:
        with pytest.raises(DataError, match="run sync"):
            device.homepage(NOW)
        result = device.sync(served.url)
        assert isinstance(result, SyncResult) and result.installed == result.current == 2
        assert (releases_path(folder) / "state.json").is_file()
        marked = ReceiptStore(folder)
        assert [r.release_version for r in marked.receipts()] == [2, 2, None]  # sync marked them
        marked.close()

        viewed, title = an_item(served)
        bought, _ = an_item(served, 1)
        device.record(viewed, "view", NOW - 600)
        device.record(bought, "purchase", NOW - 300)
        page = device.homepage(NOW)
        assert all(isinstance(s, Section) and all(isinstance(c, Card) for c in s.cards) for s in page)
        assert f"Because you viewed {title}" in because(page)
        assert not {viewed, bought} & shown(page)  # seen and bought items are kept off the page
        top = device.recommend(5, NOW)
        assert len(top) == 5 and viewed not in top and bought not in top
        other, other_title = an_item(served, 2)
        overridden = device.homepage(NOW, history=[Event(other, "view", NOW - 60)])
        assert f"Because you viewed {other_title}" in because(overridden) and title not in str(
            because(overridden)
        )

        (run,) = device.receipts()
        assert run["rounds"] == [1, 2, 5] and run["release_versions"] == [2] and run["run_epsilon"] == 8.0

        for _ in range(HISTORY_EVENTS):  # the purchase leaves the history a page is made from
            device.record(other, "view", NOW - 30)
        assert bought not in shown(device.homepage(NOW))  # and stays off the page: a purchase

        device.wipe()
        assert device.events.count() == 0 and because(device.homepage(NOW)) == []


def test_bad_events_are_refused_and_write_nothing(served: Served, tmp_path: Path) -> None:
    item, _ = an_item(served)
    with Device(tmp_path / "phone", served.key_file) as device:  # the key as a PEM path
        device.record(item, "cart", NOW)
        bad: list[tuple[object, object, object]] = [
            (item, "like", NOW),
            ("", "view", NOW),
            (item, "view", NOW * 1000),  # milliseconds: would make the store drop every older event
            (item, "view", -1),
            (item, "view", 12.5),
            (item, "view", True),
        ]
        for item_id, event, timestamp in bad:
            with pytest.raises(DataError):
                device.record(item_id, event, timestamp)  # type: ignore[arg-type]
        assert [e.event for e in device.events.recent()] == ["cart"]


def test_the_release_in_use_is_verified_when_opened_and_a_sync_repairs_it(
    served: Served, tmp_path: Path
) -> None:
    folder = tmp_path / "phone"
    with Device(folder, KEY.public_key()) as device:
        device.cache.install(copy_from(served.store.folder(1)))  # installed offline, before any sync
        assert device.homepage(NOW) and device.release().version == 1
        assert device.sync(served.url).installed == 2
        assert device.release().version == 2  # the next page ranks with the release just installed
        installed = releases_path(folder) / "releases" / "000002" / "items.json"
        installed.write_bytes(installed.read_bytes().replace(b'"title"', b'"TITLE"', 1))
        with Device(folder, KEY.public_key()) as fresh, pytest.raises(SignatureError):
            fresh.homepage(NOW)  # a device opening the altered copy refuses it
        assert device.sync(served.url).repaired
        assert device.homepage(NOW)  # verified again after the sync


def run_cli(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    code = client_cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_cli_verbs_over_a_device_folder(
    served: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    phone, key = tmp_path / "phone", served.key_file
    viewed, title = an_item(served)
    code, _, err = run_cli(capsys, "homepage", "--device", phone, "--public-key", key)
    assert (
        code == 2 and "no such device folder" in err and not phone.exists()
    )  # a mistyped path creates nothing
    code, _, err = run_cli(capsys, "record", "--device", phone, "--item", viewed, "--event", "like")
    assert code == 2 and len(err.splitlines()) == 1 and "unknown event" in err and not phone.exists()

    record = ["record", "--device", phone, "--item", viewed, "--event", "view", "--timestamp", NOW - 600]
    code, out, _ = run_cli(capsys, *record)
    assert code == 0 and json.loads(out) == {"recorded": "view", "events": 1}
    code, _, err = run_cli(capsys, "homepage", "--device", phone, "--public-key", key, "--now", NOW)
    assert code == 2 and len(err.splitlines()) == 1 and "run sync" in err  # before any sync

    code, out, _ = run_cli(capsys, "sync", "--url", served.url, "--device", phone, "--public-key", key)
    assert code == 0 and json.loads(out)["installed"] == 2 and json.loads(out)["current"] == 2
    code, out, _ = run_cli(capsys, "homepage", "--device", phone, "--public-key", key, "--now", NOW)
    page = json.loads(out)
    assert code == 0 and page["release"] == 2 and page["trending"] is None  # the toy release has no counts
    assert f"Because you viewed {title}" in [s["title"] for s in page["sections"]]
    code, out, _ = run_cli(
        capsys, "recommend", "--device", phone, "--public-key", key, "--now", NOW, "--k", 4
    )
    assert code == 0 and len(json.loads(out)["for_you"]) == 4

    other, other_title = an_item(served, 2)
    history = tmp_path / "history.jsonl"
    history.write_text(json.dumps({"item_id": other, "event": "view", "timestamp": NOW - 60}) + "\n")
    home = ["homepage", "--device", phone, "--public-key", key, "--now", NOW, "--history", history]
    code, out, _ = run_cli(capsys, *home)
    titles = [s["title"] for s in json.loads(out)["sections"]]
    assert (
        code == 0
        and f"Because you viewed {other_title}" in titles
        and f"Because you viewed {title}" not in titles
    )

    code, _, err = run_cli(capsys, *record[:-2], "--timestamp", NOW * 1000)  # milliseconds
    assert code == 2 and "milliseconds" in err
    store = EventStore(events_path(phone))
    assert store.count() == 1  # the refused records wrote nothing
    store.close()
    code, out, _ = run_cli(capsys, "sync", "--url", served.url, "--device", phone, "--public-key", key)
    assert code == 0 and json.loads(out)["installed"] is None and json.loads(out)["current"] == 2
    cache = ["homepage", "--cache", releases_path(phone), "--public-key", key, "--now", NOW]
    code, _, err = run_cli(capsys, *cache)
    assert code == 2 and "--history" in err
    code, out, _ = run_cli(capsys, *cache, "--history", history)  # the bare cache form, as before
    assert code == 0 and json.loads(out)["sections"]


@pytest.mark.parametrize("verb", ["sync", "record", "homepage", "recommend", "install", "receipts", None])
def test_every_verb_explains_itself(verb: str | None, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_status:
        client_cli.main([verb, "--help"] if verb else ["--help"])
    text = capsys.readouterr().out
    assert exit_status.value.code == 0 and text.startswith("usage: fedhome-client")
    assert (verb or "sync --url URL --device DIR") in text
