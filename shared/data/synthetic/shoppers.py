"""Shoppers of the synthetic shop: latent tastes, and the plan of their sessions (when, where, how deep).

A shopper has a Dirichlet mix over departments (a few favourite ones), a favourite leaf, brand and attribute
in each department, a price level, a purchase propensity and a heavy-tailed number of sessions. A session
has an intent leaf: a fresh one drawn from the tastes, the previous session's leaf (the shopper comes back
to the same need), or after a purchase a complement of what was bought ("Cleansers" -> "Toners").
The items themselves are chosen later, in `events`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shared.config import SyntheticShopConfig
from shared.data.synthetic.catalogue import DAY_S, SyntheticCatalogue
from shared.data.synthetic.group_sampling import sample_in_groups, sample_rows

DEPT_CONCENTRATION = 0.3  # Dirichlet alpha over departments: most shoppers favour one to three
DEPT_POPULAR_MIX = 0.15  # share of a shopper's department mix that follows the shop's overall mix
SESSIONS_SIGMA = 0.9  # sessions per shopper ~ log-normal (heavy tail), mean = config.mean_sessions_per_user
MAX_SESSIONS = 250
MIN_ROWS = 3  # every shopper gets at least this many interactions, so every shopper can be evaluated
FAVOURITE_LEAF_PROB = 0.5  # a fresh session goes to the shopper's favourite leaf of the department
CONTINUE_PROB = 0.3  # a session continues the previous session's leaf
COMPLEMENT_PROB = 0.5  # after a purchase, the next session looks for a complement of it
VIEW_STOP_PROB = 0.5  # views per session ~ geometric (mean 2), capped
MAX_VIEWS = 10
CART_ABANDON_PROB = 0.12  # a session that does not buy still puts something in the cart
FAVOURITE_PROB = 0.08  # a session marks its last viewed item as a favourite
CROSS_SELL_PROB = 0.4  # after a purchase, each of up to MAX_CROSS_VIEWS complement views happens
MAX_CROSS_VIEWS = 2
PICK_LAST_PROB = 0.6  # the carted item is the last one viewed, otherwise any viewed item
WEEKEND_WEIGHT = 1.3
# Sessions by hour of day (UTC): quiet nights, a lunch bump, busy evenings.
HOUR_WEIGHTS = np.array(
    [
        *(1.0, 0.6, 0.4, 0.3, 0.3, 0.4, 0.8, 1.5, 2.0, 2.3, 2.5, 2.7),
        *(3.2, 3.0, 2.6, 2.5, 2.6, 2.9, 3.3, 3.8, 4.2, 4.0, 3.0, 1.8),
    ]
)


@dataclass(frozen=True, eq=False)
class Tastes:
    """Latent tastes of n shoppers over D departments."""

    dept_cum: np.ndarray  # (n, D) cumulative department preference
    fav_leaf: np.ndarray  # (n, D) leaf id
    fav_brand: np.ndarray  # (n, D) brand id
    fav_attr: np.ndarray  # (n, D) attribute id
    price_z: np.ndarray  # (n,) preferred price level, in units of a leaf's price spread
    buy_rate: np.ndarray  # (n,) probability that a session ends in a purchase
    n_sessions: np.ndarray  # (n,) int64


@dataclass(frozen=True, eq=False)
class SessionPlan:
    """S sessions grouped by shopper, each shopper's in time order."""

    user: np.ndarray  # (S,) int64 shopper index within the chunk
    start: np.ndarray  # (S,) int64 unix seconds
    leaf: np.ndarray  # (S,) int64 intent leaf
    n_views: np.ndarray  # (S,) int64 >= 1
    favourite: np.ndarray  # (S,) bool
    cart: np.ndarray  # (S,) bool, true for every purchase
    purchase: np.ndarray  # (S,) bool
    n_cross: np.ndarray  # (S,) int64
    pick: np.ndarray  # (S,) int64 which view (0-based) is carted and bought

    @property
    def n_rows(self) -> np.ndarray:
        """(S,) interactions in each session."""
        return self.n_views + self.favourite + self.cart + self.purchase + self.n_cross


def draw_tastes(
    rng: np.random.Generator, shop: SyntheticCatalogue, config: SyntheticShopConfig, n: int
) -> Tastes:
    """Tastes of n shoppers."""
    tax = shop.taxonomy
    d = tax.n_departments
    dept_weight = np.bincount(tax.leaf_dept, weights=shop.leaf_weight, minlength=d)
    overall = dept_weight / dept_weight.sum()
    mix = (1 - DEPT_POPULAR_MIX) * rng.dirichlet(np.full(d, DEPT_CONCENTRATION), size=n)
    mix = (mix + DEPT_POPULAR_MIX * overall) * (dept_weight > 0)
    leaf_lo, leaf_hi = tax.dept_leaf
    brand_lo, brand_hi = tax.dept_brand
    attr_lo, attr_hi = tax.dept_attr
    mu = np.log(config.mean_sessions_per_user) - SESSIONS_SIGMA**2 / 2
    sessions = np.rint(rng.lognormal(mu, SESSIONS_SIGMA, n)).astype(np.int64)
    return Tastes(
        dept_cum=np.cumsum(mix, axis=1),
        fav_leaf=sample_in_groups(shop.leaf_cum, leaf_lo, leaf_hi, rng.random((n, d))),
        fav_brand=brand_lo + (rng.random((n, d)) * (brand_hi - brand_lo)).astype(np.int64),
        fav_attr=attr_lo + (rng.random((n, d)) * (attr_hi - attr_lo)).astype(np.int64),
        price_z=rng.normal(0.0, 1.0, n),
        buy_rate=rng.beta(2.0, 5.0, n),
        n_sessions=np.clip(sessions, 1, MAX_SESSIONS),
    )


def plan_sessions(
    rng: np.random.Generator, shop: SyntheticCatalogue, tastes: Tastes, config: SyntheticShopConfig
) -> SessionPlan:
    """Every session of the shoppers: start time, intent leaf and the shape of its funnel."""
    n_sessions = tastes.n_sessions
    user = np.repeat(np.arange(n_sessions.shape[0]), n_sessions)
    first = np.cumsum(n_sessions) - n_sessions
    start = _session_starts(rng, config, user)
    s = int(user.shape[0])
    purchase = rng.random(s) < tastes.buy_rate[user]
    cart = purchase | (rng.random(s) < CART_ABANDON_PROB)
    favourite = rng.random(s) < FAVOURITE_PROB
    n_cross = np.where(purchase, rng.binomial(MAX_CROSS_VIEWS, CROSS_SELL_PROB, s), 0)
    n_views = np.minimum(rng.geometric(VIEW_STOP_PROB, s), MAX_VIEWS).astype(np.int64)
    rows = n_views + favourite + cart + purchase + n_cross
    deficit = np.maximum(MIN_ROWS - np.bincount(user, weights=rows, minlength=n_sessions.shape[0]), 0)
    n_views[first + n_sessions - 1] += deficit.astype(np.int64)
    pick = np.where(rng.random(s) < PICK_LAST_PROB, n_views - 1, (rng.random(s) * n_views).astype(np.int64))
    leaf = _intent_leaves(rng, shop, tastes, user, np.arange(s) - first[user], purchase)
    return SessionPlan(
        user=user,
        start=start,
        leaf=leaf,
        n_views=n_views,
        favourite=favourite,
        cart=cart,
        purchase=purchase,
        n_cross=n_cross,
        pick=pick,
    )


def complement_of(shop: SyntheticCatalogue, leaf: np.ndarray, u: np.ndarray) -> np.ndarray:
    """A random non-empty complement leaf of each leaf, -1 where it has none."""
    tax = shop.taxonomy
    count = tax.complement_count[leaf]
    pos = np.minimum((u * count).astype(np.int64), np.maximum(count - 1, 0))
    comp = tax.complements[leaf, pos]
    ok = (count > 0) & (shop.anchor[np.maximum(comp, 0)] >= 0)
    return np.where(ok, comp, -1)


def _session_starts(rng: np.random.Generator, config: SyntheticShopConfig, user: np.ndarray) -> np.ndarray:
    """Start times spread over the period (more on weekends and evenings), sorted within each shopper."""
    days = np.arange(config.duration_days)
    weekday = (config.start_time_s // DAY_S + days + 3) % 7  # 1970-01-01 was a Thursday (3)
    day_p = np.where(weekday >= 5, WEEKEND_WEIGHT, 1.0)
    s = int(user.shape[0])
    day = rng.choice(config.duration_days, size=s, p=day_p / day_p.sum())
    hour = rng.choice(24, size=s, p=HOUR_WEIGHTS / HOUR_WEIGHTS.sum())
    offset = day.astype(np.int64) * DAY_S + hour * 3600 + rng.integers(0, 3600, s)
    offset = np.sort(user * (1 << 40) + offset) - user * (1 << 40)  # users are already grouped
    return config.start_time_s + offset


def _intent_leaves(
    rng: np.random.Generator,
    shop: SyntheticCatalogue,
    tastes: Tastes,
    user: np.ndarray,
    rank: np.ndarray,
    purchase: np.ndarray,
) -> np.ndarray:
    """Each session's leaf: fresh from the tastes, or the previous session's, or a complement of it."""
    tax = shop.taxonomy
    s = int(user.shape[0])
    dept = sample_rows(tastes.dept_cum[user], rng.random(s))
    any_leaf = sample_in_groups(shop.leaf_cum, tax.dept_leaf[0][dept], tax.dept_leaf[1][dept], rng.random(s))
    leaf = np.where(rng.random(s) < FAVOURITE_LEAF_PROB, tastes.fav_leaf[user, dept], any_leaf)
    leaf = np.where(shop.anchor[leaf] >= 0, leaf, _fallback_leaf(shop)[dept])
    stay = rng.random(s) < CONTINUE_PROB
    explore = rng.random(s) < COMPLEMENT_PROB
    u = rng.random(s)
    order = np.argsort(rank, kind="stable")
    ends = np.cumsum(np.bincount(rank))
    for r in range(1, ends.shape[0]):
        now = order[ends[r - 1] : ends[r]]  # the r-th session of every shopper who has one
        before = leaf[now - 1]
        comp = complement_of(shop, before, u[now])
        follow = np.where(explore[now] & purchase[now - 1] & (comp >= 0), comp, leaf[now])
        leaf[now] = np.where(stay[now], before, follow)
    return leaf


def _fallback_leaf(shop: SyntheticCatalogue) -> np.ndarray:
    """(D,) the most popular leaf of each department (used when a draw lands on an empty leaf)."""
    tax = shop.taxonomy
    weight = shop.leaf_weight
    return np.array([lo + int(np.argmax(weight[lo:hi])) for lo, hi in zip(*tax.dept_leaf, strict=True)])
