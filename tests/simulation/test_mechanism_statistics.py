"""The mechanism as it runs, measured (issue 16, part 1): a short real Flower simulation of the real ServerApp
(Coordinator, aggregator, server optimiser) and the real ClientApp (node training and clipping), with
updates known to be ~0, so what the server releases each round is its noise alone.

- Local learning rate 1e-30: every device's update is 1e-30 * its gradient (a step of the real training
  code, not a test path), some 27 orders of magnitude below the noise, so each round's released mean update
  is N(0, (z C / q N)^2) per coordinate to far better than float32 precision.
- Server optimiser FedAvg (`sgd`) with learning rate 1: each round's parameter change is the released mean
  update (times the public update scale of the group, divided out below).
- The parameters are read after every round through the ServerApp's evaluator hook (called with the
  global parameters at round 0, after every round with eval_every = 1, and once more at the end).

Checks, each with a tolerance from the statistic's distribution (false-alarm rate 1e-6, two-sided):
- sum over rounds r and coordinates j of (delta_rj / sigma)^2, sigma = z C / (q N), is chi-square with
  R * d degrees of freedom (R d ~ 680,000 here: the ratio of the measured to the expected variance must
  lie within [0.9916, 1.0084]). Seen failing: no noise (a clear sum passed to the aggregator as already
  noised: ratio ~1e-61) and a divisor of the realised count instead of q N (ratio 1.076);
- the realised cohorts, counted by the devices themselves (their receipts) and by the ledger, vary like
  Binomial(N, q): their sample variance s^2 satisfies (R - 1) s^2 / (N q (1 - q)) ~ chi-square(R - 1) (the
  normal-theory interval; a binomial's excess kurtosis (1 - 6 q (1 - q)) / (N q (1 - q)) = -0.05 < 0 here
  makes the true spread of s^2 slightly narrower, so the interval is conservative); a fixed-size cohort has
  s^2 = 0 and fails it.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from federated_toy import read_jsonl, tiny_config
from flwr.simulation import run_simulation
from scipy import stats

from client.client_app import make_client_app
from client.device.receipts import ReceiptStore
from server.audit.verify import verify_ledger
from server.server_app import make_server_app
from shared.model import TwoTower
from shared.model.params import ParamLayout, scale_vector
from shared.run_folder import RunFolder
from shared.signing import load_public_key
from simulation.federated import backend_config

pytestmark = pytest.mark.integration

ROUNDS, Z, CLIP, RATE = 30, 1.0, 0.5, 0.5
ALPHA = 1e-6  # two-sided false-alarm rate of each statistical check


def chi2_interval(dof: int) -> tuple[float, float]:
    low, high = stats.chi2.ppf([ALPHA / 2, 1 - ALPHA / 2], dof)
    return float(low), float(high)


def run_known_updates(tmp_path: Path, cache: Path) -> tuple[Any, list[np.ndarray], np.ndarray]:
    """Run the tiny shop with updates ~0; (config, the parameters after rounds 0..R and at the end, the
    per-coordinate update scale)."""
    config = tiny_config(
        tmp_path,
        cache,
        federated__rounds=str(ROUNDS),
        federated__sample_rate=str(RATE),
        federated__local_learning_rate="1e-30",
        federated__server_optimizer="sgd",
        federated__server_learning_rate="1",
        federated__eval_every="1",
        federated__receipts_dir=str(tmp_path / "devices"),
        privacy__mode="central",
        privacy__noise_multiplier=str(Z),
        privacy__clip_norm=str(CLIP),
        privacy__target_epsilon="1000",
    )
    seen: list[np.ndarray] = []
    scales: list[np.ndarray] = []

    def evaluator(model: TwoTower, layout: ParamLayout) -> Any:
        scales.append(scale_vector(layout, config.federated.update_scales))

        def record(params: np.ndarray) -> dict[str, float]:
            seen.append(params.astype(np.float64))
            return {}

        return record

    server_app = make_server_app(config, evaluator=evaluator, progress=False)
    nodes = config.federated.nodes
    run_simulation(
        server_app, make_client_app(config), num_supernodes=nodes, backend_config=backend_config(config)
    )
    return config, seen, scales[0].astype(np.float64)


def receipt_rounds(devices: Path, run_id: str) -> Counter[int]:
    """How many devices hold a receipt for each round of the run: the cohorts as the devices saw them."""
    counts: Counter[int] = Counter()
    for folder in devices.glob("device-*"):
        store = ReceiptStore(folder)
        try:
            counts.update(r.round for r in store.receipts() if r.run_id == run_id)
        finally:
            store.close()
    return counts


def test_released_noise_and_cohorts_have_the_mechanisms_distribution(tmp_path: Path) -> None:
    config, seen, scale = run_known_updates(tmp_path, tmp_path / "encoder-cache")
    folder = RunFolder(config.federated.run_dir)
    entries = read_jsonl(folder.ledger)
    assert [e["round"] for e in entries] == list(range(1, ROUNDS + 1))
    population = int(entries[0]["population"])
    expected = RATE * population

    # the released aggregate: per-coordinate variance (z C / q N)^2
    assert len(seen) == ROUNDS + 2  # round 0, each round, the final evaluation
    steps = np.diff(np.stack(seen[: ROUNDS + 1]), axis=0) / scale  # (R, d): the released mean updates
    sigma = Z * CLIP / expected
    statistic = float(np.sum((steps / sigma) ** 2))
    low, high = chi2_interval(steps.size)
    variance = statistic / steps.size * sigma**2
    assert low < statistic < high, (
        f"released per-coordinate variance {variance:.4g}, expected {sigma**2:.4g} "
        f"(chi-square({steps.size}) interval [{low / steps.size:.4f}, {high / steps.size:.4f}] of the ratio)"
    )
    assert abs(float(np.mean(steps))) < 6 * sigma / np.sqrt(steps.size)  # centred

    # the realised cohorts: Binomial(N, q), as counted by the devices and as the ledger records them
    by_device = receipt_rounds(tmp_path / "devices", entries[0]["run_id"])
    cohorts = np.array([e["realised_cohort"] for e in entries], dtype=np.float64)
    assert [by_device[r] for r in range(1, ROUNDS + 1)] == cohorts.astype(int).tolist()
    binomial_variance = population * RATE * (1 - RATE)
    low, high = chi2_interval(ROUNDS - 1)
    spread = (ROUNDS - 1) * float(np.var(cohorts, ddof=1)) / binomial_variance
    assert len(set(cohorts.tolist())) > 1, "the same cohort size every round: not Poisson sampling"
    assert low < spread < high, (
        f"cohort sizes {cohorts.astype(int).tolist()}: sample variance {np.var(cohorts, ddof=1):.3g}, "
        f"Binomial({population}, {RATE}) has {binomial_variance:.3g}"
    )
    assert abs(cohorts.mean() - expected) < 5 * np.sqrt(binomial_variance / ROUNDS)

    # what the ledger records is what was measured above
    for entry in entries:
        assert entry["sampling"] == "poisson" and entry["sample_rate"] == RATE
        assert entry["noise_std"] == pytest.approx(Z * CLIP) and entry["divisor"] == pytest.approx(expected)
    report = verify_ledger(folder.ledger, load_public_key(folder.public_key))
    assert report.ok, report.problems
