"""The model service on a real uvicorn server on loopback: releases with ETags, files, catalogue, the privacy
ledger and report, admin auth, limits and typed errors, metrics, and a device syncing over HTTP."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from ledger_toy import KEY, write_run
from release_toy import two_releases

from client.device.release_cache import ReleaseCache, copy_from
from client.device.sync import sync
from server.releases.release_store import ReleaseStore
from shared.config import ServiceConfig, ServiceSecrets
from simulation.local_service import running

pytestmark = pytest.mark.integration

TOKEN = "s3cret-admin-token-for-tests"


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> ServiceConfig:
    tmp = tmp_path_factory.mktemp("service")
    store = two_releases(tmp, KEY)
    return ServiceConfig(
        release_store=store.root,
        run_dir=write_run(tmp / "run", rounds=3),
        public_key=tmp / "public.pem",
        signing_key=str(tmp / "private.pem"),
        max_request_bytes=2_048,
        max_page_size=50,
    )


@pytest.fixture(scope="module")
def service(config: ServiceConfig) -> Iterator[tuple[str, ReleaseStore, Path]]:
    """The service, started with the admin token TOKEN."""
    with running(config, ServiceSecrets(admin_token=TOKEN)) as url:
        yield url, ReleaseStore(config.release_store), config.run_dir


@pytest.fixture(scope="module")
def tokenless(config: ServiceConfig) -> Iterator[str]:
    """The same store served by a service started without an admin token: its admin routes are off."""
    with running(config, ServiceSecrets(admin_token="")) as url:
        yield url


def test_health_index_and_latest_manifest_with_etag(service: tuple[str, ReleaseStore, Path]) -> None:
    base, store, _ = service
    health, latest = httpx.get(f"{base}/health").json(), store.latest()
    assert health == {"status": "ok", "latest_release": latest, "refused_releases": [], "problem": None}
    index = httpx.get(f"{base}/v1/releases").json()
    assert [r["version"] for r in index["releases"]] == store.versions() and index["signature"]
    first = httpx.get(f"{base}/v1/releases/latest")
    assert first.status_code == 200 and first.json()["version"] == store.latest()
    again = httpx.get(f"{base}/v1/releases/latest", headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304


def test_files_have_their_signed_sha256_as_etag(service: tuple[str, ReleaseStore, Path]) -> None:
    base, store, _ = service
    manifest = store.manifest(1)
    name = "item_vectors_int8.npy"
    response = httpx.get(f"{base}/v1/releases/1/files/{name}")
    assert response.status_code == 200 and response.content == (store.folder(1) / name).read_bytes()
    assert response.headers["etag"] == f'"{manifest["files"][name]["sha256"]}"'
    cached = httpx.get(
        f"{base}/v1/releases/1/files/{name}", headers={"If-None-Match": response.headers["etag"]}
    )
    assert cached.status_code == 304 and cached.content == b""


@pytest.mark.parametrize(
    ("path", "status", "kind"),
    [
        ("/v1/releases/99", 404, "NotFoundError"),
        ("/v1/releases/1/files/secret.pem", 404, "NotFoundError"),
        ("/v1/releases/1/files/..%2F..%2Fpublic.pem", 404, None),
        ("/v1/catalogue?limit=51", 422, "ValidationError"),
        ("/v1/releases/notanumber", 422, "ValidationError"),
        ("/v1/nothing-here", 404, "NotFoundError"),
    ],
)
def test_bad_requests_get_typed_errors(
    service: tuple[str, ReleaseStore, Path], path: str, status: int, kind: str | None
) -> None:
    response = httpx.get(service[0] + path)
    assert response.status_code == status
    if kind is not None:
        assert response.json()["error"]["type"] == kind


def test_catalogue_is_paged(service: tuple[str, ReleaseStore, Path]) -> None:
    page = httpx.get(f"{service[0]}/v1/catalogue", params={"offset": 290, "limit": 50}).json()
    assert page["total"] == 300 and len(page["items"]) == 10 and page["items"][0]["id"]


def test_privacy_ledger_and_report(service: tuple[str, ReleaseStore, Path]) -> None:
    base, _, run = service
    ledger = httpx.get(f"{base}/v1/privacy/ledger")
    assert ledger.content == (run / "ledger.jsonl").read_bytes()
    report = httpx.get(f"{base}/v1/privacy/report").json()
    assert report["verification"]["ok"] and report["guarantee"]["unit_of_privacy"] == "user"


def test_admin_withdrawal_needs_the_token_and_limits_hold(service: tuple[str, ReleaseStore, Path]) -> None:
    base, store, _ = service
    url = f"{base}/v1/admin/releases/2/withdraw"
    assert httpx.post(url, json={"reason": "x"}).status_code == 401
    assert httpx.post(url, json={"reason": "x"}, headers={"Authorization": "Bearer wrong"}).status_code == 401
    auth = {"Authorization": f"Bearer {TOKEN}"}
    malformed = httpx.post(url, content=b"{not json", headers={**auth, "Content-Type": "application/json"})
    assert malformed.status_code == 422 and malformed.json()["error"]["type"] == "ValidationError"
    binary = httpx.post(url, content=b"\xff\xfe\x00", headers={**auth, "Content-Type": "application/json"})
    assert binary.status_code in (400, 422) and "error" in binary.json()
    too_big = httpx.post(url, json={"reason": "x" * 5_000}, headers=auth)
    assert too_big.status_code == 413 and too_big.json()["error"]["type"] == "PayloadTooLargeError"
    chunked = httpx.post(
        url, content=iter([b'{"reason": "x"}']), headers={**auth, "Content-Type": "application/json"}
    )
    assert chunked.status_code == 411 and chunked.json()["error"]["type"] == "LengthRequiredError"
    assert store.latest() == 2  # nothing refused changed anything


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"\xff\xfe\x00", b"[]", b"{}", b'{"reason": ""}', b'{"reason": 5}', b'{"reason": "x"}'],
)
@pytest.mark.parametrize("token", [TOKEN, None])  # admin routes on, then off (no token configured)
def test_withdrawal_checks_the_admin_token_before_the_body(
    service: tuple[str, ReleaseStore, Path], request: pytest.FixtureRequest, content: bytes, token: str | None
) -> None:
    base = service[0] if token else request.getfixturevalue("tokenless")  # started with, or without, a token
    store = service[1]
    url = f"{base}/v1/admin/releases/2/withdraw"
    json_type = {"Content-Type": "application/json"}
    for auth in ({}, {"Authorization": "Bearer not-the-token-at-all"}, {"Authorization": TOKEN}):
        refused = httpx.post(url, content=content, headers={**json_type, **auth})
        assert refused.status_code == 401 and refused.json()["error"]["type"] == "AuthError"
    assert store.latest() == 2 and not store.index(KEY.public_key())["releases"][1]["withdrawn"]


@pytest.mark.parametrize("content", [b"{not json", b"[]", b"{}", b'{"reason": ""}', b'{"reason": 5}'])
def test_withdrawal_with_the_token_validates_the_body(
    service: tuple[str, ReleaseStore, Path], content: bytes
) -> None:
    base, store, _ = service
    response = httpx.post(
        f"{base}/v1/admin/releases/2/withdraw",
        content=content,
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"},
    )
    assert response.status_code == 422 and response.json()["error"]["type"] == "ValidationError"
    assert store.latest() == 2
    schema = httpx.get(f"{base}/openapi.json").json()  # the body is still documented for clients
    route = schema["paths"]["/v1/admin/releases/{version}/withdraw"]["post"]
    body = route["requestBody"]["content"]["application/json"]["schema"]
    assert route["requestBody"]["required"] and body == {"$ref": "#/components/schemas/WithdrawRequest"}


def test_the_admin_token_is_read_from_the_environment_once_when_the_service_starts(
    config: ServiceConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ReleaseStore(config.release_store)
    json_type = {"Content-Type": "application/json"}
    later = "a-token-set-after-the-service-started"
    monkeypatch.setenv(config.admin_token_env, TOKEN)
    with running(config) as base:  # no secrets given: make_app reads the environment, now
        monkeypatch.setenv(config.admin_token_env, later)
        url = f"{base}/v1/admin/releases/2/withdraw"
        admitted = httpx.post(url, content=b"{}", headers={**json_type, "Authorization": f"Bearer {TOKEN}"})
        assert admitted.status_code == 422  # past the token check; the body is refused, nothing withdrawn
        refused = httpx.post(url, content=b"{}", headers={**json_type, "Authorization": f"Bearer {later}"})
        assert refused.status_code == 401 and refused.json()["error"]["type"] == "AuthError"
    monkeypatch.delenv(config.admin_token_env)
    with running(config) as base:  # started without the variable: admin routes stay off when it is set
        monkeypatch.setenv(config.admin_token_env, TOKEN)
        off = httpx.post(
            f"{base}/v1/admin/releases/2/withdraw",
            json={"reason": "x"},
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        assert off.status_code == 401 and "admin routes are off" in off.json()["error"]["message"]
    assert store.latest() == 2 and TOKEN not in repr(ServiceSecrets(admin_token=TOKEN))


def test_openapi_and_metrics(service: tuple[str, ReleaseStore, Path]) -> None:
    base = service[0]
    schema = httpx.get(f"{base}/openapi.json").json()
    assert {"/v1/releases/latest", "/v1/catalogue", "/v1/privacy/report"} <= set(schema["paths"])
    httpx.get(f"{base}/health")
    metrics = httpx.get(f"{base}/metrics").text
    assert 'fedhome_requests_total{route="/health",status="200"}' in metrics
    assert 'fedhome_request_seconds_count{route="/health"}' in metrics


def test_openapi_names_the_admin_token_on_admin_routes_only(service: tuple[str, ReleaseStore, Path]) -> None:
    schema = httpx.get(f"{service[0]}/openapi.json").json()
    scheme = schema["components"]["securitySchemes"]["AdminToken"]
    assert scheme == {**scheme, "type": "http", "scheme": "bearer"}
    secured = {
        path
        for path, operations in schema["paths"].items()
        for operation in operations.values()
        if operation.get("security") == [{"AdminToken": []}]
    }
    assert secured == {"/v1/admin/releases/{version}/withdraw", "/v1/admin/catalogue/items"}


def test_device_syncs_downloads_only_changed_files_and_falls_back_on_withdrawal(
    service: tuple[str, ReleaseStore, Path], tmp_path: Path
) -> None:
    base, store, _ = service
    cache = ReleaseCache(tmp_path / "device", KEY.public_key())
    cache.install(copy_from(store.folder(1)))
    result = sync(cache, base)
    assert result.installed == 2 and cache.state() == {"current": 2, "previous": 1}
    assert (
        "items.json" in result.reused and "user_tower.onnx" in result.downloaded
    )  # same catalogue, new model
    response = httpx.post(
        f"{base}/v1/admin/releases/2/withdraw",
        json={"reason": "regression"},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert response.status_code == 200 and response.json() == {"withdrawn": 2, "latest": 1}
    entry = store.index(KEY.public_key())["releases"][1]
    assert entry == {"version": 2, "withdrawn": True, "reason": "regression"}
    after = sync(cache, base)
    assert after.fell_back and after.current == 1 and cache.verify_current()["version"] == 1
    assert json.loads((tmp_path / "device" / "state.json").read_text())["current"] == 1


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "the browser tests need Debian's chromium (.ci/run installs it: apt-get install chromium)"
    return path


def browse(url: str, out: Path) -> str:
    """The DOM of `url` after a real headless Chromium ran the page; a screenshot is kept beside `out`."""
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--user-data-dir={out}.profile",
    ]
    subprocess.run([chromium(), *flags, "--window-size=1100,2400", f"--screenshot={out}", url], check=True,
                   capture_output=True, timeout=120)  # fmt: skip
    dom = subprocess.run(
        [chromium(), *flags, "--dump-dom", url], check=True, capture_output=True, timeout=120
    )
    return dom.stdout.decode()


@pytest.mark.browser
def test_auditor_dashboard_in_a_real_browser(service: tuple[str, ReleaseStore, Path], tmp_path: Path) -> None:
    base = service[0]
    shots = Path(os.environ.get("FEDHOME_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    dom = browse(f"{base}/dashboard", shots / "dashboard.png")
    assert "VERIFIED" in dom and 'id="releases"' in dom and "release 1" in dom
    assert "data:image/png;base64," in dom and (shots / "dashboard.png").stat().st_size > 10_000
    # the toy releases name a ledger head that is not in this run's ledger: the release page says so
    dom = browse(f"{base}/dashboard/releases/1", shots / "dashboard-release-1.png")
    assert "RELEASE FAILED" in dom and "not a round or start check of this ledger" in dom
