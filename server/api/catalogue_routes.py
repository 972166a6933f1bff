"""The model service's catalogue routes: the paged catalogue, admin writes that publish a signed delta, and
devices' reads of the deltas.

- GET /v1/catalogue?offset=&limit=: the latest release's item metadata with the catalogue delta the signed
  release index names as its head applied (a delta published but not yet named is not shown), paged (at
  most ServiceConfig.max_page_size items a page);
- POST /v1/admin/catalogue/items {"items": [...]} (bearer token, server/api/admin_auth.py): add or change up
  to ServiceConfig.max_catalogue_batch items (server/catalogue/catalogue_items.py:CatalogueItem).
  Synchronous: the texts are embedded (cached; only new texts are encoded) and the latest release's item
  tower run within the request, then the next cumulative delta of the latest release is signed and
  published. Answers DeltaResult. The first write after start loads the served run's model (it must be the
  release's run).
- GET /v1/releases/{version}/deltas: the signed list of that release's deltas kept (old ones are pruned:
  server/catalogue/delta_publisher.py; an empty, unsigned list when it has none), for people and the demo
  page; devices follow the head the signed release index names (shared/release_index.py), whose serial
  and expiry the list does not have;
- GET /v1/releases/{version}/deltas/{sequence}: a delta's signed manifest (ETag = its manifest_sha256, as
  the signed list names it);
- GET /v1/releases/{version}/deltas/{sequence}/files/{name}: one of its files (ETag = its signed sha256).

A delta's manifest and files, and the release and delta items the catalogue is made of, are served only
while they verify (server/api/verified_files.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel, Field

from server.api.admin_auth import ADMIN_ERRORS, ADMIN_SECURITY, AdminFirst
from server.api.http_errors import NotFoundError, PayloadTooLargeError, UnavailableError, errors
from server.api.release_routes import FILE, IF_NONE_MATCH, IfNoneMatch, known_release
from server.api.service_state import (
    DeltasDep,
    PublicKeyDep,
    ServiceState,
    StateDep,
    StoreDep,
    VerifiedDep,
)
from server.api.verified_files import VerifiedFiles
from server.catalogue.catalogue_items import CatalogueItem
from server.catalogue.delta_publisher import DeltaBase, DeltaResult, DeltaStore, load_base
from server.releases.release_builder import ITEMS_META
from server.releases.release_store import ReleaseStore
from shared.catalogue_delta_format import DELTA_ITEMS, DELTA_KIND, manifest_sha256
from shared.config import ServiceConfig
from shared.errors import ConfigError, DataError, EncoderError, SignatureError, UpdateRejectedError
from shared.release_manifest import MANIFEST_NAME
from shared.signing import load_private_key


class CataloguePage(BaseModel):
    release: int
    offset: int
    limit: int
    total: int
    items: list[dict[str, Any]]


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


def listed(
    store: ReleaseStore, deltas: DeltaStore, verified: VerifiedFiles, version: int, sequence: int
) -> dict[str, Any]:
    """The signed manifest of delta `sequence` of release `version`, verified with its files; NotFoundError
    when either is unknown (or the delta was pruned)."""
    known_release(store, version)
    if sequence not in deltas.sequences(version):
        raise NotFoundError(f"release {version} has no delta {sequence}")
    return verified.manifest(deltas.folder(version, sequence), kind=DELTA_KIND)


def base_of(state: ServiceState, version: int) -> DeltaBase:
    """What writes to release `version` are embedded with, loaded by the first write (and kept: only the
    latest release's model is kept in memory); UnavailableError when the served run is not the release's."""
    with state.delta_bases_lock:
        bases = state.delta_bases
        if version not in bases:
            bases.clear()
            try:
                bases[version] = load_base(state.store, version, Path(state.config.run_dir), state.public_key)
            # the service's setup is at fault (UpdateRejectedError: the run's parameters do not fit this
            # code's model layout, e.g. a run made by an older version)
            except (ConfigError, DataError, OSError, UpdateRejectedError) as exc:
                raise UnavailableError(f"catalogue writes are unavailable: {exc}") from exc
        return bases[version]


def catalogue_page(
    store: ReleaseStore, deltas: DeltaStore, verified: VerifiedFiles, *, offset: int, limit: int
) -> CataloguePage:
    version = store.latest()
    if version is None:
        raise NotFoundError("no release has been published")
    verified.file(store.folder(version), ITEMS_META)  # the files the page is made of, as they were signed
    head = deltas.head(version)
    if head is not None:
        verified.file(deltas.folder(version, head), DELTA_ITEMS, kind=DELTA_KIND)
    items = deltas.catalogue(version, head)  # the release's items with the head the index names applied
    return CataloguePage(
        release=version, offset=offset, limit=limit, total=len(items), items=items[offset : offset + limit]
    )


router = APIRouter()  # the admin write and the delta reads; catalogue_router adds the page


def write_items(body: CatalogueWrite, state: StateDep) -> DeltaResult:
    """Add or change items (synchronous: embedded, the latest release's item tower run, then the next
    cumulative delta of the latest release signed and published, and named in the release index)."""
    config = state.config
    if len(body.items) > config.max_catalogue_batch:
        raise PayloadTooLargeError(f"{len(body.items)} items; at most {config.max_catalogue_batch} a write")
    ids = [item.id for item in body.items]
    if len(set(ids)) != len(ids):
        raise DataError("the batch names an item more than once")
    if not config.signing_key:
        raise UnavailableError("the service was started without a signing key (--signing-key)")
    latest = state.store.latest()
    if latest is None:
        raise NotFoundError("no release has been published")
    state.verified.manifest(state.store.folder(latest))  # no delta for a release that does not verify
    try:
        key = load_private_key(Path(config.signing_key))
    except (ConfigError, SignatureError) as exc:  # a missing or bad key file: the service's setup
        raise UnavailableError(f"catalogue writes are unavailable: {exc}") from exc
    try:
        return state.deltas.publish(base_of(state, latest), body.items, key)
    except EncoderError as exc:  # the encoder could not load or run: nothing was published
        raise UnavailableError(f"catalogue writes are unavailable: {exc}") from exc


router.add_api_route(  # the admin token is checked before the body is read (401 whatever it is)
    "/v1/admin/catalogue/items",
    write_items,
    methods=["POST"],
    response_model=DeltaResult,
    summary="Add or change catalogue items (admin)",
    responses=errors(*ADMIN_ERRORS, 404, 500, 503),
    dependencies=ADMIN_SECURITY,
    route_class_override=AdminFirst,
)


@router.get(
    "/v1/releases/{version}/deltas",
    response_model=DeltaList,
    summary="The signed list of a release's catalogue deltas",
    responses=errors(404, 422, 500, 503),
)
def delta_list(version: int, store: StoreDep, deltas: DeltasDep, public_key: PublicKeyDep) -> DeltaList:
    """The deltas of release `version` that are kept (an empty, unsigned list when it has none); devices
    follow the head the signed release index names instead."""
    listing = deltas.listing(known_release(store, version), public_key)
    sequences = [int(entry["sequence"]) for entry in listing["deltas"]]
    return DeltaList(latest=max(sequences, default=None), **listing)


@router.get(
    "/v1/releases/{version}/deltas/{sequence}",
    summary="A catalogue delta's signed manifest",
    responses={200: {"description": "the signed delta manifest"}, 304: {}, **errors(404, 422, 500, 503)},
    openapi_extra=IF_NONE_MATCH,
)
def delta_manifest(
    version: int,
    sequence: int,
    store: StoreDep,
    deltas: DeltasDep,
    verified: VerifiedDep,
    if_none_match: IfNoneMatch,
) -> Response:
    """Delta `sequence` of release `version` (ETag = the manifest_sha256 the signed list names; 304 when
    If-None-Match has it); 500 when the delta does not verify."""
    manifest = listed(store, deltas, verified, version, sequence)
    body = json.dumps(manifest, sort_keys=True).encode()
    etag = f'"{manifest_sha256(manifest)}"'  # the manifest_sha256 the signed delta list names
    if if_none_match == etag:
        return Response(status_code=304, headers={"ETag": etag})
    return Response(body, media_type="application/json", headers={"ETag": etag})


@router.get(
    "/v1/releases/{version}/deltas/{sequence}/files/{name}",
    summary="One file of a catalogue delta",
    responses={**FILE, **errors(404, 422, 500, 503)},
    openapi_extra=IF_NONE_MATCH,
)
def delta_file(
    version: int,
    sequence: int,
    name: str,
    store: StoreDep,
    deltas: DeltasDep,
    verified: VerifiedDep,
    if_none_match: IfNoneMatch,
) -> Response:
    """A file the delta's manifest lists, or manifest.json itself (ETag = its signed sha256; 304 when
    If-None-Match has it); 500, never the file, when the delta no longer verifies."""
    files = listed(store, deltas, verified, version, sequence)["files"]
    folder = deltas.folder(version, sequence)
    if name == MANIFEST_NAME:
        path = verified.file(folder, MANIFEST_NAME, kind=DELTA_KIND)
        return FileResponse(path, media_type="application/json")
    if name not in files:
        raise NotFoundError(f"delta {sequence} of release {version} has no file {name!r}")
    path = verified.file(folder, name, kind=DELTA_KIND)
    etag = f'"{files[name]["sha256"]}"'
    if if_none_match == etag:
        return Response(status_code=304, headers={"ETag": etag})
    return FileResponse(path, headers={"ETag": etag})


def catalogue_router(config: ServiceConfig) -> APIRouter:
    """The catalogue's routes for a service of `config`: built per service because the page size bound,
    config.max_page_size, is part of the page route's declared (OpenAPI) parameters."""
    routes = APIRouter()

    @routes.get(
        "/v1/catalogue",
        response_model=CataloguePage,
        summary="The catalogue, paged",
        responses=errors(404, 422, 500, 503),
    )
    def catalogue(
        store: StoreDep,
        deltas: DeltasDep,
        verified: VerifiedDep,
        offset: int = Query(0, ge=0),
        limit: int = Query(100, ge=1, le=config.max_page_size),
    ) -> CataloguePage:
        """The latest release's items with the catalogue delta the signed release index names applied,
        each with its status (only "active" items are shown to shoppers)."""
        return catalogue_page(store, deltas, verified, offset=offset, limit=limit)

    routes.include_router(router)
    return routes
