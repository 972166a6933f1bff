// Release verification in the browser, the same checks as shared/release_manifest.py's verify_release:
// the manifest's Ed25519 signature against the PINNED public key (WebCrypto), its key id, format and kind,
// then each downloaded file's size and sha256 against the signed manifest; the checks of
// shared/release_index.py for the signed release index (pinned key, serial not below one accepted before,
// not expired) and the catalogue delta head it names. Anything that fails throws ReleaseRefusedError and
// nothing of what failed is used.

import { RawNumber, canonical, parseKeepingNumbers, plain } from "./canonical.js";

export const RELEASE_FORMAT = 1;
const FILE_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

export class ReleaseRefusedError extends Error {
  constructor(message) {
    super(message);
    this.name = "ReleaseRefusedError";
  }
}

function fromBase64(text) {
  const binary = atob(text);
  return Uint8Array.from(binary, (c) => c.charCodeAt(0));
}

function hex(buffer) {
  return Array.from(new Uint8Array(buffer), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** sha256 of bytes as lowercase hex (WebCrypto). */
export async function sha256Hex(bytes) {
  return hex(await crypto.subtle.digest("SHA-256", bytes));
}

/** key_id of shared/signing.py: the first 16 hex digits of sha256 over the 32 raw public-key bytes. */
export async function keyId(rawKey) {
  return (await sha256Hex(rawKey)).slice(0, 16);
}

function parse(text, what) {
  try {
    return parseKeepingNumbers(text);
  } catch (error) {
    throw new ReleaseRefusedError(`${what}: ${error.message}`);
  }
}

/** Check that `parsed` (a Map, with "key_id" and "signature") is signed by the pinned key (32 raw bytes,
 * base64) over canonical_json of itself without "signature"; `what` names it in errors. */
async function checkSignature(parsed, pinnedKeyBase64, what) {
  const rawKey = fromBase64(pinnedKeyBase64);
  const pinnedId = await keyId(rawKey);
  if (parsed.get("key_id") !== pinnedId) {
    throw new ReleaseRefusedError(`${what} signed by key ${parsed.get("key_id")}, not the pinned key ${pinnedId}`);
  }
  const unsigned = new Map([...parsed].filter(([k]) => k !== "signature"));
  const signedBytes = new TextEncoder().encode(canonical(unsigned));
  let valid = false;
  try {
    const key = await crypto.subtle.importKey("raw", rawKey, { name: "Ed25519" }, false, ["verify"]);
    const signature = fromBase64(String(parsed.get("signature")));
    valid = await crypto.subtle.verify({ name: "Ed25519" }, key, signature, signedBytes);
  } catch (error) {
    throw new ReleaseRefusedError(`${what}: signature does not verify (${error.name}: ${error.message})`);
  }
  if (!valid) throw new ReleaseRefusedError(`${what}: signature does not verify`);
}

/** {manifest (plain object), digest (sha256 hex of its canonical JSON, signature included)} after checking
 * its signature against the pinned key, its format and its kind ("release", or "catalogue-delta"). */
export async function verifyManifest(manifestText, pinnedKeyBase64, kind = "release") {
  const parsed = parse(manifestText, kind);
  if (!(parsed instanceof Map) || !(parsed.get("files") instanceof Map)) {
    throw new ReleaseRefusedError(`not a ${kind} manifest (no files table)`);
  }
  await checkSignature(parsed, pinnedKeyBase64, kind);
  const manifest = plain(parsed);
  if (manifest.format !== RELEASE_FORMAT) {
    throw new ReleaseRefusedError(`unknown release format ${manifest.format} (this page reads ${RELEASE_FORMAT})`);
  }
  if ((manifest.kind ?? "release") !== kind) {
    throw new ReleaseRefusedError(`a ${manifest.kind} manifest where a ${kind} manifest was expected`);
  }
  const digest = await sha256Hex(new TextEncoder().encode(canonical(parsed)));
  return { manifest, digest };
}

const INDEX_SIGNED = ["releases", "serial", "expires_utc", "key_id"];
const UTC_TEXT = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$/;

/** Whether a parsed JSON value is an integer token (Python's json gives an int, not a float or a bool). */
function isJsonInt(value) {
  return value instanceof RawNumber && /^-?\d+$/.test(value.token);
}

/** The signed release index as a plain object (shared/release_index.py verify_index): signed by the pinned
 * key (only its signed fields are kept), its serial an integer >= 1 and not below `minSerial` (a replayed
 * index), not expired at `nowMs` (milliseconds since the epoch). */
export async function verifyIndex(indexText, pinnedKeyBase64, { nowMs, minSerial }) {
  const parsed = parse(indexText, "release index");
  if (!(parsed instanceof Map)) throw new ReleaseRefusedError("not a release index (a JSON object)");
  const signed = new Map(INDEX_SIGNED.filter((k) => parsed.has(k)).map((k) => [k, parsed.get(k)]));
  signed.set("signature", parsed.get("signature") ?? null);
  await checkSignature(signed, pinnedKeyBase64, "release index");
  const missing = INDEX_SIGNED.filter((k) => !signed.has(k));
  if (missing.length) throw new ReleaseRefusedError(`the release index has no ${missing.join(", ")}`);
  const serial = signed.get("serial");
  if (!isJsonInt(serial) || Number(serial.token) < 1 || !Array.isArray(signed.get("releases"))) {
    throw new ReleaseRefusedError("the release index's serial must be an int >= 1 and its releases a list");
  }
  const index = plain(signed);
  if (index.serial < minSerial) {
    throw new ReleaseRefusedError(`release index serial ${index.serial} is older than serial ${minSerial} accepted before: a replayed index, refused`);
  }
  const expires = typeof index.expires_utc === "string" && UTC_TEXT.test(index.expires_utc) ? Date.parse(index.expires_utc) : NaN;
  if (Number.isNaN(expires)) throw new ReleaseRefusedError(`expires_utc must look like 2026-01-31T12:00:00Z, got ${JSON.stringify(index.expires_utc)}`);
  if (nowMs >= expires) throw new ReleaseRefusedError(`the release index expired at ${index.expires_utc}`);
  return index;
}

/** {sequence, manifestSha256} of the catalogue delta a verified index names as release `version`'s head,
 * null when it names none (shared/release_index.py delta_head). */
export function deltaHead(index, version) {
  const entry = index.releases.find((r) => r !== null && typeof r === "object" && r.version === version);
  if (entry === undefined) throw new ReleaseRefusedError(`release ${version} is not in the release index`);
  const head = entry.delta;
  if (head === undefined || head === null) return null;
  const sequence = head?.sequence;
  const digest = head?.manifest_sha256;
  if (Array.isArray(head) || !Number.isInteger(sequence) || sequence < 1 || typeof digest !== "string" || digest.length !== 64) {
    throw new ReleaseRefusedError(`release ${version}'s delta head in the index is malformed`);
  }
  return { sequence, manifestSha256: digest };
}

/** The bytes of file `name` under `filesUrl`, checked against its size and sha256 in `manifest`'s files. */
export async function fetchVerified(filesUrl, manifest, name, what = "release file") {
  const expected = manifest.files[name];
  if (!FILE_NAME.test(name) || !expected) {
    throw new ReleaseRefusedError(`the manifest lists no file ${name}`);
  }
  const response = await fetch(`${filesUrl}/${name}`);
  if (!response.ok) throw new ReleaseRefusedError(`${what} ${name}: HTTP ${response.status}`);
  const bytes = new Uint8Array(await response.arrayBuffer());
  if (bytes.length !== expected.bytes || (await sha256Hex(bytes)) !== expected.sha256) {
    throw new ReleaseRefusedError(`${what} ${name} does not match its sha256 in the signed manifest`);
  }
  return bytes;
}
