// Release verification in the browser, the same checks as shared/release_manifest.py's verify_release:
// the manifest's Ed25519 signature against the PINNED public key (WebCrypto), its key id and format, then
// each downloaded file's size and sha256 against the signed manifest. Anything that fails throws
// ReleaseRefusedError and nothing of that release is used.

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

/** The manifest (plain JS object) after checking its signature against `pinnedKeyBase64` (32 raw bytes). */
export async function verifyManifest(manifestText, pinnedKeyBase64) {
  let parsed;
  try {
    parsed = parseKeepingNumbers(manifestText);
  } catch (error) {
    throw new ReleaseRefusedError(error.message);
  }
  if (!(parsed instanceof Map) || !(parsed.get("files") instanceof Map)) {
    throw new ReleaseRefusedError("not a release manifest (no files table)");
  }
  const rawKey = fromBase64(pinnedKeyBase64);
  const pinnedId = await keyId(rawKey);
  if (parsed.get("key_id") !== pinnedId) {
    throw new ReleaseRefusedError(`release signed by key ${parsed.get("key_id")}, not the pinned key ${pinnedId}`);
  }
  const signature = parsed.get("signature");
  const unsigned = new Map([...parsed].filter(([k]) => k !== "signature"));
  const signedBytes = new TextEncoder().encode(canonical(unsigned));
  let valid = false;
  try {
    const key = await crypto.subtle.importKey("raw", rawKey, { name: "Ed25519" }, false, ["verify"]);
    valid = await crypto.subtle.verify({ name: "Ed25519" }, key, fromBase64(String(signature)), signedBytes);
  } catch (error) {
    throw new ReleaseRefusedError(`signature does not verify (${error.name}: ${error.message})`);
  }
  if (!valid) throw new ReleaseRefusedError("signature does not verify");
  const manifest = plain(parsed);
  if (manifest.format !== RELEASE_FORMAT) {
    throw new ReleaseRefusedError(`unknown release format ${manifest.format} (this page reads ${RELEASE_FORMAT})`);
  }
  return manifest;
}

/** The bytes of release file `name`, downloaded and checked against its size and sha256 in `manifest`. */
export async function fetchVerified(baseUrl, manifest, name) {
  const expected = manifest.files[name];
  if (!FILE_NAME.test(name) || !expected) {
    throw new ReleaseRefusedError(`release ${manifest.version} lists no file ${name}`);
  }
  const response = await fetch(`${baseUrl}/v1/releases/${manifest.version}/files/${name}`);
  if (!response.ok) throw new ReleaseRefusedError(`release file ${name}: HTTP ${response.status}`);
  const bytes = new Uint8Array(await response.arrayBuffer());
  if (bytes.length !== expected.bytes || (await sha256Hex(bytes)) !== expected.sha256) {
    throw new ReleaseRefusedError(`release file ${name} does not match its sha256 in the signed manifest`);
  }
  return bytes;
}
