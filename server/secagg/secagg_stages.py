"""The four message stages of secure aggregation on the server (server/secagg/secure_round.py runs them
and releases the result): key exchange, secret sharing, masked inputs, unmasking. Each stage sends one
message to each live participant and keeps the first valid reply of each; a participant whose reply is
missing or malformed is out from that stage on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    ConfigRecordValues,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid

from server.rounds.messaging import check_reply_source
from shared.errors import UpdateRejectedError
from shared.record_values import as_int
from shared.secagg_primitives import MASK_PURPOSE, agree, combine_secret, mask, public_key, threshold

log = logging.getLogger(__name__)


@dataclass
class Participant:
    index: int
    node: int
    sample: np.ndarray  # the node's sampled slots
    seal_public: bytes = b""
    mask_public: bytes = b""
    live: tuple[int, ...] = ()  # neighbours that returned keys: with this node, its secrets' holders
    sealed: dict[int, bytes] = field(default_factory=dict)  # holder -> this node's share sealed for it
    masked: np.ndarray | None = None
    count: int = 0
    refused: int = 0

    @property
    def holders(self) -> list[int]:
        return sorted([*self.live, self.index])


Participants = dict[int, Participant]


class ProtocolFailed(Exception):
    pass


def query(
    grid: Grid, kind: str, contents: dict[int, RecordDict], parts: Participants, timeout_s: float
) -> Iterator[tuple[int, Message]]:
    """Send `kind` to the participants in `contents`; yield (index, reply content) for the first valid
    reply of each (errors and replies from nodes not asked are logged and dropped)."""
    by_node = {parts[i].node: i for i in contents}
    messages = [
        Message(content, dst_node_id=parts[i].node, message_type=kind) for i, content in contents.items()
    ]
    answered: set[int] = set()
    for reply in grid.send_and_receive(messages, timeout=timeout_s):
        node = reply.metadata.src_node_id
        try:
            check_reply_source(node, by_node, answered)
            if reply.has_error():
                raise UpdateRejectedError(f"the node reported an error: {reply.error.reason}")
        except UpdateRejectedError as exc:
            log.warning("secure aggregation (%s): a reply is dropped: %s", kind, exc)
            continue
        yield by_node[node], reply


def secagg_record(header: dict[str, Any], index: int, **more: Any) -> ConfigRecord:
    return ConfigRecord({**header, "index": index, **more})


def exchange_keys(
    grid: Grid, parts: Participants, graph: list[list[int]], header: dict[str, Any], timeout_s: float
) -> set[int]:
    contents = {i: RecordDict({"secagg": secagg_record(header, i)}) for i in parts}
    alive: set[int] = set()
    for i, reply in query(grid, f"{MessageType.QUERY}.secagg_keys", contents, parts, timeout_s):
        keys = reply.content.config_records.get("keys")
        seal_pub = keys.get("seal-public") if keys else None
        mask_pub = keys.get("mask-public") if keys else None
        if not (
            isinstance(seal_pub, bytes)
            and isinstance(mask_pub, bytes)
            and len(seal_pub) == len(mask_pub) == 32
        ):
            log.warning("secure aggregation: a node sent malformed public keys")
            continue
        parts[i].seal_public, parts[i].mask_public = seal_pub, mask_pub
        alive.add(i)
    for i in alive:
        parts[i].live = tuple(j for j in graph[i] if j in alive)
    return alive


def share_secrets(
    grid: Grid, parts: Participants, alive: set[int], header: dict[str, Any], timeout_s: float
) -> set[int]:
    contents = {}
    for i in alive:
        keys: dict[str, ConfigRecordValues] = {}
        for j in parts[i].live:
            keys[f"seal-{j}"], keys[f"mask-{j}"] = parts[j].seal_public, parts[j].mask_public
        contents[i] = RecordDict(
            {"secagg": secagg_record(header, i, live=list(parts[i].live)), "keys": ConfigRecord(keys)}
        )
    shared: set[int] = set()
    for i, reply in query(grid, f"{MessageType.QUERY}.secagg_shares", contents, parts, timeout_s):
        sealed = reply.content.config_records.get("shares", ConfigRecord({}))
        expected = {f"to-{j}" for j in parts[i].live}
        if set(sealed.keys()) != expected or not all(isinstance(v, bytes) for v in sealed.values()):
            log.warning("secure aggregation: a node sent the wrong set of sealed shares")
            continue
        parts[i].sealed = {int(key[3:]): bytes(value) for key, value in sealed.items()}  # type: ignore[arg-type]
        shared.add(i)
    return shared


Record = ArrayRecord | MetricRecord | ConfigRecord
ContentOf = Callable[[int], dict[str, Record]]  # a participant's own records of the masked-input message


def masked_inputs(
    grid: Grid,
    parts: Participants,
    alive: set[int],
    header: dict[str, Any],
    *,
    message_type: str,
    content_of: ContentOf,
    dim: int,
    step: float,
    timeout_s: float,
    per_user_std: float,
    cohort: int,
    on_reply: Callable[[Message], None] | None = None,
) -> tuple[list[int], list[int]]:
    """Send the masked-input messages (a train message, or a trending query: `content_of(i)` gives the
    records besides the protocol's own); returns (summed, dropped): the indices whose masked input arrived
    and the ones that shared their secrets but sent none (their masks must be removed). `on_reply` sees
    every well-formed reply first and may raise UpdateRejectedError to drop it. Each node is told the
    per-user noise std and the round's cohort (its sampled users over all nodes), so it can check that
    its share, per_user_std * sqrt(count), is what its own z asks (client/masked_update.py)."""
    contents = {}
    for i in sorted(alive):
        partners = [j for j in parts[i].live if j in alive]
        inbox: dict[str, ConfigRecordValues] = {f"from-{j}": parts[j].sealed[i] for j in partners}
        contents[i] = RecordDict(
            {
                **content_of(i),
                "secagg": secagg_record(
                    header,
                    i,
                    **{
                        "mask-with": partners,
                        "step": step,
                        "noise-std-per-user": per_user_std,
                        "cohort": cohort,
                    },
                ),
                "inbox": ConfigRecord(inbox),
            }
        )
    summed: list[int] = []
    for i, reply in query(grid, message_type, contents, parts, timeout_s):
        try:
            if on_reply is not None:
                on_reply(reply)
            masked = reply.content.array_records["update"]["masked"].numpy()
            stats = reply.content.metric_records["stats"]
            count = as_int(stats["count"], name="count")
            refused = as_int(stats.get("refused-count", 0), name="refused-count")
        except (KeyError, TypeError, ValueError, UpdateRejectedError) as exc:
            log.warning("secure aggregation: a malformed masked input is dropped: %s", exc)
            continue
        if masked.dtype != np.uint64 or masked.shape != (dim,) or count < 0 or refused < 0:
            log.warning("secure aggregation: a masked input of the wrong shape or type is dropped")
            continue
        if count + refused > len(parts[i].sample):  # fewer: sampled devices that dropped before training
            log.warning("secure aggregation: a masked input with wrong counts is dropped")
            continue
        parts[i].masked, parts[i].count, parts[i].refused = masked, count, refused
        summed.append(i)
    dropped = sorted(set(alive) - set(summed))
    return sorted(summed), dropped


def unmask(
    grid: Grid,
    parts: Participants,
    summed: list[int],
    dropped: list[int],
    header: dict[str, Any],
    *,
    dim: int,
    timeout_s: float,
) -> np.ndarray:
    if not summed:
        raise ProtocolFailed("no masked input arrived")
    survivors, gone = set(summed), set(dropped)
    contents = {}
    for j in summed:
        mine_s = [i for i in summed if j in parts[i].holders]
        mine_d = [i for i in dropped if j in parts[i].holders]
        contents[j] = RecordDict({"secagg": secagg_record(header, j, survivors=mine_s, dropped=mine_d)})
    b_shares: dict[int, dict[int, bytes]] = {i: {} for i in survivors}
    key_shares: dict[int, dict[int, bytes]] = {i: {} for i in gone}
    for j, reply in query(grid, f"{MessageType.QUERY}.secagg_unmask", contents, parts, timeout_s):
        shares = reply.content.config_records.get("unmask", ConfigRecord({}))
        for key, value in shares.items():
            kind, _, peer_text = key.partition("-")
            peer = int(peer_text) if peer_text.isdigit() else -1
            target = b_shares if kind == "b" else key_shares if kind == "mask" else None
            if target is None or peer not in target or not isinstance(value, bytes):
                continue
            if j in parts[peer].holders:
                target[peer][parts[peer].holders.index(j)] = value
    total = np.zeros(dim, np.uint64)
    for i in summed:
        seed = rebuild(b_shares[i], parts[i], what="self-mask seed")
        masked = parts[i].masked
        assert masked is not None
        total += masked - mask(seed, dim)
    for i in dropped:
        mask_key = rebuild(key_shares[i], parts[i], what="mask key")
        if public_key(mask_key) != parts[i].mask_public:
            raise ProtocolFailed("a rebuilt mask key does not match the node's public key")
        for j in parts[i].live:
            if j in survivors:
                pair = mask(agree(mask_key, parts[j].mask_public, purpose=MASK_PURPOSE), dim)
                total = total - pair if j < i else total + pair  # undo what survivor j added
    return total


def rebuild(shares: dict[int, bytes], part: Participant, *, what: str) -> bytes:
    try:
        return combine_secret(shares, threshold=threshold(len(part.holders)))
    except (UpdateRejectedError, ValueError) as exc:
        raise ProtocolFailed(f"could not rebuild a node's {what}: {exc}") from exc
