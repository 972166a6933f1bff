"""The device SDK on a real signed release: ranking parity with the torch model, the verified cache with
atomic swaps and fallback, the local event store, and `fedhome-client`."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from release_toy import CONFIG, random_model, source

from client.device import device_cli as client_cli
from client.device.event_store import EventStore
from client.device.ranker import DeviceRanker, Event
from client.device.release_cache import ReleaseCache, copy_from
from server.releases.release_store import ReleaseStore
from shared.data.schema import EVENT_CODE
from shared.derived_items import TEXT_INT8, TEXT_SCALES
from shared.errors import DataError, SignatureError
from shared.history import gap_buckets, request_context
from shared.model import HistoryBatch, TwoTower
from shared.signing import generate_private_key, save_public_key

KEY = generate_private_key()
NOW = 1_750_000_000

Releases = tuple[ReleaseStore, TwoTower, Path]  # the store (releases 1 and 2), their model, the pinned key


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> Releases:
    tmp = tmp_path_factory.mktemp("device")
    model, catalogue = random_model()
    store = ReleaseStore(tmp / "store")
    store.publish(model, catalogue, source("a"), KEY)
    store.publish(model, catalogue, source("b"), KEY)
    key_file = tmp / "pinned.pem"
    save_public_key(KEY.public_key(), key_file)
    return store, model, key_file


def history(ranker: DeviceRanker, n: int = 4) -> list[Event]:
    ids = [item["id"] for item in ranker.items]
    kinds = ["view", "cart", "view", "purchase", "favourite", "view", "view", "cart"]
    return [Event(ids[7 * i + 3], kinds[i % len(kinds)], NOW - 3_600 * (n - i) * 5) for i in range(n)]


def as_released(model: TwoTower, folder: Path) -> TwoTower:
    """`model` with the text embeddings its release carries (int8, shared/derived_items.py): what the
    release's derived item vectors are exactly."""
    released = copy.deepcopy(model)
    text = np.load(folder / TEXT_INT8).astype(np.float32) * np.load(folder / TEXT_SCALES)[:, None]
    released.items.text.copy_(torch.from_numpy(text))
    return released


@pytest.mark.parametrize("n_events", [1, 4, 6, 9])
def test_device_scores_equal_the_torch_model_with_padded_histories(releases: Releases, n_events: int) -> None:
    store, model, _ = releases
    model = as_released(model, store.folder(1))
    ranker = DeviceRanker(store.folder(1), precision="float32")
    events = history(ranker, n_events)
    user = ranker.user_vector(events, NOW)
    assert user is not None  # the history has known items
    got = ranker.scores(user)
    # the trainer's path: left-padded to max_history, padding masked
    kept = events[-CONFIG.max_history :]
    pad = CONFIG.max_history - len(kept)
    rows = np.array([-1] * pad + [ranker.index[e.item_id] for e in kept])[None]
    codes = np.array([0] * pad + [EVENT_CODE[e.event] + 1 for e in kept])[None]
    ages = np.array([0] * pad + [NOW - e.timestamp for e in kept])[None]
    hour, weekday = request_context(np.array([NOW]))
    batch = HistoryBatch(rows, codes, np.where(codes > 0, gap_buckets(ages), 0), hour, weekday)
    with torch.no_grad():
        users = model.user_vectors(batch)
        expected = model.catalogue_scores(users)[0].numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_int8_path_ranks_like_float32(releases: Releases) -> None:
    store, _, _ = releases
    exact = DeviceRanker(store.folder(1), precision="float32")
    fast = DeviceRanker(store.folder(1), rescore=64)  # 64 of 300 rescored: the coarse stage must be good
    events = history(exact)
    top_exact = set(exact.recommend(events, NOW, k=50))
    top_fast = set(fast.recommend(events, NOW, k=50))
    assert len(top_exact & top_fast) / 50 >= 0.97  # issue 4: int8 keeps recall@50 >= 0.97 vs float32
    rng = np.random.default_rng(0)  # and for many users, not one history
    users = rng.normal(size=(100, exact.item_index.store.dim)).astype(np.float32)
    hits = 0
    for user in users / np.linalg.norm(users, axis=1, keepdims=True):
        a, _ = exact.item_index.top_k(user, 50)
        b, _ = fast.item_index.top_k(user, 50)
        hits += len(set(a.tolist()) & set(b.tolist()))
    assert hits / (50 * len(users)) >= 0.97
    assert not {e.item_id for e in events} & top_fast  # history items are never recommended


def test_history_without_known_items_is_a_clear_error(releases: Releases) -> None:
    ranker = DeviceRanker(releases[0].folder(1))
    with pytest.raises(DataError, match="no event"):
        ranker.recommend([Event("not-an-item", "view", NOW)], NOW)


def test_cache_installs_verified_releases_keeps_the_previous_and_falls_back(
    releases: Releases, tmp_path: Path
) -> None:
    store, _, _ = releases
    cache = ReleaseCache(tmp_path / "cache", KEY.public_key())
    assert cache.install(copy_from(store.folder(1))) == 1
    assert cache.install(copy_from(store.folder(2))) == 2
    assert cache.state() == {"current": 2, "previous": 1}
    assert cache.verify_current()["version"] == 2
    with pytest.raises(DataError, match="older"):
        cache.install(copy_from(store.folder(1)))  # a replayed old release
    assert cache.state()["current"] == 2 and not cache.incoming.exists()
    assert cache.withdraw_current() == 1
    assert cache.current() == tmp_path / "cache" / "releases" / "000001"


@pytest.mark.parametrize(
    "victim", ["user_tower.onnx", "item_text_int8.npy", "item_tower_up.npy", "items.json", "manifest.json"]
)  # files a device downloads (those it derives: tests/client/test_derived_release.py)
def test_a_flipped_byte_is_refused_and_the_cache_is_unchanged(
    releases: Releases, tmp_path: Path, victim: str
) -> None:
    store, _, _ = releases
    cache = ReleaseCache(tmp_path / "cache", KEY.public_key())
    cache.install(copy_from(store.folder(1)))
    bad = tmp_path / "bad"
    shutil.copytree(store.folder(2), bad)
    data = bytearray((bad / victim).read_bytes())
    data[len(data) // 3] ^= 0x10
    (bad / victim).write_bytes(bytes(data))
    with pytest.raises((SignatureError, DataError)):
        cache.install(copy_from(bad))
    assert cache.state()["current"] == 1 and not cache.incoming.exists()
    assert cache.verify_current()["version"] == 1


def test_an_interrupted_download_leaves_the_current_release_in_use(
    releases: Releases, tmp_path: Path
) -> None:
    store, _, _ = releases
    cache = ReleaseCache(tmp_path / "cache", KEY.public_key())
    cache.install(copy_from(store.folder(1)))
    seen: list[str] = []

    def dies_midway(name: str, destination: Path, max_bytes: int) -> None:
        if len(seen) == 3:
            destination.write_bytes(b"partial")
            raise ConnectionError("network gone")
        seen.append(name)
        shutil.copyfile(store.folder(2) / name, destination)

    with pytest.raises(ConnectionError):
        cache.install(dies_midway)
    assert cache.state()["current"] == 1 and cache.verify_current()["version"] == 1
    assert cache.install(copy_from(store.folder(2))) == 2  # the next try starts clean


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"\xff\xfe",
        b"[]",
        b"null",
        b"{}",
        b'{"current": 1}',
        b'{"current": "1", "previous": null}',
        b'{"current": 1.5, "previous": null}',
        b'{"current": true, "previous": null}',
        b'{"current": 0, "previous": null}',
        b'{"current": 1, "previous": [1]}',
    ],
)
def test_a_corrupt_state_file_is_a_data_error_naming_it_and_the_releases_stay(
    releases: tuple[ReleaseStore, TwoTower, Path], tmp_path: Path, content: bytes
) -> None:
    store, _, _ = releases
    cache = ReleaseCache(tmp_path / "cache", KEY.public_key())
    cache.install(copy_from(store.folder(1)))
    (cache.root / "state.json").write_bytes(content)
    for call in (cache.state, cache.current, cache.verify_current, cache.withdraw_current):
        with pytest.raises(DataError, match=r"state\.json"):
            call()
    with pytest.raises(DataError, match=r"state\.json"):  # refused, never guessed at: nothing is pruned
        cache.install(copy_from(store.folder(2)))
    assert [p.name for p in (cache.root / "releases").iterdir()] == ["000001"]
    assert (cache.root / "state.json").read_bytes() == content and not cache.incoming.exists()


def test_a_release_signed_by_another_key_is_refused(releases: Releases, tmp_path: Path) -> None:
    cache = ReleaseCache(tmp_path / "cache", generate_private_key().public_key())
    with pytest.raises(SignatureError):
        cache.install(copy_from(releases[0].folder(1)))
    assert cache.current() is None


def test_event_store_retention_wipe_and_bad_input(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "events.sqlite", max_events=5, max_age_days=30)
    for i in range(8):
        store.add(f"item-{i}", "view", NOW + i)
    assert store.count() == 5 and store.recent(10)[0].item_id == "item-3"
    store.add("old", "cart", NOW - 40 * 86_400)  # older than the retention window: dropped on write
    assert "old" not in {e.item_id for e in store.recent(10)}
    store.add("bought", "purchase", NOW + 10)
    assert store.purchased() == {"bought"}
    with pytest.raises(DataError):
        store.add("x", "teleport", NOW)
    with pytest.raises(DataError):
        store.add("", "view", NOW)
    with pytest.raises(DataError, match="milliseconds"):  # an app's clock read in ms: refused, not a purge
        store.add("x", "view", NOW * 1000)
    assert store.count() == 5
    store.wipe()
    assert store.count() == 0 and store.recent() == []


def test_fedhome_client_install_and_recommend(
    releases: Releases, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store, _, key_file = releases
    common = ["--cache", str(tmp_path / "cache"), "--public-key", str(key_file)]
    assert client_cli.main(["install", "--from", str(store.folder(2)), *common]) == 0
    ranker = DeviceRanker(store.folder(2))
    lines = [
        json.dumps({"item_id": e.item_id, "event": e.event, "timestamp": e.timestamp})
        for e in history(ranker)
    ]
    (tmp_path / "history.jsonl").write_text("\n".join(lines))
    capsys.readouterr()
    args = ["recommend", "--history", str(tmp_path / "history.jsonl"), "--now", str(NOW), "--k", "5", *common]
    assert client_cli.main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["release"] == 2 and len(out["for_you"]) == 5
    home = ["homepage", "--history", str(tmp_path / "history.jsonl"), "--now", str(NOW), *common]
    assert client_cli.main(home) == 0
    page = json.loads(capsys.readouterr().out)
    assert page["sections"][0]["title"] == "For you" and page["sections"][0]["cards"][0]["copy"]
    (tmp_path / "history.jsonl").write_text('{"item_id": 3}\n')
    assert client_cli.main(args) == 2
