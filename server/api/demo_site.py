"""The demo page as the service serves it, built once when the app starts (DemoSite): the page with the
service's public key pinned in it, its Content-Security-Policy, and the demo shoppers; and where the page's
files are (server/web: our ES modules and onnxruntime-web's wasm build from npm)."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives import serialization

from server.api.demo_shoppers import read_demo_shoppers
from shared.config import ServiceConfig
from shared.data.schema import EVENT_TYPES
from shared.history import N_GAP_BUCKETS
from shared.signing import Ed25519PublicKey, key_id

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


@dataclass(frozen=True, kw_only=True)
class DemoSite:
    """The demo page as served (the pinned key written in) and the demo shoppers, built once with the app."""

    template: Path
    page: str  # "" when fedhome is installed without its source tree
    headers: dict[str, str]
    shoppers: list[dict[str, Any]] | None  # None: the service was started without demo shoppers

    @classmethod
    def build(cls, config: ServiceConfig, public_key: Ed25519PublicKey) -> DemoSite:
        """The page with `public_key` pinned; config.demo_shoppers read and checked now (DataError)."""
        shoppers = read_demo_shoppers(Path(config.demo_shoppers)) if config.demo_shoppers else None
        template = WEB / "src" / "index.html"
        page = (
            template.read_text().replace("__FEDHOME_CONFIG__", page_config(public_key))
            if template.is_file()
            else ""
        )
        headers = {"Content-Security-Policy": content_security_policy(page)} if page else {}
        return cls(template=template, page=page, headers=headers, shoppers=shoppers)
