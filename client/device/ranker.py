"""On-device ranking from a verified release, with onnxruntime and numpy only (no torch on this path).

The user vector comes from the device's recent history through the release's ONNX user tower; scores are
t * <u, v> + bias against every item, by the two-stage ItemIndex (item_index.py: coarse int8 codes read
directly by an integer kernel, then exact rescoring of the best candidates) or, with precision "float32",
exactly against every float32 item vector. Nothing here leaves the device: the history, the user vector and
the scores stay in memory.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from client.device.item_index import DEFAULT_RESCORE, ItemIndex, Precision
from shared.catalogue_delta_format import DeltaRows
from shared.data.schema import EVENT_CODE
from shared.errors import DataError
from shared.history import gap_buckets, request_context

EXCLUDED = -np.inf


@dataclass(frozen=True)
class Event:
    """One interaction on the device: the item's catalogue id, the event type, unix seconds."""

    item_id: str
    event: str
    timestamp: int


class DeviceRanker:
    """Ranks a release's catalogue for one history. `folder` must already be verified (ReleaseCache does)."""

    def __init__(
        self,
        folder: Path,
        *,
        precision: Precision = "int8",
        threads: int = 1,
        rescore: int = DEFAULT_RESCORE,
    ) -> None:
        folder = Path(folder)
        if precision not in ("int8", "float32"):
            raise DataError(f"precision must be int8 or float32, got {precision!r}")
        scoring = json.loads((folder / "scoring.json").read_text())
        self.temperature = float(scoring["temperature"])
        self.max_history = int(scoring["max_history"])
        self.items = json.loads((folder / "items.json").read_text())
        self.index = {item["id"]: i for i, item in enumerate(self.items)}
        self.hidden = np.zeros(0, dtype=np.int64)  # rows a catalogue delta took off the pages (apply_delta)
        self.release_items = len(self.items)  # rows from here on were added by a catalogue delta
        self.deltas_applied = 0  # apply_delta calls so far: what depends on `items` is stale when it moves
        self.precision = precision
        self.item_index = ItemIndex.from_release(
            folder, precision=precision, rescore=rescore, threads=threads
        )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(folder / "user_tower.onnx"), options, providers=["CPUExecutionProvider"]
        )

    def apply_delta(self, delta: DeltaRows) -> None:
        """Items published after the release (a VERIFIED catalogue delta): rows of items the release has
        are replaced, new items appended, and items whose status is not "active" hidden from rankings and
        pages (their rows stay, so a history that names them still counts)."""
        if delta.vectors_f32.shape[1] != self.item_index.store.dim:
            raise DataError(f"delta vectors have shape {delta.vectors_f32.shape}, not the release's")
        known = [i for i, item in enumerate(delta.items) if item["id"] in self.index]
        fresh = [i for i, item in enumerate(delta.items) if item["id"] not in self.index]
        rows = np.array([self.index[delta.items[i]["id"]] for i in known], dtype=np.int64)
        self.item_index.replace(rows, delta.vectors_f32[known], delta.bias[known])
        for i, row in zip(known, rows, strict=True):
            self.items[row] = delta.items[i]
        if fresh:
            added = self.item_index.extend(delta.vectors_f32[fresh], delta.bias[fresh])
            for i, row in zip(fresh, added, strict=True):
                self.items.append(delta.items[i])
                self.index[delta.items[i]["id"]] = int(row)
        inactive = [self.index[item["id"]] for item in delta.items if item["status"] != "active"]
        self.hidden = np.union1d(self.hidden, np.array(inactive, dtype=np.int64)).astype(np.int64)
        active = [self.index[item["id"]] for item in delta.items if item["status"] == "active"]
        self.hidden = np.setdiff1d(self.hidden, np.array(active, dtype=np.int64)).astype(np.int64)
        self.deltas_applied += 1

    @property
    def n_items(self) -> int:
        return self.item_index.n_items

    @property
    def bias(self) -> np.ndarray:
        """(N,) float32 item biases."""
        return self.item_index.bias

    def item_vectors(self, rows: np.ndarray) -> np.ndarray:
        """(k, E) float32 full-dimension vectors of item rows."""
        return self.item_index.vectors(rows)

    def user_vector(self, history: Sequence[Event], now: int) -> np.ndarray | None:
        """(E,) unit user vector from the most recent `max_history` known events (None: no usable event)."""
        known = [e for e in history if e.item_id in self.index and e.event in EVENT_CODE]
        known = sorted(known, key=lambda e: e.timestamp)[-self.max_history :]
        if not known:
            return None
        rows = np.array([self.index[e.item_id] for e in known])
        events = np.array([[EVENT_CODE[e.event] + 1 for e in known]], dtype=np.int64)
        gaps = gap_buckets(now - np.array([[e.timestamp for e in known]], dtype=np.int64))
        hour, weekday = request_context(np.array([now]))
        (vector,) = self.session.run(
            None,
            {
                "history": self.item_vectors(rows)[None],
                "events": events,
                "gaps": gaps.astype(np.int64),
                "hour": hour.astype(np.int64),
                "weekday": weekday.astype(np.int64),
            },
        )
        return np.asarray(vector[0], dtype=np.float32)

    def scores(self, user: np.ndarray) -> np.ndarray:
        """(N,) float32 scores of every item for user vector `user` (int8: exact for the best candidates,
        coarse for the rest; see ItemIndex.scores)."""
        return self.item_index.scores(user)

    def top_k(self, scores: np.ndarray, k: int, exclude: np.ndarray | None = None) -> np.ndarray:
        """Item rows of the k best scores, best first, never an excluded row nor one a catalogue delta hid."""
        scores = scores.copy()
        if exclude is not None and exclude.size:
            scores[exclude] = EXCLUDED
        scores[self.hidden] = EXCLUDED  # out of stock or withdrawn: never shown, whoever calls
        k = min(k, int(np.isfinite(scores).sum()))
        if k <= 0:
            return np.zeros(0, dtype=np.int64)
        part = np.argpartition(-scores, k - 1)[:k]
        return part[np.argsort(-scores[part], kind="stable")]

    def recommend(self, history: Sequence[Event], now: int, k: int = 10) -> list[str]:
        """Item ids of the top k for this history, items already in the history left out."""
        user = self.user_vector(history, now)
        if user is None:
            raise DataError("no event in the history names an item of this release")
        seen = np.array(sorted({self.index[e.item_id] for e in history if e.item_id in self.index}))
        rows, _ = self.item_index.top_k(user, k, exclude=np.union1d(seen, self.hidden).astype(np.int64))
        return [self.items[i]["id"] for i in rows]
