"""Trending releases in the signed ledger: they verify, they are accounted, and tampering is caught."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import dp_accounting
import numpy as np
import pytest
from ledger_toy import DELTA, KEY, round_fields
from trending_toy import Q_T, Z_T, K, trending_fields, write_trending_run

from server.audit import audit_cli
from server.audit.audit_report import build_report
from server.audit.report_html import render_html
from server.audit.verify import verify_ledger
from server.ledger import PrivacyLedger, entry_hash, signed_bytes
from shared import signing
from shared.errors import DataError
from shared.privacy.accounting import RoundEvent, UserLevelAccountant


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("trending-run")
    write_trending_run(folder, rounds=3, every=1)
    return folder


def copy_of(run: Path, tmp_path: Path) -> Path:
    shutil.copytree(run, tmp_path / "copy")
    return tmp_path / "copy"


def rewrite(folder: Path, line: int, **changes: object) -> None:
    """Edit one entry and sign it again with the real key (a key holder misstating the release)."""
    lines = (folder / "ledger.jsonl").read_text().splitlines()
    entry = json.loads(lines[line])
    entry.update(changes)
    entry["signature"] = signing.sign(KEY, signed_bytes(entry))
    entry["entry_hash"] = entry_hash(entry)
    lines[line] = signing.canonical_json(entry).decode()
    (folder / "ledger.jsonl").write_text("\n".join(lines) + "\n")


def independent_epsilon(rounds: int, releases: int, *, q_t: float = Q_T) -> float:
    """dp_accounting's PLD of the same mechanisms, composed directly (not through fedhome's code)."""
    accountant = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-4)
    train = dp_accounting.PoissonSampledDpEvent(0.05, dp_accounting.GaussianDpEvent(1.0))
    trend = dp_accounting.PoissonSampledDpEvent(q_t, dp_accounting.GaussianDpEvent(Z_T))
    accountant.compose(dp_accounting.SelfComposedDpEvent(train, rounds))
    if releases:
        accountant.compose(dp_accounting.SelfComposedDpEvent(trend, releases))
    return float(accountant.get_epsilon(DELTA))


@pytest.mark.integration
def test_a_ledger_with_trending_releases_verifies_and_composes_them(run: Path) -> None:
    report = verify_ledger(run, KEY.public_key())
    assert report.ok, report.problems
    assert report.entries == 6 and [c.kind for c in report.epsilons].count("trending_counts") == 3
    assert [row["after_round"] for row in report.trending] == [1, 2, 3]
    assert all(row["counts_file_ok"] for row in report.trending)
    with_trending, training_only = independent_epsilon(3, 3), independent_epsilon(3, 0)
    assert with_trending > training_only * 1.05
    assert report.recomputed_epsilon == pytest.approx(with_trending, rel=2e-3)
    assert report.claimed_epsilon == pytest.approx(with_trending, rel=2e-3)


SUBSAMPLED_Q_T = 0.3  # trending users Poisson-sampled, not all of them


@pytest.fixture(scope="module")
def subsampled_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("subsampled-trending-run")
    write_trending_run(folder, rounds=3, every=1, q_t=SUBSAMPLED_Q_T)
    return folder


@pytest.mark.integration
def test_subsampled_trending_releases_verify_as_poisson_sampled_gaussians(subsampled_run: Path) -> None:
    report = verify_ledger(subsampled_run, KEY.public_key())
    assert report.ok, report.problems
    subsampled = independent_epsilon(3, 3, q_t=SUBSAMPLED_Q_T)
    assert independent_epsilon(3, 0) < subsampled < independent_epsilon(3, 3) / 1.05  # q_t < 1 amplifies
    assert report.recomputed_epsilon == pytest.approx(subsampled, rel=2e-3)
    assert report.claimed_epsilon == pytest.approx(subsampled, rel=2e-3)


@pytest.mark.parametrize(
    ("q_t", "says"),
    [
        (0.5, "claimed PLD epsilon"),  # a larger rate: the claimed epsilon is now understated
        (0.1, "vary too much"),  # a smaller one leaves the claim conservative, but the cohort gives it away
    ],
)
@pytest.mark.integration
def test_a_resigned_sample_rate_of_a_subsampled_trending_release_fails(
    subsampled_run: Path, tmp_path: Path, q_t: float, says: str
) -> None:
    copy = copy_of(subsampled_run, tmp_path)  # the rate restated with every field that follows from it
    rewrite(copy, 1, sample_rate=q_t, expected_cohort=q_t * 2000, count_noise_std=Z_T * K**0.5 / q_t)
    report = verify_ledger(copy, KEY.public_key())
    assert not report.ok and any(says in p for p in report.problems), report.problems


@pytest.mark.integration
def test_the_accountant_composes_trending_with_training_like_dp_accounting() -> None:
    accountant = UserLevelAccountant(delta=DELTA)
    for _ in range(3):
        accountant.record(RoundEvent(sample_rate=0.05, noise_multiplier=1.0))
    training = accountant.spent()
    for _ in range(2):
        accountant.record(RoundEvent(sample_rate=Q_T, noise_multiplier=Z_T))
    both = accountant.spent()
    assert both["pld"] > training["pld"] and both["rdp"] > training["rdp"] >= training["pld"]
    assert both["pld"] == pytest.approx(independent_epsilon(3, 2), rel=2e-3)


def test_the_ledger_keeps_round_numbers_and_refuses_a_misplaced_trending_entry(tmp_path: Path) -> None:
    acc = write_trending_run(tmp_path, rounds=2, every=1)
    ledger = PrivacyLedger(tmp_path / "ledger.jsonl", signing_key=KEY)
    assert ledger.last_round() == 2
    with pytest.raises(DataError, match="must follow round 2"):
        ledger.append(trending_fields(1, acc, tmp_path))
    with pytest.raises(DataError, match="must follow round 2"):
        ledger.append({**trending_fields(2, acc, tmp_path), "round": 3})
    acc.record(RoundEvent(sample_rate=0.05, noise_multiplier=1.0))
    ledger.append(round_fields(3, acc, q=0.05, z=1.0, mode="central"))  # training continues at 3
    assert verify_ledger(tmp_path, KEY.public_key()).ok


def test_a_flipped_byte_in_a_trending_entry_fails(run: Path, tmp_path: Path) -> None:
    copy = copy_of(run, tmp_path)
    lines = (copy / "ledger.jsonl").read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b'"noise_multiplier":4.0', b'"noise_multiplier":9.0')
    (copy / "ledger.jsonl").write_bytes(b"".join(lines))
    report = verify_ledger(copy, KEY.public_key())
    assert not report.ok and any(
        "trending release after round 1" in p and "signature" in p for p in report.problems
    )


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"noise_multiplier": 2.0, "noise_std": 2.0}, "claimed PLD epsilon"),  # an epsilon too small for it
        ({"noise_std": 2.0}, "noise_std 2.0 != noise_multiplier"),
        ({"item_weight": 1.0}, "sensitivity is not 1"),
        ({"sampling": "fixed_size"}, "Poisson"),
        ({"after_round": 2}, "must follow round 1"),
        ({"count_noise_std": 1.0}, "count_noise_std 1.0 != noise_std * sqrt(max_items) / sample_rate"),
    ],
)
@pytest.mark.integration
def test_a_resigned_misstatement_of_a_trending_release_fails(
    run: Path, tmp_path: Path, changes: dict[str, object], expected: str
) -> None:
    copy = copy_of(run, tmp_path)
    rewrite(copy, 1, **changes)
    report = verify_ledger(copy, KEY.public_key())
    assert not report.ok and any(expected in p for p in report.problems), report.problems


@pytest.mark.integration
def test_altered_counts_or_a_removed_release_fail(run: Path, tmp_path: Path) -> None:
    copy = copy_of(run, tmp_path)
    np.save(copy / "trending" / "after-round-00002.npy", np.arange(7, dtype=np.float32) * 99)
    report = verify_ledger(copy, KEY.public_key())
    assert not report.ok and any("does not match the counts_sha256" in p for p in report.problems)
    lines = (run / "ledger.jsonl").read_bytes().splitlines(keepends=True)
    (copy / "ledger.jsonl").write_bytes(b"".join(lines[:3] + lines[4:]))  # the release after round 2
    report = verify_ledger(copy, KEY.public_key())
    assert not report.ok and any("prev_hash" in p for p in report.problems)


def test_the_audit_cli_lists_the_trending_releases(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = audit_cli.main(["verify", str(run), "--public-key", str(run / "ledger_public_key.pem"), "--json"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert [row["after_round"] for row in printed["trending"]] == [1, 2, 3]


@pytest.mark.integration
def test_the_report_lists_the_trending_releases_beside_the_rounds(run: Path) -> None:
    report = build_report(run, KEY.public_key())
    assert len(report["rounds"]) == 3 and report["guarantee"]["trending_releases"] == 3
    assert [row["after_round"] for row in report["trending"]] == [1, 2, 3]
    assert "trending counts" in report["guarantee"]["released"] and not report["mismatches"]
    html = render_html(report)
    assert "<h2>Trending releases</h2>" in html and html.count("matches</td>") == 3


def test_a_release_binds_its_trending_counts_to_their_entry(run: Path) -> None:
    from server.audit.audit_report import _entries, _trending_binding

    entries = _entries(run)
    last = [e for e in entries if e.get("kind") == "trending_counts"][-1]
    block = {"file": "trending_counts.npy", "ledger_entry_hash": last["entry_hash"],
             "epsilon": last["user_epsilon"]["pld"]}  # fmt: skip
    files = {"trending_counts.npy": {"sha256": last["counts_sha256"]}}
    model_epsilon = entries[-2]["user_epsilon"]["pld"]  # the round before the last release
    privacy = {"epsilon": model_epsilon, "epsilon_all": block["epsilon"], "trending": block}
    manifest = {"privacy": privacy, "files": files}
    assert _trending_binding(manifest, entries) == []
    understated = {**manifest, "privacy": {**privacy, "epsilon_all": model_epsilon}}
    assert "epsilon_all" in _trending_binding(understated, entries)[0]  # misses the trending counts
    assert (
        "epsilon_all"
        in _trending_binding({**manifest, "privacy": {**privacy, "epsilon_all": None}}, entries)[0]
    )
    assert _trending_binding({"privacy": {}, "files": {}}, entries) == []
    other = {
        **manifest,
        "privacy": {**privacy, "trending": {**block, "ledger_entry_hash": entries[0]["entry_hash"]}},
    }
    assert "no trending entry" in _trending_binding(other, entries)[0]
    wrong_file = {**manifest, "files": {"trending_counts.npy": {"sha256": "0" * 64}}}
    assert "not the one its ledger entry signs" in _trending_binding(wrong_file, entries)[0]
    wrong_epsilon = {**manifest, "privacy": {**privacy, "trending": {**block, "epsilon": 0.1}}}
    assert "epsilon differs" in _trending_binding(wrong_epsilon, entries)[0]
    # the ledger cut off after the model's training entry: the trending entry is not in the chain
    assert "no trending entry" in _trending_binding(manifest, entries[:-1])[0]


@pytest.mark.integration
def test_counts_that_no_entry_signs_fail_a_release_cut_off_the_end_included(
    run: Path, tmp_path: Path
) -> None:
    copy = copy_of(run, tmp_path)
    lines = (run / "ledger.jsonl").read_bytes().splitlines(keepends=True)
    (copy / "ledger.jsonl").write_bytes(b"".join(lines[:-1]))  # the last release's entry cut off
    report = verify_ledger(copy, KEY.public_key())
    assert not report.ok and any("trending/after-round-00003.npy" in p for p in report.problems)
    np.save(copy / "trending" / "after-round-00003.npy", np.zeros(7, np.float32))
    (copy / "ledger.jsonl").write_bytes(b"".join(lines))
    np.save(copy / "trending" / "after-round-00009.npy", np.zeros(7, np.float32))  # a stray release
    report = verify_ledger(copy, KEY.public_key())
    assert not report.ok and any(
        "after-round-00009.npy" in p and "no ledger entry" in p for p in report.problems
    )
