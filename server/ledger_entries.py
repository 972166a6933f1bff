"""The privacy ledger's entries, typed: a training round's (RoundEntry), a count release's (TrendingEntry: a
trending release, or the popularity prior's counts, told apart by "purpose") and the start check's
(StartCheckEntry). The coordinator and its hooks write them, the verifier and the report read them back
through `read_entry`, and the tests build them; server/ledger.py chains and signs whatever fields it is given.

An entry without "kind" is a training round: it has a "round" and advances the round count. Every other
kind (`NON_TRAINING_KINDS`) has no "round" but "after_round", the training round it follows
(`is_training_round` tells them apart).

On disk an entry is one flat JSON object: the fields below (None-valued optional ones left out), "schema",
and the chain's own fields (prev_hash, key_id, signature, entry_hash; server/ledger.py).

Schema versions. Entries written now carry "schema": 2 and every field that is not optional. Entries without
"schema" come from ledgers written before typed entries (schema 1): they are read with only the mechanism's
fields required (what the auditor recomputes epsilon and checks noise from, `LEGACY_REQUIRED`); their other
fields may be absent and read as None. An entry of a newer schema is refused with a message naming both
versions, never guessed at.
"""

from __future__ import annotations

import math
import types
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, Final, Literal, Union, get_args, get_origin, get_type_hints

from shared.errors import DataError

SCHEMA = 2
TRENDING_KIND: Final = "trending_counts"
# what a trending_counts entry's counts are for: trending releases, or the popularity prior's one release
# before round 1 (server/trending/popularity_release.py); entries without "purpose" are "trending"
Purpose = Literal["trending", "popularity_prior"]
TRENDING_PURPOSE: Final = "trending"
POPULARITY_PURPOSE: Final = "popularity_prior"
START_CHECK_KIND: Final = "start_check"
NON_TRAINING_KINDS = (TRENDING_KIND, START_CHECK_KIND)
Mode = Literal["central", "local", "none"]
Epsilon = float | str  # a finite number, or "inf" when nothing was noised
EpsilonSpent = dict[str, Epsilon]  # {"pld": ..., "rdp": ...}


class EntrySchemaError(DataError):
    """A ledger entry that is not an entry of a schema this code reads."""


@dataclass(frozen=True, kw_only=True)
class RoundEntry:
    """One training round (server/ledger.py's module docstring says what each field means)."""

    round: int
    mode: Mode
    sampling: str
    sample_rate: float
    noise_multiplier: float  # the z that was accounted
    noise_std: float  # the std added to the update sum
    clip_norm: float
    delta: float
    user_epsilon: EpsilonSpent
    # the run's privacy budget: the user-level epsilon the whole run may spend (a lifetime budget over its
    # planned training rounds), on every round so that the plan is signed with what was spent; absent in
    # entries written before it was recorded, and without noise (mode "none")
    target_epsilon: float | None = None
    planned_rounds: int | None = None
    run_id: str | None = None
    time_utc: str | None = None
    unit_of_privacy: str | None = None
    population: int | None = None
    expected_cohort: float | None = None
    realised_cohort: int | None = None
    aggregated_users: int | None = None
    rejected_updates: int | None = None
    divisor: float | None = None
    next_clip_norm: float | None = None
    update_noise_multiplier: float | None = None
    count_noise_std: float | None = None
    local_noise_multiplier: float | None = None
    noise_rng: str | None = None
    model_sha256_before: str | None = None
    model_sha256_after: str | None = None
    accountant_versions: dict[str, str] | None = None
    refused_users: int | None = None
    # replies rejected this round (nodes) and by reason (server/rounds/messaging.py: TrainReplies.rejections);
    # absent in entries written before they were recorded
    rejected_nodes: int | None = None
    rejection_reasons: dict[str, int] | None = None
    # record-level DP-SGD on the devices (server/rounds/record_level_fields.py), else absent
    record_epsilon: Epsilon | None = None
    record_epsilon_round: Epsilon | None = None
    record_delta: float | None = None
    record_accountant: str | None = None
    # "training_example" (one prefix of the user's sequence; "record" in older ledgers, the same unit): one
    # interaction is in up to 1 + max_history examples, so per interaction the guarantee is group privacy
    record_unit_of_privacy: str | None = None
    # a participation cap (server/rounds/cap_fields.py), else absent
    participation_cap: int | None = None
    cap_segment: int | None = None
    user_epsilon_poisson: EpsilonSpent | None = None
    user_epsilon_cap: EpsilonSpent | None = None
    epsilon_bound: Literal["cap", "poisson"] | None = None
    # secure aggregation (server/secagg/secure_round.py: SecureRoundRecord.to_json), else absent
    secure_aggregation: dict[str, Any] | None = None

    def to_fields(self) -> dict[str, Any]:
        """The fields to sign (server/ledger.py), with the schema version."""
        return _to_fields(self)


@dataclass(frozen=True, kw_only=True)
class TrendingEntry:
    """One DP count release by the trending mechanism (server/trending/trending_round.py): a trending release
    after a training round, or (purpose "popularity_prior", after_round 0) the popularity prior's counts."""

    kind: Literal["trending_counts"] = TRENDING_KIND
    after_round: int  # the training round it follows; it does not advance the round count
    mode: Literal["central", "none"]
    sampling: str
    sample_rate: float
    noise_multiplier: float
    noise_std: float
    count_noise_std: float
    sensitivity: float
    max_items: int
    item_weight: float
    counts_file: str
    counts_sha256: str
    delta: float
    user_epsilon: EpsilonSpent
    mechanism: str | None = None
    run_id: str | None = None
    time_utc: str | None = None
    unit_of_privacy: str | None = None
    population: int | None = None
    expected_cohort: float | None = None
    realised_cohort: int | None = None
    aggregated_users: int | None = None
    rejected_updates: int | None = None
    window_days: float | None = None
    as_of_s: int | None = None
    # where as_of_s came from: set in the configuration, or the release's own wall-clock time; never a
    # user's data. Absent in entries written before it was recorded (schema 1 and early schema 2)
    as_of_source: Literal["configured", "release_time"] | None = None
    estimator: str | None = None
    accountant_versions: dict[str, str] | None = None
    n_items: int | None = None
    noise_rng: str | None = None
    secure_aggregation: dict[str, Any] | None = None
    # what the counts are for (absent in entries written before it was recorded: "trending")
    purpose: Purpose | None = None

    def to_fields(self) -> dict[str, Any]:
        return _to_fields(self)


@dataclass(frozen=True, kw_only=True)
class StartCheckEntry:
    """The start check after the last training round (server/rounds/start_check.py): the noised sum of the
    sampled users' NDCG@10 gains of the trained model over its start, the decision it gave, and the models."""

    kind: Literal["start_check"] = START_CHECK_KIND
    mechanism: str
    run_id: str
    after_round: int  # the training round it follows; it does not advance the round count
    time_utc: str
    mode: Literal["central", "none"]
    unit_of_privacy: str
    sampling: str
    sample_rate: float
    population: int
    expected_cohort: float
    realised_cohort: int
    aggregated_users: int
    rejected_updates: int
    sensitivity: float
    noise_multiplier: float
    noise_std: float
    noised_gain_sum: float
    margin: float  # in noise stds: "trained" only when noised_gain_sum > margin * noise_std
    decision: Literal["trained", "start"]
    model_sha256_trained: str  # the last training round's model_sha256_after
    model_sha256_start: str  # the run's initial parameters (round 1's model_sha256_before)
    model_sha256_shipped: str  # the one of the two the decision picked
    delta: float
    user_epsilon: EpsilonSpent
    accountant_versions: dict[str, str]
    noise_rng: str

    def to_fields(self) -> dict[str, Any]:
        return _to_fields(self)


Entry = RoundEntry | TrendingEntry | StartCheckEntry
ENTRY_CLASSES: dict[str | None, type[Entry]] = {
    None: RoundEntry,
    TRENDING_KIND: TrendingEntry,
    START_CHECK_KIND: StartCheckEntry,
}
LEGACY_REQUIRED = {  # the fields without a None default: the mechanism's
    cls: tuple(f.name for f in fields(cls) if f.default is not None) for cls in ENTRY_CLASSES.values()
}
# Optional in every schema: fields of a mode the run may not use
OPTIONAL = {
    *(
        "record_epsilon",
        "record_epsilon_round",
        "record_delta",
        "record_accountant",
        "record_unit_of_privacy",
    ),
    *("participation_cap", "cap_segment", "user_epsilon_poisson", "user_epsilon_cap", "epsilon_bound"),
    *("secure_aggregation", "n_items", "noise_rng"),
    *("as_of_source", "purpose"),
    *("rejected_nodes", "rejection_reasons"),  # recorded since the fault measurements (issue 17)
    *("target_epsilon", "planned_rounds"),  # recorded since issue 18; absent without noise
}
CHAIN_FIELDS = ("prev_hash", "key_id", "signature", "entry_hash")


def is_training_round(entry: Mapping[str, Any]) -> bool:
    """Is this the entry of a training round (no "kind"), not of a release that follows one?"""
    return entry.get("kind") is None


def entries_after_last_round(entries: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The entries after the ledger's last training round: the releases that followed it (all of them when
    there is no training round)."""
    rounds = [i for i, entry in enumerate(entries) if is_training_round(entry)]
    return list(entries[rounds[-1] + 1 :] if rounds else entries)


def start_check_after(entries: Sequence[Mapping[str, Any]], after: int) -> Mapping[str, Any] | None:
    """The start check entry after training round `after` among the entries after the ledger's last
    training round (None when there is none: no check, or training went on after it)."""
    after_last = entries_after_last_round(entries)
    found = [e for e in after_last if is_start_check(e) and e.get("after_round") == after]
    return found[-1] if found else None


def is_trending(entry: Mapping[str, Any]) -> bool:
    """Is this the entry of a count release by the trending mechanism (kind "trending_counts": a trending
    release, or the popularity prior's counts; not a training round)?"""
    return entry.get("kind") == TRENDING_KIND


def release_purpose(entry: Mapping[str, Any]) -> str:
    """What a trending_counts entry's counts are for: "trending", or "popularity_prior" (an entry without the
    field is a trending release, as every such entry was before the popularity prior)."""
    return str(entry.get("purpose", TRENDING_PURPOSE))


def is_trending_release(entry: Mapping[str, Any]) -> bool:
    """Is this the entry of a trending release proper (not the popularity prior's counts)?"""
    return is_trending(entry) and release_purpose(entry) == TRENDING_PURPOSE


def is_popularity_release(entry: Mapping[str, Any]) -> bool:
    """Is this the entry of the popularity prior's count release?"""
    return is_trending(entry) and release_purpose(entry) == POPULARITY_PURPOSE


def popularity_release_entry(entries: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The popularity prior's count release of the run (after round 0, before the first training round), or
    None when the ledger has none."""
    found = [e for e in entries if is_popularity_release(e) and e.get("after_round") == 0]
    return found[0] if found else None


def is_start_check(entry: Mapping[str, Any]) -> bool:
    """Is this the entry of a start check (not of a training round)?"""
    return entry.get("kind") == START_CHECK_KIND


def read_entry(raw: Mapping[str, Any]) -> Entry:
    """The typed entry of a ledger line's fields; EntrySchemaError naming every missing or malformed field,
    or the schema when it is newer than SCHEMA."""
    schema = raw.get("schema", 1)
    if type(schema) is not int or schema < 1:
        raise EntrySchemaError(f"schema {schema!r} is not a schema version")
    if schema > SCHEMA:
        raise EntrySchemaError(f"entry of ledger schema {schema}; this fedhome reads schemas 1 to {SCHEMA}")
    kind = raw.get("kind")
    if kind is not None and kind not in NON_TRAINING_KINDS:
        raise EntrySchemaError(f"unknown entry kind {kind!r}")
    cls = ENTRY_CLASSES[kind]
    hints = get_type_hints(cls)
    required = (
        LEGACY_REQUIRED[cls] if schema == 1 else [f.name for f in fields(cls) if f.name not in OPTIONAL]
    )
    missing = [name for name in required if name not in raw]
    malformed = [f.name for f in fields(cls) if f.name in raw and not _conforms(raw[f.name], hints[f.name])]
    if missing or malformed:
        raise EntrySchemaError(f"missing fields {missing}, malformed fields {malformed}")
    return cls(**{f.name: raw[f.name] for f in fields(cls) if f.name in raw})


def _to_fields(entry: Entry) -> dict[str, Any]:
    out = {name: value for name, value in asdict(entry).items() if value is not None}
    return {**out, "schema": SCHEMA}


def _conforms(value: Any, hint: Any) -> bool:
    """Does a JSON value have the field's type? Numbers must be finite (an epsilon may be "inf"), ints are
    never booleans, floats accept JSON integers."""
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        return any(_conforms(value, option) for option in get_args(hint))
    if origin is Literal:
        return value in get_args(hint)
    if origin is dict:
        key_type, value_type = get_args(hint)
        return isinstance(value, dict) and all(
            _conforms(k, key_type) and (value_type is Any or _conforms(v, value_type))
            for k, v in value.items()
        )
    if hint is type(None):
        return value is None
    if hint is int:
        return type(value) is int
    if hint is float:
        return type(value) in (int, float) and _finite(value)
    if hint is str:
        return isinstance(value, str)
    return hint is Any


def _finite(number: int | float) -> bool:
    try:
        return math.isfinite(number)
    except OverflowError:  # an integer beyond float range
        return False
