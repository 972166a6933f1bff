"""A signed ledger written the way the ServerApp writes it, for the auditor's tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from server.ledger import PrivacyLedger
from server.ledger_entries import Mode, RoundEntry
from shared import signing
from shared.privacy.accounting import RoundEvent, UserLevelAccountant, json_epsilon

DELTA = 1e-5
POPULATION = 2000
KEY = signing.generate_private_key()
Tweak = Callable[[int, dict[str, Any]], None]


def poisson_cohort(r: int, q: float, *, stream: int = 0, population: int = POPULATION) -> int:
    """Round r's realised cohort: a Binomial(N, q) draw, as Poisson sampling gives (seeded by the stream,
    the round and the rate, so a ledger is the same each time it is written)."""
    return int(np.random.default_rng([20261101, stream, r, round(q * 1e9)]).binomial(population, q))


def round_fields(
    r: int, acc: UserLevelAccountant, *, q: float, z: float, mode: Mode, delta: float = DELTA
) -> dict[str, Any]:
    """A training round's entry with every field of the current schema (server/ledger_entries.py); in mode
    local the devices noise their updates (local_noise_multiplier z) and the server adds none."""
    spent, cohort, central = acc.spent(), poisson_cohort(r, q), mode == "central"
    return RoundEntry(
        run_id="run-a", round=r, time_utc="2026-11-01T00:00:00+00:00", mode=mode, unit_of_privacy="user",
        sampling="poisson", sample_rate=q, population=POPULATION, expected_cohort=q * POPULATION,
        realised_cohort=cohort, aggregated_users=cohort, rejected_updates=0, divisor=q * POPULATION,
        clip_norm=0.5, next_clip_norm=0.5, noise_multiplier=z, update_noise_multiplier=z if central else 0.0,
        noise_std=z * 0.5 if central else 0.0, count_noise_std=0.0,
        local_noise_multiplier=z if mode == "local" else 0.0,
        noise_rng="numpy PCG64DXSM, fixed seed 3 (deterministic: NOT private)",
        model_sha256_before="a" * 64, model_sha256_after="b" * 64, delta=delta,
        user_epsilon={name: json_epsilon(value) for name, value in spent.items()},
        accountant_versions=UserLevelAccountant.versions(), refused_users=0,
    ).to_fields()  # fmt: skip


def write_run(folder: Path, *, rounds: int = 4, q: float = 0.05, z: float = 1.0, mode: Mode = "central",
              tweak: Tweak | None = None, delta: float = DELTA) -> Path:  # fmt: skip
    """A run folder written the way the ServerApp writes it (shared/privacy accountant + PrivacyLedger)."""
    folder.mkdir(parents=True, exist_ok=True)
    acc, ledger = UserLevelAccountant(delta=delta), PrivacyLedger(folder / "ledger.jsonl", signing_key=KEY)
    for r in range(1, rounds + 1):
        acc.record(RoundEvent(sample_rate=q, noise_multiplier=z))
        fields = round_fields(r, acc, q=q, z=z, mode=mode, delta=delta)
        if tweak is not None:
            tweak(r, fields)
        ledger.append(fields)
    if not (folder / "ledger_public_key.pem").exists():
        signing.save_public_key(KEY.public_key(), folder / "ledger_public_key.pem")
    return folder
