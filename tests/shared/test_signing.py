"""Ed25519 signing: RFC 8032 golden vector, tamper and wrong-key tests, key files, canonical JSON."""

from __future__ import annotations

import base64
import hashlib
import json
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from shared import signing
from shared.errors import ConfigError, DataError, SignatureError

# RFC 8032, section 7.1, TEST 1 (empty message)
RFC_SECRET = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC_PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
RFC_SIGNATURE = bytes.fromhex(
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
)


def test_rfc8032_vector_and_key_id() -> None:
    key = Ed25519PrivateKey.from_private_bytes(RFC_SECRET)
    assert base64.b64decode(signing.sign(key, b"")) == RFC_SIGNATURE
    signing.verify(key.public_key(), b"", base64.b64encode(RFC_SIGNATURE).decode())
    assert signing.key_id(key.public_key()) == hashlib.sha256(RFC_PUBLIC).hexdigest()[:16]


def test_sign_verify_round_trip_and_every_kind_of_tampering() -> None:
    key = signing.generate_private_key()
    data = b"round 7: epsilon 1.25"
    signature = signing.sign(key, data)
    signing.verify(key.public_key(), data, signature)
    raw = bytearray(base64.b64decode(signature))
    raw[5] ^= 0x01
    bad_signatures = [base64.b64encode(bytes(raw)).decode(), "not base64!", "", signature[:-4]]
    for bad in bad_signatures:
        with pytest.raises(SignatureError):
            signing.verify(key.public_key(), data, bad)
    with pytest.raises(SignatureError):
        signing.verify(key.public_key(), b"round 7: epsilon 1.26", signature)
    with pytest.raises(SignatureError):
        signing.verify(signing.generate_private_key().public_key(), data, signature)


@settings(max_examples=30, deadline=None)
@given(data=st.binary(min_size=1, max_size=200), position=st.integers(0, 10_000), flip=st.integers(1, 255))
def test_any_flipped_byte_in_the_data_is_caught(data: bytes, position: int, flip: int) -> None:
    key = Ed25519PrivateKey.from_private_bytes(RFC_SECRET)
    signature = signing.sign(key, data)
    tampered = bytearray(data)
    tampered[position % len(data)] ^= flip
    with pytest.raises(SignatureError):
        signing.verify(key.public_key(), bytes(tampered), signature)


def test_key_files_round_trip_with_private_key_readable_by_owner_only(tmp_path: Path) -> None:
    key = signing.generate_private_key()
    signing.save_private_key(key, tmp_path / "k.pem")
    signing.save_public_key(key.public_key(), tmp_path / "k.pub.pem")
    assert stat.S_IMODE((tmp_path / "k.pem").stat().st_mode) == 0o600
    loaded = signing.load_private_key(tmp_path / "k.pem")
    public = signing.load_public_key(tmp_path / "k.pub.pem")
    assert signing.key_id(public) == signing.key_id(key.public_key()) == signing.key_id(loaded.public_key())
    signing.verify(public, b"x", signing.sign(loaded, b"x"))
    assert b"PRIVATE" not in (tmp_path / "k.pub.pem").read_bytes()


def test_existing_key_files_are_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    path.write_text("keep me")
    with pytest.raises(ConfigError, match="already exists"):
        signing.save_private_key(signing.generate_private_key(), path)
    with pytest.raises(ConfigError, match="already exists"):
        signing.save_public_key(signing.generate_private_key().public_key(), path)
    assert path.read_text() == "keep me"


def test_missing_and_bad_key_files_give_clear_chained_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read key file"):
        signing.load_public_key(tmp_path / "missing.pem")
    with pytest.raises(ConfigError):
        signing.load_private_key(tmp_path / "missing.pem")
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")
    for load in (signing.load_public_key, signing.load_private_key):
        with pytest.raises(SignatureError) as caught:
            load(garbage)
        assert caught.value.__cause__ is not None


def test_keys_of_another_algorithm_are_refused(tmp_path: Path) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    private_pem = other.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = other.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "ec.pem").write_bytes(private_pem)
    (tmp_path / "ec.pub.pem").write_bytes(public_pem)
    with pytest.raises(SignatureError, match="not an Ed25519 key"):
        signing.load_private_key(tmp_path / "ec.pem")
    with pytest.raises(SignatureError, match="not an Ed25519 key"):
        signing.load_public_key(tmp_path / "ec.pub.pem")


def test_canonical_json_bytes() -> None:
    value = {"b": [1, 2.5, "é"], "a": {"y": None, "x": True}, "eps": "inf"}
    expected = '{"a":{"x":true,"y":null},"b":[1,2.5,"é"],"eps":"inf"}'.encode()
    assert signing.canonical_json(value) == expected
    for bad in (float("inf"), float("nan"), {"x": object()}):
        with pytest.raises(DataError):
            signing.canonical_json(bad)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)


@settings(max_examples=100, deadline=None)
@given(value=json_values)
@pytest.mark.integration
def test_canonical_json_round_trips_and_is_stable(value: Any) -> None:
    encoded = signing.canonical_json(value)
    assert json.loads(encoded) == value
    assert signing.canonical_json(json.loads(encoded)) == encoded
