"""Encoder benchmark: texts/second of plain sentence-transformers and of the fast path, and their agreement.

    python -m simulation.benchmarks.bench_encoder --data ../shared/data/amazon_beauty -n 2000 --threads 2
    python -m simulation.benchmarks.bench_encoder -n 1000   # the built-in synthetic shop's product texts

Rows: plain sentence-transformers float32 on the CPU (the reference), the int8 per-channel ONNX fast path
with length-sorted batches, and, when CUDA is available, sentence-transformers float32 and our half-precision
path on the GPU. Agreement with the CPU float32 vectors: mean and minimum cosine, and the mean overlap of
each text's 10 nearest neighbours within the sample. Timings exclude loading and one warm-up batch.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from server.embedding.catalogue_embedding import load_encoder
from server.embedding.encoder import TorchEncoder, l2_normalise, resolve_spec
from server.embedding.onnx_fast import ensure_int8_model
from shared.config import EncoderConfig, SyntheticShopConfig
from shared.data.loaders import load_dataset
from shared.data.schema import Catalogue
from shared.data.synthetic.catalogue import build_catalogue

NEIGHBOURS = 10


@dataclasses.dataclass(frozen=True)
class Row:
    name: str
    device: str
    texts_per_s: float
    agreement: tuple[float, float, float] | None  # mean cosine, min cosine, top-10 overlap; None: reference


def sample_texts(data: Path | None, n: int, *, seed: int, with_description: bool) -> tuple[list[str], str]:
    """n item texts drawn without replacement from a catalogue folder, or from the synthetic shop."""
    if data is None:
        catalogue: Catalogue = build_catalogue(SyntheticShopConfig(n_items=max(n, 1), seed=seed)).catalogue
        source = "synthetic shop"
    else:
        catalogue = load_dataset(data)[0].catalogue
        source = str(data)
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(catalogue.n_items, size=min(n, catalogue.n_items), replace=False))
    return [catalogue.text(int(i), with_description=with_description) for i in chosen], source


def timed(
    encode: Callable[[list[str]], np.ndarray], texts: list[str], warmup: int
) -> tuple[np.ndarray, float]:
    """Vectors and texts/second, after one untimed warm-up call on the first `warmup` texts."""
    encode(texts[:warmup])
    start = time.perf_counter()
    vectors = encode(texts)
    return vectors, len(texts) / (time.perf_counter() - start)


def agreement(reference: np.ndarray, other: np.ndarray, k: int = NEIGHBOURS) -> tuple[float, float, float]:
    """Mean and min cosine between matching rows, and mean overlap of each row's top-k neighbours."""
    cosine = (reference * other).sum(axis=1)
    return float(cosine.mean()), float(cosine.min()), neighbour_overlap(reference, other, k)


def neighbour_overlap(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """Mean fraction of shared top-k neighbours (self excluded) under the two sets of vectors."""
    k = min(k, a.shape[0] - 1)
    if k < 1:
        return 1.0
    tops = []
    for vectors in (a, b):
        similarity = vectors @ vectors.T
        np.fill_diagonal(similarity, -np.inf)
        tops.append(np.argpartition(-similarity, k - 1, axis=1)[:, :k])
    shared = [len(np.intersect1d(x, y, assume_unique=True)) for x, y in zip(*tops, strict=True)]
    return float(np.mean(shared)) / k


def run(args: argparse.Namespace) -> list[Row]:
    config = EncoderConfig(batch_size=args.batch_size, threads=args.threads, cache_dir=args.cache_dir)
    texts, source = sample_texts(args.data, args.n, seed=args.seed, with_description=config.with_description)
    print(f"{len(texts)} texts from {source}, mean {np.mean([len(t) for t in texts]):.0f} characters")
    cpu = TorchEncoder(
        resolve_spec(dataclasses.replace(config, backend="torch", device="cpu")), batch_size=args.batch_size
    )
    reference, rate = timed(_plain(cpu, args.batch_size), texts, args.batch_size)
    rows = [Row("sentence-transformers fp32", "cpu", rate, None)]

    int8_config = dataclasses.replace(config, backend="onnx-int8", device="cpu")
    start = time.perf_counter()
    ensure_int8_model(resolve_spec(int8_config), config.cache_dir, model=cpu.model)
    print(f"int8 model ready in {time.perf_counter() - start:.1f} s (export + quantisation unless cached)")
    fast = load_encoder(int8_config)
    vectors, rate = timed(fast.encode, texts, args.batch_size)
    rows.append(Row("onnx int8 per-channel, length-sorted", "cpu", rate, agreement(reference, vectors)))

    if torch.cuda.is_available():
        gpu_spec = resolve_spec(dataclasses.replace(config, backend="torch", device="cuda"))
        gpu32 = TorchEncoder(dataclasses.replace(gpu_spec, backend="torch-fp32"), batch_size=args.batch_size)
        vectors, rate = timed(_plain(gpu32, args.batch_size), texts, args.batch_size)
        rows.append(Row("sentence-transformers fp32", "cuda", rate, agreement(reference, vectors)))
        del gpu32
        gpu16 = TorchEncoder(gpu_spec, batch_size=args.batch_size)
        vectors, rate = timed(gpu16.encode, texts, args.batch_size)
        rows.append(Row("torch fp16, length-sorted", "cuda", rate, agreement(reference, vectors)))
    return rows


def _plain(encoder: TorchEncoder, batch_size: int) -> Callable[[list[str]], np.ndarray]:
    """Plain sentence-transformers `encode` (it sorts by length itself), normalised in float32."""
    model = encoder.model
    return lambda texts: l2_normalise(model.encode(texts, batch_size=batch_size, show_progress_bar=False))


def markdown(rows: Sequence[Row]) -> str:
    reference = rows[0].texts_per_s
    lines = [
        f"| encoder | device | texts/s | vs cpu fp32 | mean cos | min cos | top-{NEIGHBOURS} overlap |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        agree = row.agreement or (1.0, 1.0, 1.0)
        lines.append(
            f"| {row.name} | {row.device} | {row.texts_per_s:.1f} | {row.texts_per_s / reference:.2f}x "
            f"| {agree[0]:.4f} | {agree[1]:.4f} | {agree[2]:.3f} |"
        )
    return "\n".join(lines)


def machine(threads: int) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        names = [
            line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")
        ]
        cpu = names[0].split(":", 1)[1].strip() if names else cpu
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"machine: {cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
        f"onnxruntime threads {threads or 'default'}, GPU {gpu}, load average {load}; "
        f"torch {torch.__version__}, python {platform.python_version()}"
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, help="a catalogue folder (e.g. ../shared/data/amazon_beauty)")
    parser.add_argument("-n", type=int, default=2000, help="number of texts (default 2000)")
    parser.add_argument("--threads", type=int, default=2, help="torch and onnxruntime CPU threads")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", type=Path, default=EncoderConfig().cache_dir, help="int8 model cache")
    args = parser.parse_args(argv)
    if args.n < 2 or args.threads < 1 or args.batch_size < 1:
        parser.error("-n must be >= 2, --threads and --batch-size >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    print(machine(args.threads))
    rows = run(args)
    print()
    print(markdown(rows))
    print()
    print(machine(args.threads))
    print(
        "command: python -m simulation.benchmarks.bench_encoder "
        + shlex.join(sys.argv[1:] if argv is None else argv)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
