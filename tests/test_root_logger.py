"""Importing fedhome's apps leaves the root logger alone (Opacus's logging.basicConfig must not leak)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

CODE = """
import json, logging, sys
root = logging.getLogger()
import shared.privacy, server.server_app, client.client_app
after_import = (len(root.handlers), "opacus" in sys.modules)
from shared.privacy import RoundEvent, rdp_epsilon
rdp_epsilon([RoundEvent(sample_rate=0.5, noise_multiplier=1.0)], delta=1e-5)  # imports opacus now
print(json.dumps([*after_import, len(root.handlers), "opacus" in sys.modules]))
"""


@pytest.mark.integration
def test_importing_the_apps_and_using_rdp_adds_no_root_handler() -> None:
    out = subprocess.run(
        [sys.executable, "-c", CODE], capture_output=True, text=True, check=True, timeout=120
    )
    handlers_after_import, opacus_after_import, handlers_after_rdp, opacus_after_rdp = json.loads(
        out.stdout.strip().splitlines()[-1]
    )
    assert handlers_after_import == 0 and not opacus_after_import  # opacus is imported lazily
    assert opacus_after_rdp and handlers_after_rdp == 0  # ... and its root handler removed when it is
