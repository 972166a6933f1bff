"""The model service's hardening (issue 17), on a real uvicorn server on loopback: the privacy report and
dashboard built once per state of the ledger, a corrupt or edited release index answered as a server fault
(and /health saying so), tampered release files refused at start and at serve time, crash leftovers
(staging folders, a delta the index does not name yet, a second withdrawal, old deltas), and the API docs
offline with each route's own errors."""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from catalogue_toy import new_item
from ledger_toy import KEY, write_run
from release_toy import random_model, two_releases

from client.device.deltas import open_ranker
from client.device.release_cache import ReleaseCache
from client.device.sync import sync
from server.catalogue.catalogue_items import CatalogueItem, ItemEncoder
from server.catalogue.delta_publisher import DeltaBase, DeltaStore
from server.releases.release_store import ReleaseStore, StoreError
from shared.catalogue_delta_format import verify_delta_list
from shared.config import EncoderConfig, ServiceConfig, ServiceSecrets
from shared.data.schema import Catalogue
from shared.errors import SignatureError
from simulation.local_service import running

pytestmark = pytest.mark.integration

TOKEN = "hardening-admin-token-for-tests"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
SECRETS = ServiceSecrets(admin_token=TOKEN)
TIMEOUT_S = 60  # the first report build takes a while on a loaded machine


@dataclass
class Site:
    root: Path
    store: ReleaseStore
    config: ServiceConfig


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two releases signed with ledger_toy.KEY, the keys and a 3-round run beside them (copied per test)."""
    tmp = tmp_path_factory.mktemp("hardening")
    two_releases(tmp, KEY)
    write_run(tmp / "run", rounds=3)
    return tmp


@pytest.fixture
def site(published: Path, tmp_path: Path) -> Site:
    root = tmp_path / "site"
    shutil.copytree(published, root)
    config = ServiceConfig(
        release_store=root / "store",
        run_dir=root / "run",
        public_key=root / "public.pem",
        signing_key=str(root / "private.pem"),
        max_request_bytes=2_048,
    )
    return Site(root, ReleaseStore(root / "store"), config)


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))


def report_builds(url: str) -> dict[str, float]:
    """The service's report and dashboard builds so far, by page, from its /metrics."""
    text = httpx.get(f"{url}/metrics").text
    pattern = r'^fedhome_report_builds_total\{page="(\w+)"\} (\S+)$'
    return {match[1]: float(match[2]) for match in re.finditer(pattern, text, flags=re.M)}


class ToyDeltas(DeltaStore):
    """A delta store whose items' text vectors are random unit vectors instead of the encoder's (no model
    to load); everything else, the item tower included, is the real publication."""

    def _embed(self, base: DeltaBase, items: Catalogue) -> tuple[np.ndarray, int]:
        rng = np.random.default_rng(len(items.item_ids))
        text = rng.normal(size=(items.n_items, int(base.model.items.text.shape[1]))).astype(np.float32)
        return text / np.linalg.norm(text, axis=1, keepdims=True), items.n_items


def toy_base(store: ReleaseStore, version: int) -> DeltaBase:
    """The base of the fixture's release `version` (random_model(version - 1), as `published` made it)."""
    model, catalogue = random_model(version - 1)
    return DeltaBase(version, store.manifest(version), model, catalogue, ItemEncoder(EncoderConfig()))


def write(deltas: DeltaStore, base: DeltaBase, item_id: str) -> int:
    """Publish one new item as the next delta of `base`'s release; returns its sequence."""
    return deltas.publish(base, [CatalogueItem.model_validate(new_item(item_id))], KEY).sequence


# 1. The privacy report and the dashboard: built once per state of the ledger, one build at a time.


def test_the_report_and_dashboard_are_built_once_per_state_of_the_ledger(site: Site) -> None:
    ledger = site.root / "run" / "ledger.jsonl"
    longer = write_run(site.root / "longer", rounds=4) / "ledger.jsonl"  # the same entries and a fourth
    with running(site.config) as url:
        with ThreadPoolExecutor(4) as pool:  # concurrent requests wait for the one build
            answers = list(
                pool.map(lambda _: httpx.get(f"{url}/v1/privacy/report", timeout=TIMEOUT_S), range(4))
            )
        assert [a.status_code for a in answers] == [200] * 4
        assert all(a.json() == answers[0].json() for a in answers) and len(answers[0].json()["rounds"]) == 3
        assert report_builds(url) == {"report": 1}
        pages = [httpx.get(f"{url}/dashboard", timeout=TIMEOUT_S) for _ in range(2)]
        assert [p.status_code for p in pages] == [200, 200] and pages[0].text == pages[1].text
        assert report_builds(url) == {"report": 1, "dashboard": 1}  # the dashboard reuses the report

        with ledger.open("ab") as out:  # the run appends an entry
            out.write(longer.read_bytes().splitlines(keepends=True)[3])
        appended = httpx.get(f"{url}/v1/privacy/report", timeout=TIMEOUT_S).json()
        assert len(appended["rounds"]) == 4 and appended["verification"]["ok"]
        assert report_builds(url) == {"report": 2, "dashboard": 1}

        before = ledger.stat()  # an edit of the same size, its modification time put back
        data = bytearray(ledger.read_bytes())
        at = data.index(b'"signature":"') + len(b'"signature":"')
        data[at] = ord("0") if data[at] != ord("0") else ord("1")
        ledger.write_bytes(bytes(data))
        os.utime(ledger, ns=(before.st_atime_ns, before.st_mtime_ns))
        assert ledger.stat().st_size == before.st_size and ledger.stat().st_mtime_ns == before.st_mtime_ns
        edited = httpx.get(f"{url}/v1/privacy/report", timeout=TIMEOUT_S).json()
        assert not edited["verification"]["ok"]
        assert httpx.get(f"{url}/dashboard", timeout=TIMEOUT_S).text != pages[0].text
        assert report_builds(url) == {"report": 3, "dashboard": 2}


# 2. A corrupt or edited index: a server fault on every route that reads it, and /health says so.


def damage_index(path: Path, damage: str) -> None:
    if damage == "not JSON":
        path.write_bytes(b"{not json")
    elif damage == "not an index":
        path.write_text("[1, 2]")
    else:  # release 2 marked withdrawn by hand, the signature left as it was
        head, found, tail = path.read_text().rpartition('"withdrawn": false')
        assert found
        path.write_text(head + '"withdrawn": true' + tail)


@pytest.mark.parametrize("damage", ["not JSON", "not an index", "edited"])
def test_a_corrupt_or_edited_index_is_a_server_fault_and_health_says_so(site: Site, damage: str) -> None:
    index = site.store.root / "index.json"
    damage_index(index, damage)
    kind = "SignatureError" if damage == "edited" else "StoreError"
    with running(site.config) as url:
        health = httpx.get(f"{url}/health")
        assert health.status_code == 503 and health.json()["status"] == "unhealthy"
        routes = ["/v1/releases", "/v1/releases/latest", "/v1/releases/2", "/v1/releases/2/files/items.json"]
        for route in [*routes, "/v1/catalogue", "/v1/releases/2/deltas", "/dashboard"]:
            response = httpx.get(url + route, timeout=TIMEOUT_S)
            assert response.status_code in (500, 503), route
            assert response.json()["error"]["type"] == kind, route
    damaged = index.read_bytes()
    with pytest.raises((SignatureError, StoreError)):  # a write never re-signs an index it cannot verify
        site.store.withdraw(1, reason="regression", key=KEY)
    assert index.read_bytes() == damaged


# 3. Tampered release files: refused, whether tampered before the service started or after.


def test_a_release_tampered_before_start_is_refused_and_the_start_names_it(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    flip_byte(site.store.folder(1) / "item_vectors_int8.npy")
    with caplog.at_level(logging.ERROR), running(site.config) as url:
        named = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert any("release 1" in m and "item_vectors_int8.npy" in m for m in named), named
        files = "/v1/releases/1/files"
        for route in ("/v1/releases/1", f"{files}/item_vectors_int8.npy", f"{files}/items.json"):
            refused = httpx.get(url + route)
            assert refused.status_code == 500 and refused.json()["error"]["type"] == "SignatureError", route
        assert httpx.get(f"{url}/v1/releases/2/files/item_vectors_int8.npy").status_code == 200
        health = httpx.get(f"{url}/health")
        assert health.status_code == 200
        assert health.json() == {**health.json(), "status": "degraded", "refused_releases": [1]}


def test_a_release_file_tampered_after_start_is_refused(site: Site) -> None:
    name = "item_vectors_int8.npy"
    with running(site.config) as url:
        first = httpx.get(f"{url}/v1/releases/2/files/{name}")
        assert first.status_code == 200
        items = site.store.folder(1) / "items.json"
        items.write_bytes(items.read_bytes())  # the same bytes written again: checked again, still served
        assert httpx.get(f"{url}/v1/releases/1/files/items.json").status_code == 200
        flip_byte(site.store.folder(2) / name)
        for headers in ({}, {"If-None-Match": first.headers["etag"]}):
            refused = httpx.get(f"{url}/v1/releases/2/files/{name}", headers=headers)
            assert refused.status_code == 500 and refused.json()["error"]["type"] == "SignatureError"
        assert httpx.get(f"{url}/v1/releases/latest").status_code == 500  # the release as a whole
        assert httpx.get(f"{url}/v1/releases/2/files/items.json").status_code == 500
        assert httpx.get(f"{url}/v1/releases/1/files/{name}").status_code == 200
        assert httpx.get(f"{url}/health").json()["refused_releases"] == [2]


# 4. Crash leftovers.


def test_staging_leftovers_are_removed_when_the_store_opens_and_no_writer_holds_the_lock(site: Site) -> None:
    root = site.store.root
    leftovers = [root / ".staging-000003-4242", root / "deltas" / "000001" / ".staging-000002-4242"]
    others = [root / ".staging", root / "notes", root / "deltas" / "000001" / "staging-000002"]
    for folder in leftovers + others:
        folder.mkdir(parents=True)
        (folder / "file").write_text("x")
    with (root / ".index.lock").open("w") as index_lock, (root / "deltas" / ".lock").open("w") as delta_lock:
        fcntl.flock(index_lock, fcntl.LOCK_EX)  # writers at work: their staging folders may be live
        fcntl.flock(delta_lock, fcntl.LOCK_EX)
        DeltaStore(ReleaseStore(root))
        assert all(folder.exists() for folder in leftovers)
    with running(site.config) as url:  # the service opens the store
        assert not any(folder.exists() for folder in leftovers)
        assert all(folder.exists() for folder in others)
        assert httpx.get(f"{url}/health").json()["status"] == "ok"


def test_the_catalogue_shows_only_the_delta_the_signed_index_names(site: Site) -> None:
    deltas, base = ToyDeltas(site.store), toy_base(site.store, 2)
    assert write(deltas, base, "toy-1") == 1
    named = (site.store.root / "index.json").read_bytes()
    assert write(deltas, base, "toy-2") == 2
    (site.store.root / "index.json").write_bytes(named)  # as a crash before the index named delta 2 leaves it
    with running(site.config) as url:
        page = httpx.get(f"{url}/v1/catalogue", params={"offset": 300, "limit": 50}).json()
    assert [item["id"] for item in page["items"]] == ["toy-1"] and page["total"] == 301


def test_a_second_withdrawal_is_a_conflict_and_keeps_the_first_reason(site: Site) -> None:
    route = "/v1/admin/releases/2/withdraw"
    with running(site.config, SECRETS) as url:
        first = httpx.post(url + route, json={"reason": "regression"}, headers=ADMIN)
        assert first.status_code == 200 and first.json() == {"withdrawn": 2, "latest": 1}
        serial = site.store.index(KEY.public_key())["serial"]
        again = httpx.post(url + route, json={"reason": "another reason"}, headers=ADMIN)
        assert again.status_code == 409 and again.json()["error"]["type"] == "AlreadyWithdrawnError"
    index = site.store.index(KEY.public_key())
    assert index["serial"] == serial and index["releases"][1]["reason"] == "regression"


def test_old_deltas_are_pruned_and_devices_still_sync(site: Site, tmp_path: Path) -> None:
    deltas, base = ToyDeltas(site.store), toy_base(site.store, 2)
    device = ReleaseCache(tmp_path / "device", KEY.public_key())
    with running(site.config) as url:
        for n in range(1, 6):
            assert write(deltas, base, f"toy-{n}") == n
            if n == 3:
                assert sync(device, url).delta == 3
        kept = sorted(p.name for p in (deltas.root / "000002").iterdir() if p.is_dir())
        assert kept == ["000004", "000005"]  # the head and the one before it
        assert verify_delta_list(deltas.listing(2), KEY.public_key(), 2) == [4, 5]
        assert sync(device, url).delta == 5  # a device on an old delta gets the head
        assert {f"toy-{n}" for n in range(1, 6)} <= set(open_ranker(device).index)  # deltas are cumulative
        flip_byte(deltas.folder(2, 5) / "items.json")  # a delta file tampered after start
        refused = httpx.get(f"{url}/v1/releases/2/deltas/5/files/items.json")
        assert refused.status_code == 500 and refused.json()["error"]["type"] == "SignatureError"


# 5. The API docs offline, each route's own errors, and the admin token before the body's length.


def test_the_docs_page_loads_only_local_assets(site: Site) -> None:
    with running(site.config) as url:
        page = httpx.get(f"{url}/docs")
        assert page.status_code == 200 and "swagger-ui" in page.text
        assets = re.findall(r'(?:src|href)="([^"]+)"', page.text) + re.findall(r"url: '([^']+)'", page.text)
        assert len(assets) >= 4 and "http://" not in page.text and "https://" not in page.text
        for asset in assets:
            assert asset.startswith("/") and httpx.get(url + asset).status_code == 200, asset
        assert httpx.get(f"{url}/redoc").status_code == 404  # no page that would load from a CDN


def test_each_route_documents_a_summary_and_only_the_errors_it_can_return(site: Site) -> None:
    with running(site.config) as url:
        schema = httpx.get(f"{url}/openapi.json").json()
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            assert operation.get("summary") and operation.get("description"), (method, path)
            admin = path.startswith("/v1/admin/")
            assert admin == ("401" in operation["responses"]) == ("413" in operation["responses"]), path
    latest = schema["paths"]["/v1/releases/latest"]["get"]["responses"]
    assert {"404", "500", "503"} <= set(latest) and not {"401", "411", "413", "422"} & set(latest)
    assert "404" not in schema["paths"]["/health"]["get"]["responses"]
    withdraw = schema["paths"]["/v1/admin/releases/{version}/withdraw"]["post"]["responses"]
    assert {"401", "404", "409", "411", "413", "422", "503"} <= set(withdraw)
    error = {"$ref": "#/components/schemas/ErrorResponse"}
    assert withdraw["409"]["content"]["application/json"]["schema"] == error
    # an HTML route's errors are the JSON body too (schemathesis flagged a 422 documented as text/html)
    for path in ("/dashboard", "/dashboard/releases/{version}", "/demo"):
        for code, response in schema["paths"][path]["get"]["responses"].items():
            if code != "200":
                assert response["content"] == {"application/json": {"schema": error}}, (path, code)


@pytest.mark.parametrize(
    ("route", "body"),
    [("/v1/admin/releases/2/withdraw", b'{"reason": "x"}'), ("/v1/admin/catalogue/items", b'{"items": []}')],
)
def test_admin_routes_answer_401_before_411_and_413(site: Site, route: str, body: bytes) -> None:
    json_type = {"Content-Type": "application/json"}
    with running(site.config, SECRETS) as url:
        for auth in ({}, {"Authorization": "Bearer not-the-token-at-all"}):
            chunked = httpx.post(url + route, content=iter([body]), headers={**json_type, **auth})
            assert chunked.status_code == 401 and chunked.json()["error"]["type"] == "AuthError"
            too_big = httpx.post(url + route, content=b" " * 4_096 + body, headers={**json_type, **auth})
            assert too_big.status_code == 401 and too_big.json()["error"]["type"] == "AuthError"
        chunked = httpx.post(url + route, content=iter([body]), headers={**json_type, **ADMIN})
        assert chunked.status_code == 411 and chunked.json()["error"]["type"] == "LengthRequiredError"
        too_big = httpx.post(url + route, content=b" " * 4_096 + body, headers={**json_type, **ADMIN})
        assert too_big.status_code == 413 and too_big.json()["error"]["type"] == "PayloadTooLargeError"
    assert site.store.latest() == 2
