"""The demo homepage page (/demo): ranks a simulated shopper's homepage in the browser from the latest
signed release; its static files (our ES modules, onnxruntime-web's wasm build from server/web/node_modules)
and the demo shoppers' synthetic histories (/v1/demo/shoppers).

The page pins the release key it verifies with: the service's own public key (ServiceConfig.public_key),
written into the page when it is served. That protects the ranking against a tampered release file or
manifest in the store or in transit caches, not against a compromised service that serves both the page
and the key; a shop's app would ship the key inside the app. Good enough to demonstrate the checks.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path
from typing import Final

from cryptography.hazmat.primitives import serialization
from fastapi import APIRouter
from fastapi.responses import FileResponse, HTMLResponse
from pydantic import BaseModel

from server.api.demo_shoppers import read_demo_shoppers
from server.api.http_errors import NotFoundError, UnavailableError
from shared.config import ServiceConfig
from shared.data.schema import EVENT_TYPES
from shared.history import N_GAP_BUCKETS
from shared.signing import Ed25519PublicKey, key_id, load_public_key

WEB: Final[Path] = Path(__file__).parents[1] / "web"  # server/web: the page's sources and npm packages
SOURCES: Final[dict[str, str]] = {
    "demo.js": "text/javascript",
    "canonical.js": "text/javascript",
    "verify.js": "text/javascript",
    "npy.js": "text/javascript",
    "ranker.js": "text/javascript",
    "homepage.js": "text/javascript",
    "style.css": "text/css",
}
ORT_DIST: Final[Path] = WEB / "node_modules" / "onnxruntime-web" / "dist"
ORT_FILES: Final[dict[str, str]] = {  # the wasm backend, single thread: all the page loads of the package
    "ort.wasm.min.mjs": "text/javascript",
    "ort-wasm-simd-threaded.mjs": "text/javascript",
    "ort-wasm-simd-threaded.wasm": "application/wasm",
}


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


def page_config(public_key: Ed25519PublicKey) -> str:
    """The JSON the page reads: the pinned key (32 raw bytes, base64), event types, gap buckets."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    config = {
        "publicKey": base64.b64encode(raw).decode("ascii"),
        "keyId": key_id(public_key),
        "eventTypes": list(EVENT_TYPES),
        "nGapBuckets": N_GAP_BUCKETS,
        "apiBase": "",
        "ortBase": "/demo/ort/",
    }
    return json.dumps(config).replace("</", "<\\/")


def content_security_policy(page: str) -> str:
    """Only this origin's scripts, the page's inline import map (by its sha256) and WebAssembly."""
    (import_map,) = re.findall(r'<script type="importmap">(.*?)</script>', page, flags=re.S)
    digest = base64.b64encode(hashlib.sha256(import_map.encode()).digest()).decode("ascii")
    return (
        f"default-src 'self'; script-src 'self' 'sha256-{digest}' 'wasm-unsafe-eval'; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    )


def demo_router(config: ServiceConfig) -> APIRouter:
    """The demo page's routes; shoppers are read (and checked) once, here, when the app is built."""
    router = APIRouter()
    public_key = load_public_key(config.public_key)
    shoppers = read_demo_shoppers(Path(config.demo_shoppers)) if config.demo_shoppers else None
    template = WEB / "src" / "index.html"  # absent when fedhome is installed without its source tree
    page = (
        template.read_text().replace("__FEDHOME_CONFIG__", page_config(public_key))
        if template.is_file()
        else ""
    )
    headers = {"Content-Security-Policy": content_security_policy(page)} if page else {}

    @router.get("/demo", response_class=HTMLResponse)
    def demo_page() -> HTMLResponse:
        if not page:
            raise UnavailableError(f"the demo page's sources are not installed ({template})")
        return HTMLResponse(page, headers=headers)

    @router.get("/demo/static/{name}", response_class=FileResponse, include_in_schema=False)
    def demo_static(name: str) -> FileResponse:
        if name not in SOURCES:
            raise NotFoundError(f"no demo file {name!r}")
        return FileResponse(WEB / "src" / name, media_type=SOURCES[name])

    @router.get("/demo/ort/{name}", response_class=FileResponse, include_in_schema=False)
    def demo_ort(name: str) -> FileResponse:
        if name not in ORT_FILES:
            raise NotFoundError(f"no onnxruntime-web file {name!r}")
        if not (ORT_DIST / name).is_file():
            raise UnavailableError("onnxruntime-web is not installed: run `npm ci` in server/web")
        return FileResponse(ORT_DIST / name, media_type=ORT_FILES[name])

    @router.get("/v1/demo/shoppers", response_model=DemoShoppers)
    def demo_shoppers() -> DemoShoppers:
        if shoppers is None:
            raise UnavailableError("the service was started without demo shoppers (--demo-shoppers)")
        return DemoShoppers.model_validate({"shoppers": shoppers})

    return router
