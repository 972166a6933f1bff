// The demo homepage page: verifies the latest release in the browser, loads it into onnxruntime-web and
// ranks the picked simulated shopper's homepage here, in the page. What the service sends: the signed
// manifest, the release files, and the synthetic shoppers' histories (a real shopper's history would
// already be on their device; these are simulated ones, so the service hands them out).

import * as ort from "onnxruntime-web";
import { Homepage } from "./homepage.js";
import { parseNpy } from "./npy.js";
import { Ranker } from "./ranker.js";
import { ReleaseRefusedError, deltaHead, fetchVerified, verifyIndex, verifyManifest } from "./verify.js";

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

/** The service's signed release index, verified as a device does (client/device/sync.py): the pinned key,
 * not expired, its serial not below the highest this browser accepted before (kept in localStorage). */
async function loadIndex() {
  const response = await fetch(`${config.apiBase}/v1/releases`, { cache: "no-store" });
  if (!response.ok) {
    const error = (await response.json().catch(() => ({}))).error ?? {};
    const message = `release index: ${error.message ?? `HTTP ${response.status}`}`;
    // the service checks its index with the same pinned key and says so when it does not verify
    throw error.type === "SignatureError" ? new ReleaseRefusedError(message) : new Error(message);
  }
  const stored = `fedhome-index-serial:${config.publicKey}`;
  const minSerial = Number(localStorage.getItem(stored) ?? 0);
  const index = await verifyIndex(await response.text(), config.publicKey, { nowMs: Date.now(), minSerial });
  localStorage.setItem(stored, String(index.serial));
  return index;
}

async function loadRelease(index) {
  const live = index.releases.filter((r) => !r.withdrawn).map((r) => r.version);
  if (!live.length) throw new Error("the release index lists no release that is not withdrawn");
  const newest = Math.max(...live);
  const response = await fetch(`${config.apiBase}/v1/releases/${newest}`, { cache: "no-store" });
  if (!response.ok) throw new Error(`release ${newest}: HTTP ${response.status}`);
  const { manifest, digest } = await verifyManifest(await response.text(), config.publicKey);
  if (manifest.version !== newest) throw new ReleaseRefusedError(`release ${manifest.version} served where the index names ${newest}`);
  const file = (name) => fetchVerified(`${config.apiBase}/v1/releases/${manifest.version}/files`, manifest, name);
  const [scoringBytes, itemsBytes, biasBytes, vectorBytes, towerBytes] = await Promise.all(
    ["scoring.json", "items.json", "item_bias.npy", "item_vectors_f32.npy", "user_tower.onnx"].map(file),
  );
  const trending = await loadTrending(manifest, file);
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
  return { manifest, digest, ranker, trending };
}

/** The release's DP trending counts (client/device/trending_counts.py release_trending): the file its signed
 * privacy block names, one finite value per release item; null when the release has none. */
async function loadTrending(manifest, file) {
  const block = manifest.privacy?.trending;
  if (block === undefined || block === null) return null;
  if (!(block.file in manifest.files)) throw new ReleaseRefusedError(`the release's trending counts ${block.file} are not a file of its signed manifest`);
  const counts = Float64Array.from(parseNpy(await file(block.file)).data, Number);
  if (counts.some((c) => !Number.isFinite(c))) throw new ReleaseRefusedError("trending counts must be finite");
  return { counts, block };
}

/** Stable JSON of a plain value (keys sorted), to compare two parsed objects. */
function stable(value) {
  if (Array.isArray(value)) return `[${value.map(stable).join(",")}]`;
  if (value && typeof value === "object") {
    return `{${Object.keys(value).sort().map((k) => `${JSON.stringify(k)}:${stable(value[k])}`).join(",")}}`;
  }
  return JSON.stringify(value);
}

/** The catalogue delta the verified index names as the release's head (shared/release_index.py), verified;
 * null when it names none. Deltas are cumulative, so only the head is read. */
async function loadDelta(index, base, baseDigest) {
  const head = deltaHead(index, base.version);
  if (head === null) return null;
  const releaseUrl = `${config.apiBase}/v1/releases/${base.version}`;
  const response = await fetch(`${releaseUrl}/deltas/${head.sequence}`, { cache: "no-store" });
  if (!response.ok) throw new ReleaseRefusedError(`delta ${head.sequence}: HTTP ${response.status}`);
  const { manifest, digest } = await verifyManifest(await response.text(), config.publicKey, "catalogue-delta");
  if (digest !== head.manifestSha256) throw new ReleaseRefusedError("the delta is not the one signed as the release's head");
  if (manifest.release !== base.version || manifest.base_manifest_sha256 !== baseDigest) {
    throw new ReleaseRefusedError(`the delta is for another release than ${base.version}`);
  }
  if (stable(manifest.model) !== stable(base.model)) throw new ReleaseRefusedError("the delta's vectors come from another model than its release's");
  const file = (name) => fetchVerified(`${releaseUrl}/deltas/${head.sequence}/files`, manifest, name, "delta file");
  const [itemsBytes, vectorBytes, biasBytes] = await Promise.all(["items.json", "item_vectors_f32.npy", "item_bias.npy"].map(file));
  const items = JSON.parse(new TextDecoder().decode(itemsBytes));
  const vectors = parseNpy(vectorBytes);
  const bias = parseNpy(biasBytes).data;
  const statuses = ["active", "out_of_stock", "withdrawn"];
  if (!Array.isArray(items) || vectors.shape[0] !== items.length || bias.length !== items.length) {
    throw new ReleaseRefusedError(`delta arrays disagree with its ${items.length} items`);
  }
  if (items.some((item) => !statuses.includes(item?.status)) || new Set(items.map((i) => i.id)).size !== items.length) {
    throw new ReleaseRefusedError("a delta item has no valid status, or an item is named twice");
  }
  return { sequence: manifest.sequence, items, vectors: vectors.data, dim: vectors.shape[1], bias };
}

function showRelease(manifest, trending) {
  const p = manifest.privacy ?? {};
  const t = trending?.block;
  $("trending").textContent = t
    ? `Trending: counts released under user-level DP after round ${t.after_round} (noise std ${+Number(t.count_noise_std).toPrecision(3)} per count, epsilon spent by then ${+Number(t.epsilon).toPrecision(3)}).`
    : "";
  $("release").textContent =
    `Release ${manifest.version} verified in this browser (Ed25519 key ${manifest.key_id}, every file's sha256): ` +
    `user-level epsilon ${+Number(p.epsilon_all ?? p.epsilon).toPrecision(3)} at delta ${+Number(p.delta).toPrecision(3)}` +
    (p.epsilon_all != null ? " (the model and its trending counts together)" : "") +
    ", " +
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
  // counts are per release item; items a catalogue delta added have none yet (0), as fedhome-client does
  const counts = trending === null ? null : Float64Array.from({ length: ranker.nItems }, (_, i) => trending.counts[i] ?? 0);
  setStatus("ranking");
  const purchased = new Set(shopper.history.filter((e) => e.event === "purchase").map((e) => e.item_id));
  const started = performance.now();
  const sections = await new Homepage(ranker).compose(shopper.history, shopper.now, { purchased, trendingCounts: counts });
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
    if (!window.isSecureContext || !crypto.subtle) {
      throw new Error("WebCrypto needs a secure context: open the page on 127.0.0.1 / localhost or over HTTPS");
    }
    const started = performance.now();
    const index = await loadIndex();
    const release = await loadRelease(index);
    try {
      const delta = await loadDelta(index, release.manifest, release.digest);
      if (delta !== null) {
        release.ranker.applyDelta(delta);
        state.delta = delta.sequence;
        $("delta").textContent = `Catalogue delta ${delta.sequence} verified and applied: ${delta.items.length} items added or changed since the release.`;
      }
    } catch (error) {
      // as on a device: a delta that does not verify is not used; the verified release still is
      state.deltaError = error.message;
      $("delta").textContent = `Catalogue delta refused: ${error.message}`;
      $("delta").classList.add("failed");
    }
    state.loadMs = performance.now() - started; // manifest + files + sha256 + signature + onnxruntime session
    showRelease(release.manifest, release.trending);
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
