"""The one canonical in-memory form of a shop: a catalogue and an interaction log, both columnar numpy."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

import numpy as np

from shared.errors import DataError

# Event types, stored as small integer codes in InteractionLog.event.
EVENT_TYPES: Final[tuple[str, ...]] = ("view", "cart", "purchase", "favourite", "rating")
EVENT_CODE: Final[dict[str, int]] = {name: code for code, name in enumerate(EVENT_TYPES)}
UNKNOWN_TIME: Final[int] = -1


@dataclass(frozen=True, eq=False)
class Catalogue:
    """Items in dense index order 0..n_items-1; `item_ids` keeps each item's external id.

    Text fields are "" when unknown; `price` is NaN when unknown; `created_at` is unix seconds or
    UNKNOWN_TIME; `on_promotion` flags items currently on a deal.
    """

    item_ids: list[str]
    titles: list[str]
    categories: list[str]  # category path, "Makeup > Lips > Lipstick"
    brands: list[str]
    descriptions: list[str]
    price: np.ndarray  # (n_items,) float32, NaN when unknown
    created_at: np.ndarray  # (n_items,) int64 unix seconds or UNKNOWN_TIME
    on_promotion: np.ndarray  # (n_items,) bool
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        n = len(self.item_ids)
        for name in ("titles", "categories", "brands", "descriptions"):
            if len(getattr(self, name)) != n:
                raise DataError(f"catalogue field {name!r} has {len(getattr(self, name))} rows, expected {n}")
        for name in ("price", "created_at", "on_promotion"):
            shape = getattr(self, name).shape
            if shape != (n,):
                raise DataError(f"catalogue field {name!r} has shape {shape}, expected ({n},)")
        index = {item_id: i for i, item_id in enumerate(self.item_ids)}
        if len(index) != n:
            raise DataError("catalogue has duplicate item ids")
        object.__setattr__(self, "_index", index)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def index_of(self, item_id: str) -> int | None:
        """Dense index of an external item id, or None when the item is not in the catalogue."""
        return self._index.get(item_id)

    def text(self, i: int, *, with_description: bool = True) -> str:
        """The text the encoder embeds: "title | category | brand | description" (empty parts skipped)."""
        parts = [self.titles[i], self.categories[i], self.brands[i]]
        if with_description:
            parts.append(self.descriptions[i])
        return " | ".join(p for p in parts if p)

    def texts(self, *, with_description: bool = True) -> list[str]:
        return [self.text(i, with_description=with_description) for i in range(self.n_items)]

    def top_category(self) -> np.ndarray:
        """(n_items,) int32 code of each item's first category level (0 = unknown)."""
        return _codes([c.split(" > ")[0] if c else "" for c in self.categories])

    def brand_codes(self) -> np.ndarray:
        """(n_items,) int32 code of each item's brand (0 = unknown)."""
        return _codes(self.brands)


def _codes(values: list[str]) -> np.ndarray:
    vocab: dict[str, int] = {"": 0}
    out = np.empty(len(values), dtype=np.int32)
    for i, v in enumerate(values):
        out[i] = vocab.setdefault(v, len(vocab))
    return out


@dataclass(frozen=True, eq=False)
class InteractionLog:
    """One row per interaction, in the source's row order (a user's rows are in chronological order).

    `user` and `item` are dense indices (`user_ids[user]`, catalogue item index); `timestamp` is unix seconds
    (or the position in the user's sequence when the source has no clock); `event` is an EVENT_TYPES code;
    `value` is the rating or amount, NaN when absent.
    """

    user_ids: list[str]
    user: np.ndarray  # (n,) int32
    item: np.ndarray  # (n,) int32
    timestamp: np.ndarray  # (n,) int64
    event: np.ndarray  # (n,) int8
    value: np.ndarray  # (n,) float32

    def __post_init__(self) -> None:
        n = self.user.shape[0]
        for name in ("item", "timestamp", "event", "value"):
            shape = getattr(self, name).shape
            if shape != (n,):
                raise DataError(f"interaction field {name!r} has shape {shape}, expected ({n},)")
        if n and (self.user.min() < 0 or self.user.max() >= len(self.user_ids)):
            raise DataError("interaction user index out of range")

    @property
    def n_rows(self) -> int:
        return int(self.user.shape[0])

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    def user_order(self) -> np.ndarray:
        """Row indices grouped by user, each user's rows kept in their original (chronological) order."""
        return np.argsort(self.user, kind="stable")


@dataclass(frozen=True, eq=False)
class Dataset:
    """A named shop: its catalogue and its interaction log."""

    name: str
    catalogue: Catalogue
    log: InteractionLog

    def __post_init__(self) -> None:
        if self.log.n_rows and (self.log.item.min() < 0 or self.log.item.max() >= self.catalogue.n_items):
            raise DataError(f"dataset {self.name!r}: interaction item index outside the catalogue")
