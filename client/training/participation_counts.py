"""Participation caps on a node: each device counts the training rounds it contributed to, and refuses past k.

Every device a node hosts (each virtual device of a shard, or the node's one device) has a count of the
rounds of the current run (the server's run id) it sent an update for. A sampled device whose count has
reached its cap refuses: it is simply left out of the round's sum, and the node reports only how many of
its sampled devices refused. A device's cap is the run's `privacy.participation_cap`, or its own lower one
(node config "participation-cap"); 0 means no cap.

Where the counts live:
- always in the node's `context.state` (Flower keeps it across the rounds of one run: a run id of its own
  and one int64 count per hosted device); a new run id starts every count at zero;
- with a device folder (a real device: node config "device-dir", one device per node; in simulation
  `federated.receipts_dir`/device-<user index>), the device's receipts (client/device/receipts.py) are
  written there and ARE its count: they survive a resume, a restarted SuperNode and a new simulation.
- with a counts folder (node config "counts-dir", any node, a shard included), one JSON file per run id,
  `participation-<run id>.json` ({"run-id", "counts": one int per hosted device}), written atomically
  (temporary name, fsync, rename) after training and before the reply is built: a node killed before the
  write sent nothing, one killed after it counted a round it may not have sent (the safe side). The file
  is then the count, and a restarted SuperNode reads it back.
A SuperNode process that restarts loses its `context.state`, so counts kept only there restart at zero and
the cap's bound no longer holds for its devices (the server cannot see a restart within a run). So a node
whose round asks for a cap refuses to train unless its devices' counts survive a restart (a device folder or
a counts folder), or it runs in Flower's simulation engine, where a node cannot restart without the whole run
restarting (`require_lasting_counts`). A resumed simulation starts from fresh node states, so counts kept only
there restart; the server's accounting treats each start of a run as a new segment of up to k rounds per
device (shared/privacy/capped_accounting.py), which keeps the guarantee valid.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from client.device.receipts import Receipt, ReceiptStore
from shared.errors import ConfigError, UpdateRejectedError

STATE_RUN = "participation"  # ConfigRecord {"run-id": the server's run id the counts belong to}
STATE_COUNTS = "participation-counts"  # ArrayRecord {"counts": (n_devices,) int64}

DeviceFolder = Callable[[int], Path]  # slot -> that device's data folder
RUN_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # a run id that is safe in a file name


@dataclass(frozen=True)
class RoundTerms:
    """What the server announced for the round: what a receipt records."""

    run_id: str
    round: int
    clip_norm: float
    noise_multiplier: float
    sample_rate: float
    delta: float
    participation_cap: int  # the run's cap (0: none)
    secure_aggregation: bool = False  # the round's update goes out masked (client/masked_update.py)


def require_lasting_counts(
    cap: int, *, folder: DeviceFolder | None, counts_dir: Path | None, simulated: bool
) -> None:
    """UpdateRejectedError when a round asks for a participation cap (`cap` > 0, the device's effective
    one) and the node's counts would not survive a restart of its SuperNode: no device folder (receipts),
    no counts folder (node config "counts-dir"), and not Flower's simulation engine (`simulated`)."""
    if cap == 0 or folder is not None or counts_dir is not None or simulated:
        return
    raise UpdateRejectedError(
        f"the round asks for a participation cap of {cap} and this node keeps its devices' counts only in "
        'memory, which a restart of the SuperNode would reset: give it a folder (node config "counts-dir", '
        'or "device-dir" for a one-device node)'
    )


class CountsFile:
    """A node's participation counts for one run, in `<dir>/participation-<run id>.json`."""

    def __init__(self, directory: Path, run_id: str) -> None:
        if not RUN_ID.fullmatch(run_id):
            raise UpdateRejectedError("the round's run id is not a plain name; refusing to name a file by it")
        self.path = directory / f"participation-{run_id}.json"
        self.run_id = run_id

    def load(self) -> np.ndarray | None:
        """The saved counts, None when this run has none yet; ConfigError for an unreadable file (refusing
        to train beats restarting the counts)."""
        if not self.path.exists():
            return None
        try:
            saved = json.loads(self.path.read_text())
            counts = np.asarray(saved["counts"], dtype=np.int64)
            if saved["run-id"] != self.run_id or counts.ndim != 1 or (counts < 0).any():
                raise ValueError("not this run's counts")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"participation counts {self.path} are unreadable: {exc}") from exc
        return counts

    def save(self, counts: np.ndarray) -> None:
        """Write the counts atomically (temporary name, fsync, rename, fsync of the folder)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w") as out:
            json.dump({"run-id": self.run_id, "counts": [int(c) for c in counts]}, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.path)
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def own_cap(run_cap: int, device_cap: int) -> int:
    """A device's effective cap: the smaller of the run's and its own (0 = none for either)."""
    if run_cap < 0 or device_cap < 0:
        raise ConfigError(f"participation caps must be >= 0, got {run_cap} and {device_cap}")
    caps = [c for c in (run_cap, device_cap) if c > 0]
    return min(caps) if caps else 0


class Participation:
    """The counts of a node's devices for one run, read from and written back to `state`."""

    def __init__(
        self,
        state: RecordDict,
        *,
        run_id: str,
        n_devices: int,
        folder: DeviceFolder | None = None,
        counts_dir: Path | None = None,
    ) -> None:
        """`counts_dir` (node config "counts-dir"): the counts are read from and saved to a file there
        (CountsFile) instead of only `state`."""
        self.state, self.run_id, self.folder = state, run_id, folder
        self.file = None if counts_dir is None else CountsFile(counts_dir, run_id)
        known = STATE_RUN in state.config_records and state.config_records[STATE_RUN].get("run-id") == run_id
        counts = state.array_records[STATE_COUNTS]["counts"].numpy() if known else None
        if self.file is not None:
            counts = self.file.load()
        if counts is None:
            counts = np.zeros(n_devices, dtype=np.int64)
        elif counts.shape != (n_devices,):  # starting from zero here would let every device pass its cap
            raise ConfigError(
                f"this node kept participation counts for {counts.shape[0]} devices of the run, it now hosts "
                f"{n_devices}: refusing to train rather than restart the counts"
            )
        self.counts = counts.astype(np.int64, copy=True)

    def count(self, slot: int) -> int:
        """Rounds of this run the device in `slot` contributed to (its receipts, when it keeps them)."""
        if self.folder is None:
            return int(self.counts[slot])
        store = ReceiptStore(self.folder(slot))
        try:
            return store.count(self.run_id)
        finally:
            store.close()

    def admit(self, slots: np.ndarray, *, cap: int) -> tuple[np.ndarray, int]:
        """(the sampled slots that may train, how many refused): a device refuses once its count >= cap."""
        if cap == 0:
            return slots, 0
        keep = np.array([self.count(int(s)) < cap for s in slots], dtype=bool)
        return slots[keep], int((~keep).sum())

    def record(self, slots: np.ndarray, terms: RoundTerms, *, cap: int) -> None:
        """The devices in `slots` sent their update this round: count it, write their receipts, save."""
        self.counts[slots] += 1
        if self.file is not None:
            self.file.save(self.counts)
        if self.folder is not None:
            receipt = Receipt(
                run_id=terms.run_id,
                round=terms.round,
                clip_norm=terms.clip_norm,
                noise_multiplier=terms.noise_multiplier,
                sample_rate=terms.sample_rate,
                delta=terms.delta,
                participation_cap=cap,
                time_utc=datetime.now(UTC).isoformat(timespec="seconds"),
                secure_aggregation=terms.secure_aggregation,
            )
            for slot in slots:
                store = ReceiptStore(self.folder(int(slot)))
                try:
                    store.add(receipt)
                finally:
                    store.close()
        self.state[STATE_RUN] = ConfigRecord({"run-id": self.run_id})
        self.state[STATE_COUNTS] = ArrayRecord({"counts": Array(self.counts)})


def device_folders(*, node_device_dir: str, receipts_dir: str, users: np.ndarray) -> DeviceFolder | None:
    """Where the node's devices keep their receipts: node config "device-dir" (the node's one device), or
    `receipts_dir`/device-<global user index> for each virtual device; None: counts in node state only."""
    if node_device_dir:
        if users.size != 1:
            raise ConfigError(f'node config "device-dir" is for a one-device node, this one has {users.size}')
        return lambda slot: Path(node_device_dir)
    if receipts_dir:
        return lambda slot: Path(receipts_dir) / f"device-{int(users[slot])}"
    return None
