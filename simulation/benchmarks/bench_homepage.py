"""Benchmark of the homepage's rules (client/device/homepage.py) on a release of the synthetic shop.

    python -m simulation.benchmarks.bench_homepage                      # 300 shoppers, 2 training epochs
    python -m simulation.benchmarks.bench_homepage --title-only         # the same shop without category,
                                                                        # brand or description
    python -m simulation.benchmarks.bench_homepage --diversity 0 0.1 0.2 0.3 0.5 --epochs 0

Builds the built-in synthetic shop (--items, --users; seed 7), embeds its item text with the configured
MiniLM encoder (embedding cache; with --title-only the catalogue and the release carry titles only), trains
the two-tower model centrally for --epochs epochs on the leave-one-out training rows (0: the model at
initialisation, whose item vectors are the text vectors), signs a release with a throwaway key and opens it
with DeviceRanker (int8 two-stage scoring, one thread). Each of --shoppers evaluated shoppers (seeded pick)
gets the homepage of their training rows (views, carts, purchases, favourites) at the time of their next row.

One JSON line per --diversity value (HomepageRules.diversity, the other rules at their defaults). Figures are
means over shoppers; the shop's latent structure (leaf, department, complement leaves) is the truth, also
for --title-only, whose release knows nothing of it:
- for_you_ils: intra-list similarity of For you (mean pairwise cosine of its item vectors); for_you_ils_plain:
  the same page with diversity 0; score_loss: mean For-you score given up per card against diversity 0,
  in the model's score units (and as a share of the plain list's score spread, score_loss_share);
- for_you_hit / page_hit: share of shoppers whose next item (when it is not already in their history) is in
  For you / anywhere on the page;
- near_dup_pairs: pairs of near-duplicate titles (word-set Jaccard >= 0.5) per For-you page, and
  near_dup_pages: share of pages with at least one;
- explained: share of the page's cards that carry a reason (a "Because you ..." section);
- viewed_leaf / viewed_department / viewed_cards: share of "Because you viewed X" items in X's leaf or
  department, and cards per such section;
- bought_complement / bought_leaf / bought_department / bought_other / bought_cards: share of "Because you
  bought X" items in a complement leaf of X's, in X's own leaf (substitutes), elsewhere in X's department,
  in another department; and cards per such section;
- compose_ms_p50 / p99: time to compose one page on this machine (one thread, int8 path).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from client.device.homepage import Homepage, HomepageRules, Section, intra_list_similarity
from client.device.ranker import DeviceRanker, Event
from shared.config import EvalConfig, ModelConfig, SyntheticShopConfig, TrainConfig
from shared.data.schema import EVENT_TYPES, Catalogue
from shared.data.split import Split, leave_one_out
from shared.data.synthetic.catalogue import SyntheticCatalogue, build_catalogue
from shared.data.synthetic.shop import generate_shop

NEAR_DUPLICATE_JACCARD = 0.5
Compose = Callable[[list[Event], int, set[str]], list[Section]]


@dataclass(frozen=True)
class Shopper:
    history: list[Event]
    now: int
    next_item: str  # the item of the shopper's next row


@dataclass(frozen=True)
class Truth:
    """The synthetic shop's latent structure, by release row."""

    leaf: np.ndarray  # (N,) leaf id
    department: np.ndarray  # (N,) department id
    complements: list[set[int]]  # complement leaf ids of each leaf


def title_only(catalogue: Catalogue) -> Catalogue:
    """The catalogue as a shop that has titles only (no category, brand or description)."""
    blank = [""] * catalogue.n_items
    return dataclasses.replace(catalogue, categories=blank, brands=blank, descriptions=blank)


def build_release(
    shop: SyntheticShopConfig, catalogue: Catalogue, split: Split, epochs: int, root: Path
) -> Path:
    """A signed release (throwaway key) of the two-tower model on `catalogue`, trained `epochs` epochs."""
    import torch

    from server.embedding.catalogue_embedding import embed_catalogue
    from server.releases.release_builder import ReleaseSource
    from server.releases.release_store import ReleaseStore
    from shared.config import EncoderConfig
    from shared.model import ItemFeatures, TwoTower
    from shared.signing import generate_private_key
    from simulation.central_training import train

    table = embed_catalogue(catalogue, EncoderConfig(threads=1), progress=False)
    features = ItemFeatures.from_catalogue(catalogue, table.vectors)
    torch.manual_seed(0)
    if epochs:
        config = TrainConfig(epochs=epochs, refit=False, threads=1, patience=epochs)
        model = train(
            split,
            features,
            model_config=ModelConfig(),
            train_config=config,
            eval_config=EvalConfig(),
            progress=False,
        ).model
    else:
        model = TwoTower(features, ModelConfig())
    privacy = {"unit": "user", "epsilon": 0.0, "delta": 0.0, "ledger_head": "", "ledger_entries": 0}
    encoder = {"name": table.encoder_id, "backend": table.backend, "item_text_vectors_sha256": ""}
    store = ReleaseStore(root)
    source = ReleaseSource(f"bench-homepage-{shop.seed}", "", epochs, encoder, privacy)
    return store.folder(store.publish(model, catalogue, source, generate_private_key()))


def pick_shoppers(split: Split, count: int, seed: int) -> list[Shopper]:
    """Evaluated shoppers (seeded pick): their training rows as history, the validation row as what comes
    next (its time is the request time)."""
    ids = split.dataset.catalogue.item_ids
    rng = np.random.default_rng(seed)
    users = rng.choice(split.eval_users, size=min(count, len(split.eval_users)), replace=False)
    full, shoppers = split.full, []
    for user in sorted(int(u) for u in users):
        lo, hi = int(full.offsets[user]), int(full.offsets[user + 1]) - 2  # the last two: valid, test
        history = [
            Event(ids[int(full.items[r])], EVENT_TYPES[int(full.events[r])], int(full.timestamps[r]))
            for r in range(lo, hi)
        ]
        shoppers.append(Shopper(history, int(full.timestamps[hi]), ids[int(full.items[hi])]))
    return shoppers


def truth_of(latent: SyntheticCatalogue, ranker: DeviceRanker) -> Truth:
    tax = latent.taxonomy
    rows = np.array([latent.catalogue.index_of(item["id"]) for item in ranker.items])
    complements = [
        set(tax.complements[leaf, : tax.complement_count[leaf]].tolist()) for leaf in range(tax.n_leaves)
    ]
    leaf = latent.leaf[rows]
    return Truth(leaf, tax.leaf_dept[leaf], complements)


def near_duplicate_pairs(titles: list[str]) -> int:
    """Pairs of titles whose word sets have a Jaccard similarity >= NEAR_DUPLICATE_JACCARD."""
    words = [set(re.findall(r"[a-z0-9]+", t.lower())) for t in titles]
    return sum(
        len(a & b) >= NEAR_DUPLICATE_JACCARD * len(a | b) for i, a in enumerate(words) for b in words[i + 1 :]
    )


Add = Callable[[str, float], None]


def measure(
    ranker: DeviceRanker, compose: Compose, shoppers: list[Shopper], truth: Truth, plain: Compose | None
) -> dict[str, Any]:
    """The figures of the module docstring for one way of composing pages (`plain`: the same rules at
    diversity 0, for the score loss; None: skip it)."""
    sums: dict[str, list[float]] = {}

    def add(name: str, value: float) -> None:
        sums.setdefault(name, []).append(value)

    times = []
    for shopper in shoppers:
        purchased = {e.item_id for e in shopper.history if e.event == "purchase"}
        start = time.perf_counter()
        page = compose(shopper.history, shopper.now, purchased)
        times.append(1_000 * (time.perf_counter() - start))
        cards = [c for s in page for c in s.cards]
        add("explained", sum(c.reason is not None for c in cards) / max(len(cards), 1))
        if shopper.next_item not in {e.item_id for e in shopper.history}:
            add("page_hit", shopper.next_item in {c.item_id for c in cards})
        for section in page:
            if section.key == "for_you":
                base = None if plain is None else plain(shopper.history, shopper.now, purchased)
                for_you_figures(ranker, shopper, section, base, add)
            elif section.key in ("because", "bought"):
                reason_figures(ranker, shopper, section, truth, add)
        add("viewed_sections", sum(s.key == "because" for s in page))
        add("bought_sections", sum(s.key == "bought" for s in page))
    out: dict[str, Any] = {name: round(float(np.mean(v)), 4) for name, v in sums.items()}
    out["compose_ms_p50"] = round(float(np.percentile(times, 50)), 2)
    out["compose_ms_p99"] = round(float(np.percentile(times, 99)), 2)
    return out


def for_you_figures(
    ranker: DeviceRanker, shopper: Shopper, section: Section, plain: list[Section] | None, add: Add
) -> None:
    """Intra-list similarity, near-duplicate titles and hits of For you; against `plain` (the page at
    diversity 0), the score given up and its similarity."""
    rows = np.array([ranker.index[c.item_id] for c in section.cards])
    add("for_you_ils", intra_list_similarity(ranker.item_vectors(rows)))
    pairs = near_duplicate_pairs([c.title for c in section.cards])
    add("near_dup_pairs", pairs)
    add("near_dup_pages", pairs > 0)
    if shopper.next_item not in {e.item_id for e in shopper.history}:
        add("for_you_hit", shopper.next_item in {c.item_id for c in section.cards})
    user = ranker.user_vector(shopper.history, shopper.now)
    if plain is None or user is None:
        return
    base = next(s for s in plain if s.key == "for_you")
    base_rows = np.array([ranker.index[c.item_id] for c in base.cards])
    scores = ranker.scores(user)
    loss = float(scores[base_rows].mean() - scores[rows].mean())
    add("score_loss", loss)
    add("score_loss_share", loss / (float(np.ptp(scores[base_rows])) or 1.0))
    add("for_you_ils_plain", intra_list_similarity(ranker.item_vectors(base_rows)))


def reason_figures(ranker: DeviceRanker, shopper: Shopper, section: Section, truth: Truth, add: Add) -> None:
    """Where a "Because you viewed/bought X" section's items sit in the shop's structure relative to X."""
    rows = np.array([ranker.index[c.item_id] for c in section.cards])
    reason = reason_row(ranker, shopper, section.cards[0].reason)
    leaf = truth.leaf[reason]
    same_leaf = truth.leaf[rows] == leaf
    same_dept = truth.department[rows] == truth.department[reason]
    if section.key == "because":
        add("viewed_leaf", float(same_leaf.mean()))
        add("viewed_department", float(same_dept.mean()))
        add("viewed_cards", len(rows))
        return
    complement = np.isin(truth.leaf[rows], list(truth.complements[leaf]))
    add("bought_complement", float(complement.mean()))
    add("bought_leaf", float(same_leaf.mean()))
    add("bought_department", float((same_dept & ~same_leaf & ~complement).mean()))
    add("bought_other", float((~same_dept & ~complement).mean()))
    add("bought_cards", len(rows))


def reason_row(ranker: DeviceRanker, shopper: Shopper, title: str | None) -> int:
    """The row of the newest history item titled `title` (a card's reason)."""
    for event in sorted(shopper.history, key=lambda e: -e.timestamp):
        row = ranker.index[event.item_id]
        if ranker.items[row]["title"] == title:
            return row
    raise ValueError(f"no history item is titled {title!r}")


def composer(ranker: DeviceRanker, rules: HomepageRules) -> Compose:
    homepage = Homepage(ranker, rules)

    def compose(history: list[Event], now: int, purchased: set[str]) -> list[Section]:
        return homepage.compose(history, now, purchased=purchased)

    return compose


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--items", type=int, default=2_000)
    parser.add_argument("--users", type=int, default=3_000)
    parser.add_argument("--shoppers", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=2, help="central training epochs (0: untrained)")
    parser.add_argument("--title-only", action="store_true", help="a catalogue of titles only")
    parser.add_argument("--diversity", type=float, nargs="+", default=[0.0, HomepageRules().diversity])
    parser.add_argument("--seed", type=int, default=0, help="which shoppers are picked")
    args = parser.parse_args(argv)
    shop = SyntheticShopConfig(n_users=args.users, n_items=args.items)
    dataset = generate_shop(shop)
    if args.title_only:
        dataset = dataclasses.replace(dataset, catalogue=title_only(dataset.catalogue))
    split = leave_one_out(dataset)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-homepage-") as tmp:
        folder = build_release(shop, dataset.catalogue, split, args.epochs, Path(tmp))
        built_s = time.perf_counter() - start
        ranker = DeviceRanker(folder)
        truth = truth_of(build_catalogue(shop), ranker)
        shoppers = pick_shoppers(split, args.shoppers, args.seed)
        setting = {
            "items": args.items,
            "shoppers": len(shoppers),
            "epochs": args.epochs,
            "title_only": args.title_only,
        }
        print(json.dumps({**setting, "release_built_s": round(built_s, 1)}), flush=True)
        plain = composer(ranker, HomepageRules(diversity=0.0))
        for diversity in args.diversity:
            compose = composer(ranker, HomepageRules(diversity=diversity))
            figures = measure(ranker, compose, shoppers, truth, plain if diversity else None)
            print(json.dumps({"diversity": diversity, **figures}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
