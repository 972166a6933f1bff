"""The model service's API docs page, offline: GET /docs is Swagger UI reading /openapi.json, its script,
style and icon served by the service itself under /docs/static from the fastapi-offline package (Swagger
UI 5, which reads the OpenAPI 3.1 FastAPI writes; swagger-ui-bundle's Swagger UI 4 cannot), so the page
works without a CDN. FastAPI's own /docs and /redoc (both from a CDN) are off
(`FastAPI(docs_url=None, redoc_url=None)`)."""

from __future__ import annotations

from pathlib import Path
from typing import Final

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS: Final[Path] = Path(fastapi_offline.__file__).parent / "static"  # swagger-ui-bundle.js and the rest
ASSETS_URL: Final[str] = "/docs/static"


def docs_page(request: Request) -> HTMLResponse:
    app = request.app
    return get_swagger_ui_html(
        openapi_url=str(app.openapi_url),
        title=f"{app.title}: API docs",
        swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
        swagger_favicon_url=f"{ASSETS_URL}/favicon.png",
    )


def install_docs(app: FastAPI) -> None:
    """Serve the docs page and its files on `app` (built with docs_url=None and redoc_url=None)."""
    app.mount(ASSETS_URL, StaticFiles(directory=ASSETS), name="docs-static")
    app.add_api_route("/docs", docs_page, methods=["GET"], include_in_schema=False)
