// In-browser port of client/device/homepage.py: the same sections, order, rules, thresholds, tie-breaks and
// template copy. Sections are filled so that the more personal ones pick first: "Because you bought X"
// (items related to X that are not substitutes of it, by this shopper's scores; "Goes well with X"),
// "Because you viewed X" (items close to X, nearest first; "Similar to X"; never a purchased X), then
// "For you" (placed first on the page; maximal marginal relevance with `diversity`), "New for you",
// "Deals for you", "Trending" (only when the release carries counts). Closeness to X is the z-score of an
// item's cosine with X against X's cosines with BACKGROUND_ROWS evenly strided rows; a reason section shows
// only items its rule admits, or is dropped. No item twice, purchased items left out unless their category is
// re-buyable, at most perCategory items of a (known) top-level category in For you, New, Deals and Trending.
// Cosines, z-scores and MMR are computed in float64, as the Python module computes them.

import { rankRows } from "./ranker.js";

const SECONDS_PER_DAY = 86400;
const BACKGROUND_ROWS = 128; // homepage.py BACKGROUND_ROWS
const REASON_POOL = 8; // homepage.py REASON_POOL
const MMR_POOL = 4; // homepage.py MMR_POOL

/** HomepageRules' defaults in client/device/homepage.py. */
export const DEFAULT_RULES = Object.freeze({
  sectionSize: 8,
  perCategory: 3,
  newDays: 30,
  becauseSections: 2,
  rebuyableCategories: [],
  boughtSections: 1,
  diversity: 0.3,
  similarZ: 1.75,
  similarShare: 0.6,
});

export function topCategory(item) {
  return String(item.category || "").split(">")[0].trim() || "the shop";
}

/** homepage.py leaf_category: the whole category path, "" when the item has none. */
export function leafCategory(item) {
  return String(item.category || "").trim();
}

/** TemplateCopy.line. */
export function templateCopy(item, { section, tastes, reason }) {
  const category = topCategory(item);
  if (section === "because" && reason) return `Similar to ${reason}`;
  if (section === "bought" && reason) return `Goes well with ${reason}`;
  if (section === "deals") return `On offer now in ${category}` + (item.price ? ` at ${item.price.toFixed(2)}` : "");
  if (section === "new") return `New in ${category}`;
  if (section === "trending") return `Popular in ${category} lately`;
  if (tastes.includes(category)) return `Picked for your taste in ${category}`;
  return `Something new to try in ${category}`;
}

/** homepage.py unit_rows for one row: its float64 unit vector (a zero vector stays zero). */
function unitVector(ranker, row) {
  const v = ranker.itemVector(row);
  let sum = 0;
  for (let d = 0; d < v.length; d += 1) sum += v[d] * v[d];
  const norm = Math.sqrt(sum) || 1.0;
  return Float64Array.from(v, (x) => x / norm);
}

function dot(a, b) {
  let sum = 0;
  for (let d = 0; d < a.length; d += 1) sum += a[d] * b[d];
  return sum;
}

/** homepage.py mmr_order: positions of the candidates in maximal-marginal-relevance order. */
export function mmrOrder(relevance, units, diversity) {
  const n = relevance.length;
  const left = new Array(n).fill(true);
  let penalty = new Float64Array(n);
  const order = [];
  for (let step = 0; step < n; step += 1) {
    let pick = -1;
    let best = -Infinity;
    for (let i = 0; i < n; i += 1) {
      const objective = left[i] ? (1.0 - diversity) * relevance[i] - diversity * penalty[i] : -Infinity;
      if (pick < 0 || objective > best) [pick, best] = [i, objective];
    }
    order.push(pick);
    left[pick] = false;
    const similarity = Float64Array.from(units, (u) => dot(u, units[pick]));
    penalty = step === 0 ? similarity : Float64Array.from(penalty, (p, i) => Math.max(p, similarity[i]));
  }
  return order;
}

export class Homepage {
  constructor(ranker, rules = DEFAULT_RULES, copy = templateCopy) {
    Object.assign(this, { ranker, rules: { ...DEFAULT_RULES, ...rules }, copy });
    this.categories = ranker.items.map(topCategory);
    this.leaves = ranker.items.map(leafCategory);
    const n = ranker.nItems;
    const sample = Math.min(BACKGROUND_ROWS, n);
    this.backgroundRows = Array.from({ length: sample }, (_, i) => Math.floor((i * n) / Math.max(sample, 1)));
    this.backgroundUnits = this.backgroundRows.map((row) => unitVector(ranker, row));
  }

  /** [{key, title, cards: [{item_id, title, copy, reason}]}] for this history (Homepage.compose). */
  async compose(history, now, { purchased = new Set(), trendingCounts = null } = {}) {
    const { ranker, rules } = this;
    const user = await ranker.userVector(history, now);
    const scores = user !== null ? ranker.scores(user) : Float32Array.from(ranker.bias);
    const bought = new Set([...purchased, ...history.filter((e) => e.event === "purchase").map((e) => e.item_id)]);
    const used = this.blocked(history, bought);
    const tastes = this.tastes(history);
    const sections = [];
    const recent = user !== null ? this.recentDistinct(history) : [];
    const boughtRows = new Set([...bought].filter((id) => ranker.index.has(id)).map((id) => ranker.index.get(id)));
    for (const row of recent.filter((r) => boughtRows.has(r)).slice(0, rules.boughtSections)) {
      const title = ranker.items[row].title;
      sections.push(this.reasonSection("bought", `Because you bought ${title}`, row, scores, used, tastes));
    }
    for (const row of recent.filter((r) => !boughtRows.has(r)).slice(0, rules.becauseSections)) {
      const title = ranker.items[row].title;
      sections.push(this.reasonSection("because", `Because you viewed ${title}`, row, scores, used, tastes));
    }
    if (user !== null) sections.unshift(this.forYou(scores, used, tastes));
    const fresh = ranker.items.map((item) => (item.created_at || 0) >= now - rules.newDays * SECONDS_PER_DAY);
    sections.push(this.section("new", "New for you", masked(scores, fresh), used, tastes));
    const promo = ranker.items.map((item) => Boolean(item.on_promotion));
    sections.push(this.section("deals", "Deals for you", masked(scores, promo), used, tastes));
    if (trendingCounts !== null) {
      if (trendingCounts.length !== ranker.nItems) throw new Error(`trending counts must have one value per item (${ranker.nItems})`);
      sections.push(this.section("trending", "Trending", trendingOrder(trendingCounts, scores), used, tastes));
    }
    return sections.filter((s) => s.cards.length);
  }

  /** Homepage.closeness: z-scores of the cosines of `rows` with item `reason` against its background. */
  closeness(reason, rows) {
    const x = unitVector(this.ranker, reason);
    const background = [];
    this.backgroundRows.forEach((row, i) => {
      if (row !== reason) background.push(dot(this.backgroundUnits[i], x));
    });
    const mean = background.length ? background.reduce((a, b) => a + b, 0) / background.length : 0.0;
    const variance = background.length ? background.reduce((a, b) => a + (b - mean) ** 2, 0) / background.length : 0.0;
    const std = Math.sqrt(variance);
    return rows.map((row) => (dot(unitVector(this.ranker, row), x) - mean) / (std > 0 ? std : 1.0));
  }

  /** Homepage._reason_section: "because" (close to the reason) or "bought" (related, not a substitute). */
  reasonSection(key, title, reason, scores, used, tastes) {
    const { ranker, rules } = this;
    const near = ranker.dots(ranker.itemVector(reason));
    const depth = Math.min(ranker.nItems, REASON_POOL * rules.sectionSize + used.size);
    const pool = rankRows(near).slice(0, depth).filter((row) => row !== reason);
    const z = this.closeness(reason, pool);
    const close = pool.length ? Math.max(rules.similarZ, rules.similarShare * Math.max(...z)) : Infinity;
    let rows;
    if (key === "because") {
      rows = pool.filter((_, i) => z[i] >= close);
    } else {
      const { leaves } = this;
      const leaf = leaves[reason];
      // not a substitute: another leaf where both items have a category, else not close to X
      rows = pool.filter((row, i) => z[i] >= rules.similarZ && (leaf && leaves[row] ? leaves[row] !== leaf : z[i] < close));
      rows.sort((a, b) => (scores[a] > scores[b] ? -1 : scores[a] < scores[b] ? 1 : a - b)); // scores, ties by row
    }
    return this.filled({ key, title, cards: [] }, rows, scores, used, tastes, ranker.items[reason].title, false);
  }

  /** Homepage._for_you: the ranking, its first MMR_POOL * sectionSize unused items in MMR order. */
  forYou(scores, used, tastes) {
    const { rules } = this;
    const ranked = rankRows(scores);
    const section = { key: "for_you", title: "For you", cards: [] };
    if (rules.diversity === 0) return this.filled(section, ranked, scores, used, tastes);
    const pool = [];
    let next = 0;
    for (; next < ranked.length; next += 1) {
      const row = ranked[next];
      if (!Number.isFinite(scores[row])) break;
      if (!used.has(row)) {
        pool.push(row);
        if (pool.length === MMR_POOL * rules.sectionSize) break;
      }
    }
    const raw = pool.map((row) => scores[row]);
    const lo = Math.min(...raw);
    const spread = pool.length ? Math.max(...raw) - lo : 0.0;
    const relevance = Float64Array.from(raw, (s) => (spread > 0 ? (s - lo) / spread : 1.0));
    const units = pool.map((row) => unitVector(this.ranker, row));
    const order = mmrOrder(relevance, units, rules.diversity).map((i) => pool[i]);
    return this.filled(section, [...order, ...ranked.slice(next + 1)], scores, used, tastes);
  }

  section(key, title, scores, used, tastes) {
    return this.filled({ key, title, cards: [] }, rankRows(scores), scores, used, tastes);
  }

  /** Homepage._filled: cards of `rows` in order until full or a score is not finite. */
  filled(section, rows, scores, used, tastes, reason = null, cap = true) {
    const perCategory = new Map();
    for (const row of rows) {
      if (section.cards.length === this.rules.sectionSize || !Number.isFinite(scores[row])) break;
      const category = this.categories[row];
      const capped = cap && Boolean(this.leaves[row]); // an item without a category has no cap
      if (used.has(row) || (capped && (perCategory.get(category) ?? 0) >= this.rules.perCategory)) continue;
      const item = this.ranker.items[row];
      const line = this.copy(item, { section: section.key, tastes, reason });
      section.cards.push({ item_id: item.id, title: item.title, copy: line, reason });
      used.add(row);
      perCategory.set(category, (perCategory.get(category) ?? 0) + 1);
    }
    return section;
  }

  blocked(history, purchased) {
    const { index } = this.ranker;
    const blocked = new Set(history.filter((e) => index.has(e.item_id)).map((e) => index.get(e.item_id)));
    for (const id of purchased) {
      if (!index.has(id)) continue;
      const row = index.get(id);
      if (this.rules.rebuyableCategories.includes(this.categories[row])) blocked.delete(row);
      else blocked.add(row);
    }
    for (const row of this.ranker.hidden) blocked.add(row); // out of stock or withdrawn (catalogue delta)
    return blocked;
  }

  /** Homepage._recent_distinct: distinct history rows, newest first, not those a catalogue delta hid. */
  recentDistinct(history) {
    const rows = [];
    for (const event of [...history].sort((a, b) => b.timestamp - a.timestamp)) {
      const row = this.ranker.index.get(event.item_id);
      if (row !== undefined && !rows.includes(row) && !this.ranker.hidden.has(row)) rows.push(row);
    }
    return rows;
  }

  tastes(history) {
    const counts = new Map();
    for (const event of history) {
      const row = this.ranker.index.get(event.item_id);
      if (row !== undefined) counts.set(this.categories[row], (counts.get(this.categories[row]) ?? 0) + 1);
    }
    return [...counts.keys()].sort((a, b) => counts.get(b) - counts.get(a));
  }
}

function masked(scores, keep) {
  return Float32Array.from(scores, (s, i) => (keep[i] ? s : -Infinity));
}

/** counts + 1e-6 * (scores - min) / spread, with numpy's float32 steps: ties broken by this shopper's scores. */
function trendingOrder(counts, scores) {
  let lo = Infinity;
  let hi = -Infinity;
  for (const s of scores) {
    if (Number.isFinite(s)) {
      lo = Math.min(lo, s);
      hi = Math.max(hi, s);
    }
  }
  const spread = Math.fround(hi - lo) || 1.0;
  const low = scores.reduce((a, b) => Math.min(a, b), Infinity);
  return Float64Array.from(scores, (s, i) => counts[i] + Math.fround(Math.fround(1e-6 * Math.fround(s - low)) / spread));
}
