"""How small the catalogue's text table can get on a device before rankings change (issue 18, 1M items in
400 MB): recall@50 of a trained model's top items when its item vectors are derived from compressed text.

    python -m simulation.benchmarks.bench_text_compression \\
        --run runs/quality/amazon_beauty/federated-none-seed0 --items 200000 1000000

The catalogue of N items is the run's items followed by seeded mixtures 0.8 x_i + 0.6 x_k of two of their
float text vectors (as bench_device and bench_release_bytes grow catalogues; attributes those of x_i). The
model is the run's final one (its ledger verified); users are its user-tower vectors of 300 random 20-item
histories; "exact" is the model's top 50 from the float text, item vectors and bias by the release's formula
(shared/derived_items.py item_rows). Each layout stores the text rotated onto its principal directions (PCA
of the first 200,000 items), one scale per dimension, the leading dimensions in int8 (scale: the largest
|value|) and the rest in int4 (scale: the 0.99 quantile of |value|, clipped), or dropped; bytes per item
count the stored codes only. Also: the per-row int8 text releases ship today (384 bytes), and for the
largest layout a coarse stage made of its first 64 rotated dimensions (a model-independent index) with
the best R candidates rescored exactly on the compressed text, against the release's model-dependent
codes (measured 0.966 at R = 2048 in bench_release_bytes, 0.994 in bench_device).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from server.releases.release_builder import load_run, released_prior, tower_weights
from shared.derived_items import attribute_columns, item_rows
from shared.item_codes import quantize_rows
from shared.model import HistoryBatch
from shared.signing import load_public_key

USERS, HISTORY, K, CHUNK = 300, 20, 50, 65_536
PCA_ROWS = 200_000
LAYOUTS = {  # (dimensions, bits) from the leading principal direction on; the rest dropped
    "64 int8 + 320 int4": ((64, 8), (320, 4)),
    "128 int8 + 256 int4": ((128, 8), (256, 4)),
    "192 int8 + 192 int4": ((192, 8), (192, 4)),
    "256 int8 (128 dropped)": ((256, 8),),
    "64 int8 + 192 int4 (128 dropped)": ((64, 8), (192, 4)),
}
COARSE_DIMS, RESCORE = 64, (1024, 2048, 4096)


def catalogue(text0: np.ndarray, columns0: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(text (n, E) float32, attribute columns, source rows i) of the grown catalogue."""
    n0, rng = len(text0), np.random.default_rng(0)
    rows = np.arange(n)
    i = np.where(rows < n0, rows, rng.integers(0, n0, n))
    k = (i + rng.integers(1, n0, n)) % n0
    text = text0[i].copy()
    mixed = rows >= n0
    text[mixed] = 0.8 * text[mixed] + 0.6 * text0[k[mixed]]
    return text, columns0[i], i


def top_k(scores_of: Callable[[int, int], np.ndarray], users: np.ndarray, n: int) -> np.ndarray:
    """(users, K) the best items of each user, scored CHUNK items at a time."""
    best = np.zeros((len(users), 0), dtype=np.int64)
    best_scores = np.zeros((len(users), 0), dtype=np.float32)
    for lo in range(0, n, CHUNK):
        scores = scores_of(lo, min(lo + CHUNK, n))
        rows = np.broadcast_to(np.arange(lo, lo + scores.shape[1]), scores.shape)
        both, both_rows = np.hstack([best_scores, scores]), np.hstack([best, rows])
        keep = np.argpartition(-both, K - 1, axis=1)[:, :K]
        best_scores, best = np.take_along_axis(both, keep, 1), np.take_along_axis(both_rows, keep, 1)
    return best


def recall(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([len(set(x) & set(y)) / K for x, y in zip(a, b, strict=True)]))


def quantised(z: np.ndarray, layout: tuple[tuple[int, int], ...]) -> np.ndarray:
    """The rotated text as a device would hold it in `layout` (dropped dimensions are 0)."""
    out, lo = np.zeros_like(z), 0
    for dims, bits in layout:
        block = z[:, lo : lo + dims]
        levels = 2 ** (bits - 1) - 1
        peak = np.abs(block).max(axis=0) if bits == 8 else np.quantile(np.abs(block[:PCA_ROWS]), 0.99, axis=0)
        scale = np.where(peak > 0, peak / levels, 1.0)
        out[:, lo : lo + dims] = np.clip(np.rint(block / scale), -levels, levels) * scale
        lo += dims
    return out


def measure(run: Path, n: int) -> dict[str, object]:
    model, _, _ = load_run(run, load_public_key(run / "ledger_public_key.pem"))
    model.eval()
    text0 = model.items.text.numpy()
    text, columns, source = catalogue(text0, attribute_columns(model.items.attributes.numpy()), n)
    weights, prior = tower_weights(model), released_prior(model)
    prior = None if prior is None else prior[source]
    rng = np.random.default_rng(1)
    with torch.no_grad():
        rows = rng.integers(0, len(text0), size=(USERS, HISTORY))
        ones, zeros = np.ones((USERS, HISTORY), np.int64), np.zeros(USERS, np.int64)
        users = model.user_vectors(HistoryBatch(rows, ones, ones, zeros, zeros)).numpy()
        temperature = float(model.temperature())

    def scorer(table: np.ndarray) -> Callable[[int, int], np.ndarray]:
        def scores_of(lo: int, hi: int) -> np.ndarray:
            part = None if prior is None else prior[lo:hi]
            vectors, bias = item_rows(table[lo:hi], columns[lo:hi], weights, part)
            return temperature * users @ vectors.T + bias

        return scores_of

    exact = top_k(scorer(text), users, n)
    q, scales = quantize_rows(text)
    today = recall(top_k(scorer(q * scales[:, None]), users, n), exact)
    out: dict[str, object] = {"items": n, "per-row int8 (384 B, today)": today}
    mean = text[:PCA_ROWS].mean(axis=0)
    centred = (text[:PCA_ROWS] - mean).astype(np.float64)
    _, vectors = np.linalg.eigh(centred.T @ centred)
    rotation = vectors[:, ::-1].astype(np.float32)  # principal directions, largest first
    z = (text - mean) @ rotation
    for name, layout in LAYOUTS.items():
        stored = quantised(z, layout) @ rotation.T + mean
        nbytes = sum(dims * bits // 8 for dims, bits in layout)
        out[f"{name} ({nbytes} B)"] = recall(top_k(scorer(stored), users, n), exact)
        print(json.dumps({name: out[f"{name} ({nbytes} B)"]}), flush=True)
    largest = quantised(z, LAYOUTS["192 int8 + 192 int4"])
    coarse = largest.copy()
    coarse[:, COARSE_DIMS:] = 0
    coarse_scores = scorer(coarse @ rotation.T + mean)
    decoded = largest @ rotation.T + mean
    for r in RESCORE:
        keep = np.zeros((USERS, 0), dtype=np.int64)
        keep_scores = np.zeros((USERS, 0), dtype=np.float32)
        for lo in range(0, n, CHUNK):  # the R best by coarse score
            scores = coarse_scores(lo, min(lo + CHUNK, n))
            rows = np.broadcast_to(np.arange(lo, lo + scores.shape[1]), scores.shape)
            both, both_rows = np.hstack([keep_scores, scores]), np.hstack([keep, rows])
            top = np.argpartition(-both, min(r, both.shape[1] - 1), axis=1)[:, :r]
            keep_scores, keep = np.take_along_axis(both, top, 1), np.take_along_axis(both_rows, top, 1)
        chosen = []
        for user, candidates in enumerate(keep):  # rescored exactly on the compressed text
            part = None if prior is None else prior[candidates]
            vectors, bias = item_rows(decoded[candidates], columns[candidates], weights, part)
            chosen.append(candidates[np.argsort(-(temperature * vectors @ users[user] + bias))[:K]])
        name = f"first {COARSE_DIMS} rotated dims as coarse codes, rescore {r}"
        out[name] = recall(np.array(chosen), exact)
        print(json.dumps({name: out[name]}), flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a finished federated run")
    parser.add_argument("--items", type=int, nargs="+", default=[200_000])
    args = parser.parse_args(argv)
    for n in args.items:
        start = time.perf_counter()
        result = measure(args.run, n)
        result["seconds"] = round(time.perf_counter() - start, 1)
        print(json.dumps(result, indent=1), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
