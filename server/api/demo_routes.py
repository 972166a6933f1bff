"""The demo homepage page (/demo): ranks a simulated shopper's homepage in the browser from the latest
signed release; its static files (our ES modules, onnxruntime-web's wasm build from server/web/node_modules)
and the demo shoppers' synthetic histories (/v1/demo/shoppers).

The page pins the release key it verifies with: the service's own public key (ServiceConfig.public_key),
written into the page when the service starts. That protects the ranking against a tampered release file
or manifest in the store or in transit caches, not against a compromised service that serves both the page
and the key; a shop's app would ship the key inside the app. Good enough to demonstrate the checks.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import FileResponse, HTMLResponse
from pydantic import BaseModel

from server.api import demo_site as site_files
from server.api.demo_site import ORT_DIST, ORT_FILES, SOURCES, DemoSite
from server.api.http_errors import NotFoundError, UnavailableError, errors, html_route_errors
from server.api.service_state import StateDep


class DemoEvent(BaseModel):
    item_id: str
    event: str
    timestamp: int


class DemoShopper(BaseModel):
    id: str
    label: str
    now: int  # the request time the page ranks at, unix seconds
    history: list[DemoEvent]


class DemoShoppers(BaseModel):
    shoppers: list[DemoShopper]


def demo_site(state: StateDep) -> DemoSite:
    return state.demo


DemoDep = Annotated[DemoSite, Depends(demo_site)]

router = APIRouter()


@router.get(
    "/demo",
    response_class=HTMLResponse,
    summary="The demo homepage page",
    responses={200: {"content": {"text/html": {}}}, **html_route_errors(503)},
)
def demo_page(site: DemoDep) -> HTMLResponse:
    """A simulated shopper's homepage, ranked in the browser from the latest release, which the page
    verifies with the service's public key pinned in it."""
    if not site.page:
        raise UnavailableError(f"the demo page's sources are not installed ({site.template})")
    return HTMLResponse(site.page, headers=site.headers)


@router.get("/demo/static/{name}", response_class=FileResponse, include_in_schema=False)
def demo_static(name: str) -> FileResponse:
    if name not in SOURCES:
        raise NotFoundError(f"no demo file {name!r}")
    return FileResponse(site_files.WEB / "src" / name, media_type=SOURCES[name])


@router.get("/demo/ort/{name}", response_class=FileResponse, include_in_schema=False)
def demo_ort(name: str) -> FileResponse:
    if name not in ORT_FILES:
        raise NotFoundError(f"no onnxruntime-web file {name!r}")
    if not (ORT_DIST / name).is_file():
        raise UnavailableError("onnxruntime-web is not installed: run `npm ci` in server/web")
    return FileResponse(ORT_DIST / name, media_type=ORT_FILES[name])


@router.get(
    "/v1/demo/shoppers",
    response_model=DemoShoppers,
    summary="The demo page's synthetic shoppers",
    responses=errors(503),
)
def demo_shoppers(site: DemoDep) -> DemoShoppers:
    """Each synthetic shopper's history and the time the page ranks at (503 when the service was started
    without demo shoppers)."""
    if site.shoppers is None:
        raise UnavailableError("the service was started without demo shoppers (--demo-shoppers)")
    return DemoShoppers.model_validate({"shoppers": site.shoppers})
