"""A signed ledger with training rounds and trending releases, written the way the ServerApp writes them."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import numpy as np
from ledger_toy import DELTA, KEY, poisson_cohort, round_fields

from server.ledger import PrivacyLedger
from shared import signing
from shared.privacy.accounting import RoundEvent, UserLevelAccountant, json_epsilon

Q_T, Z_T, K = 1.0, 4.0, 5


def trending_fields(
    after: int, acc: UserLevelAccountant, folder: Path, *, z: float = Z_T, q_t: float = Q_T
) -> dict[str, Any]:
    counts = np.arange(7, dtype=np.float32) * (after + 1)
    cohort = poisson_cohort(
        after, q_t, stream=1
    )  # its own Poisson sample: Binomial(N, q_t), everyone at q_t = 1
    name = f"trending/after-round-{after:05d}.npy"
    (folder / "trending").mkdir(parents=True, exist_ok=True)
    np.save(folder / name, counts)
    return {
        "kind": "trending_counts", "mechanism": "poisson_subsampled_gaussian_sum", "run_id": "run-a",
        "after_round": after, "time_utc": "2026-11-01T00:00:00+00:00", "mode": "central",
        "unit_of_privacy": "user", "sampling": "poisson", "sample_rate": q_t, "population": 2000,
        "expected_cohort": q_t * 2000, "realised_cohort": cohort, "aggregated_users": cohort,
        "rejected_updates": 0, "max_items": K, "item_weight": 1 / math.sqrt(K), "sensitivity": 1.0,
        "window_days": 7.0, "as_of_s": 1_700_000_000, "n_items": 7, "noise_multiplier": z,
        "noise_std": z, "count_noise_std": z * math.sqrt(K) / q_t,
        "estimator": "(sum + noise) * sqrt(max_items) / sample_rate", "counts_file": name,
        "counts_sha256": hashlib.sha256((folder / name).read_bytes()).hexdigest(), "delta": DELTA,
        "user_epsilon": {n: json_epsilon(v) for n, v in acc.spent().items()},
        "accountant_versions": UserLevelAccountant.versions(), "noise_rng": "test",
    }  # fmt: skip


def write_trending_run(
    folder: Path, *, rounds: int = 3, every: int = 1, q: float = 0.05, z: float = 1.0, q_t: float = Q_T
) -> UserLevelAccountant:
    """Training rounds with a trending release (users Poisson-sampled with rate `q_t`) after every `every`
    rounds; returns the accountant."""
    folder.mkdir(parents=True, exist_ok=True)
    acc, ledger = UserLevelAccountant(delta=DELTA), PrivacyLedger(folder / "ledger.jsonl", signing_key=KEY)
    for r in range(1, rounds + 1):
        acc.record(RoundEvent(sample_rate=q, noise_multiplier=z))
        ledger.append(round_fields(r, acc, q=q, z=z, mode="central"))
        if r % every == 0:
            acc.record(RoundEvent(sample_rate=q_t, noise_multiplier=Z_T))
            ledger.append(trending_fields(r, acc, folder, q_t=q_t))
    signing.save_public_key(KEY.public_key(), folder / "ledger_public_key.pem")
    return acc
