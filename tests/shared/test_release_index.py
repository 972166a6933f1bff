"""The signed release index: signature, rollback (serial) and freeze (expiry) checks."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.errors import DataError, SignatureError
from shared.release_index import delta_head, sign_index, utc_seconds, utc_text, verify_index
from shared.signing import canonical_json, generate_private_key, key_id, sign

KEY = generate_private_key()
NOW = 1_800_000_000.0
RELEASES = [
    {"version": 1, "withdrawn": False, "reason": ""},
    {"version": 2, "withdrawn": True, "reason": "bad"},
]


def index(serial: int = 3, expires_s: float = NOW + 3600) -> dict[str, Any]:
    return sign_index(copy.deepcopy(RELEASES), KEY, serial=serial, expires_s=expires_s)


def test_a_fresh_index_verifies_and_extra_fields_are_dropped() -> None:
    served = {**index(), "latest": 1}  # the service adds `latest`, which is not signed
    verified = verify_index(served, KEY.public_key(), now_s=NOW, min_serial=3)
    assert verified["releases"] == RELEASES and verified["serial"] == 3 and "latest" not in verified


@pytest.mark.parametrize(
    "change",
    [
        lambda i: i.update(serial=i["serial"] + 1),  # a replay dressed up as newer
        lambda i: i.update(expires_utc="2099-01-01T00:00:00Z"),  # an expired index extended
        lambda i: i["releases"][1].update(withdrawn=False),  # a withdrawal hidden
        lambda i: i.update(signature=i["signature"][:-4] + "AAA="),
    ],
)
def test_any_change_to_a_signed_field_is_refused(change: Any) -> None:
    altered = index()
    change(altered)
    with pytest.raises(SignatureError):
        verify_index(altered, KEY.public_key(), now_s=NOW, min_serial=0)


def test_another_key_is_refused() -> None:
    other = generate_private_key().public_key()
    with pytest.raises(SignatureError, match="pinned key"):
        verify_index(index(), other, now_s=NOW, min_serial=0)


def test_an_older_serial_than_one_accepted_is_a_replay() -> None:
    with pytest.raises(SignatureError, match="replayed"):
        verify_index(index(serial=2), KEY.public_key(), now_s=NOW, min_serial=3)


def test_an_expired_index_is_refused() -> None:
    stale = index(expires_s=NOW - 1)
    with pytest.raises(DataError, match="expired"):
        verify_index(stale, KEY.public_key(), now_s=NOW, min_serial=0)
    with pytest.raises(DataError, match="expired"):  # the expiry instant itself is already too late
        verify_index(index(expires_s=NOW), KEY.public_key(), now_s=NOW, min_serial=0)


def test_an_index_of_the_first_format_is_refused_even_when_its_signature_holds() -> None:
    """The first index format had no serial and no expiry: it verifies, but a device cannot tell a replay."""
    old: dict[str, Any] = {"releases": RELEASES, "key_id": key_id(KEY.public_key())}
    old["signature"] = sign(KEY, canonical_json(old))
    with pytest.raises(DataError, match="refresh-index"):
        verify_index(old, KEY.public_key(), now_s=NOW, min_serial=0)


@pytest.mark.parametrize("serial", [0, -1, 1.5, True])
def test_the_serial_must_be_a_positive_int(serial: Any) -> None:
    with pytest.raises(ValueError):
        sign_index(RELEASES, KEY, serial=serial, expires_s=NOW)


@pytest.mark.parametrize("served", [[], "index", None])
def test_something_else_than_an_object_is_a_data_error(served: Any) -> None:
    with pytest.raises(DataError):
        verify_index(served, KEY.public_key(), now_s=NOW, min_serial=0)


@given(st.integers(min_value=0, max_value=4_000_000_000))
def test_utc_text_round_trips_whole_seconds(seconds: int) -> None:
    assert utc_seconds(utc_text(seconds)) == seconds


@pytest.mark.parametrize("text", ["2026-01-31 12:00:00", "2026-13-01T00:00:00Z", "", "tomorrow"])
def test_a_malformed_expiry_is_a_data_error(text: str) -> None:
    with pytest.raises(DataError):
        utc_seconds(text)


def test_the_delta_head_is_signed_with_the_index_and_read_back() -> None:
    releases = [*copy.deepcopy(RELEASES), {"version": 3, "withdrawn": False, "reason": ""}]
    releases[0]["delta"] = {"sequence": 4, "manifest_sha256": "ab" * 32}
    signed = sign_index(releases, KEY, serial=5, expires_s=NOW + 3600)
    verified = verify_index(signed, KEY.public_key(), now_s=NOW, min_serial=5)
    assert delta_head(verified, 1) == (4, "ab" * 32) and delta_head(verified, 3) is None
    signed["releases"][0]["delta"]["sequence"] = 5  # a mirror pointing devices at another delta
    with pytest.raises(SignatureError):
        verify_index(signed, KEY.public_key(), now_s=NOW, min_serial=5)
    with pytest.raises(DataError, match="not in the release index"):
        delta_head(verified, 9)


@pytest.mark.parametrize(
    "head",
    [
        {"sequence": 0, "manifest_sha256": "ab" * 32},
        {"sequence": "4", "manifest_sha256": "ab" * 32},
        {"sequence": True, "manifest_sha256": "ab" * 32},
        {"sequence": 4, "manifest_sha256": "ab"},
        {"sequence": 4},
        [4, "ab" * 32],
    ],
)
def test_a_malformed_delta_head_is_a_data_error(head: Any) -> None:
    releases = copy.deepcopy(RELEASES)
    releases[0]["delta"] = head
    with pytest.raises(DataError, match="delta head"):
        delta_head({"releases": releases}, 1)
