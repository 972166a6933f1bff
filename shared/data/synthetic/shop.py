"""Build the synthetic shop in memory, or stream it to the project's CSV layout chunk by chunk.

Shoppers are generated in fixed chunks of USERS_PER_CHUNK, chunk c from its own random stream
(seed, 1, c), so the in-memory shop and the streamed files are the same shop, and a million shoppers never
sit in memory at once. The chunk size is part of the generator's definition: changing it changes the shop.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np
from tqdm import tqdm

from shared.config import SyntheticShopConfig
from shared.data.schema import EVENT_TYPES, Dataset, InteractionLog
from shared.data.synthetic.catalogue import SyntheticCatalogue, asins, build_catalogue
from shared.data.synthetic.session_events import Rows, session_rows
from shared.data.synthetic.shoppers import Tastes, draw_tastes, plan_sessions

log = logging.getLogger(__name__)

USERS_PER_CHUNK = 10_000
ITEM_HEADER = (
    "item_id",
    "title",
    "category",
    "brand",
    "asin",
    "description",
    "price",
    "created_at",
    "on_promotion",
)
INTERACTION_HEADER = ("user_id", "item_id", "timestamp", "event", "value")
DATASET_NAME = "synthetic"


@dataclass(frozen=True)
class WriteReport:
    """What `write_shop_csv` wrote."""

    items_path: Path
    interactions_path: Path
    n_items: int
    n_users: int
    n_rows: int  # interactions


def iter_chunks(shop: SyntheticCatalogue, config: SyntheticShopConfig) -> Iterator[Rows]:
    """The interaction rows of every chunk of shoppers, in user order."""
    for chunk, first_user in enumerate(range(0, config.n_users, USERS_PER_CHUNK)):
        rng, tastes = _chunk_tastes(shop, config, chunk)
        plan = plan_sessions(rng, shop, tastes, config)
        yield session_rows(rng, shop, tastes, plan, first_user)


def shopper_tastes(shop: SyntheticCatalogue, config: SyntheticShopConfig) -> Tastes:
    """The latent tastes of every shopper, in user order: the very tastes `iter_chunks` draws their sessions
    from (each chunk's stream starts with them), for simulations that need to know what a shopper likes
    (simulation/click_model.py)."""
    parts = [_chunk_tastes(shop, config, chunk)[1] for chunk in range(-(-config.n_users // USERS_PER_CHUNK))]
    return Tastes(
        **{f.name: np.concatenate([getattr(t, f.name) for t in parts]) for f in dataclasses.fields(Tastes)}
    )


def _chunk_tastes(
    shop: SyntheticCatalogue, config: SyntheticShopConfig, chunk: int
) -> tuple[np.random.Generator, Tastes]:
    """Chunk `chunk`'s random stream (seed, 1, chunk) and the tastes drawn first from it."""
    first_user = chunk * USERS_PER_CHUNK
    n = min(USERS_PER_CHUNK, config.n_users - first_user)
    rng = np.random.default_rng([config.seed, 1, chunk])
    return rng, draw_tastes(rng, shop, config, n)


def generate_shop(config: SyntheticShopConfig) -> Dataset:
    """The whole shop in memory (for demo sizes): catalogue plus every shopper's interactions.

    User i has id str(i), item i has id str(i); each user's rows are contiguous and chronological.
    """
    shop = build_catalogue(config)
    chunks = list(iter_chunks(shop, config))
    interactions = InteractionLog(
        user_ids=[str(u) for u in range(config.n_users)],
        user=np.concatenate([c.user for c in chunks]).astype(np.int32),
        item=np.concatenate([c.item for c in chunks]),
        timestamp=np.concatenate([c.timestamp for c in chunks]),
        event=np.concatenate([c.event for c in chunks]),
        value=np.concatenate([c.value for c in chunks]),
    )
    log.info(
        "synthetic shop: %d users, %d items, %d interactions",
        config.n_users,
        shop.n_items,
        interactions.n_rows,
    )
    return Dataset(DATASET_NAME, shop.catalogue, interactions)


def write_shop_csv(config: SyntheticShopConfig, folder: Path, *, progress: bool = False) -> WriteReport:
    """Stream the shop to `folder`/items.csv and `folder`/interactions.csv, one chunk of users at a time.

    The same shop as `generate_shop(config)`. Both files are written under temporary names and renamed
    when complete, so a failed run leaves no half-written shop behind. `progress` shows a progress bar.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shop = build_catalogue(config)
    items_path, interactions_path = folder / "items.csv", folder / "interactions.csv"
    n_rows = 0
    with _replacing(items_path) as items, _replacing(interactions_path) as f:
        _write_items(items, shop, config.seed)
        f.write(",".join(INTERACTION_HEADER) + "\n")
        chunks = tqdm(
            iter_chunks(shop, config),
            total=-(-config.n_users // USERS_PER_CHUNK),
            unit="chunk",
            desc="synthetic shop",
            disable=not progress,
        )
        for rows in chunks:
            f.write(_interaction_lines(rows))
            n_rows += rows.user.shape[0]
    log.info("wrote synthetic shop to %s: %d users, %d interactions", folder, config.n_users, n_rows)
    return WriteReport(items_path, interactions_path, shop.n_items, config.n_users, n_rows)


class _replacing:
    """Open `path`.partial for writing; on success rename it to `path`, on failure remove it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.partial = path.with_name(path.name + ".partial")
        self.file: TextIO | None = None

    def __enter__(self) -> TextIO:
        self.file = self.partial.open("w", encoding="utf-8", newline="")
        return self.file

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self.file is not None:
            self.file.close()
        if exc_type is None:
            os.replace(self.partial, self.path)
        else:
            self.partial.unlink(missing_ok=True)


def _write_items(f: TextIO, shop: SyntheticCatalogue, seed: int) -> None:
    cat = shop.catalogue
    out = csv.writer(f, lineterminator="\n")
    out.writerow(ITEM_HEADER)
    codes = asins(cat.n_items, seed)
    for i, item_id in enumerate(cat.item_ids):
        out.writerow(
            (
                item_id,
                cat.titles[i],
                cat.categories[i],
                cat.brands[i],
                codes[i],
                cat.descriptions[i],
                f"{cat.price[i]:.2f}",
                int(cat.created_at[i]),
                int(cat.on_promotion[i]),
            )
        )


def _interaction_lines(rows: Rows) -> str:
    """CSV lines of a chunk (ids are plain integers and event names have no commas: no quoting needed)."""
    names = np.asarray(EVENT_TYPES)[rows.event].tolist()
    values = [""] * rows.value.shape[0]
    paid = np.flatnonzero(~np.isnan(rows.value))
    for i, v in zip(paid.tolist(), rows.value[paid].tolist(), strict=True):
        values[i] = f"{v:.2f}"
    return "".join(
        f"{u},{i},{t},{e},{v}\n"
        for u, i, t, e, v in zip(
            rows.user.tolist(), rows.item.tolist(), rows.timestamp.tolist(), names, values, strict=True
        )
    )
