"""Checkpoints and the final model are written without pickle and read back exactly; a pickle, an object
array or a damaged file in a (copied) run folder is refused, never executed."""

from __future__ import annotations

import io
import math
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from server.strategy.aggregator import UserLevelDPAggregator
from server.strategy.optimizers import FedAdamOptimizer
from shared.errors import ConfigError
from shared.privacy.accounting import RoundEvent
from shared.privacy.capped_accounting import CappedAccountant, accountant_from_dict
from shared.privacy.noise import GaussianNoise
from shared.run_folder import (
    KEEP_CHECKPOINTS,
    RunFolder,
    checkpoint_path,
    decode_state,
    encode_state,
    list_checkpoints,
    load_checkpoint,
    load_final_model_state,
    load_latest_checkpoint,
    load_round_checkpoint,
    save_checkpoint,
    save_final,
)

MARKER = "pwned.txt"


class _Payload:
    """Unpickling this creates the marker file (it names the path to create)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (Path(self.path),))


def make_folder(tmp_path: Path) -> RunFolder:
    folder = RunFolder(tmp_path / "run")
    folder.create()
    return folder


def real_state() -> dict[str, Any]:
    """A state as Coordinator.checkpoint passes it, with the real optimiser, aggregator and accountant."""
    rng = np.random.default_rng(3)
    params = rng.normal(size=7).astype(np.float32)
    optimizer = FedAdamOptimizer(learning_rate=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    for _ in range(2):
        params = optimizer.step(params, rng.normal(size=7).astype(np.float32) * 1e-2)
    aggregator = UserLevelDPAggregator(
        population=12,
        sample_rate=0.25,
        noise_multiplier=1.1,
        clip_norm=0.7,
        mode="central",
        noise=GaussianNoise(seed=5),
    )
    accountant = CappedAccountant(delta=1e-5, participation_cap=2)
    accountant.record(RoundEvent(sample_rate=0.25, noise_multiplier=1.1, capped=True))
    accountant.record(RoundEvent(sample_rate=0.25, noise_multiplier=1.1, capped=True))
    history = [
        {"round": 1, "clip_norm": 0.7, "noised_unclipped_fraction": None, "user_epsilon": math.inf},
        {"round": 2, "cohort": 2, "update_norm": 0.1 + 0.2, "user_epsilon": 1.2345678901234567e-300},
    ]
    return {
        "params": params,
        "run_id": "run-ü-0001",
        "history": history,
        "optimizer": optimizer.state_dict(),
        "aggregator": aggregator.state_dict(),
        "accountant": accountant.to_dict(),
        "ledger_entry": {"round": 2, "user_epsilon": {"pld": "inf", "rdp": 3.5}, "signature": "c2ln"},
    }


def assert_same(a: Any, b: Any) -> None:
    """Equal with the same types, dtypes, shapes and bits (NaN equal to NaN)."""
    assert type(a) is type(b), (a, b)
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.tobytes() == b.tobytes()
    elif isinstance(a, dict):
        assert list(a) == list(b) or set(a) == set(b)
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    elif isinstance(a, float):
        assert a == b or (math.isnan(a) and math.isnan(b))
        assert math.copysign(1.0, a) == math.copysign(1.0, b)
    else:
        assert a == b


def test_a_realistic_state_round_trips_exactly(tmp_path: Path) -> None:
    folder = make_folder(tmp_path)
    state = real_state()
    path = save_checkpoint(folder, 2, state)
    assert path.name == "round-00002.npz"
    loaded = load_latest_checkpoint(folder)
    assert loaded is not None
    assert_same(loaded, {"round": 2, **state})
    FedAdamOptimizer(learning_rate=0.1, beta1=0.9, beta2=0.99, tau=1e-3).load_state_dict(loaded["optimizer"])
    assert accountant_from_dict(loaded["accountant"]).to_dict() == state["accountant"]
    assert load_round_checkpoint(folder, 2)["run_id"] == state["run_id"]


def test_arrays_of_every_plain_dtype_and_shape_nested_values_and_odd_floats_round_trip() -> None:
    rng = np.random.default_rng(1)
    arrays = {
        "f16": rng.normal(size=(2, 3)).astype(np.float16),
        "f32": np.array([np.nan, -np.inf, np.inf, -0.0, 1e-45], np.float32),
        "f64_scalar": np.array(math.pi),
        "f64_fortran": np.asfortranarray(rng.normal(size=(3, 4))),
        "big_endian": np.arange(5, dtype=">i4"),
        "i8": np.arange(-3, 3, dtype=np.int8).reshape(2, 3),
        "u64": np.array([2**64 - 1], np.uint64),
        "bool": np.array([[True, False]]),
        "empty": np.zeros((0, 4), np.float32),
        "unicode": np.array(["a", "ü€"]),
        "complex": np.array([1 + 2j], np.complex128),
    }
    state = {
        "arrays": arrays,
        "nested": {"list": [1, [2.5, {"x": arrays["i8"]}], None, True, "s"], "tuple": (1, "two", 3.0)},
        "floats": [math.inf, -math.inf, math.nan, -0.0, 5e-324, 1.7976931348623157e308, 0.1 + 0.2],
        "big_int": 2**80,
        "$dollar": {"$array": "not an array", "$float": 1},
        "": "empty key",
    }
    text, members = encode_state(state)
    assert_same(decode_state(text, members), state)


def test_numpy_scalars_become_python_numbers() -> None:
    state = {"f": np.float32(0.1), "d": np.float64(-0.0), "i": np.int64(-7), "u": np.uint8(9)}
    state["b"] = np.bool_(1)
    text, members = encode_state(state)
    decoded = decode_state(text, members)
    expected = {"f": float(np.float32(0.1)), "d": -0.0, "i": -7, "u": 9, "b": True}
    assert_same(decoded, expected)


@pytest.mark.parametrize(
    "value",
    [np.array([object()], dtype=object), {1: "int key"}, b"bytes", {1, 2}, torch.zeros(2), 1 + 2j],
)
def test_what_cannot_be_written_without_pickle_is_refused_on_save(tmp_path: Path, value: Any) -> None:
    folder = make_folder(tmp_path)
    with pytest.raises(TypeError):
        save_checkpoint(folder, 1, {"x": value})
    assert list_checkpoints(folder) == [] and list(folder.checkpoints.iterdir()) == []


def test_only_the_newest_checkpoints_are_kept_and_no_temporary_file_is_left(tmp_path: Path) -> None:
    folder = make_folder(tmp_path)
    (folder.checkpoints / "round-00001.npz.tmp").write_bytes(b"an interrupted write")
    for number in range(1, 7):
        save_checkpoint(folder, number, {"params": np.full(3, number, np.float32)})
    names = [p.name for p in list_checkpoints(folder)]
    assert names == [f"round-{n:05d}.npz" for n in range(7 - KEEP_CHECKPOINTS, 7)]
    assert sorted(p.name for p in folder.checkpoints.iterdir()) == sorted(names)  # the stale .tmp is gone
    loaded = load_latest_checkpoint(folder)
    assert loaded is not None and loaded["round"] == 6 and loaded["params"].tolist() == [6.0, 6.0, 6.0]
    assert load_latest_checkpoint(make_folder(tmp_path / "empty")) is None


def test_a_crafted_pickle_checkpoint_is_refused_and_never_unpickled(tmp_path: Path) -> None:
    folder = make_folder(tmp_path)
    marker = tmp_path / MARKER
    payload = {"round": 9, "params": _Payload(str(marker))}
    (folder.checkpoints / "round-00009.pt").write_bytes(pickle.dumps(payload))
    torch.save(payload, folder.checkpoints / "round-00008.pt")
    with pytest.raises(ConfigError, match="checkpoint format changed"):
        load_latest_checkpoint(folder)
    with pytest.raises(ConfigError, match="checkpoint format changed"):
        load_round_checkpoint(folder, 9)
    assert not marker.exists()
    # the same pickle under the new name is no checkpoint either
    checkpoint_path(folder, 10).write_bytes(pickle.dumps(payload))
    with pytest.raises(ConfigError, match=r"round-00010\.npz"):
        load_latest_checkpoint(folder)
    assert not marker.exists()


def npz_with(members: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=True, **members)
    return buffer.getvalue()


def test_a_crafted_npz_with_an_object_array_is_refused_and_never_unpickled(tmp_path: Path) -> None:
    folder = make_folder(tmp_path)
    marker = tmp_path / MARKER
    text, _ = encode_state({"round": 3, "params": {"$array": "array-0"}})
    evil = np.empty(1, dtype=object)
    evil[0] = _Payload(str(marker))
    data = npz_with({"state.json": np.frombuffer(text, np.uint8), "array-0": evil})
    checkpoint_path(folder, 3).write_bytes(data)
    with pytest.raises(ConfigError, match=r"round-00003\.npz"):
        load_latest_checkpoint(folder)
    assert not marker.exists()
    # an object array as the state member itself
    checkpoint_path(folder, 4).write_bytes(npz_with({"state.json": evil}))
    with pytest.raises(ConfigError, match=r"round-00004\.npz"):
        load_latest_checkpoint(folder)
    assert not marker.exists()


def test_a_truncated_or_malformed_checkpoint_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    folder = make_folder(tmp_path)
    path = save_checkpoint(folder, 5, real_state())
    data = path.read_bytes()
    for cut in (0, 10, len(data) // 2, len(data) - 1):
        path.write_bytes(data[:cut])
        with pytest.raises(ConfigError, match=r"round-00005\.npz"):
            load_latest_checkpoint(folder)
    bad_states: list[bytes] = [
        b'{"format": "fedhome-checkpoint/1", "state": {"x": NaN}}',  # a bare NaN is no JSON
        b'{"format": "fedhome-checkpoint/1", "state": {"x": {"$array": "missing"}}}',
        b'{"format": "fedhome-checkpoint/1", "state": {"x": {"$float": "1.5"}}}',
        b'{"format": "fedhome-checkpoint/1", "state": {"x": {"$array": "a", "y": 1}}}',
        b'{"format": "something-else", "state": {"round": 5}}',
        b'{"format": "fedhome-checkpoint/1", "state": [1]}',
        b'{"format": "fedhome-checkpoint/1", "state": {"round": "5"}}',
        b"not json",
    ]
    for text in bad_states:
        path.write_bytes(npz_with({"state.json": np.frombuffer(text, np.uint8)}))
        with pytest.raises(ConfigError, match=r"round-00005\.npz"):
            load_checkpoint(path)
    path.write_bytes(npz_with({"params": np.zeros(2)}))  # no state member
    with pytest.raises(ConfigError, match=r"round-00005\.npz"):
        load_checkpoint(path)
    np.save(path.with_name("plain.npy"), np.zeros(2))
    path.write_bytes(path.with_name("plain.npy").read_bytes())  # an .npy, not an archive
    with pytest.raises(ConfigError, match=r"round-00005\.npz"):
        load_checkpoint(path)
    with zipfile.ZipFile(path, "w") as archive:  # a zip, but not of .npy members
        archive.writestr("state.json.npy", b"garbage")
    with pytest.raises(ConfigError, match=r"round-00005\.npz"):
        load_checkpoint(path)


def test_an_unreferenced_array_member_is_refused(tmp_path: Path) -> None:
    folder = make_folder(tmp_path)
    text, members = encode_state({"round": 1, "params": np.zeros(2)})
    data = npz_with({"state.json": np.frombuffer(text, np.uint8), **members, "array-9": np.ones(1)})
    checkpoint_path(folder, 1).write_bytes(data)
    with pytest.raises(ConfigError, match="array-9"):
        load_latest_checkpoint(folder)


def test_the_final_model_is_safetensors_and_round_trips(tmp_path: Path) -> None:
    folder = make_folder(tmp_path)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.LayerNorm(2))
    params = np.arange(4, dtype=np.float32)
    save_final(folder, params, model.state_dict(), {"rounds": 1})
    assert folder.final_model.name == "final_model.safetensors"
    assert folder.final_model.read_bytes()[8:9] == b"{"  # an 8-byte header length, then a JSON header
    loaded = load_final_model_state(folder)
    assert loaded.keys() == model.state_dict().keys()
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded[name], tensor) and loaded[name].dtype == tensor.dtype
    assert np.load(folder.final_params, allow_pickle=False).tolist() == params.tolist()


def test_an_old_pickled_final_model_is_refused(tmp_path: Path) -> None:
    folder = make_folder(tmp_path)
    marker = tmp_path / MARKER
    (folder.root / "final_model.pt").write_bytes(pickle.dumps(_Payload(str(marker))))
    with pytest.raises(ConfigError, match="format changed"):
        load_final_model_state(folder)
    folder.final_model.write_bytes(pickle.dumps(_Payload(str(marker))))
    with pytest.raises(ConfigError, match=r"final_model\.safetensors"):
        load_final_model_state(folder)
    assert not marker.exists()
