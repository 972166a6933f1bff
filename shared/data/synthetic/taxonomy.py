"""Index tables over the departments a synthetic shop uses: leaves, brands and attributes as dense ids.

Each department's leaves, brands and attributes are contiguous id ranges, so that "a leaf of department d"
is the range dept_leaf_lo[d]:dept_leaf_hi[d] and can be sampled with `sampling.sample_in_groups`.
Built from the vocabularies alone: no randomness here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shared.data.synthetic.vocab import Department
from shared.data.synthetic.vocab_beauty import HAIR_CARE, MAKEUP, SKIN_CARE
from shared.data.synthetic.vocab_everyday import CLOTHING, ELECTRONICS, GROCERY, PETS
from shared.data.synthetic.vocab_home import HOME, KITCHEN, OFFICE
from shared.data.synthetic.vocab_leisure import BOOKS, CAMPING, FITNESS, TOYS
from shared.errors import ConfigError

# In this order: a shop with n_categories departments uses the first n (the default 12 stops at CLOTHING).
DEPARTMENTS: tuple[Department, ...] = (
    SKIN_CARE,
    MAKEUP,
    HAIR_CARE,
    ELECTRONICS,
    KITCHEN,
    HOME,
    FITNESS,
    TOYS,
    BOOKS,
    GROCERY,
    PETS,
    CLOTHING,
    CAMPING,
    OFFICE,
)


@dataclass(frozen=True, eq=False)
class Taxonomy:
    """Dense ids of the leaves, brands and attributes of the departments in use."""

    departments: tuple[Department, ...]
    leaf_dept: np.ndarray  # (n_leaves,) int64 department of each leaf
    leaf_local: np.ndarray  # (n_leaves,) int64 position of the leaf in its department's `leaves`
    dept_leaf: tuple[np.ndarray, np.ndarray]  # (lo, hi) leaf id range of each department
    brand_dept: np.ndarray  # (n_brands,) int64
    dept_brand: tuple[np.ndarray, np.ndarray]  # (lo, hi) brand id range of each department
    brand_names: tuple[str, ...]
    attr_names: tuple[str, ...]  # attribute ids are unique per (department, word)
    dept_attr: tuple[np.ndarray, np.ndarray]  # (lo, hi) attribute id range of each department
    leaf_attr: np.ndarray  # (n_leaves, max_attrs) int64 attribute ids of each leaf, -1 padded
    leaf_attr_count: np.ndarray  # (n_leaves,) int64
    complements: np.ndarray  # (n_leaves, max_complements) int64 leaf ids, -1 padded
    complement_count: np.ndarray  # (n_leaves,) int64

    @property
    def n_departments(self) -> int:
        return len(self.departments)

    @property
    def n_leaves(self) -> int:
        return int(self.leaf_dept.shape[0])

    @property
    def n_brands(self) -> int:
        return len(self.brand_names)


def _ranges(counts: list[int]) -> tuple[np.ndarray, np.ndarray]:
    hi = np.cumsum(np.asarray(counts, dtype=np.int64))
    return hi - np.asarray(counts, dtype=np.int64), hi


def _padded(rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    width = max(1, max(len(r) for r in rows))
    table = np.full((len(rows), width), -1, dtype=np.int64)
    for i, row in enumerate(rows):
        table[i, : len(row)] = row
    return table, np.asarray([len(r) for r in rows], dtype=np.int64)


def _attribute_ids(departments: tuple[Department, ...]) -> tuple[list[str], list[int], list[list[int]]]:
    """Attribute words numbered per department (first appearance order) and each leaf's attribute ids."""
    names: list[str] = []
    per_dept: list[int] = []
    leaf_attrs: list[list[int]] = []
    for dept in departments:
        ids: dict[str, int] = {}
        for lf in dept.leaves:
            for word in dept.leaf_attributes(lf):
                if word not in ids:
                    ids[word] = len(names)
                    names.append(word)
            leaf_attrs.append([ids[w] for w in dept.leaf_attributes(lf)])
        per_dept.append(len(ids))
    return names, per_dept, leaf_attrs


def _complement_ids(departments: tuple[Department, ...], dept_leaf_lo: np.ndarray) -> list[list[int]]:
    rows: list[list[int]] = []
    for d, dept in enumerate(departments):
        local = {lf.name: i for i, lf in enumerate(dept.leaves)}
        for lf in dept.leaves:
            unknown = [c for c in lf.complements if c not in local]
            if unknown:
                raise ConfigError(
                    f"department {dept.name!r}: leaf {lf.name!r} has unknown complements {unknown}"
                )
            rows.append([int(dept_leaf_lo[d]) + local[c] for c in lf.complements])
    return rows


def build_taxonomy(n_departments: int) -> Taxonomy:
    """The taxonomy of the first `n_departments` departments of the built-in vocabulary."""
    if not 1 <= n_departments <= len(DEPARTMENTS):
        raise ConfigError(
            f"the synthetic shop has {len(DEPARTMENTS)} departments; n_categories={n_departments} asked"
        )
    departments = DEPARTMENTS[:n_departments]
    dept_leaf = _ranges([len(d.leaves) for d in departments])
    dept_brand = _ranges([len(d.brands) for d in departments])
    attr_names, attrs_per_dept, leaf_attrs = _attribute_ids(departments)
    leaf_attr, leaf_attr_count = _padded(leaf_attrs)
    complements, complement_count = _padded(_complement_ids(departments, dept_leaf[0]))
    return Taxonomy(
        departments=departments,
        leaf_dept=np.repeat(np.arange(n_departments), [len(d.leaves) for d in departments]),
        leaf_local=np.concatenate([np.arange(len(d.leaves)) for d in departments]),
        dept_leaf=dept_leaf,
        brand_dept=np.repeat(np.arange(n_departments), [len(d.brands) for d in departments]),
        dept_brand=dept_brand,
        brand_names=tuple(b for d in departments for b in d.brands),
        attr_names=tuple(attr_names),
        dept_attr=_ranges(attrs_per_dept),
        leaf_attr=leaf_attr,
        leaf_attr_count=leaf_attr_count,
        complements=complements,
        complement_count=complement_count,
    )
