"""The typed ledger entries (server/ledger_entries.py): what the writer signs is what the verifier reads,
old ledgers (schema 1) still verify, a newer schema is refused by name, a current entry must be complete."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from ledger_toy import KEY, round_fields, write_run

from server.audit.verify import verify_ledger
from server.ledger_entries import SCHEMA, EntrySchemaError, RoundEntry, TrendingEntry, read_entry
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
