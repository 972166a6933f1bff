"""Interaction rows of the synthetic shop: each planned session becomes timed view/cart/purchase events.

Row layout of a session: its views (in the intent leaf), a favourite of the last viewed item, a cart and a
purchase of one viewed item, then cross-sell views in a complement leaf. Each view picks an item among
candidates drawn by popularity from the leaf, scored by the shopper's tastes (brand, attribute, price), by
the previous item (same attribute, same brand: consecutive items resemble each other), by promotion and by
novelty; an item can only be chosen after its creation time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shared.data.schema import EVENT_CODE
from shared.data.synthetic.catalogue import SyntheticCatalogue
from shared.data.synthetic.group_sampling import sample_in_groups
from shared.data.synthetic.shoppers import SessionPlan, Tastes, complement_of

CANDIDATES = 12  # items drawn by popularity per choice, then scored (sampling-importance-resampling)
W_BRAND = 1.0  # the shopper's favourite brand in the department
W_ATTR = 0.6  # the shopper's favourite attribute in the department
W_PRICE = 0.25  # squared distance to the shopper's price level
W_PROMO = 0.8
W_NEW = 1.5  # a newly arrived item, decaying over NOVELTY_S
NOVELTY_S = 14 * 86_400
W_PREV_ATTR = 1.5  # same attribute as the previous item
W_PREV_BRAND = 0.8  # same brand as the previous item
DRIFT_PROB = 0.2  # a view after the first moves to another leaf of the department (browsing around)
PROMO_DISCOUNT = 0.2  # a purchase of a promoted item pays this much less
VIEW_GAP_S = (15, 70)  # gap before a view: fixed + exponential mean, seconds
ACTION_GAP_S = (5, 30)  # gap before a favourite, cart or purchase


@dataclass(frozen=True, eq=False)
class Rows:
    """Interaction rows, grouped by user and chronological within each user."""

    user: np.ndarray  # (n,) int64 user index (global)
    item: np.ndarray  # (n,) int32
    timestamp: np.ndarray  # (n,) int64 unix seconds, strictly increasing within a user
    event: np.ndarray  # (n,) int8 EVENT_CODE
    value: np.ndarray  # (n,) float32 amount paid for purchases, NaN otherwise


def session_rows(
    rng: np.random.Generator, shop: SyntheticCatalogue, tastes: Tastes, plan: SessionPlan, first_user: int
) -> Rows:
    """The rows of every planned session; user indices are offset by `first_user`."""
    per_session = plan.n_rows
    first_row = np.cumsum(per_session) - per_session
    session = np.repeat(np.arange(per_session.shape[0]), per_session)
    pos = np.arange(session.shape[0]) - first_row[session]
    k = plan.n_views[session]
    fav_at = k + plan.favourite[session]
    cart_at = fav_at + plan.cart[session]
    after = cart_at + plan.purchase[session]
    event = np.full(session.shape[0], EVENT_CODE["view"], dtype=np.int8)
    event[(pos == k) & plan.favourite[session]] = EVENT_CODE["favourite"]
    event[(pos == fav_at) & plan.cart[session]] = EVENT_CODE["cart"]
    event[(pos == cart_at) & plan.purchase[session]] = EVENT_CODE["purchase"]
    timestamp = _timestamps(rng, plan, session, pos, pos < k)
    user = plan.user[session]
    item = np.full(session.shape[0], -1, dtype=np.int64)
    _fill_views(rng, shop, tastes, item, user, timestamp, pos < k, pos, plan.leaf[session], DRIFT_PROB)
    item[event == EVENT_CODE["favourite"]] = item[first_row + plan.n_views - 1][plan.favourite]
    picked = item[first_row + plan.pick]
    item[event == EVENT_CODE["cart"]] = picked[plan.cart]
    item[event == EVENT_CODE["purchase"]] = picked[plan.purchase]
    cross_leaf = complement_of(shop, shop.leaf[picked], rng.random(picked.shape[0]))
    cross_leaf = np.where(cross_leaf >= 0, cross_leaf, shop.leaf[picked])[session]
    _fill_views(rng, shop, tastes, item, user, timestamp, pos >= after, pos - after, cross_leaf, None)
    value = np.full(session.shape[0], np.nan, dtype=np.float32)
    bought = event == EVENT_CODE["purchase"]
    paid = shop.catalogue.price[item[bought]].astype(np.float64)
    paid *= np.where(shop.catalogue.on_promotion[item[bought]], 1 - PROMO_DISCOUNT, 1.0)
    value[bought] = np.round(paid, 2).astype(np.float32)
    return Rows(user + first_user, item.astype(np.int32), timestamp, event, value)


def _timestamps(
    rng: np.random.Generator, plan: SessionPlan, session: np.ndarray, pos: np.ndarray, is_view: np.ndarray
) -> np.ndarray:
    """Session start + cumulative gaps, then made strictly increasing within each user."""
    n = session.shape[0]
    gap = np.where(
        is_view,
        VIEW_GAP_S[0] + rng.exponential(VIEW_GAP_S[1], n),
        ACTION_GAP_S[0] + rng.exponential(ACTION_GAP_S[1], n),
    ).astype(np.int64)
    gap[pos == 0] = 0
    total = np.cumsum(gap)
    within = total - (total - gap)[pos == 0][session]  # cumulative gap since the session's first row
    t = plan.start[session] + within
    # Sessions may overlap: enforce t[i] >= t[i-1] + 1 within a user by a running max of t - i.
    user = plan.user[session]
    user_first = np.searchsorted(user, user, side="left")
    rank = np.arange(n) - user_first
    base = plan.start.min()
    key = (t - rank - base) + user * (1 << 42)
    return np.maximum.accumulate(key) - user * (1 << 42) + rank + base


def _fill_views(
    rng: np.random.Generator,
    shop: SyntheticCatalogue,
    tastes: Tastes,
    item: np.ndarray,
    user: np.ndarray,
    timestamp: np.ndarray,
    mask: np.ndarray,
    step: np.ndarray,
    leaf: np.ndarray,
    drift_prob: float | None,
) -> None:
    """Choose the item of every `mask` row, step by step; the row before a step > 0 row is its previous.

    With `drift_prob`, a step > 0 row stays in the leaf of the row before it or, with that probability,
    moves to another leaf of its department. Without it (cross-sell views) rows keep their leaf and the
    row before a step 0 row (the purchase) is its previous item too.
    """
    rows = np.flatnonzero(mask)
    steps = step[rows]
    leaf = leaf.copy()
    for j in range(int(steps.max()) + 1 if rows.size else 0):
        now = rows[steps == j]
        if j > 0 and drift_prob is not None:
            leaf[now] = _drift(rng, shop, leaf[now - 1], drift_prob)
        chained = j > 0 or drift_prob is None
        prev = item[now - 1] if chained else np.full(now.shape[0], -1, dtype=np.int64)
        item[now] = choose_items(rng, shop, tastes, user[now], leaf[now], timestamp[now], prev)


def _drift(rng: np.random.Generator, shop: SyntheticCatalogue, leaf: np.ndarray, prob: float) -> np.ndarray:
    """Each leaf, or with probability `prob` a leaf of the same department drawn by popularity."""
    tax = shop.taxonomy
    dept = tax.leaf_dept[leaf]
    n = int(leaf.shape[0])
    other = sample_in_groups(shop.leaf_cum, tax.dept_leaf[0][dept], tax.dept_leaf[1][dept], rng.random(n))
    move = (rng.random(n) < prob) & (shop.anchor[other] >= 0)
    return np.where(move, other, leaf)


def choose_items(
    rng: np.random.Generator,
    shop: SyntheticCatalogue,
    tastes: Tastes,
    user: np.ndarray,
    leaf: np.ndarray,
    t: np.ndarray,
    prev: np.ndarray,
) -> np.ndarray:
    """(m,) one item per choice in `leaf` at time `t` by `user` after item `prev` (-1: none)."""
    m = leaf.shape[0]
    lo, hi = shop.leaf_bounds[0][leaf], shop.leaf_bounds[1][leaf]
    cand = shop.by_leaf[
        sample_in_groups(shop.item_cum, lo[:, None], hi[:, None], rng.random((m, CANDIDATES)))
    ]
    dept = shop.taxonomy.leaf_dept[leaf]
    score = rng.gumbel(size=(m, CANDIDATES))
    score += W_BRAND * (shop.brand[cand] == tastes.fav_brand[user, dept][:, None])
    score += W_ATTR * (shop.attr[cand] == tastes.fav_attr[user, dept][:, None])
    score -= W_PRICE * (shop.rel_log_price[cand] - tastes.price_z[user][:, None]) ** 2
    score += W_PROMO * shop.catalogue.on_promotion[cand]
    age = t[:, None] - shop.catalogue.created_at[cand]
    score += W_NEW * shop.is_new[cand] * np.exp(-np.maximum(age, 0) / NOVELTY_S)
    has_prev = (prev >= 0)[:, None]
    p = np.maximum(prev, 0)
    score += W_PREV_ATTR * (has_prev & (shop.attr[cand] == shop.attr[p][:, None]))
    score += W_PREV_BRAND * (has_prev & (shop.brand[cand] == shop.brand[p][:, None]))
    score[(age < 0) | (cand == prev[:, None])] = -np.inf
    best = np.argmax(score, axis=1)
    chosen = cand[np.arange(m), best]
    stuck = np.isneginf(score[np.arange(m), best])  # every candidate too new or a repeat
    return np.where(stuck, shop.anchor[leaf], chosen)
