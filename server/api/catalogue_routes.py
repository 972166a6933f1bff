"""The model service's catalogue-delta routes: admin writes that publish a signed delta, and devices' reads.

- POST /v1/admin/catalogue/items {"items": [...]} (bearer token): add or change up to
  ServiceConfig.max_catalogue_batch items (server/catalogue/catalogue_items.py:CatalogueItem). Synchronous:
  the texts are embedded (cached; only new texts are encoded) and the latest release's item tower run within
  the request, then the next cumulative delta of the latest release is signed and published. Answers
  DeltaResult. The first write after start loads the served run's model (it must be the release's run).
- GET /v1/releases/{version}/deltas: the signed list of that release's deltas (an empty, unsigned list
  when it has none), for people and the demo page; devices follow the head the signed release index
  names (shared/release_index.py), whose serial and expiry the list does not have;
- GET /v1/releases/{version}/deltas/{sequence}: a delta's signed manifest (ETag = its manifest_sha256, as
  the signed list names it);
- GET /v1/releases/{version}/deltas/{sequence}/files/{name}: one of its files (ETag = its signed sha256).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Header, Request, Security
from fastapi.responses import FileResponse, Response
from fastapi.routing import APIRoute
from fastapi.security import HTTPBearer
from pydantic import BaseModel, Field

from server.api.http_errors import NotFoundError, PayloadTooLargeError, UnavailableError, require_admin
from server.catalogue.catalogue_items import CatalogueItem
from server.catalogue.delta_publisher import DeltaBase, DeltaResult, DeltaStore, load_base
from server.releases.release_store import ReleaseStore
from shared.catalogue_delta_format import manifest_sha256
from shared.config import ServiceConfig
from shared.errors import ConfigError, DataError, EncoderError, SignatureError
from shared.release_manifest import MANIFEST_NAME
from shared.signing import Ed25519PublicKey, load_private_key


class CatalogueWrite(BaseModel):
    items: list[CatalogueItem] = Field(
        min_length=1,
        description="at most ServiceConfig.max_catalogue_batch items (413 over it), each id once (422 else)",
    )


class DeltaEntry(BaseModel):
    sequence: int
    items: int
    created_utc: str
    manifest_sha256: str


class DeltaList(BaseModel):
    release: int
    deltas: list[DeltaEntry]
    latest: int | None
    key_id: str | None = None
    signature: str | None = None


# Documents admin routes' bearer token in the OpenAPI schema (a security scheme on each admin route); the
# check itself is admin_first's, before the body is read, so this dependency never refuses anything
ADMIN_SECURITY = [
    Security(
        HTTPBearer(
            auto_error=False,
            scheme_name="AdminToken",
            description="the admin token: `Authorization: Bearer <token>` (ServiceConfig.admin_token_env)",
        )
    )
]


def admin_first(config: ServiceConfig) -> type[APIRoute]:
    """The route class of admin routes (`route_class_override=`): it checks config's admin token before
    FastAPI reads and validates the body, so a caller without the token gets 401 whatever it sent (the
    body's size was checked before, by BodyLimit). Only the handler is wrapped: the OpenAPI schema still
    documents the body model."""

    class AdminFirst(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def checked(request: Request) -> Response:
                require_admin(config, request.headers.get("authorization"))
                return await handler(request)

            return checked

    return AdminFirst


def catalogue_router(config: ServiceConfig, store: ReleaseStore, public_key: Ed25519PublicKey) -> APIRouter:
    """The routes above over `store`; admin writes sign with config.signing_key."""
    router = APIRouter()
    deltas = DeltaStore(store)
    bases: dict[int, DeltaBase] = {}
    loading = threading.Lock()

    def base_of(version: int) -> DeltaBase:
        with loading:
            if version not in bases:
                bases.clear()  # only the latest release's model is kept in memory
                try:
                    bases[version] = load_base(store, version, Path(config.run_dir), public_key)
                except (ConfigError, DataError, OSError) as exc:  # the service's setup is at fault
                    raise UnavailableError(f"catalogue writes are unavailable: {exc}") from exc
            return bases[version]

    def release(version: int) -> int:
        if version not in store.versions():
            raise NotFoundError(f"no release {version}")
        return version

    def listed(version: int, sequence: int) -> dict[str, Any]:
        release(version)
        if sequence not in deltas.sequences(version):
            raise NotFoundError(f"release {version} has no delta {sequence}")
        return deltas.manifest(version, sequence)

    def write_items(body: CatalogueWrite) -> DeltaResult:
        if len(body.items) > config.max_catalogue_batch:
            raise PayloadTooLargeError(
                f"{len(body.items)} items; at most {config.max_catalogue_batch} a write"
            )
        ids = [item.id for item in body.items]
        if len(set(ids)) != len(ids):
            raise DataError("the batch names an item more than once")
        if not config.signing_key:
            raise UnavailableError("the service was started without a signing key (--signing-key)")
        latest = store.latest()
        if latest is None:
            raise NotFoundError("no release has been published")
        try:
            key = load_private_key(Path(config.signing_key))
        except (ConfigError, SignatureError) as exc:  # a missing or bad key file: the service's setup
            raise UnavailableError(f"catalogue writes are unavailable: {exc}") from exc
        try:
            return deltas.publish(base_of(latest), body.items, key)
        except EncoderError as exc:  # the encoder could not load or run: nothing was published
            raise UnavailableError(f"catalogue writes are unavailable: {exc}") from exc

    router.add_api_route(
        "/v1/admin/catalogue/items",
        write_items,
        methods=["POST"],
        response_model=DeltaResult,
        dependencies=ADMIN_SECURITY,
        route_class_override=admin_first(config),
    )

    @router.get("/v1/releases/{version}/deltas", response_model=DeltaList)
    def delta_list(version: int) -> DeltaList:
        listing = deltas.listing(release(version), public_key)
        sequences = [int(entry["sequence"]) for entry in listing["deltas"]]
        return DeltaList(latest=max(sequences, default=None), **listing)

    @router.get(
        "/v1/releases/{version}/deltas/{sequence}",
        responses={200: {"description": "the signed delta manifest"}, 304: {}},
    )
    def delta_manifest(
        version: int, sequence: int, if_none_match: str | None = Header(default=None)
    ) -> Response:
        manifest = listed(version, sequence)
        body = json.dumps(manifest, sort_keys=True).encode()
        etag = f'"{manifest_sha256(manifest)}"'  # the manifest_sha256 the signed delta list names
        if if_none_match == etag:
            return Response(status_code=304, headers={"ETag": etag})
        return Response(body, media_type="application/json", headers={"ETag": etag})

    @router.get(
        "/v1/releases/{version}/deltas/{sequence}/files/{name}",
        responses={200: {"description": "the file"}, 304: {}},
    )
    def delta_file(
        version: int, sequence: int, name: str, if_none_match: str | None = Header(default=None)
    ) -> Response:
        files = listed(version, sequence)["files"]
        folder = deltas.folder(version, sequence)
        if name == MANIFEST_NAME:
            return FileResponse(folder / MANIFEST_NAME, media_type="application/json")
        if name not in files:
            raise NotFoundError(f"delta {sequence} of release {version} has no file {name!r}")
        etag = f'"{files[name]["sha256"]}"'
        if if_none_match == etag:
            return Response(status_code=304, headers={"ETag": etag})
        return FileResponse(folder / name, headers={"ETag": etag})

    return router
