// In-browser port of client/device/ranker.py's DeviceRanker on its exact float32 path: the user vector
// from the last `max_history` known events through the release's ONNX user tower (onnxruntime-web, wasm,
// one thread), scores t * <u, v> + bias against every item vector, top-k with items already in the
// history left out. Float32 rounding is kept where numpy rounds (Float32Array stores, Math.fround).
// Nothing leaves the browser: history, user vector and scores stay in this page's memory.

const SECONDS_PER_HOUR = 3600;
const SECONDS_PER_DAY = 86400;

/** shared/history.py gap_buckets: 1 + floor(log2(1 + hours since the event)), capped at nGapBuckets - 1. */
export function gapBucket(gapSeconds, nGapBuckets) {
  const hours = Math.max(gapSeconds, 0) / SECONDS_PER_HOUR;
  return Math.min(1 + Math.floor(Math.log2(1 + hours)), nGapBuckets - 1);
}

/** shared/history.py request_context: (hour, weekday) of unix seconds, UTC; 1970-01-01 was a Thursday. */
export function requestContext(now) {
  const mod = (a, n) => ((a % n) + n) % n;
  return [mod(Math.floor(now / SECONDS_PER_HOUR), 24), mod(Math.floor(now / SECONDS_PER_DAY) + 3, 7)];
}

/** Stable by-key sort of a copy (Array.prototype.sort is stable, as Python's sorted is). */
function sortedBy(values, key) {
  return [...values].sort((a, b) => key(a) - key(b));
}

/** Item rows by descending score, ties by row: numpy's argsort(-scores, kind="stable"). */
export function rankRows(scores) {
  const rows = Array.from(scores, (_, i) => i);
  return rows.sort((a, b) => (scores[a] > scores[b] ? -1 : scores[a] < scores[b] ? 1 : a - b));
}

export class Ranker {
  /**
   * @param ort the onnxruntime-web module; session: its InferenceSession of user_tower.onnx
   * @param vectors Float32Array (N * dim) item vectors, row-major; bias Float32Array (N)
   * @param eventTypes shared/data/schema.py EVENT_TYPES (event code = position); nGapBuckets: N_GAP_BUCKETS
   */
  constructor({ ort, session, items, vectors, dim, bias, temperature, maxHistory, eventTypes, nGapBuckets }) {
    Object.assign(this, { ort, session, items, vectors, dim, bias, temperature, maxHistory, nGapBuckets });
    this.eventCode = new Map(eventTypes.map((name, code) => [name, code]));
    this.index = new Map(items.map((item, row) => [item.id, row]));
    this.hidden = new Set(); // rows a catalogue delta took off the pages (out of stock, withdrawn)
  }

  /** DeviceRanker.apply_delta for a VERIFIED catalogue delta: rows of items the release has are replaced,
   * new items appended in the delta's order, items whose status is not "active" hidden from rankings and
   * pages (their rows stay, so a history naming them still counts). */
  applyDelta({ items, vectors, dim, bias }) {
    if (dim !== this.dim) throw new Error(`delta vectors are ${dim}-d, the release's ${this.dim}-d`);
    this.last = null; // a remembered user vector was built from the old item vectors
    const fresh = [];
    items.forEach((item, i) => {
      const row = this.index.get(item.id);
      if (row === undefined) {
        fresh.push(i);
        return;
      }
      this.vectors.set(vectors.subarray(i * dim, (i + 1) * dim), row * dim);
      this.bias[row] = bias[i];
      this.items[row] = item;
    });
    const n = this.nItems;
    const grown = new Float32Array((n + fresh.length) * dim);
    grown.set(this.vectors);
    const grownBias = new Float32Array(n + fresh.length);
    grownBias.set(this.bias);
    fresh.forEach((i, j) => {
      grown.set(vectors.subarray(i * dim, (i + 1) * dim), (n + j) * dim);
      grownBias[n + j] = bias[i];
      this.items.push(items[i]);
      this.index.set(items[i].id, n + j);
    });
    Object.assign(this, { vectors: grown, bias: grownBias });
    for (const item of items) {
      if (item.status === "active") this.hidden.delete(this.index.get(item.id));
      else this.hidden.add(this.index.get(item.id));
    }
  }

  get nItems() {
    return this.items.length;
  }

  /** (dim) float32 dot products <v_row, x> for every row, or for `rows` only. */
  dots(x, rows = null) {
    const { vectors, dim } = this;
    const n = rows ? rows.length : this.nItems;
    const out = new Float32Array(n);
    for (let j = 0; j < n; j += 1) {
      const base = (rows ? rows[j] : j) * dim;
      let sum = 0;
      for (let d = 0; d < dim; d += 1) sum += vectors[base + d] * x[d];
      out[j] = sum;
    }
    return out;
  }

  itemVector(row) {
    return this.vectors.subarray(row * this.dim, (row + 1) * this.dim);
  }

  /** (dim) unit user vector from the most recent maxHistory known events; null when none is usable.
   * The last (history, now) is remembered, so the homepage and the ranking table run the tower once. */
  async userVector(history, now) {
    if (this.last?.history !== history || this.last?.now !== now) {
      this.last = { history, now, user: this.computeUserVector(history, now) };
    }
    return this.last.user;
  }

  async computeUserVector(history, now) {
    const known = history.filter((e) => this.index.has(e.item_id) && this.eventCode.has(e.event));
    const recent = sortedBy(known, (e) => e.timestamp).slice(-this.maxHistory);
    if (!recent.length) return null;
    const { ort, dim } = this;
    const length = recent.length;
    const stacked = new Float32Array(length * dim);
    recent.forEach((e, i) => stacked.set(this.itemVector(this.index.get(e.item_id)), i * dim));
    const int64 = (values) => BigInt64Array.from(values, (v) => BigInt(v));
    const [hour, weekday] = requestContext(now);
    const feeds = {
      history: new ort.Tensor("float32", stacked, [1, length, dim]),
      events: new ort.Tensor("int64", int64(recent.map((e) => this.eventCode.get(e.event) + 1)), [1, length]),
      gaps: new ort.Tensor("int64", int64(recent.map((e) => gapBucket(now - e.timestamp, this.nGapBuckets))), [1, length]),
      hour: new ort.Tensor("int64", int64([hour]), [1]),
      weekday: new ort.Tensor("int64", int64([weekday]), [1]),
    };
    const output = await this.session.run(feeds);
    return Float32Array.from(output.user_vector.data.subarray(0, dim));
  }

  /** (N) float32 scores t * <u, v> + bias of every item. */
  scores(user) {
    const dots = this.dots(user);
    const out = new Float32Array(this.nItems);
    for (let i = 0; i < out.length; i += 1) out[i] = Math.fround(this.temperature * dots[i]) + this.bias[i];
    return out;
  }

  /** Rows of the k best scores, best first, never an excluded row. */
  topK(scores, k, exclude = []) {
    const masked = Float32Array.from(scores);
    for (const row of exclude) masked[row] = -Infinity;
    const finite = masked.reduce((n, s) => n + (Number.isFinite(s) ? 1 : 0), 0);
    return rankRows(masked).slice(0, Math.max(0, Math.min(k, finite)));
  }

  /** [{row, id, score}] of the top k for this history, items already in the history left out. */
  async recommend(history, now, k = 10) {
    const user = await this.userVector(history, now);
    if (user === null) throw new Error("no event in the history names an item of this release");
    const scores = this.scores(user);
    const seen = new Set(history.filter((e) => this.index.has(e.item_id)).map((e) => this.index.get(e.item_id)));
    return this.topK(scores, k, [...seen, ...this.hidden]).map((row) => ({ row, id: this.items[row].id, score: scores[row] }));
  }
}
