"""The demo homepage page checked in headless Debian chromium against the device SDK, for a release store.

    python -m simulation.demo_page --store runs/demo-releases --run runs/demo-federated \
        --public-key runs/demo-federated/ledger_public_key.pem --shoppers runs/demo-shoppers.jsonl \
        --screenshots runs/demo-page

Starts the model service on a free loopback port (stopped at the end), opens /demo?shopper=ID for every
demo shopper in chromium (Playwright driving /usr/bin/chromium, one fresh browser context each), and prints
one JSON line per shopper: whether the page's top-20 ranking and sections equal the SDK's (DeviceRanker
float32 + Homepage, the same history and request time), the largest score difference, the page's load time
(manifest, files, sha256, signature, onnxruntime-web session) and its ranking time on that fresh page (the
first user-tower run), and the ranking time when the shopper is picked in a page that has already ranked
one ("warm"), in milliseconds. The SDK side applies the release's newest catalogue delta, as the page
does. The tests (tests/server/test_demo_page.py) use the same helpers.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from playwright.sync_api import Browser, Playwright, Route, sync_playwright

from client.device.homepage import Homepage
from client.device.ranker import DeviceRanker, Event
from client.device.trending_counts import release_trending
from server.api.demo_shoppers import read_demo_shoppers
from server.catalogue.delta_publisher import DeltaStore
from server.releases.release_store import ReleaseStore
from shared.catalogue_delta_format import verify_delta
from shared.config import ServiceConfig
from shared.release_manifest import read_manifest
from shared.signing import Ed25519PublicKey, load_public_key
from simulation.local_service import running

RANKING_K = 20  # the page's ranking table
READY = 'body:not([data-status="loading"]):not([data-status="ranking"])'


def launch_chromium(playwright: Playwright) -> Browser:
    """Debian's chromium, headless (never Playwright's own browser download)."""
    executable = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(executable).exists():
        raise RuntimeError("Debian's chromium is missing (scripts/install_browser.sh installs it)")
    return playwright.chromium.launch(
        executable_path=executable, args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
    )


def served(body: bytes) -> Callable[[Route], None]:
    """A Playwright route handler that answers with `body`."""

    def fulfil(route: Route) -> None:
        route.fulfill(status=200, body=body)

    return fulfil


def open_demo(
    browser: Browser, url: str, screenshot: Path, *, in_transit: dict[str, bytes] | None = None
) -> tuple[dict[str, Any], int]:
    """The page's state once it has ranked (or refused) and how many cards it shows; keeps a screenshot.
    `in_transit`: URL paths whose responses the browser gets with these bytes instead (a hostile network or
    mirror between a correct service and the page: the service itself refuses files that do not verify)."""
    context = browser.new_context(viewport={"width": 1200, "height": 900})  # a fresh cache every time
    try:
        for path, body in (in_transit or {}).items():
            context.route(f"**{path}", served(body))
        page = context.new_page()
        response = page.goto(url)
        if response is None or "script-src 'self'" not in response.headers.get("content-security-policy", ""):
            raise RuntimeError(f"{url}: no Content-Security-Policy on the page")
        page.wait_for_selector(
            READY, state="attached", timeout=90_000
        )  # not a JS predicate: CSP forbids eval
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(screenshot), full_page=True)
        state: dict[str, Any] = page.evaluate("window.fedhomeDemo")
        cards = page.locator("#sections .card:visible").count()
        state["release_text"] = page.locator("#release").inner_text()
        if state["status"] != "ready":
            state["shown_error"] = page.locator("#error").inner_text()
        return state, cards
    finally:
        context.close()


def warm_rank_ms(browser: Browser, base: str, shopper_ids: list[str]) -> dict[str, float]:
    """Ranking time (ms) of each shopper picked in one already loaded page (the user tower warmed up)."""
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(f"{base}/demo")
        page.wait_for_selector(READY, state="attached", timeout=90_000)
        times = {}
        for shopper_id in [*shopper_ids[1:], shopper_ids[0]]:  # the first one is shown on load
            page.select_option("#shopper", shopper_id)  # its change handler marks the page "ranking" at once
            page.wait_for_selector(READY, state="attached", timeout=90_000)
            times[shopper_id] = round(float(page.evaluate("window.fedhomeDemo.rankMs")), 1)
        return times
    finally:
        context.close()


def sdk_ranker(store: ReleaseStore, version: int, public_key: Ed25519PublicKey) -> DeviceRanker:
    """DeviceRanker (float32) of a release with its newest catalogue delta applied, as a device has it."""
    ranker = DeviceRanker(store.folder(version), precision="float32")
    sequences = DeltaStore(store).sequences(version)
    if sequences:
        folder = DeltaStore(store).folder(version, sequences[-1])
        ranker.apply_delta(verify_delta(folder, public_key, store.manifest(version)))
    return ranker


def sdk_page(
    ranker: DeviceRanker, folder: Path, shopper: dict[str, Any]
) -> tuple[list[str], np.ndarray, list[dict[str, Any]]]:
    """What the device SDK (`ranker` + Homepage) gives for this shopper at its request time: the top-20 ids
    (none when the release knows none of its items), their scores, and the sections; the trending counts
    are the release's (`folder`, as client/device/trending_counts.py reads them) when it has them."""
    history = [Event(e["item_id"], e["event"], e["timestamp"]) for e in shopper["history"]]
    now = shopper["now"]
    user = ranker.user_vector(history, now)
    top = ranker.recommend(history, now, k=RANKING_K) if user is not None else []
    scores = ranker.scores(user)[[ranker.index[i] for i in top]] if user is not None else np.zeros(0)
    purchased = {e.item_id for e in history if e.event == "purchase"}
    trending = release_trending(folder, read_manifest(folder), n_items=ranker.release_items)
    added = ranker.n_items - ranker.release_items  # items of a catalogue delta have no count (0)
    counts = None if trending is None else np.pad(trending.counts, (0, added))
    sections = Homepage(ranker).compose(history, now, purchased=purchased, trending_counts=counts)
    return (
        top,
        scores,
        [{"key": s.key, "title": s.title, "cards": [asdict(c) for c in s.cards]} for s in sections],
    )


def compare(
    state: dict[str, Any], ranker: DeviceRanker, folder: Path, shopper: dict[str, Any]
) -> dict[str, Any]:
    """The page's ranking and sections against the SDK's for one shopper."""
    top, scores, sections = sdk_page(ranker, folder, shopper)
    page_scores = np.array([r["score"] for r in state.get("ranking", [])])
    same_ranking = [r["id"] for r in state.get("ranking", [])] == top
    return {
        "shopper": shopper["id"],
        "status": state["status"],
        "same_ranking": same_ranking,
        "same_sections": state.get("sections") == sections,
        "max_score_difference": float(np.abs(page_scores - scores).max()) if same_ranking and top else 0.0,
        "sections": [s["key"] for s in sections],
        "load_ms": round(float(state.get("loadMs", float("nan"))), 1),
        "rank_ms": round(float(state.get("rankMs", float("nan"))), 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulation.demo_page", description=__doc__)
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--run", type=Path, required=True, help="the run the service serves")
    parser.add_argument("--public-key", type=Path, required=True)
    parser.add_argument("--shoppers", type=Path, required=True, help="demo shoppers (JSON lines)")
    parser.add_argument("--screenshots", type=Path, required=True, help="folder for one PNG per shopper")
    args = parser.parse_args(argv)
    config = ServiceConfig(
        release_store=args.store,
        run_dir=args.run,
        public_key=args.public_key,
        demo_shoppers=str(args.shoppers),
    )
    store = ReleaseStore(args.store)
    latest = store.latest()
    if latest is None:
        print("no release in the store", file=sys.stderr)
        return 2
    ok = True
    with running(config) as base, sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        shoppers = read_demo_shoppers(args.shoppers)
        warm = warm_rank_ms(browser, base, [s["id"] for s in shoppers])
        for shopper in shoppers:
            url = f"{base}/demo?shopper={shopper['id']}"
            state, _ = open_demo(browser, url, args.screenshots / f"demo-{shopper['id']}.png")
            ranker = sdk_ranker(store, latest, load_public_key(args.public_key))
            result = compare(state, ranker, store.folder(latest), shopper)
            result["warm_rank_ms"] = warm[shopper["id"]]
            ok = ok and result["status"] == "ready" and result["same_ranking"] and result["same_sections"]
            print(json.dumps(result))
        browser.close()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
