"""Real Flower simulation runs in the other privacy modes: local DP, and record-level DP-SGD on the device."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from federated_toy import read_jsonl, tiny_config
from opacus.accountants import RDPAccountant

from server.audit.verify import verify_ledger
from shared.data.source import configured_split
from shared.run_folder import RunFolder
from shared.signing import load_public_key
from simulation.federated import run_federated

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("encoder-cache")


def test_local_mode_noises_on_the_devices_and_says_so_in_the_ledger(tmp_path: Path, cache: Path) -> None:
    config = tiny_config(
        tmp_path, cache, federated__rounds="2", privacy__mode="local", privacy__target_epsilon="20"
    )
    run_federated(config, configured_split(config.data), progress=False)
    folder = RunFolder(config.federated.run_dir)
    entries = read_jsonl(folder.ledger)
    assert [e["round"] for e in entries] == [1, 2]
    for entry in entries:
        assert (
            entry["mode"] == "local" and entry["noise_std"] == 0.0 and entry["update_noise_multiplier"] == 0
        )
        assert entry["local_noise_multiplier"] == entry["noise_multiplier"] > 0  # the accounted z, calibrated
        assert "record_epsilon" not in entry  # no record-level DP-SGD in this run
    assert float(entries[-1]["user_epsilon"]["pld"]) <= 20
    report = verify_ledger(folder.ledger, load_public_key(folder.public_key))
    assert report.ok, report.problems
    rows = read_jsonl(folder.metrics)[1:]  # after round 0, the starting point
    assert not any("record_epsilon" in row for row in rows)
    for row, entry in zip(rows, entries, strict=True):  # the devices did add the noise: without it, the
        noiseless = entry["clip_norm"] * entry["aggregated_users"] / entry["divisor"]
        assert row["update_norm"] > 3 * noiseless  # mean update is within this


def record_epsilon_after(steps: int, *, noise_multiplier: float, delta: float) -> float:
    """Opacus RDP after `steps` full-batch DP-SGD steps (every device here has <= 8 records: q = 1)."""
    accountant = RDPAccountant()
    accountant.history = [(noise_multiplier, 1.0, steps)]
    return float(accountant.get_epsilon(delta=delta))


def test_record_level_epsilon_persists_on_each_device_across_rounds(tmp_path: Path, cache: Path) -> None:
    config = tiny_config(
        tmp_path,
        cache,
        data__synthetic__n_users="12",
        federated__devices_per_node="one",
        federated__rounds="3",
        privacy__record_level="true",
        privacy__record_noise_multiplier="1.0",
        federated__update_scales="",
        privacy__target_epsilon="100",
    )
    result = run_federated(config, configured_split(config.data), progress=False)
    folder = RunFolder(config.federated.run_dir)
    entries = read_jsonl(folder.ledger)
    assert [e["round"] for e in entries] == [1, 2, 3]
    assert result.summary["record_epsilon"] == entries[-1]["record_epsilon"]
    assert all(
        e["record_delta"] == 1e-5 and e["record_unit_of_privacy"] == "training_example" for e in entries
    )
    epsilons = [float(e["record_epsilon"]) for e in entries]
    assert 0 < epsilons[0] < epsilons[-1] and epsilons == sorted(epsilons)  # it grows: the state persists
    for round_number, epsilon in enumerate(epsilons, start=1):  # some device took part in k <= r rounds
        possible = [
            record_epsilon_after(k, noise_multiplier=1.0, delta=1e-5) for k in range(1, round_number + 1)
        ]
        assert min(abs(epsilon - p) for p in possible) < 1e-9 * epsilon
    assert [row.get("record_epsilon") for row in read_jsonl(folder.metrics)][1:] == epsilons
    report = verify_ledger(folder.ledger, load_public_key(folder.public_key))
    assert report.ok, report.problems


def test_adaptive_clipping_moves_the_clip_norm_and_the_auditor_agrees(tmp_path: Path, cache: Path) -> None:
    # C starts far above every update norm (all unclipped): the norm must shrink round after round.
    config = tiny_config(
        tmp_path,
        cache,
        federated__rounds="3",
        federated__local_learning_rate="0.01",
        privacy__clip_norm="50",
        privacy__adaptive_clipping="true",
        privacy__clip_count_stddev="1.0",
        privacy__noise_multiplier="1.0",
        privacy__target_epsilon="100",
    )
    run_federated(config, configured_split(config.data), progress=False)
    folder = RunFolder(config.federated.run_dir)
    entries = read_jsonl(folder.ledger)
    norms = [float(e["clip_norm"]) for e in entries]
    assert norms[0] == 50 and norms[0] > norms[1] > norms[2]
    for entry, following in itertools.pairwise(entries):
        assert entry["next_clip_norm"] == following["clip_norm"]
    for entry in entries:  # the update gets less noise than z: the rest of the budget went to the count
        z, z_update = float(entry["noise_multiplier"]), float(entry["update_noise_multiplier"])
        assert z == 1.0 and z < z_update and entry["count_noise_std"] == 1.0
        assert entry["noise_std"] == pytest.approx(z_update * float(entry["clip_norm"]))
    report = verify_ledger(folder.ledger, load_public_key(folder.public_key))
    assert report.ok, report.problems
