"""The demo homepage page in real headless Debian chromium (Playwright driving /usr/bin/chromium) against a
real uvicorn server on loopback: the page verifies the release with WebCrypto, ranks with onnxruntime-web,
and its ranking and sections equal the Python SDK's for the same histories; tampered releases are refused.
The page's homepage rules (server/web/src/homepage.js, run in Node) compose the very pages Python's
Homepage does, rule for rule, on a structured release with and without categories, purchases included."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from ledger_toy import KEY, write_run
from playwright.sync_api import Browser, sync_playwright
from release_toy import CONFIG, random_model, source

from client.device.homepage import Homepage, HomepageRules
from client.device.ranker import DeviceRanker, Event
from server import server_cli
from server.api import demo_site
from server.api.demo_shoppers import read_demo_shoppers
from server.api.demo_site import ORT_DIST
from server.catalogue.delta_publisher import LIST_NAME, DeltaStore
from server.releases.release_store import ReleaseStore
from shared import signing
from shared.catalogue_delta_format import DELTA_KIND, manifest_sha256, sign_delta_list
from shared.config import FedhomeConfig, ServiceConfig, SyntheticShopConfig, to_flat
from shared.data.schema import EVENT_TYPES
from shared.data.synthetic.shop import generate_shop
from shared.errors import DataError
from shared.history import N_GAP_BUCKETS
from shared.model import ItemFeatures, TwoTower
from shared.release_index import sign_index
from shared.release_manifest import MANIFEST_NAME, file_digest, read_manifest, sign_manifest
from simulation.demo_page import launch_chromium, open_demo, sdk_page, sdk_ranker
from simulation.local_service import running

pytestmark = pytest.mark.integration

SCORE_TOLERANCE = 1e-4
TRENDING = "trending_counts.npy"


def toy_shoppers(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Synthetic histories over the toy catalogue: a funnel, a browser, one with an unknown item, one with
    nothing but an unknown item."""
    now = max(item["created_at"] or 0 for item in items) + 86_400
    ids = [item["id"] for item in items]
    pattern = [
        [(11, "view"), (11, "cart"), (40, "view"), (120, "view"), (200, "purchase"), (201, "favourite")],
        [(i, "view") for i in (3, 57, 99, 150, 151, 152, 210, 260, 290)],
        [(5, "view"), (-1, "view"), (77, "cart"), (77, "purchase")],
        [(-1, "view")],  # nothing this release knows: no user vector, the page falls back to item bias
    ]
    shoppers = []
    for n, events in enumerate(pattern, start=1):
        history = [
            {"item_id": ids[i] if i >= 0 else "no-such-item", "event": e, "timestamp": now - 5_400 * (9 - k)}
            for k, (i, e) in enumerate(events)
        ]
        shoppers.append({"id": f"shopper-{n}", "label": f"Toy shopper {n}", "now": now, "history": history})
    return shoppers


def resign(folder: Path, change: Any) -> None:
    """Apply `change` to a release's manifest fields and sign it again with the server's key."""
    manifest = read_manifest(folder)
    fields = {k: v for k, v in manifest.items() if k not in ("signature", "key_id", "format")}
    change(fields)
    (folder / MANIFEST_NAME).write_text(json.dumps(sign_manifest(fields, KEY), indent=2))


def add_trending_counts(folder: Path) -> None:
    """Small integer counts with many ties (so the shopper's scores break them), signed into the manifest
    with the privacy block server/releases/release_trending.py writes."""
    n_items = len(json.loads((folder / "items.json").read_text()))
    np.save(folder / TRENDING, np.random.default_rng(3).integers(0, 4, size=n_items).astype(np.float32))
    block = {"file": TRENDING, "after_round": 3, "epsilon": 8.0, "ledger_entry_hash": "ab" * 32}

    def change(fields: dict[str, Any]) -> None:
        fields["files"][TRENDING] = file_digest(folder / TRENDING)
        fields["privacy"]["trending"] = {**block, "count_noise_std": 2.0}
        fields["privacy"]["epsilon_all"] = 8.25  # the model and the counts together (release_trending.py)

    resign(folder, change)


def add_delta(store: ReleaseStore, shopper: dict[str, Any]) -> dict[str, str]:
    """A signed catalogue delta of release 1 (shared/catalogue_delta_format.py): two new items (one on offer),
    one changed item, and `shopper`'s best item withdrawn. Returns the ids of what it did."""
    folder, base = store.folder(1), store.manifest(1)
    items = json.loads((folder / "items.json").read_text())
    vectors, bias = np.load(folder / "item_vectors_f32.npy"), np.load(folder / "item_bias.npy")
    ranker = DeviceRanker(folder, precision="float32")
    history = [Event(e["item_id"], e["event"], e["timestamp"]) for e in shopper["history"]]
    withdrawn = ranker.recommend(history, shopper["now"], k=1)[0]
    rng = np.random.default_rng(9)
    rows = [11, 57, 3, ranker.index[withdrawn]]  # near shopper 1's and 2's items, then a change, a withdrawal
    records = [
        {**items[11], "id": "new-1", "title": "Brand-new item", "created_at": shopper["now"] - 3_600},
        {**items[57], "id": "new-2", "on_promotion": True, "created_at": shopper["now"] - 7_200},
        {**items[3], "title": items[3]["title"] + " (new edition)"},
        {**items[ranker.index[withdrawn]]},
    ]
    for record, status in zip(records, ["active", "active", "active", "withdrawn"], strict=True):
        record.update(description="", status=status)
    delta_vectors = (vectors[rows] + 0.05 * rng.normal(size=(4, vectors.shape[1]))).astype(np.float32)
    scales = (np.abs(delta_vectors).max(axis=1) / 127).astype(np.float32)
    deltas = DeltaStore(store)
    target = deltas.folder(1, 1)
    target.mkdir(parents=True)
    (target / "items.json").write_text(json.dumps(records))
    np.save(target / "item_vectors_f32.npy", delta_vectors)
    np.save(target / "item_vectors_int8.npy", np.rint(delta_vectors / scales[:, None]).astype(np.int8))
    np.save(target / "item_scales.npy", scales)
    np.save(target / "item_bias.npy", (bias[rows] + 0.1).astype(np.float32))
    fields = {
        "kind": DELTA_KIND,
        "release": 1,
        "base_manifest_sha256": manifest_sha256(base),
        "sequence": 1,
        "created_utc": "2026-12-01T00:00:00Z",
        "model": base["model"],
        "encoder": base["encoder"],
        "files": {p.name: file_digest(p) for p in sorted(target.iterdir())},
    }
    manifest = sign_manifest(fields, KEY)
    (target / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
    entry = {
        "sequence": 1,
        "items": 4,
        "created_utc": fields["created_utc"],
        "manifest_sha256": manifest_sha256(manifest),
    }
    (deltas.root / "000001" / LIST_NAME).write_text(json.dumps(sign_delta_list(1, [entry], KEY)))
    store.set_delta_head(1, 1, entry["manifest_sha256"], KEY)  # what devices and the page follow
    return {"new": "new-1", "offer": "new-2", "changed": items[3]["id"], "withdrawn": withdrawn}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    assert ORT_DIST.is_dir(), "onnxruntime-web is missing: scripts/setup.sh runs npm ci in server/web"
    tmp = tmp_path_factory.mktemp("demo")
    store = ReleaseStore(tmp / "store")
    model, catalogue = random_model(0)
    store.publish(model, catalogue, source("0"), KEY)
    add_trending_counts(store.folder(1))
    items = json.loads((store.folder(1) / "items.json").read_text())
    shoppers = toy_shoppers(items)
    delta = add_delta(store, shoppers[0])
    (tmp / "shoppers.jsonl").write_text("".join(json.dumps(s) + "\n" for s in shoppers))
    signing.save_public_key(KEY.public_key(), tmp / "public.pem")
    config = ServiceConfig(
        release_store=store.root,
        run_dir=write_run(tmp / "run", rounds=2),
        public_key=tmp / "public.pem",
        demo_shoppers=str(tmp / "shoppers.jsonl"),
    )
    with running(config) as base:
        yield {"base": base, "store": store, "config": config, "shoppers": shoppers, "delta": delta}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = launch_chromium(playwright)
        yield launched
        launched.close()


def shots(tmp_path: Path) -> Path:
    return Path(os.environ.get("FEDHOME_SCREENSHOTS", tmp_path))


@pytest.mark.browser
def test_page_ranks_like_the_python_sdk(site: dict[str, Any], browser: Browser, tmp_path: Path) -> None:
    store, differences, shown = site["store"], [], set()
    for shopper in site["shoppers"]:
        state, cards = open_demo(
            browser,
            f"{site['base']}/demo?shopper={shopper['id']}",
            shots(tmp_path) / f"demo-{shopper['id']}.png",
        )
        assert state["status"] == "ready", state.get("error")
        assert state["shopper"] == shopper["id"] and state["release"] == 1 and state["delta"] == 1
        assert "user-level epsilon 8.25" in state["release_text"]  # epsilon_all, not the model round's
        ranker = sdk_ranker(store, 1, KEY.public_key())  # the release with its catalogue delta applied
        top, scores, sections = sdk_page(ranker, store.folder(1), shopper)
        assert [r["id"] for r in state["ranking"]] == top
        browser_scores = np.array([r["score"] for r in state["ranking"]])
        differences.extend(np.abs(browser_scores - scores))
        assert state["sections"] == sections
        assert cards == sum(len(s["cards"]) for s in sections) > 0
        keys = {s["key"] for s in sections}  # reason sections only where their rules admit items
        assert (
            {"new", "deals", "trending"}
            <= keys
            <= {"new", "deals", "trending", "for_you", "because", "bought"}
        )
        assert ("for_you" in keys) == bool(top) and (keys & {"because", "bought"} == set() or bool(top))
        shown |= {card["item_id"] for section in state["sections"] for card in section["cards"]}
        shown |= {r["id"] for r in state["ranking"]}
    assert max(differences) < SCORE_TOLERANCE
    delta = site["delta"]  # the delta shows: its new items are on pages, the withdrawn item on none
    assert {delta["new"], delta["offer"]} <= shown and delta["withdrawn"] not in shown
    print(f"browser vs DeviceRanker float32: max |score difference| {max(differences):.2e} over the top 20")


def tamper_signature(folder: Path) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    other = signing.generate_private_key()  # a well-formed signature, by another key
    manifest["signature"] = signing.sign(other, signing.canonical_json(manifest))
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))


def tamper_epsilon(folder: Path) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["privacy"]["epsilon"] = 0.5  # a smaller privacy cost than the one signed
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))


def flip_byte(name: str) -> Any:
    def tamper(folder: Path) -> None:
        data = bytearray((folder / name).read_bytes())
        data[len(data) // 2] ^= 0x01
        (folder / name).write_bytes(bytes(data))

    return tamper


def changed_files(original: Path, altered: Path, route: str) -> dict[str, bytes]:
    """{URL path: altered bytes} for each file of `altered` that differs from `original` (served under
    `route`; the manifest is served at the route itself)."""
    changed = {}
    for path in sorted(altered.iterdir()):
        data = path.read_bytes()
        if data != (original / path.name).read_bytes():
            url = route if path.name == MANIFEST_NAME else f"{route}/files/{path.name}"
            changed[url] = data
    assert changed, "the tamper changed nothing"
    return changed


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (tamper_signature, "signature does not verify"),
        (tamper_epsilon, "signature does not verify"),
        (flip_byte("item_vectors_f32.npy"), "item_vectors_f32.npy does not match its sha256"),
        (flip_byte("user_tower.onnx"), "user_tower.onnx does not match its sha256"),
    ],
    ids=["signature", "manifest-epsilon", "item-vectors-byte", "user-tower-byte"],
)
@pytest.mark.browser
def test_tampered_release_is_refused_in_the_browser(
    site: dict[str, Any], browser: Browser, tmp_path: Path, tamper: Any, message: str
) -> None:
    # the service refuses files that do not verify (tests/server/test_service_hardening.py), so the bytes are
    # altered in transit, between a correct service and the page
    altered = tmp_path / "altered"
    shutil.copytree(site["store"].folder(1), altered)
    tamper(altered)
    with running(site["config"]) as base:
        state, cards = open_demo(
            browser,
            f"{base}/demo",
            shots(tmp_path) / f"demo-refused-{tmp_path.name}.png",
            in_transit=changed_files(site["store"].folder(1), altered, "/v1/releases/1"),
        )
    assert state["status"] == "refused" and message in state["error"]
    assert "Release refused" in state["shown_error"] and cards == 0 and "ranking" not in state


@pytest.mark.browser
def test_a_tampered_catalogue_delta_is_not_used(
    site: dict[str, Any], browser: Browser, tmp_path: Path
) -> None:
    store = site["store"]
    delta = DeltaStore(store).folder(1, 1)
    altered = tmp_path / "altered-delta"
    shutil.copytree(delta, altered)
    flip_byte("item_vectors_f32.npy")(altered)
    shopper = site["shoppers"][0]
    with running(site["config"]) as base:
        state, _ = open_demo(
            browser,
            f"{base}/demo?shopper={shopper['id']}",
            shots(tmp_path) / "demo-bad-delta.png",
            in_transit=changed_files(delta, altered, "/v1/releases/1/deltas/1"),
        )
    # as on a device: the verified release is used, the delta that does not verify is not
    assert state["status"] == "ready" and "delta" not in state
    assert "item_vectors_f32.npy does not match its sha256" in state["deltaError"]
    top, _, sections = sdk_page(DeviceRanker(store.folder(1), precision="float32"), store.folder(1), shopper)
    assert [r["id"] for r in state["ranking"]] == top and state["sections"] == sections
    assert site["delta"]["withdrawn"] in top


@pytest.mark.browser
def test_the_page_follows_the_delta_head_the_index_names(
    site: dict[str, Any], browser: Browser, tmp_path: Path
) -> None:
    store = ReleaseStore(tmp_path / "store")
    shutil.copytree(site["store"].root, store.root)
    index = store.index()
    for release in index["releases"]:
        release.pop("delta", None)  # the delta is still served and listed, but the index names no head
    resigned = sign_index(index["releases"], KEY, serial=index["serial"] + 1, expires_s=time.time() + 3600)
    (store.root / "index.json").write_text(json.dumps(resigned))
    config = ServiceConfig(**{**asdict(site["config"]), "release_store": store.root})
    shopper = site["shoppers"][0]
    with running(config) as base:
        state, _ = open_demo(browser, f"{base}/demo?shopper={shopper['id']}", shots(tmp_path) / "no-head.png")
    assert state["status"] == "ready" and "delta" not in state and "deltaError" not in state
    top, _, _ = sdk_page(DeviceRanker(store.folder(1), precision="float32"), store.folder(1), shopper)
    assert [r["id"] for r in state["ranking"]] == top


@pytest.mark.browser
def test_an_expired_index_is_refused_in_the_browser(
    site: dict[str, Any], browser: Browser, tmp_path: Path
) -> None:
    store = ReleaseStore(tmp_path / "store")
    shutil.copytree(site["store"].root, store.root)
    index = store.index()  # signed again, as the publisher would, but with an expiry an hour ago
    expired = sign_index(index["releases"], KEY, serial=index["serial"] + 1, expires_s=time.time() - 3600)
    (store.root / "index.json").write_text(json.dumps(expired))  # this service holds no key to re-sign it
    config = ServiceConfig(**{**asdict(site["config"]), "release_store": store.root})
    with running(config) as base:
        state, cards = open_demo(browser, f"{base}/demo", shots(tmp_path) / "expired-index.png")
    assert state["status"] == "refused" and "expired" in state["error"] and cards == 0


@pytest.mark.browser
def test_a_page_pinning_another_key_refuses_the_release(
    site: dict[str, Any], browser: Browser, tmp_path: Path
) -> None:
    signing.save_public_key(signing.generate_private_key().public_key(), tmp_path / "other.pem")
    config = ServiceConfig(**{**asdict(site["config"]), "public_key": tmp_path / "other.pem"})
    with running(config) as base:
        state, cards = open_demo(browser, f"{base}/demo", shots(tmp_path) / "demo-wrong-key.png")
    # the service checks its index with the key the page pins, and the page refuses what it says fails
    assert state["status"] == "refused" and "not signed by the pinned key" in state["error"] and cards == 0


def test_shoppers_route_and_static_files(site: dict[str, Any]) -> None:
    base = site["base"]
    shoppers = httpx.get(f"{base}/v1/demo/shoppers").json()["shoppers"]
    assert [s["id"] for s in shoppers] == [s["id"] for s in site["shoppers"]]
    wasm = httpx.get(f"{base}/demo/ort/ort-wasm-simd-threaded.wasm")
    assert wasm.status_code == 200 and wasm.headers["content-type"] == "application/wasm"
    assert httpx.get(f"{base}/demo/static/demo.js").headers["content-type"].startswith("text/javascript")
    for path in ("/demo/static/../demo_routes.py", "/demo/static/index.html", "/demo/ort/ort.all.min.mjs"):
        assert httpx.get(base + path).status_code == 404
    config = ServiceConfig(**{**asdict(site["config"]), "demo_shoppers": ""})
    with running(config) as other:
        refused = httpx.get(f"{other}/v1/demo/shoppers")
    assert refused.status_code == 503 and refused.json()["error"]["type"] == "UnavailableError"


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('{"id": "a", "history": []}', "history"),
        ('{"id": "a", "history": [{"item_id": "x", "event": "teleport", "timestamp": 1}]}', "event"),
        ('{"id": "../a", "history": [{"item_id": "x", "event": "view", "timestamp": 1}]}', "id"),
        ('{"id": "a", "history": [{"item_id": "x", "event": "view", "timestamp": "soon"}]}', "timestamp"),
        ("not json", "not a demo shopper"),
    ],
)
def test_bad_demo_shopper_files_name_the_line(tmp_path: Path, line: str, problem: str) -> None:
    good = '{"id": "ok", "history": [{"item_id": "x", "event": "view", "timestamp": 100}]}'
    (tmp_path / "s.jsonl").write_text(good + "\n" + line + "\n")
    with pytest.raises(DataError, match=rf"s\.jsonl:2: .*{problem}"):
        read_demo_shoppers(tmp_path / "s.jsonl")
    (tmp_path / "s.jsonl").write_text(good + "\n")
    assert read_demo_shoppers(tmp_path / "s.jsonl")[0]["now"] == 100 + 3_600


def test_demo_shoppers_come_from_the_runs_synthetic_shop_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    flat = to_flat(FedhomeConfig())
    flat.update(
        {"data.synthetic.n_users": 60, "data.synthetic.n_items": 80, "data.synthetic.n_categories": 3}
    )
    (run / "config.json").write_text(json.dumps(flat))
    assert server_cli.main(["demo-shoppers", str(run), "--out", str(tmp_path / "s.jsonl"), "--n", "4"]) == 0
    shoppers = read_demo_shoppers(tmp_path / "s.jsonl")
    shop = generate_shop(SyntheticShopConfig(n_users=60, n_items=80, n_categories=3))
    assert len(shoppers) == 4 and all(0 < len(s["history"]) <= 20 for s in shoppers)
    for shopper in shoppers:
        times = [e["timestamp"] for e in shopper["history"]]
        assert times == sorted(times) and shopper["now"] == times[-1] + 3_600
        assert all(shop.catalogue.index_of(e["item_id"]) is not None for e in shopper["history"])
    (run / "config.json").write_text(json.dumps({**flat, "data.dataset": str(tmp_path / "real-shop")}))
    assert server_cli.main(["demo-shoppers", str(run), "--out", str(tmp_path / "t.jsonl")]) == 2
    assert (
        "demo shoppers must be synthetic" in capsys.readouterr().err and not (tmp_path / "t.jsonl").exists()
    )


def test_a_service_without_the_page_sources_still_serves_the_rest(
    site: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(demo_site, "WEB", tmp_path / "no-web")  # e.g. installed without its source tree
    with running(site["config"]) as base:
        page = httpx.get(f"{base}/demo")
        assert page.status_code == 503 and page.json()["error"]["type"] == "UnavailableError"
        assert httpx.get(f"{base}/health").status_code == 200


WEB_SRC = Path(__file__).resolve().parents[2] / "server" / "web" / "src"
HOMEPAGE_SCRIPT = f"""
import {{ Homepage }} from {json.dumps((WEB_SRC / "homepage.js").as_uri())};
import {{ Ranker }} from {json.dumps((WEB_SRC / "ranker.js").as_uri())};
let input = "";
process.stdin.setEncoding("utf8");
for await (const chunk of process.stdin) input += chunk;
const {{ release, cases }} = JSON.parse(input);
const pages = [];
for (const c of cases) {{
  const ranker = new Ranker({{ ...release, ort: null, session: null, items: c.items,
    vectors: Float32Array.from(release.vectors), bias: Float32Array.from(release.bias) }});
  ranker.hidden = new Set(c.hidden);
  ranker.userVector = async () => (c.user === null ? null : Float32Array.from(c.user)); // the SDK's
  const trendingCounts = c.trending === null ? null : Float64Array.from(c.trending);
  const options = {{ purchased: new Set(c.purchased), trendingCounts }};
  pages.push(await new Homepage(ranker, c.rules).compose(c.history, c.now, options));
}}
process.stdout.write(JSON.stringify(pages));
"""


def camel(rules: HomepageRules) -> dict[str, Any]:
    """HomepageRules as homepage.js names its fields (section_size: sectionSize)."""
    words = {f.name: f.name.split("_") for f in fields(rules)}
    value = {name: list(v) if isinstance(v := getattr(rules, name), tuple) else v for name in words}
    return {w[0] + "".join(p.title() for p in w[1:]): value[name] for name, w in words.items()}


@pytest.fixture(scope="module")
def structured_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A release of a 300-item synthetic shop whose text vectors cluster by leaf category (so that every
    section has items its rules admit), the model's parameters perturbed as in release_toy (item vectors of
    unequal norms, non-zero biases, a user tower that reads the history)."""
    shop = generate_shop(SyntheticShopConfig(n_users=30, n_items=300, n_categories=5))
    leaves = np.unique(shop.catalogue.categories, return_inverse=True)[1]
    rng = np.random.default_rng(4)
    text = rng.normal(size=(leaves.max() + 1, 24))[leaves] + 0.6 * rng.normal(size=(300, 24))
    torch.manual_seed(4)
    model = TwoTower(ItemFeatures.from_catalogue(shop.catalogue, text.astype(np.float32)), CONFIG)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    store = ReleaseStore(tmp_path_factory.mktemp("structured"))
    store.publish(model, shop.catalogue, source("s"), KEY)
    return store.folder(1)


def parity_cases(ranker: DeviceRanker) -> list[dict[str, Any]]:
    """Histories (with and without purchases, a hidden item, nothing known), items (as released and
    title-only: no category, brand or description), and rules (defaults, no diversity, only diversity,
    looser closeness, a re-buyable category), as inputs of both implementations."""
    ids = [item["id"] for item in ranker.items]
    vectors = ranker.item_vectors(np.arange(ranker.n_items))
    nearest = [int(r) for r in np.argsort(-(vectors @ vectors[7]), kind="stable")]  # 7 and its neighbours
    now = max(int(item["created_at"] or 0) for item in ranker.items) + 86_400

    def events(*pattern: tuple[int, str]) -> list[dict[str, Any]]:
        return [
            {"item_id": ids[i] if i >= 0 else "no-such-item", "event": e, "timestamp": now - 5_400 * (9 - k)}
            for k, (i, e) in enumerate(pattern)
        ]

    near, view = nearest, "view"
    histories = [  # (history, purchased passed by the caller, hidden rows)
        (events((near[0], view), (near[3], view), (near[5], view), (150, view), (151, view)), [], []),
        (events((11, view), (11, "cart"), (11, "purchase"), (near[2], view), (200, "favourite")), [], []),
        (events((60, view), (61, "purchase"), (near[1], view)), [ids[60], ids[99]], [near[4], 61]),
        (events((-1, view)), [], []),
    ]
    top = ranker.items[11]["category"].split(">")[0].strip()
    rules = [
        HomepageRules(),
        HomepageRules(diversity=0.0),
        HomepageRules(diversity=1.0, section_size=5, per_category=2, because_sections=3, bought_sections=2),
        HomepageRules(similar_z=0.5, similar_share=0.3, rebuyable_categories=(top,)),
    ]
    counts = np.random.default_rng(3).integers(0, 4, size=ranker.n_items).astype(float).tolist()
    released = [dict(item) for item in ranker.items]
    title_only = [{**item, "category": "", "brand": "", "description": ""} for item in ranker.items]
    cases: list[dict[str, Any]] = []
    for n, (history, purchased, hidden) in enumerate(histories):
        for items in (released, title_only):
            for r, rule in enumerate(rules):
                case = {"items": items, "history": history, "now": now, "purchased": purchased}
                cases.append(
                    {**case, "hidden": hidden, "rules": rule, "trending": counts if (n + r) % 2 else None}
                )
    return cases


def test_the_page_composes_the_python_homepage_rule_for_rule(structured_release: Path) -> None:
    node = shutil.which("node")
    assert node, "the demo page's tests need node (scripts/install_web.sh installs it)"
    ranker = DeviceRanker(structured_release, precision="float32")
    released = [dict(item) for item in ranker.items]
    cases, python_pages = parity_cases(ranker), list[list[dict[str, Any]]]()
    for case in cases:
        ranker.items[:] = [dict(item) for item in case["items"]]
        ranker.hidden = np.array(case["hidden"], dtype=np.int64)
        history = [Event(e["item_id"], e["event"], e["timestamp"]) for e in case["history"]]
        counts = None if case["trending"] is None else np.array(case["trending"])
        page = Homepage(ranker, case["rules"]).compose(
            history, case["now"], purchased=set(case["purchased"]), trending_counts=counts
        )
        python_pages.append(
            [{"key": s.key, "title": s.title, "cards": [asdict(c) for c in s.cards]} for s in page]
        )
        user = ranker.user_vector(history, case["now"])
        case.update(user=None if user is None else user.tolist(), rules=camel(case["rules"]))
    ranker.items[:] = released
    scoring = json.loads((structured_release / "scoring.json").read_text())
    release = {
        "vectors": ranker.item_vectors(np.arange(ranker.n_items)).ravel().tolist(),
        "dim": int(ranker.item_vectors(np.arange(1)).shape[1]),
        "bias": ranker.bias.tolist(),
        "temperature": scoring["temperature"],
        "maxHistory": scoring["max_history"],
        "eventTypes": list(EVENT_TYPES),
        "nGapBuckets": N_GAP_BUCKETS,
    }
    run = subprocess.run(
        [node, "--input-type=module", "-e", HOMEPAGE_SCRIPT],
        input=json.dumps({"release": release, "cases": cases}),
        capture_output=True,
        text=True,
        check=True,
    )
    browser_pages = json.loads(run.stdout)
    for case, python, browser in zip(cases, python_pages, browser_pages, strict=True):
        assert browser == python, (case["rules"], case["history"])
    keys = [s["key"] for page in python_pages for s in page]  # every rule had something to do
    assert {"for_you", "because", "bought", "new", "deals", "trending"} <= set(keys)
    copies = {c["copy"].split(" ")[0] for page in python_pages for s in page for c in s["cards"]}
    assert {"Similar", "Goes", "Picked", "Something", "New", "On", "Popular"} <= copies
    for_you = [next((s["cards"] for s in page if s["key"] == "for_you"), None) for page in python_pages]
    assert any(for_you[i] != for_you[i + 1] for i in range(0, len(cases), 4))  # diversity 0.3 against 0
