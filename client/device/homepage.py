"""The personalised homepage, composed on the device from one ranking pass over a verified release.

Sections, filled in this order so that the more personal ones pick first:
- "Because you viewed X": the items nearest (by item vector) to each of the last distinct history items
  (not those a catalogue delta hid), with that item named as the reason;
- "For you": the top of the model's ranking;
- "New for you": items added within `new_days` of now (including items nobody has interacted with: their
  vectors come from their text), ranked by the same scores;
- "Deals for you": items on promotion, ranked by the same scores;
- "Trending": items by counts aggregated across devices under user-level DP: by default the release's
  accounted trending counts (client/device/trending_counts.py, given as `trending`), or counts the caller
  passes; ties broken by this shopper's scores. No counts, no Trending section.
Rules across the page: no item twice; items already purchased are left out unless their category is
re-buyable; at most `per_category` items of one top-level category in a section. Each card carries a short
line of copy from a CopyWriter (templates here; a language model could implement the same interface).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from client.device.ranker import DeviceRanker, Event
from client.device.top_n import descending
from shared.errors import DataError

SECONDS_PER_DAY = 86_400


@dataclass(frozen=True)
class HomepageRules:
    section_size: int = 8
    per_category: int = 3  # at most this many items of one top-level category in a section
    new_days: int = 30
    because_sections: int = 2  # "Because you viewed X" sections, one per recent distinct item
    rebuyable_categories: tuple[str, ...] = ()  # top-level categories whose purchased items may come back


@dataclass
class Card:
    item_id: str
    title: str
    copy: str
    reason: str | None = None


@dataclass
class Section:
    key: str
    title: str
    cards: list[Card] = field(default_factory=list)


class CopyWriter(Protocol):
    """One short line per card from the item's attributes and the shopper's tastes."""

    def line(
        self, item: dict[str, Any], *, section: str, tastes: Sequence[str], reason: str | None
    ) -> str: ...


class TemplateCopy:
    """Template copy: says why the card is there in plain words."""

    def line(self, item: dict[str, Any], *, section: str, tastes: Sequence[str], reason: str | None) -> str:
        category = top_category(item)
        if section == "because" and reason:
            return f"Goes well with {reason}"
        if section == "deals":
            return f"On offer now in {category}" + (f" at {item['price']:.2f}" if item.get("price") else "")
        if section == "new":
            return f"New in {category}"
        if section == "trending":
            return f"Popular in {category} lately"
        if category in tastes:
            return f"Picked for your taste in {category}"
        return f"Something new to try in {category}"


def top_category(item: dict[str, Any]) -> str:
    return str(item.get("category") or "").split(">")[0].strip() or "the shop"


class Homepage:
    def __init__(
        self,
        ranker: DeviceRanker,
        rules: HomepageRules | None = None,
        copy: CopyWriter | None = None,
        *,
        trending: np.ndarray | None = None,  # the release's DP trending counts (n_items,), if it has them
    ):
        self.ranker, self.rules, self.copy = ranker, rules or HomepageRules(), copy or TemplateCopy()
        self.trending = trending
        self._categories: list[str] = []
        self._categories_at = -1  # ranker.deltas_applied when _categories was made

    @property
    def categories(self) -> list[str]:
        """Each item's top-level category, remade after the ranker applied a catalogue delta (new rows,
        changed items), so one Homepage can serve across delta syncs."""
        if self._categories_at != self.ranker.deltas_applied:
            self._categories = [top_category(item) for item in self.ranker.items]
            self._categories_at = self.ranker.deltas_applied
        return self._categories

    def compose(
        self,
        history: Sequence[Event],
        now: int,
        *,
        purchased: set[str] | None = None,
        trending_counts: np.ndarray | None = None,
    ) -> list[Section]:
        """The page for this history (empty history: trending, new and deals by item bias only).
        `trending_counts` replaces the release's trending counts for this page; counts of the release's
        items only (as the release carries them) count 0 for items a catalogue delta added."""
        ranker, rules = self.ranker, self.rules
        user = ranker.user_vector(history, now)
        scores = ranker.scores(user) if user is not None else ranker.bias.astype(np.float32).copy()
        used = self._blocked(history, purchased or set())
        tastes = self._tastes(history)
        sections: list[Section] = []
        for reason_row in (
            self._recent_distinct(history)[: rules.because_sections] if user is not None else []
        ):
            near = ranker.item_index.similarities(ranker.item_vectors(np.array([reason_row]))[0])
            title = ranker.items[reason_row]["title"]
            sections.append(
                self._section("because", f"Because you viewed {title}", near, used, tastes, title)
            )
        if user is not None:
            sections.insert(0, self._section("for_you", "For you", scores, used, tastes))
        created = np.array([item.get("created_at") or 0 for item in ranker.items])
        fresh = created >= now - rules.new_days * SECONDS_PER_DAY
        sections.append(self._section("new", "New for you", np.where(fresh, scores, -np.inf), used, tastes))
        promo = np.array([bool(item.get("on_promotion")) for item in ranker.items])
        sections.append(
            self._section("deals", "Deals for you", np.where(promo, scores, -np.inf), used, tastes)
        )
        trending_counts = self.trending if trending_counts is None else trending_counts
        if trending_counts is not None:
            added = ranker.n_items - ranker.release_items  # items a catalogue delta added have no count yet
            if added > 0 and trending_counts.shape == (ranker.release_items,):
                trending_counts = np.pad(trending_counts, (0, added))
            if trending_counts.shape != (ranker.n_items,):
                raise DataError(f"trending counts must have one value per item ({ranker.n_items})")
            spread = float(np.ptp(scores[np.isfinite(scores)])) or 1.0
            order = trending_counts.astype(np.float64) + 1e-6 * (scores - scores.min()) / spread
            sections.append(self._section("trending", "Trending", order, used, tastes))
        return [s for s in sections if s.cards]

    def _section(
        self,
        key: str,
        title: str,
        scores: np.ndarray,
        used: set[int],
        tastes: Sequence[str],
        reason: str | None = None,
    ) -> Section:
        section, per_category = Section(key, title), dict[str, int]()
        # the stable descending order, without sorting all N rows when the first ones fill the section
        for row in descending(scores, 4 * self.rules.section_size + len(used)):
            if len(section.cards) == self.rules.section_size or not np.isfinite(scores[row]):
                break
            row = int(row)
            category = self.categories[row]
            if row in used or per_category.get(category, 0) >= self.rules.per_category:
                continue
            item = self.ranker.items[row]
            line = self.copy.line(item, section=key, tastes=tastes, reason=reason)
            section.cards.append(Card(item["id"], item["title"], line, reason))
            used.add(row)
            per_category[category] = per_category.get(category, 0) + 1
        return section

    def _blocked(self, history: Sequence[Event], purchased: set[str]) -> set[int]:
        """History items, and purchased ones unless their category is re-buyable: never shown."""
        index = self.ranker.index
        blocked = {index[e.item_id] for e in history if e.item_id in index}
        for row in (index[i] for i in purchased if i in index):
            if self.categories[row] in self.rules.rebuyable_categories:
                blocked.discard(row)  # may come back even though the shopper has seen it
            else:
                blocked.add(row)
        blocked.update(int(row) for row in self.ranker.hidden)  # out of stock or withdrawn (catalogue delta)
        return blocked

    def _recent_distinct(self, history: Sequence[Event]) -> list[int]:
        """The rows of the history's distinct items, newest first, leaving out those a catalogue delta hid
        (out of stock, withdrawn): they are never named as a reason."""
        hidden = set(self.ranker.hidden.tolist())
        rows: list[int] = []
        for event in sorted(history, key=lambda e: -e.timestamp):
            row = self.ranker.index.get(event.item_id)
            if row is not None and row not in rows and row not in hidden:
                rows.append(row)
        return rows

    def _tastes(self, history: Sequence[Event]) -> list[str]:
        counts: dict[str, int] = {}
        for event in history:
            row = self.ranker.index.get(event.item_id)
            if row is not None:
                counts[self.categories[row]] = counts.get(self.categories[row], 0) + 1
        return sorted(counts, key=lambda c: -counts[c])
