"""Catalogue writes: the item an admin sends (validated), and its item-tower vector under a release's model.

The vectors of items written after a release come from exactly what the release's vectors came from: the
run's encoder and text recipe ("title | category | brand[ | description]", through the embedding cache, so
an unchanged text is not encoded again) and the release model's item tower with the base catalogue's
feature codes (its top-level category vocabulary and price quantile edges). A top-level category the base
catalogue never had gets the "unknown" code 0. So an item re-sent unchanged gets its release row back.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from server.embedding.catalogue_embedding import embed_texts, load_encoder, vector_cache_dir
from server.embedding.embedding_cache import EmbeddingCache, text_key
from server.embedding.encoder import Encoder, resolve_spec
from shared.config import EncoderConfig
from shared.data.schema import UNKNOWN_TIME, Catalogue
from shared.errors import ConfigError
from shared.model import ItemFeatures, TwoTower
from shared.model.features import N_PRICE_BUCKETS, price_buckets, price_edges

ITEM_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$"
LATEST_TIME_S = 4_102_444_800  # 2100-01-01: a later created_at is a typo (milliseconds?), not a date
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
"""Unicode's Bidi_Control characters (marks, embeddings, overrides, isolates): invisible on their own."""


class CatalogueItem(BaseModel):
    """One item to add or change. created_at (unix seconds) defaults to the base release's value for an
    item it has, else to the time of the write; status "out_of_stock" or "withdrawn" removes the item from
    devices' pages (its row stays, so histories that name it still count)."""

    model_config = ConfigDict(extra="forbid", strict=True)  # no "1" for 1, no 0 for false

    id: str = Field(pattern=ITEM_ID_PATTERN)
    title: str = Field(min_length=1, max_length=300)
    category: str = Field(default="", max_length=300, description='a path: "Makeup > Lips > Lipstick"')
    brand: str = Field(default="", max_length=100)
    price: float | None = Field(default=None, ge=0, le=10_000_000)
    created_at: int | None = Field(default=None, ge=0, le=LATEST_TIME_S)
    on_promotion: bool = False
    description: str = Field(default="", max_length=2_000)
    status: Literal["active", "out_of_stock", "withdrawn"] = "active"

    @field_validator("title", "category", "brand", "description")
    @classmethod
    def _printable(cls, value: str) -> str:
        """Text the encoder and JSON files can take: no control characters (but tab and newline) and no
        lone surrogates (which json.loads lets through)."""
        if any(unicodedata.category(c) == "Cs" or (ord(c) < 32 and c not in "\t\n") for c in value):
            raise ValueError("must be printable text (no control characters or lone surrogates)")
        return value

    @field_validator("title")
    @classmethod
    def _visible(cls, value: str) -> str:
        """A title a shopper can see: not only whitespace and bidirectional control characters."""
        if all(c.isspace() or c in BIDI_CONTROLS for c in value):
            raise ValueError("must contain visible text, not only whitespace or bidirectional controls")
        return value


@dataclass
class ItemEncoder:
    """The run's encoder config, loaded on first need and kept (loading takes seconds)."""

    config: EncoderConfig
    _encoder: Encoder | None = field(default=None, repr=False)

    def get(self) -> Encoder:
        if self._encoder is None:
            self._encoder = load_encoder(self.config)
        return self._encoder


def merge(
    record: Mapping[str, dict[str, Any]], items: Sequence[CatalogueItem], base: Catalogue, now_s: int
) -> tuple[dict[str, dict[str, Any]], list[str], list[str]]:
    """(the record with `items` applied, ids added, ids changed). An id is "changed" when the base
    catalogue or the record already has it; every change replaces the item's whole state."""
    merged = {item_id: dict(state) for item_id, state in record.items()}
    added: list[str] = []
    changed: list[str] = []
    for item in items:
        state = item.model_dump()
        if state["created_at"] is None:
            state["created_at"] = _base_created(base, item.id, record, now_s)
        (changed if item.id in merged or base.index_of(item.id) is not None else added).append(item.id)
        merged.pop(item.id, None)  # a changed item moves to the end: the record stays in write order
        merged[item.id] = state
    return merged, added, changed


def _base_created(base: Catalogue, item_id: str, record: Mapping[str, dict[str, Any]], now_s: int) -> int:
    if item_id in record:
        return int(record[item_id]["created_at"])
    row = base.index_of(item_id)
    if row is not None and int(base.created_at[row]) != UNKNOWN_TIME:
        return int(base.created_at[row])
    return now_s


def as_catalogue(states: Sequence[dict[str, Any]]) -> Catalogue:
    """The written items as a Catalogue (the form the encoder's text recipe reads)."""
    return Catalogue(
        item_ids=[s["id"] for s in states],
        titles=[s["title"] for s in states],
        categories=[s["category"] for s in states],
        brands=[s["brand"] for s in states],
        descriptions=[s["description"] for s in states],
        price=np.array([math.nan if s["price"] is None else s["price"] for s in states], np.float32),
        created_at=np.array([s["created_at"] for s in states], np.int64),
        on_promotion=np.array([s["on_promotion"] for s in states], bool),
    )


def embed_items(items: Catalogue, encoder: ItemEncoder) -> tuple[np.ndarray, int]:
    """((k, E) float32 unit text vectors, how many texts had to be encoded); the rest come from the cache."""
    config = encoder.config
    spec = resolve_spec(config)
    cache = EmbeddingCache(
        vector_cache_dir(config), encoder_id=spec.encoder_id, backend=spec.backend, dim=spec.dim
    )
    texts = items.texts(with_description=config.with_description)
    fresh = len({key for key in map(text_key, texts) if key not in cache})
    get: Callable[[], Encoder] = encoder.get
    return embed_texts(texts, cache, get, progress=False), fresh


def item_rows(
    model: TwoTower, base: Catalogue, items: Catalogue, text: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """((k, E) float32 item vectors, (k,) float32 bias) of `items` with text vectors `text` (k, E),
    through `model`'s item tower with `base`'s category codes and price buckets."""
    tower = model.items
    if tower.id_emb is not None:
        raise ConfigError("a model with per-item id parameters cannot rank items it was not trained on")
    if text.shape[1] != tower.text.shape[1]:
        raise ConfigError(
            f"the encoder gives {text.shape[1]}-d vectors, the model reads {tower.text.shape[1]}"
        )
    vocab: dict[str, int] = {"": 0}
    for name in (c.split(" > ")[0] if c else "" for c in base.categories):
        vocab.setdefault(name, len(vocab))
    tops = (c.split(" > ")[0] if c else "" for c in items.categories)
    features = ItemFeatures(
        text=np.ascontiguousarray(text, dtype=np.float32),
        category=np.array([vocab.get(top, 0) for top in tops], np.int64),
        price_bucket=price_buckets(items.price, price_edges(base.price)),
        promotion=items.on_promotion.astype(np.int64),
    )
    n_categories = tower.embed_attributes.in_features - (N_PRICE_BUCKETS + 2)
    attributes = torch.from_numpy(features.attributes(n_categories))
    model.eval()
    with torch.no_grad(), _inputs(model, torch.from_numpy(features.text), attributes):
        vectors, bias = tower()
    return vectors.numpy().astype(np.float32), bias.numpy().astype(np.float32)


@contextmanager
def _inputs(model: TwoTower, text: torch.Tensor, attributes: torch.Tensor) -> Iterator[None]:
    """The item tower's frozen inputs swapped for the given items' for the duration (callers hold a lock).
    Items added after training have no count in the popularity prior: theirs is zero."""
    tower = model.items
    saved = tower.text, tower.attributes, tower.popularity
    tower.text, tower.attributes = text, attributes
    tower.popularity = torch.zeros(text.shape[0], dtype=saved[2].dtype)
    try:
        yield
    finally:
        tower.text, tower.attributes, tower.popularity = saved
