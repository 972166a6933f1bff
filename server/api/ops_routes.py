"""The model service's operations routes: GET /health (the latest release) and GET /metrics (Prometheus text,
server/api/service_metrics.py)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel

from server.api.service_state import MetricsDep, StoreDep


class Health(BaseModel):
    status: str
    latest_release: int | None


router = APIRouter()


@router.get("/health", response_model=Health)
def health(store: StoreDep) -> Health:
    return Health(status="ok", latest_release=store.latest())


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(service_metrics: MetricsDep) -> Response:
    return Response(service_metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
