"""The run folder of a federated training run: its layout, and checkpoints written so a kill loses nothing.

Layout: `config.json` (every setting, flat), `ledger.jsonl` (the signed privacy ledger),
`ledger_public_key.pem` (the verification key; never the private one), `metrics.jsonl` (one line per round),
`item_text_vectors.npy` (the public catalogue's text embeddings the devices read),
`checkpoints/round-NNNNN.pt` (the state after a complete round), and at the end `final_params.npy`,
`final_model.pt` and `summary.json`.

A checkpoint is written under a temporary name and renamed, so it is either complete or absent. It carries
the round's ledger entry: the server writes the checkpoint first and appends the entry second, and on resume
appends the entry of the newest checkpoint if the ledger stops one round short. So a kill at any point leaves
the ledger and the accountant at the same round, with no round counted twice and none lost.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shared.errors import ConfigError, DataError

CHECKPOINT_PATTERN = re.compile(r"round-(\d{5})\.pt")
KEEP_CHECKPOINTS = 3  # older ones are deleted: the newest complete one is all a resume needs


@dataclass(frozen=True)
class RunFolder:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def ledger(self) -> Path:
        return self.root / "ledger.jsonl"

    @property
    def public_key(self) -> Path:
        return self.root / "ledger_public_key.pem"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def item_vectors(self) -> Path:
        return self.root / "item_text_vectors.npy"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def final_params(self) -> Path:
        return self.root / "final_params.npy"

    @property
    def final_model(self) -> Path:
        return self.root / "final_model.pt"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    def create(self) -> None:
        self.checkpoints.mkdir(parents=True, exist_ok=True)


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON under a temporary name, fsync, rename: readers see the old file or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as out:
        json.dump(payload, out, indent=2, sort_keys=True)
        out.write("\n")
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


def save_checkpoint(folder: RunFolder, round_number: int, state: dict[str, Any]) -> Path:
    """Atomically write the state after complete round `round_number`; keep the newest few."""
    path = folder.checkpoints / f"round-{round_number:05d}.pt"
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as out:
        torch.save({"round": round_number, **state}, out)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    for old in list_checkpoints(folder)[:-KEEP_CHECKPOINTS]:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(folder: RunFolder) -> list[Path]:
    """Complete checkpoints, oldest first (temporary files of an interrupted write are ignored)."""
    if not folder.checkpoints.is_dir():
        return []
    found = [p for p in folder.checkpoints.iterdir() if CHECKPOINT_PATTERN.fullmatch(p.name)]
    return sorted(found, key=lambda p: p.name)


def load_latest_checkpoint(folder: RunFolder) -> dict[str, Any] | None:
    """The newest complete checkpoint's state (with its "round"), or None when the run has none."""
    paths = list_checkpoints(folder)
    if not paths:
        return None
    try:
        state: dict[str, Any] = torch.load(paths[-1], weights_only=False)
    except (OSError, RuntimeError, EOFError) as exc:
        raise ConfigError(f"checkpoint {paths[-1]} cannot be read: {exc}") from exc
    return state


def append_metrics(folder: RunFolder, row: dict[str, Any]) -> None:
    with folder.metrics.open("a") as out:
        out.write(json.dumps(row, sort_keys=True) + "\n")


def trim_metrics(folder: RunFolder, last_round: int) -> int:
    """Drop metric rows of rounds after `last_round` (rounds a resumed run will redo) and a torn last row
    (a kill mid-write); returns the round of the last row kept (-1 when none is)."""
    if not folder.metrics.exists():
        return -1
    lines = [line for line in folder.metrics.read_text().split("\n") if line.strip()]
    rows = []
    for number, line in enumerate(lines, start=1):
        try:
            rows.append((json.loads(line), line))
        except json.JSONDecodeError as exc:
            if number < len(lines):  # only the last row can be torn by a kill
                raise DataError(f"not a JSON row ({exc})", path=str(folder.metrics), line=number) from exc
    kept = [(row, line) for row, line in rows if row.get("round", 0) <= last_round]
    write_text_atomic(folder.metrics, "".join(line + "\n" for _, line in kept))
    return int(kept[-1][0].get("round", 0)) if kept else -1


def write_text_atomic(path: Path, text: str) -> None:
    """Write text under a temporary name, fsync, rename: readers see the old file or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


def save_final(
    folder: RunFolder, params: np.ndarray, model_state: dict[str, Any], summary: dict[str, Any]
) -> None:
    np.save(folder.final_params, params)
    torch.save(model_state, folder.final_model)
    write_json_atomic(folder.summary, summary)
