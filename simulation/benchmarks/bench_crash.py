"""A ServerApp killed mid-round (SIGKILL of `fedhome-sim federated`'s process group), then resumed.

Starts `fedhome-sim federated` on a tiny synthetic shop as a subprocess in a session of its own, kills the
whole process group (the driver, its ServerApp thread and Ray's processes) once the ledger shows round
`kill_after` and before the run ends, checks by pid that every process of the group is gone, then runs the
same command again, which resumes from the newest checkpoint (server/rounds/coordinator.py: resume). It
reports the rounds lost and duplicated in the ledger, whether the ledger verifies, the user epsilon the
ledger showed at the kill and at the end against the project's accountant over the same rounds, and, with
`clean`, a clean run's final epsilon and model hash for the same command.

    python -m simulation.benchmarks.bench_crash [--rounds 5] [--kill-after 2] [--clean] [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from server.audit.verify import verify_ledger
from server.ledger_entries import is_training_round
from shared.errors import FedhomeError
from shared.privacy.accounting import RoundEvent
from shared.privacy.capped_accounting import make_accountant
from shared.signing import load_public_key
from simulation.federated import TINY_RUN

# the tests' tiny run (simulation/federated.py: TINY_RUN) without evaluation rounds: short rounds
TINY = {**TINY_RUN, "federated.eval_every": "0", "privacy.target_epsilon": "20"}
POLL_S = 0.02
RUN_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class CrashResult:
    rounds: int  # federated.rounds
    killed_at_ledger_round: int  # the ledger's last round when the kill was sent
    ledger_round_after_kill: int  # ... and once every process had gone (a round may finish meanwhile)
    checkpoint_after_kill: int  # the newest checkpoint's round after the kill
    processes_killed: int  # pids of the process group when the kill was sent
    processes_left: list[int]  # pids of the killed run or of the resumed one still alive afterwards
    ledger_rounds: list[int]  # training rounds in the final ledger, in ledger order
    rounds_lost: list[int]
    rounds_duplicated: list[int]
    ledger_verifies: bool
    verify_problems: list[str]
    epsilon_at_kill: float  # PLD user epsilon of the ledger's last entry when killed
    epsilon_final: float  # ... of the final ledger's last entry
    epsilon_accountant: float  # the project's accountant over the same rounds (q, z of the ledger)
    target_epsilon: float
    final_model: bool  # final_model.safetensors and summary.json exist
    resumed_wall_s: float
    clean_epsilon: float | None = None  # a clean run of the same command, when asked for
    same_final_model: bool | None = None  # its last round's model hash equals the resumed run's


def command(run_dir: Path, *, rounds: int, cache: Path, extra: dict[str, str]) -> list[str]:
    """`fedhome-sim federated` on the tiny shop: the same command starts the run and resumes it."""
    exe = Path(sys.executable).with_name("fedhome-sim")
    settings = {**TINY, "encoder.cache_dir": str(cache), "federated.rounds": str(rounds), **extra}
    sets = [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]
    return [str(exe), "federated", "--no-progress", "--out", str(run_dir), *sets]


def read_ledger(run_dir: Path) -> list[dict[str, Any]]:
    """The ledger's complete entries (a torn last line, as a kill may leave, is left out)."""
    path = run_dir / "ledger.jsonl"
    if not path.exists():
        return []
    entries = []
    for line in path.read_text().splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return entries


def last_round(run_dir: Path) -> int:
    rounds = [int(e["round"]) for e in read_ledger(run_dir) if is_training_round(e)]
    return rounds[-1] if rounds else 0


def newest_checkpoint(run_dir: Path) -> int:
    names = sorted((run_dir / "checkpoints").glob("round-*.npz"))
    return int(names[-1].stem.split("-")[1]) if names else 0


def group_pids(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group `pgid`, from /proc."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(entry.name))
    return sorted(pids)


def alive(pids: Sequence[int]) -> list[int]:
    """Those of `pids` that still run (a zombie has ended)."""
    left = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if state[state.rindex(")") + 2] != "Z":
            left.append(pid)
    return left


def wait_gone(pids: Sequence[int], *, timeout_s: float = 20.0) -> list[int]:
    """Wait until every pid in `pids` has ended; returns those still alive at the timeout."""
    deadline = time.monotonic() + timeout_s
    while (left := alive(pids)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def run_to_end(argv: list[str], log: Path) -> tuple[float, list[int]]:
    """Run `argv` in a session of its own to completion; (wall seconds, pids of its group left behind)."""
    start = time.perf_counter()
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise FedhomeError(f"{argv[1]} did not finish in {RUN_TIMEOUT_S:.0f} s; see {log}") from None
    left = wait_gone(group_pids(proc.pid), timeout_s=10.0)
    if code != 0:
        raise FedhomeError(f"{argv[1]} exited with {code}; see {log}")
    return time.perf_counter() - start, left


def kill_mid_run(argv: list[str], run_dir: Path, *, kill_after: int, log: Path) -> tuple[int, int, list[int]]:
    """Start the run and SIGKILL its process group as soon as the ledger shows round `kill_after`: (the
    ledger's round then, pids killed, pids still alive after the kill)."""
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + RUN_TIMEOUT_S
    try:
        while (seen := last_round(run_dir)) < kill_after:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise FedhomeError(f"the run ended or stalled before round {kill_after}; see {log}")
            time.sleep(POLL_S)
        pids = group_pids(proc.pid)
        os.killpg(proc.pid, signal.SIGKILL)
    except BaseException:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    proc.wait()
    return seen, len(pids), wait_gone(pids)


def pld_epsilon(entry: dict[str, Any]) -> float:
    return float(entry["user_epsilon"]["pld"])


def accountant_epsilon(entries: list[dict[str, Any]]) -> float:
    """The project's accountant over the ledger's training rounds, with their q, z and delta."""
    rounds = [e for e in entries if is_training_round(e)]
    accountant = make_accountant(delta=float(rounds[0]["delta"]), participation_cap=0)
    for entry in rounds:
        accountant.record(
            RoundEvent(
                sample_rate=float(entry["sample_rate"]), noise_multiplier=float(entry["noise_multiplier"])
            )
        )
    return float(accountant.spent()["pld"])


def crash_and_resume(
    root: Path,
    *,
    rounds: int = 5,
    kill_after: int = 2,
    clean: bool = False,
    extra: dict[str, str] | None = None,
) -> CrashResult:
    """Kill a tiny run once its ledger shows round `kill_after`, resume it with the same command, and
    measure what the ledger and the accountant say (module docstring). `root` holds the run folders, the
    encoder cache and the logs; `extra` are more config overrides (KEY: VALUE)."""
    if not 1 <= kill_after < rounds:
        raise FedhomeError(f"kill after a round in 1..{rounds - 1}, got {kill_after}")
    root.mkdir(parents=True, exist_ok=True)
    run_dir, log = root / "crashed", root / "crash.log"
    argv = command(run_dir, rounds=rounds, cache=root / "cache", extra=extra or {})
    seen, killed, left = kill_mid_run(argv, run_dir, kill_after=kill_after, log=log)
    at_kill = [e for e in read_ledger(run_dir) if is_training_round(e)]
    after_kill, checkpoint = (at_kill[-1]["round"] if at_kill else 0), newest_checkpoint(run_dir)
    if after_kill >= rounds:
        raise FedhomeError(f"the run finished all {rounds} rounds before the kill: raise --rounds")
    wall_s, left_resumed = run_to_end(argv, log)
    entries = read_ledger(run_dir)
    numbers = [int(e["round"]) for e in entries if is_training_round(e)]
    report = verify_ledger(run_dir, load_public_key(run_dir / "ledger_public_key.pem"))
    result = CrashResult(
        rounds=rounds,
        killed_at_ledger_round=seen,
        ledger_round_after_kill=int(after_kill),
        checkpoint_after_kill=checkpoint,
        processes_killed=killed,
        processes_left=left + left_resumed,
        ledger_rounds=numbers,
        rounds_lost=sorted(set(range(1, rounds + 1)) - set(numbers)),
        rounds_duplicated=sorted({n for n in numbers if numbers.count(n) > 1}),
        ledger_verifies=report.ok,
        verify_problems=list(report.problems),
        epsilon_at_kill=pld_epsilon(at_kill[-1]) if at_kill else 0.0,
        epsilon_final=pld_epsilon([e for e in entries if is_training_round(e)][-1]),
        epsilon_accountant=accountant_epsilon(entries),
        target_epsilon=float(TINY["privacy.target_epsilon"]),
        final_model=(run_dir / "final_model.safetensors").exists() and (run_dir / "summary.json").exists(),
        resumed_wall_s=round(wall_s, 1),
    )
    if not clean:
        return result
    clean_dir = root / "clean"
    _, left_clean = run_to_end(
        command(clean_dir, rounds=rounds, cache=root / "cache", extra=extra or {}), log
    )
    reference = [e for e in read_ledger(clean_dir) if is_training_round(e)]
    resumed_last = [e for e in entries if is_training_round(e)][-1]
    return dataclasses.replace(
        result,
        processes_left=result.processes_left + left_clean,
        clean_epsilon=pld_epsilon(reference[-1]),
        same_final_model=reference[-1]["model_sha256_after"] == resumed_last["model_sha256_after"],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--kill-after", type=int, default=2, help="kill once the ledger shows this round")
    parser.add_argument("--clean", action="store_true", help="also run the same command without a kill")
    parser.add_argument("--root", type=Path, default=None, help="folder for the runs (default: a new one)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--json", type=Path, help="write the result here")
    args = parser.parse_args(argv)
    root = args.root or Path("runs") / f"bench-crash-{time.strftime('%Y%m%d-%H%M%S')}"
    extra = dict(kv.split("=", 1) for kv in args.set)
    result = crash_and_resume(
        root, rounds=args.rounds, kill_after=args.kill_after, clean=args.clean, extra=extra
    )
    print(f"runs in {root}")
    print(
        f"killed {result.processes_killed} processes when the ledger showed round "
        f"{result.killed_at_ledger_round} "
        f"(after the kill: ledger round {result.ledger_round_after_kill}, newest checkpoint "
        f"{result.checkpoint_after_kill}); still alive: {result.processes_left or 'none'}"
    )
    print(
        f"rounds lost {result.rounds_lost or 'none'}, duplicated {result.rounds_duplicated or 'none'}; "
        f"ledger verifies: {result.ledger_verifies} {result.verify_problems or ''}"
    )
    clean_text = "" if result.clean_epsilon is None else f", clean run {result.clean_epsilon:.6f}"
    print(
        f"user epsilon (PLD): at the kill {result.epsilon_at_kill:.6f}, "
        f"after resume {result.epsilon_final:.6f}, "
        f"accountant over rounds 1..{result.rounds} {result.epsilon_accountant:.6f}{clean_text} "
        f"(target {result.target_epsilon:g})"
    )
    if result.same_final_model is not None:
        print(f"final model equals the clean run's: {result.same_final_model}")
    print(f"final model written: {result.final_model}; resume took {result.resumed_wall_s} s")
    if args.json:
        args.json.write_text(json.dumps(asdict(result), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
