"""A signed ledger written the way the ServerApp writes it, for the auditor's tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from server.ledger import PrivacyLedger
from server.ledger_entries import Mode, RoundEntry
from shared import signing
from shared.privacy.accounting import RoundEvent, UserLevelAccountant, json_epsilon

DELTA = 1e-5
KEY = signing.generate_private_key()
Tweak = Callable[[int, dict[str, Any]], None]


def round_fields(r: int, acc: UserLevelAccountant, *, q: float, z: float, mode: Mode) -> dict[str, Any]:
    """A training round's entry with every field of the current schema (server/ledger_entries.py)."""
    spent = acc.spent()
    return RoundEntry(
        run_id="run-a", round=r, time_utc="2026-11-01T00:00:00+00:00", mode=mode, unit_of_privacy="user",
        sampling="poisson", sample_rate=q, population=2000, expected_cohort=q * 2000,
        realised_cohort=97 + r, aggregated_users=97 + r, rejected_updates=0, divisor=q * 2000, clip_norm=0.5,
        next_clip_norm=0.5, noise_multiplier=z, update_noise_multiplier=z, noise_std=z * 0.5,
        count_noise_std=0.0, local_noise_multiplier=z if mode == "local" else 0.0,
        noise_rng="numpy PCG64DXSM, fixed seed 3 (deterministic: NOT private)",
        model_sha256_before="a" * 64, model_sha256_after="b" * 64, delta=DELTA,
        user_epsilon={name: json_epsilon(value) for name, value in spent.items()},
        accountant_versions=UserLevelAccountant.versions(), refused_users=0,
    ).to_fields()  # fmt: skip


def write_run(folder: Path, *, rounds: int = 4, q: float = 0.05, z: float = 1.0, mode: Mode = "central",
              tweak: Tweak | None = None) -> Path:  # fmt: skip
    """A run folder written the way the ServerApp writes it (shared/privacy accountant + PrivacyLedger)."""
    folder.mkdir(parents=True, exist_ok=True)
    acc, ledger = UserLevelAccountant(delta=DELTA), PrivacyLedger(folder / "ledger.jsonl", signing_key=KEY)
    for r in range(1, rounds + 1):
        acc.record(RoundEvent(sample_rate=q, noise_multiplier=z))
        fields = round_fields(r, acc, q=q, z=z, mode=mode)
        if tweak is not None:
            tweak(r, fields)
        ledger.append(fields)
    if not (folder / "ledger_public_key.pem").exists():
        signing.save_public_key(KEY.public_key(), folder / "ledger_public_key.pem")
    return folder
