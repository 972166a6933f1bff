"""The demo page's canonical JSON (server/web/src/canonical.js, run in Node) rebuilds exactly the bytes
shared/signing.py signs, from the JSON text the service serves, for arbitrary JSON values (Hypothesis)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.signing import canonical_json

CANONICAL_JS = Path(__file__).resolve().parents[2] / "server" / "web" / "src" / "canonical.js"
SCRIPT = f"""
import {{ canonical, parseKeepingNumbers }} from {json.dumps(CANONICAL_JS.as_uri())};
let input = "";
process.stdin.setEncoding("utf8");
for await (const chunk of process.stdin) input += chunk;
const lines = input.split("\\n").filter(Boolean);
process.stdout.write(JSON.stringify(lines.map((line) => canonical(parseKeepingNumbers(JSON.parse(line))))));
"""

values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)


def in_node(served: list[str]) -> list[str]:
    """canonical(parseKeepingNumbers(text)) of each served text, computed by Node."""
    node = shutil.which("node")
    assert node, "the demo page's tests need node (scripts/install_web.sh installs it)"
    lines = "".join(json.dumps(text) + "\n" for text in served)
    out = subprocess.run(
        [node, "--input-type=module", "-e", SCRIPT], input=lines, capture_output=True, text=True, check=True
    )
    result: list[str] = json.loads(out.stdout)
    return result


@settings(max_examples=6, deadline=None)
@given(st.lists(st.dictionaries(st.text(max_size=6), values, max_size=5), min_size=20, max_size=40))
@pytest.mark.integration
def test_browser_canonical_json_equals_the_signed_bytes(objects: list[dict[str, Any]]) -> None:
    served = [json.dumps(obj, sort_keys=True) for obj in objects]  # what the manifest route sends
    served += [json.dumps(obj, indent=2) for obj in objects]  # what manifest.json holds on disk
    rebuilt = in_node(served)
    expected = [canonical_json(obj).decode("utf-8") for obj in objects] * 2
    assert rebuilt == expected


def test_a_release_manifest_with_python_number_forms() -> None:
    manifest = {
        "privacy": {"epsilon": 8.0, "delta": 1e-05, "big": 2**70, "neg": -0.0, "small": 5e-324},
        "t": 'é\u2028\n"\x7f',
        "\uffff": 1,  # before the astral key by code point (as Python sorts), after it by UTF-16 unit
        "\U0001f600": 2,
    }
    assert in_node([json.dumps(manifest, sort_keys=True)]) == [canonical_json(manifest).decode("utf-8")]
