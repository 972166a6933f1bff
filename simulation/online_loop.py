"""The online loop, simulated: shoppers live with each arm's homepage day by day; the arms learn overnight.

One world per arm, all on the same shoppers and the same coins. Before day 0 every shopper's device holds
their log of the synthetic shop (shared/data/synthetic: the sessions of its whole period). Each day:
- the same shoppers visit in every arm (`plan_day`: P(visit) = online.visit_rate x their session rate); each
  has a need today (an intent leaf drawn from their tastes), and with online.organic_rate browses the shop
  for it outside the homepage first (the same events in every arm: even an arm showing poor pages learns
  something);
- each visitor's device composes the homepage from the arm's current release (client/device/homepage.py's
  Homepage over client/device/ranker.py's DeviceRanker, the release verified and installed by the SDK's
  ReleaseCache), from the device's own log;
- the shopper clicks, carts and buys by simulation/click_model.py, with the uniforms of (seed, day, page
  slot): every arm's shopper faces the same coin at the same slot (common random numbers);
- the events land in the device's log (an SDK EventStore per shopper with online.event_store "sqlite", else
  in memory with the same Event tuples);
- overnight each arm learns and ships tomorrow's release: "popularity" counts the shop's events so far;
  "text" keeps the untrained start (text similarity); "federated" runs online.rounds_per_day rounds of the
  server's Coordinator (Poisson sampling, clipping, noise, PLD accountant, signed ledger) whose update
  transport (`InProcessNodes`) calls the devices' real LocalTrainer.clipped_sum on examples built from
  their own logs by shared/data/device_rows.py; "central" takes Adam steps on every shopper's raw events,
  warm-started from the night before (the non-private upper reference).
Measured per day and arm: For you's CTR, add-to-cart and purchase rates (per card shown), catalogue
coverage and intra-list diversity (1 - mean pairwise cosine of the text vectors), and the bytes a device
downloads (the files of the new release that changed since the one it holds) and holds.

Flower's simulation engine is not used: Ray's start costs ~20 s per run, and the loop runs its rounds a
few at a time every simulated night. The Coordinator, the LocalTrainer and the accountant are the ones
Flower runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from tqdm import tqdm

from client.device.device_folder import events_path, releases_path
from client.device.event_store import EventStore
from client.device.homepage import Homepage, HomepageRules, Section
from client.device.ranker import DeviceRanker, Event
from client.device.release_cache import ReleaseCache, copy_from
from client.training.round_update import LocalTrainer
from server.embedding.catalogue_embedding import embed_catalogue
from server.ledger import PrivacyLedger
from server.releases.release_builder import ReleaseSource
from server.releases.release_store import ReleaseStore
from server.rounds.coordinator import Coordinator
from server.rounds.messaging import Population, TrainReplies
from server.rounds.update_transport import CollectedUpdates, RoundRequest
from server.strategy import check_update_sum
from shared.config import FLAT_SUFFIX, FedhomeConfig, OnlineConfig, to_flat, with_overrides
from shared.data.device_rows import sequences_from_logs
from shared.data.schema import EVENT_TYPES, Catalogue
from shared.data.split import UserSequences
from shared.data.synthetic.catalogue import DAY_S, SyntheticCatalogue, build_catalogue
from shared.data.synthetic.group_sampling import sample_in_groups, sample_rows
from shared.data.synthetic.session_events import choose_items
from shared.data.synthetic.shop import generate_shop, shopper_tastes
from shared.data.synthetic.shoppers import FAVOURITE_LEAF_PROB, HOUR_WEIGHTS, Tastes
from shared.derived_items import derived_names
from shared.errors import BudgetExhaustedError, ConfigError
from shared.model import ItemFeatures, TwoTower
from shared.model.features import popularity_from_counts, recent_item_counts
from shared.model.params import ParamLayout, get_flat, params_sha256, set_flat, trainable_layout
from shared.release_manifest import MANIFEST_NAME, read_manifest
from shared.run_folder import RunFolder, write_json_atomic
from shared.signing import Ed25519PrivateKey, generate_private_key, save_public_key
from simulation.central_training import Trainer, set_threads
from simulation.click_model import UNIFORMS_PER_CARD, ClickModel

log = logging.getLogger(__name__)

MAX_EVENTS = 1_000  # what a device's log keeps (EventStore's default retention), in memory too
ORGANIC_MAX_VIEWS = 3  # views of an organic browse ~ geometric(1/2), capped
ORGANIC_CART_PROB = 0.25  # an organic browse carts its last view; a purchase follows with the buy rate
ORGANIC_LEAD_S = (600, 3_600)  # the browse starts this long before the visit (uniform)
CARD_GAP_S = 20  # a page's clicks follow one another this far apart; carts and purchases in between
CENTRAL_BATCH = 256
MAX_SECTIONS = 12  # sections of a page the coins are drawn for (the homepage composes at most 8 today)


# -- the world every arm shares ---------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class OnlineWorld:
    """The shop, its shoppers' latent tastes, their logs before day 0 and the catalogue's text vectors."""

    online: OnlineConfig
    base: FedhomeConfig  # model, federated, privacy and train settings of the arms
    shop: SyntheticCatalogue
    tastes: Tastes
    text_vectors: np.ndarray  # (n_items, E) float32 unit rows
    encoder: dict[str, str]  # what the releases say about the encoder
    prior_logs: list[list[Event]]  # per shopper, oldest first
    start_s: int  # day 0, 00:00 UTC: the end of the shop's period

    @property
    def catalogue(self) -> Catalogue:
        return self.shop.catalogue

    @property
    def n_shoppers(self) -> int:
        return len(self.prior_logs)

    def day_start(self, day: int) -> int:
        return self.start_s + day * DAY_S


def build_world(online: OnlineConfig, base: FedhomeConfig, *, progress: bool = False) -> OnlineWorld:
    """The synthetic shop of `base.data.synthetic` at online.shoppers x online.items, embedded."""
    shop_config = dataclasses.replace(base.data.synthetic, n_users=online.shoppers, n_items=online.items)
    shop = build_catalogue(shop_config)
    dataset = generate_shop(shop_config)
    table = embed_catalogue(dataset.catalogue, base.encoder, progress=progress)
    ids = dataset.catalogue.item_ids
    logs: list[list[Event]] = [[] for _ in range(online.shoppers)]
    rows = dataset.log
    columns = (rows.user.tolist(), rows.item.tolist(), rows.timestamp.tolist(), rows.event.tolist())
    for u, i, t, e in zip(*columns, strict=True):
        logs[u].append(Event(ids[i], EVENT_TYPES[e], int(t)))
    encoder = {
        "name": base.encoder.model_name,
        "backend": table.backend,
        "item_text_vectors_sha256": hashlib.sha256(table.vectors.tobytes()).hexdigest(),
    }
    start = shop_config.start_time_s + shop_config.duration_days * DAY_S
    return OnlineWorld(
        online, base, shop, shopper_tastes(shop, shop_config), table.vectors, encoder, logs, start
    )


# -- one day's visits, needs and coins (the same in every arm) --------------------------------------------
@dataclass(frozen=True, eq=False)
class DayPlan:
    """Who visits on `day`, when, with which need, what they browse first, and the coins of their page."""

    day: int
    shoppers: np.ndarray  # (m,) int64, sorted
    visit_s: np.ndarray  # (m,) int64 unix seconds
    intent: np.ndarray  # (m,) int64 leaf of today's need (-1: none)
    organic: list[list[Event]]  # (m,) events browsed before the visit (often none)
    uniforms: np.ndarray  # (m, slots, 3) float64 in [0, 1): the coins of each page slot


def page_slots(online: OnlineConfig) -> int:
    """Coins drawn per page: room for MAX_SECTIONS sections (a larger page is refused, never given fresh
    coins)."""
    return MAX_SECTIONS * online.section_size


def plan_day(world: OnlineWorld, day: int) -> DayPlan:
    """Day `day`'s visits, drawn from (online.seed, day) alone: the same in every arm."""
    online, tastes = world.online, world.tastes
    rng = np.random.default_rng([online.seed, 1, day])
    rate = tastes.n_sessions / tastes.n_sessions.mean()
    shoppers = np.flatnonzero(rng.random(world.n_shoppers) < np.minimum(1.0, online.visit_rate * rate))
    m = shoppers.size
    hour = rng.choice(24, size=m, p=HOUR_WEIGHTS / HOUR_WEIGHTS.sum())
    visit = world.day_start(day) + hour * 3_600 + rng.integers(0, 3_600, m)
    intent = intent_leaves(rng, world, shoppers)
    browses = (rng.random(m) < online.organic_rate) & (intent >= 0)
    organic = organic_browsing(rng, world, shoppers, intent, visit, browses)
    uniforms = rng.random((m, page_slots(online), UNIFORMS_PER_CARD))
    return DayPlan(day, shoppers, visit.astype(np.int64), intent, organic, uniforms)


def intent_leaves(rng: np.random.Generator, world: OnlineWorld, shoppers: np.ndarray) -> np.ndarray:
    """(m,) today's need of each shopper, as a fresh session of the shop draws its leaf: a department by
    their mix, then their favourite leaf there or any leaf by popularity (-1 where the leaf is empty)."""
    shop, tastes, m = world.shop, world.tastes, shoppers.size
    tax = shop.taxonomy
    dept = sample_rows(tastes.dept_cum[shoppers], rng.random(m))
    any_leaf = sample_in_groups(shop.leaf_cum, tax.dept_leaf[0][dept], tax.dept_leaf[1][dept], rng.random(m))
    leaf = np.where(rng.random(m) < FAVOURITE_LEAF_PROB, tastes.fav_leaf[shoppers, dept], any_leaf)
    return np.where(shop.anchor[leaf] >= 0, leaf, -1).astype(np.int64)


def organic_browsing(
    rng: np.random.Generator,
    world: OnlineWorld,
    shoppers: np.ndarray,
    intent: np.ndarray,
    visit: np.ndarray,
    browses: np.ndarray,
) -> list[list[Event]]:
    """The events of each browsing shopper's short session in their intent leaf before their visit: views
    chosen by the shop's own item choice (its tastes, the previous item), maybe a cart and a purchase."""
    out: list[list[Event]] = [[] for _ in range(shoppers.size)]
    who = np.flatnonzero(browses)
    if who.size == 0:
        return out
    ids = world.catalogue.item_ids
    lead = rng.integers(*ORGANIC_LEAD_S, who.size)
    start = np.maximum(visit[who] - lead, visit[who] - visit[who] % DAY_S)
    views = np.minimum(rng.geometric(0.5, who.size), ORGANIC_MAX_VIEWS)
    prev = np.full(who.size, -1, dtype=np.int64)
    for step in range(ORGANIC_MAX_VIEWS):
        t = start + 40 * step
        item = choose_items(rng, world.shop, world.tastes, shoppers[who], intent[who], t, prev)
        for k in np.flatnonzero(views > step).tolist():
            out[who[k]].append(Event(ids[item[k]], "view", int(t[k])))
        prev = np.where(views > step, item, prev)
    cart = rng.random(who.size) < ORGANIC_CART_PROB
    buy = cart & (rng.random(who.size) < world.tastes.buy_rate[shoppers[who]])
    for k in np.flatnonzero(cart).tolist():
        t_end = int(start[k]) + 40 * ORGANIC_MAX_VIEWS
        out[who[k]].append(Event(ids[prev[k]], "cart", t_end))
        if buy[k]:
            out[who[k]].append(Event(ids[prev[k]], "purchase", t_end + 30))
    return out


# -- the devices' logs ------------------------------------------------------------------------------------
class DeviceLogs(Protocol):
    """Every shopper's device log in one arm."""

    def recent(self, shopper: int, n: int) -> list[Event]: ...
    def purchased(self, shopper: int) -> set[str]: ...
    def add(self, shopper: int, events: Sequence[Event]) -> None: ...
    def all(self) -> list[list[Event]]: ...
    def close(self) -> None: ...


class MemoryLogs:
    """The logs in memory, as the SDK's EventStore keeps them: oldest first, at most MAX_EVENTS each."""

    def __init__(self, prior: Sequence[Sequence[Event]]) -> None:
        self.logs = [list(events)[-MAX_EVENTS:] for events in prior]
        self.bought = [{e.item_id for e in events if e.event == "purchase"} for events in prior]

    def recent(self, shopper: int, n: int) -> list[Event]:
        return self.logs[shopper][-n:]

    def purchased(self, shopper: int) -> set[str]:
        return self.bought[shopper]

    def add(self, shopper: int, events: Sequence[Event]) -> None:
        log = self.logs[shopper]
        log.extend(events)
        log.sort(key=lambda e: e.timestamp)  # stable: events of one second keep the order recorded
        del log[:-MAX_EVENTS]
        self.bought[shopper].update(e.item_id for e in events if e.event == "purchase")

    def all(self) -> list[list[Event]]:
        return self.logs

    def close(self) -> None:
        pass


class SqliteLogs:
    """One SDK EventStore per shopper, in `root`/device-<shopper>/events.sqlite. Simulated devices need
    no durability: each connection runs with PRAGMA synchronous = OFF (1.0 ms an event with fsync, 0.034
    without, measured on the 2-core machine: docs/online.md)."""

    def __init__(self, root: Path, prior: Sequence[Sequence[Event]]) -> None:
        self.stores: list[EventStore] = []
        for shopper, events in enumerate(prior):
            folder = Path(root) / f"device-{shopper:06d}"
            folder.mkdir(parents=True, exist_ok=True)
            store = EventStore(events_path(folder), max_events=MAX_EVENTS)
            store.db.execute("PRAGMA synchronous = OFF")
            self.stores.append(store)
            self.add(shopper, events)

    def recent(self, shopper: int, n: int) -> list[Event]:
        return self.stores[shopper].recent(n)

    def purchased(self, shopper: int) -> set[str]:
        return self.stores[shopper].purchased()

    def add(self, shopper: int, events: Sequence[Event]) -> None:
        for event in events:
            self.stores[shopper].add(event.item_id, event.event, event.timestamp)

    def all(self) -> list[list[Event]]:
        return [store.events() for store in self.stores]

    def close(self) -> None:
        for store in self.stores:
            store.close()


# -- the federated arm's update transport -----------------------------------------------------------------
class InProcessNodes:
    """The Coordinator's update transport without Flower: one node hosting every shopper's device (a shard
    of virtual devices, node id 0, slot = shopper). Each round it sums the real LocalTrainer.clipped_sum of
    the sampled devices, on examples from their own logs, and checks the sum as the server checks a node's
    reply (server.strategy.check_update_sum); `trainer` is replaced each night with the day's logs."""

    NODE = 0

    def __init__(self) -> None:
        self.trainer: LocalTrainer | None = None

    def collect(self, grid: Any, request: RoundRequest) -> CollectedUpdates:
        if self.trainer is None:
            raise ConfigError("no local trainer: the devices' logs were not loaded")
        users = request.assignment.get(self.NODE, np.zeros(0, dtype=np.int64))
        reply = self.trainer.clipped_sum(
            request.params, users, round_seed=request.settings.round_seed, clip_norm=request.clip_norm
        )
        total = reply.total.astype(np.float64)
        check_update_sum(total, count=reply.count, dim=total.size, clip_norm=request.clip_norm)
        return CollectedUpdates(TrainReplies(total, reply.count, reply.unclipped_count, 0, 0))


# -- the arms ---------------------------------------------------------------------------------------------
@dataclass
class DayRow:
    """What one arm's shoppers did with their pages on one day (For you's, unless said)."""

    day: int
    arm: str
    visits: int = 0
    impressions: int = 0
    clicks: int = 0
    carts: int = 0
    purchases: int = 0
    page_cards: int = 0  # cards on the whole page
    page_clicks: int = 0
    coverage: float = 0.0  # distinct For you items shown / catalogue size
    ild: float = math.nan  # mean intra-list diversity of For you
    events: int = 0  # events logged (homepage and organic)
    download_bytes: int = 0  # what a device fetched to hold today's release
    release_bytes: int = 0  # the release in use, in full
    user_epsilon: float | None = None  # the federated arm's, spent by the release in use
    serve_s: float = 0.0
    learn_s: float = 0.0

    @property
    def ctr(self) -> float:
        return self.clicks / self.impressions if self.impressions else math.nan

    @property
    def cart_rate(self) -> float:
        return self.carts / self.impressions if self.impressions else math.nan

    @property
    def purchase_rate(self) -> float:
        return self.purchases / self.impressions if self.impressions else math.nan

    @property
    def page_ctr(self) -> float:
        return self.page_clicks / self.page_cards if self.page_cards else math.nan

    def to_dict(self) -> dict[str, Any]:
        row = dataclasses.asdict(self)
        row.update(ctr=self.ctr, cart_rate=self.cart_rate, purchase_rate=self.purchase_rate)
        row["page_ctr"] = self.page_ctr
        return row


def homepage_rules(online: OnlineConfig, *, flat: bool) -> HomepageRules:
    """The homepage rules of the config: For you diversified (HomepageRules.diversity = online.diversity,
    the homepage's default), or not at all when `flat` (a "+flat" arm)."""
    return HomepageRules(
        section_size=online.section_size,
        per_category=online.per_category,
        because_sections=online.because_sections,
        diversity=0.0 if flat else online.diversity,
    )


class Arm:
    """One arm's world: its devices' logs, its release store, the release cache its devices share (every
    device of an arm holds the same release, so one verified install stands for all of them), the
    homepage they compose. Subclasses say what happens overnight (`learn`)."""

    def __init__(self, name: str, world: OnlineWorld, folder: Path, key: Ed25519PrivateKey) -> None:
        self.name, self.world, self.folder, self.key = name, world, Path(folder), key
        online = world.online
        self.folder.mkdir(parents=True, exist_ok=True)
        self.rules = homepage_rules(online, flat=name.endswith(FLAT_SUFFIX))
        self.logs: DeviceLogs = (
            SqliteLogs(self.folder / "devices", world.prior_logs)
            if online.event_store == "sqlite"
            else MemoryLogs(world.prior_logs)
        )
        self.store = ReleaseStore(self.folder / "releases")
        self.cache = ReleaseCache(releases_path(self.folder / "device"), key.public_key())
        self.item_rows = {item_id: row for row, item_id in enumerate(world.catalogue.item_ids)}
        self.held: dict[str, str] = {}  # file name -> sha256 of the release the devices hold
        self.pending_download = 0  # bytes fetched for the release shipped last night
        self.release_size = 0  # bytes of the release the devices hold, in full
        self.homepage: Homepage | None = None

    # -- serving ---------------------------------------------------------------------------------------
    def page(self, shopper: int, now: int) -> list[Section]:
        if self.homepage is None:
            raise ConfigError(f"arm {self.name}: no release installed")
        history = self.logs.recent(shopper, self.world.online.history_events)
        return self.homepage.compose(history, now, purchased=self.logs.purchased(shopper))

    def ranker(self, folder: Path) -> DeviceRanker:
        return DeviceRanker(folder)

    def ship(self, model: TwoTower, source: ReleaseSource) -> None:
        """Publish `model` as a signed release, install it on the devices (verified), rank with it."""
        version = self.store.publish(model, self.world.catalogue, source, self.key)
        self.cache.install(copy_from(self.store.folder(version)))
        folder = self.cache.current()
        if folder is None:
            raise ConfigError(f"arm {self.name}: the release did not install")
        manifest_fields = read_manifest(folder)
        files, derived = manifest_fields["files"], derived_names(manifest_fields)
        # what sync fetches: the files that changed, but never those the device derives (computes itself)
        changed = [n for n, d in files.items() if self.held.get(n) != d["sha256"] and n not in derived]
        manifest = (folder / MANIFEST_NAME).stat().st_size
        self.pending_download += manifest + sum(int(files[n]["bytes"]) for n in changed)
        self.held = {n: str(d["sha256"]) for n, d in files.items()}
        self.release_size = manifest + sum(int(d["bytes"]) for d in files.values())
        self.homepage = Homepage(self.ranker(folder), self.rules)

    def record(self, shopper: int, events: Sequence[Event]) -> None:
        """Events of `shopper` into their device's log."""
        self.logs.add(shopper, events)

    def take_download(self) -> int:
        """Bytes the devices fetched since this was last asked (what today's release cost them)."""
        fetched, self.pending_download = self.pending_download, 0
        return fetched

    def epsilon(self) -> float | None:
        return None

    def learn(self, day: int) -> None:
        """Overnight after `day`: learn from the logs and ship tomorrow's release (nothing by default)."""

    def sequences(self) -> UserSequences:
        """Every device's log as training sequences, by the one example builder devices use too."""
        return sequences_from_logs(self.logs.all(), self.item_rows).sequences

    def close(self) -> None:
        self.logs.close()


def start_model(world: OnlineWorld) -> TwoTower:
    """The untrained model (seeded as a federated run seeds it): it ranks by text similarity."""
    torch.manual_seed(world.base.federated.seed)
    features = ItemFeatures.from_catalogue(world.catalogue, world.text_vectors)
    return TwoTower(features, world.base.model)


def plain_source(world: OnlineWorld, model: TwoTower, run_id: str, privacy: dict[str, Any]) -> ReleaseSource:
    flat = get_flat(model, trainable_layout(model, ("all",)))
    return ReleaseSource(run_id, params_sha256(flat), 0, world.encoder, privacy)


class TextArm(Arm):
    """The untrained start, text similarity, shipped once: it uses no shopper's data."""

    def __init__(self, name: str, world: OnlineWorld, folder: Path, key: Ed25519PrivateKey) -> None:
        super().__init__(name, world, folder, key)
        model = start_model(world)
        privacy = {"unit": "user", "epsilon": 0.0, "delta": 0.0, "note": "the start: no shopper's data"}
        self.ship(model, plain_source(world, model, f"{name}-start", privacy))


class PopularityRanker(DeviceRanker):
    """A real release's ranker (its item vectors give Because-you-viewed's neighbours) whose rankings are
    the shop's event counts so far instead of the model's scores."""

    counts: np.ndarray

    def scores(self, user: np.ndarray) -> np.ndarray:
        return np.log1p(self.counts).astype(np.float32)


class PopularityArm(TextArm):
    """For you, New and Deals by how often the shop's shoppers (in this arm's world) touched each item; the
    counts ship every day (n_items float32)."""

    popularity: PopularityRanker  # the ranker of the devices' pages (set when the release is installed)

    def __init__(self, name: str, world: OnlineWorld, folder: Path, key: Ed25519PrivateKey) -> None:
        self.counts = np.zeros(world.catalogue.n_items, dtype=np.float64)
        super().__init__(name, world, folder, key)
        self.count(world.prior_logs)
        self.popularity.counts = self.counts.copy()  # day 0's counts: the shop's log before it

    def ranker(self, folder: Path) -> DeviceRanker:
        self.popularity = PopularityRanker(folder)
        self.popularity.counts = self.counts.copy()
        return self.popularity

    def count(self, logs: Sequence[Sequence[Event]]) -> None:
        rows = [self.item_rows[e.item_id] for events in logs for e in events]
        self.counts += np.bincount(np.asarray(rows, dtype=np.int64), minlength=self.counts.size)

    def record(self, shopper: int, events: Sequence[Event]) -> None:
        super().record(shopper, events)
        self.count([events])

    def learn(self, day: int) -> None:
        """Tomorrow's counts (today's events included) ship as one float32 array."""
        self.popularity.counts = self.counts.copy()
        buffer = io.BytesIO()
        np.save(buffer, self.counts.astype(np.float32))
        self.pending_download += buffer.getbuffer().nbytes


class CentralArm(Arm):
    """Non-private retraining on every shopper's raw events: online.central_steps_per_day Adam steps a
    night from last night's weights and optimiser state (the first night online.central_warmup_epochs
    epochs more); the popularity prior counted exactly."""

    def __init__(self, name: str, world: OnlineWorld, folder: Path, key: Ed25519PrivateKey) -> None:
        super().__init__(name, world, folder, key)
        self.model = start_model(world)
        self.optimizer_state: dict[str, Any] | None = None
        privacy = {"unit": "none", "epsilon": "inf", "note": "central non-private reference"}
        self.ship(self.model, plain_source(world, self.model, f"{name}-0", privacy))

    def learn(self, day: int) -> None:
        config, online = self.world.base, self.world.online
        seqs = self.sequences()
        if self.model.config.popularity_prior:
            k = self.model.config.popularity_items_per_user
            counts = recent_item_counts(seqs, self.model.items.n_items, items_per_user=k)
            self.model.items.set_popularity(popularity_from_counts(counts))
        trainer = Trainer(self.model, seqs, np.zeros(self.model.items.n_items, dtype=bool), config.train)
        if self.optimizer_state is not None:
            trainer.optimizer.load_state_dict(self.optimizer_state)
        rng = np.random.default_rng([online.seed, 5, day])
        steps = online.central_steps_per_day
        if day == 0:
            steps += online.central_warmup_epochs * -(-trainer.rows.size // CENTRAL_BATCH)
        for _ in range(steps):
            pick = rng.integers(0, trainer.rows.size, CENTRAL_BATCH)
            trainer.step(trainer.users[pick], trainer.rows[pick])
        self.optimizer_state = trainer.optimizer.state_dict()
        privacy = {"unit": "none", "epsilon": "inf", "note": "central non-private reference"}
        self.ship(self.model, plain_source(self.world, self.model, f"{self.name}-{day + 1}", privacy))


def training_nights(online: OnlineConfig) -> int:
    """The nights whose release a shopper sees: after every day but the last (the release after the last day
    would never be served, so its rounds would spend budget for nothing); at least one."""
    return max(online.days - 1, 1)


def federated_config(world: OnlineWorld, run_dir: Path) -> FedhomeConfig:
    """The federated arm's run config: the base settings with the online plan ((days - 1) x K rounds at q, the
    lifetime epsilon and delta), a noise seed from online.seed (a reproducible simulation; the ledger's
    noise_rng says so), no per-round evaluation, and none of a one-off run's extra releases (start check,
    popularity prior counts)."""
    online = world.online
    config: FedhomeConfig = with_overrides(
        world.base,
        {
            "federated.rounds": training_nights(online) * online.rounds_per_day,
            "federated.sample_rate": online.sample_rate,
            "federated.eval_every": 0,
            "federated.run_dir": run_dir,
            "privacy.target_epsilon": online.epsilon,
            "privacy.delta": online.delta,
            "privacy.seed": online.seed,
            "start_check.enabled": "off",
            "popularity.enabled": "off",
        },
    )
    return config


class FederatedArm(Arm):
    """online.rounds_per_day rounds a night of the server's Coordinator under user-level DP: the devices'
    clipped updates from their own logs (InProcessNodes), noise on the sum, the PLD accountant and the
    signed ledger in `folder`/run, with one lifetime budget for the whole horizon (federated_config)."""

    def __init__(self, name: str, world: OnlineWorld, folder: Path, key: Ed25519PrivateKey) -> None:
        super().__init__(name, world, folder, key)
        run = RunFolder(self.folder / "run")
        run.create()
        self.config = federated_config(world, run.root)
        self.model = start_model(world)
        self.layout: ParamLayout = trainable_layout(self.model, self.config.federated.trainable)
        save_public_key(key.public_key(), run.public_key)
        write_json_atomic(run.config, to_flat(self.config))
        self.nodes = InProcessNodes()
        population = Population((InProcessNodes.NODE,), np.array([world.n_shoppers], dtype=np.int64))
        self.coordinator = Coordinator(
            self.config,
            run,
            population,
            get_flat(self.model, self.layout),
            self.layout,
            PrivacyLedger(run.ledger, signing_key=key),
            evaluate=lambda params: {},
            transport=self.nodes,
        )
        self.stopped = ""  # why training stopped early (the budget), "" while it runs
        write_json_atomic(self.folder / "run" / "online_plan.json", self.plan())
        privacy = {"unit": "user", "epsilon": 0.0, "delta": self.coordinator.plan.delta, "note": "the start"}
        self.ship(self.model, plain_source(world, self.model, f"{name}-start", privacy))

    def plan(self) -> dict[str, Any]:
        """The horizon's privacy plan (online_plan.json beside the ledger; config.json: the run config)."""
        plan, online = self.coordinator.plan, self.world.online
        return {
            "unit_of_privacy": "user",
            "budget": "lifetime: one user-level (epsilon, delta) over every round of the horizon",
            "days": online.days,
            "rounds_per_day": online.rounds_per_day,
            "planned_rounds": self.config.federated.rounds,
            "target_epsilon": plan.target_epsilon,
            "delta": plan.delta,
            "sample_rate": plan.sample_rate,
            "noise_multiplier": plan.noise_multiplier,
            "clip_norm": self.config.privacy.clip_norm,
            "population": self.world.n_shoppers,
            "run_id": self.coordinator.run_id,
        }

    def epsilon(self) -> float | None:
        return self.coordinator.epsilon() if self.coordinator.completed_rounds else 0.0

    def learn(self, day: int) -> None:
        if self.stopped:
            return
        self.nodes.trainer = LocalTrainer(
            self.model,
            self.sequences(),
            layout=self.layout,
            blocked=np.zeros(self.model.items.n_items, dtype=bool),
            config=self.config.federated,
        )
        for _ in range(self.world.online.rounds_per_day):
            try:
                self.coordinator.finish_row(self.coordinator.run_round(None))
            except BudgetExhaustedError as exc:  # fail closed: the budget is for the whole horizon
                self.stopped = str(exc)
                log.warning("federated arm %s: %s", self.name, exc)
                break
        set_flat(self.model, self.layout, self.coordinator.global_params)
        self.ship(self.model, self.release_source())

    def release_source(self) -> ReleaseSource:
        """Bound to the ledger entry of the last round: the model it records, the epsilon spent so far."""
        entry = self.coordinator.ledger_entries()[-1]
        privacy = {
            "unit": "user",
            "epsilon": entry["user_epsilon"]["pld"],
            "epsilon_rdp": entry["user_epsilon"]["rdp"],
            "delta": entry["delta"],
            "ledger_head": entry["entry_hash"],
            "ledger_entries": entry["round"],
            "ledger_key_id": entry["key_id"],
            "lifetime_epsilon": self.coordinator.plan.target_epsilon,
            "planned_rounds": self.config.federated.rounds,
        }
        return ReleaseSource(
            self.coordinator.run_id,
            entry["model_sha256_after"],
            int(entry["round"]),
            self.world.encoder,
            privacy,
        )


ARM_CLASSES: dict[str, type[Arm]] = {
    "popularity": PopularityArm,
    "text": TextArm,
    "federated": FederatedArm,
    "central": CentralArm,
}


def make_arm(name: str, world: OnlineWorld, folder: Path, key: Ed25519PrivateKey) -> Arm:
    return ARM_CLASSES[name.removesuffix(FLAT_SUFFIX)](name, world, folder / name, key)


# -- one day in one arm -----------------------------------------------------------------------------------
@dataclass
class Cards:
    """The cards of the day's pages, flat, in page order."""

    visitor: list[int] = field(default_factory=list)  # index into the day's shoppers
    slot: list[int] = field(default_factory=list)  # place on the page (the coin it gets)
    section: list[int] = field(default_factory=list)  # the section's place on the page
    position: list[int] = field(default_factory=list)  # the card's place in its section
    item: list[int] = field(default_factory=list)  # catalogue row
    for_you: list[bool] = field(default_factory=list)

    def add_page(self, visitor: int, sections: Sequence[Section], rows: dict[str, int]) -> None:
        slot = 0
        for j, section in enumerate(sections):
            for p, card in enumerate(section.cards):
                self.visitor.append(visitor)
                self.slot.append(slot)
                self.section.append(j)
                self.position.append(p)
                self.item.append(rows[card.item_id])
                self.for_you.append(section.key == "for_you")
                slot += 1


def serve_day(arm: Arm, plan: DayPlan, clicks: ClickModel) -> DayRow:
    """Day `plan.day` in `arm`: organic browsing, pages, answers, events into the logs; the day's row."""
    start = time.perf_counter()
    world = arm.world
    row = DayRow(plan.day, arm.name, visits=int(plan.shoppers.size), download_bytes=arm.take_download())
    row.release_bytes, row.user_epsilon = arm.release_size, arm.epsilon()
    cards = Cards()
    for k, shopper in enumerate(plan.shoppers.tolist()):
        arm.record(shopper, plan.organic[k])
        cards.add_page(k, arm.page(shopper, int(plan.visit_s[k])), arm.item_rows)
    if max(cards.slot, default=-1) >= plan.uniforms.shape[1]:
        raise ConfigError(f"a page holds more cards than the {plan.uniforms.shape[1]} slots drawn for it")
    visitor, item = np.asarray(cards.visitor, dtype=np.int64), np.asarray(cards.item, dtype=np.int64)
    answers = clicks.respond(
        plan.shoppers[visitor],
        item,
        plan.intent[visitor],
        np.asarray(cards.section),
        np.asarray(cards.position),
        plan.uniforms[visitor, np.asarray(cards.slot, dtype=np.int64)],
    )
    log_answers(arm, plan, cards, answers.click, answers.cart, answers.purchase)
    for_you = np.asarray(cards.for_you, dtype=bool)
    row.impressions, row.page_cards = int(for_you.sum()), int(item.size)
    row.clicks, row.page_clicks = int(answers.click[for_you].sum()), int(answers.click.sum())
    row.carts, row.purchases = int(answers.cart[for_you].sum()), int(answers.purchase[for_you].sum())
    row.coverage = np.unique(item[for_you]).size / world.catalogue.n_items
    row.ild = intra_list_diversity(world.text_vectors, visitor[for_you], item[for_you])
    row.events = int(answers.click.sum() + answers.cart.sum() + answers.purchase.sum())
    row.events += sum(len(events) for events in plan.organic)
    row.serve_s = time.perf_counter() - start
    return row


def log_answers(
    arm: Arm, plan: DayPlan, cards: Cards, click: np.ndarray, cart: np.ndarray, purchase: np.ndarray
) -> None:
    """The answers as device events: a click is a view of the item, then maybe its cart and purchase, at
    the visit time plus CARD_GAP_S per slot."""
    ids = arm.world.catalogue.item_ids
    per_visitor: dict[int, list[Event]] = {}
    for c in np.flatnonzero(click).tolist():
        k, item = cards.visitor[c], ids[cards.item[c]]
        t = int(plan.visit_s[k]) + CARD_GAP_S * (cards.slot[c] + 1)
        events = per_visitor.setdefault(k, [])
        events.append(Event(item, "view", t))
        if cart[c]:
            events.append(Event(item, "cart", t + 5))
        if purchase[c]:
            events.append(Event(item, "purchase", t + 10))
    for k, events in per_visitor.items():
        arm.record(int(plan.shoppers[k]), events)


def intra_list_diversity(vectors: np.ndarray, visitor: np.ndarray, item: np.ndarray) -> float:
    """Mean over pages of 1 - the mean pairwise cosine of their items' text vectors (unit rows); pages
    with fewer than two items are left out. NaN when no page has two."""
    values = []
    for k in np.unique(visitor).tolist():
        rows = vectors[item[visitor == k]]
        n = rows.shape[0]
        if n >= 2:
            total = rows.sum(axis=0)
            mean_cos = (float(total @ total) - float((rows * rows).sum())) / (n * (n - 1))
            values.append(1.0 - mean_cos)
    return float(np.mean(values)) if values else math.nan


# -- the whole loop ---------------------------------------------------------------------------------------
@dataclass
class OnlineResult:
    rows: list[DayRow]
    world: OnlineWorld
    plans: dict[str, dict[str, Any]]  # the federated arms' privacy plans
    epsilon: dict[str, float | None]  # epsilon spent at the end, per arm (federated arms)
    ledgers: dict[str, Path]  # the federated arms' run folders
    timings_s: dict[str, float]
    wall_s: float


def run_online(
    online: OnlineConfig, base: FedhomeConfig, out: Path, *, progress: bool = False
) -> OnlineResult:
    """The loop of the module docstring for online.days days; arms' folders under `out`/arms."""
    start = time.perf_counter()
    timings: dict[str, float] = {}
    set_threads(base.train)  # one torch thread by default: on the shared 2-core machines two are slower
    world = build_world(online, base, progress=progress)
    timings["world_s"] = time.perf_counter() - start
    key = generate_private_key()
    arms = [make_arm(name, world, Path(out) / "arms", key) for name in online.arms]
    timings["arms_s"] = time.perf_counter() - start - timings["world_s"]
    clicks = ClickModel(world.shop, world.tastes)
    rows: list[DayRow] = []
    try:
        for day in tqdm(range(online.days), desc="days", unit="day", disable=not progress):
            plan = plan_day(world, day)
            for arm in arms:
                row = serve_day(arm, plan, clicks)
                learn_start = time.perf_counter()
                if day < online.days - 1:  # no night after the last day: nobody would see its release
                    arm.learn(day)
                row.learn_s = time.perf_counter() - learn_start
                rows.append(row)
            log.info("day %d: %s", day, ", ".join(f"{r.arm} CTR {r.ctr:.4f}" for r in rows[-len(arms) :]))
    finally:
        for arm in arms:
            arm.close()
    federated = [a for a in arms if isinstance(a, FederatedArm)]
    return OnlineResult(
        rows,
        world,
        {a.name: a.plan() for a in federated},
        {a.name: a.epsilon() for a in arms},
        {a.name: a.folder / "run" for a in federated},
        timings,
        time.perf_counter() - start,
    )


# -- outputs ----------------------------------------------------------------------------------------------
CSV_COLUMNS = (
    "day", "arm", "visits", "impressions", "clicks", "carts", "purchases", "ctr", "cart_rate",
    "purchase_rate", "coverage", "ild", "page_cards", "page_clicks", "page_ctr", "events",
    "download_bytes", "release_bytes", "user_epsilon", "serve_s", "learn_s",
)  # fmt: skip
TAIL_DAYS = 7  # the summary's "end of the horizon": the last this many days, pooled


def write_csv(rows: Sequence[DayRow], path: Path) -> None:
    """One line per day and arm."""
    lines = [",".join(CSV_COLUMNS)]
    for row in rows:
        values = row.to_dict()
        lines.append(",".join(_csv_value(values[c]) for c in CSV_COLUMNS))
    path.write_text("\n".join(lines) + "\n")


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def arm_summary(rows: Sequence[DayRow], arm: str) -> dict[str, Any]:
    """An arm's figures: day 0, the last day, the last TAIL_DAYS days pooled (rates per card shown, with
    the binomial standard error of the pooled CTR), mean download per day after day 0."""
    own = [r for r in rows if r.arm == arm]
    tail = own[-TAIL_DAYS:]
    shown = sum(r.impressions for r in tail)
    ctr = sum(r.clicks for r in tail) / shown if shown else math.nan
    later = [r.download_bytes for r in own[1:]]
    return {
        "arm": arm,
        "ctr_first": own[0].ctr,
        "ctr_last": own[-1].ctr,
        "ctr_tail": ctr,
        "ctr_tail_se": math.sqrt(ctr * (1 - ctr) / shown) if shown else math.nan,
        "cart_rate_tail": sum(r.carts for r in tail) / shown if shown else math.nan,
        "purchase_rate_tail": sum(r.purchases for r in tail) / shown if shown else math.nan,
        "coverage_first": own[0].coverage,
        "coverage_last": own[-1].coverage,
        "ild_tail": float(np.nanmean([r.ild for r in tail])),
        "download_first_bytes": own[0].download_bytes,
        "download_per_day_bytes": float(np.mean(later)) if later else math.nan,
        "release_bytes": own[-1].release_bytes,
        "user_epsilon": own[-1].user_epsilon,
        "tail_days": len(tail),
    }


def summary_table(rows: Sequence[DayRow], arms: Sequence[str]) -> str:
    """The markdown table a person reads first: one line per arm."""
    head = (
        "| arm | CTR day 0 | CTR last day | CTR last 7 days (± s.e.) | cart rate | purchase rate "
        "| coverage day 0 -> last | ILD | first install MB | download MB/day "
        "| user epsilon (release in use) |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for arm in arms:
        s = arm_summary(rows, arm)
        epsilon = "-" if s["user_epsilon"] is None else f"{s['user_epsilon']:.3g}"
        lines.append(
            f"| {arm} | {s['ctr_first']:.4f} | {s['ctr_last']:.4f} | {s['ctr_tail']:.4f} ± "
            f"{s['ctr_tail_se']:.4f} | {s['cart_rate_tail']:.4f} | {s['purchase_rate_tail']:.4f} | "
            f"{s['coverage_first']:.3f} -> {s['coverage_last']:.3f} | {s['ild_tail']:.3f} | "
            f"{s['download_first_bytes'] / 1e6:.2f} | {s['download_per_day_bytes'] / 1e6:.3f} | {epsilon} |"
        )
    return head + "\n".join(lines) + "\n"


def day_table(rows: Sequence[DayRow]) -> str:
    """Every day and arm as a markdown table."""
    head = (
        "| day | arm | visits | For you cards | CTR | cart rate | purchase rate | coverage | ILD | "
        "download MB | user epsilon |\n|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = [
        f"| {r.day} | {r.arm} | {r.visits} | {r.impressions} | {r.ctr:.4f} | {r.cart_rate:.4f} | "
        f"{r.purchase_rate:.4f} | {r.coverage:.3f} | {r.ild:.3f} | {r.download_bytes / 1e6:.3f} | "
        f"{'-' if r.user_epsilon is None else f'{r.user_epsilon:.3g}'} |"
        for r in rows
    ]
    return head + "\n".join(lines) + "\n"


PLOTTED = (
    ("ctr", "For you CTR"),
    ("cart_rate", "add-to-cart per card"),
    ("purchase_rate", "purchases per card"),
    ("coverage", "catalogue coverage"),
    ("ild", "intra-list diversity"),
    ("download_bytes", "download per device (MB)"),
)


def plot(rows: Sequence[DayRow], arms: Sequence[str], path: Path, *, title: str) -> None:
    """Six panels, one line per arm, days on x (downloads in MB, on a log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(15, 8), constrained_layout=True)
    for ax, (key, label) in zip(axes.flat, PLOTTED, strict=True):
        for arm in arms:
            own = [r.to_dict() for r in rows if r.arm == arm]
            values = [r[key] / (1e6 if key == "download_bytes" else 1.0) for r in own]
            ax.plot([r["day"] for r in own], values, marker=".", label=arm)
        ax.set_title(label)
        ax.set_xlabel("day")
        if key == "download_bytes":
            ax.set_yscale("symlog", linthresh=0.01)
    axes.flat[0].legend()
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(
    result: OnlineResult, out: Path, *, command: str, extra: dict[str, Any] | None = None
) -> str:
    """online.csv, online.md (summary and every day), online.png and online.json in `out`; returns the
    summary table."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    online = result.world.online
    arms = list(online.arms)
    write_csv(result.rows, out / "online.csv")
    summary = summary_table(result.rows, arms)
    (out / "online.md").write_text(
        f"`{command}` ({result.wall_s:.0f} s wall)\n\n{summary}\n{day_table(result.rows)}"
    )
    title = f"{online.days} days x {online.shoppers} shoppers, {online.items} items (seed {online.seed})"
    plot(result.rows, arms, out / "online.png", title=title)
    report = {
        "command": command,
        "online": to_flat(online),
        "base": to_flat(result.world.base),
        "wall_s": result.wall_s,
        "timings_s": result.timings_s,
        "per_day_s": per_day_seconds(result.rows),
        "privacy_plans": result.plans,
        "user_epsilon_spent": result.epsilon,
        "ledgers": {arm: str(path) for arm, path in result.ledgers.items()},
        "summary": [arm_summary(result.rows, arm) for arm in arms],
        **(extra or {}),
    }
    (out / "online.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    return summary


def per_day_seconds(rows: Sequence[DayRow]) -> dict[str, float]:
    """Mean seconds a day costs, per arm and phase (serving the pages, learning and shipping overnight)."""
    out: dict[str, float] = {}
    for arm in dict.fromkeys(r.arm for r in rows):
        own = [r for r in rows if r.arm == arm]
        out[f"{arm}.serve_s"] = float(np.mean([r.serve_s for r in own]))
        out[f"{arm}.learn_s"] = float(np.mean([r.learn_s for r in own]))
    return out
