"""The model service's Prometheus metrics: requests by route template and status, latency by route template,
recorded by a middleware around every request, and builds of the privacy report and dashboard pages by page
(each a cache miss: server/api/report_cache.py); exposed by /metrics (server/api/ops_routes.py)."""

from __future__ import annotations

import time

from fastapi import Request, Response
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.types import ASGIApp


class ServiceMetrics:
    """One service's metrics, in a registry of its own (several services may run in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "fedhome_requests", "HTTP requests", ["route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "fedhome_request_seconds", "request latency", ["route"], registry=self.registry
        )
        self.report_builds = Counter(
            "fedhome_report_builds",
            "builds of the privacy report and dashboard pages (cache misses)",
            ["page"],
            registry=self.registry,
        )

    def observe(self, route: str, status: int, seconds: float) -> None:
        self.latency.labels(route).observe(seconds)
        self.requests.labels(route, str(status)).inc()

    def count_report_build(self, page: str) -> None:
        self.report_builds.labels(page).inc()

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric."""
        return generate_latest(self.registry)


class ObserveRequests(BaseHTTPMiddleware):
    """Records each request in `metrics` under its route template ("unmatched" when no route took it)."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        super().__init__(app)
        self.metrics = metrics

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = getattr(request.scope.get("route"), "path", "unmatched")  # the template, known after routing
        self.metrics.observe(route, response.status_code, time.perf_counter() - started)
        return response
