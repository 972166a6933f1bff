// The demo homepage page: verifies the latest release in the browser, loads it into onnxruntime-web and
// ranks the picked simulated shopper's homepage here, in the page. What the service sends: the signed
// manifest, the release files, and the synthetic shoppers' histories (a real shopper's history would
// already be on their device; these are simulated ones, so the service hands them out).

import * as ort from "onnxruntime-web";
import { Homepage } from "./homepage.js";
import { parseNpy } from "./npy.js";
import { Ranker } from "./ranker.js";
import { ReleaseRefusedError, fetchVerified, verifyManifest } from "./verify.js";

const TRENDING = "trending_counts.npy";
const RANKING_K = 20;
const config = JSON.parse(document.getElementById("fedhome-demo-config").textContent);
const $ = (id) => document.getElementById(id);
const state = { status: "loading" };
window.fedhomeDemo = state; // what the page did, for the browser tests (never sent anywhere)

function setStatus(status) {
  state.status = status;
  document.body.dataset.status = status;
}

function element(tag, attributes = {}, text = "") {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  node.textContent = text;
  return node;
}

function fail(error) {
  state.error = error.message;
  setStatus(error instanceof ReleaseRefusedError ? "refused" : "error");
  $("content").hidden = true;
  if (state.status === "refused") $("release").textContent = "Release not verified: nothing of it is used.";
  $("release").classList.add("failed");
  $("error").hidden = false;
  $("error").textContent = `${state.status === "refused" ? "Release refused" : "Error"}: ${error.message}`;
}

async function loadRelease() {
  const response = await fetch(`${config.apiBase}/v1/releases/latest`, { cache: "no-store" });
  if (!response.ok) throw new Error(`no release to show (HTTP ${response.status})`);
  const manifest = await verifyManifest(await response.text(), config.publicKey);
  const file = (name) => fetchVerified(config.apiBase, manifest, name);
  const [scoringBytes, itemsBytes, biasBytes, vectorBytes, towerBytes] = await Promise.all(
    ["scoring.json", "items.json", "item_bias.npy", "item_vectors_f32.npy", "user_tower.onnx"].map(file),
  );
  const trending = TRENDING in manifest.files ? Float64Array.from(parseNpy(await file(TRENDING)).data, Number) : null;
  const decode = (bytes) => JSON.parse(new TextDecoder().decode(bytes));
  const scoring = decode(scoringBytes);
  const vectors = parseNpy(vectorBytes);
  ort.env.wasm.numThreads = 1;
  ort.env.wasm.wasmPaths = config.ortBase;
  const session = await ort.InferenceSession.create(towerBytes, { executionProviders: ["wasm"] });
  const ranker = new Ranker({
    ort,
    session,
    items: decode(itemsBytes),
    vectors: vectors.data,
    dim: vectors.shape[1],
    bias: parseNpy(biasBytes).data,
    temperature: scoring.temperature,
    maxHistory: scoring.max_history,
    eventTypes: config.eventTypes,
    nGapBuckets: config.nGapBuckets,
  });
  return { manifest, ranker, trending };
}

function showRelease(manifest) {
  const p = manifest.privacy ?? {};
  $("release").textContent =
    `Release ${manifest.version} verified in this browser (Ed25519 key ${manifest.key_id}, every file's sha256): ` +
    `user-level epsilon ${Number(p.epsilon).toPrecision(3)} at delta ${Number(p.delta).toPrecision(3)}, ` +
    `model round ${manifest.model?.round}.`;
}

function showHistory(ranker, shopper) {
  const list = $("history");
  list.replaceChildren();
  for (const e of shopper.history) {
    const row = ranker.index.get(e.item_id);
    const title = row === undefined ? `${e.item_id} (not in this release)` : ranker.items[row].title;
    list.append(element("li", {}, `${e.event}: ${title}`));
  }
}

function showSections(sections) {
  const root = $("sections");
  root.replaceChildren();
  for (const section of sections) {
    const box = element("section", { class: "shelf", "data-key": section.key });
    box.append(element("h2", {}, section.title));
    const cards = element("ol", { class: "cards" });
    for (const card of section.cards) {
      const li = element("li", { class: "card", "data-item-id": card.item_id });
      if (card.reason) li.setAttribute("data-reason", card.reason); // the reason is the section's title
      li.append(element("strong", {}, card.title), element("span", { class: "copy" }, card.copy));
      cards.append(li);
    }
    box.append(cards);
    root.append(box);
  }
}

function showRanking(ranker, ranking) {
  const body = $("ranking");
  body.replaceChildren();
  ranking.forEach((r, i) => {
    const tr = element("tr", { "data-item-id": r.id, "data-score": String(r.score) });
    tr.append(element("td", {}, String(i + 1)), element("td", {}, ranker.items[r.row].title), element("td", {}, r.score.toFixed(4)));
    body.append(tr);
  });
}

async function rankShopper(release, shopper) {
  const { ranker, trending } = release;
  setStatus("ranking");
  const purchased = new Set(shopper.history.filter((e) => e.event === "purchase").map((e) => e.item_id));
  const started = performance.now();
  const sections = await new Homepage(ranker).compose(shopper.history, shopper.now, { purchased, trendingCounts: trending });
  const ranking = await ranker.recommend(shopper.history, shopper.now, RANKING_K).catch(() => []);
  const elapsed = performance.now() - started;
  showHistory(ranker, shopper);
  showSections(sections);
  showRanking(ranker, ranking);
  $("timing").textContent = `Ranked ${ranker.nItems} items in this browser in ${elapsed.toFixed(1)} ms.`;
  Object.assign(state, {
    shopper: shopper.id,
    now: shopper.now,
    rankMs: elapsed,
    ranking: ranking.map(({ id, score }) => ({ id, score })),
    sections,
  });
  setStatus("ready");
}

async function main() {
  try {
    const started = performance.now();
    const release = await loadRelease();
    state.loadMs = performance.now() - started; // manifest + files + sha256 + signature + onnxruntime session
    showRelease(release.manifest);
    state.release = release.manifest.version;
    const response = await fetch(`${config.apiBase}/v1/demo/shoppers`);
    const body = await response.json();
    if (!response.ok) throw new Error(body.error?.message ?? `shoppers: HTTP ${response.status}`);
    const picker = $("shopper");
    for (const s of body.shoppers) picker.append(element("option", { value: s.id }, s.label || s.id));
    const wanted = new URLSearchParams(location.search).get("shopper");
    if (wanted && body.shoppers.some((s) => s.id === wanted)) picker.value = wanted;
    const pick = () => rankShopper(release, body.shoppers.find((s) => s.id === picker.value)).catch(fail);
    picker.addEventListener("change", pick);
    $("content").hidden = false;
    if (body.shoppers.length) await pick();
    else fail(new Error("the service has no demo shoppers"));
  } catch (error) {
    fail(error);
  }
}

main();
