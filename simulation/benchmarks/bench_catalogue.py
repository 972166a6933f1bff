"""Benchmark of catalogue writes: one admin write's publication (embed + item tower + sign) and the device's
verification and application of the delta, one thread.

    python -m simulation.benchmarks.bench_catalogue --items 2000 --batches 1 10 100

A release of the built-in synthetic shop (--items items) is made in a temporary folder from the model at
initialisation with a perturbed item tower (so the tower's correction and bias are not zero) over the
shop's text vectors, encoded with the configured encoder (default: the int8 ONNX fast path, one thread;
the vectors and the int8 model come from --cache-dir, so only texts not cached are encoded). Then writes
of --batches new items each (distinct made-up texts, never cached) are published one after the other as
DeltaStore.publish does for the admin route; the first write also loads the encoder. Each delta is
cumulative, so later ones also carry the earlier writes' items (their texts cached). For each write it
prints the wall time of the publication, the texts encoded, the delta's items, and the device's time to
verify the delta and apply it to a DeviceRanker (int8 two-stage index).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from client.device.ranker import DeviceRanker
from server.catalogue.catalogue_items import CatalogueItem, ItemEncoder
from server.catalogue.delta_publisher import DeltaBase, DeltaStore
from server.embedding.catalogue_embedding import embed_catalogue
from server.releases.release_builder import ReleaseSource
from server.releases.release_store import ReleaseStore
from shared.catalogue_delta_format import verify_delta
from shared.config import EncoderConfig, ModelConfig, SyntheticShopConfig
from shared.data.synthetic.shop import generate_shop
from shared.model import ItemFeatures, TwoTower
from shared.signing import generate_private_key

WORDS = [
    "amber",
    "basil",
    "cedar",
    "dune",
    "ember",
    "fjord",
    "glade",
    "heron",
    "iris",
    "jade",
    "kelp",
    "lumen",
    "moss",
    "nectar",
    "opal",
    "pine",
    "quartz",
]


def made_up_items(n: int, start: int, rng: np.random.Generator) -> list[CatalogueItem]:
    """n items whose titles and descriptions are random word strings (never in the embedding cache)."""
    items = []
    for i in range(start, start + n):
        words = " ".join(rng.choice(WORDS, size=8))
        items.append(
            CatalogueItem(
                id=f"bench-{i}",
                title=f"{words} serum",
                category="Beauty > Skin Care",
                brand="Bench",
                price=float(rng.uniform(5, 60)),
                created_at=1_900_000_000,
                description=f"A {words} formula, batch {i}.",
            )
        )
    return items


def release(n_items: int, encoder: EncoderConfig, folder: Path) -> tuple[DeltaBase, ReleaseStore]:
    shop = generate_shop(SyntheticShopConfig(n_users=50, n_items=n_items))
    table = embed_catalogue(shop.catalogue, encoder, progress=False)
    torch.manual_seed(0)
    model = TwoTower(ItemFeatures.from_catalogue(shop.catalogue, table.vectors), ModelConfig())
    with torch.no_grad():
        for parameter in model.items.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    store, key = ReleaseStore(folder), generate_private_key()
    privacy = {"unit": "user", "epsilon": 8.0, "delta": 1e-6, "ledger_head": "0" * 64, "ledger_entries": 1}
    source = ReleaseSource(
        "bench", "0" * 64, 1, {"name": encoder.model_name, "backend": encoder.backend}, privacy
    )
    store.publish(model, shop.catalogue, source, key)
    base = DeltaBase(1, store.manifest(1), model, shop.catalogue, ItemEncoder(encoder))
    return base, store


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m simulation.benchmarks.bench_catalogue", description=__doc__
    )
    parser.add_argument("--items", type=int, default=2_000, help="items in the release")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 10, 100], help="items per write")
    parser.add_argument("--backend", choices=["onnx-int8", "torch"], default="onnx-int8")
    parser.add_argument("--cache-dir", type=Path, default=Path(".cache/fedhome/embeddings"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    encoder = EncoderConfig(backend=args.backend, device="cpu", threads=1, cache_dir=args.cache_dir)
    rng = np.random.default_rng()  # fresh texts each run: never in the cache
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        base, store = release(args.items, encoder, Path(tmp) / "store")
        print(
            json.dumps(
                {
                    "release_items": args.items,
                    "backend": args.backend,
                    "release_s": round(time.perf_counter() - started, 1),
                }
            )
        )
        deltas, key, written = DeltaStore(store), generate_private_key(), 0
        for batch in args.batches:
            items = made_up_items(batch, written, rng)
            written += batch
            started = time.perf_counter()
            result = deltas.publish(base, items, key)
            publish_s = time.perf_counter() - started
            started = time.perf_counter()
            rows = verify_delta(deltas.folder(1, result.sequence), key.public_key(), store.manifest(1))
            verify_s = time.perf_counter() - started
            ranker = DeviceRanker(store.folder(1))
            started = time.perf_counter()
            ranker.apply_delta(rows)
            apply_s = time.perf_counter() - started
            print(
                json.dumps(
                    {
                        "batch": batch,
                        "delta_items": result.items,
                        "encoded_texts": result.encoded_texts,
                        "publish_s": round(publish_s, 3),
                        "device_verify_s": round(verify_s, 4),
                        "device_apply_s": round(apply_s, 4),
                    }
                )
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
