"""The on-device homepage: sections, page-wide rules and copy, on real signed releases: explanations only when
true (close items, complements not substitutes, on shops with and without categories), For you diversified."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from ledger_toy import KEY
from release_toy import CONFIG, source

from client.device.homepage import (
    Homepage,
    HomepageRules,
    Section,
    intra_list_similarity,
    mmr_order,
    top_category,
)
from client.device.ranker import DeviceRanker, Event
from server.releases.release_store import ReleaseStore
from shared.config import SyntheticShopConfig
from shared.data.synthetic.catalogue import SyntheticCatalogue, build_catalogue
from shared.errors import ConfigError, DataError
from shared.model import ItemFeatures, TwoTower

SHOP = SyntheticShopConfig(n_users=30, n_items=300, n_categories=12)  # skin care ... clothing
# Items added on the newest item's day: more than the sections composed before "New for you" and the
# shopper's history can take, so that section is never empty (none of the history's or the trending test's
# rows among them).
FRESH_ROWS = range(100, 150)


def structured_text(shop: SyntheticCatalogue, dim: int = 64) -> np.ndarray:
    """(N, dim) unit item vectors with the shop's latent structure: a vector per leaf, pulled towards its
    complement leaves (both ways), plus a department vector and noise per item. By closeness (z-score against
    the catalogue) the items of X's leaf come first, then those of its complement leaves, then the rest of its
    department; other departments are far below."""
    tax, rng = shop.taxonomy, np.random.default_rng(0)
    paired = np.zeros((tax.n_leaves, tax.n_leaves))
    for leaf in range(tax.n_leaves):
        for other in tax.complements[leaf, : tax.complement_count[leaf]]:
            paired[leaf, other] = paired[other, leaf] = 1.0
    leaves = rng.normal(size=(tax.n_leaves, dim))
    leaves += 0.8 * paired @ leaves
    leaves /= np.linalg.norm(leaves, axis=1, keepdims=True)
    departments = rng.normal(size=(tax.n_departments, dim))
    departments /= np.linalg.norm(departments, axis=1, keepdims=True)
    noise = 0.25 * rng.normal(size=(shop.n_items, dim)) / np.sqrt(dim)
    vectors = 0.4 * departments[tax.leaf_dept[shop.leaf]] + leaves[shop.leaf] + noise
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def shop() -> SyntheticCatalogue:
    return build_catalogue(SHOP)


@pytest.fixture(scope="module")
def ranker(tmp_path_factory: pytest.TempPathFactory, shop: SyntheticCatalogue) -> DeviceRanker:
    """A release of the untrained model over the structured item vectors (item vectors = those vectors)."""
    store = ReleaseStore(tmp_path_factory.mktemp("store"))
    created_at = shop.catalogue.created_at.copy()
    created_at[FRESH_ROWS.start : FRESH_ROWS.stop] = created_at.max()
    catalogue = replace(shop.catalogue, created_at=created_at)
    torch.manual_seed(0)
    model = TwoTower(ItemFeatures.from_catalogue(catalogue, structured_text(shop)), CONFIG)
    store.publish(model, catalogue, source("h"), KEY)
    return DeviceRanker(store.folder(1), precision="float32")


@pytest.fixture
def title_only(ranker: DeviceRanker) -> Iterator[DeviceRanker]:
    """The same release as a shop of titles only: no category, brand or description (restored after)."""
    saved = [dict(item) for item in ranker.items]
    for item in ranker.items:
        item.update(category="", brand="", description="")
    yield ranker
    ranker.items[:] = saved


def now_of(ranker: DeviceRanker) -> int:
    return max(int(item["created_at"] or 0) for item in ranker.items) + 3_600


def shopper(ranker: DeviceRanker) -> list[Event]:
    now = now_of(ranker)
    ids = [item["id"] for item in ranker.items]
    return [Event(ids[i], kind, now - 3_600 * (10 - n)) for n, (i, kind) in enumerate(
        [(3, "view"), (10, "view"), (10, "cart"), (42, "purchase"), (77, "view")])]  # fmt: skip


def in_leaf(shop: SyntheticCatalogue, name: str) -> list[int]:
    """Rows of the items of the leaf called `name` ("Cleansers")."""
    tax = shop.taxonomy
    leaf = next(
        i
        for i in range(tax.n_leaves)
        if tax.departments[tax.leaf_dept[i]].leaves[tax.leaf_local[i]].name == name
    )
    return [int(r) for r in np.flatnonzero(shop.leaf == leaf)]


def paired_leaves(shop: SyntheticCatalogue, leaf: int) -> set[int]:
    """The leaves that complement `leaf` or that `leaf` complements."""
    tax = shop.taxonomy
    out = set(tax.complements[leaf, : tax.complement_count[leaf]].tolist())
    return out | {i for i in range(tax.n_leaves) if leaf in tax.complements[i, : tax.complement_count[i]]}


def sections_of(page: list[Section], key: str) -> list[Section]:
    return [s for s in page if s.key == key]


def close_threshold(homepage: Homepage, reason: int) -> float:
    """The closeness from which an item is "close to" `reason`: the rules' floor, or their share of the
    closeness of its nearest item (unit vectors here: the nearest by dot product is the nearest by cosine)."""
    z = homepage.closeness(reason, [row for row in range(homepage.ranker.n_items) if row != reason])
    return max(homepage.rules.similar_z, homepage.rules.similar_share * float(z.max()))


def test_page_has_every_section_and_no_item_twice(ranker: DeviceRanker) -> None:
    counts = np.arange(ranker.n_items, dtype=np.float64)
    page = Homepage(ranker).compose(shopper(ranker), now_of(ranker), trending_counts=counts)
    keys = [s.key for s in page]
    assert keys[:4] == ["for_you", "bought", "because", "because"] and {"deals", "trending"} <= set(keys)
    shown = [c.item_id for s in page for c in s.cards]
    assert len(shown) == len(set(shown))
    history_ids = {e.item_id for e in shopper(ranker)}
    assert not history_ids & set(shown)
    assert all(card.copy for s in page for card in s.cards)


def test_section_contents_follow_their_rules(ranker: DeviceRanker) -> None:
    now = now_of(ranker)
    rules = HomepageRules(section_size=10, per_category=2, new_days=60)
    page = Homepage(ranker, rules).compose(shopper(ranker), now)
    items = {item["id"]: item for item in ranker.items}
    for section in page:
        categories = [top_category(items[c.item_id]) for c in section.cards]
        if section.key not in ("because", "bought"):  # reason sections hold items close to one item
            assert max(categories.count(c) for c in categories) <= 2
    deals = sections_of(page, "deals")[0]
    assert deals.cards and all(items[c.item_id]["on_promotion"] for c in deals.cards)
    new = sections_of(page, "new")
    assert len(new) == 1 and new[0].cards  # the fixture's fresh items fill it
    for card in new[0].cards:
        assert items[card.item_id]["created_at"] >= now - 60 * 86_400
    because = sections_of(page, "because")
    viewed = [items[e.item_id]["title"] for e in shopper(ranker) if e.event != "purchase"]
    assert all(c.reason in viewed for s in because for c in s.cards)
    assert because[0].title == f"Because you viewed {items[shopper(ranker)[-1].item_id]['title']}"


def test_because_you_viewed_shows_only_close_items_and_says_so(
    ranker: DeviceRanker, shop: SyntheticCatalogue
) -> None:
    events, now = shopper(ranker), now_of(ranker)
    homepage = Homepage(ranker)
    for section in sections_of(homepage.compose(events, now), "because"):
        reason = next(
            ranker.index[e.item_id]
            for e in events
            if ranker.items[ranker.index[e.item_id]]["title"] == section.cards[0].reason
        )
        rows = [ranker.index[c.item_id] for c in section.cards]
        assert (homepage.closeness(reason, rows) >= close_threshold(homepage, reason)).all()
        related = {int(shop.leaf[reason])} | paired_leaves(shop, int(shop.leaf[reason]))
        assert {int(shop.leaf[r]) for r in rows} <= related  # never an unrelated item as padding
        assert all(c.copy == f"Similar to {c.reason}" for c in section.cards)
    # a stricter rule shows fewer cards, or drops the section, rather than padding it: with the floor just
    # above the fourth closest card's closeness the first section keeps the three closer ones
    views = [e for e in events if e.event != "purchase"]  # (a purchase's section would pick first)
    first = sections_of(homepage.compose(views, now), "because")[0]
    z = homepage.closeness(ranker.index[views[-1].item_id], [ranker.index[c.item_id] for c in first.cards])
    floor = float(np.sort(z)[::-1][3]) + 1e-9
    strict = Homepage(ranker, HomepageRules(similar_z=floor)).compose(views, now)
    kept = [c.item_id for c, zc in zip(first.cards, z, strict=True) if zc >= floor]
    assert [c.item_id for c in sections_of(strict, "because")[0].cards] == kept and len(kept) == 3
    assert not sections_of(Homepage(ranker, HomepageRules(similar_z=50.0)).compose(views, now), "because")


def test_a_purchase_leads_to_complements_not_substitutes(
    ranker: DeviceRanker, shop: SyntheticCatalogue
) -> None:
    now = now_of(ranker)
    cleanser, other_cleansers, toners = (
        in_leaf(shop, "Cleansers")[0],
        in_leaf(shop, "Cleansers")[1:],
        in_leaf(shop, "Toners"),
    )
    ids = [item["id"] for item in ranker.items]
    events = [Event(ids[cleanser], "view", now - 7_200), Event(ids[cleanser], "purchase", now - 3_600)]
    page = Homepage(ranker).compose(events, now)
    name = ranker.items[cleanser]["title"]
    (bought,) = sections_of(page, "bought")
    assert bought.title == f"Because you bought {name}" and bought.cards
    rows = {ranker.index[c.item_id] for c in bought.cards}
    assert not rows & set(other_cleansers)  # no substitute
    assert rows & set(toners)  # Cleansers -> Toners, shop.taxonomy's complement
    leaves, department = shop.leaf[list(rows)], shop.taxonomy.leaf_dept[shop.leaf[cleanser]]
    paired = np.isin(leaves, list(paired_leaves(shop, int(shop.leaf[cleanser]))))
    assert paired.mean() >= 0.5 and (paired | (shop.taxonomy.leaf_dept[leaves] == department)).all()
    assert all(c.copy == f"Goes well with {name}" and c.reason == name for c in bought.cards)
    # where both items carry a category the leaf decides: a complement as close as a "similar" item stays
    homepage = Homepage(ranker)
    assert (homepage.closeness(cleanser, list(rows)) >= close_threshold(homepage, cleanser)).any()
    # a purchase is never a "viewed" reason, whether the history or the caller says it was bought
    assert not sections_of(page, "because")
    viewed = [Event(ids[cleanser], "view", now - 60)]
    page = Homepage(ranker).compose(viewed, now, purchased={ids[cleanser]})
    assert [s.key for s in page if s.key in ("because", "bought")] == ["bought"]
    assert not any(s.title == f"Because you viewed {name}" for s in page)


def test_on_a_title_only_shop_a_purchase_leads_to_related_items_that_are_not_near_duplicates(
    title_only: DeviceRanker, shop: SyntheticCatalogue
) -> None:
    ranker, now, rules = title_only, now_of(title_only), HomepageRules()
    cleanser = in_leaf(shop, "Cleansers")[0]
    events = [Event(ranker.items[cleanser]["id"], "purchase", now - 3_600)]
    homepage = Homepage(ranker, rules)
    page = homepage.compose(events, now)
    (bought,) = sections_of(page, "bought")
    z = homepage.closeness(cleanser, [ranker.index[c.item_id] for c in bought.cards])
    assert bought.cards and ((z >= rules.similar_z) & (z < close_threshold(homepage, cleanser))).all()
    assert len(sections_of(page, "for_you")[0].cards) == rules.section_size  # no category, no cap
    assert all("the shop" in c.copy for s in page if s.key in ("new", "deals") for c in s.cards)


def test_for_you_diversity_zero_is_the_ranking_and_more_diversity_lowers_its_similarity(
    ranker: DeviceRanker,
) -> None:
    now, ids = now_of(ranker), [item["id"] for item in ranker.items]
    similarity: dict[float, list[float]] = {}
    for first in range(0, 300, 10):  # shoppers who viewed two items
        events = [
            Event(ids[first], "view", now - 7_200),
            Event(ids[(first + 150) % 300], "view", now - 3_600),
        ]
        for diversity in (0.0, 0.3, 1.0):
            page = Homepage(ranker, HomepageRules(diversity=diversity)).compose(events, now)
            rows = [ranker.index[c.item_id] for c in sections_of(page, "for_you")[0].cards]
            similarity.setdefault(diversity, []).append(
                intra_list_similarity(ranker.item_vectors(np.array(rows)))
            )
        plain = Homepage(ranker, HomepageRules(diversity=0.0))
        scores = ranker.scores(ranker.user_vector(events, now))  # type: ignore[arg-type]
        page = plain.compose(events, now)
        used = {ranker.index[c.item_id] for s in page if s.key in ("bought", "because") for c in s.cards}
        used |= {ranker.index[e.item_id] for e in events}
        expected: list[int] = []
        per: dict[str, int] = {}
        for row in np.argsort(-scores, kind="stable"):  # the plain ranking with the per-category cap
            category = plain.categories[row]
            if row not in used and per.get(category, 0) < 3 and len(expected) < 8:
                expected.append(int(row))
                per[category] = per.get(category, 0) + 1
        assert [ranker.index[c.item_id] for c in sections_of(page, "for_you")[0].cards] == expected
    assert np.mean(similarity[1.0]) < np.mean(similarity[0.3]) < np.mean(similarity[0.0])


def test_purchases_are_left_out_unless_rebuyable(ranker: DeviceRanker) -> None:
    now, events = now_of(ranker), shopper(ranker)
    bought = events[3].item_id
    bought_category = top_category(ranker.items[ranker.index[bought]])
    plain = Homepage(ranker, HomepageRules(section_size=300, per_category=300))
    shown = {c.item_id for s in plain.compose(events, now, purchased={bought}) for c in s.cards}
    assert bought not in shown
    rebuy = Homepage(
        ranker, HomepageRules(section_size=300, per_category=300, rebuyable_categories=(bought_category,))
    )
    shown = {c.item_id for s in rebuy.compose(events, now, purchased={bought}) for c in s.cards}
    assert bought in shown


def test_trending_follows_the_counts_and_empty_history_still_gets_a_page(ranker: DeviceRanker) -> None:
    counts = np.zeros(ranker.n_items)
    counts[[5, 6, 7]] = [30, 20, 10]
    page = Homepage(ranker, HomepageRules(per_category=10)).compose(
        [], now_of(ranker), trending_counts=counts
    )
    trending = next(s for s in page if s.key == "trending")
    assert [c.item_id for c in trending.cards[:3]] == [ranker.items[i]["id"] for i in (5, 6, 7)]
    assert not {"for_you", "because", "bought"} & {s.key for s in page}
    with pytest.raises(DataError):
        Homepage(ranker).compose([], now_of(ranker), trending_counts=np.zeros(3))


def test_copy_is_an_interface(ranker: DeviceRanker, tmp_path: Path) -> None:
    class Shouting:
        def line(
            self, item: dict[str, Any], *, section: str, tastes: Sequence[str], reason: str | None
        ) -> str:
            return item["title"].upper()

    page = Homepage(ranker, copy=Shouting()).compose(shopper(ranker), now_of(ranker))
    assert all(card.copy == card.title.upper() for s in page for card in s.cards)


@pytest.mark.parametrize(
    "change",
    [{"diversity": -0.1}, {"diversity": 1.5}, {"similar_share": 1.2}, {"section_size": 0}],
)
def test_rules_are_checked(change: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        HomepageRules(**change)


def test_intra_list_similarity_is_the_mean_pairwise_cosine() -> None:
    a, b = np.array([3.0, 4.0]), np.array([-4.0, 3.0])
    assert intra_list_similarity(np.array([a, 2 * a])) == pytest.approx(1.0)
    assert intra_list_similarity(np.array([a, b])) == pytest.approx(0.0)
    assert intra_list_similarity(np.array([a, a, -a])) == pytest.approx(-1 / 3)
    assert intra_list_similarity(np.array([a])) == 0.0 == intra_list_similarity(np.zeros((0, 2)))


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 12), st.integers(0, 2**31 - 1), st.floats(0.0, 1.0))
def test_mmr_order_is_a_permutation_and_the_list_order_without_diversity(
    n: int, seed: int, diversity: float
) -> None:
    rng = np.random.default_rng(seed)
    relevance = np.sort(rng.random(n))[::-1]
    unit = rng.normal(size=(n, 5))
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    order = mmr_order(relevance, unit, diversity)
    assert sorted(order) == list(range(n)) and order[0] == 0  # the most relevant first, always
    assert mmr_order(relevance, unit, 0.0) == list(range(n))
    duplicate = np.vstack([unit[:1], unit[:1], unit[1:]])  # an exact duplicate of the best comes last at 1
    if n > 1:
        assert mmr_order(np.r_[relevance[:1], relevance], duplicate, 1.0)[-1] == 1
