"""Catalogue deltas on the device: verified before use (pinned key, every sha256, the release it was made
for, no replay), kept atomically, and ranked with the release: a new item is in New for you at once,
changed items change, removed items are never shown."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from catalogue_toy import NOW, new_item, release_item, release_of, write_model_run
from ledger_toy import KEY

from client.device import sync as sync_module
from client.device.deltas import DeltaCache, open_ranker
from client.device.homepage import Homepage, HomepageRules
from client.device.ranker import DeviceRanker, Event
from client.device.release_cache import ReleaseCache, copy_from
from server.catalogue.catalogue_items import CatalogueItem
from server.catalogue.delta_publisher import DeltaStore, load_base
from server.releases.release_store import ReleaseStore
from shared.catalogue_delta_format import verify_delta_list
from shared.errors import DataError, SignatureError
from shared.release_manifest import MANIFEST_NAME, sign_manifest, verify_release
from shared.signing import Ed25519PrivateKey, generate_private_key, key_id


@dataclass
class Published:
    store: ReleaseStore
    deltas: DeltaStore
    first: Path  # delta 1: a new lipstick
    second: (
        Path  # delta 2: the lipstick cheaper, release item `deal` on promotion, `gone` out of stock, and a
    )
    gone: str  # withdrawn new item
    deal: str


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Published:
    tmp = tmp_path_factory.mktemp("device-deltas")
    run = write_model_run(tmp, tmp_path_factory.getbasetemp() / "catalogue-encoder-cache")
    store = release_of(run, tmp / "store")
    base, deltas = load_base(store, 1, run, KEY.public_key()), DeltaStore(store)
    deltas.publish(base, [CatalogueItem.model_validate(new_item())], KEY)
    deal = next(i for i in range(4, 60) if not base.catalogue.on_promotion[i])
    second = [
        new_item(price=4.0),
        release_item(base.catalogue, 3) | {"status": "out_of_stock"},
        release_item(base.catalogue, deal) | {"on_promotion": True},
        new_item("new-0002", title="Retired gadget", status="withdrawn"),
    ]
    deltas.publish(base, [CatalogueItem.model_validate(item) for item in second], KEY)
    ids = base.catalogue.item_ids
    return Published(store, deltas, deltas.folder(1, 1), deltas.folder(1, 2), ids[3], ids[deal])


@pytest.fixture
def device(published: Published, tmp_path: Path) -> ReleaseCache:
    cache = ReleaseCache(tmp_path / "device", KEY.public_key())
    cache.install(copy_from(published.store.folder(1)))
    return cache


def history_near(ranker: DeviceRanker, item_id: str, n: int = 3) -> list[Event]:
    """Views of the n release items most similar to `item_id`, oldest first, the day before NOW."""
    similar = ranker.item_vectors(np.arange(60)) @ ranker.item_vectors(np.array([ranker.index[item_id]]))[0]
    rows = np.argsort(-similar)[:n][::-1]
    return [Event(ranker.items[r]["id"], "view", NOW - 86_400 + 60 * i) for i, r in enumerate(rows)]


def page(ranker: DeviceRanker, history: list[Event], rules: HomepageRules) -> dict[str, list[str]]:
    """The page's item ids by section key (the items of sections sharing a key, such as two "because"
    sections, together)."""
    out: dict[str, list[str]] = {}
    for section in Homepage(ranker, rules).compose(history, NOW):
        out.setdefault(section.key, []).extend(c.item_id for c in section.cards)
    return out


@pytest.mark.integration
def test_a_new_item_is_ranked_and_shown_in_new_for_you(published: Published, device: ReleaseCache) -> None:
    before = open_ranker(device, precision="float32")
    assert "new-0001" not in before.index
    assert DeltaCache(device).install(copy_from(published.first)) == 1
    ranker = open_ranker(device, precision="float32")
    assert ranker.n_items == before.n_items + 1 and ranker.items[-1]["id"] == "new-0001"
    electronics = [
        e
        for e in history_near(ranker, "new-0001", 60)
        if "Electronics" in ranker.items[ranker.index[e.item_id]]["category"]
    ][-3:]
    shown = page(ranker, electronics, HomepageRules(section_size=3, because_sections=0))
    assert shown["new"][0] == "new-0001"  # the only item added within new_days of NOW
    near = history_near(ranker, "new-0001")
    assert "new-0001" in ranker.recommend(near, NOW, k=5)  # ranked by the same model, on day one
    user = ranker.user_vector(near, NOW)
    assert user is not None
    delta_row = np.load(published.first / "item_vectors_f32.npy")[0]
    expected = ranker.temperature * float(delta_row @ user) + float(
        np.load(published.first / "item_bias.npy")[0]
    )
    assert ranker.scores(user)[ranker.index["new-0001"]] == pytest.approx(expected, abs=1e-5)
    int8 = open_ranker(device)  # the two-stage index ranks it too
    assert "new-0001" in int8.recommend(near, NOW, k=5)


def test_changed_and_removed_items(published: Published, device: ReleaseCache) -> None:
    no_history: list[Event] = []
    wide = HomepageRules(section_size=100, per_category=100)  # every promoted item is in "deals"
    assert published.deal not in page(open_ranker(device), no_history, wide)["deals"]
    DeltaCache(device).install(copy_from(published.second))
    ranker = open_ranker(device, precision="float32")
    gone = published.gone
    assert ranker.items[ranker.index["new-0001"]]["price"] == 4.0
    assert published.deal in page(ranker, no_history, wide)["deals"]  # now on promotion
    assert {ranker.index[gone], ranker.index["new-0002"]} == set(ranker.hidden.tolist())
    history = [Event(gone, "view", NOW - 600), *history_near(ranker, "new-0001")]
    assert ranker.user_vector(history, NOW) is not None  # a removed item still counts as history
    everything = page(ranker, history, HomepageRules(section_size=100, per_category=100))
    shown = {item for cards in everything.values() for item in cards}
    assert "new-0001" in shown and not {gone, "new-0002"} & shown
    assert not {gone, "new-0002"} & set(ranker.recommend(history, NOW, k=ranker.n_items))


@pytest.mark.parametrize(
    "name",
    [
        "manifest.json",
        "items.json",
        "item_vectors_f32.npy",
        "item_vectors_int8.npy",
        "item_scales.npy",
        "item_bias.npy",
    ],
)
def test_a_flipped_byte_anywhere_is_refused_and_nothing_changes(
    published: Published, device: ReleaseCache, tmp_path: Path, name: str
) -> None:
    deltas = DeltaCache(device)
    deltas.install(copy_from(published.first))
    tampered = shutil.copytree(published.second, tmp_path / "tampered")
    data = bytearray((tampered / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (tampered / name).write_bytes(bytes(data))
    with pytest.raises((SignatureError, DataError)):
        deltas.install(copy_from(tampered))
    assert deltas.applied(1) == 1 and not deltas.incoming.exists()
    assert "new-0002" not in open_ranker(device, precision="float32").index  # still delta 1


def resigned(source: Path, out: Path, key: Ed25519PrivateKey, **changes: object) -> Path:
    folder = shutil.copytree(source, out)
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    manifest.pop("signature")
    (folder / MANIFEST_NAME).write_text(json.dumps(sign_manifest({**manifest, **changes}, key)))
    return folder


def test_another_key_another_release_a_release_manifest_or_a_replay_is_refused(
    published: Published, device: ReleaseCache, tmp_path: Path
) -> None:
    deltas = DeltaCache(device)
    with pytest.raises(SignatureError):
        deltas.install(copy_from(resigned(published.second, tmp_path / "k", generate_private_key())))
    with pytest.raises(DataError):
        deltas.install(copy_from(resigned(published.second, tmp_path / "r", KEY, release=2)))
    with pytest.raises(DataError):  # a release's manifest presented as a delta
        deltas.install(copy_from(published.store.folder(1)))
    assert deltas.applied(1) is None
    deltas.install(copy_from(published.second))
    with pytest.raises(DataError, match="not newer"):
        deltas.install(copy_from(published.first))  # an older, validly signed delta
    assert deltas.applied(1) == 2
    # an altered file on the device after install: open_ranker verifies again and refuses it
    applied = device.root / "deltas" / "000001" / "000002" / "item_bias.npy"
    applied.write_bytes(applied.read_bytes()[:-1] + b"\x00")
    with pytest.raises(SignatureError):
        open_ranker(device)


def test_the_rankers_top_k_never_returns_a_hidden_item(published: Published, device: ReleaseCache) -> None:
    DeltaCache(device).install(copy_from(published.second))
    ranker = open_ranker(device, precision="float32")
    user = ranker.user_vector(history_near(ranker, "new-0001"), NOW)
    assert user is not None and len(ranker.hidden) == 2
    rows = ranker.top_k(ranker.scores(user), ranker.n_items)
    assert len(rows) == ranker.n_items - 2 and not set(ranker.hidden.tolist()) & set(rows.tolist())


def test_a_delta_never_installs_as_a_release(published: Published, device: ReleaseCache) -> None:
    with pytest.raises(DataError, match="catalogue-delta"):
        verify_release(published.second, KEY.public_key())  # validly signed, all files intact, wrong kind
    with pytest.raises(DataError, match="catalogue-delta"):
        device.install(copy_from(published.second))
    assert device.state()["current"] == 1


def test_an_applied_delta_altered_on_the_device_can_be_installed_again(
    published: Published, device: ReleaseCache
) -> None:
    deltas = DeltaCache(device)
    deltas.install(copy_from(published.second))
    with pytest.raises(DataError, match="not newer"):
        deltas.install(copy_from(published.second))  # intact: the same delta again is refused
    applied = device.root / "deltas" / "000001" / "000002" / "items.json"
    applied.write_bytes(applied.read_bytes()[:-1] + b" ")
    assert not deltas.intact()
    with pytest.raises(SignatureError):
        open_ranker(device)
    with pytest.raises(DataError, match="not newer"):
        deltas.install(copy_from(published.first))  # still no going back to an older one
    assert deltas.install(copy_from(published.second)) == 2  # the repair
    assert deltas.intact() and "new-0002" in open_ranker(device).index


@pytest.mark.parametrize("name", ["a\x00b.npy", "items.json\n", "..", "sub/items.json", "x?y=1", "-x.npy"])
def test_a_listed_file_name_that_is_not_plain_is_refused_before_anything_is_fetched(
    published: Published, device: ReleaseCache, name: str
) -> None:
    fetched: list[str] = []

    def fetch(what: str, destination: Path, max_bytes: int) -> None:  # an unsigned manifest naming `name`
        fetched.append(what)
        destination.write_text(json.dumps({"files": {name: {"sha256": "0" * 64, "bytes": 1}}}))

    for cache in (device, DeltaCache(device)):
        fetched.clear()
        with pytest.raises(DataError, match="not a plain file name"):
            cache.install(fetch)
        assert fetched == [MANIFEST_NAME] and not cache.incoming.exists()


def test_the_releases_trending_counts_rank_with_a_delta_applied(
    published: Published, device: ReleaseCache
) -> None:
    DeltaCache(device).install(copy_from(published.second))
    ranker = open_ranker(device, precision="float32")
    assert ranker.n_items > ranker.release_items
    counts = np.arange(ranker.release_items, dtype=np.float32)  # one per release item, as releases carry
    sections = Homepage(ranker, HomepageRules(section_size=5), trending=counts).compose([], NOW)
    trending = next(s for s in sections if s.key == "trending")
    rows = [ranker.index[c.item_id] for c in trending.cards]
    assert len(rows) == 5 and not set(rows) & set(ranker.hidden.tolist())
    padded = np.pad(counts, (0, ranker.n_items - ranker.release_items))  # added items count 0
    assert [padded[r] for r in rows] == sorted((padded[r] for r in rows), reverse=True)


def test_a_homepage_made_before_a_delta_is_applied_composes_with_it(
    published: Published, device: ReleaseCache
) -> None:
    ranker = open_ranker(device, precision="float32")
    homepage = Homepage(ranker, HomepageRules(section_size=100, per_category=100))
    assert "new-0001" not in {c.item_id for s in homepage.compose([], NOW) for c in s.cards}
    deltas = DeltaCache(device)
    deltas.install(copy_from(published.second))
    rows = deltas.rows()
    assert rows is not None
    ranker.apply_delta(rows)  # an app that keeps its ranker and homepage across a sync
    page = {s.key: [c.item_id for c in s.cards] for s in homepage.compose([], NOW)}
    assert "new-0001" in page["new"] and published.deal in page["deals"]


@pytest.mark.parametrize(
    "index",
    [
        [],  # not an object
        {"releases": [], "key_id": "pinned"},  # the pinned key id but no signature
        {"releases": [], "key_id": "pinned", "signature": None},
    ],
)
def test_sync_refuses_a_malformed_release_index_with_a_typed_error(
    device: ReleaseCache, monkeypatch: pytest.MonkeyPatch, index: object
) -> None:
    if isinstance(index, dict):
        index = {**index, "key_id": key_id(KEY.public_key())}
    monkeypatch.setattr(sync_module, "get_json", lambda url: index)
    with pytest.raises((DataError, SignatureError)):
        sync_module.sync(device, "http://127.0.0.1:9")
    assert device.state()["current"] == 1


def test_the_signed_delta_list_is_checked_for_key_release_and_content(
    published: Published, device: ReleaseCache
) -> None:
    listing = published.deltas.listing(1)
    assert verify_delta_list(listing, KEY.public_key(), 1) == [1, 2]
    with pytest.raises(DataError, match="release"):
        verify_delta_list(listing, KEY.public_key(), 2)  # release 1's list replayed for release 2
    with pytest.raises(SignatureError):
        verify_delta_list(listing, generate_private_key().public_key(), 1)
    altered = {**listing, "deltas": [{**e, "sequence": e["sequence"] + 5} for e in listing["deltas"]]}
    with pytest.raises(SignatureError):
        verify_delta_list(altered, KEY.public_key(), 1)
    with pytest.raises(SignatureError, match="head"):  # a valid delta, not the one named
        DeltaCache(device).install(
            copy_from(published.second), listed_sha256=listing["deltas"][0]["manifest_sha256"]
        )
    assert DeltaCache(device).applied(1) is None


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"\xff\xfe", b"[]", b'{"applied": []}', b'{"applied": {"1": "two"}}', b"{}"],
)
def test_a_corrupt_delta_state_file_is_a_data_error_naming_it(
    published: Published, device: ReleaseCache, content: bytes
) -> None:
    deltas = DeltaCache(device)
    (deltas.root / "state.json").write_bytes(content)
    with pytest.raises(DataError, match=r"state\.json"):
        deltas.applied(1)
    with pytest.raises(DataError, match=r"state\.json"):
        deltas.install(copy_from(published.first))
    assert not deltas.incoming.exists() and not (deltas.root / "000001").exists()


def test_an_item_a_delta_hid_is_never_named_as_a_because_you_viewed_reason(
    published: Published, device: ReleaseCache
) -> None:
    DeltaCache(device).install(copy_from(published.second))
    ranker = open_ranker(device, precision="float32")
    gone, withdrawn = ranker.items[ranker.index[published.gone]], ranker.items[ranker.index["new-0002"]]
    visible = history_near(ranker, "new-0001", n=2)
    history = [*visible, Event(withdrawn["id"], "view", NOW - 120), Event(gone["id"], "view", NOW - 60)]
    sections = Homepage(ranker, HomepageRules(section_size=3)).compose(history, NOW)
    because = [s for s in sections if s.key == "because"]
    reasons = [ranker.items[ranker.index[e.item_id]]["title"] for e in visible[::-1]]  # newest first
    assert [s.title for s in because] == [f"Because you viewed {title}" for title in reasons]
    assert {c.reason for s in because for c in s.cards} == set(reasons)
