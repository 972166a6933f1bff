"""The model service on a real uvicorn server on a free loopback port, in a thread (tests, demo checks)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from server.api.service import make_app
from shared.config import ServiceConfig, ServiceSecrets


@contextmanager
def running(config: ServiceConfig, secrets: ServiceSecrets | None = None) -> Iterator[str]:
    """A real uvicorn server on a free loopback port for `config`; yields its base URL. Its admin token comes
    from `secrets`, else from the environment when it starts (make_app)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = make_app(config, secrets)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    if not server.started:
        raise RuntimeError("the service did not start within 20 s")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
