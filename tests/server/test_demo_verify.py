"""The demo page's check of a signed delta list (server/web/src/verify.js verifyDeltaList, run in Node's
WebCrypto) accepts and refuses what shared/catalogue_delta.py's verify_delta_list does."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from delta_toy import list_entry
from ledger_toy import KEY

from shared.catalogue_delta import sign_delta_list, verify_delta_list
from shared.errors import DataError, SignatureError
from shared.signing import generate_private_key

VERIFY_JS = Path(__file__).resolve().parents[2] / "server" / "web" / "src" / "verify.js"
SCRIPT = f"""
import {{ verifyDeltaList }} from {json.dumps(VERIFY_JS.as_uri())};
let input = "";
process.stdin.setEncoding("utf8");
for await (const chunk of process.stdin) input += chunk;
const out = [];
for (const line of input.split("\\n").filter(Boolean)) {{
  const {{ text, key, release }} = JSON.parse(line);
  try {{
    out.push({{ sequences: (await verifyDeltaList(text, key, release)).map((e) => e.sequence) }});
  }} catch (error) {{
    out.push({{ refused: `${{error.name}}: ${{error.message}}` }});
  }}
}}
process.stdout.write(JSON.stringify(out));
"""
PINNED = base64.b64encode(KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


def in_node(cases: list[tuple[str, int]]) -> list[dict[str, Any]]:
    """verifyDeltaList(text, the pinned key, release) of each case, computed by Node."""
    node = shutil.which("node")
    assert node, "the demo page's tests need node (scripts/install_web.sh installs it)"
    lines = "".join(json.dumps({"text": t, "key": PINNED, "release": r}) + "\n" for t, r in cases)
    out = subprocess.run(
        [node, "--input-type=module", "-e", SCRIPT], input=lines, capture_output=True, text=True, check=True
    )
    result: list[dict[str, Any]] = json.loads(out.stdout)
    return result


@pytest.mark.parametrize(
    ("listing", "release"),
    [
        (sign_delta_list(1, [list_entry(1), list_entry(2)], KEY), 1),
        (
            sign_delta_list(1, [list_entry(2), list_entry(1), list_entry(2)], KEY),
            1,
        ),  # a sequence listed twice
        (sign_delta_list(1, [list_entry(1), list_entry(1)], KEY), 1),
        (sign_delta_list(2, [list_entry(1)], KEY), 1),  # another release's list
        (sign_delta_list(1, [list_entry(1)], generate_private_key()), 1),  # another key
    ],
)
def test_the_browser_refuses_the_delta_lists_the_device_refuses(
    listing: dict[str, Any], release: int
) -> None:
    try:
        expected: dict[str, Any] = {"sequences": verify_delta_list(listing, KEY.public_key(), release)}
    except (DataError, SignatureError):
        expected = {"refused": True}
    [got] = in_node([(json.dumps(listing, sort_keys=True), release)])
    if "refused" in expected:
        assert got.get("refused", "").startswith("ReleaseRefusedError"), got
    else:
        assert sorted(got["sequences"]) == expected["sequences"]
