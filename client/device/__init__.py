"""The device side of fedhome: verified release cache, local event store, on-device ranking (no torch).

`from client.device import Device` is the SDK an app holds (client/device/device.py). The names below load
on first use, so that importing one module of the package (the ClientApp imports client.device.receipts)
does not load onnxruntime and the ranking code with it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from client.device.device import Device
    from client.device.homepage import Card, Section
    from client.device.ranker import Event
    from client.device.sync import SyncResult

__all__ = ["Card", "Device", "Event", "Section", "SyncResult"]

_MODULE_OF = {
    "Card": "client.device.homepage",
    "Device": "client.device.device",
    "Event": "client.device.ranker",
    "Section": "client.device.homepage",
    "SyncResult": "client.device.sync",
}


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_MODULE_OF[name]), name)
