"""Entries of a signed catalogue delta list, for tests that sign lists of their own."""

from __future__ import annotations


def list_entry(sequence: object, *, items: int = 1) -> dict[str, object]:
    """One entry of a delta list (`sequence` as given, so tests can also pass malformed ones)."""
    return {
        "sequence": sequence,
        "items": items,
        "created_utc": "2026-01-01T00:00:00Z",
        "manifest_sha256": "0" * 64,
    }
