"""Real Flower simulation runs with secure aggregation: the same model as aggregation in the clear, and in
central mode a ledger whose noise the nodes added, which `fedhome-audit verify` accepts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from federated_toy import read_jsonl, tiny_config

from client.device.receipts import ReceiptStore
from server.audit.audit_report import build_report
from server.audit.report_html import render_html
from server.audit.verify import verify_ledger
from shared.data.source import configured_split
from shared.run_folder import RunFolder
from shared.signing import load_public_key
from simulation.federated import run_federated

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("encoder-cache")


def test_secure_aggregation_gives_the_model_of_aggregation_in_the_clear(tmp_path: Path, cache: Path) -> None:
    common = {"federated__rounds": "2", "privacy__mode": "none", "federated__nodes": "3"}
    clear = tiny_config(tmp_path / "clear", cache, **common)
    secure = tiny_config(tmp_path / "secure", cache, privacy__secure_aggregation="true", **common)
    split = configured_split(clear.data)
    run_federated(clear, split, progress=False)
    run_federated(secure, split, progress=False)
    entries = read_jsonl(RunFolder(secure.federated.run_dir).ledger)
    clear_entries = read_jsonl(RunFolder(clear.federated.run_dir).ledger)
    assert [e["aggregated_users"] for e in entries] == [e["aggregated_users"] for e in clear_entries]
    for entry in entries:
        record = entry["secure_aggregation"]
        assert isinstance(record, dict) and record["failed"] == "" and record["masked_inputs"] == 3
        assert record["participants"] == 3 and record["dropped"] == 0
    clear_params = np.load(RunFolder(clear.federated.run_dir).final_params)
    secure_params = np.load(RunFolder(secure.federated.run_dir).final_params)
    rows = read_jsonl(RunFolder(secure.federated.run_dir).metrics)[1:]
    assert all(float(row["update_norm"]) > 1e-3 for row in rows)  # it trained
    np.testing.assert_allclose(secure_params, clear_params, atol=1e-4)


def test_central_dp_with_secure_aggregation_on_one_device_per_node(tmp_path: Path, cache: Path) -> None:
    config = tiny_config(
        tmp_path,
        cache,
        data__synthetic__n_users="12",
        federated__devices_per_node="one",
        federated__rounds="2",
        federated__eval_every="0",
        privacy__target_epsilon="60",
        privacy__secure_aggregation="true",
        privacy__secagg_neighbours="4",
        federated__receipts_dir=str(tmp_path / "receipts"),
    )
    run_federated(config, configured_split(config.data), progress=False)
    folder = RunFolder(config.federated.run_dir)
    entries = read_jsonl(folder.ledger)
    assert [e["round"] for e in entries] == [1, 2]
    for entry in entries:
        record = entry["secure_aggregation"]
        assert isinstance(record, dict)
        assert record["participants"] == entry["realised_cohort"] == record["masked_inputs"]
        assert record["neighbours"] == min(4, int(record["participants"]) - 1)
        assert entry["noise_std"] == pytest.approx(entry["noise_multiplier"] * record["sensitivity"])
        assert record["distributed_noise_std"] == pytest.approx(entry["noise_std"])  # all nodes answered
        assert record["server_noise_std"] == 0
    report = verify_ledger(folder.ledger, load_public_key(folder.public_key))
    assert report.ok, report.problems
    receipts = [r for d in (tmp_path / "receipts").iterdir() for r in ReceiptStore(d).receipts()]
    assert len(receipts) == sum(int(e["aggregated_users"]) for e in entries)
    assert receipts and all(r.secure_aggregation for r in receipts)  # each device knows it was masked
    report_json = build_report(folder.root, load_public_key(folder.public_key))
    words = report_json["guarantee"]["secure_aggregation"]
    assert words.startswith("used in 2 of 2 training rounds") and "0 round(s) summed nothing" in words
    rows = [r["secure_aggregation"] for r in report_json["rounds"]]
    assert [r["masked_inputs"] == r["participants"] and not r["failed"] for r in rows] == [True, True]
    page = render_html(report_json)
    assert "secure aggregation" in page and f"summed {rows[0]['masked_inputs']} of" in page


def test_trending_releases_by_secure_aggregation_match_the_clear_ones(tmp_path: Path, cache: Path) -> None:
    k, z_t = 4, 0.1  # little noise: the two runs' counts differ by it alone
    common = {
        "federated__rounds": "1",
        "federated__eval_every": "0",
        "privacy__target_epsilon": "500",
        "privacy__noise_multiplier": "1.0",
        "trending__every_rounds": "1",
        "trending__noise_multiplier": str(z_t),
        "trending__max_items": str(k),
        "trending__window_days": "60",
    }
    clear = tiny_config(tmp_path / "clear", cache, **common)
    secure = tiny_config(tmp_path / "secure", cache, privacy__secure_aggregation="true", **common)
    split = configured_split(clear.data)
    run_federated(clear, split, progress=False)
    run_federated(secure, split, progress=False)
    found = []
    for config in (clear, secure):
        folder = RunFolder(config.federated.run_dir)
        report = verify_ledger(folder.ledger, load_public_key(folder.public_key))
        assert report.ok, report.problems
        entry = [e for e in read_jsonl(folder.ledger) if e.get("kind") == "trending_counts"][-1]
        found.append((entry, np.load(folder.root / str(entry["counts_file"]))))
    (clear_entry, clear_counts), (secure_entry, secure_counts) = found
    record = secure_entry["secure_aggregation"]
    assert isinstance(record, dict) and "secure_aggregation" not in clear_entry
    assert record["masked_inputs"] == 2 and record["failed"] == "" and record["dim"] == split.n_items
    assert secure_entry["noise_std"] == pytest.approx(z_t * record["sensitivity"])
    assert secure_entry["realised_cohort"] == clear_entry["realised_cohort"] == split.full.n_users
    count_std = float(secure_entry["count_noise_std"])
    assert clear_counts.sum() > 20 and np.abs(secure_counts - clear_counts).max() < 2 * 4.5 * count_std


def test_record_level_dp_sgd_under_secure_aggregation(tmp_path: Path, cache: Path) -> None:
    config = tiny_config(
        tmp_path,
        cache,
        data__synthetic__n_users="12",
        federated__devices_per_node="one",
        federated__rounds="2",
        federated__eval_every="0",
        federated__update_scales="",
        privacy__record_level="true",
        privacy__record_noise_multiplier="1.0",
        privacy__target_epsilon="100",
        privacy__secure_aggregation="true",
    )
    run_federated(config, configured_split(config.data), progress=False)
    folder = RunFolder(config.federated.run_dir)
    entries = read_jsonl(folder.ledger)
    for entry in entries:  # the devices' record-level epsilons travel in the clear beside the masked sums
        record = entry["secure_aggregation"]
        assert isinstance(record, dict) and record["masked_inputs"] == entry["realised_cohort"]
        assert float(entry["record_epsilon"]) > 0
    assert float(entries[1]["record_epsilon"]) >= float(entries[0]["record_epsilon"])
    report = verify_ledger(folder.ledger, load_public_key(folder.public_key))
    assert report.ok, report.problems
