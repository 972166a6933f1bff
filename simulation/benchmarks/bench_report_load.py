"""The model service under report traffic: latency of `GET /v1/releases/latest` while clients hammer the
unauthenticated report routes (benchmark tool behind docs/results.md's hardening figures; issue 17).

It starts `fedhome-server serve` as its own process on a free loopback port (one uvicorn worker, as deployed),
measures `--requests` sequential requests to /v1/releases/latest with no other traffic, then again while
`--clients` threads request /v1/privacy/report and /dashboard in a loop, and prints p50/p99 of both and how
many times the service built the report (its /metrics counter fedhome_report_builds_total). The server is
stopped by its process id.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np

START_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_service(args: argparse.Namespace, port: int) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "server.server_cli", "serve", "--store", str(args.store)]
    command += ["--run", str(args.run), "--public-key", str(args.public_key), "--port", str(port)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the service exited with {server.returncode}: {' '.join(command)}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code < 600:
                return server
        except httpx.HTTPError:
            time.sleep(0.2)
    server.terminate()
    raise RuntimeError("the service did not answer /health in time")


def latencies_ms(client: httpx.Client, url: str, n: int) -> np.ndarray:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        client.get(url).raise_for_status()
        times.append((time.perf_counter() - start) * 1e3)
    return np.array(times)


def report_builds(client: httpx.Client, base: str) -> float:
    text = client.get(f"{base}/metrics").text
    pattern = r"^fedhome_report_builds_total\{[^}]*\} ([0-9.e+]+)$"
    return sum(float(m) for m in re.findall(pattern, text, re.M))


def hammer(base: str, stop: threading.Event, served: list[int]) -> None:
    with httpx.Client(timeout=60) as client:
        paths = ["/v1/privacy/report", "/dashboard"]
        while not stop.is_set():
            client.get(f"{base}{paths[len(served) % 2]}")
            served.append(1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--store", type=Path, required=True, help="a release store folder")
    parser.add_argument("--run", type=Path, required=True, help="the run whose ledger and report are served")
    parser.add_argument("--public-key", type=Path, required=True)
    parser.add_argument("--clients", type=int, default=4, help="threads on the report routes")
    parser.add_argument("--requests", type=int, default=500, help="requests to /v1/releases/latest per phase")
    args = parser.parse_args(argv)
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = start_service(args, port)
    try:
        with httpx.Client(timeout=60) as client:
            quiet = latencies_ms(client, f"{base}/v1/releases/latest", args.requests)
            stop, served = threading.Event(), list[int]()
            threads = [
                threading.Thread(target=hammer, args=(base, stop, served)) for _ in range(args.clients)
            ]
            for thread in threads:
                thread.start()
            time.sleep(1.0)
            loaded = latencies_ms(client, f"{base}/v1/releases/latest", args.requests)
            stop.set()
            for thread in threads:
                thread.join()
            builds = report_builds(client, base)
    finally:
        server.terminate()
        server.wait(timeout=30)
    for name, times in (("no other traffic", quiet), (f"{args.clients} clients on the report", loaded)):
        p50, p99 = np.percentile(times, [50, 99])
        print(f"/v1/releases/latest, {name}: p50 {p50:.1f} ms, p99 {p99:.1f} ms ({times.size} requests)")
    print(f"report and dashboard requests served meanwhile: {len(served)}; report builds: {builds:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
