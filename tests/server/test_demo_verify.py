"""The demo page's checks of the signed release index and its delta head (server/web/src/verify.js
verifyIndex and deltaHead, run in Node's WebCrypto) accept and refuse what shared/release_index.py's
verify_index and delta_head do."""

from __future__ import annotations

import base64
import copy
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from ledger_toy import KEY

from shared.errors import DataError, SignatureError
from shared.release_index import delta_head, sign_index, verify_index
from shared.signing import canonical_json, generate_private_key, sign

VERIFY_JS = Path(__file__).resolve().parents[2] / "server" / "web" / "src" / "verify.js"
SCRIPT = f"""
import {{ deltaHead, verifyIndex }} from {json.dumps(VERIFY_JS.as_uri())};
let input = "";
process.stdin.setEncoding("utf8");
for await (const chunk of process.stdin) input += chunk;
const out = [];
for (const line of input.split("\\n").filter(Boolean)) {{
  const {{ text, key, nowS, minSerial, release }} = JSON.parse(line);
  try {{
    const index = await verifyIndex(text, key, {{ nowMs: nowS * 1000, minSerial }});
    const head = deltaHead(index, release);
    out.push({{ serial: index.serial, head: head && [head.sequence, head.manifestSha256] }});
  }} catch (error) {{
    out.push({{ refused: `${{error.name}}: ${{error.message}}` }});
  }}
}}
process.stdout.write(JSON.stringify(out));
"""
PINNED = base64.b64encode(KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()
NOW = 1_800_000_000.0
HEAD = {"sequence": 3, "manifest_sha256": "cd" * 32}
RELEASES = [
    {"version": 1, "withdrawn": False, "reason": "", "delta": HEAD},
    {"version": 2, "withdrawn": True, "reason": "regression"},
]


def in_node(cases: list[tuple[str, float, int, int]]) -> list[dict[str, Any]]:
    """verifyIndex + deltaHead of each (text, now, min serial, release), computed by Node."""
    node = shutil.which("node")
    assert node, "the demo page's tests need node (scripts/install_web.sh installs it)"
    lines = "".join(
        json.dumps({"text": t, "key": PINNED, "nowS": n, "minSerial": m, "release": r}) + "\n"
        for t, n, m, r in cases
    )
    out = subprocess.run(
        [node, "--input-type=module", "-e", SCRIPT], input=lines, capture_output=True, text=True, check=True
    )
    result: list[dict[str, Any]] = json.loads(out.stdout)
    return result


def signed(releases: list[dict[str, Any]] = RELEASES, serial: int = 5, key: Any = KEY) -> dict[str, Any]:
    return sign_index(copy.deepcopy(releases), key, serial=serial, expires_s=NOW + 3600)


def resigned(change: Any) -> dict[str, Any]:
    """A fresh index changed by `change` and signed again over everything but the signature (as a holder
    of the key could sign a malformed index)."""
    index = signed()
    change(index)
    index["signature"] = sign(KEY, canonical_json({k: v for k, v in index.items() if k != "signature"}))
    return index


def with_head(head: Any) -> dict[str, Any]:
    return signed([{**RELEASES[0], "delta": head}, RELEASES[1]])


ALTERED_HEAD = {**signed(), "releases": [{**RELEASES[0], "delta": {**HEAD, "sequence": 4}}]}  # not re-signed
CASES = {
    "fresh": (signed(), NOW, 5, 1),
    "extra-unsigned-field": ({**signed(), "latest": 1}, NOW, 5, 1),
    "no-head": (signed(), NOW, 0, 2),
    "not-in-index": (signed(), NOW, 0, 7),
    "replayed": (signed(serial=4), NOW, 5, 1),
    "expired": (signed(), NOW + 3600, 0, 1),
    "another-key": (signed(key=generate_private_key()), NOW, 0, 1),
    "head-altered": (
        {**signed(), "releases": [{**RELEASES[0], "delta": {**HEAD, "sequence": 4}}]},
        NOW,
        0,
        1,
    ),
    "no-expiry": (resigned(lambda i: i.pop("expires_utc")), NOW, 0, 1),
    "serial-zero": (resigned(lambda i: i.update(serial=0)), NOW, 0, 1),
    "serial-bool": (resigned(lambda i: i.update(serial=True)), NOW, 0, 1),
    "serial-text": (resigned(lambda i: i.update(serial="5")), NOW, 0, 1),
    "bad-expiry": (resigned(lambda i: i.update(expires_utc="2027-13-01T00:00:00Z")), NOW, 0, 1),
    "head-sequence-zero": (with_head({**HEAD, "sequence": 0}), NOW, 0, 1),
    "head-sequence-text": (with_head({**HEAD, "sequence": "3"}), NOW, 0, 1),
    "head-short-digest": (with_head({**HEAD, "manifest_sha256": "cd"}), NOW, 0, 1),
    "head-a-list": (with_head([3, "cd" * 32]), NOW, 0, 1),
    "head-null": (with_head(None), NOW, 0, 1),
}


def python_result(index: dict[str, Any], now_s: float, min_serial: int, release: int) -> dict[str, Any]:
    try:
        verified = verify_index(index, KEY.public_key(), now_s=now_s, min_serial=min_serial)
        head = delta_head(verified, release)
    except (DataError, SignatureError):
        return {"refused": True}
    return {"serial": verified["serial"], "head": head and list(head)}


def test_the_browser_accepts_and_refuses_the_indexes_the_device_does() -> None:
    names = list(CASES)
    got = in_node([(json.dumps(CASES[n][0]), *CASES[n][1:]) for n in names])
    refused = {name for name in names if "refused" in python_result(*CASES[name])}
    assert refused == set(names) - {
        "fresh",
        "extra-unsigned-field",
        "no-head",
        "head-null",
    }  # the cases mean it
    for name, result in zip(names, got, strict=True):
        expected = python_result(*CASES[name])
        if "refused" in expected:
            assert result.get("refused", "").startswith("ReleaseRefusedError"), (name, result)
        else:
            assert result == expected, name


@pytest.mark.parametrize("name", ["replayed", "expired", "another-key"])
def test_the_browser_says_why(name: str) -> None:
    words = {"replayed": "replayed", "expired": "expired", "another-key": "not the pinned key"}
    [result] = in_node([(json.dumps(CASES[name][0]), *CASES[name][1:])])
    assert words[name] in result["refused"]
