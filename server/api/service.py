"""The model service (`fedhome-server serve`): signed releases, their files, the catalogue, the privacy
report and ledger, health and metrics, over FastAPI. `make_app` builds the app; each resource has its router.

Routes (all GET unless said; JSON unless said), by router:
- server/api/ops_routes.py: /health (503 when the store cannot be used); /metrics (Prometheus text);
- server/api/docs_routes.py: /docs (Swagger UI of /openapi.json, its files served here);
- server/api/release_routes.py: /v1/releases (the signed release index, re-signed here when it is past half
  its lifetime and the service holds the signing key); /v1/releases/latest and /v1/releases/{version} (a
  signed manifest; ETag = its sha256, If-None-Match answers 304); /v1/releases/{version}/files/{name} (one
  file; ETag = its sha256 from the signed manifest, so devices download only what changed);
  POST /v1/admin/releases/{version}/withdraw {"reason"} (admin; 409 when withdrawn already);
- server/api/catalogue_routes.py: /v1/catalogue?offset=&limit= (the latest release's item metadata with
  the catalogue delta the signed index names, paged); POST /v1/admin/catalogue/items (admin: embeds added
  or changed items and publishes a signed, cumulative catalogue delta of the latest release);
  /v1/releases/{version}/deltas (the signed list of the deltas kept), .../deltas/{sequence} (a manifest) and
  .../deltas/{sequence}/files/{name} (ETag like release files), which devices read;
- server/api/privacy_routes.py: /v1/privacy/ledger (JSON lines) and /v1/privacy/report (the served run's
  ledger and the auditor's report built from it with the public key); /dashboard and
  /dashboard/releases/{version} (HTML: the auditor's dashboard);
- server/api/demo_routes.py: /demo, its static files and /v1/demo/shoppers (the demo homepage page, ranked
  in the browser from the latest release with onnxruntime-web and WebCrypto Ed25519).

Admin routes need `Authorization: Bearer <token>` (server/api/admin_auth.py), checked before the body is
read: a request without it gets 401 whatever its body. The token is read once, when the service starts,
from the environment variable ServiceConfig.admin_token_env (shared/config.py:ServiceSecrets); without one
of at least 16 characters, admin routes are off. Errors have one JSON shape {"error": {"type", "message"}}
and one mapping from error types to statuses (server/api/http_errors.py); each route documents only the
errors it can return. Request bodies must carry a Content-Length (411) of at most
ServiceConfig.max_request_bytes (413), refused before any of the body is read (after the admin token).

What is served is verified: the store is opened with the public key, so the release index is verified on
every read (an edited one answers 500, an unreadable one 503, and /health says so with 503); every release
is verified against its signed manifest when the service starts, and each file again when served if it
changed on disk (server/api/verified_files.py): a release that does not verify is logged and refused.
The privacy report and dashboard are built once per state of the run's ledger (server/api/report_cache.py).
/docs is Swagger UI served from the service's own files (server/api/docs_routes.py), no CDN.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI

from server.api import demo_routes, ops_routes, privacy_routes, release_routes
from server.api.catalogue_routes import catalogue_router
from server.api.demo_site import DemoSite
from server.api.docs_routes import install_docs
from server.api.http_errors import BodyLimit, install_error_handlers
from server.api.report_cache import ReportCache
from server.api.service_metrics import ObserveRequests, ServiceMetrics
from server.api.service_state import ServiceState
from server.api.verified_files import VerifiedFiles
from server.catalogue.delta_publisher import DeltaStore
from server.releases.release_store import ReleaseStore
from shared.config import ServiceConfig, ServiceSecrets
from shared.errors import FedhomeError
from shared.signing import load_public_key

logger = logging.getLogger(__name__)


def make_app(config: ServiceConfig, secrets: ServiceSecrets | None = None) -> FastAPI:
    """The service for `config`; its admin token from `secrets`, else read from the environment now, once."""
    state = start_state(config, secrets if secrets is not None else ServiceSecrets.from_environment(config))
    app = FastAPI(title="fedhome model service", version="1", docs_url=None, redoc_url=None)
    app.state.service = state
    install_error_handlers(app)
    app.add_middleware(BodyLimit, limit=config.max_request_bytes)
    app.add_middleware(ObserveRequests, metrics=state.metrics)  # outermost: it sees every answer
    install_docs(app)
    app.include_router(catalogue_router(config))
    app.include_router(ops_routes.router)
    app.include_router(release_routes.router)
    app.include_router(privacy_routes.router)
    app.include_router(demo_routes.router)
    return app


def start_state(config: ServiceConfig, secrets: ServiceSecrets) -> ServiceState:
    """What the routes share, read from disk once: the store (opened with the public key; staging folders
    left by killed writers removed), the public key, the demo page and shoppers; and every release verified
    now (verify_store)."""
    public_key = load_public_key(config.public_key)
    store = ReleaseStore(
        config.release_store, index_lifetime_s=config.index_lifetime_s, public_key=public_key
    )
    metrics = ServiceMetrics()
    verified = VerifiedFiles(public_key)
    verify_store(store, verified)
    return ServiceState(
        config=config,
        secrets=secrets,
        store=store,
        public_key=public_key,
        metrics=metrics,
        demo=DemoSite.build(config, public_key),
        deltas=DeltaStore(store),
        verified=verified,
        reports=ReportCache(on_build=metrics.count_report_build),
    )


def verify_store(store: ReleaseStore, verified: VerifiedFiles) -> None:
    """Verify every release the store's index lists against its signed manifest; each that does not is
    logged (by VerifiedFiles) and refused. A store whose index cannot be used is logged and started
    anyway: its routes answer 500 or 503 and /health says why until the index is repaired."""
    try:
        versions = store.versions()
    except FedhomeError as exc:
        logger.error("the release store's index cannot be used: %s: %s", type(exc).__name__, exc)
        return
    refused = verified.verify_releases({version: store.folder(version) for version in versions})
    logger.info("verified %d releases at start, %d refused", len(versions), len(refused))
