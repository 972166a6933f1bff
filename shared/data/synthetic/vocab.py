"""Product vocabularies of the synthetic shop: departments, their sub-categories (leaves) and their words.

A department is one of the shop's categories ("Skin Care"); it owns brands, description templates, an
audience list, a price level and 4-7 leaves ("Beauty > Skin Care > Moisturizers"). A leaf owns its product
nouns and may override the department's attributes, materials and sizes, so that words stay meaningful
("Tempered Glass Screen Protector", never "Tempered Glass Headphones"). Lists are written as "a|b|c".
"""

from __future__ import annotations

from dataclasses import dataclass


def _split(words: str) -> tuple[str, ...]:
    return tuple(w.strip() for w in words.split("|") if w.strip())


@dataclass(frozen=True)
class Leaf:
    """A sub-category: its name (the path below the department), nouns and optional word overrides."""

    name: str
    nouns: tuple[str, ...]
    complements: tuple[str, ...] = ()  # names of leaves of the same department bought together with this one
    attributes: tuple[str, ...] = ()  # empty: the department's
    materials: tuple[str, ...] = ()
    sizes: tuple[str, ...] = ()
    price_factor: float = 1.0  # multiplies the department's median price


@dataclass(frozen=True)
class Department:
    """A top-level category of the shop with its vocabulary.

    `title` and `descriptions` are str.format templates over {brand} {attr} {material} {noun} {size}
    {audience}; descriptions also get lower-cased {attr_l} {material_l} {noun_l} {size_l}, and {a_attr}
    {a_material} with their article ("an anti-aging", "a hydrating").
    """

    name: str
    path: str  # category path above the leaves: "Beauty > Skin Care"
    brands: tuple[str, ...]
    attributes: tuple[str, ...]
    materials: tuple[str, ...]
    sizes: tuple[str, ...]
    audiences: tuple[str, ...]
    title: str
    descriptions: tuple[str, ...]
    price_median: float  # currency units
    price_sigma: float  # log-normal spread of prices within a leaf
    leaves: tuple[Leaf, ...]

    def leaf_attributes(self, leaf: Leaf) -> tuple[str, ...]:
        return leaf.attributes or self.attributes

    def leaf_materials(self, leaf: Leaf) -> tuple[str, ...]:
        return leaf.materials or self.materials

    def leaf_sizes(self, leaf: Leaf) -> tuple[str, ...]:
        return leaf.sizes or self.sizes

    def leaf_path(self, leaf: Leaf) -> str:
        return f"{self.path} > {leaf.name}"


def leaf(
    name: str,
    nouns: str,
    *,
    comps: str = "",
    attrs: str = "",
    mats: str = "",
    sizes: str = "",
    price: float = 1.0,
) -> Leaf:
    """A Leaf from "a|b|c" word lists."""
    return Leaf(name, _split(nouns), _split(comps), _split(attrs), _split(mats), _split(sizes), price)


def department(
    *,
    name: str,
    path: str,
    brands: str,
    audiences: str,
    title: str,
    descriptions: tuple[str, ...],
    price: tuple[float, float],
    leaves: tuple[Leaf, ...],
    attrs: str = "",
    mats: str = "",
    sizes: str = "",
) -> Department:
    """A Department from "a|b|c" word lists; price is (median, log-normal sigma)."""
    return Department(
        name=name,
        path=path,
        brands=_split(brands),
        attributes=_split(attrs),
        materials=_split(mats),
        sizes=_split(sizes),
        audiences=_split(audiences),
        title=title,
        descriptions=descriptions,
        price_median=price[0],
        price_sigma=price[1],
        leaves=leaves,
    )


def lower_words(text: str) -> str:
    """Lower-case a phrase for use inside a sentence, keeping acronyms ("SPF 50", "USB-C") as they are."""
    return " ".join(w if w.isupper() else w.lower() for w in text.split(" "))


def with_article(phrase: str) -> str:
    """ "an anti-aging" or "a hydrating"."""
    return ("an " if phrase[:1].lower() in "aeiou" else "a ") + phrase
