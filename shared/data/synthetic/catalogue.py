"""The synthetic shop's catalogue: items with product text, brands, prices, popularity and arrival times.

Every item belongs to one leaf ("Beauty > Skin Care > Moisturizers") and has a brand of its department, one
attribute of its leaf ("Hydrating"), a material, a size, a log-normal price set by department, leaf and
brand tier, and a latent popularity (log-normal x brand popularity). Most items exist before the period
starts; `new_item_fraction` of them arrive during it (the cold-start slice). Each non-empty leaf keeps one
"anchor" item that exists from the start, so a shopper can always find something in a leaf they visit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shared.config import SyntheticShopConfig
from shared.data.schema import Catalogue
from shared.data.synthetic.group_sampling import group_bounds, sample_in_groups
from shared.data.synthetic.taxonomy import Taxonomy, build_taxonomy
from shared.data.synthetic.vocab import Leaf, lower_words, with_article
from shared.errors import ConfigError

DAY_S = 86_400
LEAF_SIZE_SIGMA = 0.4  # spread of the number of items per leaf (log-normal)
BRAND_ZIPF = 0.9  # brand popularity within a department ~ 1 / rank^BRAND_ZIPF
BRAND_TIER_SIGMA = 0.25  # brands are cheaper or dearer than their department (log scale)
POPULARITY_SIGMA = 1.0  # item popularity ~ log-normal
PRE_START_MAX_DAYS = 3 * 365  # items that exist at the start were created up to this long before it
ASIN_SPACE = 36**8
ASIN_STRIDE = 2_654_435_761  # odd and not divisible by 3: i -> i * stride mod 36^8 is a bijection
BASE36 = np.array(list("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"))


@dataclass(frozen=True, eq=False)
class SyntheticCatalogue:
    """The public catalogue plus the latent item structure the shoppers' behaviour is drawn from."""

    catalogue: Catalogue
    taxonomy: Taxonomy
    leaf: np.ndarray  # (n_items,) int64 leaf id
    brand: np.ndarray  # (n_items,) int64 brand id
    attr: np.ndarray  # (n_items,) int64 attribute id
    rel_log_price: np.ndarray  # (n_items,) log price relative to the leaf's level, in units of its spread
    popularity: np.ndarray  # (n_items,) float64 > 0
    is_new: np.ndarray  # (n_items,) bool, arrives during the period
    by_leaf: np.ndarray  # (n_items,) item indices sorted by leaf
    leaf_bounds: tuple[np.ndarray, np.ndarray]  # (lo, hi) of each leaf's range in `by_leaf`
    item_cum: np.ndarray  # (n_items,) inclusive cumsum of popularity in `by_leaf` order
    leaf_cum: np.ndarray  # (n_leaves,) inclusive cumsum of each leaf's total popularity
    anchor: np.ndarray  # (n_leaves,) an item of the leaf that exists from the start, -1 for empty leaves

    @property
    def n_items(self) -> int:
        return self.catalogue.n_items

    @property
    def leaf_weight(self) -> np.ndarray:
        return np.diff(self.leaf_cum, prepend=0.0)


def build_catalogue(config: SyntheticShopConfig) -> SyntheticCatalogue:
    """The catalogue of the shop `config` describes (deterministic in config.seed)."""
    if config.seed < 0:
        raise ConfigError(f"synthetic shop seed must be >= 0, got {config.seed}")
    tax = build_taxonomy(config.n_categories)
    rng = np.random.default_rng([config.seed, 0])
    n = config.n_items
    leaf = _draw_leaves(rng, tax, n)
    brand_weight = _brand_weights(rng, tax)
    dept = tax.leaf_dept[leaf]
    brand_cum = np.cumsum(brand_weight)
    brand = sample_in_groups(brand_cum, tax.dept_brand[0][dept], tax.dept_brand[1][dept], rng.random(n))
    attr_pos = (rng.random(n) * tax.leaf_attr_count[leaf]).astype(np.int64)
    attr = tax.leaf_attr[leaf, attr_pos]
    price, rel_log_price = _draw_prices(rng, tax, leaf, brand)
    popularity = rng.lognormal(0.0, POPULARITY_SIGMA, n) * brand_weight[brand]
    anchor = _anchors(leaf, tax.n_leaves)
    is_new, created_at = _arrivals(rng, config, anchor)
    on_promotion = np.zeros(n, dtype=bool)
    on_promotion[rng.choice(n, size=round(config.promotion_fraction * n), replace=False)] = True
    titles, descriptions = _texts(rng, tax, leaf, brand, attr)
    catalogue = Catalogue(
        item_ids=[str(i) for i in range(n)],
        titles=titles,
        categories=[tax.departments[tax.leaf_dept[lf]].leaf_path(_leaf_obj(tax, lf)) for lf in leaf.tolist()],
        brands=[tax.brand_names[b] for b in brand.tolist()],
        descriptions=descriptions,
        price=price,
        created_at=created_at,
        on_promotion=on_promotion,
    )
    by_leaf = np.argsort(leaf, kind="stable")
    return SyntheticCatalogue(
        catalogue=catalogue,
        taxonomy=tax,
        leaf=leaf,
        brand=brand,
        attr=attr,
        rel_log_price=rel_log_price,
        popularity=popularity,
        is_new=is_new,
        by_leaf=by_leaf,
        leaf_bounds=group_bounds(leaf[by_leaf], tax.n_leaves),
        item_cum=np.cumsum(popularity[by_leaf]),
        leaf_cum=np.cumsum(np.bincount(leaf, weights=popularity, minlength=tax.n_leaves)),
        anchor=anchor,
    )


def asins(n_items: int, seed: int) -> list[str]:
    """Unique ASIN-like codes ("B0" + 8 base-36 characters) for items 0..n_items-1."""
    offset = np.random.default_rng([seed, 2]).integers(0, ASIN_SPACE)
    code = (np.arange(n_items, dtype=np.int64) * ASIN_STRIDE + offset) % ASIN_SPACE
    digits = np.empty((n_items, 8), dtype="<U1")
    for k in range(7, -1, -1):
        digits[:, k] = BASE36[code % 36]
        code //= 36
    return ["B0" + "".join(row) for row in digits.tolist()]


def _leaf_obj(tax: Taxonomy, leaf_id: int) -> Leaf:
    return tax.departments[tax.leaf_dept[leaf_id]].leaves[tax.leaf_local[leaf_id]]


def _draw_leaves(rng: np.random.Generator, tax: Taxonomy, n: int) -> np.ndarray:
    weight = rng.lognormal(0.0, LEAF_SIZE_SIGMA, tax.n_leaves)
    cum = np.cumsum(weight)
    leaf = np.searchsorted(cum, rng.random(n) * cum[-1], side="right")
    return np.minimum(leaf, tax.n_leaves - 1).astype(np.int64)


def _brand_weights(rng: np.random.Generator, tax: Taxonomy) -> np.ndarray:
    """Zipf-like brand popularity within each department (a random brand is the market leader), mean 1."""
    weight = np.empty(tax.n_brands)
    for lo, hi in zip(*tax.dept_brand, strict=True):
        ranks = rng.permutation(hi - lo) + 1
        w = 1.0 / ranks**BRAND_ZIPF
        weight[lo:hi] = w / w.mean()
    return weight


def _draw_prices(
    rng: np.random.Generator, tax: Taxonomy, leaf: np.ndarray, brand: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Prices ending in .99 (float32) and each item's log price relative to its leaf, in sigma units."""
    dept = tax.leaf_dept[leaf]
    median = np.array([d.price_median for d in tax.departments])[dept]
    factor = np.array([lf.price_factor for d in tax.departments for lf in d.leaves])[leaf]
    sigma = np.array([d.price_sigma for d in tax.departments])[dept]
    tier = rng.normal(0.0, BRAND_TIER_SIGMA, tax.n_brands)[brand]
    log_price = np.log(median * factor) + tier + rng.normal(0.0, 1.0, leaf.shape[0]) * sigma
    raw = np.exp(log_price)
    price = np.where(raw >= 2.0, np.floor(raw) + 0.99, np.round(raw, 2)).astype(np.float32)
    return price, (np.log(price.astype(np.float64)) - np.log(median * factor)) / sigma


def _anchors(leaf: np.ndarray, n_leaves: int) -> np.ndarray:
    anchor = np.full(n_leaves, -1, dtype=np.int64)
    present, first = np.unique(leaf, return_index=True)
    anchor[present] = first
    return anchor


def _arrivals(
    rng: np.random.Generator, config: SyntheticShopConfig, anchor: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Which items are new and every item's creation time (unix s). Anchors are never new."""
    n = config.n_items
    eligible = np.ones(n, dtype=bool)
    eligible[anchor[anchor >= 0]] = False
    candidates = np.flatnonzero(eligible)
    n_new = min(round(config.new_item_fraction * n), candidates.shape[0])
    is_new = np.zeros(n, dtype=bool)
    is_new[rng.choice(candidates, size=n_new, replace=False)] = True
    before = rng.integers(DAY_S, PRE_START_MAX_DAYS * DAY_S, n)
    after = rng.integers(0, config.duration_days * DAY_S, n)
    created_at = config.start_time_s + np.where(is_new, after, -before)
    return is_new, created_at.astype(np.int64)


def _texts(
    rng: np.random.Generator, tax: Taxonomy, leaf: np.ndarray, brand: np.ndarray, attr: np.ndarray
) -> tuple[list[str], list[str]]:
    """Titles and one-sentence descriptions from each department's templates."""
    u = rng.random((leaf.shape[0], 5))
    titles: list[str] = []
    descriptions: list[str] = []
    for i, lf in enumerate(leaf.tolist()):
        dept = tax.departments[tax.leaf_dept[lf]]
        obj = dept.leaves[tax.leaf_local[lf]]
        mats, sizes = dept.leaf_materials(obj), dept.leaf_sizes(obj)
        words = {
            "brand": tax.brand_names[brand[i]],
            "attr": tax.attr_names[attr[i]],
            "noun": obj.nouns[int(u[i, 0] * len(obj.nouns))],
            "material": mats[int(u[i, 1] * len(mats))],
            "size": sizes[int(u[i, 2] * len(sizes))],
            "audience": dept.audiences[int(u[i, 3] * len(dept.audiences))],
        }
        words.update({f"{k}_l": lower_words(words[k]) for k in ("attr", "noun", "material", "size")})
        words["a_attr"] = with_article(words["attr_l"])
        words["a_material"] = with_article(words["material_l"])
        titles.append(dept.title.format(**words))
        sentence = dept.descriptions[int(u[i, 4] * len(dept.descriptions))].format(**words)
        descriptions.append(sentence[:1].upper() + sentence[1:])
    return titles, descriptions
