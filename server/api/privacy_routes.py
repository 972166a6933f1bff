"""The model service's privacy routes: the served run's ledger, the auditor's report built from it with the
public key, and the auditor's dashboard.

- GET /v1/privacy/ledger: the ledger (JSON lines) as the run wrote it;
- GET /v1/privacy/report: the auditor's report (server/audit/audit_report.py:build_report);
- GET /dashboard and /dashboard/releases/{version} (HTML): the privacy report of the served run
  (verification of every ledger entry, epsilon over rounds, mismatches, exclusions), the list of releases,
  and for one release whether it verifies and is bound to its ledger entry (shown for a release that does
  not verify too: the page says why).

The report and the pages are built once per state of the run (its ledger's sha256 and its other files'
stats), of the release index and of the release shown, and kept (server/api/report_cache.py): these
routes need no token, and a build takes about 1.5 s of CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import FileResponse, HTMLResponse
from pydantic import BaseModel, ConfigDict

from server.api.http_errors import NotFoundError, UnavailableError, errors, html_route_errors
from server.api.release_routes import known_release
from server.api.report_cache import folder_state, run_state
from server.api.service_state import ConfigDep, ReportsDep, StateDep
from server.releases.release_store import ReleaseStore
from shared.config import ServiceConfig
from shared.errors import DataError

HTML: dict[int | str, dict[str, Any]] = {200: {"content": {"text/html": {}}}}


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


@dataclass(frozen=True)
class BuiltReport:
    """The report of the run as built, and its JSON as /v1/privacy/report serves it (validated once)."""

    report: dict[str, Any]
    body: bytes


def built_report(state: StateDep, release: Path | None = None) -> dict[str, Any]:
    """The auditor's report of the served run (with `release`: also of that release folder); a run whose
    files the auditor cannot read is the service's fault (UnavailableError)."""
    from server.audit.audit_report import build_report

    try:
        return build_report(Path(state.config.run_dir), state.public_key, release=release)
    except (DataError, OSError) as exc:
        raise UnavailableError(f"the privacy report cannot be built: {exc}") from exc


def report_of_run(state: StateDep) -> tuple[Any, BuiltReport]:
    """(the run's state, the report of the run as it is now): built when the run changed since the last
    build, else the one kept."""
    ledger_path(state.config)
    run = run_state(Path(state.config.run_dir))

    def build() -> BuiltReport:
        report = built_report(state)
        return BuiltReport(report, PrivacyReport.model_validate(report).model_dump_json().encode())

    return run, state.reports.get("report", run, build)


def releases_nav(store: ReleaseStore) -> str:
    """The dashboard's list of releases (from the verified index), each linking to its page."""
    rows = "".join(
        f"<li><a href='/dashboard/releases/{r['version']}'>release {r['version']}</a>"
        + (f" (withdrawn: {escape(r['reason'])})" if r["withdrawn"] else "")
        + "</li>"
        for r in store.index()["releases"]
    )
    return f"<nav id='releases'><a href='/dashboard'>live run</a><ul>{rows}</ul></nav>"


router = APIRouter()


@router.get(
    "/v1/privacy/ledger",
    response_class=Response,
    summary="The served run's privacy ledger",
    responses={200: {"content": {"application/x-ndjson": {"schema": {"type": "string"}}}}, **errors(404)},
)
def ledger(config: ConfigDep) -> Response:
    """The signed ledger (JSON lines) as the run wrote it: every round's privacy accounting."""
    return FileResponse(ledger_path(config), media_type="application/x-ndjson")


@router.get(
    "/v1/privacy/report",
    response_model=PrivacyReport,
    summary="The auditor's privacy report of the served run",
    responses=errors(404, 503),
)
def report(state: StateDep) -> Response:
    """The report the auditor builds from the ledger with the public key (built once per state of the run:
    a new or edited ledger entry builds it again)."""
    return Response(report_of_run(state)[1].body, media_type="application/json")


@router.get(
    "/dashboard",
    response_class=HTMLResponse,
    summary="The auditor's dashboard of the served run",
    responses={**HTML, **html_route_errors(404, 500, 503)},
)
def dashboard(state: StateDep, reports: ReportsDep) -> HTMLResponse:
    """The privacy report as HTML, headed by the list of releases."""
    from server.audit.report_html import render_html

    ledger_path(state.config)
    nav = releases_nav(state.store)  # the index is read (and verified) before any build
    run, built = report_of_run(state)
    page = reports.get("dashboard", (run, nav), lambda: render_html(built.report, header=nav))
    return HTMLResponse(page)


@router.get(
    "/dashboard/releases/{version}",
    response_class=HTMLResponse,
    summary="The auditor's page of one release",
    responses={**HTML, **html_route_errors(404, 422, 500, 503)},
)
def dashboard_release(version: int, state: StateDep, reports: ReportsDep) -> HTMLResponse:
    """The privacy report with whether release `version` verifies and is bound to its ledger entry."""
    from server.audit.report_html import render_html

    ledger_path(state.config)
    folder = state.store.folder(known_release(state.store, version))
    nav = releases_nav(state.store)
    page_state = (run_state(Path(state.config.run_dir)), folder_state(folder), nav)

    def build() -> str:
        return render_html(built_report(state, release=folder), header=nav)

    return HTMLResponse(reports.get("release", page_state, build, slot=str(version)))
