"""Stated maxima of every number a peer message carries, and the check that
holds a message to them.

Rules
-----
* A message with a field outside its range here is no message of this
  protocol, whoever sent it: :func:`paxoskv.paxos.codec.decode` refuses it
  (``CodecError``, which the bus counts as MALFORMED) and ``Core.step``
  drops it too (``Refusal.OUT_OF_RANGE``), so nothing of it is promised,
  persisted, remembered or answered, and a direct ``step()`` is as safe as
  the bus.
* :func:`check` is stateless and allocates nothing on success: one
  comparison per field, one per entry of a repeated field. What depends on
  the node's state (is this ballot its sender's, is this slot within the
  window, is this the promised ballot) is the core's business.
* The core never sends a value outside these ranges: it does not campaign
  once the next round would pass ``BALLOT_ROUND_MAX``, and it never
  proposes or accepts a slot past ``commit_index + ACCEPT_WINDOW_SLOTS``.

Why these values (``docs/design.md``, "Hostile input", has the argument for
the window): a million elections or slots a second for a thousand years is
3.2e16 < 2**55. ``BALLOT_ROUND_MAX = SLOT_MAX = 2**62`` leaves 2**7 times
that before the maxima and 2**62 below the uint64 encoding limit, so the
next election after the highest round a node accepts is still encodable,
and a value whose top two bits are set (most random garbage, a flipped high
bit) is refused. A single flipped bit below them leaves at least 2**61
rounds. What the maxima do not stop: a member that sends exactly
``BALLOT_ROUND_MAX`` on purpose stops elections (Paxos does not survive a
member that lies), but nothing it sends crashes a node or makes it
allocate without bound.

Field by field (``proto/paxoskv/v1/peer.proto``)
-------------------------------------------------
=========================================  ======================================
field                                      range
=========================================  ======================================
every ``Ballot.round``                     ``<= BALLOT_ROUND_MAX``
every ``Ballot.node``                      ``<= NODE_ID_MAX`` (uint32; the core
                                           checks membership or the sender)
``Entry.slot``, ``SlotValue.slot``,        ``1 .. SLOT_MAX``
``Accepted.slots``
commit, from/to slot, ``index``,           ``0 .. SLOT_MAX``
``snapshot_index``
``log_start``                              ``0 .. commit + 1`` (a node's log
                                           starts at most one past its commit)
``read_seq``                               ``0 .. READ_SEQ_MAX``
read ids                                   ``0 .. READ_ID_MAX`` (opaque echoes)
``features``                               ``0 .. FEATURES_MAX`` (uint32)
entries / slots per message                ``<= ENTRIES_PER_MESSAGE_MAX``
commands per value, per ``Forward``        ``<= COMMANDS_PER_MESSAGE_MAX``
read ids per message                       ``<= READ_IDS_PER_MESSAGE_MAX``
snapshot ``offset``, ``total_size``,       ``<= SNAPSHOT_BYTES_MAX``
``offset + len(data)``
``sha256``                                 empty or 32 bytes
value and command bytes                    bounded by the envelope:
                                           ``ENVELOPE_BYTES_MAX`` in the codec,
                                           the bus's ``frame_bytes_max`` before
=========================================  ======================================
"""

from __future__ import annotations

import enum
from collections.abc import Callable

from paxoskv.paxos.types import (
    MESSAGE_TYPES,
    Accept,
    Accepted,
    Ballot,
    CatchupReply,
    CatchupRequest,
    Entry,
    Forward,
    Heartbeat,
    HeartbeatAck,
    Message,
    Nack,
    PreVote,
    PreVoteReply,
    Prepare,
    Promise,
    ReadIndexReply,
    ReadIndexRequest,
    LeaseAnswer,
    LeaseAsk,
    SnapshotAck,
    SnapshotChunk,
    Value,
)

__all__ = [
    "ACCEPT_WINDOW_SLOTS",
    "BALLOT_ROUND_MAX",
    "COMMANDS_PER_MESSAGE_MAX",
    "ENTRIES_PER_MESSAGE_MAX",
    "ENVELOPE_BYTES_MAX",
    "FEATURES_MAX",
    "NODE_ID_MAX",
    "READ_IDS_PENDING_PER_PEER_MAX",
    "READ_IDS_PER_MESSAGE_MAX",
    "READ_ID_MAX",
    "READ_SEQ_MAX",
    "SLOT_MAX",
    "SNAPSHOT_BYTES_MAX",
    "CHECKS",
    "Refusal",
    "check",
]

BALLOT_ROUND_MAX = 1 << 62
SLOT_MAX = 1 << 62
# An acceptor accepts, and a learner learns, no slot past its own commit
# index plus this; a leader proposes none, and a new leader recovers none,
# past its own (docs/design.md, "Hostile input"). Far above any pipeline
# (Config.inflight_slots_max <= ACCEPT_WINDOW_SLOTS // 4; 16 by default)
# and any catch-up reply (512 entries by default). The same on every node:
# the recovery rule relies on it.
ACCEPT_WINDOW_SLOTS = 1 << 16
READ_SEQ_MAX = 1 << 62
READ_ID_MAX = (1 << 64) - 1  # uint64: ids are the sender's, only echoed back
NODE_ID_MAX = (1 << 32) - 1  # uint32 on the wire
FEATURES_MAX = (1 << 32) - 1  # uint32 on the wire
# A Promise may carry the chosen tail of the log (retain_entries, 10,000 by
# default); a CatchupReply Config.catchup_entries_max; an Accept the pipeline.
ENTRIES_PER_MESSAGE_MAX = 1 << 20
COMMANDS_PER_MESSAGE_MAX = 1 << 16  # Config.batch_commands_max / forward_commands_max <= it
READ_IDS_PER_MESSAGE_MAX = 1 << 20
# Read ids a leader holds for one peer until its next read round: more are
# answered "not confirmed" at once (the peer's clients see UNAVAILABLE).
READ_IDS_PENDING_PER_PEER_MAX = 1 << 17
SNAPSHOT_BYTES_MAX = 1 << 50  # 1 PiB
ENVELOPE_BYTES_MAX = 1 << 28  # 256 MiB: above any bus frame_bytes_max in use (64 MiB)
SHA256_BYTES = 32


class Refusal(enum.Enum):
    """Why the core dropped (part of) a peer message; ``Core.refused`` counts them."""

    OUT_OF_RANGE = "out_of_range"  # a field outside its range here (check())
    FOREIGN_BALLOT = "foreign_ballot"  # PreVote/Prepare/Accept/Heartbeat at a ballot not its sender's
    NOT_A_MEMBER = "not_a_member"  # a promised ballot, or an entry's, naming a non-member
    BEYOND_WINDOW = "beyond_window"  # slots (one by one) past commit_index + ACCEPT_WINDOW_SLOTS
    INCONSISTENT = "inconsistent"  # a Promise entry accepted above the ballot promised
    CONFLICT = "conflict"  # a chosen value that differs from the one known chosen here
    UNSOLICITED = "unsolicited"  # a catch-up reply not asked for, a read index not from the leader
    READ_SEQ_AHEAD = "read_seq_ahead"  # an ack of a read round the leader never started
    READS_OVER_LIMIT = "reads_over_limit"  # read ids past READ_IDS_PENDING_PER_PEER_MAX
    QUEUE_FULL = "queue_full"  # forwarded commands dropped: the leader's queue is full
    ROUNDS_EXHAUSTED = "rounds_exhausted"  # no election: the next round would pass BALLOT_ROUND_MAX


def check(msg: Message) -> str | None:
    """Why ``msg`` is outside the ranges of this module, or None when it is not."""
    checker = CHECKS.get(type(msg))
    return None if checker is None else checker(msg)


# ---- per message type ---------------------------------------------------------


def _ballot(b: Ballot, where: str) -> str | None:
    if b.round > BALLOT_ROUND_MAX:
        return f"{where}: ballot round {b.round} > BALLOT_ROUND_MAX ({BALLOT_ROUND_MAX})"
    if b.node > NODE_ID_MAX:
        return f"{where}: ballot node {b.node} > {NODE_ID_MAX}"
    return None


def _index(value: int, name: str, where: str) -> str | None:
    if 0 <= value <= SLOT_MAX:
        return None
    return f"{where}.{name}: {value} not in [0, SLOT_MAX ({SLOT_MAX})]"


def _log_start(log_start: int, commit: int, where: str) -> str | None:
    if 0 <= log_start <= commit + 1:
        return None
    return f"{where}.log_start: {log_start} not in [0, commit + 1 = {commit + 1}]"


def _value(slot: int, value: Value, where: str) -> str | None:
    if not 1 <= slot <= SLOT_MAX:
        return f"{where}: slot {slot} not in [1, SLOT_MAX ({SLOT_MAX})]"
    if len(value) > COMMANDS_PER_MESSAGE_MAX:
        return f"{where}: slot {slot} has {len(value)} commands > COMMANDS_PER_MESSAGE_MAX ({COMMANDS_PER_MESSAGE_MAX})"
    return None


def _slot_values(pairs: tuple[tuple[int, Value], ...], where: str) -> str | None:
    if len(pairs) > ENTRIES_PER_MESSAGE_MAX:
        return f"{where}: {len(pairs)} entries > ENTRIES_PER_MESSAGE_MAX ({ENTRIES_PER_MESSAGE_MAX})"
    for slot, value in pairs:
        if not 1 <= slot <= SLOT_MAX or len(value) > COMMANDS_PER_MESSAGE_MAX:
            return _value(slot, value, where)
    return None


def _entries(entries: tuple[Entry, ...], where: str) -> str | None:
    if len(entries) > ENTRIES_PER_MESSAGE_MAX:
        return f"{where}: {len(entries)} entries > ENTRIES_PER_MESSAGE_MAX ({ENTRIES_PER_MESSAGE_MAX})"
    for e in entries:
        reason = _value(e.slot, e.value, where) or _ballot(e.ballot, f"{where} slot {e.slot}")
        if reason is not None:
            return reason
    return None


def _read_ids(ids: tuple[int, ...], where: str) -> str | None:
    if len(ids) > READ_IDS_PER_MESSAGE_MAX:
        return f"{where}: {len(ids)} read ids > READ_IDS_PER_MESSAGE_MAX ({READ_IDS_PER_MESSAGE_MAX})"
    for rid in ids:
        if not 0 <= rid <= READ_ID_MAX:
            return f"{where}: read id {rid} not in [0, {READ_ID_MAX}]"
    return None


def _read_seq(seq: int, where: str) -> str | None:
    if 0 <= seq <= READ_SEQ_MAX:
        return None
    return f"{where}.read_seq: {seq} not in [0, READ_SEQ_MAX ({READ_SEQ_MAX})]"


def _features(features: int, where: str) -> str | None:
    if 0 <= features <= FEATURES_MAX:
        return None
    return f"{where}.features: {features} not in [0, {FEATURES_MAX}]"


def _snapshot_bytes(value: int, name: str, where: str) -> str | None:
    if 0 <= value <= SNAPSHOT_BYTES_MAX:
        return None
    return f"{where}.{name}: {value} not in [0, SNAPSHOT_BYTES_MAX ({SNAPSHOT_BYTES_MAX})]"


def _check_pre_vote(m: PreVote) -> str | None:
    return _ballot(m.ballot, "pre_vote") or _index(m.commit, "commit", "pre_vote")


def _check_pre_vote_reply(m: PreVoteReply) -> str | None:
    return _ballot(m.ballot, "pre_vote_reply") or _ballot(m.promised, "pre_vote_reply.promised")


def _check_prepare(m: Prepare) -> str | None:
    return _ballot(m.ballot, "prepare") or _index(m.from_slot, "from_slot", "prepare")


def _check_promise(m: Promise) -> str | None:
    return (
        _ballot(m.ballot, "promise")
        or _entries(m.accepted, "promise.accepted")
        or _slot_values(m.chosen, "promise.chosen")
        or _index(m.commit, "commit", "promise")
        or _log_start(m.log_start, m.commit, "promise")
    )


def _check_nack(m: Nack) -> str | None:
    return _ballot(m.ballot, "nack") or _ballot(m.promised, "nack.promised")


def _check_accept(m: Accept) -> str | None:
    b = m.ballot
    if b.round > BALLOT_ROUND_MAX or b.node > NODE_ID_MAX:
        return _ballot(b, "accept")
    if not 0 <= m.commit <= SLOT_MAX:
        return _index(m.commit, "commit", "accept")
    return _slot_values(m.entries, "accept.entries")


def _check_accepted(m: Accepted) -> str | None:
    b = m.ballot
    if b.round > BALLOT_ROUND_MAX or b.node > NODE_ID_MAX:
        return _ballot(b, "accepted")
    slots = m.slots
    if len(slots) > ENTRIES_PER_MESSAGE_MAX:
        return f"accepted: {len(slots)} slots > ENTRIES_PER_MESSAGE_MAX ({ENTRIES_PER_MESSAGE_MAX})"
    for slot in slots:
        if not 1 <= slot <= SLOT_MAX:
            return f"accepted: slot {slot} not in [1, SLOT_MAX ({SLOT_MAX})]"
    return None


def _round_trip(m: Heartbeat | HeartbeatAck, where: str) -> str | None:
    """The fields a Heartbeat and its ack share (the fast path: four comparisons)."""
    b = m.ballot
    if (
        b.round > BALLOT_ROUND_MAX
        or b.node > NODE_ID_MAX
        or not 0 <= m.read_seq <= READ_SEQ_MAX
        or not 0 <= m.features <= FEATURES_MAX
    ):
        return _ballot(b, where) or _read_seq(m.read_seq, where) or _features(m.features, where)
    return None


def _check_heartbeat(m: Heartbeat) -> str | None:
    if 0 <= m.commit <= SLOT_MAX:
        return _round_trip(m, "heartbeat")
    return _index(m.commit, "commit", "heartbeat")


def _check_heartbeat_ack(m: HeartbeatAck) -> str | None:
    return _round_trip(m, "heartbeat_ack")


def _check_catchup_request(m: CatchupRequest) -> str | None:
    return _index(m.from_slot, "from_slot", "catchup_request") or _index(m.to_slot, "to_slot", "catchup_request")


def _check_catchup_reply(m: CatchupReply) -> str | None:
    return (
        _slot_values(m.chosen, "catchup_reply.chosen")
        or _index(m.commit, "commit", "catchup_reply")
        or _log_start(m.log_start, m.commit, "catchup_reply")
    )


def _check_forward(m: Forward) -> str | None:
    if len(m.commands) > COMMANDS_PER_MESSAGE_MAX:
        return f"forward: {len(m.commands)} commands > COMMANDS_PER_MESSAGE_MAX ({COMMANDS_PER_MESSAGE_MAX})"
    return None


def _check_read_index_request(m: ReadIndexRequest) -> str | None:
    return _read_ids(m.read_ids, "read_index_request") or _ballot(m.ballot, "read_index_request")


def _check_read_index_reply(m: ReadIndexReply) -> str | None:
    return _read_ids(m.read_ids, "read_index_reply") or _index(m.index, "index", "read_index_reply")


def _check_snapshot_chunk(m: SnapshotChunk) -> str | None:
    reason = (
        _index(m.snapshot_index, "snapshot_index", "snapshot_chunk")
        or _snapshot_bytes(m.offset, "offset", "snapshot_chunk")
        or _snapshot_bytes(m.total_size, "total_size", "snapshot_chunk")
        or _snapshot_bytes(m.offset + len(m.data), "offset + len(data)", "snapshot_chunk")
    )
    if reason is None and len(m.sha256) not in (0, SHA256_BYTES):
        reason = f"snapshot_chunk.sha256: {len(m.sha256)} bytes, not 0 or {SHA256_BYTES}"
    return reason


def _check_snapshot_ack(m: SnapshotAck) -> str | None:
    return _index(m.snapshot_index, "snapshot_index", "snapshot_ack") or _snapshot_bytes(
        m.offset, "offset", "snapshot_ack"
    )


ASK_ID_MAX = (1 << 63) - 1
LEASE_TTL_MAX = 9_000_000_000  # seconds: etcd's MaxLeaseTTL (kv.lease.MAX_LEASE_TTL)


def _check_lease_ask(m: LeaseAsk) -> str | None:
    if not 0 <= m.ask_id <= ASK_ID_MAX:
        return f"lease_ask.ask_id: {m.ask_id} not in [0, {ASK_ID_MAX}]"
    return _index(m.applied, "applied", "lease_ask")


def _check_lease_answer(m: LeaseAnswer) -> str | None:
    if not 0 <= m.ask_id <= ASK_ID_MAX:
        return f"lease_answer.ask_id: {m.ask_id} not in [0, {ASK_ID_MAX}]"
    if not -1 <= m.ttl_ms <= LEASE_TTL_MAX * 1000:
        return f"lease_answer.ttl_ms: {m.ttl_ms} not in [-1, {LEASE_TTL_MAX * 1000}]"
    if not 0 <= m.granted_ttl <= LEASE_TTL_MAX:
        return f"lease_answer.granted_ttl: {m.granted_ttl} not in [0, {LEASE_TTL_MAX}]"
    return None


# The check of each message type (check() dispatches here; the core keeps
# each next to its handler).
CHECKS: dict[type, Callable[[Message], str | None]] = {
    PreVote: _check_pre_vote,  # type: ignore[dict-item]
    PreVoteReply: _check_pre_vote_reply,  # type: ignore[dict-item]
    Prepare: _check_prepare,  # type: ignore[dict-item]
    Promise: _check_promise,  # type: ignore[dict-item]
    Nack: _check_nack,  # type: ignore[dict-item]
    Accept: _check_accept,  # type: ignore[dict-item]
    Accepted: _check_accepted,  # type: ignore[dict-item]
    Heartbeat: _check_heartbeat,  # type: ignore[dict-item]
    HeartbeatAck: _check_heartbeat_ack,  # type: ignore[dict-item]
    CatchupRequest: _check_catchup_request,  # type: ignore[dict-item]
    CatchupReply: _check_catchup_reply,  # type: ignore[dict-item]
    Forward: _check_forward,  # type: ignore[dict-item]
    ReadIndexRequest: _check_read_index_request,  # type: ignore[dict-item]
    ReadIndexReply: _check_read_index_reply,  # type: ignore[dict-item]
    SnapshotChunk: _check_snapshot_chunk,  # type: ignore[dict-item]
    SnapshotAck: _check_snapshot_ack,  # type: ignore[dict-item]
    LeaseAsk: _check_lease_ask,  # type: ignore[dict-item]
    LeaseAnswer: _check_lease_answer,  # type: ignore[dict-item]
}

assert set(CHECKS) == set(MESSAGE_TYPES), "every message type has its check"
