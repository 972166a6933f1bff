"""Where a device keeps what it holds: one folder per device (the SDK's and a device SuperNode's).

- `events.sqlite`: the shopper's interaction log (client/device/event_store.py);
- `releases/`: the verified release cache and its catalogue deltas (client/device/release_cache.py);
- `receipts.sqlite`: the training rounds the device joined (client/device/receipts.py), in the folder itself,
  as the ClientApp's node config "device-dir" has always kept them;
- participation counts, when the node keeps them on disk, also in the folder itself
  (client/training/participation_counts.py);
- `training-log.jsonl`: the rounds a device SuperNode that trains from this store trained in, and on how many
  events and examples (client/training/device_store.py); like the receipts, it never leaves the device.
"""

from __future__ import annotations

from pathlib import Path

EVENTS_FILE = "events.sqlite"
RELEASES_DIR = "releases"


def events_path(device_dir: Path) -> Path:
    return Path(device_dir) / EVENTS_FILE


def releases_path(device_dir: Path) -> Path:
    return Path(device_dir) / RELEASES_DIR
