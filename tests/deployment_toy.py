"""A real Flower deployment on loopback for tests: a SuperLink, SuperNodes and `flwr run`, started as separate
processes and stopped by pid (tests/test_deployment.py, tests/test_device_deployment.py)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import pytest
import torch

from client.device.device_folder import events_path, releases_path
from client.device.event_store import EventStore
from client.device.release_cache import ReleaseCache, copy_from
from server.releases.release_builder import ReleaseSource
from server.releases.release_store import ReleaseStore
from shared.config import FedhomeConfig
from shared.data.source import configured_split
from shared.model import ItemFeatures, TwoTower
from shared.signing import generate_private_key, load_public_key, save_public_key

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's console scripts: flwr, flower-superlink, flower-supernode, ...
# The tiny shop of the simulation tests for 2 rounds, with no evaluation between rounds: every message starts
# a fresh `flwr-clientapp` process (Python, torch, the shop rebuilt), so fewer messages is faster.
TINY_RUN = {"federated__rounds": "2", "federated__eval_every": "0", "federated__node_timeout_s": "120"}
PRUNED = (".git", ".venv", "runs", ".cache", "build", "__pycache__", "*.egg-info", ".*_cache", ".hypothesis")
START_TIMEOUT_S = 60.0
RUN_TIMEOUT_S = 300.0  # the whole run took 83-124 s on the shared 2-core machines (about 40 s of CPU)


DEVICE_T0 = 1_700_000_000  # unix seconds of a device's first recorded event in the device tests


def record_views(device_dir: Path, items: list[str], *, start: int = 0) -> None:
    """Views of `items`, one a minute from DEVICE_T0 + `start` minutes, into the device folder's event store
    as the SDK records them."""
    store = EventStore(events_path(device_dir))
    try:
        for i, item in enumerate(items):
            store.add(item, "view", DEVICE_T0 + 60 * (start + i))
    finally:
        store.close()


@dataclass(frozen=True)
class StartRelease:
    """The shop's start release, published, and the PEM file of the key that signed it (what a device pins:
    node config "release-key")."""

    folder: Path
    key_file: Path

    def install(self, device_dir: Path) -> Path:
        """Install the release in the device folder `device_dir` (created), as the app's sync installs it."""
        device_dir.mkdir(parents=True, exist_ok=True)
        cache = ReleaseCache(releases_path(device_dir), load_public_key(self.key_file))
        cache.install(copy_from(self.folder))
        return device_dir


def publish_start_release(config: FedhomeConfig, text: np.ndarray, root: Path) -> StartRelease:
    """The run's model before training over the catalogue of `config` with text embeddings `text` (the
    ServerApp's start: the same seed), published in `root`/store with a throwaway key."""
    catalogue = configured_split(config.data).dataset.catalogue
    torch.manual_seed(config.federated.seed)
    model = TwoTower(ItemFeatures.from_catalogue(catalogue, text), config.model)
    key, store = generate_private_key(), ReleaseStore(root / "store")
    privacy = {"unit": "user", "epsilon": 0.0, "delta": 1e-5, "note": "the start"}
    encoder = {"name": "test", "backend": "none", "item_text_vectors_sha256": "cd" * 32}
    store.publish(model, catalogue, ReleaseSource("start", "ef" * 32, 0, encoder, privacy), key)
    save_public_key(key.public_key(), root / "release-key.pem")
    return StartRelease(store.folder(1), root / "release-key.pem")


def stage_app(dest: Path) -> Path:
    """A copy of the repository without the folders the FAB leaves out anyway (.venv, .gitignore'd ones):
    `flwr run` walks every file under the folder it is given before filtering (6 s for the .venv here); the
    FAB built from the copy is byte-identical to the one built from the repository."""
    shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(*PRUNED))
    return dest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Deployment:
    """Processes this test started, their logs, and how to stop them (by pid, descendants included)."""

    root: Path
    env: dict[str, str]
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def home(self, name: str) -> Path:
        path = self.root / "homes" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def start(self, name: str, args: list[str]) -> None:
        env = {**self.env, "FLWR_HOME": str(self.home(name))}
        with (self.root / f"{name}.log").open("wb") as log:
            self.processes[name] = subprocess.Popen(
                [str(BIN / args[0]), *args[1:]], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=self.root
            )

    def cli(self, *args: str, timeout_s: float = 120.0) -> subprocess.CompletedProcess[str]:
        env = {**self.env, "FLWR_HOME": str(self.home("cli"))}
        return subprocess.run(
            [str(BIN / "flwr"), *args], env=env, capture_output=True, text=True, timeout=timeout_s, cwd=ROOT
        )

    def cli_json(self, *args: str) -> Any:
        """`flwr ... --format json`, parsed; fails the test with the output if it did not succeed."""
        done = self.cli(*args, "--format", "json")
        start = done.stdout.find("{")
        payload = json.loads(done.stdout[start:]) if start >= 0 else {}
        if done.returncode != 0 or not payload.get("success"):
            self.fail(f"flwr {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        return payload

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                self.fail(f"{name} exited with code {process.returncode}")

    def fail(self, reason: str) -> NoReturn:
        pytest.fail(f"{reason}\n{self.logs()}", pytrace=False)

    def logs(self, tail_chars: int = 6000) -> str:
        parts = []
        for log in sorted(self.root.glob("*.log")):
            text = log.read_text(errors="replace")[-tail_chars:]
            parts.append(f"----- {log.name} (last {tail_chars} characters)\n{text}")
        return "\n".join(parts)

    def stop(self) -> list[str]:
        """SIGTERM what we started (SuperNodes first), then what they spawned and detached (SuperExec,
        flwr-serverapp, flwr-clientapp: they carry our marker); SIGKILL whatever is left after a grace
        period, and return those."""
        for name in reversed(list(self.processes)):
            _terminate(self.processes[name].pid)
        for process in self.processes.values():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        for pid in self.descendants():  # they would exit by themselves a few seconds after their parent
            _terminate(pid)
        deadline = time.monotonic() + 10
        while (left := self.descendants()) and time.monotonic() < deadline:
            time.sleep(0.2)
        killed = [f"{pid}: {_cmdline(pid)}" for pid in left]
        for pid in left:
            _terminate(pid, signal.SIGKILL)
        return killed

    def descendants(self) -> list[int]:
        """Live processes whose environment holds this deployment's marker (ours and what they spawned)."""
        marker = f"FEDHOME_TEST_DEPLOYMENT={self.root}".encode()
        found = []
        for entry in Path("/proc").glob("[0-9]*"):
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0") and _alive(int(entry.name)):
                    found.append(int(entry.name))
            except OSError:  # gone, or not ours to read
                continue
        return found

    # -- the deployment's parts, on loopback without TLS -------------------------------------------------
    def start_superlink(self) -> int:
        """A SuperLink on a free port (returned), its state in `root`/state.db, and the CLI's connection
        to it, named "test"."""
        port = free_port()
        self.start(
            "superlink",
            [
                "flower-superlink",
                "--insecure",
                "--host=127.0.0.1",
                f"--port={port}",
                f"--database={self.root / 'state.db'}",
                "--disable-runtime-dependency-installation",  # else `uv sync` per run (a CUDA torch download)
            ],
        )
        (self.home("cli") / "config.toml").write_text(
            '[superlink]\ndefault = "test"\n\n'
            f'[superlink.test]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
        )
        return port

    def start_supernode(self, name: str, *, link_port: int, node_config: str) -> None:
        """A SuperNode with `--node-config node_config`, its Runtime API on a free port."""
        self.start(
            name,
            [
                "flower-supernode",
                "--insecure",
                f"--superlink=127.0.0.1:{link_port}",
                f"--node-config={node_config}",
                "--host=127.0.0.1",
                f"--port={free_port()}",
            ],
        )

    def submit(self, settings: Mapping[str, str]) -> str:
        """`flwr run` of a staged copy of the app with `settings` as its run config; the run id."""
        run_config = self.root / "run_config.toml"  # values as TOML strings: from_flat converts them
        run_config.write_text("".join(f"{key} = {json.dumps(value)}\n" for key, value in settings.items()))
        app = stage_app(self.root / "fedhome")
        run_id: str = self.cli_json("run", str(app), "test", "--run-config", str(run_config))["run-id"]
        return run_id

    def require_completed(self, run_id: str, summary: Path) -> None:
        """Wait for the run (wait_for_run); fail with its `flwr log` unless it completed."""
        status = wait_for_run(self, run_id, summary)
        if status != "finished:completed":
            shown = self.cli("log", run_id, "test", "--show")
            self.fail(f"run {run_id} ended {status}\n----- flwr log\n{shown.stdout[-6000:]}")


def _terminate(pid: int, sig: signal.Signals = signal.SIGTERM) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:200]
    except OSError:
        return "?"


def running_deployment(root: Path) -> Iterator[Deployment]:
    """A Deployment in `root` for a fixture to yield from: every process it started is stopped afterwards,
    and a warning names those that needed SIGKILL."""
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # SuperExec spawns flwr-serverapp by name
        "OMP_NUM_THREADS": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.2",  # default 1 s per message
        "HF_HUB_OFFLINE": "1",
        "FEDHOME_TEST_DEPLOYMENT": str(root),
    }
    env.pop("FLWR_HOME", None)
    running = Deployment(root, env)
    try:
        yield running
    finally:
        killed = running.stop()
        if killed:
            warnings.warn(f"killed processes that ignored SIGTERM: {killed}", stacklevel=1)


def wait_for_health(deployment: Deployment, port: int) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        deployment.check_alive()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    deployment.fail(f"the SuperLink did not answer on port {port} within {START_TIMEOUT_S:.0f} s")


def wait_for_run(deployment: Deployment, run_id: str, summary: Path) -> str:
    """The run's final status, once the summary is written or the SuperLink logs the ServerApp's end; fails
    if a process dies or time runs out."""
    finished = re.compile(rf"Finished task \d+ of run {run_id}")
    link_log = deployment.root / "superlink.log"
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not (summary.exists() or finished.search(link_log.read_text(errors="replace"))):
        deployment.check_alive()
        if time.monotonic() > deadline:
            deployment.fail(f"run {run_id} did not finish within {RUN_TIMEOUT_S:.0f} s")
        time.sleep(0.5)
    for _ in range(30):  # the ServerApp process still has to exit and report
        status: str = deployment.cli_json("ls", "test", "--run-id", run_id)["runs"][0]["status"]
        if status.startswith("finished"):
            return status
        time.sleep(1)
    deployment.fail(f"run {run_id} still {status} 30 s after it wrote its summary")
