"""A node's side of secure aggregation (shared/secagg_primitives.py; the server's side and the message flow
are in server/secagg/secure_round.py). Per round, three queries around the train message:

1. "secagg_keys": fresh X25519 key pairs (one to seal shares, one for masks) and a 32-byte self-mask seed
   b; the public keys go to the server.
2. "secagg_shares": the live neighbours' public keys -> Shamir shares of the mask private key and of b for
   each holder (the neighbours and this node; a strict majority rebuilds), each sealed for its holder.
3. train, with the shares sealed for this node: the node trains as usual, then sends
   y = Q(sum) + noise + PRG(b) + sum over neighbours j of (+-) PRG(s_ij) modulo 2^64, where Q is the
   fixed-point encoding and the noise its share of the round's discrete Gaussian noise (central mode).
   The server learns only the sum of the y's; it cannot read one node's sum.
4. "secagg_unmask": the survivors and the dropped -> the share of b of each surviving holder-peer and of
   the mask key of each dropped one, never both for the same node; the round's secrets are then deleted.

The secrets live only in the node's `context.state` for the round; nothing here is logged.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    ConfigRecordValues,
    Message,
    MetricRecord,
    MetricRecordValues,
    RecordDict,
)

from client.training.round_update import UpdateSum
from shared.errors import UpdateRejectedError
from shared.privacy.noise import GaussianNoise
from shared.record_values import as_float, as_int
from shared.secagg_primitives import (
    MASK_PURPOSE,
    SEAL_PURPOSE,
    agree,
    encode,
    mask,
    new_key_pair,
    new_secret,
    seal,
    seal_context,
    sensitivity,
    split_secret,
    threshold,
    unseal,
)

STATE = "secagg"  # context.state entry of the current round's secrets


def _header(message: Message) -> tuple[str, int, int, ConfigRecord]:
    settings = message.content.config_records["secagg"]
    run_id = str(settings["run-id"])
    return run_id, as_int(settings["round"], name="round"), as_int(settings["index"], name="index"), settings


def _ints(record: ConfigRecord, key: str) -> list[int]:
    values = record.get(key, [])
    if not isinstance(values, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in values
    ):
        raise UpdateRejectedError(f"secure aggregation: {key} is not a list of node indices")
    return [int(v) for v in values]


def _bytes(record: ConfigRecord, key: str) -> bytes:
    value = record.get(key)
    if not isinstance(value, bytes):
        raise UpdateRejectedError(f"secure aggregation: {key} is missing or not bytes")
    return value


def _round_state(state: RecordDict, run_id: str, round_number: int, index: int) -> ConfigRecord:
    """This round's secrets; UpdateRejectedError when the node holds none for this run, round and index (a
    replayed or out-of-order message)."""
    if STATE not in state.config_records:
        raise UpdateRejectedError("secure aggregation: no key exchange for this round on this node")
    record = state.config_records[STATE]
    if (str(record["run-id"]), record["round"], record["index"]) != (run_id, round_number, index):
        raise UpdateRejectedError("secure aggregation: a message for another run, round or node index")
    return record


def handle_keys(message: Message, state: RecordDict) -> Message:
    run_id, round_number, index, _ = _header(message)
    seal_keys, mask_keys = new_key_pair(), new_key_pair()
    state[STATE] = ConfigRecord(
        {
            "run-id": run_id,
            "round": round_number,
            "index": index,
            "stage": "keys",
            "seal-private": seal_keys.private,
            "mask-private": mask_keys.private,
            "b": new_secret(),
        }
    )
    reply = ConfigRecord({"seal-public": seal_keys.public, "mask-public": mask_keys.public})
    return Message(RecordDict({"keys": reply}), reply_to=message)


def handle_shares(message: Message, state: RecordDict) -> Message:
    """Split this node's mask key and b among its holders (live neighbours and itself), sealed for each."""
    run_id, round_number, index, settings = _header(message)
    record = _round_state(state, run_id, round_number, index)
    if record["stage"] != "keys":
        raise UpdateRejectedError("secure aggregation: shares asked twice in one round")
    peers = _ints(settings, "live")
    if index in peers or len(set(peers)) != len(peers):
        raise UpdateRejectedError("secure aggregation: a bad list of live neighbours")
    keys = message.content.config_records["keys"]
    holders = sorted([*peers, index])
    t = threshold(len(holders))
    mask_shares = split_secret(_bytes(record, "mask-private"), threshold=t, holders=len(holders))
    b_shares = split_secret(_bytes(record, "b"), threshold=t, holders=len(holders))
    sealed: dict[str, ConfigRecordValues] = {}
    seal_private = _bytes(record, "seal-private")
    for position, holder in enumerate(holders):
        share = mask_shares[position] + b_shares[position]
        if holder == index:
            record["own-share"] = share
            continue
        seal_public = _bytes(keys, f"seal-{holder}")
        record[f"seal-public-{holder}"] = seal_public
        record[f"mask-public-{holder}"] = _bytes(keys, f"mask-{holder}")
        key = agree(seal_private, seal_public, purpose=SEAL_PURPOSE)
        sealed[f"to-{holder}"] = seal(key, share, context=seal_context(run_id, round_number, index, holder))
    record["holders"], record["stage"] = holders, "shares"
    return Message(RecordDict({"shares": ConfigRecord(sealed)}), reply_to=message)


def is_secure(message: Message) -> bool:
    return "secagg" in message.content.config_records


def masked_content(
    message: Message,
    state: RecordDict,
    result: UpdateSum,
    stats: Mapping[str, MetricRecordValues],
    noise: GaussianNoise,
    *,
    noise_multiplier: float,
    bound: float,
    population: int,
) -> RecordDict:
    """The train reply under secure aggregation: the masked fixed-point sum (without the unclipped count:
    an exact count that only adaptive clipping, refused with secure aggregation, would need) and,
    in the clear, the counts the server needs to check the round (users summed, users refused).

    `noise_multiplier` is the z the node's own configuration requires of the released sum (0: none),
    `bound` the L2 bound of one user's contribution (C, or 1 for trending) and `population` the N the
    node knows: the noise share it is asked to add is checked against them (`check_noise_share`)."""
    run_id, round_number, index, settings = _header(message)
    record = _round_state(state, run_id, round_number, index)
    if record["stage"] != "shares":
        raise UpdateRejectedError("secure aggregation: a masked input before the shares, or twice")
    partners = _ints(settings, "mask-with")
    holders = _ints(record, "holders")
    if not set(partners) <= set(holders) - {index}:
        raise UpdateRejectedError("secure aggregation: mask partners that took no part in the key exchange")
    step = as_float(settings["step"], name="step")
    per_user_std = as_float(settings["noise-std-per-user"], name="noise-std-per-user")
    check_noise_share(
        settings,
        per_user_std,
        step=step,
        dim=int(result.total.size),
        count=result.count,
        noise_multiplier=noise_multiplier,
        bound=bound,
        population=population,
    )
    inbox = message.content.config_records["inbox"]
    for sender in partners:
        record[f"inbox-{sender}"] = _bytes(inbox, f"from-{sender}")
    words = encode(result.total.astype(np.float64), step=step)
    if per_user_std > 0 and result.count > 0:
        noise_words = noise.discrete(words.size, std=per_user_std * float(np.sqrt(result.count)))
        words = words + noise_words.view(np.uint64)
    words = words + mask(_bytes(record, "b"), words.size)
    own_mask_key = _bytes(record, "mask-private")
    for peer in partners:
        pair = mask(
            agree(own_mask_key, _bytes(record, f"mask-public-{peer}"), purpose=MASK_PURPOSE), words.size
        )
        words = words + pair if index < peer else words - pair
    record["stage"], record["mask-with"] = "masked", partners
    metrics = {k: v for k, v in stats.items() if k != "unclipped-count"}
    return RecordDict(
        {
            "update": ArrayRecord({"masked": Array(words)}),
            "stats": MetricRecord(metrics),
        }
    )


def check_noise_share(
    settings: ConfigRecord,
    per_user_std: float,
    *,
    step: float,
    dim: int,
    count: int,
    noise_multiplier: float,
    bound: float,
    population: int,
) -> None:
    """Refuse a round that asks this node for less noise than its share: the released sum must carry std
    z * C' (C' = bound + step * sqrt(dim), server/secagg/secure_round.py), of which a node summing `count`
    users of a cohort adds z * C' * sqrt(count / cohort), i.e. std z * C' / sqrt(cohort) per user. The
    cohort is the record's "cohort" when the server sends it (checked: count <= cohort <= N), else the
    node's population N, the largest cohort there can be."""
    if not (np.isfinite(per_user_std) and per_user_std >= 0 and np.isfinite(step) and step > 0):
        raise UpdateRejectedError("secure aggregation: a bad noise std or quantisation step")
    if noise_multiplier <= 0:
        return
    cohort = max(population, 1)
    if "cohort" in settings:
        cohort = as_int(settings["cohort"], name="cohort")
        if not count <= cohort <= max(population, count) or cohort < 1:
            raise UpdateRejectedError(f"secure aggregation: a cohort of {cohort} users is not possible")
    share = noise_multiplier * sensitivity(bound, step=step, dim=dim) / np.sqrt(cohort)  # per user
    if per_user_std * step < share * (1 - 1e-9):
        raise UpdateRejectedError(
            f"secure aggregation: asked for noise std {per_user_std * step:.3g} per user, below this "
            f"node's share {share:.3g} (z {noise_multiplier}, cohort {cohort})"
        )


def handle_unmask(message: Message, state: RecordDict) -> Message:
    """Shares of b for the survivors and of the mask key for the dropped, then forget the round."""
    run_id, round_number, index, settings = _header(message)
    record = _round_state(state, run_id, round_number, index)
    if record["stage"] != "masked":
        raise UpdateRejectedError("secure aggregation: unmasking asked before the masked input, or twice")
    survivors, dropped = set(_ints(settings, "survivors")), set(_ints(settings, "dropped"))
    holders = set(_ints(record, "holders"))
    if survivors & dropped or index not in survivors or not (survivors | dropped) <= holders:
        raise UpdateRejectedError("secure aggregation: an inconsistent list of survivors and dropped nodes")
    if dropped - set(_ints(record, "mask-with")):
        raise UpdateRejectedError("secure aggregation: a dropped node that this node did not mask with")
    if len(survivors) < threshold(len(holders)):
        raise UpdateRejectedError("secure aggregation: too few survivors for the sum to hide one node")
    out: dict[str, ConfigRecordValues] = {}
    seal_private = _bytes(record, "seal-private")
    for peer in sorted(survivors | dropped):
        if peer == index:
            share = _bytes(record, "own-share")
        else:
            key = agree(seal_private, _bytes(record, f"seal-public-{peer}"), purpose=SEAL_PURPOSE)
            share = unseal(
                key, _bytes(record, f"inbox-{peer}"), context=seal_context(run_id, round_number, peer, index)
            )
        half = len(share) // 2
        out[f"b-{peer}" if peer in survivors else f"mask-{peer}"] = (
            share[half:] if peer in survivors else share[:half]
        )
    del state[STATE]
    return Message(RecordDict({"unmask": ConfigRecord(out)}), reply_to=message)
