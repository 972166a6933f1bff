"""The device SDK (client/device/) and the privacy math it shares with the server import neither torch nor
opacus: a device installs neither, and its receipts use the server's own accountant."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import pytest

import client.device

CHECK = """
import json, sys
import numpy as np
import shared.privacy, shared.privacy.accounting, shared.privacy.capped_accounting
import shared.privacy.mechanism, shared.privacy.noise
for name in {modules}:
    __import__(name)
from client.device.receipts import own_epsilon
from shared.privacy.accounting import RoundEvent, pld_epsilon
from shared.privacy.mechanism import UserClipping
epsilons = [own_epsilon([1.0, 2.0], delta=1e-5), pld_epsilon([RoundEvent(0.1, 1.0)] * 3, delta=1e-5)]
clipped, _ = UserClipping(1.0).clip(np.full(4, 3.0))
print(json.dumps({{"loaded": sorted(m for m in ("torch", "opacus") if m in sys.modules), "epsilons": epsilons,
                  "clipped_norm": float(np.linalg.norm(clipped))}}))
"""


@pytest.mark.integration
def test_the_device_sdk_and_shared_privacy_import_neither_torch_nor_opacus() -> None:
    modules = sorted(f"client.device.{m.name}" for m in pkgutil.iter_modules(client.device.__path__))
    assert {"client.device.receipts", "client.device.ranker", "client.device.homepage"} <= set(modules)
    code = CHECK.format(modules=modules)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    out = json.loads(run.stdout)
    assert out["loaded"] == []  # computing an epsilon and clipping an update load nothing either
    assert all(0 < e < float("inf") for e in out["epsilons"]) and out["clipped_norm"] <= 1.0
