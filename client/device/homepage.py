"""The personalised homepage, composed on the device from one ranking pass over a verified release.

Sections, filled in this order so that the more personal ones pick first (For you is shown first):
- "Because you bought X" (key "bought"): for each of the last `bought_sections` distinct purchased history
  items X, items related to X that are not substitutes of it, best for this shopper first; copy "Goes well
  with X";
- "Because you viewed X" (key "because"): for each of the last `because_sections` distinct history items X
  that were not purchased, the items close to X, nearest first; copy "Similar to X";
- "For you": the top of the model's ranking, diversified by maximal marginal relevance (`diversity`);
- "New for you": items added within `new_days` of now (including items nobody has interacted with: their
  vectors come from their text), ranked by the same scores;
- "Deals for you": items on promotion, ranked by the same scores;
- "Trending": items by counts aggregated across devices under user-level DP: by default the release's
  accounted trending counts (client/device/trending_counts.py, given as `trending`), or counts the caller
  passes; ties broken by this shopper's scores. No counts, no Trending section.

An explanation is only shown when it is true. Closeness to X is a z-score: the cosine of an item's vector
with X's, less the mean cosine of X with a fixed sample of `BACKGROUND_ROWS` catalogue rows (evenly strided,
X left out), over their standard deviation; a threshold relative to X's own background and neighbourhood
holds on any shop and encoder (unrelated items sit near cosine 0.11 on the synthetic shop with MiniLM, near
0.27 on Amazon Beauty's titles alone). Candidates are the first `REASON_POOL * section_size` (+ rows already
used) items by dot product with X, so a request costs one more dot product per candidate and per background
row, never N x N work.
- close to X ("Because you viewed X"): z >= max(`similar_z`, `similar_share` * the z of X's nearest
  candidate). The share keeps only items nearly as close as X's nearest ones where X has close neighbours
  (a large shop); the floor keeps a small shop's nearest items, whose z-scores are compressed.
- related to X but not a substitute ("Because you bought X"): z >= `similar_z`, and in another leaf category
  than X where both carry one (the category path, compared whole), else not close to X as above (a
  near-duplicate by its vector: title-only shops); ordered by this shopper's scores, ties by row.
A reason section shows fewer cards, or none (then it is dropped), rather than padding with items its rule
refuses; the cap per top-level category does not apply to it (its items are related to X by rule).
`simulation/benchmarks/bench_homepage.py` measures the rules and the diversity (docs/serving.md).

Rules across the page: no item twice; items already purchased are left out unless their category is
re-buyable; a purchased item is never the reason of a "Because you viewed" section; at most `per_category`
items of one top-level category in For you, New, Deals and Trending (items without a category are not
capped: on a title-only shop they would all be one). Each card carries a short line of copy
from a CopyWriter (templates here; a language model could implement the same interface).
server/web/src/homepage.js is this module's port to the browser, rule for rule
(tests/server/test_demo_page.py checks they give identical pages).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import chain, islice
from typing import Any, Protocol

import numpy as np

from client.device.ranker import DeviceRanker, Event
from client.device.top_n import descending
from shared.errors import ConfigError, DataError

SECONDS_PER_DAY = 86_400
BACKGROUND_ROWS = 128  # catalogue rows X's closeness is measured against (all rows when fewer)
REASON_POOL = 8  # a reason section reads this many candidates per card (+ rows already used)
MMR_POOL = 4  # For you re-orders this many unused top-ranked items per card


@dataclass(frozen=True)
class HomepageRules:
    section_size: int = 8
    per_category: int = 3  # at most this many items of one top-level category in a ranked section
    new_days: int = 30
    because_sections: int = 2  # "Because you viewed X" sections, one per recent distinct item not purchased
    rebuyable_categories: tuple[str, ...] = ()  # top-level categories whose purchased items may come back
    bought_sections: int = 1  # "Because you bought X" sections, one per recent distinct purchased item
    # For you's trade-off between the shopper's scores and variety (maximal marginal relevance over item
    # vectors): 0 is exactly the plain ranking, 1 variety alone. 0.3 (bench_homepage, 1,000 shoppers of the
    # synthetic shop): near-duplicate title pairs per page -26% (-40% title-only), 0.25% (1.4%) of the
    # score spread given up, the next-item hit rate unchanged; 0.5 loses hits on both
    diversity: float = 0.3
    # "close to X" (see the module docstring): z >= max(similar_z, similar_share * z of X's nearest item).
    # MiniLM pairs on the 2,000-item synthetic shop: of the pairs this admits 0.5% are of another department
    # (4.4% with z >= 2.5 alone, 12% with 2.0), 1.5% title-only; and every item of a 60-item shop keeps a
    # close item (a third had none with z >= 2.5 alone)
    similar_z: float = 1.75
    similar_share: float = 0.6

    def __post_init__(self) -> None:
        if min(self.section_size, self.per_category) < 1:
            raise ConfigError("section_size and per_category must be >= 1")
        if min(self.new_days, self.because_sections, self.bought_sections) < 0:
            raise ConfigError("new_days, because_sections and bought_sections must be >= 0")
        if not 0.0 <= self.diversity <= 1.0:
            raise ConfigError(f"diversity must be in [0, 1], got {self.diversity}")
        if not 0.0 <= self.similar_share <= 1.0:
            raise ConfigError(f"similar_share must be in [0, 1], got {self.similar_share}")


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
    """Template copy: says why the card is there in plain words, and only what is true."""

    def line(self, item: dict[str, Any], *, section: str, tastes: Sequence[str], reason: str | None) -> str:
        category = top_category(item)
        if section == "because" and reason:
            return f"Similar to {reason}"
        if section == "bought" and reason:
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


def leaf_category(item: dict[str, Any]) -> str:
    """The item's whole category path ("" when it has none): items of one leaf are substitutes."""
    return str(item.get("category") or "").strip()


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """(k, E) float64 rows scaled to unit length (a zero row stays zero)."""
    rows = np.asarray(vectors, dtype=np.float64)
    norms = np.sqrt(np.einsum("ij,ij->i", rows, rows))
    return rows / np.where(norms > 0, norms, 1.0)[:, None]


def intra_list_similarity(vectors: np.ndarray) -> float:
    """Mean pairwise cosine of a list's item vectors (k, E); 0.0 for fewer than two items."""
    unit = unit_rows(vectors)
    k = len(unit)
    if k < 2:
        return 0.0
    gram = unit @ unit.T
    return float((gram.sum() - np.trace(gram)) / (k * (k - 1)))


def mmr_order(relevance: np.ndarray, unit: np.ndarray, diversity: float) -> list[int]:
    """Positions of a candidate list in maximal-marginal-relevance order: each step takes the candidate with
    the largest (1 - diversity) * relevance - diversity * (its largest cosine with those taken), the first
    one on ties. `relevance` (k,) in [0, 1], `unit` (k, E) unit vectors. diversity 0: the list's order."""
    left = np.ones(len(relevance), dtype=bool)
    penalty = np.zeros(len(relevance))
    order: list[int] = []
    for step in range(len(relevance)):
        objective = np.where(left, (1.0 - diversity) * relevance - diversity * penalty, -np.inf)
        pick = int(np.argmax(objective))
        order.append(pick)
        left[pick] = False
        similarity = unit @ unit[pick]
        penalty = similarity if step == 0 else np.maximum(penalty, similarity)
    return order


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
        self._leaves: list[str] = []
        self._background = (np.zeros(0, dtype=np.int64), np.zeros((0, 0)))
        self._categories_at = -1  # ranker.deltas_applied when the per-item tables were made

    @property
    def categories(self) -> list[str]:
        """Each item's top-level category, remade after the ranker applied a catalogue delta (new rows,
        changed items), so one Homepage can serve across delta syncs."""
        self._refresh()
        return self._categories

    @property
    def leaves(self) -> list[str]:
        """Each item's leaf category (its whole path, "" when none), remade as `categories` is."""
        self._refresh()
        return self._leaves

    def _refresh(self) -> None:
        if self._categories_at != self.ranker.deltas_applied:
            items, n = self.ranker.items, self.ranker.n_items
            self._categories = [top_category(item) for item in items]
            self._leaves = [leaf_category(item) for item in items]
            sample = min(BACKGROUND_ROWS, n)
            rows = np.arange(sample, dtype=np.int64) * n // max(sample, 1)  # evenly strided rows
            self._background = (rows, unit_rows(self.ranker.item_vectors(rows)))
            self._categories_at = self.ranker.deltas_applied

    def compose(
        self,
        history: Sequence[Event],
        now: int,
        *,
        purchased: set[str] | None = None,
        trending_counts: np.ndarray | None = None,
    ) -> list[Section]:
        """The page for this history (empty history: trending, new and deals by item bias only).
        `purchased` (item ids) and the history's purchase events are both purchases. `trending_counts`
        replaces the release's trending counts for this page; counts of the release's items only (as the
        release carries them) count 0 for items a catalogue delta added."""
        ranker, rules = self.ranker, self.rules
        user = ranker.user_vector(history, now)
        scores = ranker.scores(user) if user is not None else ranker.bias.astype(np.float32).copy()
        purchased = set(purchased or ()) | {e.item_id for e in history if e.event == "purchase"}
        used = self._blocked(history, purchased)
        tastes = self._tastes(history)
        sections: list[Section] = []
        recent = self._recent_distinct(history) if user is not None else []
        bought = {ranker.index[i] for i in purchased if i in ranker.index}
        for row in [r for r in recent if r in bought][: rules.bought_sections]:
            title = ranker.items[row]["title"]
            sections.append(
                self._reason_section("bought", f"Because you bought {title}", row, scores, used, tastes)
            )
        for row in [r for r in recent if r not in bought][: rules.because_sections]:
            title = ranker.items[row]["title"]
            sections.append(
                self._reason_section("because", f"Because you viewed {title}", row, scores, used, tastes)
            )
        if user is not None:
            sections.insert(0, self._for_you(scores, used, tastes))
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

    def closeness(self, reason: int, rows: Sequence[int]) -> np.ndarray:
        """(len(rows),) z-scores of the cosines of `rows` with item `reason`, against the cosines of `reason`
        with the background sample (itself left out): mean 0, one standard deviation 1."""
        self._refresh()
        x = unit_rows(self.ranker.item_vectors(np.array([reason])))[0]
        sample, unit = self._background
        background = unit[sample != reason] @ x
        mean = float(background.mean()) if len(background) else 0.0
        std = float(np.sqrt(np.mean((background - mean) ** 2))) if len(background) else 0.0
        cosines = unit_rows(self.ranker.item_vectors(np.array(rows, dtype=np.int64))) @ x
        return np.asarray((cosines - mean) / (std if std > 0 else 1.0))

    def _reason_section(
        self, key: str, title: str, reason: int, scores: np.ndarray, used: set[int], tastes: Sequence[str]
    ) -> Section:
        """A "because" (close to the reason) or "bought" (related, not a substitute) section: only items
        its rule admits, among the first candidates by dot product with the reason."""
        ranker, rules = self.ranker, self.rules
        near = ranker.item_index.similarities(ranker.item_vectors(np.array([reason]))[0])
        depth = min(ranker.n_items, REASON_POOL * rules.section_size + len(used))
        pool = [row for row in islice(descending(near, depth), depth) if row != reason]
        z = self.closeness(reason, pool) if pool else np.zeros(0)
        close = max(rules.similar_z, rules.similar_share * float(z.max())) if pool else np.inf
        if key == "because":
            rows = [row for row, zr in zip(pool, z, strict=True) if zr >= close]
        else:
            leaf, leaves = self.leaves[reason], self.leaves
            # not a substitute: another leaf where both items have a category, else not close to X
            rows = [
                row
                for row, zr in zip(pool, z, strict=True)
                if zr >= rules.similar_z and (leaves[row] != leaf if leaf and leaves[row] else zr < close)
            ]
            rows.sort(key=lambda row: (-float(scores[row]), row))  # this shopper's scores, ties by row
        name = ranker.items[reason]["title"]
        return self._filled(Section(key, title), rows, scores, used, tastes, name, cap=False)

    def _for_you(self, scores: np.ndarray, used: set[int], tastes: Sequence[str]) -> Section:
        """The top of the ranking; with `diversity` > 0 its first MMR_POOL * section_size unused items in
        MMR order over their item vectors (relevance: their scores scaled to [0, 1]), then the rest."""
        rules = self.rules
        ranked = descending(scores, 4 * rules.section_size + len(used))
        if rules.diversity == 0:
            return self._filled(Section("for_you", "For you"), ranked, scores, used, tastes)
        pool: list[int] = []
        for row in ranked:  # stops after the pool's last row: `ranked` then goes on with the rest
            if not np.isfinite(scores[row]):
                break
            if row not in used:
                pool.append(row)
                if len(pool) == MMR_POOL * rules.section_size:
                    break
        relevance = scores[pool].astype(np.float64)
        spread = float(relevance.max() - relevance.min()) if pool else 0.0
        relevance = (relevance - relevance.min()) / spread if spread > 0 else np.ones(len(pool))
        unit = unit_rows(self.ranker.item_vectors(np.array(pool, dtype=np.int64)))
        order = [pool[i] for i in mmr_order(relevance, unit, rules.diversity)]
        return self._filled(Section("for_you", "For you"), chain(order, ranked), scores, used, tastes)

    def _section(
        self, key: str, title: str, scores: np.ndarray, used: set[int], tastes: Sequence[str]
    ) -> Section:
        # the stable descending order, without sorting all N rows when the first ones fill the section
        ranked = descending(scores, 4 * self.rules.section_size + len(used))
        return self._filled(Section(key, title), ranked, scores, used, tastes)

    def _filled(
        self,
        section: Section,
        rows: Iterable[int],
        scores: np.ndarray,
        used: set[int],
        tastes: Sequence[str],
        reason: str | None = None,
        *,
        cap: bool = True,
    ) -> Section:
        """`section` with cards of `rows` in order until it is full or a score is not finite: rows already
        used are skipped, and with `cap` rows whose top-level category already has `per_category` cards
        (items without a category are not capped: on a title-only shop they would all be one category)."""
        per_category: dict[str, int] = {}
        for row in rows:
            if len(section.cards) == self.rules.section_size or not np.isfinite(scores[row]):
                break
            row = int(row)
            category = self.categories[row]
            capped = cap and bool(self.leaves[row])  # an item without a category has no cap
            if row in used or (capped and per_category.get(category, 0) >= self.rules.per_category):
                continue
            item = self.ranker.items[row]
            line = self.copy.line(item, section=section.key, tastes=tastes, reason=reason)
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
