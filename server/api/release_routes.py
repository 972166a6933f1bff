"""The model service's release routes: the signed release index, manifests and files with ETags, and the
admin withdrawal.

- GET /v1/releases: the signed release index (versions, withdrawn flags and reasons, serial, expiry),
  re-signed here when it is past half its lifetime and the service holds the signing key;
- GET /v1/releases/latest and /v1/releases/{version}: a signed manifest (ETag = the manifest's sha256;
  If-None-Match answers 304);
- GET /v1/releases/{version}/files/{name}: one file of a release (ETag = its sha256 from the signed
  manifest, so a device that has the file already gets 304 and downloads only what changed);
- POST /v1/admin/releases/{version}/withdraw {"reason"} (bearer token, server/api/admin_auth.py): marks the
  release withdrawn in the index, signed with ServiceConfig.signing_key; 409 when it is withdrawn already
  (its first reason stays).

The index is verified with the service's public key on every read (the store is opened with it), and a
release's manifest and files are served only while they verify (server/api/verified_files.py): a release
that does not answers 500 on all of them, a 304 included.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from server.api.admin_auth import ADMIN_ERRORS, ADMIN_SECURITY, AdminFirst
from server.api.http_errors import NotFoundError, UnavailableError, errors
from server.api.service_state import ConfigDep, PublicKeyDep, StoreDep, VerifiedDep
from server.api.verified_files import VerifiedFiles
from server.releases.release_store import ReleaseStore, latest_of
from shared.errors import ConfigError, SignatureError
from shared.release_manifest import MANIFEST_NAME
from shared.signing import load_private_key

logger = logging.getLogger(__name__)

# If-None-Match, documented as a header parameter but read from the request (a declared Header would give
# the route a 422 it can never answer)
IF_NONE_MATCH: Final[dict[str, Any]] = {
    "parameters": [
        {
            "name": "If-None-Match",
            "in": "header",
            "required": False,
            "schema": {"type": "string"},
            "description": "the ETag the caller has: 304, without a body, when it is still current",
        }
    ]
}


def if_none_match(request: Request) -> str | None:
    return request.headers.get("if-none-match")


IfNoneMatch = Annotated[str | None, Depends(if_none_match)]
CACHED: dict[int | str, dict[str, Any]] = {200: {"description": "the signed manifest"}, 304: {}}
FILE: dict[int | str, dict[str, Any]] = {200: {"description": "the file"}, 304: {}}


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


def known_release(store: ReleaseStore, version: int) -> int:
    """`version` when the store's (verified) index lists it; NotFoundError otherwise."""
    if version not in store.versions():
        raise NotFoundError(f"no release {version}")
    return version


def live_manifest(store: ReleaseStore, verified: VerifiedFiles, version: int) -> dict[str, Any]:
    """The signed manifest of release `version`, verified with its files; NotFoundError when the store has
    no such release, SignatureError (or CorruptStoreError) when it does not verify."""
    return verified.manifest(store.folder(known_release(store, version)))


def cached_json(payload: dict[str, Any], if_none_match: str | None) -> Response:
    """`payload` as JSON with its sha256 as ETag; 304 (no body) when the caller has it already."""
    body = json.dumps(payload, sort_keys=True).encode()
    etag = f'"{hashlib.sha256(body).hexdigest()}"'
    if if_none_match == etag:
        return Response(status_code=304, headers={"ETag": etag})
    return Response(body, media_type="application/json", headers={"ETag": etag})


def refreshed_index(store: ReleaseStore, signing_key: str) -> None:
    """Re-sign the index when it is past half its lifetime and the service holds the signing key; a key
    that does not load is logged and the index served as it is (devices refuse it only once expired)."""
    if not signing_key or not store.index_needs_refresh():
        return
    try:
        key = load_private_key(Path(signing_key))
    except (ConfigError, SignatureError) as exc:
        logger.error("the release index is not re-signed: the signing key does not load: %s", exc)
        return
    store.refresh_index(key)


router = APIRouter()


@router.get(
    "/v1/releases",
    response_model=ReleaseIndex,
    response_model_exclude_unset=True,
    summary="The signed release index",
    responses=errors(500, 503),
)
def releases(store: StoreDep, config: ConfigDep, public_key: PublicKeyDep) -> ReleaseIndex:
    """Every release with its withdrawn flag and reason and its catalogue delta head, with the serial and
    expiry devices check; verified with the service's public key before it is served (500 when it does not
    verify, 503 when it is unreadable), re-signed when past half its lifetime and the service holds the
    signing key."""
    refreshed_index(store, config.signing_key)
    index = store.index(public_key)
    return ReleaseIndex(latest=latest_of(index), **index)


@router.get(
    "/v1/releases/latest",
    summary="The newest release's signed manifest",
    responses={**CACHED, **errors(404, 500, 503)},
    openapi_extra=IF_NONE_MATCH,
)
def latest(store: StoreDep, verified: VerifiedDep, if_none_match: IfNoneMatch) -> Response:
    """The manifest of the newest release the index does not mark withdrawn (ETag = the sha256 of its JSON;
    304 when If-None-Match has it); 500 when that release does not verify."""
    version = store.latest()
    if version is None:
        raise NotFoundError("no release has been published")
    return cached_json(live_manifest(store, verified, version), if_none_match)


@router.get(
    "/v1/releases/{version}",
    summary="A release's signed manifest",
    responses={**CACHED, **errors(404, 422, 500, 503)},
    openapi_extra=IF_NONE_MATCH,
)
def manifest(version: int, store: StoreDep, verified: VerifiedDep, if_none_match: IfNoneMatch) -> Response:
    """The manifest of release `version`, withdrawn or not (ETag = the sha256 of its JSON; 304 when
    If-None-Match has it); 500 when the release does not verify."""
    return cached_json(live_manifest(store, verified, version), if_none_match)


@router.get(
    "/v1/releases/{version}/files/{name}",
    summary="One file of a release",
    responses={**FILE, **errors(404, 422, 500, 503)},
    openapi_extra=IF_NONE_MATCH,
)
def release_file(
    version: int, name: str, store: StoreDep, verified: VerifiedDep, if_none_match: IfNoneMatch
) -> Response:
    """A file the release's manifest lists, or manifest.json itself (ETag = its sha256 from the signed
    manifest; 304 when If-None-Match has it); 500, never the file, when it (or any file of the release) no
    longer matches its signed sha256."""
    folder = store.folder(version)
    files = live_manifest(store, verified, version)["files"]
    if name == MANIFEST_NAME:
        return FileResponse(verified.file(folder, MANIFEST_NAME), media_type="application/json")
    if name not in files:
        raise NotFoundError(f"release {version} has no file {name!r}")
    path = verified.file(folder, name)  # checked before a 304 too: a tampered release answers nothing else
    etag = f'"{files[name]["sha256"]}"'
    if if_none_match == etag:
        return Response(status_code=304, headers={"ETag": etag})
    return FileResponse(path, headers={"ETag": etag})


def withdraw(version: int, body: WithdrawRequest, store: StoreDep, config: ConfigDep) -> WithdrawResult:
    """Mark release `version` withdrawn, with the reason, in the index (re-signed: devices fall back to the
    release before it); 409 when it is withdrawn already. A release whose files do not verify can be
    withdrawn too."""
    known_release(store, version)
    if not config.signing_key:
        raise UnavailableError("the service was started without a signing key (--signing-key)")
    try:
        key = load_private_key(Path(config.signing_key))
    except (ConfigError, SignatureError) as exc:  # a missing or bad key file: the service's setup
        raise UnavailableError(f"withdrawals are unavailable: {exc}") from exc
    store.withdraw(version, reason=body.reason, key=key)
    return WithdrawResult(withdrawn=version, latest=store.latest())


router.add_api_route(  # the admin token is checked before the body is read (401 whatever it is)
    "/v1/admin/releases/{version}/withdraw",
    withdraw,
    methods=["POST"],
    response_model=WithdrawResult,
    summary="Withdraw a release (admin)",
    responses=errors(*ADMIN_ERRORS, 404, 409, 500, 503),
    dependencies=ADMIN_SECURITY,
    route_class_override=AdminFirst,
)
