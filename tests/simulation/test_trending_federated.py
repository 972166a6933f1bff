"""DP trending counts in a real Flower simulation, then in a signed release and on the device's homepage."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from federated_toy import read_jsonl, tiny_config

from client.device import device_cli as client_cli
from server import server_cli
from server.audit.audit_report import build_report
from server.audit.verify import verify_ledger
from shared.config import FedhomeConfig
from shared.data.source import configured_split
from shared.data.split import Split
from shared.privacy.accounting import RoundEvent, pld_epsilon
from shared.run_folder import RunFolder
from shared.signing import load_public_key
from simulation.federated import FederatedResult, run_federated

pytestmark = pytest.mark.integration

K, WINDOW_DAYS, Z_T = 4, 60.0, 0.1  # little noise: the counts must match the true ones to +-0.9


@pytest.fixture(scope="module")
def trending_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[FedhomeConfig, Split, FederatedResult]:
    tmp = tmp_path_factory.mktemp("trending")
    config = tiny_config(
        tmp,
        tmp / "cache",
        federated__rounds="2",
        federated__eval_every="0",
        privacy__target_epsilon="500",
        privacy__noise_multiplier="1.0",
        trending__every_rounds="1",
        trending__final="true",
        trending__noise_multiplier=str(Z_T),
        trending__max_items=str(K),
        trending__window_days=str(WINDOW_DAYS),
    )
    split = configured_split(config.data)
    return config, split, run_federated(config, split, progress=False)


def true_counts(split: Split, as_of: int) -> np.ndarray:
    """Users per item among each user's K most recent distinct training items in the window (plain loops,
    independent of client/trending_contribution.py)."""
    counts = np.zeros(split.n_items)
    start = as_of - WINDOW_DAYS * 86_400
    for u in range(split.train.n_users):
        rows = range(int(split.train.offsets[u]), int(split.train.offsets[u + 1]))
        latest: dict[int, int] = {}
        for r in rows:
            t, item = int(split.train.timestamps[r]), int(split.train.items[r])
            if start <= t < as_of:
                latest[item] = max(latest.get(item, t), t)
        for item in sorted(latest, key=lambda i: (-latest[i], i))[:K]:
            counts[item] += 1
    return counts


def test_the_run_makes_accounted_trending_releases(trending_run: Any) -> None:
    config, split, result = trending_run
    folder = RunFolder(config.federated.run_dir)
    entries = read_jsonl(folder.ledger)
    assert [e.get("kind") for e in entries] == [None, "trending_counts", None, "trending_counts"]
    trending = [e for e in entries if e.get("kind") == "trending_counts"]
    assert [e["after_round"] for e in trending] == [1, 2]  # the final release is the periodic one of round 2
    assert all(e["realised_cohort"] == split.full.n_users and e["noise_std"] == Z_T for e in trending)
    report = verify_ledger(folder.root, load_public_key(folder.public_key))
    assert report.ok, report.problems
    assert [row["counts_file_ok"] for row in report.trending] == [True, True]
    z = float(entries[0]["noise_multiplier"])
    assert z == 1.0
    training = [RoundEvent(sample_rate=0.5, noise_multiplier=z)]
    release = [RoundEvent(sample_rate=1.0, noise_multiplier=Z_T)]
    delta = float(entries[0]["delta"])
    claimed = float(trending[-1]["user_epsilon"]["pld"])
    assert claimed == pytest.approx(pld_epsilon((training + release) * 2, delta=delta), rel=1e-6)
    assert claimed > pld_epsilon(training * 2, delta=delta)
    assert result.summary["user_epsilon"] == pytest.approx(claimed)
    assert [r["after_round"] for r in result.summary["trending"]["releases"]] == [1, 2]
    counts = np.load(folder.root / str(trending[-1]["counts_file"]))
    expected = true_counts(split, int(trending[-1]["as_of_s"]))
    count_std = Z_T * math.sqrt(K)  # q_t = 1
    assert trending[-1]["count_noise_std"] == pytest.approx(count_std)
    assert expected.sum() > 20 and np.abs(counts - expected).max() < 4.5 * count_std


def test_the_release_carries_the_counts_and_the_device_shows_them(
    trending_run: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, _, result = trending_run
    run = RunFolder(config.federated.run_dir).root
    key = run.parent / f".{run.name}.ledger_signing_key.pem"
    store, device, public = tmp_path / "store", tmp_path / "device", run / "ledger_public_key.pem"
    assert server_cli.main(["release", str(run), "--store", str(store), "--signing-key", str(key)]) == 0
    capsys.readouterr()
    manifest = json.loads((store / "000001" / "manifest.json").read_text())
    last = [e for e in read_jsonl(run / "ledger.jsonl") if e.get("kind") == "trending_counts"][-1]
    block = manifest["privacy"]["trending"]
    assert block["ledger_entry_hash"] == last["entry_hash"] and block["after_round"] == 2
    assert manifest["files"]["trending_counts.npy"]["sha256"] == last["counts_sha256"]
    assert manifest["privacy"]["epsilon_all"] == pytest.approx(result.summary["user_epsilon"])
    assert manifest["privacy"]["epsilon_all"] > manifest["privacy"]["epsilon"]
    binding = build_report(run, load_public_key(public), release=store / "000001")["release"]
    assert binding["ok"], binding["problems"]
    args = ["--cache", str(device), "--public-key", str(public)]
    assert client_cli.main(["install", "--from", str(store / "000001"), *args]) == 0
    history = tmp_path / "history.jsonl"
    history.write_text("")
    capsys.readouterr()
    assert client_cli.main(["homepage", "--history", str(history), "--now", "1800000000", *args]) == 0
    page = json.loads(capsys.readouterr().out)
    assert page["trending"]["ledger_entry"] == last["entry_hash"]
    counts = np.load(store / "000001" / "trending_counts.npy")
    items = json.loads((store / "000001" / "items.json").read_text())
    row = {item["id"]: i for i, item in enumerate(items)}
    trending = next(s for s in page["sections"] if s["title"] == "Trending")
    shown = [counts[row[c["item_id"]]] for c in trending["cards"]]
    assert shown == sorted(shown, reverse=True) and len(shown) > 0
    on_page = {c["item_id"] for s in page["sections"] for c in s["cards"]}
    assert items[int(np.argmax(counts))]["id"] in on_page


def test_calibrate_can_cover_trending_releases(capsys: pytest.CaptureFixture[str]) -> None:
    from simulation.sim_cli import main

    common = [
        "calibrate",
        "--epsilon",
        "8",
        "--rounds",
        "60",
        "--sample-rate",
        "0.05",
        "--population",
        "3000",
    ]
    assert main(common) == 0
    alone = json.loads(capsys.readouterr().out)
    assert main([*common, "--trending-releases", "1", "--trending-noise-multiplier", "2"]) == 0
    both = json.loads(capsys.readouterr().out)
    assert both["noise_multiplier"] > alone["noise_multiplier"]  # 0.5908 vs 0.5835 (docs/results.md)
    assert both["user_epsilon_pld"] <= 8.0 and both["user_epsilon_pld"] == pytest.approx(8.0, abs=0.05)
