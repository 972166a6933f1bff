"""The privacy ledger: signed, hash-chained, durable, append-only, and loud about a damaged file."""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import math
from pathlib import Path
from typing import Any

import pytest

from server import ledger as ledger_module
from server.ledger import GENESIS_HASH, PrivacyLedger, read_entries
from shared import signing
from shared.errors import DataError


def fields(round_number: int, **extra: Any) -> dict[str, Any]:
    return {"run_id": "r1", "round": round_number, "sample_rate": 0.05, "user_epsilon": {"pld": 0.5}, **extra}


def independent_hash(entry: dict[str, Any]) -> str:
    body = {k: v for k, v in entry.items() if k != "entry_hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@pytest.fixture
def key() -> signing.Ed25519PrivateKey:
    return signing.generate_private_key()


def test_entries_are_signed_and_chained(tmp_path: Path, key: signing.Ed25519PrivateKey) -> None:
    ledger = PrivacyLedger(tmp_path / "ledger.jsonl", signing_key=key)
    written = [ledger.append(fields(r)) for r in (1, 2, 3)]
    entries = ledger.entries()
    assert entries == written
    assert entries[0]["prev_hash"] == GENESIS_HASH
    for previous, entry in itertools.pairwise(entries):
        assert entry["prev_hash"] == previous["entry_hash"]
    for entry in entries:
        assert entry["key_id"] == signing.key_id(key.public_key())
        assert entry["entry_hash"] == independent_hash(entry)
        body = {k: v for k, v in entry.items() if k not in ("signature", "entry_hash")}
        key.public_key().verify(base64.b64decode(entry["signature"]), signing.canonical_json(body))
    assert ledger.head_hash() == entries[-1]["entry_hash"] and ledger.last_round() == 3


def test_file_is_one_canonical_json_line_per_entry(tmp_path: Path, key: signing.Ed25519PrivateKey) -> None:
    ledger = PrivacyLedger(tmp_path / "ledger.jsonl", signing_key=key)
    ledger.append(fields(1, note="ünïcode"))
    ledger.append(fields(2))
    raw = (tmp_path / "ledger.jsonl").read_bytes()
    assert raw.endswith(b"\n") and raw.count(b"\n") == 2
    for line, entry in zip(raw.splitlines(), ledger.entries(), strict=True):
        assert line == signing.canonical_json(entry)


def test_reopened_ledger_continues_the_chain(tmp_path: Path, key: signing.Ed25519PrivateKey) -> None:
    path = tmp_path / "ledger.jsonl"
    first = PrivacyLedger(path, signing_key=key)
    first.append(fields(1))
    reopened = PrivacyLedger(path, signing_key=key)
    assert reopened.last_round() == 1 and reopened.head_hash() == first.head_hash()
    entry = reopened.append(fields(2))
    assert entry["prev_hash"] == first.head_hash()
    read_only = PrivacyLedger(path)
    assert read_only.last_round() == 2 and len(read_only.entries()) == 2


def test_empty_ledger(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path / "ledger.jsonl")
    assert ledger.entries() == [] and ledger.last_round() == 0 and ledger.head_hash() == GENESIS_HASH


def test_read_only_ledger_refuses_to_write(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="read-only"):
        PrivacyLedger(tmp_path / "ledger.jsonl").append(fields(1))


@pytest.mark.parametrize(
    "bad",
    [
        fields(2),
        fields(0),
        fields(1, prev_hash="0" * 64),
        fields(1, signature="x"),
        fields(1, entry_hash="y"),
    ],
)
def test_bad_fields_are_refused_and_nothing_is_written(
    tmp_path: Path, key: signing.Ed25519PrivateKey, bad: dict[str, Any]
) -> None:
    ledger = PrivacyLedger(tmp_path / "ledger.jsonl", signing_key=key)
    with pytest.raises(DataError):
        ledger.append(bad)
    assert not (tmp_path / "ledger.jsonl").exists()


def test_infinite_epsilon_must_be_written_as_a_string(tmp_path: Path, key: signing.Ed25519PrivateKey) -> None:
    ledger = PrivacyLedger(tmp_path / "ledger.jsonl", signing_key=key)
    with pytest.raises(DataError, match="inf"):
        ledger.append(fields(1, user_epsilon={"pld": math.inf}))
    ledger.append(fields(1, user_epsilon={"pld": "inf"}))
    assert ledger.entries()[0]["user_epsilon"] == {"pld": "inf"}


def test_truncated_last_line_is_reported_not_dropped(tmp_path: Path, key: signing.Ed25519PrivateKey) -> None:
    path = tmp_path / "ledger.jsonl"
    ledger = PrivacyLedger(path, signing_key=key)
    ledger.append(fields(1))
    ledger.append(fields(2))
    path.write_bytes(path.read_bytes()[:-25])  # a crash in the middle of writing round 2
    with pytest.raises(DataError, match=r"ledger.jsonl:2: last line is incomplete"):
        read_entries(path)
    with pytest.raises(DataError, match="incomplete"):
        PrivacyLedger(path, signing_key=key)


def test_garbage_line_is_reported_with_its_number(tmp_path: Path, key: signing.Ed25519PrivateKey) -> None:
    path = tmp_path / "ledger.jsonl"
    PrivacyLedger(path, signing_key=key).append(fields(1))
    with path.open("ab") as handle:
        handle.write(b"[1, 2]\n")
    with pytest.raises(DataError, match=r":2: not a JSON object"):
        PrivacyLedger(path).entries()


def test_each_append_is_fsynced(
    tmp_path: Path, key: signing.Ed25519PrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    real_fsync = ledger_module.os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(ledger_module.os, "fsync", recording_fsync)
    ledger = PrivacyLedger(tmp_path / "ledger.jsonl", signing_key=key)
    ledger.append(fields(1))
    after_first = len(synced)
    ledger.append(fields(2))
    assert after_first >= 1 and len(synced) == after_first + 1


def test_two_step_sign_then_append_signed(tmp_path: Path, key: signing.Ed25519PrivateKey) -> None:
    ledger = PrivacyLedger(tmp_path / "ledger.jsonl", signing_key=key)
    entry = ledger.sign(fields(1))
    assert ledger.entries() == [] and ledger.last_round() == 0  # signing alone writes nothing
    restored = json.loads(json.dumps(entry))  # e.g. kept in a checkpoint
    ledger.append_signed(restored)
    assert ledger.entries() == [entry] and ledger.last_round() == 1


def test_append_signed_refuses_entries_that_do_not_continue_the_ledger(
    tmp_path: Path, key: signing.Ed25519PrivateKey
) -> None:
    ledger = PrivacyLedger(tmp_path / "ledger.jsonl", signing_key=key)
    stale = ledger.sign(fields(1))
    ledger.append(fields(1))
    tampered = ledger.sign(fields(2))
    tampered["sample_rate"] = 0.5
    rehashed = {**tampered, "entry_hash": independent_hash(tampered)}
    foreign = PrivacyLedger(tmp_path / "other.jsonl", signing_key=signing.generate_private_key()).sign(
        fields(1)
    )
    for bad in (stale, tampered, rehashed, foreign):
        with pytest.raises(DataError):
            ledger.append_signed(bad)
    assert len(ledger.entries()) == 1
