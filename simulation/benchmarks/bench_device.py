"""Benchmark of one homepage request on the device: user tower (ONNX) + two-stage scoring + top-k, one thread.

    python -m simulation.benchmarks.bench_device --dataset ../shared/data/amazon_beauty --items 100000 1000000
    python -m simulation.benchmarks.bench_device --release RELEASE_DIR --items 100000 1000000

The release: a real one (--release), or one built here (--dataset) from the model at initialisation over
the dataset's MiniLM text vectors (the item tower's correction starts at zero, so item vectors are the text
vectors; the text vectors come from the embedding cache, or are encoded once). Each catalogue size N is a
release-like folder in --work-dir: the release's own items first, then synthetic items v = 0.8 x_i + 0.6 x_k
of two random distinct release items (so they stay in the span and spectrum of real item vectors), bias 0;
float32 vectors written to a file that the index memory-maps, and the projection and int8 codes computed
from them as server/releases/release_builder.py does. Per size it prints: p50/p99 per request over --requests
requests (each a different random 20-event history of real items, history rows excluded, top 10; wall clock
and this thread's CPU time), the resident arrays of the index, and RssAnon/RssFile growth of a fresh process
(one per size) from before loading the index to after the requests, and recall@50 of the fast top-50
against exact float32 scoring for user-tower vectors of random histories and for random unit vectors.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from client.device.item_index import DEFAULT_RESCORE, ItemIndex
from client.device.ranker import DeviceRanker, Event
from shared.item_codes import (
    CODE_SCALES_FILE,
    CODES_FILE,
    PROJECTION_FILE,
    coarse_codes,
    code_dim_for,
    principal_projection,
)

CHUNK = 65_536
HISTORY = 20
MIB = 2**20


def memory_mib() -> dict[str, float]:
    """RssAnon and RssFile of this process, MiB (/proc/self/status)."""
    found = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssFile"):
                found[key] = int(value.split()[0]) / 1024
    return found


def build_release(dataset: Path, root: Path) -> Path:
    """A signed release of the model at initialisation on `dataset` (throwaway key), in `root`."""
    import torch

    from server.embedding.catalogue_embedding import embed_catalogue
    from server.releases.release_builder import ReleaseSource
    from server.releases.release_store import ReleaseStore
    from shared.config import DataConfig, EncoderConfig, ModelConfig
    from shared.data.source import load_configured
    from shared.model import ItemFeatures, TwoTower
    from shared.signing import generate_private_key

    data, _ = load_configured(DataConfig(dataset=str(dataset)))
    table = embed_catalogue(data.catalogue, EncoderConfig(threads=1), progress=False)
    torch.manual_seed(0)
    model = TwoTower(ItemFeatures.from_catalogue(data.catalogue, table.vectors), ModelConfig())
    privacy = {"unit": "user", "epsilon": 0.0, "delta": 0.0, "ledger_head": "", "ledger_entries": 0}
    encoder = {"name": table.encoder_id, "backend": table.backend, "item_text_vectors_sha256": ""}
    store = ReleaseStore(root)
    version = store.publish(
        model, data.catalogue, ReleaseSource("bench", "", 0, encoder, privacy), generate_private_key()
    )
    return store.folder(version)


def catalogue_chunks(base: np.ndarray, n: int) -> Iterator[np.ndarray]:
    """(rows, E) float32 blocks of the N-item catalogue: the release's items, then seeded mixtures."""
    for lo in range(0, n, CHUNK):
        hi = min(lo + CHUNK, n)
        rows = np.arange(lo, hi)
        block = base[rows % len(base)].copy()
        mixed = rows >= len(base)
        if mixed.any():
            rng = np.random.default_rng(lo)
            i = rng.integers(0, len(base), size=int(mixed.sum()))
            k = (i + rng.integers(1, len(base), size=len(i))) % len(base)
            block[mixed] = 0.8 * base[i] + 0.6 * base[k]
        yield block


def write_catalogue(folder: Path, base: np.ndarray, n: int, temperature: float, code_dim: int) -> None:
    """A release-like folder of N items: float32 vectors, bias, projection, int8 codes, scoring.json
    (`code_dim` 0: code_dim_for(N), as server/releases/release_builder.py chooses)."""
    folder.mkdir(parents=True, exist_ok=True)
    vectors = np.lib.format.open_memmap(folder / "item_vectors_f32.npy", "w+", np.float32, (n, base.shape[1]))
    for lo, block in zip(range(0, n, CHUNK), catalogue_chunks(base, n), strict=True):
        vectors[lo : lo + len(block)] = block
    vectors.flush()
    code_dim = code_dim or code_dim_for(n, base.shape[1])
    projection = principal_projection((vectors[lo : lo + CHUNK] for lo in range(0, n, CHUNK)), code_dim)
    codes = np.lib.format.open_memmap(folder / CODES_FILE, "w+", np.int8, (projection.shape[1], n))
    scales = np.empty(n, dtype=np.float32)
    for lo in range(0, n, CHUNK):
        codes[:, lo : lo + CHUNK], scales[lo : lo + CHUNK] = coarse_codes(
            vectors[lo : lo + CHUNK], projection
        )
    codes.flush()
    del vectors, codes
    np.save(folder / PROJECTION_FILE, projection)
    np.save(folder / CODE_SCALES_FILE, scales)
    np.save(folder / "item_bias.npy", np.zeros(n, dtype=np.float32))
    (folder / "scoring.json").write_text(json.dumps({"temperature": temperature}))
    # ItemIndex.from_release reads only the files a manifest lists (unsigned here: a benchmark folder)
    names = ("item_vectors_f32.npy", CODES_FILE, PROJECTION_FILE, CODE_SCALES_FILE, "item_bias.npy")
    (folder / "manifest.json").write_text(json.dumps({"files": {name: {} for name in names}}))


def histories(ranker: DeviceRanker, count: int, now: int, seed: int) -> list[list[Event]]:
    rng, ids = np.random.default_rng(seed), [item["id"] for item in ranker.items]
    return [
        [
            Event(ids[int(i)], "view", now - 3_600 * (HISTORY - t))
            for t, i in enumerate(rng.choice(len(ids), HISTORY, replace=False))
        ]
        for _ in range(count)
    ]


def time_requests(
    ranker: DeviceRanker, events: list[list[Event]], now: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Milliseconds per request (user tower + scoring + top-10): wall clock, this thread's CPU time, and
    the user tower's wall clock alone. CPU time is what other processes on a shared machine inflate
    least (they still compete for caches and memory bandwidth)."""
    index, wall, cpu, tower = ranker.item_index, [], [], []
    for history in [*events[:10], *events]:  # the first 10: warm-up, not counted
        start, start_cpu = time.perf_counter(), time.thread_time()
        user = ranker.user_vector(history, now)
        middle = time.perf_counter()
        seen = np.array(sorted({ranker.index[e.item_id] for e in history}))
        rows, _ = index.top_k(user, 10, exclude=seen)  # type: ignore[arg-type]
        cpu.append(time.thread_time() - start_cpu)
        wall.append(time.perf_counter() - start)
        tower.append(middle - start)
        if len(rows) != 10:
            raise RuntimeError("top-10 came back short")
    return np.array(wall[10:]) * 1e3, np.array(cpu[10:]) * 1e3, np.array(tower[10:]) * 1e3


def recall_at_50(index: ItemIndex, users: np.ndarray) -> float:
    """Mean |fast top-50 & exact float32 top-50| / 50 over `users` (exact: every item, chunk by chunk)."""
    best_scores = np.full((len(users), 0), -np.inf, dtype=np.float32)
    best_rows = np.zeros((len(users), 0), dtype=np.int64)
    for lo, block in index.store.chunks():
        scores = index.temperature * (users @ block.T) + index.bias[lo : lo + len(block)]
        best_scores = np.concatenate([best_scores, scores], axis=1)
        best_rows = np.concatenate(
            [best_rows, np.broadcast_to(np.arange(lo, lo + len(block)), scores.shape)], axis=1
        )
        keep = np.argpartition(-best_scores, 49, axis=1)[:, :50]
        best_scores, best_rows = (
            np.take_along_axis(best_scores, keep, 1),
            np.take_along_axis(best_rows, keep, 1),
        )
    hits = sum(
        len(set(index.top_k(u, 50)[0].tolist()) & set(r.tolist()))
        for u, r in zip(users, best_rows, strict=True)
    )
    return hits / (50 * len(users))


def bench_size(ranker: DeviceRanker, folder: Path, args: argparse.Namespace, now: int) -> dict[str, object]:
    gc.collect()
    before = memory_mib()
    index = ItemIndex.from_release(folder, rescore=args.rescore, threads=1)
    loaded = memory_mib()
    ranker.item_index = index
    total, cpu, tower = time_requests(ranker, histories(ranker, args.requests, now, seed=1), now)
    after = memory_mib()
    vectors = [ranker.user_vector(h, now) for h in histories(ranker, args.recall_users, now, seed=2)]
    tower_users = np.stack([v for v in vectors if v is not None])
    random_users = (
        np.random.default_rng(3).normal(size=(args.recall_users, index.store.dim)).astype(np.float32)
    )
    random_users /= np.linalg.norm(random_users, axis=1, keepdims=True)
    return {
        "code_dim": int(index.projection.shape[1]),
        "rescore": index.rescore,
        "p50_ms": round(float(np.percentile(total, 50)), 2),
        "p99_ms": round(float(np.percentile(total, 99)), 2),
        "cpu_p50_ms": round(float(np.percentile(cpu, 50)), 2),
        "cpu_p99_ms": round(float(np.percentile(cpu, 99)), 2),
        "user_tower_p50_ms": round(float(np.percentile(tower, 50)), 3),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "index_arrays_mib": {k: round(v / MIB, 2) for k, v in index.resident_bytes().items()},
        "index_arrays_total_mib": round(sum(index.resident_bytes().values()) / MIB, 1),
        "rss_anon_growth_at_load_mib": round(loaded["RssAnon"] - before["RssAnon"], 1),
        "rss_anon_growth_after_requests_mib": round(after["RssAnon"] - before["RssAnon"], 1),
        "rss_file_growth_after_requests_mib": round(after["RssFile"] - before["RssFile"], 1),
        "recall_at_50_user_tower_users": round(recall_at_50(index, tower_users), 4),
        "recall_users": len(tower_users),
        "recall_at_50_random_unit_users": round(recall_at_50(index, random_users), 4),
    }


def measure_in_fresh_process(release: Path, folder: Path, args: argparse.Namespace) -> dict[str, object]:
    """bench_size in a new Python process, so that memory freed by earlier work cannot hide growth."""
    command = [
        sys.executable,
        "-m",
        "simulation.benchmarks.bench_device",
        "--release",
        str(release),
        "--measure",
    ]
    command += [str(folder), "--requests", str(args.requests), "--recall-users", str(args.recall_users)]
    command += ["--rescore", str(args.rescore)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--release", type=Path, help="a verified release folder")
    source.add_argument("--dataset", type=Path, help="build a release of the initial model on this dataset")
    parser.add_argument("--items", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--recall-users", type=int, default=200)
    parser.add_argument(
        "--rescore", type=int, default=DEFAULT_RESCORE, help="0: 3 sqrt(N) within [256, 2048]"
    )
    parser.add_argument(
        "--code-dim", type=int, default=0, help="P of the coarse codes; 0: as a release of N items has it"
    )
    parser.add_argument("--work-dir", type=Path, default=None, help="default: a temporary folder, removed")
    parser.add_argument("--measure", type=Path, default=None, help=argparse.SUPPRESS)  # the child's mode
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.measure is not None:
        ranker = DeviceRanker(args.release, threads=1, rescore=args.rescore)
        now = max(int(item["created_at"] or 0) for item in ranker.items) + 3_600
        print(json.dumps(bench_size(ranker, args.measure, args, now)))
        return 0
    work = Path(tempfile.mkdtemp(prefix="bench-device-")) if args.work_dir is None else args.work_dir
    try:
        release = args.release or build_release(args.dataset, work / "store")
        ranker = DeviceRanker(release, threads=1, rescore=args.rescore)
        base = ranker.item_index.vectors(np.arange(ranker.n_items))
        results: dict[str, object] = {
            "release_items": ranker.n_items,
            "code_dim": args.code_dim,
            "rescore_setting": args.rescore,
        }
        results["release_itself"] = measure_in_fresh_process(release, release, args)
        for n in args.items:
            write_catalogue(work / f"items-{n}", base, n, ranker.temperature, args.code_dim)
            results[f"{n}_items"] = measure_in_fresh_process(release, work / f"items-{n}", args)
            shutil.rmtree(work / f"items-{n}")
            print(json.dumps({f"{n}_items": results[f"{n}_items"]}), flush=True)
        print(json.dumps(results, indent=2))
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
