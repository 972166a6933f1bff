"""The run folder of a federated training run: its layout, and checkpoints written so a kill loses nothing.

Layout: `config.json` (every setting, flat), `ledger.jsonl` (the signed privacy ledger),
`ledger_public_key.pem` (the verification key; never the private one), `metrics.jsonl` (one line per round),
`item_text_vectors.npy` (the public catalogue's text embeddings the devices read),
`checkpoints/round-NNNNN.npz` (the state after a complete round), `popularity_prior.npy` (the model's
popularity prior when the run made its DP count release: server/trending/popularity_release.py),
`round_in_flight.json` (the run id and round number of a training round whose messages may have gone out
but whose ledger entry is not yet committed; absent between rounds), and at the end `final_params.npy`,
`final_model.safetensors` and `summary.json`.

A checkpoint is written under a temporary name and renamed, so it is either complete or absent. It carries
the round's ledger entry: the server writes the checkpoint first and appends the entry second, and on resume
appends the entry of the newest checkpoint if the ledger stops one round short. So a kill at any point leaves
the ledger and the accountant at the same round, with no round counted twice and none lost.

Nothing in a run folder is ever unpickled (a run folder may be copied from elsewhere, and unpickling a crafted
file runs its code). A checkpoint is an uncompressed `np.savez` archive: every numpy array of the state as
its own `.npy` member, plus `state.json`, the rest of the state as canonical JSON (a uint8 array) that names
the arrays; it is read with `np.load(..., allow_pickle=False)`. The final model is a safetensors file.
Checkpoints of the old pickle format (`round-NNNNN.pt`) and `final_model.pt` are refused, never loaded.
"""

from __future__ import annotations

import json
import math
import os
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from shared.errors import ConfigError, DataError

CHECKPOINT_PATTERN = re.compile(r"round-(\d{5})\.npz")
LEGACY_CHECKPOINT_PATTERN = re.compile(r"round-(\d{5})\.pt")  # the old pickle format: refused, never read
KEEP_CHECKPOINTS = 3  # older ones are deleted: the newest complete one is all a resume needs
CHECKPOINT_FORMAT = "fedhome-checkpoint/1"
STATE_MEMBER = "state.json"  # the archive member holding the JSON part of a checkpoint (uint8 bytes)
_FORMAT_CHANGED = (
    "the checkpoint format changed: checkpoints are now pickle-free round-NNNNN.npz files and the old "
    "pickled round-NNNNN.pt ones are never loaded (unpickling runs code); start this run afresh in an empty "
    "run_dir, or resume it with the fedhome version that wrote it"
)


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
        return self.root / "final_model.safetensors"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def popularity_prior(self) -> Path:
        return self.root / "popularity_prior.npy"

    @property
    def round_in_flight(self) -> Path:
        return self.root / "round_in_flight.json"

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


def mark_round_in_flight(folder: RunFolder, *, run_id: str, round_number: int) -> None:
    """Record, atomically, that training round `round_number` of run `run_id` is about to query devices."""
    write_json_atomic(folder.round_in_flight, {"run_id": run_id, "round": round_number})


def read_round_in_flight(folder: RunFolder) -> tuple[str, int] | None:
    """The (run id, round) of the round in flight when the run stopped, or None when none was. ConfigError
    naming the file when it is not such a record."""
    path = folder.round_in_flight
    if not path.exists():
        return None
    try:
        marker = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"round-in-flight marker {path} cannot be read: {exc}") from exc
    if (
        not isinstance(marker, dict)
        or not isinstance(marker.get("run_id"), str)
        or type(marker.get("round")) is not int
    ):
        raise ConfigError(f"round-in-flight marker {path} is not a {{run_id, round}} record")
    return marker["run_id"], marker["round"]


def clear_round_in_flight(folder: RunFolder) -> None:
    """Remove the round-in-flight marker (the round's ledger entry is committed, or it is redone)."""
    folder.round_in_flight.unlink(missing_ok=True)


def save_popularity_prior(folder: RunFolder, prior: np.ndarray) -> None:
    """The run's popularity prior (n_items,) float32 as popularity_prior.npy, atomically."""
    tmp = folder.popularity_prior.with_name(folder.popularity_prior.name + ".tmp")
    with tmp.open("wb") as out:
        np.save(out, np.ascontiguousarray(prior, dtype=np.float32), allow_pickle=False)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, folder.popularity_prior)


def load_popularity_prior(folder: RunFolder) -> np.ndarray | None:
    """The popularity prior the run used, (n_items,) float32, or None when it used none (no file: the
    model's prior is zeros). What builds a run's model afterwards (the final evaluation, a release) reads it
    here. DataError when the file is not a 1-D array of finite float32 values."""
    path = folder.popularity_prior
    if not path.exists():
        return None
    try:
        prior = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"popularity prior {path} cannot be read: {exc}") from exc
    if not isinstance(prior, np.ndarray) or prior.ndim != 1 or prior.dtype != np.float32:
        raise DataError(f"popularity prior {path} is not a 1-D float32 array")
    if not np.isfinite(prior).all():
        raise DataError(f"popularity prior {path} holds non-finite values")
    return prior


def checkpoint_path(folder: RunFolder, round_number: int) -> Path:
    """Where the checkpoint of complete round `round_number` is written."""
    return folder.checkpoints / f"round-{round_number:05d}.npz"


def save_checkpoint(folder: RunFolder, round_number: int, state: dict[str, Any]) -> Path:
    """Atomically write the state after complete round `round_number`; keep the newest few.

    `state` holds what `encode_state` can write (TypeError otherwise, before anything is written)."""
    path = checkpoint_path(folder, round_number)
    text, arrays = encode_state({"round": round_number, **state})
    members = {STATE_MEMBER: np.frombuffer(text, dtype=np.uint8), **arrays}
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as out:
        np.savez(out, allow_pickle=False, **members)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    for old in list_checkpoints(folder)[:-KEEP_CHECKPOINTS]:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(folder: RunFolder) -> list[Path]:
    """Complete checkpoints, oldest first (temporary files of an interrupted write are ignored)."""
    return _matching(folder, CHECKPOINT_PATTERN)


def load_latest_checkpoint(folder: RunFolder) -> dict[str, Any] | None:
    """The newest complete checkpoint's state (with its "round"), or None when the run has none.

    ConfigError when the newest checkpoint is one of the old pickle format, or cannot be read."""
    paths = list_checkpoints(folder)
    legacy = _matching(folder, LEGACY_CHECKPOINT_PATTERN)
    if legacy and (not paths or legacy[-1].stem >= paths[-1].stem):
        raise ConfigError(f"{legacy[-1]}: {_FORMAT_CHANGED}")
    if not paths:
        return None
    return load_checkpoint(paths[-1])


def load_round_checkpoint(folder: RunFolder, round_number: int) -> dict[str, Any]:
    """The checkpoint of complete round `round_number`; ConfigError when there is none (or an old one)."""
    path = checkpoint_path(folder, round_number)
    if not path.exists():
        legacy = path.with_suffix(".pt")
        if legacy.exists():
            raise ConfigError(f"{legacy}: {_FORMAT_CHANGED}")
        raise ConfigError(f"no checkpoint for round {round_number} in {folder.checkpoints}")
    return load_checkpoint(path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The state in the checkpoint file `path` (written by `save_checkpoint`), without unpickling anything.

    ConfigError naming the file when it is no such checkpoint: truncated, not an archive of plain arrays
    (an object array needs pickle and is refused), or JSON that does not decode."""
    try:
        with path.open("rb") as handle:
            archive = np.load(handle, allow_pickle=False)
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise ValueError("not an .npz archive")
            with archive:
                members = {name: archive[name] for name in archive.files}
        not_arrays = sorted(name for name, member in members.items() if not isinstance(member, np.ndarray))
        if not_arrays:  # np.load hands back the raw bytes of a member that is no .npy
            raise ValueError(f"archive members that are not .npy arrays: {not_arrays}")
        raw = members.pop(STATE_MEMBER, None)
        if raw is None or raw.dtype != np.uint8 or raw.ndim != 1:
            raise ValueError(f"no {STATE_MEMBER} member of uint8 bytes")
        state = decode_state(raw.tobytes(), members)
        if not isinstance(state, dict) or type(state.get("round")) is not int:
            raise ValueError("the state is not a mapping with a whole round number")
    except (OSError, EOFError, ValueError, KeyError, RecursionError, zipfile.BadZipFile) as exc:
        raise ConfigError(f"checkpoint {path} cannot be read: {exc}") from exc
    return state


def encode_state(state: Mapping[str, Any]) -> tuple[bytes, dict[str, np.ndarray]]:
    """A state as canonical JSON (UTF-8 bytes) plus the numpy arrays it names, for a pickle-free file.

    Written as is: None, bool, int, str, finite float (Python's shortest repr, so it reads back bit for
    bit), lists, and dicts with str keys. Tagged as one-key objects: a numpy array as {"$array": member}
    (any dtype but object; dtype, byte order and shape are kept), a non-finite float as
    {"$float": "inf" | "-inf" | "nan"}, a tuple as {"$tuple": [...]}, and a dict with a key starting with
    "$" as {"$dict": {...}}. Numpy scalars become Python bool, int or float. Dict keys are sorted (so a
    decoded dict has its keys in sorted order). Anything else raises TypeError."""
    arrays: dict[str, np.ndarray] = {}

    def encode(value: Any, where: str) -> Any:
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, np.bool_):
            return bool(value)
        if isinstance(value, str):
            return str(value)
        if isinstance(value, int | np.integer):
            return int(value)
        if isinstance(value, float | np.floating):
            number = float(value)
            if math.isfinite(number):
                return number
            return {"$float": "nan" if math.isnan(number) else ("inf" if number > 0 else "-inf")}
        if isinstance(value, np.ndarray):
            if value.dtype.hasobject:
                raise TypeError(f"{where}: an array of dtype {value.dtype} cannot be written without pickle")
            name = f"array-{len(arrays)}"
            arrays[name] = value
            return {"$array": name}
        if isinstance(value, Mapping):
            bad = [key for key in value if not isinstance(key, str)]
            if bad:
                raise TypeError(f"{where}: dict keys must be str, got {type(bad[0]).__name__} {bad[0]!r}")
            body = {key: encode(value[key], f"{where}.{key}") for key in sorted(value)}
            return {"$dict": body} if any(key.startswith("$") for key in body) else body
        if isinstance(value, tuple):
            return {"$tuple": [encode(item, f"{where}[{i}]") for i, item in enumerate(value)]}
        if isinstance(value, list):
            return [encode(item, f"{where}[{i}]") for i, item in enumerate(value)]
        raise TypeError(f"{where}: a {type(value).__name__} cannot be written to a checkpoint")

    document = {"format": CHECKPOINT_FORMAT, "state": encode(state, "state")}
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.encode("utf-8"), arrays


_NON_FINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


def decode_state(text: bytes, arrays: Mapping[str, np.ndarray]) -> Any:
    """The state that `encode_state` wrote as `text` with `arrays`; ValueError when it is not one (every
    array must be named exactly once; bare NaN or Infinity, which JSON lacks, are refused)."""

    def refuse_constant(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    document = json.loads(text.decode("utf-8"), parse_constant=refuse_constant)
    if not isinstance(document, dict) or "state" not in document:
        raise ValueError("no state in the JSON")
    if document.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"not a {CHECKPOINT_FORMAT} state")
    used: set[str] = set()

    def decode(node: Any) -> Any:
        if node is None or isinstance(node, bool | int | float | str):
            return node
        if isinstance(node, list):
            return [decode(item) for item in node]
        if not isinstance(node, dict):
            raise ValueError(f"unexpected JSON value {node!r}")
        if not any(key.startswith("$") for key in node):
            return {key: decode(item) for key, item in node.items()}
        if len(node) != 1:
            raise ValueError(f"a tagged value must have one key, got {sorted(node)}")
        ((tag, body),) = node.items()
        if tag == "$dict" and isinstance(body, dict):
            return {key: decode(item) for key, item in body.items()}
        if tag == "$tuple" and isinstance(body, list):
            return tuple(decode(item) for item in body)
        if tag == "$float" and isinstance(body, str) and body in _NON_FINITE:
            return _NON_FINITE[body]
        if tag == "$array" and isinstance(body, str) and body in arrays and body not in used:
            used.add(body)
            return arrays[body]
        raise ValueError(f"malformed tagged value {tag!r}: {body!r}")

    state = decode(document["state"])
    unused = sorted(set(arrays) - used)
    if unused:
        raise ValueError(f"archive members not named by the state: {unused}")
    return state


def _matching(folder: RunFolder, pattern: re.Pattern[str]) -> list[Path]:
    if not folder.checkpoints.is_dir():
        return []
    found = [p for p in folder.checkpoints.iterdir() if pattern.fullmatch(p.name)]
    return sorted(found, key=lambda p: p.name)


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
    """The final parameters (.npy), the model's state dict (safetensors, atomically) and the summary."""
    np.save(folder.final_params, params, allow_pickle=False)
    tmp = folder.final_model.with_name(folder.final_model.name + ".tmp")
    save_file({name: tensor.contiguous() for name, tensor in model_state.items()}, str(tmp))
    os.replace(tmp, folder.final_model)
    write_json_atomic(folder.summary, summary)


def load_final_model_state(folder: RunFolder) -> dict[str, torch.Tensor]:
    """The final model's state dict (CPU tensors); ConfigError when it is missing, damaged or a pickle."""
    path = folder.final_model
    if not path.exists() and (legacy := path.with_name("final_model.pt")).exists():
        raise ConfigError(f"{legacy}: the final model's format changed to {path.name} (pickles are not read)")
    try:
        return load_file(str(path))
    except (OSError, SafetensorError) as exc:
        raise ConfigError(f"final model {path} cannot be read: {exc}") from exc
