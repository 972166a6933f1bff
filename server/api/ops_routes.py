"""The model service's operations routes: GET /health (whether the store can be served, the latest release,
the releases refused because their files do not verify) and GET /metrics (Prometheus text,
server/api/service_metrics.py)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel

from server.api.service_state import MetricsDep, StoreDep, VerifiedDep
from server.releases.release_store import latest_of
from shared.errors import FedhomeError


class Health(BaseModel):
    # ok; degraded: some releases are refused (their files do not verify), the rest is served;
    # unhealthy (503): the release index cannot be used, so nothing of the store is served
    status: Literal["ok", "degraded", "unhealthy"]
    latest_release: int | None
    refused_releases: list[int] = []
    problem: str | None = None  # why the store is unhealthy


router = APIRouter()


@router.get(
    "/health",
    response_model=Health,
    summary="Whether the service can serve its store",
    responses={503: {"model": Health, "description": "unhealthy: the release index cannot be used"}},
)
def health(store: StoreDep, verified: VerifiedDep) -> Response:
    """ok, degraded (releases refused because their files do not verify against their signed manifests;
    the rest is served) or unhealthy (503: the release index is unreadable or does not verify)."""
    try:
        index = store.index()
    except FedhomeError as exc:
        problem = f"{type(exc).__name__}: {exc}"
        unhealthy = Health(status="unhealthy", latest_release=None, problem=problem)
        return JSONResponse(unhealthy.model_dump(), status_code=503)
    folders = {store.folder(r["version"]): r["version"] for r in index["releases"]}
    refused = sorted(folders[folder] for folder in verified.refused(folders))
    status: Literal["ok", "degraded"] = "degraded" if refused else "ok"
    body = Health(status=status, latest_release=latest_of(index), refused_releases=refused)
    return JSONResponse(body.model_dump())


@router.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
def metrics(service_metrics: MetricsDep) -> Response:
    """Requests by route template and status, latency by route template, report and dashboard builds."""
    return Response(service_metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
