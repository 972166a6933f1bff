"""A capped run in a real Flower simulation: devices refuse past the cap, accounting takes min(bounds)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from federated_toy import read_jsonl, tiny_config

from client.device.receipts import ReceiptStore
from server.audit.verify import verify_ledger
from server.releases.release_builder import load_run
from server.releases.release_store import ReleaseStore
from server.rounds.privacy_plan import derived_seed
from server.strategy import poisson_sample
from shared.config import FedhomeConfig
from shared.data.source import configured_split
from shared.privacy.accounting import RoundEvent, UserLevelAccountant
from shared.privacy.capped_accounting import CappedAccountant
from shared.run_folder import RunFolder
from shared.signing import load_private_key, load_public_key
from simulation.federated import run_federated

pytestmark = pytest.mark.integration

CAP, ROUNDS, USERS, Q, Z = 1, 4, 40, 0.5, 1.0


def expected_participation(seed: int) -> tuple[list[int], dict[int, list[int]]]:
    """From the run's fixed sampling seed: refused users per round, and the rounds each user trains in."""
    counts, refused = np.zeros(USERS, np.int64), []
    rounds: dict[int, list[int]] = {u: [] for u in range(USERS)}
    for r in range(1, ROUNDS + 1):
        cohort = poisson_sample(USERS, sample_rate=Q, rng=np.random.default_rng(derived_seed(seed, r, 0)))
        admitted = cohort[counts[cohort] < CAP]
        refused.append(int(cohort.size - admitted.size))
        counts[admitted] += 1
        for user in admitted:
            rounds[int(user)].append(r)
    return refused, rounds


def capped_config(tmp_path: Path, **extra: str) -> FedhomeConfig:
    """The toy run with a participation cap of CAP, noise Z and a budget that never binds."""
    return tiny_config(
        tmp_path,
        tmp_path / "cache",
        federated__rounds=str(ROUNDS),
        federated__eval_every="0",
        privacy__participation_cap=str(CAP),
        privacy__noise_multiplier=str(Z),
        privacy__target_epsilon="100",
        **extra,
    )


def test_a_capped_run_keeps_every_device_within_its_cap_and_accounts_with_the_smaller_bound(
    tmp_path: Path,
) -> None:
    devices = tmp_path / "devices"
    config = capped_config(tmp_path, federated__receipts_dir=str(devices))
    result = run_federated(config, configured_split(config.data), progress=False)
    assert result.summary["participation_cap"] == CAP and result.summary["epsilon_bound"] == "cap"
    folder = RunFolder(config.federated.run_dir)
    entries = read_jsonl(folder.ledger)
    refused, rounds = expected_participation(config.privacy.seed)
    assert [e["refused_users"] for e in entries] == refused and sum(refused) > 0
    assert all(e["aggregated_users"] + e["refused_users"] == e["realised_cohort"] for e in entries)
    assert all(e["participation_cap"] == CAP and e["cap_segment"] == 1 for e in entries)
    run_id = str(entries[0]["run_id"])
    for user in range(USERS):  # each virtual device's own receipts: no device past its cap
        store = ReceiptStore(devices / f"device-{user}")
        assert [r.round for r in store.receipts() if r.run_id == run_id] == rounds[user]
        assert store.count(run_id) <= CAP
        store.close()

    capped = CappedAccountant(delta=float(entries[0]["delta"]), participation_cap=CAP)
    plain = UserLevelAccountant(delta=float(entries[0]["delta"]))
    for _ in range(ROUNDS):
        capped.record(RoundEvent(sample_rate=Q, noise_multiplier=Z, capped=True))
        plain.record(RoundEvent(sample_rate=Q, noise_multiplier=Z))
    last = entries[-1]
    assert last["epsilon_bound"] == "cap"  # one Gaussian round is cheaper than 4 rounds at q = 0.5
    assert last["user_epsilon"]["pld"] == pytest.approx(capped.spent()["pld"], rel=1e-9)
    assert last["user_epsilon"]["pld"] < plain.spent()["pld"]
    assert last["user_epsilon_poisson"]["pld"] == pytest.approx(plain.spent()["pld"], rel=1e-9)
    report = verify_ledger(folder.ledger, load_public_key(folder.public_key))
    assert report.ok, report.problems
    assert report.participation_cap == CAP and report.recomputed_cap_epsilon is not None

    key = load_private_key(tmp_path / f".{folder.root.name}.ledger_signing_key.pem")
    model, catalogue, source = load_run(folder.root, key.public_key())
    releases = ReleaseStore(tmp_path / "releases")
    version = releases.publish(model, catalogue, source, key)
    manifest = json.loads((releases.folder(version) / "manifest.json").read_text())
    trained = next(u for u in range(USERS) if rounds[u])
    receipts = ReceiptStore(devices / f"device-{trained}")
    assert receipts.bind_release(manifest) == 1
    assert [r.release_version for r in receipts.receipts()] == [version]
    assert manifest["privacy"]["participation_cap"] == CAP


def test_without_device_folders_the_counts_live_in_flower_node_state_across_rounds(tmp_path: Path) -> None:
    """The default path (no receipts): refusals need each node's counts to survive between rounds in
    Flower's context.state; with a fresh state every round nobody would ever refuse."""
    config = capped_config(tmp_path)
    run_federated(config, configured_split(config.data), progress=False)
    entries = read_jsonl(RunFolder(config.federated.run_dir).ledger)
    refused, _ = expected_participation(config.privacy.seed)
    assert [e["refused_users"] for e in entries] == refused and sum(refused) > 0
