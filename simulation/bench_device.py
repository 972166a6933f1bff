"""Benchmark of one homepage request on the device: user tower (ONNX) + scoring + top-k, one thread.

    python -m simulation.bench_device --release RELEASE_DIR --items 100000 1000000

Uses the release's user tower, temperature and a real history of its catalogue; the item matrix is the
release's item vectors tiled (with small noise) up to each catalogue size, quantised to int8 with a scale
per row as a release stores them. Prints p50/p99 latency per request over --requests requests, the int8
matrix's memory, and the process's peak RSS growth while it is loaded. Also checks recall@50 of the int8
ranking against float32 on the release's own catalogue.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

import numpy as np

from client.device.item_index import ItemIndex
from client.device.ranker import DeviceRanker, Event
from client.device.vector_store import VectorStore
from server.release import quantize_rows


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def recall_at_50(folder: Path, n_users: int = 300) -> float:
    exact, fast = DeviceRanker(folder, precision="float32"), DeviceRanker(folder)
    rng = np.random.default_rng(0)
    users = rng.normal(size=(n_users, exact.item_index.store.dim)).astype(np.float32)
    users /= np.linalg.norm(users, axis=1, keepdims=True)
    hits = 0
    for user in users:
        a = set(exact.top_k(exact.scores(user), 50).tolist())
        b = set(fast.top_k(fast.scores(user), 50).tolist())
        hits += len(a & b)
    return hits / (50 * n_users)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--release", type=Path, required=True)
    parser.add_argument("--items", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    ranker = DeviceRanker(args.release, threads=1)
    base = ranker.item_vectors(np.arange(ranker.n_items))
    now = max(int(item["created_at"] or 0) for item in ranker.items) + 3_600
    ids = [item["id"] for item in ranker.items]
    history = [Event(ids[(37 * i) % len(ids)], "view", now - 3_600 * (20 - i)) for i in range(20)]
    results: dict[str, object] = {"recall_at_50_int8_vs_f32": round(recall_at_50(args.release), 4)}
    rng = np.random.default_rng(1)
    for n in args.items:
        before = rss_mib()
        reps = -(-n // base.shape[0])
        tiled = np.tile(base, (reps, 1))[:n] + rng.normal(0, 0.01, size=(n, base.shape[1])).astype(np.float32)
        q, scale = quantize_rows(tiled)
        del tiled
        ranker.item_index = ItemIndex(VectorStore(q, scale), np.zeros(n), temperature=ranker.temperature)
        ranker.items = [{"id": str(i)} for i in range(n)]  # ids only matter for recommend(), not timed here
        loaded = rss_mib()
        times = []
        for _ in range(args.requests):
            start = time.perf_counter()
            user = ranker.user_vector(history, now)
            top = ranker.top_k(ranker.scores(user), 10)  # type: ignore[arg-type]
            times.append(time.perf_counter() - start)
            assert top.size == 10
        ms = np.array(times) * 1e3
        results[f"{n}_items"] = {
            "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "int8_matrix_mib": round((q.nbytes + scale.nbytes) / 2**20, 1),
            "rss_growth_mib": round(loaded - before, 1),
        }
    results["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
