// The exact bytes a release manifest is signed over, rebuilt in the browser.
//
// shared/signing.py signs canonical_json(manifest without "signature"): Python's
// json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False) encoded as UTF-8. JSON.parse would
// lose what those bytes depend on (8.0 vs 8, 1e-05 vs 0.00001, integers above 2^53), so this parser keeps
// every number as its source token: Python writes numbers with repr() and reads them back to the same
// value, so the served token is the token that was signed. Strings are written with JSON.stringify, which
// escapes exactly what Python's ensure_ascii=False escapes (quote, backslash, control characters).

export class RawNumber {
  constructor(token) {
    this.token = token;
  }
  valueOf() {
    return Number(this.token);
  }
}

const NUMBER = /-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?/y;
const STRING = /"(?:[^"\\\u0000-\u001f]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})*"/y;
const SPACE = /[ \t\n\r]*/y;

/** Parse JSON text, numbers kept as RawNumber tokens. Throws SyntaxError on anything that is not JSON. */
export function parseKeepingNumbers(text) {
  let at = 0;
  const fail = (what) => {
    throw new SyntaxError(`manifest is not valid JSON: ${what} at character ${at}`);
  };
  const skip = () => {
    SPACE.lastIndex = at;
    SPACE.exec(text);
    at = SPACE.lastIndex;
  };
  const match = (pattern) => {
    pattern.lastIndex = at;
    const found = pattern.exec(text);
    if (!found) return null;
    at = pattern.lastIndex;
    return found[0];
  };
  const literal = (word, value) => {
    if (text.startsWith(word, at)) {
      at += word.length;
      return value;
    }
    return fail("unexpected token");
  };
  const value = () => {
    skip();
    const c = text[at];
    if (c === "{") return object();
    if (c === "[") return array();
    if (c === '"') return JSON.parse(match(STRING) ?? fail("bad string"));
    if (c === "t") return literal("true", true);
    if (c === "f") return literal("false", false);
    if (c === "n") return literal("null", null);
    const token = match(NUMBER);
    return token === null ? fail("unexpected token") : new RawNumber(token);
  };
  const object = () => {
    const out = new Map();
    at += 1;
    skip();
    if (text[at] === "}") {
      at += 1;
      return out;
    }
    for (;;) {
      skip();
      const key = JSON.parse(match(STRING) ?? fail("expected a key"));
      skip();
      if (text[at++] !== ":") fail("expected ':'");
      if (out.has(key)) fail(`duplicate key ${key}`);
      out.set(key, value());
      skip();
      const c = text[at++];
      if (c === "}") return out;
      if (c !== ",") fail("expected ',' or '}'");
    }
  };
  const array = () => {
    const out = [];
    at += 1;
    skip();
    if (text[at] === "]") {
      at += 1;
      return out;
    }
    for (;;) {
      out.push(value());
      skip();
      const c = text[at++];
      if (c === "]") return out;
      if (c !== ",") fail("expected ',' or ']'");
    }
  };
  const result = value();
  skip();
  if (at !== text.length) fail("trailing characters");
  return result;
}

/** Python's sort order for str keys: by code point (JS's default compares UTF-16 units). */
function byCodePoint(a, b) {
  const x = Array.from(a, (c) => c.codePointAt(0));
  const y = Array.from(b, (c) => c.codePointAt(0));
  for (let i = 0; i < Math.min(x.length, y.length); i += 1) {
    if (x[i] !== y[i]) return x[i] - y[i];
  }
  return x.length - y.length;
}

/** canonical_json of a parsed value, as a string (encode with TextEncoder for the signed bytes). */
export function canonical(value) {
  if (value instanceof RawNumber) return value.token;
  if (value === null || typeof value === "boolean") return String(value);
  if (typeof value === "string") return JSON.stringify(value);
  if (Array.isArray(value)) return `[${value.map(canonical).join(",")}]`;
  const keys = [...value.keys()].sort(byCodePoint);
  return `{${keys.map((k) => `${JSON.stringify(k)}:${canonical(value.get(k))}`).join(",")}}`;
}

/** The parsed value as plain JS objects and numbers, for reading (never for re-signing). */
export function plain(value) {
  if (value instanceof RawNumber) return Number(value.token);
  if (Array.isArray(value)) return value.map(plain);
  if (value instanceof Map) return Object.fromEntries([...value].map(([k, v]) => [k, plain(v)]));
  return value;
}
