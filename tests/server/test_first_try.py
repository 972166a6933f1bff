"""`fedhome-server serve` at the first try: it refuses a missing run or a wrong public key in one line (exit
2) before it binds, and with good inputs it prints the address and the pages to open, which answer."""

from __future__ import annotations

import dataclasses
import os
import queue
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from ledger_toy import KEY, write_run

from server.releases.release_store import ReleaseStore
from server.server_cli import check_serve_inputs, serve_banner
from shared.config import ServiceConfig
from shared.errors import ConfigError, SignatureError
from shared.signing import generate_private_key, save_public_key

OTHER_KEY = generate_private_key()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A run folder with a signed ledger, its public key, another key's public key, an empty store."""
    tmp = tmp_path_factory.mktemp("serve")
    run = write_run(tmp / "run", rounds=2)
    save_public_key(OTHER_KEY.public_key(), tmp / "other.pem")
    return {
        "run": run,
        "key": run / "ledger_public_key.pem",
        "other": tmp / "other.pem",
        "store": tmp / "store",
    }


def serve_command(run: Path, key: Path, store: Path, port: int = 8000) -> list[str]:
    """`fedhome-server serve` (the same entry point as the console script, run as a module)."""
    return [sys.executable, "-m", "server.server_cli", "serve", "--store", str(store), "--run", str(run),
            "--public-key", str(key), "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip


def refused(command: list[str]) -> tuple[int, list[str], str]:
    """Run a serve that must refuse: its exit status, its non-blank stderr lines, its stdout."""
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=180, env=env)
    return done.returncode, [line for line in done.stderr.splitlines() if line.strip()], done.stdout


@pytest.mark.integration
def test_a_wrong_public_key_is_one_line_and_exit_2(inputs: dict[str, Path]) -> None:
    code, errors, out = refused(serve_command(inputs["run"], inputs["other"], inputs["store"]))
    assert code == 2 and out == ""
    assert len(errors) == 1, errors
    assert errors[0].startswith("fedhome-server: error: --public-key")
    assert "did not sign the run's ledger" in errors[0]


@pytest.mark.integration
def test_a_missing_run_is_one_line_and_exit_2(inputs: dict[str, Path], tmp_path: Path) -> None:
    code, errors, out = refused(serve_command(tmp_path / "no-run", inputs["key"], inputs["store"]))
    assert code == 2 and out == ""
    assert errors == [f"fedhome-server: error: --run {tmp_path / 'no-run'}: no such run folder"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.fixture
def serving(inputs: dict[str, Path]) -> Iterator[tuple[queue.Queue[str], subprocess.Popen[str]]]:
    """A real `fedhome-server serve` on a free loopback port; its stdout lines arrive on the queue. Stopped
    by its process id when the test ends."""
    command = serve_command(inputs["run"], inputs["key"], inputs["store"], port=free_port())
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines: queue.Queue[str] = queue.Queue()
    assert process.stdout is not None
    stdout = process.stdout

    def read() -> None:
        for line in stdout:
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    try:
        yield lines, process
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=20)


@pytest.mark.integration
def test_good_inputs_print_a_url_that_answers(
    serving: tuple[queue.Queue[str], subprocess.Popen[str]],
) -> None:
    lines, process = serving
    first = lines.get(timeout=180)
    assert first.startswith("fedhome-server: serving on http://127.0.0.1:"), first
    url = first.split()[-1]
    banner = [first, *(lines.get(timeout=5) for _ in range(3))]
    for page in ("/demo", "/dashboard", "/docs"):
        assert any(line.split()[-1] == url + page for line in banner), banner
    response = httpx.get(f"{url}/health", timeout=60)
    assert response.status_code == 200 and response.json()["status"] == "ok"
    process.terminate()
    _, errors = process.communicate(timeout=20)
    assert "INFO uvicorn" in errors  # the service logs at info level (startup, requests)


def test_an_index_signed_by_another_key_is_refused(inputs: dict[str, Path], tmp_path: Path) -> None:
    store = ReleaseStore(tmp_path / "store")
    store.refresh_index(OTHER_KEY)  # a signed index with no releases, by a key that did not sign the run
    config = ServiceConfig(release_store=store.root, run_dir=inputs["run"], public_key=inputs["key"])
    with pytest.raises(SignatureError, match="does not verify the release index"):
        check_serve_inputs(config)
    ReleaseStore(tmp_path / "good").refresh_index(KEY)
    check_serve_inputs(dataclasses.replace(config, release_store=tmp_path / "good"))  # one key signed both


def test_a_folder_without_a_ledger_is_refused(inputs: dict[str, Path], tmp_path: Path) -> None:
    config = ServiceConfig(release_store=inputs["store"], run_dir=tmp_path, public_key=inputs["key"])
    with pytest.raises(ConfigError, match="no privacy ledger"):
        check_serve_inputs(config)


def test_the_banner_names_the_pages_to_open() -> None:
    assert serve_banner("0.0.0.0", 8000).splitlines() == [
        "fedhome-server: serving on http://127.0.0.1:8000",
        "  demo:      http://127.0.0.1:8000/demo",
        "  dashboard: http://127.0.0.1:8000/dashboard",
        "  API docs:  http://127.0.0.1:8000/docs",
    ]
    assert "http://[::1]:8080/docs" in serve_banner("::", 8080)
