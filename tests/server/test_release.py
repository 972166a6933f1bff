"""Signed model releases from a real (tiny) Flower run: ONNX parity, int8 recall, signing and tampering,
the release store's history and withdrawal, and `fedhome-server release`."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from federated_toy import tiny_config

from server import server_cli
from server.releases.release_builder import (
    ITEM_SCALES,
    ITEMS_F32,
    ITEMS_INT8,
    USER_TOWER,
    load_run,
    quantize_rows,
)
from server.releases.release_store import ReleaseStore
from shared.data.source import configured_split
from shared.errors import ConfigError, DataError, SignatureError
from shared.release_manifest import MANIFEST_NAME, verify_release
from shared.run_folder import RunFolder
from shared.signing import generate_private_key, load_private_key, save_private_key
from simulation.federated import run_federated

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A finished 2-round run folder and its signing key file (the server's key)."""
    tmp = tmp_path_factory.mktemp("release-run")
    key_path = tmp / "server_key.pem"
    save_private_key(generate_private_key(), key_path)
    config = tiny_config(
        tmp,
        tmp / "cache",
        federated__rounds="2",
        privacy__target_epsilon="50",
        federated__signing_key=str(key_path),
    )
    run_federated(config, configured_split(config.data), progress=False)
    return Path(config.federated.run_dir), key_path


@pytest.fixture(scope="module")
def store(run: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> ReleaseStore:
    run_dir, key_path = run
    key = load_private_key(key_path)
    store = ReleaseStore(tmp_path_factory.mktemp("store"))
    model, catalogue, source = load_run(run_dir, key.public_key())
    assert store.publish(model, catalogue, source, key) == 1
    return store


def test_release_manifest_binds_files_model_and_ledger(run: tuple[Path, Path], store: ReleaseStore) -> None:
    run_dir, key_path = run
    manifest = verify_release(store.folder(1), load_private_key(key_path).public_key())
    ledger = [json.loads(line) for line in RunFolder(run_dir).ledger.read_text().splitlines()]
    assert manifest["privacy"]["ledger_head"] == ledger[-1]["entry_hash"]
    assert manifest["privacy"]["epsilon"] == ledger[-1]["user_epsilon"]["pld"]
    assert manifest["model"] == {"sha256": ledger[-1]["model_sha256_after"], "round": 2}
    assert set(manifest["files"]) == {p.name for p in store.folder(1).iterdir()} - {MANIFEST_NAME}


def test_onnx_user_tower_matches_torch_for_any_batch_and_history_length(
    run: tuple[Path, Path], tmp_path: Path
) -> None:
    run_dir, key_path = run
    model, _, _ = load_run(run_dir, load_private_key(key_path).public_key())
    model = copy.deepcopy(model)
    torch.manual_seed(3)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.2)  # far from the (near-zero) trained read-out, so parity means something
    from server.releases.release_builder import export_user_tower

    export_user_tower(model, tmp_path / USER_TOWER)
    session = ort.InferenceSession(str(tmp_path / USER_TOWER), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    dim = model.items.text.shape[1]
    for batch, length in [(1, model.users.max_history), (3, 5), (7, 1)]:
        inputs: dict[str, np.ndarray] = {
            "history": rng.normal(size=(batch, length, dim)).astype(np.float32),
            "events": rng.integers(0, 4, size=(batch, length)).astype(np.int64),
            "gaps": rng.integers(0, 8, size=(batch, length)).astype(np.int64),
            "hour": rng.integers(0, 24, size=batch).astype(np.int64),
            "weekday": rng.integers(0, 7, size=batch).astype(np.int64),
        }
        inputs["events"][:, -1] = 1  # the latest slot is a real event
        (onnx_out,) = session.run(None, inputs)
        with torch.no_grad():
            torch_out = model.users(*(torch.from_numpy(v) for v in inputs.values())).numpy()
        assert onnx_out.shape == (batch, dim)
        np.testing.assert_allclose(onnx_out, torch_out, atol=1e-5)


def test_int8_item_vectors_keep_recall_at_50() -> None:
    rng = np.random.default_rng(1)
    items = rng.normal(size=(20_000, 64)).astype(np.float32)
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    users = rng.normal(size=(200, 64)).astype(np.float32)
    q, scale = quantize_rows(items)
    exact = np.argpartition(-(users @ items.T), 50, axis=1)[:, :50]
    approx = np.argpartition(-(users @ (q.astype(np.float32) * scale[:, None]).T), 50, axis=1)[:, :50]
    recall = np.mean([len(set(a) & set(b)) / 50 for a, b in zip(exact, approx, strict=True)])
    assert recall >= 0.97


def test_release_int8_file_reconstructs_the_float_vectors(store: ReleaseStore) -> None:
    folder = store.folder(1)
    f32, q, scale = (np.load(folder / name) for name in (ITEMS_F32, ITEMS_INT8, ITEM_SCALES))
    assert q.dtype == np.int8 and scale.shape == (f32.shape[0],)
    assert np.abs(q.astype(np.float32) * scale[:, None] - f32).max() <= scale.max() / 2 + 1e-7


@pytest.mark.parametrize(
    "victim", [USER_TOWER, ITEMS_F32, ITEMS_INT8, "items.json", "scoring.json", MANIFEST_NAME]
)
def test_one_flipped_byte_in_any_file_is_refused(
    run: tuple[Path, Path], store: ReleaseStore, tmp_path: Path, victim: str
) -> None:
    copy_dir = tmp_path / "release"
    shutil.copytree(store.folder(1), copy_dir)
    data = bytearray((copy_dir / victim).read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy_dir / victim).write_bytes(bytes(data))
    with pytest.raises((SignatureError, DataError)):
        verify_release(copy_dir, load_private_key(run[1]).public_key())


def test_wrong_key_missing_file_and_bad_names_are_refused(
    run: tuple[Path, Path], store: ReleaseStore, tmp_path: Path
) -> None:
    with pytest.raises(SignatureError, match="pinned key"):
        verify_release(store.folder(1), generate_private_key().public_key())
    copy_dir = tmp_path / "release"
    shutil.copytree(store.folder(1), copy_dir)
    (copy_dir / ITEMS_INT8).unlink()
    with pytest.raises(DataError, match="missing"):
        verify_release(copy_dir, load_private_key(run[1]).public_key())
    manifest = json.loads((copy_dir / MANIFEST_NAME).read_text())
    manifest["files"]["../escape"] = manifest["files"].pop(ITEMS_F32)
    (copy_dir / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises((SignatureError, DataError)):
        verify_release(copy_dir, load_private_key(run[1]).public_key())


def test_store_history_withdrawal_and_signed_index(run: tuple[Path, Path], tmp_path: Path) -> None:
    run_dir, key_path = run
    key = load_private_key(key_path)
    store = ReleaseStore(tmp_path / "store")
    model, catalogue, source = load_run(run_dir, key.public_key())
    assert [store.publish(model, catalogue, source, key) for _ in range(3)] == [1, 2, 3]
    assert store.latest() == 3
    store.withdraw(3, reason="bad item vectors", key=key)
    assert store.latest() == 2 and store.versions() == [1, 2, 3]
    index = store.index(key.public_key())  # verifies
    assert index["releases"][2] == {"version": 3, "withdrawn": True, "reason": "bad item vectors"}
    with pytest.raises(ConfigError):
        store.withdraw(9, reason="x", key=key)
    with pytest.raises(ConfigError):
        store.withdraw(1, reason=" ", key=key)
    raw = (store.root / "index.json").read_text().replace('"withdrawn": true', '"withdrawn": false')
    (store.root / "index.json").write_text(raw)
    with pytest.raises(SignatureError):
        store.index(key.public_key())


def test_release_command_and_refusal_of_an_unaccounted_model(run: tuple[Path, Path], tmp_path: Path) -> None:
    run_dir, key_path = run
    out = tmp_path / "store"
    args = ["release", str(run_dir), "--store", str(out), "--signing-key", str(key_path)]
    assert server_cli.main(args) == 0
    assert server_cli.main([*args, "--round", "1"]) == 0  # a checkpoint of an earlier round
    assert ReleaseStore(out).manifest(2)["model"]["round"] == 1
    tampered = tmp_path / "tampered-run"
    shutil.copytree(run_dir, tampered)
    params = np.load(tampered / "final_params.npy")
    np.save(tampered / "final_params.npy", params + np.float32(1e-3))
    assert (
        server_cli.main(["release", str(tampered), "--store", str(out), "--signing-key", str(key_path)]) == 2
    )
    other_key = tmp_path / "other.pem"
    save_private_key(generate_private_key(), other_key)
    assert (
        server_cli.main(["release", str(run_dir), "--store", str(out), "--signing-key", str(other_key)]) == 2
    )
    assert (
        server_cli.main(
            ["withdraw", "2", "--store", str(out), "--signing-key", str(key_path), "--reason", "test"]
        )
        == 0
    )
    assert ReleaseStore(out).latest() == 1


def test_report_binds_a_release_to_its_ledger_entry(
    run: tuple[Path, Path], store: ReleaseStore, tmp_path: Path
) -> None:
    from server.audit.audit_report import build_report

    run_dir, key_path = run
    key = load_private_key(key_path).public_key()
    binding = build_report(run_dir, key, release=store.folder(1))["release"]
    assert binding["ok"] and binding["bound_round"] == 2 and binding["manifest"]["version"] == 1
    tampered = tmp_path / "release"
    shutil.copytree(store.folder(1), tampered)
    (tampered / "items.json").write_text("[]")
    binding = build_report(run_dir, key, release=tampered)["release"]
    assert not binding["ok"] and "does not verify" in binding["problems"][0]
