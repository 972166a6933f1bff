"""A real Flower simulation run with the model's popularity prior: one DP count release before round 1,
counted by the nodes from their training rows only, accounted and verified; the prior reaches the nodes, the
server's evaluations, the final model's evaluation and a signed release bound to its ledger entry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from federated_toy import read_jsonl, tiny_config

from server.audit.audit_report import build_report
from server.audit.verify import verify_ledger
from server.releases.release_builder import ITEM_BIAS, load_run
from server.releases.release_store import ReleaseStore
from shared.config import FedhomeConfig
from shared.data.source import configured_split
from shared.data.split import Split
from shared.derived_items import PRIOR
from shared.privacy.accounting import RoundEvent, pld_epsilon
from shared.release_manifest import popularity_prior_sha256
from shared.run_folder import RunFolder, load_popularity_prior
from shared.signing import load_private_key, load_public_key
from simulation.federated import FederatedResult, load_final_model, run_federated

pytestmark = pytest.mark.integration

K, Z_P = 3, 0.1  # little noise: the counts must match the true ones to +-0.9 (noise std 0.17 per item)


@pytest.fixture(scope="module")
def prior_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[FedhomeConfig, Split, FederatedResult]:
    tmp = tmp_path_factory.mktemp("popularity")
    config = tiny_config(
        tmp, tmp / "cache", federated__rounds="2", privacy__target_epsilon="500",
        privacy__noise_multiplier="1.0", model__popularity_prior="true",
        model__popularity_items_per_user=str(K), popularity__noise_multiplier=str(Z_P),
        popularity__enabled="auto", start_check__enabled="auto",
    )  # fmt: skip
    split = configured_split(config.data)
    return config, split, run_federated(config, split, progress=False)


def true_counts(split: Split) -> np.ndarray:
    """Users per item among each user's K most recent distinct TRAINING items (plain loops, independent of
    client/trending_contribution.py; ties by item index)."""
    counts = np.zeros(split.n_items)
    train = split.train
    for u in range(train.n_users):
        latest: dict[int, int] = {}
        for r in range(int(train.offsets[u]), int(train.offsets[u + 1])):
            item, t = int(train.items[r]), int(train.timestamps[r])
            latest[item] = max(latest.get(item, t), t)
        for item in sorted(latest, key=lambda i: (-latest[i], i))[:K]:
            counts[item] += 1
    return counts


def test_the_release_comes_first_is_counted_from_training_rows_and_verifies(prior_run: Any) -> None:
    config, split, result = prior_run
    folder = RunFolder(config.federated.run_dir)
    entries = read_jsonl(folder.ledger)
    assert [e.get("kind") for e in entries] == ["trending_counts", None, None, "start_check"]
    release = entries[0]
    assert release["purpose"] == "popularity_prior" and release["after_round"] == 0
    # every user sampled and both nodes answered
    assert release["realised_cohort"] == release["aggregated_users"] == split.full.n_users
    assert release["rejected_updates"] == 0 and release["max_items"] == K and release["noise_std"] == Z_P
    counts = np.load(folder.root / release["counts_file"])
    truth = true_counts(split)
    assert np.abs(counts - truth).max() < 0.9  # training rows only: a held-out target would add 1 somewhere
    prior = load_popularity_prior(folder)
    assert prior is not None
    np.testing.assert_allclose(prior, np.log1p(np.maximum(counts, 0)), rtol=1e-6)
    release_event = RoundEvent(sample_rate=1.0, noise_multiplier=Z_P)
    train = RoundEvent(sample_rate=0.5, noise_multiplier=1.0)
    check = RoundEvent(sample_rate=1.0, noise_multiplier=10.0)
    delta = float(release["delta"])
    expected = pld_epsilon([release_event, train, train, check], delta=delta)
    assert result.summary["user_epsilon"] == pytest.approx(expected, rel=1e-9)
    report = verify_ledger(folder.root, load_public_key(folder.public_key))
    assert report.ok, report.problems
    assert report.recomputed_epsilon == pytest.approx(expected, rel=2e-3)
    assert [(row["purpose"], row["counts_file_ok"]) for row in report.trending] == [
        ("popularity_prior", True)
    ]
    # the start check's nodes answered with the prior in their models
    assert entries[-1]["aggregated_users"] == split.full.n_users and entries[-1]["rejected_updates"] == 0


def test_the_summary_has_the_block_and_the_final_model_is_evaluated_with_the_prior(prior_run: Any) -> None:
    config, split, result = prior_run
    folder = RunFolder(config.federated.run_dir)
    entries = read_jsonl(folder.ledger)
    block = result.summary["popularity_prior"]
    prior = load_popularity_prior(folder)
    assert prior is not None
    assert block["enabled"] and block["made"] and block["note"] == "" and block["refused"] == []
    assert block["entry_hash"] == entries[0]["entry_hash"]
    assert block["user_epsilon"] == entries[0]["user_epsilon"]
    assert block["items_with_positive_counts"] == int((prior > 0).sum()) > 0
    assert block["prior_sha256"] == popularity_prior_sha256(prior)
    model = load_final_model(config, split, folder)
    np.testing.assert_array_equal(model.items.popularity.numpy(), prior)
    # the server's evaluation of the shipped model (with the prior in the server's model) is the final one's:
    # the 40 users are all in the progress subset
    assert result.summary["final_eval"]["valid_ndcg_10"] == pytest.approx(result.valid.overall.ndcg_10)
    rows = read_jsonl(folder.metrics)
    assert rows[0]["round"] == 0 and rows[0]["user_epsilon"] == pytest.approx(
        entries[0]["user_epsilon"]["pld"]
    )  # the starting point is evaluated after the release, which it already spent


def test_a_release_of_the_run_bakes_the_prior_in_and_is_bound_to_its_entry(
    prior_run: Any, tmp_path: Path
) -> None:
    config, _, _ = prior_run
    folder = RunFolder(config.federated.run_dir)
    entries = read_jsonl(folder.ledger)
    key = load_private_key(folder.root.parent / f".{folder.root.name}.ledger_signing_key.pem")
    model, catalogue, source = load_run(folder.root, key.public_key())
    prior = load_popularity_prior(folder)
    assert prior is not None
    np.testing.assert_array_equal(model.items.popularity.numpy(), prior)
    block = source.privacy["popularity_prior"]
    assert block["ledger_entry_hash"] == entries[0]["entry_hash"]
    assert block["prior_sha256"] == popularity_prior_sha256(prior)
    assert block["counts_sha256"] == entries[0]["counts_sha256"] and "trending" not in source.privacy
    store = ReleaseStore(tmp_path / "releases")
    version = store.publish(model, catalogue, source, key)
    _, bias = model.items()
    released = store.folder(version)
    np.testing.assert_array_equal(np.load(released / PRIOR), prior)  # the prior ships; the bias has it
    w = np.load(released / "item_tower_bias.npy")[:-2]
    half_step = np.load(released / "item_text_scales.npy") / 2  # the bias is derived from int8 text
    error = np.abs(np.load(released / ITEM_BIAS) - bias.detach().numpy())
    assert (error <= half_step * float(np.abs(w).sum()) + 1e-5).all()
    public_key = load_public_key(folder.public_key)
    audit = build_report(folder.root, public_key, release=store.folder(version))
    assert audit["release"]["ok"], audit["release"]
    assert audit["trending"][0]["purpose"] == "popularity_prior"
    assert audit["guarantee"]["popularity_releases"] == 1 and audit["guarantee"]["trending_releases"] == 0
