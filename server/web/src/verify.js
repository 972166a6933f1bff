// Release verification in the browser, the same checks as shared/release_manifest.py's verify_release:
// the manifest's Ed25519 signature against the PINNED public key (WebCrypto), its key id, format and kind,
// then each downloaded file's size and sha256 against the signed manifest; and the checks of
// shared/catalogue_delta.py for a release's signed delta list. Anything that fails throws
// ReleaseRefusedError and nothing of what failed is used.

import { canonical, parseKeepingNumbers, plain } from "./canonical.js";

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

/** The entries of a release's signed delta list (shared/catalogue_delta.py verify_delta_list), [] when none. */
export async function verifyDeltaList(listText, pinnedKeyBase64, release) {
  const parsed = parse(listText, "delta list");
  const deltas = parsed instanceof Map ? parsed.get("deltas") : undefined;
  if (!Array.isArray(deltas)) throw new ReleaseRefusedError("not a delta list");
  if (!deltas.length) return []; // nothing published for this release (an empty list carries no signature)
  const signed = new Map(["release", "deltas", "key_id", "signature"].map((k) => [k, parsed.get(k) ?? null]));
  await checkSignature(signed, pinnedKeyBase64, "delta list");
  const listing = plain(signed);
  if (listing.release !== release) throw new ReleaseRefusedError(`the delta list is for release ${listing.release}`);
  const sequences = listing.deltas.map((entry) => entry?.sequence);
  if (!sequences.every(Number.isInteger)) throw new ReleaseRefusedError("the delta list has an entry without an integer sequence");
  if (new Set(sequences).size !== sequences.length) throw new ReleaseRefusedError("the delta list names a sequence twice");
  return listing.deltas;
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
