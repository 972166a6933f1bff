"""The encoder's CPU fast path: ONNX export with mean pooling, int8 per-channel quantisation, cached on disk.

The quantised model is built once per encoder version (hash of the model files) and recipe, and kept under
`<cache_dir>/onnx/<encoder_id>/<RECIPE>/` with a manifest holding its sha256; a file that no longer matches
its manifest is rebuilt. Running it needs only onnxruntime, the model's fast tokenizer and numpy.

Dynamic quantisation picks each activation's int8 scale per call (over the whole batch, padding included),
so a text's vector depends slightly on its batch-mates: cosine to the same text encoded alone is ~0.99 on
average and was 0.975 at worst (an empty text) in the tests. The benchmark's agreement with float32
includes this effect, and the cache keeps the first vector computed, so repeated runs stay identical.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from server.embedding.encoder import (
    EncoderSpec,
    ProgressFn,
    encode_sorted,
    l2_normalise,
    load_sentence_transformer,
)
from shared.errors import EncoderError

logger = logging.getLogger(__name__)

RECIPE = "int8-per-channel-opset17-v1"  # bump when the export or quantisation below changes
ONNX_FILE = "model-int8.onnx"
MANIFEST_FILE = "manifest.json"
OUTPUT_NAME = "sentence_vector"  # "embedding" collides with a name inside the exported graph


def int8_model_dir(spec: EncoderSpec, cache_dir: Path) -> Path:
    """Where the quantised model of this encoder version and recipe lives."""
    return cache_dir / "onnx" / spec.encoder_id.replace("/", "_") / RECIPE


def ensure_int8_model(spec: EncoderSpec, cache_dir: Path, *, model: Any | None = None) -> Path:
    """Path of a verified quantised model, exporting and quantising it first when it is missing or damaged.

    `model`: the float32 CPU SentenceTransformer of `spec` when the caller has it loaded already.
    """
    folder = int8_model_dir(spec, cache_dir)
    path = folder / ONNX_FILE
    if _matches_manifest(folder, spec.encoder_id):
        return path
    logger.info("building the int8 ONNX encoder once for %s under %s", spec.encoder_id, folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            staged = Path(tmp) / ONNX_FILE
            export_int8(spec, staged, model=model)
            manifest = {"encoder_id": spec.encoder_id, "recipe": RECIPE, "sha256": _sha256(staged)}
            os.replace(staged, path)
            _write_atomic(folder / MANIFEST_FILE, json.dumps(manifest, indent=1))
    except EncoderError:
        raise
    except Exception as exc:  # file system, torch's exporter and the quantiser raise many types
        raise EncoderError(f"cannot build the int8 ONNX encoder under {folder}: {exc}") from exc
    return path


def export_int8(spec: EncoderSpec, out_path: Path, *, model: Any | None = None) -> None:
    """Export encoder + mean pooling + L2 normalisation to ONNX (opset 17); quantise to int8 per channel."""
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if model is None:
        model = load_sentence_transformer(spec.model_dir, "cpu")
    elif next(model.parameters()).dtype != torch.float32 or model.device.type != "cpu":
        raise EncoderError("the int8 export starts from the float32 model on the CPU")
    module = _pooled_module(model[0].auto_model).eval()
    fp32_path = out_path.with_name("model-fp32.onnx")
    # Two rows of different lengths, so the traced graph includes the padding mask.
    ids = torch.tensor([[101, 2417, 3384, 102], [101, 2417, 102, 0]], dtype=torch.long)
    mask = (ids != 0).long()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about Python control flow in transformers
        torch.onnx.export(
            module,
            (ids, mask),
            str(fp32_path),
            dynamo=False,
            opset_version=17,
            input_names=["input_ids", "attention_mask"],
            output_names=[OUTPUT_NAME],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "sequence"},
                "attention_mask": {0: "batch", 1: "sequence"},
                OUTPUT_NAME: {0: "batch"},
            },
        )
    with _quiet_root_logger():
        # Per channel: the default per-tensor scales drop cosine to float32 to ~0.89 on some texts.
        quantize_dynamic(fp32_path, out_path, per_channel=True, weight_type=QuantType.QInt8)
    fp32_path.unlink()


class OnnxInt8Encoder:
    """The quantised encoder on onnxruntime's CPU provider, over length-sorted batches."""

    def __init__(self, spec: EncoderSpec, model_path: Path, *, batch_size: int, threads: int = 0) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.encoder_id = spec.encoder_id
        self.backend: str = "onnx-int8"
        self.dim = spec.dim
        self.batch_size = batch_size
        try:
            self._tokenizer = Tokenizer.from_file(str(spec.model_dir / "tokenizer.json"))
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            self._session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime and tokenizers raise their own exception types
            raise EncoderError(f"cannot load the ONNX encoder {model_path}: {exc}") from exc
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length=spec.max_seq_length)
        self._pad_id = self._tokenizer.token_to_id("[PAD]") or 0

    def encode(self, texts: Sequence[str], *, on_batch: ProgressFn | None = None) -> np.ndarray:
        """(len(texts), dim) float32, unit rows, in input order; batches sorted by token count."""
        token_ids = [encoding.ids for encoding in self._tokenizer.encode_batch(list(texts))]

        def run(batch: np.ndarray) -> np.ndarray:
            ids, mask = _pad([token_ids[i] for i in batch], self._pad_id)
            (vectors,) = self._session.run([OUTPUT_NAME], {"input_ids": ids, "attention_mask": mask})
            return l2_normalise(vectors)

        return encode_sorted([len(t) for t in token_ids], self.batch_size, self.dim, run, on_batch)


def _pad(rows: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(batch, longest) int64 token ids and attention mask."""
    longest = max(len(r) for r in rows)
    ids = np.full((len(rows), longest), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), longest), dtype=np.int64)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return ids, mask


def _pooled_module(transformer: Any) -> Any:
    """A module: (input_ids, attention_mask) -> mean of the unmasked token states, L2-normalised."""
    import torch

    class PooledEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.transformer = transformer

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            states = self.transformer(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            weights = attention_mask.unsqueeze(-1).to(states.dtype)  # (batch, sequence, 1)
            pooled = (states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, dim=-1)

    return PooledEncoder()


def _matches_manifest(folder: Path, encoder_id: str) -> bool:
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))
        ok = (
            manifest.get("encoder_id") == encoder_id
            and manifest.get("recipe") == RECIPE
            and manifest.get("sha256") == _sha256(folder / ONNX_FILE)
        )
    except (OSError, ValueError, AttributeError):
        return False
    if not ok:
        logger.warning("the cached ONNX encoder under %s does not match its manifest; rebuilding it", folder)
    return bool(ok)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_atomic(path: Path, text: str) -> None:
    staged = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    staged.write_text(text, encoding="utf-8")
    os.replace(staged, path)


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """Drop the quantiser's chatter: it logs per-tensor notes and a pre-processing hint on the root logger."""

    def keep(record: logging.LogRecord) -> bool:
        hint = "pre-processing before quantization" in record.getMessage()
        return record.levelno >= logging.WARNING and not hint

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)
