"""Catalogue writes on a real uvicorn server on loopback: admin auth, validation and limits, the signed
cumulative delta (list, manifest and files with ETags), changed and removed items, the vectors' agreement
with the release's, `fedhome-server catalogue-add` and the carry-over to a new release."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from catalogue_toy import NOW, new_item, release_item, release_of, write_model_run
from delta_toy import list_entry
from ledger_toy import KEY
from release_toy import random_model, source

from client.device import device_cli as client_cli
from client.device.deltas import DeltaCache, open_ranker, sync_deltas
from client.device.release_cache import ReleaseCache, copy_from
from client.device.sync import sync
from server import server_cli
from server.api.http_errors import error_response
from server.catalogue.catalogue_items import CatalogueItem
from server.catalogue.delta_publisher import CorruptStoreError, DeltaStore
from server.releases.release_builder import load_run
from server.releases.release_store import ReleaseStore
from shared.catalogue_delta_format import manifest_sha256, sign_delta_list, verify_delta, verify_delta_list
from shared.config import ServiceConfig, ServiceSecrets
from shared.data.schema import Catalogue
from shared.errors import DataError, SignatureError
from shared.release_index import utc_seconds
from shared.signing import generate_private_key, save_private_key, save_public_key
from simulation.local_service import running as serve

pytestmark = pytest.mark.integration  # the tests share one store and build on each other's writes

TOKEN = "catalogue-admin-token-for-tests"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
SECRETS = ServiceSecrets(admin_token=TOKEN)  # what the services here are started with
WRITE = "/v1/admin/catalogue/items"


@dataclass
class Service:
    url: str
    store: ReleaseStore
    run: Path
    catalogue: Catalogue
    keys: Path


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    tmp = tmp_path_factory.mktemp("catalogue")
    run = write_model_run(tmp, tmp_path_factory.getbasetemp() / "catalogue-encoder-cache")
    store = release_of(run, tmp / "store")
    save_public_key(KEY.public_key(), tmp / "public.pem")
    save_private_key(KEY, tmp / "private.pem")
    config = ServiceConfig(
        release_store=store.root,
        run_dir=run,
        public_key=tmp / "public.pem",
        signing_key=str(tmp / "private.pem"),
        max_request_bytes=8_192,
        max_catalogue_batch=4,
    )
    with serve(config, SECRETS) as url:
        yield Service(url, store, run, load_run(run, KEY.public_key())[1], tmp)


def download(service: Service, release: int, sequence: int, out: Path) -> Path:
    """Every file of a delta, fetched from the service into `out` (as a device would)."""
    out.mkdir(parents=True, exist_ok=True)
    base = f"{service.url}/v1/releases/{release}/deltas/{sequence}/files"
    (out / "manifest.json").write_bytes(httpx.get(f"{base}/manifest.json").content)
    for name in json.loads((out / "manifest.json").read_text())["files"]:
        (out / name).write_bytes(httpx.get(f"{base}/{name}").content)
    return out


def test_writes_need_the_admin_token(service: Service) -> None:
    body = {"items": [new_item()]}
    assert httpx.post(service.url + WRITE, json=body).status_code == 401
    wrong = httpx.post(
        service.url + WRITE, json=body, headers={"Authorization": "Bearer not-the-token-at-all"}
    )
    assert wrong.status_code == 401 and wrong.json()["error"]["type"] == "AuthError"
    config = ServiceConfig(
        release_store=service.store.root,
        run_dir=service.run,
        public_key=service.keys / "public.pem",
        signing_key=str(service.keys / "private.pem"),
    )
    with serve(config, ServiceSecrets(admin_token="short")) as url:  # under 16 characters: admin routes off
        short = httpx.post(url + WRITE, json=body, headers={"Authorization": "Bearer short"})
    assert short.status_code == 401 and "admin routes are off" in short.json()["error"]["message"]
    assert DeltaStore(service.store).sequences(1) == []


@pytest.mark.parametrize(
    "content",
    [b"{items", json.dumps({"items": [new_item(title="")]}).encode(), json.dumps({"items": []}).encode()],
)
def test_the_admin_token_is_checked_before_the_body(service: Service, content: bytes) -> None:
    headers = {"Content-Type": "application/json"}
    missing = httpx.post(service.url + WRITE, content=content, headers=headers)
    assert missing.status_code == 401 and missing.json()["error"]["type"] == "AuthError"
    wrong = httpx.post(
        service.url + WRITE,
        content=content,
        headers={**headers, "Authorization": "Bearer not-the-token-at-all"},
    )
    assert wrong.status_code == 401 and wrong.json()["error"]["type"] == "AuthError"
    assert DeltaStore(service.store).sequences(1) == []
    schema = httpx.get(service.url + "/openapi.json").json()  # the body is still documented for clients
    body = schema["paths"][WRITE]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/CatalogueWrite"}


@pytest.mark.parametrize(
    ("body", "status", "kind"),
    [
        ({"items": []}, 422, "ValidationError"),
        ({"items": [new_item(title="")]}, 422, "ValidationError"),
        ({"items": [new_item(title="x" * 301)]}, 422, "ValidationError"),
        ({"items": [new_item(item_id="has space")]}, 422, "ValidationError"),
        ({"items": [new_item(price=-1)]}, 422, "ValidationError"),
        ({"items": [new_item(created_at=1_900_000_000_000)]}, 422, "ValidationError"),  # milliseconds
        ({"items": [new_item(status="gone")]}, 422, "ValidationError"),
        ({"items": [new_item(on_promotion=0)]}, 422, "ValidationError"),  # strict types: 0 is not false
        ({"items": [new_item(created_at="1899996400")]}, 422, "ValidationError"),
        ({"items": [new_item(title="lone \ud800 surrogate")]}, 422, "ValidationError"),
        ({"items": [new_item(title=" \t\u3000 ")]}, 422, "ValidationError"),  # only whitespace
        ({"items": [new_item(title="\u202e \u2066\u2069\u202a")]}, 422, "ValidationError"),  # only bidi
        ({"items": [new_item(brand="bell \u0007")]}, 422, "ValidationError"),
        ({"items": [new_item(colour="red")]}, 422, "ValidationError"),  # unknown field
        ({"items": [new_item(), new_item()]}, 422, "DataError"),  # the same id twice
        ({"items": [new_item(f"n{i}") for i in range(5)]}, 413, "PayloadTooLargeError"),  # over the batch
        ({"items": [new_item(description="d" * 2_000)] * 4}, 413, "PayloadTooLargeError"),  # over the bytes
    ],
)
def test_malformed_and_oversized_batches_are_refused(
    service: Service, body: dict[str, object], status: int, kind: str
) -> None:
    json_headers = {**ADMIN, "Content-Type": "application/json"}
    response = httpx.post(service.url + WRITE, content=json.dumps(body), headers=json_headers)  # \u escapes
    assert response.status_code == status and response.json()["error"]["type"] == kind
    assert DeltaStore(service.store).sequences(1) == [] and DeltaStore(service.store).record() == {}


@pytest.mark.parametrize(
    "title", ["   ", "\u00a0\n\t", "\u202a\u202b\u202c\u202d\u202e", " \u2066\u2067\u2068\u2069 "]
)
def test_a_title_of_only_whitespace_and_bidi_controls_is_refused_with_a_clear_message(
    service: Service, title: str
) -> None:
    response = httpx.post(service.url + WRITE, json={"items": [new_item(title=title)]}, headers=ADMIN)
    assert response.status_code == 422
    assert "items.0.title" in response.json()["error"]["message"]
    assert "visible text" in response.json()["error"]["message"]
    good = CatalogueItem.model_validate(new_item(title="\u2067Hebrew title\u2069 "))  # visible text passes
    assert good.title == "\u2067Hebrew title\u2069 "
    assert DeltaStore(service.store).sequences(1) == []


def test_not_json_is_refused(service: Service) -> None:
    response = httpx.post(
        service.url + WRITE, content=b"{items", headers={**ADMIN, "Content-Type": "application/json"}
    )
    assert response.status_code == 422 and DeltaStore(service.store).sequences(1) == []


def test_a_write_publishes_a_signed_delta_with_the_release_models_vectors(
    service: Service, tmp_path: Path
) -> None:
    unchanged = release_item(service.catalogue, 7)
    response = httpx.post(service.url + WRITE, json={"items": [new_item(), unchanged]}, headers=ADMIN)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["release"] == 1 and result["sequence"] == 1 and result["items"] == 2
    assert result["added"] == ["new-0001"] and result["changed"] == [unchanged["id"]]
    listing = httpx.get(f"{service.url}/v1/releases/1/deltas").json()
    assert listing["latest"] == 1 and verify_delta_list(listing, KEY.public_key(), 1) == [1]
    rows = verify_delta(download(service, 1, 1, tmp_path / "d1"), KEY.public_key(), service.store.manifest(1))
    release = service.store.folder(1)
    vectors, bias = np.load(release / "item_vectors_f32.npy"), np.load(release / "item_bias.npy")
    # the unchanged item gets its release row back: same encoder, text recipe, feature codes and tower, up
    # to the int8 rounding of the text the release's rows are derived from (shared/derived_items.py)
    half_step = float(np.load(release / "item_text_scales.npy")[7]) / 2
    up, down = np.load(release / "item_tower_up.npy"), np.load(release / "item_tower_down.npy")
    w = np.load(release / "item_tower_bias.npy")[:-2]
    gain = 1 + float(np.abs(up @ down).sum(axis=1).max())
    np.testing.assert_allclose(rows.vectors_f32[1], vectors[7], atol=half_step * gain + 1e-5)
    np.testing.assert_allclose(rows.bias[1], bias[7], atol=half_step * float(np.abs(w).sum()) + 1e-5)
    assert np.abs(rows.vectors_f32[0] - vectors).max(axis=1).min() > 1e-3  # the new item is no release row
    dequantised = rows.vectors_int8.astype(np.float32) * rows.scales[:, None]
    np.testing.assert_allclose(dequantised, rows.vectors_f32, atol=float(rows.scales.max()))
    assert [item["id"] for item in rows.items] == ["new-0001", unchanged["id"]]
    assert rows.items[0]["created_at"] == new_item()["created_at"] and rows.active().all()


def test_delta_manifest_and_files_have_etags(service: Service) -> None:
    base = f"{service.url}/v1/releases/1/deltas/1"
    manifest = httpx.get(base)
    assert manifest.status_code == 200 and manifest.json()["kind"] == "catalogue-delta"
    assert httpx.get(base, headers={"If-None-Match": manifest.headers["etag"]}).status_code == 304
    listed = httpx.get(f"{service.url}/v1/releases/1/deltas").json()["deltas"][0]["manifest_sha256"]
    assert manifest.headers["etag"] == f'"{listed}"'  # the manifest's sha256 as the signed list names it
    name = "item_vectors_f32.npy"
    file = httpx.get(f"{base}/files/{name}")
    assert file.headers["etag"] == f'"{manifest.json()["files"][name]["sha256"]}"'
    assert (
        httpx.get(f"{base}/files/{name}", headers={"If-None-Match": file.headers["etag"]}).status_code == 304
    )
    for path in (
        "/v1/releases/1/deltas/9",
        "/v1/releases/7/deltas",
        f"{base[len(service.url) :]}/files/key.pem",
    ):
        missing = httpx.get(service.url + path)
        assert missing.status_code == 404 and missing.json()["error"]["type"] == "NotFoundError"


def test_changes_and_removals_make_the_next_cumulative_delta(service: Service, tmp_path: Path) -> None:
    before = DeltaStore(service.store).sequences(1)[-1]
    gone = release_item(service.catalogue, 3) | {"status": "out_of_stock"}
    changed = new_item(price=9.5, on_promotion=True)
    response = httpx.post(service.url + WRITE, json={"items": [changed, gone]}, headers=ADMIN)
    assert response.status_code == 200, response.text
    assert response.json()["sequence"] == before + 1 and response.json()["changed"] == [
        "new-0001",
        gone["id"],
    ]
    rows = verify_delta(
        download(service, 1, before + 1, tmp_path / "d"), KEY.public_key(), service.store.manifest(1)
    )
    by_id = {item["id"]: (row, item) for row, item in enumerate(rows.items)}
    assert {"new-0001", gone["id"], release_item(service.catalogue, 7)["id"]} <= set(by_id)  # cumulative
    row, item = by_id["new-0001"]
    assert item["price"] == 9.5 and item["on_promotion"] and item["status"] == "active"
    assert by_id[gone["id"]][1]["status"] == "out_of_stock" and not rows.active()[by_id[gone["id"]][0]]
    earlier = verify_delta(
        download(service, 1, 1, tmp_path / "d1"), KEY.public_key(), service.store.manifest(1)
    )
    assert not np.allclose(
        earlier.vectors_f32[0], rows.vectors_f32[row]
    )  # promotion changes the tower's input
    page = httpx.get(f"{service.url}/v1/catalogue", params={"offset": 0, "limit": 100}).json()
    statuses = {item["id"]: item["status"] for item in page["items"]}
    assert page["total"] == service.catalogue.n_items + 1 and statuses["new-0001"] == "active"
    assert statuses[gone["id"]] == "out_of_stock"  # the paged catalogue shows the writes
    metrics = httpx.get(f"{service.url}/metrics").text
    assert 'fedhome_requests_total{route="/v1/admin/catalogue/items",status="200"}' in metrics


def test_a_delta_does_not_verify_for_another_release_key_or_after_a_flipped_byte(
    service: Service, tmp_path: Path
) -> None:
    folder = download(service, 1, 1, tmp_path / "d")
    manifest = service.store.manifest(1)
    with pytest.raises(SignatureError):
        verify_delta(folder, generate_private_key().public_key(), manifest)
    with pytest.raises(DataError):
        verify_delta(folder, KEY.public_key(), {**manifest, "run_id": "another"})
    data = bytearray((folder / "item_bias.npy").read_bytes())
    data[-1] ^= 1
    (folder / "item_bias.npy").write_bytes(bytes(data))
    with pytest.raises(SignatureError):
        verify_delta(folder, KEY.public_key(), manifest)


def test_writes_are_unavailable_when_the_served_run_is_not_the_releases(
    service: Service, tmp_path: Path
) -> None:
    store = ReleaseStore(tmp_path / "store")
    model, catalogue = random_model()
    store.publish(model, catalogue, source("other"), KEY)  # a release of another model than the run's
    keys = service.keys
    config = ServiceConfig(
        release_store=store.root,
        run_dir=service.run,
        public_key=keys / "public.pem",
        signing_key=str(keys / "private.pem"),
    )
    with serve(config, SECRETS) as url:
        response = httpx.post(url + WRITE, json={"items": [new_item()]}, headers=ADMIN)
    assert response.status_code == 503 and response.json()["error"]["type"] == "UnavailableError"
    assert DeltaStore(store).sequences(1) == [] and DeltaStore(store).record() == {}


def test_writes_are_unavailable_when_the_signing_key_file_is_missing(service: Service) -> None:
    config = ServiceConfig(
        release_store=service.store.root,
        run_dir=service.run,
        public_key=service.keys / "public.pem",
        signing_key=str(service.keys / "no-such-key.pem"),
    )
    before = DeltaStore(service.store).sequences(1)
    with serve(config, SECRETS) as url:
        response = httpx.post(url + WRITE, json={"items": [new_item("k-1")]}, headers=ADMIN)
    assert response.status_code == 503 and response.json()["error"]["type"] == "UnavailableError"
    assert DeltaStore(service.store).sequences(1) == before


def test_a_device_syncs_the_release_and_its_newest_delta(
    service: Service, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = ReleaseCache(tmp_path / "device", KEY.public_key())
    result = sync(cache, service.url)
    assert result.installed == 1 and result.delta == DeltaStore(service.store).sequences(1)[-1]
    assert sync(cache, service.url).delta is None  # nothing newer
    ranker = open_ranker(cache, precision="float32")
    assert ranker.items[ranker.index["new-0001"]]["price"] == 9.5  # the latest state of the item
    history = tmp_path / "history.jsonl"
    history.write_text(
        json.dumps({"item_id": service.catalogue.item_ids[0], "event": "view", "timestamp": NOW})
    )
    args = ["--cache", str(cache.root), "--public-key", str(service.keys / "public.pem")]
    assert client_cli.main(["homepage", *args, "--history", str(history), "--now", str(NOW)]) == 0
    shown = {card["item_id"] for s in json.loads(capsys.readouterr().out)["sections"] for card in s["cards"]}
    assert "new-0001" in shown and release_item(service.catalogue, 3)["id"] not in shown  # out of stock


def test_the_index_names_each_new_delta_so_a_replayed_index_cannot_hold_a_device_back(
    service: Service, tmp_path: Path
) -> None:
    release = service.store.latest()
    assert release is not None
    device = ReleaseCache(tmp_path / "device", KEY.public_key())
    sync(device, service.url)
    index_file = service.store.root / "index.json"
    before = index_file.read_bytes()  # what a mirror saved before the write below
    written = httpx.post(service.url + WRITE, json={"items": [new_item("k-replay")]}, headers=ADMIN).json()
    index = service.store.index(KEY.public_key())
    (entry,) = [r for r in index["releases"] if r["version"] == release]
    listed = httpx.get(f"{service.url}/v1/releases/{release}/deltas").json()["deltas"][-1]
    assert entry["delta"] == {"sequence": written["sequence"], "manifest_sha256": listed["manifest_sha256"]}
    assert index["serial"] == json.loads(before)["serial"] + 1  # the delta re-signed the index
    stale = ReleaseCache(tmp_path / "stale-device", KEY.public_key())
    shutil.copytree(device.root, stale.root, dirs_exist_ok=True)  # a second device, still on the old head
    assert sync(device, service.url).delta == written["sequence"]
    after = index_file.read_bytes()
    try:
        index_file.write_bytes(before)  # the mirror replays it
        with pytest.raises(SignatureError, match="replayed"):  # a device that saw the new index
            sync(device, service.url)
        assert DeltaCache(device).applied(release) == written["sequence"]
        assert sync(stale, service.url).delta is None  # one that did not: held back, but only until
        with pytest.raises(DataError, match="expired"):  # the replayed index expires
            sync(stale, service.url, now_s=utc_seconds(json.loads(before)["expires_utc"]) + 1)
    finally:
        index_file.write_bytes(after)
    assert sync(stale, service.url).delta == written["sequence"]


def test_a_delta_that_is_not_the_head_the_index_names_is_refused(service: Service, tmp_path: Path) -> None:
    release = service.store.latest()
    assert release is not None
    device = ReleaseCache(tmp_path / "device", KEY.public_key())
    device.install(copy_from(service.store.folder(release)))  # the release, no delta yet
    index = service.store.index(KEY.public_key())
    (entry,) = [r for r in index["releases"] if r["version"] == release]
    head = dict(entry["delta"])
    entry["delta"] = {"sequence": head["sequence"], "manifest_sha256": "0" * 64}
    with pytest.raises(SignatureError, match="head"):  # validly signed files, but not what the index names
        sync_deltas(device, service.url, index)
    assert DeltaCache(device).applied(release) is None and not (device.root / "deltas" / "incoming").exists()
    entry["delta"] = head
    assert sync_deltas(device, service.url, index) == head["sequence"]
    oldest = DeltaStore(service.store).sequences(release)[0]  # the oldest kept (older ones are pruned)
    assert oldest < head["sequence"]
    older = DeltaStore(service.store).manifest(release, oldest)
    entry["delta"] = {"sequence": oldest, "manifest_sha256": manifest_sha256(older)}
    assert sync_deltas(device, service.url, index) is None  # older than the applied one: nothing done
    del entry["delta"]
    assert sync_deltas(device, service.url, index) is None  # no head named
    assert DeltaCache(device).applied(release) == head["sequence"]


def test_sync_fetches_again_an_applied_delta_altered_on_the_device(service: Service, tmp_path: Path) -> None:
    cache = ReleaseCache(tmp_path / "device", KEY.public_key())
    latest = sync(cache, service.url).delta
    assert latest is not None
    bias = cache.root / "deltas" / "000001" / f"{latest:06d}" / "item_bias.npy"
    bias.write_bytes(bias.read_bytes()[:-1] + b"\x00")
    with pytest.raises(SignatureError):
        open_ranker(cache)  # never used altered
    assert sync(cache, service.url).delta == latest  # repaired by the next sync, not stuck
    assert "new-0001" in open_ranker(cache).index


def test_catalogue_add_command_and_carry_over_to_a_new_release(
    service: Service, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = service.keys / "private.pem"
    common = ["--store", str(service.store.root), "--run", str(service.run), "--signing-key", str(key)]
    before = DeltaStore(service.store).sequences(1)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(new_item("cli-1")) + "\n" + json.dumps(new_item("cli-2", title="")) + "\n")
    assert server_cli.main(["catalogue-add", str(bad), *common]) == 2
    assert "bad.jsonl:2: title" in capsys.readouterr().err
    assert DeltaStore(service.store).sequences(1) == before  # nothing published
    good = tmp_path / "items.jsonl"
    good.write_text(
        json.dumps(new_item("cli-1", title="Cast iron frying pan", category="Home > Kitchen")) + "\n"
    )
    assert server_cli.main(["catalogue-add", str(good), *common]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["sequence"] == before[-1] + 1 and result["added"] == ["cli-1"]
    record = DeltaStore(service.store).record()
    device = ReleaseCache(tmp_path / "device", KEY.public_key())
    sync(device, service.url)
    assert (
        server_cli.main(
            ["release", str(service.run), "--store", str(service.store.root), "--signing-key", str(key)]
        )
        == 0
    )
    rows = verify_delta(DeltaStore(service.store).folder(2, 1), KEY.public_key(), service.store.manifest(2))
    assert [item["id"] for item in rows.items] == list(record)  # every written item, now for release 2
    result = sync(device, service.url)
    assert result.installed == 2 and result.delta == 1 and set(record) <= set(open_ranker(device).index)


def _signed(release_offset: int, *entries: dict[str, object]) -> Callable[[int], dict[str, object]]:
    """A delta list of (latest release + release_offset) signed with the service's key."""
    return lambda latest: sign_delta_list(latest + release_offset, list(entries), KEY)


@pytest.mark.parametrize(
    ("listing", "route"),
    [
        (lambda latest: b"{not json", "/v1/releases/{v}/deltas"),
        (_signed(0, list_entry(1), list_entry(1)), "/v1/releases/{v}/deltas"),  # a sequence twice
        (_signed(1, list_entry(1)), "/v1/releases/{v}/deltas"),  # another release's list
        (_signed(0, {"items": 1}), "/v1/releases/{v}/deltas"),  # an entry without a sequence
        (_signed(0, list_entry("one")), "/v1/releases/{v}/deltas/1"),
        (_signed(0, list_entry(1)), "/v1/releases/{v}/deltas/1"),  # its manifest is not JSON
        (_signed(0, list_entry(1)), "/v1/catalogue"),  # its items.json is not JSON
    ],
)
def test_the_stores_own_corrupt_delta_files_are_a_server_error_not_the_callers(
    service: Service, tmp_path: Path, listing: Callable[[int], object], route: str
) -> None:
    root = tmp_path / "store"
    shutil.copytree(service.store.root, root, ignore=shutil.ignore_patterns("deltas"))
    latest = ReleaseStore(root).latest()
    assert latest is not None
    folder = root / "deltas" / f"{latest:06d}" / "000001"
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_bytes(b"{not json")
    (folder / "items.json").write_bytes(b"[{")
    text = listing(latest)
    (folder.parent / "index.json").write_bytes(text if isinstance(text, bytes) else json.dumps(text).encode())
    config = ServiceConfig(release_store=root, run_dir=service.run, public_key=service.keys / "public.pem")
    with serve(config) as url:
        response = httpx.get(url + route.format(v=latest))
    assert response.status_code == 500 and response.json()["error"]["type"] == "CorruptStoreError"
    record = root / "deltas" / "catalogue.json"
    record.write_bytes(b'{"no items": 1}')
    with pytest.raises(CorruptStoreError, match=r"catalogue\.json") as refused:
        DeltaStore(ReleaseStore(root)).record()
    assert error_response(refused.value).status_code == 500
