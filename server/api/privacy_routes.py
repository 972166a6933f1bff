"""The model service's privacy routes: the served run's ledger, the auditor's report built from it with the
public key, and the auditor's dashboard.

- GET /v1/privacy/ledger: the ledger (JSON lines) as the run wrote it;
- GET /v1/privacy/report: the auditor's report (server/audit/audit_report.py:build_report);
- GET /dashboard and /dashboard/releases/{version} (HTML): the privacy report of the served run
  (verification of every ledger entry, epsilon over rounds, mismatches, exclusions), the list of releases,
  and for one release whether it verifies and is bound to its ledger entry.
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import FileResponse, HTMLResponse
from pydantic import BaseModel, ConfigDict

from server.api.http_errors import NotFoundError
from server.api.release_routes import live_manifest
from server.api.service_state import ConfigDep, PublicKeyDep, StoreDep
from server.releases.release_store import ReleaseStore
from shared.config import ServiceConfig
from shared.signing import Ed25519PublicKey


class PrivacyReport(BaseModel):
    """The auditor's report; each section is described in server/audit/audit_report.py (build_report)."""

    model_config = ConfigDict(extra="allow")  # sections added to the report are served as they are

    report_version: int
    run_id: Any = None  # as the ledger names it
    verification: dict[str, Any]
    guarantee: dict[str, Any]
    accountants: list[dict[str, Any]]
    rounds: list[dict[str, Any]]
    trending: list[dict[str, Any]]
    mismatches: list[str]
    not_covered: list[str]
    empirical_audit: dict[str, Any] | None
    release: dict[str, Any]
    tools: dict[str, str]


def ledger_path(config: ServiceConfig) -> Path:
    """The served run's ledger; NotFoundError when the run has none."""
    path = Path(config.run_dir) / "ledger.jsonl"
    if not path.is_file():
        raise NotFoundError("the served run has no ledger")
    return path


def dashboard_page(
    config: ServiceConfig, store: ReleaseStore, public_key: Ed25519PublicKey, release: Path | None
) -> HTMLResponse:
    """The report of the served run as HTML, headed by the list of releases; with `release` (a release
    folder) also whether it verifies and is bound to its ledger entry."""
    from server.audit.audit_report import build_report
    from server.audit.report_html import render_html

    ledger_path(config)
    rows = "".join(
        f"<li><a href='/dashboard/releases/{r['version']}'>release {r['version']}</a>"
        + (f" (withdrawn: {escape(r['reason'])})" if r["withdrawn"] else "")
        + "</li>"
        for r in store.index(public_key)["releases"]
    )
    nav = f"<nav id='releases'><a href='/dashboard'>live run</a><ul>{rows}</ul></nav>"
    report = build_report(Path(config.run_dir), public_key, release=release)
    return HTMLResponse(render_html(report, header=nav))


router = APIRouter()


@router.get(
    "/v1/privacy/ledger",
    response_class=Response,
    responses={200: {"content": {"application/x-ndjson": {"schema": {"type": "string"}}}}},
)
def ledger(config: ConfigDep) -> Response:
    return FileResponse(ledger_path(config), media_type="application/x-ndjson")


@router.get("/v1/privacy/report", response_model=PrivacyReport)
def report(config: ConfigDep, public_key: PublicKeyDep) -> PrivacyReport:
    from server.audit.audit_report import build_report

    ledger_path(config)
    return PrivacyReport.model_validate(build_report(Path(config.run_dir), public_key))


@router.get("/dashboard", response_class=HTMLResponse)
def dashboard(config: ConfigDep, store: StoreDep, public_key: PublicKeyDep) -> HTMLResponse:
    return dashboard_page(config, store, public_key, None)


@router.get("/dashboard/releases/{version}", response_class=HTMLResponse)
def dashboard_release(
    version: int, config: ConfigDep, store: StoreDep, public_key: PublicKeyDep
) -> HTMLResponse:
    live_manifest(store, version)
    return dashboard_page(config, store, public_key, store.folder(version))
