"""The model service's release routes: the signed release index, manifests and files with ETags, and the
admin withdrawal.

- GET /v1/releases: the signed release index (versions, withdrawn flags and reasons, serial, expiry),
  re-signed here when it is past half its lifetime and the service holds the signing key;
- GET /v1/releases/latest and /v1/releases/{version}: a signed manifest (ETag = the manifest's sha256;
  If-None-Match answers 304);
- GET /v1/releases/{version}/files/{name}: one file of a release (ETag = its sha256 from the signed
  manifest, so a device that has the file already gets 304 and downloads only what changed);
- POST /v1/admin/releases/{version}/withdraw {"reason"} (bearer token, server/api/admin_auth.py): marks the
  release withdrawn in the index, signed with ServiceConfig.signing_key.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Header, Response
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from server.api.admin_auth import ADMIN_SECURITY, AdminFirst
from server.api.http_errors import NotFoundError, UnavailableError
from server.api.service_state import ConfigDep, PublicKeyDep, StoreDep
from server.releases.release_store import ReleaseStore
from shared.release_manifest import MANIFEST_NAME
from shared.signing import load_private_key

CACHED: dict[int | str, dict[str, Any]] = {200: {"description": "the signed manifest"}, 304: {}}
IfNoneMatch = Annotated[str | None, Header()]


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


class WithdrawRequest(BaseModel):
    reason: str = Field(min_length=1, max_length=500)


class WithdrawResult(BaseModel):
    withdrawn: int
    latest: int | None


def live_manifest(store: ReleaseStore, version: int) -> dict[str, Any]:
    """The signed manifest of release `version`; NotFoundError when the store has no such release."""
    if version not in store.versions():
        raise NotFoundError(f"no release {version}")
    return store.manifest(version)


def cached_json(payload: dict[str, Any], if_none_match: str | None) -> Response:
    """`payload` as JSON with its sha256 as ETag; 304 (no body) when the caller has it already."""
    body = json.dumps(payload, sort_keys=True).encode()
    etag = f'"{hashlib.sha256(body).hexdigest()}"'
    if if_none_match == etag:
        return Response(status_code=304, headers={"ETag": etag})
    return Response(body, media_type="application/json", headers={"ETag": etag})


router = APIRouter()


@router.get("/v1/releases", response_model=ReleaseIndex, response_model_exclude_unset=True)
def releases(store: StoreDep, config: ConfigDep, public_key: PublicKeyDep) -> ReleaseIndex:
    if config.signing_key and store.index_needs_refresh():  # re-signed before devices would refuse it
        store.refresh_index(load_private_key(Path(config.signing_key)))
    index = store.index(public_key)
    return ReleaseIndex(latest=store.latest(), **index)


@router.get("/v1/releases/latest", responses=CACHED)
def latest(store: StoreDep, if_none_match: IfNoneMatch = None) -> Response:
    version = store.latest()
    if version is None:
        raise NotFoundError("no release has been published")
    return cached_json(live_manifest(store, version), if_none_match)


@router.get("/v1/releases/{version}", responses=CACHED)
def manifest(version: int, store: StoreDep, if_none_match: IfNoneMatch = None) -> Response:
    return cached_json(live_manifest(store, version), if_none_match)


@router.get("/v1/releases/{version}/files/{name}", responses={200: {"description": "the file"}, 304: {}})
def release_file(version: int, name: str, store: StoreDep, if_none_match: IfNoneMatch = None) -> Response:
    files = live_manifest(store, version)["files"]
    if name == MANIFEST_NAME:
        return FileResponse(store.folder(version) / MANIFEST_NAME, media_type="application/json")
    if name not in files:
        raise NotFoundError(f"release {version} has no file {name!r}")
    etag = f'"{files[name]["sha256"]}"'
    if if_none_match == etag:
        return Response(status_code=304, headers={"ETag": etag})
    return FileResponse(store.folder(version) / name, headers={"ETag": etag})


def withdraw(version: int, body: WithdrawRequest, store: StoreDep, config: ConfigDep) -> WithdrawResult:
    live_manifest(store, version)
    if not config.signing_key:
        raise UnavailableError("the service was started without a signing key (--signing-key)")
    store.withdraw(version, reason=body.reason, key=load_private_key(Path(config.signing_key)))
    return WithdrawResult(withdrawn=version, latest=store.latest())


router.add_api_route(  # the admin token is checked before the body is read (401 whatever it is)
    "/v1/admin/releases/{version}/withdraw",
    withdraw,
    methods=["POST"],
    response_model=WithdrawResult,
    dependencies=ADMIN_SECURITY,
    route_class_override=AdminFirst,
)
