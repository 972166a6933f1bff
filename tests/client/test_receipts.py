"""Device receipts and participation caps on a node: counting, refusing at the cap, binding to releases."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from flwr.app import RecordDict
from release_toy import random_model, source

from client.device import device_cli as cli
from client.device.receipts import Receipt, ReceiptStore, own_epsilon, summary
from client.training.participation_counts import Participation, RoundTerms, device_folders, own_cap
from server.releases.release_store import ReleaseStore
from shared import signing
from shared.errors import ConfigError, DataError
from shared.privacy.capped_accounting import individual_epsilon


def receipt(run_id: str, round_number: int, z: float = 1.0) -> Receipt:
    return Receipt(run_id, round_number, 0.5, z, 0.1, 1e-5, 2, "2026-12-03T08:00:00+00:00")


@pytest.mark.parametrize("delta", [0.0, 1.0, -1e-5, 2.0, math.nan])
def test_a_receipt_with_an_announced_delta_outside_0_1_is_refused(delta: float) -> None:
    with pytest.raises(DataError):
        Receipt("run-a", 1, 0.5, 1.0, 0.1, delta, 2, "2026-12-03T08:00:00+00:00")


def terms(round_number: int, run_id: str = "run-a") -> RoundTerms:
    return RoundTerms(run_id, round_number, 0.5, 1.0, 0.1, 1e-5, participation_cap=2)


def test_receipts_record_rounds_and_are_bound_to_the_release_that_includes_them(tmp_path: Path) -> None:
    store = ReceiptStore(tmp_path / "device")
    assert [store.add(receipt("run-a", r)) for r in (1, 2, 3)] == [True, True, True]
    assert store.add(receipt("run-a", 2)) is False  # a repeated message is not a second round
    store.add(receipt("run-b", 1))
    assert store.count("run-a") == 3 and store.count("run-b") == 1
    assert store.bind_release({"run_id": "run-a", "version": 4, "model": {"round": 2}}) == 2
    assert store.bind_release({"run_id": "run-a", "version": 5, "model": {"round": 3}}) == 1
    versions = {(r.run_id, r.round): r.release_version for r in store.receipts()}
    assert versions == {("run-a", 1): 4, ("run-a", 2): 4, ("run-a", 3): 5, ("run-b", 1): None}
    with pytest.raises(DataError):
        store.bind_release({"run_id": "run-a"})
    with pytest.raises(DataError):
        receipt("run-a", 0)


def test_a_device_refuses_to_train_at_its_cap_and_counts_survive_rounds(tmp_path: Path) -> None:
    state = RecordDict()
    counts = Participation(state, run_id="run-a", n_devices=5)
    for r in (1, 2):
        admitted, refused = counts.admit(np.array([0, 1, 2]), cap=2)
        assert admitted.tolist() == [0, 1, 2] and refused == 0
        counts.record(admitted, terms(r), cap=2)
    again = Participation(state, run_id="run-a", n_devices=5)  # the next round reads the node state
    admitted, refused = again.admit(np.array([1, 3]), cap=2)
    assert admitted.tolist() == [3] and refused == 1
    admitted, refused = again.admit(np.array([1, 3]), cap=0)  # no cap: nobody refuses
    assert admitted.tolist() == [1, 3] and refused == 0
    assert Participation(state, run_id="run-b", n_devices=5).admit(np.array([1]), cap=2)[1] == 0  # new run


def test_a_device_with_its_own_lower_cap_and_receipts_that_survive_a_fresh_node_state(tmp_path: Path) -> None:
    assert own_cap(3, 1) == 1 and own_cap(0, 2) == 2 and own_cap(4, 0) == 4 and own_cap(0, 0) == 0
    with pytest.raises(ConfigError):
        own_cap(-1, 0)
    folder = device_folders(node_device_dir=str(tmp_path / "phone"), receipts_dir="", users=np.array([7]))
    assert folder is not None
    cap = own_cap(5, 1)
    counts = Participation(RecordDict(), run_id="run-a", n_devices=1, folder=folder)
    counts.record(counts.admit(np.array([0]), cap=cap)[0], terms(1), cap=cap)
    resumed = Participation(RecordDict(), run_id="run-a", n_devices=1, folder=folder)  # state lost
    admitted, refused = resumed.admit(np.array([0]), cap=cap)
    assert admitted.size == 0 and refused == 1
    [only] = ReceiptStore(tmp_path / "phone").receipts()
    assert (only.run_id, only.round, only.participation_cap, only.noise_multiplier) == ("run-a", 1, 1, 1.0)
    with pytest.raises(ConfigError):
        device_folders(node_device_dir=str(tmp_path), receipts_dir="", users=np.array([1, 2]))
    shard = device_folders(node_device_dir="", receipts_dir=str(tmp_path / "sim"), users=np.array([4, 9]))
    assert shard is not None and shard(1) == tmp_path / "sim" / "device-9"


def test_summary_gives_the_count_the_run_epsilon_and_the_own_bound() -> None:
    rows = [receipt("run-a", 1), receipt("run-a", 4)]
    manifest = {"run_id": "run-a", "version": 1, "privacy": {"epsilon": 3.5}}
    [run] = summary(rows, manifest)
    assert run["rounds_taken_part"] == 2 and run["rounds"] == [1, 4] and run["run_epsilon"] == 3.5
    assert run["own_participation_epsilon"] == pytest.approx(individual_epsilon([1.0, 1.0], delta=1e-5))
    assert own_epsilon([0.8, 1.3, 2.0], delta=1e-6) == pytest.approx(
        individual_epsilon([0.8, 1.3, 2.0], delta=1e-6), rel=1e-9
    )
    assert summary(rows, {"run_id": "other", "privacy": {"epsilon": 1.0}})[0]["run_epsilon"] is None


def test_fedhome_client_receipts_prints_them_and_binds_them_to_the_installed_release(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = signing.generate_private_key()
    signing.save_public_key(key.public_key(), tmp_path / "key.pem")
    model, catalogue = random_model()
    store = ReleaseStore(tmp_path / "releases")
    version = store.publish(model, catalogue, source("a"), key)  # run "run-a", model round 3
    data = tmp_path / "device"
    receipts = ReceiptStore(data)
    for r in (2, 3, 5):
        receipts.add(receipt("run-a", r))
    receipts.close()
    cache = tmp_path / "cache"
    assert cli.main(["install", "--from", str(store.folder(version)), "--cache", str(cache),
                     "--public-key", str(tmp_path / "key.pem")]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out) == {"installed": version}
    assert cli.main(["receipts", "--data", str(data)]) == 0
    text = capsys.readouterr().out
    assert "took part in 3 rounds" in text and "individual accounting bound" in text
    assert "not in an installed release yet" in text
    args = ["receipts", "--data", str(data), "--cache", str(cache), "--public-key", str(tmp_path / "key.pem")]
    assert cli.main([*args, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [r["release_version"] for r in shown["receipts"]] == [version, version, None]
    assert shown["runs"][0]["run_epsilon"] == 8.0 and shown["runs"][0]["release_versions"] == [version]
    assert cli.main(["receipts", "--data", str(data), "--cache", str(cache)]) == 2  # no key: refused


def test_fedhome_client_install_with_data_marks_the_receipts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = signing.generate_private_key()
    signing.save_public_key(key.public_key(), tmp_path / "key.pem")
    model, catalogue = random_model()
    store = ReleaseStore(tmp_path / "releases")
    version = store.publish(model, catalogue, source("a"), key)  # run "run-a", model round 3
    receipts = ReceiptStore(tmp_path / "device")
    for r in (1, 4):
        receipts.add(receipt("run-a", r))
    args = ["install", "--from", str(store.folder(version)), "--cache", str(tmp_path / "cache")]
    assert (
        cli.main([*args, "--public-key", str(tmp_path / "key.pem"), "--data", str(tmp_path / "device")]) == 0
    )
    assert json.loads(capsys.readouterr().out) == {"installed": version, "receipts_marked": 1}
    assert [r.release_version for r in receipts.receipts()] == [version, None]


def test_the_run_epsilon_shown_covers_the_trending_counts_the_release_carries() -> None:
    """A release with trending counts released after its model round is covered only by epsilon_all."""
    manifest = {"run_id": "run-a", "privacy": {"epsilon": 3.5, "epsilon_all": 4.25}}
    assert summary([receipt("run-a", 1)], manifest)[0]["run_epsilon"] == 4.25


def test_counts_of_the_run_for_another_number_of_devices_are_refused_not_restarted() -> None:
    state = RecordDict()
    counts = Participation(state, run_id="run-a", n_devices=3)
    counts.record(np.array([0, 1]), terms(1), cap=1)
    with pytest.raises(ConfigError):  # zeros here would let devices 0 and 1 train again
        Participation(state, run_id="run-a", n_devices=4)
    assert Participation(state, run_id="run-b", n_devices=4).counts.tolist() == [0, 0, 0, 0]  # a new run


def test_a_receipt_says_whether_the_round_ran_secure_aggregation(tmp_path: Path) -> None:
    state = RecordDict()
    folder = device_folders(node_device_dir=str(tmp_path / "node"), receipts_dir="", users=np.array([7]))
    counts = Participation(state, run_id="run-a", n_devices=1, folder=folder)
    counts.record(np.array([0]), terms(1), cap=0)
    secure = RoundTerms("run-a", 2, 0.5, 1.0, 0.1, 1e-5, participation_cap=0, secure_aggregation=True)
    counts.record(np.array([0]), secure, cap=0)
    assert folder is not None
    store = ReceiptStore(folder(0))
    assert [r.secure_aggregation for r in store.receipts()] == [False, True]
    assert summary(store.receipts())[0]["securely_aggregated_rounds"] == [2]


def test_a_receipt_store_from_before_the_secure_aggregation_column_is_upgraded(tmp_path: Path) -> None:
    folder = tmp_path / "device"
    folder.mkdir()
    old = sqlite3.connect(str(folder / "receipts.sqlite"))
    old.execute(
        "CREATE TABLE receipts (run_id TEXT NOT NULL, round INTEGER NOT NULL, clip_norm REAL NOT NULL, "
        "noise_multiplier REAL NOT NULL, sample_rate REAL NOT NULL, delta REAL NOT NULL, "
        "participation_cap INTEGER NOT NULL, time_utc TEXT NOT NULL, release_version INTEGER, "
        "PRIMARY KEY (run_id, round))"
    )
    old.execute(
        "INSERT INTO receipts VALUES ('run-a', 1, 0.5, 1.0, 0.1, 1e-5, 0, '2026-12-01T00:00:00', NULL)"
    )
    old.commit()
    old.close()
    store = ReceiptStore(folder)
    (kept,) = store.receipts()
    assert (kept.run_id, kept.round, kept.secure_aggregation) == ("run-a", 1, False)
    store.add(Receipt("run-a", 2, 0.5, 1.0, 0.1, 1e-5, 0, "2026-12-02T00:00:00", secure_aggregation=True))
    assert [r.secure_aggregation for r in store.receipts()] == [False, True]
