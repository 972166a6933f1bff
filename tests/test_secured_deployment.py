"""scripts/flower_deploy.sh: a SuperLink with TLS and SuperNode authentication, registered SuperNodes, the
fedhome run to its verified ledger, an unregistered SuperNode refused, and too few SuperNodes failing fast."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from federated_toy import read_jsonl

pytestmark = pytest.mark.deployment

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "flower_deploy.sh"
SCRIPT_TIMEOUT_S = 900.0  # the whole script took 4-5 minutes on the shared 2-core machines


def marked_pids(out: Path) -> list[int]:
    """Live processes the script started or they spawned (they carry FEDHOME_DEPLOY_MARKER=<out>)."""
    marker = f"FEDHOME_DEPLOY_MARKER={out}".encode()
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            if state != "Z" and marker in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except (OSError, IndexError):
            continue
    return found


@pytest.fixture
def out(tmp_path: Path) -> Iterator[Path]:
    """The script's output directory; whatever of it still runs after the test (it should not) is killed."""
    folder = tmp_path / "deploy"
    yield folder
    for pid in marked_pids(folder):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def deploy(out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "HF_HUB_OFFLINE": "1",
    }
    env.pop("FLWR_HOME", None)
    cache = f'encoder.cache_dir="{out.parent / "cache"}"'  # not the repository's embedding cache
    done = subprocess.run(
        ["bash", str(SCRIPT), "--out", str(out), *args, "--run-config", cache],
        env=env,
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT_S,
    )
    assert not marked_pids(out), "the script left processes running"
    return done


def logs(out: Path, done: subprocess.CompletedProcess[str]) -> str:
    parts = [f"----- stdout\n{done.stdout}\n----- stderr\n{done.stderr}"]
    parts += [
        f"----- {log.name}\n{log.read_text(errors='replace')[-4000:]}" for log in sorted(out.glob("*.log"))
    ]
    return "\n".join(parts)


def test_registered_supernodes_train_over_tls_and_an_unregistered_one_is_refused(out: Path) -> None:
    done = deploy(out, "--nodes", "2", "--check-unregistered")
    assert done.returncode == 0, logs(out, done)
    assert f"output directory: {out}" in done.stdout
    # Flower's refusal of a key that was never registered: the SuperNode exits with this error
    refused = (out / "supernode-unregistered.log").read_text()
    assert "[code: 2004] Failed to activate SuperNode" in refused, refused
    assert "unregistered key refused" in done.stdout
    # the registered ones ran the whole run, over TLS (the connection names the CA, no `insecure`)
    cli_config = (out / "homes" / "cli" / "config.toml").read_text()
    assert f'root-certificates = "{out / "certs" / "ca.crt"}"' in cli_config and "insecure" not in cli_config
    summary = json.loads((out / "run" / "summary.json").read_text())
    assert (summary["rounds"], summary["nodes"], summary["population"]) == (2, 2, 40)
    assert [entry["round"] for entry in read_jsonl(out / "run" / "ledger.jsonl")] == [1, 2]
    assert "ledger verified" in done.stdout


def test_too_few_supernodes_fail_fast_with_a_hint_and_no_traceback(out: Path) -> None:
    start = time.monotonic()
    done = deploy(out, "--nodes", "1", "--run-config", "federated.nodes=2 federated.connect_timeout_s=5.0")
    assert done.returncode == 1, logs(out, done)
    assert "1 of the 2 SuperNodes this run needs (federated.nodes) connected within 5 s" in done.stderr
    assert "start 1 more SuperNode(s)" in done.stderr and "or lower federated.nodes to 1" in done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert not (out / "run" / "summary.json").exists()
    assert time.monotonic() - start < 300  # not federated.node_timeout_s (300 s in the script's config)
