"""The model service (`fedhome-server serve`): signed releases, their files, the catalogue, the privacy
report and ledger, health and metrics, over FastAPI.

Routes (all GET unless said; JSON unless said):
- /health; /metrics (Prometheus text);
- /v1/releases: the signed release index (versions, withdrawn flags and reasons, serial, expiry), re-signed
  here when it is past half its lifetime and the service holds the signing key;
- /v1/releases/latest and /v1/releases/{version}: a signed manifest (ETag = the manifest's sha256;
  If-None-Match answers 304);
- /v1/releases/{version}/files/{name}: one file of a release (ETag = its sha256 from the signed manifest,
  so a device that has the file already gets 304 and downloads only what changed);
- /v1/catalogue?offset=&limit=: the latest release's item metadata with its newest catalogue delta, paged;
- /v1/privacy/ledger (JSON lines) and /v1/privacy/report: the served run's ledger and the auditor's report
  built from it with the public key;
- /dashboard and /dashboard/releases/{version} (HTML): the auditor's dashboard: the privacy report of the
  served run (verification of every ledger entry, epsilon over rounds, mismatches, exclusions), the list
  of releases, and for one release whether it verifies and is bound to its ledger entry;
- /demo, its static files and /v1/demo/shoppers (server/api/demo_routes.py): the demo homepage page, ranked in
  the browser from the latest release (onnxruntime-web, WebCrypto Ed25519);
- POST /v1/admin/releases/{version}/withdraw {"reason"}: needs `Authorization: Bearer <token>` (the token
  is read from the environment variable ServiceConfig.admin_token_env; without one, admin routes are off),
  checked before the body is read: a request without it gets 401 whatever its body.
- catalogue writes and deltas (server/api/catalogue_routes.py): POST /v1/admin/catalogue/items (admin) embeds
  added or changed items and publishes a signed, cumulative catalogue delta of the latest release;
  /v1/releases/{version}/deltas (the signed list), .../deltas/{sequence} (a manifest) and
  .../deltas/{sequence}/files/{name} (ETag like release files) are what devices read.

Errors have one JSON shape {"error": {"type", "message"}} and one mapping from error types to statuses
(`STATUS` in server/api/http_errors.py). Request bodies must carry a Content-Length (411) of at most
ServiceConfig.max_request_bytes (413); both are refused before anything is read.
"""

from __future__ import annotations

import hashlib
import json
import time
from html import escape
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Header, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.base import RequestResponseEndpoint

from server.api.catalogue_routes import ADMIN_SECURITY, admin_first, catalogue_router
from server.api.demo_routes import demo_router
from server.api.http_errors import (
    BodyLimit,
    ErrorResponse,
    NotFoundError,
    UnavailableError,
    error_response,
)
from server.catalogue.delta_publisher import DeltaStore
from server.releases.release_store import ReleaseStore
from shared.config import ServiceConfig
from shared.errors import FedhomeError
from shared.release_manifest import MANIFEST_NAME
from shared.signing import load_private_key, load_public_key


class DeltaHead(BaseModel):
    sequence: int  # the release's newest catalogue delta, the one devices apply
    manifest_sha256: str  # of its signed manifest


class ReleaseEntry(BaseModel):
    version: int
    withdrawn: bool
    reason: str
    delta: DeltaHead | None = None  # absent (not null) when the release has no delta: the index is signed


class ReleaseIndex(BaseModel):
    releases: list[ReleaseEntry]
    latest: int | None
    serial: int | None = None  # devices refuse a serial below one they accepted (shared/release_index.py)
    expires_utc: str | None = None  # and an index past this time
    key_id: str | None = None
    signature: str | None = None


class Health(BaseModel):
    status: str
    latest_release: int | None


class CataloguePage(BaseModel):
    release: int
    offset: int
    limit: int
    total: int
    items: list[dict[str, Any]]


class WithdrawRequest(BaseModel):
    reason: str = Field(min_length=1, max_length=500)


class WithdrawResult(BaseModel):
    withdrawn: int
    latest: int | None


def make_app(config: ServiceConfig) -> FastAPI:
    store = ReleaseStore(config.release_store, index_lifetime_s=config.index_lifetime_s)
    public_key = load_public_key(config.public_key)
    registry = CollectorRegistry()
    requests = Counter("fedhome_requests", "HTTP requests", ["route", "status"], registry=registry)
    latency = Histogram("fedhome_request_seconds", "request latency", ["route"], registry=registry)
    errors: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorResponse, "content": {"application/json": {}}}
        for code in (400, 401, 404, 411, 413, 422, 503)
    }
    app = FastAPI(title="fedhome model service", version="1", responses=errors)
    app.add_middleware(BodyLimit, limit=config.max_request_bytes)
    app.include_router(catalogue_router(config, store, public_key))  # catalogue writes and deltas

    @app.exception_handler(FedhomeError)
    async def handle_fedhome_error(request: Request, exc: FedhomeError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def handle_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {400: "BadRequest", 404: "NotFoundError", 405: "MethodNotAllowed"}.get(
            exc.status_code, "HTTPError"
        )
        return JSONResponse(
            {"error": {"type": kind, "message": str(exc.detail)}},
            status_code=exc.status_code,
            headers=exc.headers,
        )

    @app.exception_handler(RequestValidationError)
    async def handle_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}" for error in exc.errors()
        )
        return JSONResponse({"error": {"type": "ValidationError", "message": problems}}, status_code=422)

    @app.middleware("http")
    async def observe(request: Request, call_next: RequestResponseEndpoint) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        path = getattr(
            request.scope.get("route"), "path", "unmatched"
        )  # the route template, known after routing
        latency.labels(path).observe(time.perf_counter() - started)
        requests.labels(path, str(response.status_code)).inc()
        return response

    def live_manifest(version: int) -> dict[str, Any]:
        if version not in store.versions():
            raise NotFoundError(f"no release {version}")
        return store.manifest(version)

    def cached_json(payload: dict[str, Any], if_none_match: str | None) -> Response:
        body = json.dumps(payload, sort_keys=True).encode()
        etag = f'"{hashlib.sha256(body).hexdigest()}"'
        if if_none_match == etag:
            return Response(status_code=304, headers={"ETag": etag})
        return Response(body, media_type="application/json", headers={"ETag": etag})

    @app.get("/health", response_model=Health)
    def health() -> Health:
        return Health(status="ok", latest_release=store.latest())

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/releases", response_model=ReleaseIndex, response_model_exclude_unset=True)
    def releases() -> ReleaseIndex:
        if config.signing_key and store.index_needs_refresh():  # re-signed before devices would refuse it
            store.refresh_index(load_private_key(Path(config.signing_key)))
        index = store.index(public_key)
        return ReleaseIndex(latest=store.latest(), **index)

    @app.get("/v1/releases/latest", responses={200: {"description": "the signed manifest"}, 304: {}})
    def latest(if_none_match: str | None = Header(default=None)) -> Response:
        version = store.latest()
        if version is None:
            raise NotFoundError("no release has been published")
        return cached_json(live_manifest(version), if_none_match)

    @app.get("/v1/releases/{version}", responses={200: {"description": "the signed manifest"}, 304: {}})
    def manifest(version: int, if_none_match: str | None = Header(default=None)) -> Response:
        return cached_json(live_manifest(version), if_none_match)

    @app.get("/v1/releases/{version}/files/{name}", responses={200: {"description": "the file"}, 304: {}})
    def release_file(version: int, name: str, if_none_match: str | None = Header(default=None)) -> Response:
        files = live_manifest(version)["files"]
        if name == MANIFEST_NAME:
            return FileResponse(store.folder(version) / MANIFEST_NAME, media_type="application/json")
        if name not in files:
            raise NotFoundError(f"release {version} has no file {name!r}")
        etag = f'"{files[name]["sha256"]}"'
        if if_none_match == etag:
            return Response(status_code=304, headers={"ETag": etag})
        return FileResponse(store.folder(version) / name, headers={"ETag": etag})

    @app.get("/v1/catalogue", response_model=CataloguePage)
    def catalogue(
        offset: int = Query(0, ge=0), limit: int = Query(100, ge=1, le=config.max_page_size)
    ) -> CataloguePage:
        version = store.latest()
        if version is None:
            raise NotFoundError("no release has been published")
        items = DeltaStore(store).catalogue(version)  # the release's items with its newest delta applied
        return CataloguePage(
            release=version,
            offset=offset,
            limit=limit,
            total=len(items),
            items=items[offset : offset + limit],
        )

    @app.get(
        "/v1/privacy/ledger",
        response_class=Response,
        responses={200: {"content": {"application/x-ndjson": {"schema": {"type": "string"}}}}},
    )
    def ledger() -> Response:
        path = Path(config.run_dir) / "ledger.jsonl"
        if not path.is_file():
            raise NotFoundError("the served run has no ledger")
        return FileResponse(path, media_type="application/x-ndjson")

    @app.get("/v1/privacy/report")
    def report() -> dict[str, Any]:
        from server.audit.audit_report import build_report

        if not (Path(config.run_dir) / "ledger.jsonl").is_file():
            raise NotFoundError("the served run has no ledger")
        return build_report(Path(config.run_dir), public_key)

    def dashboard_page(release: Path | None) -> HTMLResponse:
        from server.audit.audit_report import build_report
        from server.audit.report_html import render_html

        if not (Path(config.run_dir) / "ledger.jsonl").is_file():
            raise NotFoundError("the served run has no ledger")
        rows = "".join(
            f"<li><a href='/dashboard/releases/{r['version']}'>release {r['version']}</a>"
            + (f" (withdrawn: {escape(r['reason'])})" if r["withdrawn"] else "")
            + "</li>"
            for r in store.index(public_key)["releases"]
        )
        nav = f"<nav id='releases'><a href='/dashboard'>live run</a><ul>{rows}</ul></nav>"
        report = build_report(Path(config.run_dir), public_key, release=release)
        return HTMLResponse(render_html(report, header=nav))

    @app.get("/dashboard", response_class=HTMLResponse)
    def dashboard() -> HTMLResponse:
        return dashboard_page(None)

    @app.get("/dashboard/releases/{version}", response_class=HTMLResponse)
    def dashboard_release(version: int) -> HTMLResponse:
        live_manifest(version)
        return dashboard_page(store.folder(version))

    def withdraw(version: int, body: WithdrawRequest) -> WithdrawResult:
        live_manifest(version)
        if not config.signing_key:
            raise UnavailableError("the service was started without a signing key (--signing-key)")
        store.withdraw(version, reason=body.reason, key=load_private_key(Path(config.signing_key)))
        return WithdrawResult(withdrawn=version, latest=store.latest())

    app.router.add_api_route(  # the admin token is checked before the body is read (401 whatever it is)
        "/v1/admin/releases/{version}/withdraw",
        withdraw,
        methods=["POST"],
        response_model=WithdrawResult,
        dependencies=ADMIN_SECURITY,
        route_class_override=admin_first(config),
    )

    app.include_router(demo_router(config))
    return app
