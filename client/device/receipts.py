"""The device's receipts (SQLite, in its data folder): one per training round it joined, and the release.

A receipt says: this device sent a clipped update in round `round` of run `run_id`, with clip norm C, the
noise multiplier z and sampling rate q the server announced for the round, the device's own participation
cap, whether the round ran secure aggregation (the device then sent only a masked update, in central mode
with its share of the noise), and the time; once a release built from that round or a later one of the
same run is installed, the release version it ended up in (matched by the release manifest's run id and
model round). Receipts hold no interactions, updates or user ids: only what the server told every device
of the round, and when.

What they give the user (`summary`): the number of rounds their device actually took part in (its own
count, which is what its participation cap limits), the run's published epsilon (from the installed
release's signed manifest), and an individual bound for their own participation: the composition of the
Gaussian mechanisms of exactly those rounds without any amplification by sampling
(`own_epsilon`: shared.privacy.capped_accounting.individual_epsilon, the accountant the server uses, which
imports no torch). That bound holds for this user
conditionally on when they were sampled (the sampling coins are independent of everyone's data); it covers
the training rounds only, assumes the server added the noise it announced (the ledger and `fedhome-audit
verify` check that), and says nothing about other users.
"""

from __future__ import annotations

import math
import sqlite3
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from shared.errors import DataError

FILE_NAME = "receipts.sqlite"
_COLUMNS = (
    "run_id",
    "round",
    "clip_norm",
    "noise_multiplier",
    "sample_rate",
    "delta",
    "participation_cap",
    "time_utc",
    "release_version",
    "secure_aggregation",
)


@dataclass(frozen=True)
class Receipt:
    """One round the device took part in (participation_cap 0: the device had no cap)."""

    run_id: str
    round: int
    clip_norm: float
    noise_multiplier: float
    sample_rate: float
    delta: float
    participation_cap: int
    time_utc: str
    release_version: int | None = None
    # the round ran secure aggregation: the device sent only a masked update, in central mode with its
    # share of the noise in it (server/secagg/secure_round.py), so the server never saw it on its own
    secure_aggregation: bool = False

    def __post_init__(self) -> None:
        finite = all(math.isfinite(v) for v in (self.clip_norm, self.noise_multiplier, self.sample_rate))
        delta_ok = 0 < self.delta < 1  # False for NaN
        if not self.run_id or self.round < 1 or not finite or not delta_ok or self.participation_cap < 0:
            raise DataError(f"malformed receipt for round {self.round} of run {self.run_id!r}")


class ReceiptStore:
    """The receipts of one device, in `folder`/receipts.sqlite (created when missing)."""

    def __init__(self, folder: Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(folder / FILE_NAME))
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS receipts (run_id TEXT NOT NULL, round INTEGER NOT NULL, "
            "clip_norm REAL NOT NULL, noise_multiplier REAL NOT NULL, sample_rate REAL NOT NULL, "
            "delta REAL NOT NULL, participation_cap INTEGER NOT NULL, time_utc TEXT NOT NULL, "
            "release_version INTEGER, secure_aggregation INTEGER NOT NULL DEFAULT 0, "
            "PRIMARY KEY (run_id, round))"
        )
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(receipts)")}
        if "secure_aggregation" not in columns:  # a store written before the column existed
            self.db.execute("ALTER TABLE receipts ADD COLUMN secure_aggregation INTEGER NOT NULL DEFAULT 0")
        self.db.commit()

    def add(self, receipt: Receipt) -> bool:
        """Record a round; False when this round of this run is already recorded (a repeated message)."""
        with self.db:
            cursor = self.db.execute(
                f"INSERT OR IGNORE INTO receipts ({', '.join(_COLUMNS)}) "
                f"VALUES ({', '.join('?' * len(_COLUMNS))})",
                tuple(asdict(receipt).values()),
            )
        return cursor.rowcount == 1

    def count(self, run_id: str) -> int:
        """Rounds of run `run_id` this device took part in."""
        row = self.db.execute("SELECT COUNT(*) FROM receipts WHERE run_id = ?", (run_id,)).fetchone()
        return int(row[0])

    def receipts(self) -> list[Receipt]:
        """Every receipt, by run then round."""
        rows = self.db.execute(f"SELECT {', '.join(_COLUMNS)} FROM receipts ORDER BY run_id, round")
        out = []
        for row in rows.fetchall():
            fields = dict(zip(_COLUMNS, row, strict=True))
            out.append(Receipt(**{**fields, "secure_aggregation": bool(fields["secure_aggregation"])}))
        return out

    def bind_release(self, manifest: dict[str, Any]) -> int:
        """Mark the receipts a release includes (same run id, round <= the release's model round) with its
        version, where no earlier release was recorded; returns how many were marked. Pass only a manifest
        that verified (shared.release_manifest.verify_release)."""
        try:
            run_id, version = str(manifest["run_id"]), int(manifest["version"])
            model_round = int(manifest["model"]["round"])
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"release manifest without run id, version or model round: {exc!r}") from exc
        with self.db:
            cursor = self.db.execute(
                "UPDATE receipts SET release_version = ? "
                "WHERE run_id = ? AND round <= ? AND release_version IS NULL",
                (version, run_id, model_round),
            )
        return int(cursor.rowcount)

    def close(self) -> None:
        self.db.close()


def summary(receipts: list[Receipt], manifest: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Per run: rounds taken part in, the device's cap, the individual bound, and the run's epsilon from the
    installed release `manifest` when it is of that run (its signed privacy section: "epsilon_all", which
    also covers the release's trending counts, else "epsilon")."""
    runs: dict[str, list[Receipt]] = {}
    for receipt in receipts:
        runs.setdefault(receipt.run_id, []).append(receipt)
    out = []
    for run_id, rows in runs.items():
        delta = rows[-1].delta
        own = own_epsilon([r.noise_multiplier for r in rows], delta=delta)
        privacy = (manifest or {}).get("privacy", {}) if (manifest or {}).get("run_id") == run_id else {}
        out.append(
            {
                "run_id": run_id,
                "rounds_taken_part": len(rows),
                "rounds": [r.round for r in rows],
                "participation_cap": rows[-1].participation_cap,
                "delta": delta,
                "own_participation_epsilon": "inf" if math.isinf(own) else own,
                # what covers everything the release carries: its trending counts may come after its
                # model round (server/releases/release_trending.py), so "epsilon" alone would understate it
                "run_epsilon": privacy.get("epsilon_all", privacy.get("epsilon")),
                "release_versions": sorted({v for r in rows if (v := r.release_version) is not None}),
                "securely_aggregated_rounds": [r.round for r in rows if r.secure_aggregation],
            }
        )
    return out


def own_epsilon(noise_multipliers: list[float], *, delta: float) -> float:
    """The composition of these rounds' Gaussian mechanisms (noise multiplier z, sensitivity 1) without
    amplification by sampling, at `delta`: shared.privacy.capped_accounting.individual_epsilon (PLD, the
    training server's accountant). No rounds: 0; a round without noise (z <= 0): inf."""
    if not noise_multipliers:
        return 0.0
    if any(z <= 0 for z in noise_multipliers):
        return math.inf
    # loaded only when asked: dp-accounting takes about a second to import
    from shared.privacy.capped_accounting import individual_epsilon

    return individual_epsilon(noise_multipliers, delta=delta)
