"""The model service's state, built once by make_app (server/api/service.py) and kept on `app.state.service`,
and the `Annotated` dependencies through which the routers read it."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from server.api.demo_site import DemoSite
from server.api.report_cache import ReportCache
from server.api.service_metrics import ServiceMetrics
from server.api.verified_files import VerifiedFiles
from server.catalogue.delta_publisher import DeltaBase, DeltaStore
from server.releases.release_store import ReleaseStore
from shared.config import ServiceConfig, ServiceSecrets
from shared.signing import Ed25519PublicKey


@dataclass(frozen=True, kw_only=True)
class ServiceState:
    """Everything the routes share, built when the app is: nothing is read again per request."""

    config: ServiceConfig
    secrets: ServiceSecrets  # the admin token, read once when the service starts
    store: ReleaseStore  # opened with `public_key`: every read of its index verifies it
    public_key: Ed25519PublicKey  # verifies the ledger, the releases and the index
    metrics: ServiceMetrics
    demo: DemoSite  # the demo page and its shoppers, read (and checked) when the app is built
    deltas: DeltaStore  # the catalogue deltas beside `store`
    verified: VerifiedFiles  # the releases and deltas served, verified at start and checked when served
    reports: ReportCache  # the privacy report and dashboard pages, built once per state of the run
    # what catalogue writes embed with: the latest release's model, loaded by the first write after start
    delta_bases: dict[int, DeltaBase] = field(default_factory=dict)
    delta_bases_lock: threading.Lock = field(default_factory=threading.Lock)


def service_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.service
    return state


def release_store(state: StateDep) -> ReleaseStore:
    return state.store


def delta_store(state: StateDep) -> DeltaStore:
    return state.deltas


def service_config(state: StateDep) -> ServiceConfig:
    return state.config


def public_key(state: StateDep) -> Ed25519PublicKey:
    return state.public_key


def service_metrics(state: StateDep) -> ServiceMetrics:
    return state.metrics


def verified_files(state: StateDep) -> VerifiedFiles:
    return state.verified


def report_cache(state: StateDep) -> ReportCache:
    return state.reports


StateDep = Annotated[ServiceState, Depends(service_state)]
StoreDep = Annotated[ReleaseStore, Depends(release_store)]
DeltasDep = Annotated[DeltaStore, Depends(delta_store)]
ConfigDep = Annotated[ServiceConfig, Depends(service_config)]
PublicKeyDep = Annotated[Ed25519PublicKey, Depends(public_key)]
MetricsDep = Annotated[ServiceMetrics, Depends(service_metrics)]
VerifiedDep = Annotated[VerifiedFiles, Depends(verified_files)]
ReportsDep = Annotated[ReportCache, Depends(report_cache)]
