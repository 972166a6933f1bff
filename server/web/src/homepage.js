// In-browser port of client/device/homepage.py: the same sections, order, rules and template copy.
// Sections are filled so that the more personal ones pick first: "Because you viewed X" (nearest items by
// item vector to each of the last distinct history items, none a catalogue delta hid), then "For you"
// (placed first on the page), "New for you", "Deals for you", "Trending" (only when the release carries
// counts). No item twice, purchased items left out unless their category is re-buyable, at most
// perCategory items of a category per section.

import { rankRows } from "./ranker.js";

const SECONDS_PER_DAY = 86400;

/** HomepageRules' defaults in client/device/homepage.py. */
export const DEFAULT_RULES = Object.freeze({
  sectionSize: 8,
  perCategory: 3,
  newDays: 30,
  becauseSections: 2,
  rebuyableCategories: [],
});

export function topCategory(item) {
  return String(item.category || "").split(">")[0].trim() || "the shop";
}

/** TemplateCopy.line. */
export function templateCopy(item, { section, tastes, reason }) {
  const category = topCategory(item);
  if (section === "because" && reason) return `Goes well with ${reason}`;
  if (section === "deals") return `On offer now in ${category}` + (item.price ? ` at ${item.price.toFixed(2)}` : "");
  if (section === "new") return `New in ${category}`;
  if (section === "trending") return `Popular in ${category} lately`;
  if (tastes.includes(category)) return `Picked for your taste in ${category}`;
  return `Something new to try in ${category}`;
}

export class Homepage {
  constructor(ranker, rules = DEFAULT_RULES, copy = templateCopy) {
    Object.assign(this, { ranker, rules, copy });
    this.categories = ranker.items.map(topCategory);
  }

  /** [{key, title, cards: [{item_id, title, copy, reason}]}] for this history (Homepage.compose). */
  async compose(history, now, { purchased = new Set(), trendingCounts = null } = {}) {
    const { ranker, rules } = this;
    const user = await ranker.userVector(history, now);
    const scores = user !== null ? ranker.scores(user) : Float32Array.from(ranker.bias);
    const used = this.blocked(history, purchased);
    const tastes = this.tastes(history);
    const sections = [];
    const reasons = user !== null ? this.recentDistinct(history).slice(0, rules.becauseSections) : [];
    for (const row of reasons) {
      const near = ranker.dots(ranker.itemVector(row));
      const title = ranker.items[row].title;
      sections.push(this.section("because", `Because you viewed ${title}`, near, used, tastes, title));
    }
    if (user !== null) sections.unshift(this.section("for_you", "For you", scores, used, tastes));
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

  section(key, title, scores, used, tastes, reason = null) {
    const section = { key, title, cards: [] };
    const perCategory = new Map();
    for (const row of rankRows(scores)) {
      if (section.cards.length === this.rules.sectionSize || !Number.isFinite(scores[row])) break;
      const category = this.categories[row];
      if (used.has(row) || (perCategory.get(category) ?? 0) >= this.rules.perCategory) continue;
      const item = this.ranker.items[row];
      const line = this.copy(item, { section: key, tastes, reason });
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
