"""How a simulated shopper answers a homepage: a position-based click model driven by their latent tastes.

P(click on the card at section j, position p) = examination(j, p) * attractiveness(shopper, item), the
position-based model (Craswell et al. 2008; Chuklin et al. 2015): a card is seen with a probability that
falls with the section's place on the page (SECTION_DECAY ** j) and the card's place in it
(1 / (1 + p) ** POSITION_POWER), and clicked when seen with a probability that depends only on how well the
item fits the shopper. A cart follows a click with probability CART_GIVEN_CLICK * attractiveness, a
purchase follows a cart with probability sqrt(buy rate) (the shopper's purchase propensity).

Attractiveness is a logistic function of what the synthetic shop draws its sessions from, so that a model
that predicts the shop's next item well also earns clicks: the item's latent popularity within its leaf (in
a leaf the shop picks an item with probability proportional to popularity x exp(taste score):
shared/data/synthetic/session_events.py, whose weights of brand, attribute, price and promotion are used
here too; which leaf, the shopper's tastes and needs decide) and the shopper's latent tastes
(shared/data/synthetic/shoppers.py: Tastes): their share of the item's department, their favourite leaf,
brand and attribute there, their price level, and today's need (the intent leaf of the day, which the
shopper may already have browsed before opening the app). The model never sees any of it; it only sees the
events.

Deterministic: every draw comes from the uniforms the caller passes (simulation/online_loop.py draws them
from (seed, day) so that every arm's shoppers face the same coins at the same page slot).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shared.data.synthetic.catalogue import SyntheticCatalogue
from shared.data.synthetic.session_events import W_ATTR, W_BRAND, W_PRICE, W_PROMO
from shared.data.synthetic.shoppers import Tastes

SECTION_DECAY = 0.6  # the j-th section of the page (0 = top) is examined with this ** j
POSITION_POWER = 0.8  # the p-th card of a section (0 = first) with 1 / (1 + p) ** POSITION_POWER
ATTRACT_BIAS = -3.0  # logit of an item of an average department that matches nothing the shopper likes
W_DEPT = 1.0  # x log(D * the shopper's share of the item's department), clipped to [DEPT_FLOOR, 1]
DEPT_FLOOR = -3.0
W_POP = 1.0  # x log(popularity / the mean popularity of the item's leaf), clipped to +-POP_CLIP
POP_CLIP = 3.0
W_LEAF = 1.0  # the shopper's favourite leaf of the department
W_INTENT = 2.0  # the leaf of today's need
CART_GIVEN_CLICK = 0.4  # x attractiveness
UNIFORMS_PER_CARD = 3  # click, cart, purchase


@dataclass(frozen=True)
class Responses:
    """The shopper's answers, one value per card shown (bool arrays of the cards' shape)."""

    click: np.ndarray
    cart: np.ndarray  # only where clicked
    purchase: np.ndarray  # only where carted


class ClickModel:
    """Clicks, carts and purchases of shoppers with `tastes` on the items of `shop`."""

    def __init__(self, shop: SyntheticCatalogue, tastes: Tastes) -> None:
        self.shop, self.tastes = shop, tastes
        self.dept = shop.taxonomy.leaf_dept[shop.leaf]  # (n_items,)
        share = np.diff(tastes.dept_cum, axis=1, prepend=0.0)  # (n_shoppers, D)
        self.share = share / np.maximum(share.sum(axis=1, keepdims=True), 1e-12)
        leaf_mean = np.bincount(shop.leaf, weights=shop.popularity) / np.maximum(np.bincount(shop.leaf), 1)
        relative = np.log(shop.popularity / leaf_mean[shop.leaf])
        self.appeal = W_POP * np.clip(relative, -POP_CLIP, POP_CLIP)  # (n_items,)

    @staticmethod
    def examination(section: np.ndarray, position: np.ndarray) -> np.ndarray:
        """P(the card is seen) at 0-based `section` (its place on the page) and `position` (in it)."""
        return (
            SECTION_DECAY ** np.asarray(section, dtype=np.float64)
            / (1.0 + np.asarray(position, dtype=np.float64)) ** POSITION_POWER
        )

    def attractiveness(self, shopper: np.ndarray, item: np.ndarray, intent: np.ndarray) -> np.ndarray:
        """P(click | seen) of catalogue rows `item` for shoppers `shopper` whose need today is leaf
        `intent` (-1: none); all three of one shape."""
        shop, tastes = self.shop, self.tastes
        dept = self.dept[item]
        n_depts = self.share.shape[1]
        logit = (
            ATTRACT_BIAS
            + self.appeal[item]
            + W_DEPT
            * np.clip(np.log(np.maximum(n_depts * self.share[shopper, dept], 1e-12)), DEPT_FLOOR, 1.0)
        )
        logit += W_LEAF * (shop.leaf[item] == tastes.fav_leaf[shopper, dept])
        logit += W_BRAND * (shop.brand[item] == tastes.fav_brand[shopper, dept])
        logit += W_ATTR * (shop.attr[item] == tastes.fav_attr[shopper, dept])
        logit -= W_PRICE * (shop.rel_log_price[item] - tastes.price_z[shopper]) ** 2
        logit += W_PROMO * shop.catalogue.on_promotion[item]
        logit += W_INTENT * (shop.leaf[item] == intent)
        return np.asarray(1.0 / (1.0 + np.exp(-logit)))

    def respond(
        self,
        shopper: np.ndarray,
        item: np.ndarray,
        intent: np.ndarray,
        section: np.ndarray,
        position: np.ndarray,
        uniforms: np.ndarray,
    ) -> Responses:
        """The answers to cards (all arrays of one shape S; `uniforms` of shape S + (3,), in [0, 1))."""
        if uniforms.shape != (*np.shape(item), UNIFORMS_PER_CARD):
            raise ValueError(f"uniforms must have shape {(*np.shape(item), UNIFORMS_PER_CARD)}")
        attractive = self.attractiveness(shopper, item, intent)
        click = uniforms[..., 0] < self.examination(section, position) * attractive
        cart = click & (uniforms[..., 1] < CART_GIVEN_CLICK * attractive)
        purchase = cart & (uniforms[..., 2] < np.sqrt(self.tastes.buy_rate[shopper]))
        return Responses(click, cart, purchase)
