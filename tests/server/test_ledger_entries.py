"""The typed ledger entries (server/ledger_entries.py): what the writer signs is what the verifier reads,
old ledgers (schema 1) still verify, a newer schema is refused by name, a current entry must be complete."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from ledger_toy import KEY, round_fields, write_run
from trending_toy import trending_fields

from server.audit.verify import verify_ledger
from server.ledger import PrivacyLedger
from server.ledger_entries import (
    SCHEMA,
    EntrySchemaError,
    RoundEntry,
    TrendingEntry,
    is_popularity_release,
    is_trending_release,
    popularity_release_entry,
    read_entry,
    release_purpose,
)
from shared.privacy.accounting import RoundEvent, UserLevelAccountant


def a_round() -> dict[str, Any]:
    accountant = UserLevelAccountant(delta=1e-5)
    accountant.record(RoundEvent(sample_rate=0.05, noise_multiplier=1.0))
    return round_fields(1, accountant, q=0.05, z=1.0, mode="central")


def test_an_entry_reads_back_as_the_entry_that_was_written() -> None:
    fields = a_round()
    entry = read_entry(fields)
    assert isinstance(entry, RoundEntry) and entry.to_fields() == fields and fields["schema"] == SCHEMA


def test_a_current_entry_must_carry_every_field_of_its_schema() -> None:
    fields = a_round()
    del fields["divisor"]
    with pytest.raises(EntrySchemaError, match=r"missing fields \['divisor'\]"):
        read_entry(fields)


@pytest.mark.parametrize(
    ("name", "value"),
    [("round", 1.0), ("round", True), ("sample_rate", "0.05"), ("noise_std", 10**400), ("mode", "remote"),
     ("user_epsilon", ["pld", 1.0]), ("accountant_versions", {"opacus": 1})],
)  # fmt: skip
def test_malformed_fields_are_named(name: str, value: Any) -> None:
    fields = {**a_round(), name: value}
    with pytest.raises(EntrySchemaError, match=rf"malformed fields \['{name}'\]"):
        read_entry(fields)


def legacy(fields: dict[str, Any]) -> dict[str, Any]:
    """An entry as ledgers before typed entries wrote it: no schema, only some of today's fields."""
    dropped = ("schema", "divisor", "aggregated_users", "refused_users", "unit_of_privacy")
    return {k: v for k, v in fields.items() if k not in dropped}


def test_a_schema_1_ledger_still_verifies(tmp_path: Path) -> None:
    def as_legacy(round_number: int, fields: dict[str, Any]) -> None:
        for name in set(fields) - set(legacy(fields)):
            del fields[name]

    run = write_run(tmp_path / "old", rounds=3, tweak=as_legacy)
    report = verify_ledger(run, KEY.public_key())
    assert report.ok, report.problems
    entry = read_entry(legacy(a_round()))
    assert isinstance(entry, RoundEntry) and entry.divisor is None


def test_a_newer_schema_is_refused_with_both_versions(tmp_path: Path) -> None:
    with pytest.raises(
        EntrySchemaError, match=rf"ledger schema {SCHEMA + 1}; this fedhome reads schemas 1 to"
    ):
        read_entry({**a_round(), "schema": SCHEMA + 1})
    run = write_run(tmp_path / "new", rounds=2, tweak=lambda r, fields: fields.update(schema=SCHEMA + 1))
    report = verify_ledger(run, KEY.public_key())
    assert not report.ok and any(f"schema {SCHEMA + 1}" in p for p in report.problems)


def test_trending_entries_are_typed_too() -> None:
    entry = TrendingEntry(
        after_round=3, mode="central", sampling="poisson", sample_rate=1.0, noise_multiplier=2.0,
        noise_std=2.0, count_noise_std=2.0, sensitivity=1.0, max_items=3, item_weight=3**-0.5,
        counts_file="trending/x.npy", counts_sha256="c" * 64, delta=1e-5,
        user_epsilon={"pld": 0.5, "rdp": 0.7}, mechanism="poisson_subsampled_gaussian_sum", run_id="run-a",
        time_utc="2026-11-01T00:00:00+00:00", unit_of_privacy="user", population=40, expected_cohort=40.0,
        realised_cohort=40, aggregated_users=40, rejected_updates=0, window_days=30.0, as_of_s=1000,
        estimator="(sum + noise) * sqrt(max_items) / sample_rate", accountant_versions={"opacus": "1.6.0"},
    )  # fmt: skip
    fields = entry.to_fields()
    assert fields["kind"] == "trending_counts" and read_entry(fields) == entry
    with pytest.raises(EntrySchemaError, match="unknown entry kind"):
        read_entry({**fields, "kind": "trending"})
    del fields["window_days"]
    with pytest.raises(EntrySchemaError, match=r"missing fields \['window_days'\]"):
        read_entry(fields)


def test_a_count_release_names_its_purpose_and_one_without_the_field_is_a_trending_release(
    tmp_path: Path,
) -> None:
    """The popularity prior's count release is a trending_counts entry with "purpose": "popularity_prior";
    entries written before the field read as trending releases, and an unknown purpose is malformed."""
    fields = trending_fields(0, UserLevelAccountant(delta=1e-5), tmp_path)
    fields["schema"] = SCHEMA
    assert release_purpose(fields) == "trending" and is_trending_release(fields)
    assert isinstance(read_entry(fields), TrendingEntry) and read_entry(fields).to_fields() == fields
    prior = {**fields, "purpose": "popularity_prior"}
    typed = read_entry(prior)
    assert isinstance(typed, TrendingEntry) and typed.purpose == "popularity_prior"
    assert is_popularity_release(prior) and not is_trending_release(prior)
    assert popularity_release_entry([fields, prior]) == prior and popularity_release_entry([fields]) is None
    with pytest.raises(EntrySchemaError, match=r"malformed fields \['purpose'\]"):
        read_entry({**fields, "purpose": "advertising"})


@pytest.mark.parametrize(("after", "ok"), [(0, True), (1, False)])
def test_the_popularity_prior_release_verifies_only_before_the_first_round(
    tmp_path: Path, after: int, ok: bool
) -> None:
    folder = tmp_path
    acc, ledger = UserLevelAccountant(delta=1e-5), PrivacyLedger(folder / "ledger.jsonl", signing_key=KEY)
    for r in range(1, 3):
        if r == after + 1:
            acc.record(RoundEvent(sample_rate=1.0, noise_multiplier=4.0))
            ledger.append({**trending_fields(after, acc, folder), "purpose": "popularity_prior"})
        acc.record(RoundEvent(sample_rate=0.05, noise_multiplier=1.0))
        ledger.append(round_fields(r, acc, q=0.05, z=1.0, mode="central"))
    report = verify_ledger(folder, KEY.public_key())
    assert report.ok is ok, report.problems
    if ok:
        assert [row["purpose"] for row in report.trending] == ["popularity_prior"]
    else:
        assert any("after_round 0 for purpose popularity_prior" in problem for problem in report.problems)
