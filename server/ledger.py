"""The privacy ledger: one signed, hash-chained JSON line per federated round (ledger.jsonl in a run folder).

Each entry is the caller's fields plus:
- "prev_hash": the previous entry's "entry_hash" (64 zeros for the first entry), chaining the entries;
- "key_id": the id of the signing key (shared.signing.key_id);
- "signature": Ed25519 over canonical_json(entry without "signature" and "entry_hash"), base64;
- "entry_hash": sha256 hex of canonical_json(entry with "signature", without "entry_hash").
Removing, reordering, inserting or editing an entry breaks the chain or a signature; `fedhome-audit verify`
checks all of it with the public key alone.

Fields the ServerApp writes each round (typed as server/ledger_entries.py: RoundEntry, with "schema"; the
ledger itself enforces only "round" = previous round + 1):
run_id, round (from 1), time_utc (ISO 8601), mode ("central" | "local" | "none"), sampling ("poisson"),
sample_rate (q), population (N), expected_cohort (q*N, the divisor of the sum), realised_cohort,
rejected_updates, clip_norm (C this round), noise_multiplier (the z that was ACCOUNTED),
update_noise_multiplier (the z of the noise on the update sum; larger than the accounted z when adaptive
clipping spends part of the budget on the count), noise_std (std actually added to the sum =
update_noise_multiplier * C), count_noise_std (std of the noise on the unclipped count of adaptive clipping,
0 without it), noise_rng (GaussianNoise.source), model_sha256_before, model_sha256_after, delta,
user_epsilon {"pld": .., "rdp": ..} (spent up to and including this round; the string "inf" when there is no
noise), target_epsilon (the budget the whole run may spend, a lifetime one; absent without noise) and
planned_rounds (the training rounds it was planned over: the online loop's whole horizon),
accountant_versions. With record-level DP-SGD on the devices (privacy.record_level) also record_epsilon (the
largest record-level epsilon any device has reported so far), record_epsilon_round (the largest over this
round's devices), record_delta, record_accountant ("rdp"), record_unit_of_privacy ("record"): a guarantee for
single interactions, separate from and no substitute for the user-level one.
Never updates, interactions, user ids or keys.

Trending releases (server/trending/trending_round.py) append entries of kind "trending_counts", and the start
check (server/rounds/start_check.py) one of kind "start_check", to the same chain: no "round" (they do not
advance it) but "after_round", the training round they follow, which must be the ledger's last round. Entries
without "kind" are training rounds (every ledger written before trending); server/ledger_entries.py types
them all.

Two steps when a checkpoint must hold the entry before the ledger does: `sign(fields)` makes the next
entry without writing it, `append_signed(entry)` checks that it still continues the ledger and writes it;
`append(fields)` does both.

Durability: each entry is written with one write, then flush and fsync. A crash mid-write leaves a partial
last line; the ledger then refuses to load or append (DataError naming the line) instead of dropping it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from server.ledger_entries import is_training_round
from shared import signing
from shared.errors import DataError, SignatureError
from shared.signing import Ed25519PrivateKey, canonical_json

logger = logging.getLogger(__name__)

GENESIS_HASH = "0" * 64
RESERVED_FIELDS = ("prev_hash", "key_id", "signature", "entry_hash")


def signed_bytes(entry: dict[str, Any]) -> bytes:
    """What the signature covers: the entry without "signature" and "entry_hash"."""
    return canonical_json({k: v for k, v in entry.items() if k not in ("signature", "entry_hash")})


def entry_hash(entry: dict[str, Any]) -> str:
    """sha256 hex over the entry with its signature, without "entry_hash"."""
    return hashlib.sha256(canonical_json({k: v for k, v in entry.items() if k != "entry_hash"})).hexdigest()


def read_entries(path: Path) -> list[dict[str, Any]]:
    """All entries of a ledger file in order ([] when it does not exist); DataError on any bad line."""
    if not path.exists():
        return []
    lines = path.read_bytes().split(b"\n")
    if lines[-1] != b"":  # every complete entry ends with a newline
        raise DataError(
            "last line is incomplete (no newline): a crash mid-write?", path=str(path), line=len(lines)
        )
    return [_parse_line(line, path=path, number=n) for n, line in enumerate(lines[:-1], start=1)]


class PrivacyLedger:
    """Append-only ledger file. With `signing_key` it appends signed entries; without it, read-only."""

    def __init__(self, path: Path, *, signing_key: Ed25519PrivateKey | None = None) -> None:
        self.path = Path(path)
        self._signing_key = signing_key
        self._key_id = signing.key_id(signing_key.public_key()) if signing_key is not None else None
        existing = read_entries(self.path)  # fails closed on a damaged file
        self._head = existing[-1].get("entry_hash", GENESIS_HASH) if existing else GENESIS_HASH
        rounds = [e for e in existing if is_training_round(e)]
        self._last_round = _round_of(rounds[-1], default=len(rounds), path=self.path) if rounds else 0

    def append(self, fields: dict[str, Any]) -> dict[str, Any]:
        """Sign, chain and durably write one entry; returns it as written."""
        return self.append_signed(self.sign(fields))

    def sign(self, fields: dict[str, Any]) -> dict[str, Any]:
        """The next signed entry, NOT written yet: a caller may first store it (in a checkpoint)."""
        if self._signing_key is None or self._key_id is None:
            raise DataError("this ledger was opened read-only (no signing key)", path=str(self.path))
        self._check_fields(fields)
        entry: dict[str, Any] = {**fields, "prev_hash": self._head, "key_id": self._key_id}
        entry["signature"] = signing.sign(self._signing_key, signed_bytes(entry))
        entry["entry_hash"] = entry_hash(entry)
        return entry

    def append_signed(self, entry: dict[str, Any]) -> dict[str, Any]:
        """Durably write an entry made by `sign` (e.g. restored from a checkpoint) after checking it fits."""
        if self._signing_key is None:
            raise DataError("this ledger was opened read-only (no signing key)", path=str(self.path))
        self._check_fields({k: v for k, v in entry.items() if k not in RESERVED_FIELDS})
        if entry.get("prev_hash") != self._head or entry.get("key_id") != self._key_id:
            raise DataError("entry does not continue this ledger (prev_hash or key_id)", path=str(self.path))
        try:
            signing.verify(self._signing_key.public_key(), signed_bytes(entry), entry.get("signature", ""))
        except SignatureError as exc:
            raise DataError("entry's signature does not verify", path=str(self.path)) from exc
        if entry.get("entry_hash") != entry_hash(entry):
            raise DataError("entry_hash does not match the entry", path=str(self.path))
        self._write_line(canonical_json(entry) + b"\n")
        self._head = entry["entry_hash"]
        if is_training_round(entry):
            self._last_round = _round_of(entry, default=self._last_round + 1, path=self.path)
        logger.info("ledger: entry after round %d written (head %s)", self._last_round, self._head[:16])
        return entry

    def entries(self) -> list[dict[str, Any]]:
        """Every entry in the file, in order (DataError on a damaged line)."""
        return read_entries(self.path)

    def head_hash(self) -> str:
        """The last entry's hash (64 zeros when empty): what a release manifest pins."""
        return self._head

    def last_round(self) -> int:
        """The round number of the last entry; 0 when the ledger is empty."""
        return self._last_round

    def _check_fields(self, fields: dict[str, Any]) -> None:
        clash = [name for name in RESERVED_FIELDS if name in fields]
        if clash:
            raise DataError(f"fields {clash} are set by the ledger itself", path=str(self.path))
        if not is_training_round(fields):
            if "round" in fields or fields.get("after_round") != self._last_round:
                kind, last = fields.get("kind"), self._last_round
                raise DataError(
                    f"a {kind} entry must follow round {last} (after_round, no round)", path=str(self.path)
                )
        elif "round" in fields and fields["round"] != self._last_round + 1:
            raise DataError(
                f"round {fields['round']!r} does not follow round {self._last_round}", path=str(self.path)
            )

    def _write_line(self, line: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            written = os.write(fd, line)
            if written != len(line):
                raise DataError(f"short write ({written} of {len(line)} bytes)", path=str(self.path))
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            _fsync_directory(self.path.parent)


def _parse_line(line: bytes, *, path: Path, number: int) -> dict[str, Any]:
    try:
        value = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"not a JSON entry ({exc})", path=str(path), line=number) from exc
    if not isinstance(value, dict):
        raise DataError("not a JSON object", path=str(path), line=number)
    return value


def _round_of(entry: dict[str, Any], *, default: int, path: Path) -> int:
    value = entry.get("round", default)
    if type(value) is not int:
        raise DataError(f"round {value!r} is not a whole number", path=str(path))
    return value


def _fsync_directory(directory: Path) -> None:
    """Make the new file's name durable too (POSIX; a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
