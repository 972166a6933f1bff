"""A federated run SIGKILLed mid-round resumes from its last complete round: none counted twice, none lost."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from federated_toy import read_jsonl, tiny_config, tiny_settings

from server.audit.verify import verify_ledger
from shared.data.source import configured_split
from shared.privacy.accounting import RoundEvent, UserLevelAccountant, pld_epsilon
from shared.run_folder import RunFolder, list_checkpoints, load_latest_checkpoint
from shared.signing import load_public_key
from simulation.federated import run_federated

pytestmark = pytest.mark.integration

ROUNDS, KILL_AFTER = 8, 3
SETTINGS = {
    "federated__rounds": str(ROUNDS),
    "privacy__noise_multiplier": "1.0",
    "privacy__target_epsilon": "100",
}
# The killed run: rounds after KILL_AFTER hang before asking the nodes, so the kill always lands before the
# end (right after the checkpoint of round KILL_AFTER, in its evaluation, or inside round KILL_AFTER + 1).
KILLED_RUN = """
import json, sys, time
import server.rounds.update_transport as round_updates
from shared.config import FedhomeConfig, with_overrides
from shared.data.source import configured_split
from simulation.federated import run_federated

real = round_updates.train_round
def slow(grid, assignment, params, settings, **kwargs):
    if settings.round > int(sys.argv[2]):
        time.sleep(3600)
    return real(grid, assignment, params, settings, **kwargs)
round_updates.train_round = slow
config = with_overrides(FedhomeConfig(), json.loads(sys.argv[1]))
run_federated(config, configured_split(config.data), progress=False)
"""


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("encoder-cache")


def descendants(pid: int) -> set[int]:
    """Every living process whose parent chain leads to `pid` (read from /proc: Linux)."""
    parent: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "(command name)"
        except OSError:
            continue  # exited meanwhile
        parent[int(stat.parent.name)] = int(fields[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, ppid in parent.items() if ppid in frontier} - found
        found |= frontier
    return found


def kill_tree(pid: int) -> set[int]:
    """SIGKILL the process group `pid` leads and every descendant of `pid` (Ray's processes included):
    stop them all first, until no new one appears, so none can start another or be replaced meanwhile."""
    with contextlib.suppress(ProcessLookupError):  # none left of the group: it ended by itself
        os.killpg(pid, signal.SIGSTOP)
    stopped: set[int] = set()
    while new := descendants(pid) - stopped:
        for child in new:
            _signal(child, signal.SIGSTOP)
        stopped |= new
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    for child in stopped:
        _signal(child, signal.SIGKILL)
    return stopped


def running(pids: set[int]) -> set[int]:
    """Those of `pids` that are still processes (not exited, not zombies waiting to be reaped)."""
    alive = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state not in ("Z", "X"):
            alive.add(pid)
    return alive


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def start_killed_run(settings: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FLWR_TELEMETRY_ENABLED": "0", "HF_HUB_OFFLINE": "1"}
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-c", KILLED_RUN, json.dumps(settings), str(KILL_AFTER)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


def wait_for_checkpoint(
    folder: RunFolder, proc: subprocess.Popen[bytes], log: Path, timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while not any(int(p.name[6:11]) >= KILL_AFTER for p in list_checkpoints(folder)):
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before the kill:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no checkpoint of round {KILL_AFTER} after {timeout_s} s")
        time.sleep(0.05)


def test_a_run_killed_mid_round_resumes_to_the_same_model(tmp_path: Path, cache: Path) -> None:
    straight = tiny_config(tmp_path / "straight", cache, **SETTINGS)  # also fills the encoder cache
    split = configured_split(straight.data)
    run_federated(straight, split, progress=False)

    settings = tiny_settings(tmp_path / "killed", cache, **SETTINGS)
    folder = RunFolder(Path(settings["federated.run_dir"]))
    log = tmp_path / "killed.log"
    proc = start_killed_run(settings, log)
    try:
        wait_for_checkpoint(folder, proc, log, timeout_s=300)
    finally:
        killed = kill_tree(proc.pid)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL and killed  # Ray's processes were among its descendants
    deadline = time.monotonic() + 30
    while running(killed) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not running(killed)
    assert len(read_jsonl(folder.ledger)) < ROUNDS and not folder.summary.exists()

    resumed = run_federated(tiny_config(tmp_path / "killed", cache, **SETTINGS), split, progress=False)
    entries = read_jsonl(folder.ledger)
    assert [e["round"] for e in entries] == list(range(1, ROUNDS + 1))
    assert len({e["run_id"] for e in entries}) == 1
    report = verify_ledger(folder.ledger, load_public_key(folder.public_key))
    assert report.ok, report.problems
    assert [m["round"] for m in read_jsonl(folder.metrics)] == list(range(ROUNDS + 1))  # round 0: the start
    checkpoint = load_latest_checkpoint(folder)
    assert checkpoint is not None and checkpoint["round"] == ROUNDS
    accountant = UserLevelAccountant.from_dict(checkpoint["accountant"])
    fresh = pld_epsilon([RoundEvent(sample_rate=0.5, noise_multiplier=1.0)] * ROUNDS, delta=accountant.delta)
    assert accountant.spent()["pld"] == pytest.approx(fresh, rel=1e-12)
    assert resumed.summary["user_epsilon"] == pytest.approx(fresh, rel=1e-12)
    assert entries[-1]["user_epsilon"]["pld"] == pytest.approx(fresh, rel=1e-12)
    np.testing.assert_allclose(
        np.load(folder.final_params),
        np.load(RunFolder(straight.federated.run_dir).final_params),
        rtol=1e-5,
        atol=1e-6,
    )
