"""The on-device homepage: sections, page-wide rules and copy, on a real signed release."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ledger_toy import KEY
from release_toy import random_model, source

from client.device.homepage import Homepage, HomepageRules, top_category
from client.device.ranker import DeviceRanker, Event
from server.releases.release_store import ReleaseStore
from shared.errors import DataError

# Items added on the newest item's day: more than the sections composed before "New for you" (for you and two
# "because", 10 cards each with HomepageRules(section_size=10)) and the shopper's history can take, so that
# section is never empty (none of the history's or the trending test's rows among them).
FRESH_ROWS = range(100, 150)


@pytest.fixture(scope="module")
def ranker(tmp_path_factory: pytest.TempPathFactory) -> DeviceRanker:
    store = ReleaseStore(tmp_path_factory.mktemp("store"))
    model, catalogue = random_model()
    created_at = catalogue.created_at.copy()
    created_at[FRESH_ROWS.start : FRESH_ROWS.stop] = created_at.max()
    store.publish(model, replace(catalogue, created_at=created_at), source("h"), KEY)
    return DeviceRanker(store.folder(1))


def now_of(ranker: DeviceRanker) -> int:
    return max(int(item["created_at"] or 0) for item in ranker.items) + 3_600


def shopper(ranker: DeviceRanker) -> list[Event]:
    now = now_of(ranker)
    ids = [item["id"] for item in ranker.items]
    return [Event(ids[i], kind, now - 3_600 * (10 - n)) for n, (i, kind) in enumerate(
        [(3, "view"), (10, "view"), (10, "cart"), (42, "purchase"), (77, "view")])]  # fmt: skip


def test_page_has_every_section_and_no_item_twice(ranker: DeviceRanker) -> None:
    counts = np.arange(ranker.n_items, dtype=np.float64)
    page = Homepage(ranker).compose(shopper(ranker), now_of(ranker), trending_counts=counts)
    keys = [s.key for s in page]
    assert keys[0] == "for_you" and keys.count("because") == 2 and {"deals", "trending"} <= set(keys)
    shown = [c.item_id for s in page for c in s.cards]
    assert len(shown) == len(set(shown))
    history_ids = {e.item_id for e in shopper(ranker)}
    assert not history_ids & set(shown)
    assert all(card.copy for s in page for card in s.cards)


def test_section_contents_follow_their_rules(ranker: DeviceRanker) -> None:
    now = now_of(ranker)
    rules = HomepageRules(section_size=10, per_category=2, new_days=60)
    page = {s.title: s for s in Homepage(ranker, rules).compose(shopper(ranker), now)}
    items = {item["id"]: item for item in ranker.items}
    for section in page.values():
        categories = [top_category(items[c.item_id]) for c in section.cards]
        assert max(categories.count(c) for c in categories) <= 2
    deals = next(s for s in page.values() if s.key == "deals")
    assert deals.cards and all(items[c.item_id]["on_promotion"] for c in deals.cards)
    new = [s for s in page.values() if s.key == "new"]
    assert len(new) == 1 and new[0].cards  # the fixture's fresh items fill it
    for card in new[0].cards:
        assert items[card.item_id]["created_at"] >= now - 60 * 86_400
    because = [s for s in page.values() if s.key == "because"]
    viewed_titles = {items[e.item_id]["title"] for e in shopper(ranker)}
    assert all(c.reason in viewed_titles for s in because for c in s.cards)
    assert because[0].title == f"Because you viewed {items[shopper(ranker)[-1].item_id]['title']}"


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
    assert "for_you" not in {s.key for s in page}
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
