"""The synthetic shop: deterministic, sized as asked, valid funnels, streamed == in memory, learnable."""

from __future__ import annotations

import csv
import dataclasses
import string
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.config import SyntheticShopConfig
from shared.data.loaders import load_csv
from shared.data.schema import EVENT_CODE, Dataset
from shared.data.split import leave_one_out
from shared.data.synthetic import generate_shop, shop, write_shop_csv
from shared.data.synthetic.taxonomy import DEPARTMENTS, build_taxonomy
from shared.errors import ConfigError

SMALL = SyntheticShopConfig(n_users=300, n_items=400, seed=11)
VIEW, CART, PURCHASE, FAVOURITE = (EVENT_CODE[e] for e in ("view", "cart", "purchase", "favourite"))


@pytest.fixture(scope="module")
def small() -> Dataset:
    return generate_shop(SMALL)


def user_slices(dataset: Dataset) -> list[slice]:
    counts = np.bincount(dataset.log.user, minlength=dataset.log.n_users)
    ends = np.cumsum(counts)
    return [slice(int(e - c), int(e)) for c, e in zip(counts, ends, strict=True)]


def assert_same_shop(a: Dataset, b: Dataset) -> None:
    ca, cb = a.catalogue, b.catalogue
    for name in ("item_ids", "titles", "categories", "brands", "descriptions"):
        assert getattr(ca, name) == getattr(cb, name), name
    for name in ("price", "created_at", "on_promotion"):
        np.testing.assert_array_equal(getattr(ca, name), getattr(cb, name), err_msg=name)
    assert a.log.user_ids == b.log.user_ids
    for name in ("user", "item", "timestamp", "event", "value"):
        np.testing.assert_array_equal(getattr(a.log, name), getattr(b.log, name), err_msg=name)


def test_same_seed_gives_the_same_shop(small: Dataset) -> None:
    assert_same_shop(small, generate_shop(SMALL))


def test_a_different_seed_gives_a_different_shop(small: Dataset) -> None:
    other = generate_shop(dataclasses.replace(SMALL, seed=12))
    assert other.catalogue.titles != small.catalogue.titles
    assert not np.array_equal(other.log.timestamp[:50], small.log.timestamp[:50])  # the shoppers differ too


def test_scale_parameters_are_respected(small: Dataset) -> None:
    cat, log = small.catalogue, small.log
    assert cat.n_items == SMALL.n_items and log.n_users == SMALL.n_users
    assert np.array_equal(np.unique(log.user), np.arange(SMALL.n_users))
    new = cat.created_at > SMALL.start_time_s
    assert new.sum() == round(SMALL.new_item_fraction * SMALL.n_items)
    assert cat.on_promotion.sum() == round(SMALL.promotion_fraction * SMALL.n_items)
    assert np.all(cat.created_at[new] < SMALL.start_time_s + SMALL.duration_days * 86_400)
    assert len({c.split(" > ")[0] for c in cat.categories}) >= 8  # 12 departments, some share a top level


def test_activity_follows_mean_sessions_and_is_heavy_tailed() -> None:
    light = generate_shop(dataclasses.replace(SMALL, mean_sessions_per_user=2.0))
    heavy = generate_shop(dataclasses.replace(SMALL, mean_sessions_per_user=8.0))
    assert heavy.log.n_rows > 2.5 * light.log.n_rows
    counts = np.bincount(heavy.log.user)
    assert counts.max() > 4 * np.median(counts)


def test_rows_of_a_user_are_contiguous_chronological_and_at_least_three(small: Dataset) -> None:
    log = small.log
    assert np.all(np.diff(log.user) >= 0)
    for s in user_slices(small):
        assert s.stop - s.start >= 3
        assert np.all(np.diff(log.timestamp[s]) > 0)
    assert log.timestamp.min() >= SMALL.start_time_s


def test_no_interaction_before_the_item_exists(small: Dataset) -> None:
    created = small.catalogue.created_at[small.log.item]
    assert np.all(small.log.timestamp >= created)
    new_items = small.catalogue.created_at > SMALL.start_time_s
    assert new_items[small.log.item].any()  # the cold-start slice is actually used


def test_funnels_are_valid(small: Dataset) -> None:
    log = small.log
    for s in user_slices(small):
        items, events, times = log.item[s], log.event[s], log.timestamp[s]
        for r in np.flatnonzero(events == PURCHASE):
            assert events[r - 1] == CART and items[r - 1] == items[r]
            seen = (events[:r] == VIEW) & (items[:r] == items[r]) & (times[:r] >= times[r] - 3600)
            assert seen.any(), "a purchase without a view of the item in its session"
        for r in np.flatnonzero((events == CART) | (events == FAVOURITE)):
            assert ((events[:r] == VIEW) & (items[:r] == items[r]) & (times[:r] >= times[r] - 3600)).any()
    bought = log.event == PURCHASE
    assert bought.any() and (log.event == FAVOURITE).any()
    assert np.all(np.isnan(log.value[~bought])) and np.all(log.value[bought] > 0)
    price = small.catalogue.price[log.item[bought]]
    assert np.all(log.value[bought] <= price + 1e-3)


@settings(max_examples=25, deadline=None)
@given(
    n_users=st.integers(1, 40),
    n_items=st.integers(1, 80),
    n_categories=st.integers(1, len(DEPARTMENTS)),
    new_item_fraction=st.floats(0.0, 0.95),
    seed=st.integers(0, 2**32),
)
def test_invariants_hold_for_any_small_shop(
    n_users: int, n_items: int, n_categories: int, new_item_fraction: float, seed: int
) -> None:
    config = SyntheticShopConfig(
        n_users=n_users,
        n_items=n_items,
        n_categories=n_categories,
        new_item_fraction=new_item_fraction,
        duration_days=30,
        seed=seed,
    )
    dataset = generate_shop(config)
    log, cat = dataset.log, dataset.catalogue
    assert cat.n_items == n_items and log.n_users == n_users
    assert np.all(np.bincount(log.user, minlength=n_users) >= 3)
    assert np.all(log.timestamp >= cat.created_at[log.item])
    same_user = log.user[1:] == log.user[:-1]
    assert np.all(np.diff(log.user) >= 0) and np.all(np.diff(log.timestamp)[same_user] > 0)
    assert (cat.created_at > config.start_time_s).sum() <= round(new_item_fraction * n_items)


def test_titles_and_categories_read_like_a_shop(small: Dataset) -> None:
    cat = small.catalogue
    for title, category, description, brand in zip(
        cat.titles, cat.categories, cat.descriptions, cat.brands, strict=True
    ):
        assert 2 <= len(category.split(" > ")) <= 3
        assert "{" not in title and "{" not in description
        assert description[0] in string.ascii_uppercase and description.endswith(".")
        assert brand and title
    assert len(set(cat.titles)) > 0.9 * cat.n_items


def test_every_vocabulary_entry_is_usable() -> None:
    tax = build_taxonomy(len(DEPARTMENTS))
    assert tax.n_departments >= 12 and tax.n_leaves >= 60
    for dept in DEPARTMENTS:
        assert dept.brands and dept.audiences and dept.descriptions
        for lf in dept.leaves:
            assert lf.nouns and dept.leaf_attributes(lf) and dept.leaf_materials(lf) and dept.leaf_sizes(lf)


def test_bad_sizes_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        generate_shop(dataclasses.replace(SMALL, n_categories=len(DEPARTMENTS) + 1))
    with pytest.raises(ConfigError):
        generate_shop(dataclasses.replace(SMALL, seed=-1))


def test_streamed_csv_is_the_in_memory_shop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shop, "USERS_PER_CHUNK", 40)  # several chunks on a small shop
    config = dataclasses.replace(SMALL, n_users=130)
    report = write_shop_csv(config, tmp_path)
    in_memory = generate_shop(config)
    assert report.n_rows == in_memory.log.n_rows and report.n_users == 130
    with report.items_path.open(encoding="utf-8", newline="") as f:
        header = next(csv.reader(f))
    expected = "item_id,title,category,brand,asin,description,price,created_at,on_promotion"
    assert header == expected.split(",")
    with report.interactions_path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["user_id", "item_id", "timestamp", "event", "value"]
    assert {r[3] for r in rows[1:]} == {"view", "cart", "purchase", "favourite"}
    loaded, _ = load_csv(tmp_path)
    assert_same_shop(loaded, in_memory)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["interactions.csv", "items.csv"]


def test_a_failed_write_leaves_no_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object) -> object:
        raise RuntimeError("disk full")

    monkeypatch.setattr(shop, "_interaction_lines", broken)
    with pytest.raises(RuntimeError):
        write_shop_csv(SMALL, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_recent_items_beat_popularity() -> None:
    """The structure is learnable: "same sub-category as the last item, by popularity" must clearly beat
    popularity at HR@10 under leave-one-out, on targets the user has not interacted with before (repeats,
    such as the purchase of an item just viewed, are easy for any history-aware rule)."""
    dataset = generate_shop(dataclasses.replace(SMALL, n_users=1500, n_items=2000))
    split = leave_one_out(dataset)
    users = split.eval_users
    pop = np.bincount(split.train.items, minlength=split.n_items).astype(np.float64)
    pop /= pop.max() + 1.0
    leaf = np.unique(np.asarray(dataset.catalogue.categories), return_inverse=True)[1]
    end = split.history_end("test")[users]
    masked = np.zeros((users.shape[0], split.n_items), dtype=bool)
    for row, (lo, hi) in enumerate(zip(split.full.offsets[users], end, strict=True)):
        masked[row, split.full.items[lo:hi]] = True
    target = split.test_target[users]
    fresh = ~masked[np.arange(users.shape[0]), target]
    assert fresh.mean() > 0.5

    def hit_rate(scores: np.ndarray) -> float:
        scores = np.where(masked, -np.inf, scores)
        better = scores > scores[np.arange(users.shape[0]), target][:, None]
        return float((better.sum(axis=1) < 10)[fresh].mean())

    last_leaf = leaf[split.full.items[end - 1]]
    popular = hit_rate(np.broadcast_to(pop, masked.shape))
    recent = hit_rate(pop[None, :] + (leaf[None, :] == last_leaf[:, None]))
    assert recent > 0.3 and recent > 4 * popular
