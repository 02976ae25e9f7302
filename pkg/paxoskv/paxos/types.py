"""Value objects of the consensus core: ballots, entries, messages, Ready.

Everything here is immutable (frozen, slotted dataclasses) and free of I/O.
The wire codec (:mod:`paxoskv.paxos.codec`) maps messages to and from the
protobuf ``Envelope`` of ``proto/paxoskv/v1/peer.proto`` one to one.

A slot's value is a ``Value``: a tuple of opaque command payloads (encoded
``paxoskv.v1.Command`` messages). The empty tuple is the no-op that fills a
hole after a leader change.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

Value = tuple[bytes, ...]
NOOP: Value = ()


@dataclass(frozen=True, slots=True, order=True)
class Ballot:
    """A proposal number ``(round, node)``: totally ordered, round first."""

    round: int
    node: int

    def __post_init__(self) -> None:
        if self.round < 0 or self.node < 0:
            raise ValueError(f"ballot fields must be >= 0: {self.round}.{self.node}")

    def __str__(self) -> str:
        return f"{self.round}.{self.node}"


ZERO_BALLOT = Ballot(0, 0)


@dataclass(frozen=True, slots=True)
class Entry:
    """An accepted value of a slot, at the ballot it was accepted at."""

    slot: int
    ballot: Ballot
    value: Value


class Role(enum.Enum):
    FOLLOWER = "follower"
    PRECANDIDATE = "precandidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


# ---- Messages -----------------------------------------------------------------
# Every message names its sender (frm) and receiver (to); node ids are >= 1.


@dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    frm: int
    to: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PreVote(Message):
    ballot: Ballot
    commit: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PreVoteReply(Message):
    ballot: Ballot
    granted: bool
    promised: Ballot


@dataclass(frozen=True, slots=True, kw_only=True)
class Prepare(Message):
    ballot: Ballot
    from_slot: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Promise(Message):
    ballot: Ballot
    accepted: tuple[Entry, ...]
    chosen: tuple[tuple[int, Value], ...]
    commit: int
    log_start: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Nack(Message):
    ballot: Ballot
    promised: Ballot


@dataclass(frozen=True, slots=True, kw_only=True)
class Accept(Message):
    ballot: Ballot
    entries: tuple[tuple[int, Value], ...]
    commit: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Accepted(Message):
    ballot: Ballot
    slots: tuple[int, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Heartbeat(Message):
    ballot: Ballot
    commit: int
    read_seq: int
    features: int = 0  # the features every member has, as the leader knows them


@dataclass(frozen=True, slots=True, kw_only=True)
class HeartbeatAck(Message):
    ballot: Ballot
    read_seq: int
    features: int = 0  # the sender's own (Config.features)


@dataclass(frozen=True, slots=True, kw_only=True)
class CatchupRequest(Message):
    from_slot: int
    to_slot: int


@dataclass(frozen=True, slots=True, kw_only=True)
class CatchupReply(Message):
    chosen: tuple[tuple[int, Value], ...]
    commit: int
    log_start: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Forward(Message):
    commands: tuple[bytes, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadIndexRequest(Message):
    read_ids: tuple[int, ...]
    ballot: Ballot = ZERO_BALLOT  # what the sender had promised when it sent this


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadIndexReply(Message):
    read_ids: tuple[int, ...]
    index: int
    ok: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotChunk(Message):
    snapshot_index: int
    offset: int
    data: bytes
    last: bool
    total_size: int
    sha256: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotAck(Message):
    snapshot_index: int
    offset: int
    done: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class LeaseAsk(Message):
    """A follower's lease call forwarded to the leader (the replica's, not the core's)."""

    ask_id: int
    lease_id: int
    renew: bool
    applied: int = 0  # the asker's applied index: answered once the leader applied as much


@dataclass(frozen=True, slots=True, kw_only=True)
class LeaseAnswer(Message):
    ask_id: int
    lease_id: int
    ttl_ms: int  # renew: the granted TTL in ms (0: no such lease); else the time left (-1: none)
    granted_ttl: int  # seconds


MESSAGE_TYPES: tuple[type[Message], ...] = (
    PreVote,
    PreVoteReply,
    Prepare,
    Promise,
    Nack,
    Accept,
    Accepted,
    Heartbeat,
    HeartbeatAck,
    CatchupRequest,
    CatchupReply,
    Forward,
    ReadIndexRequest,
    ReadIndexReply,
    SnapshotChunk,
    SnapshotAck,
    LeaseAsk,
    LeaseAnswer,
)

# The messages a replica handles itself (after the codec): never the core's.
REPLICA_MESSAGES: tuple[type[Message], ...] = (SnapshotChunk, SnapshotAck, LeaseAsk, LeaseAnswer)


# ---- Output -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReadState:
    """A linearizable read that may be served once ``applied >= index``.

    ``ok`` False means the read could not be confirmed (leadership lost, no
    leader known): the runtime answers the client UNAVAILABLE.
    """

    read_id: int
    index: int
    ok: bool


@dataclass(slots=True)
class Ready:
    """What the runtime must do, in this order.

    0. ``messages_early`` may be sent at once, before the write: the leader's
       Accepts, which vouch for nothing on this node's disk (the leader counts
       its own acceptance only in ``advance``, after the write), and the
       leader's own Accepted, which vouch for acceptances an earlier Ready
       made durable.
    1. Persist ``promised`` (if not None) and ``accepted`` in one synced write
       (``must_sync``), and record ``chosen`` entries (they need no sync).
    2. Only then send ``messages``.
    3. Apply ``committed`` in slot order (contiguous, from applied+1), answer
       the clients waiting on them, and serve ``reads`` whose index is applied.
    4. Call ``core.advance(ready)``.
    """

    promised: Ballot | None = None
    accepted: list[Entry] = field(default_factory=list)
    chosen: list[tuple[int, Value]] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    messages_early: list[Message] = field(default_factory=list)
    committed: list[tuple[int, Value]] = field(default_factory=list)
    reads: list[ReadState] = field(default_factory=list)
    # Catch-up hit a peer that compacted the entries we need: fetch a snapshot
    # from this node (the runtime transfers it, then calls install_snapshot).
    snapshot_from: int | None = None

    @property
    def must_sync(self) -> bool:
        return self.promised is not None or bool(self.accepted)

    def empty(self) -> bool:
        return not (
            self.promised is not None
            or self.accepted
            or self.chosen
            or self.messages
            or self.messages_early
            or self.committed
            or self.reads
            or self.snapshot_from is not None
        )


# Features a node's binary may support, announced in HeartbeatAck and
# aggregated by the leader into Heartbeat.features (see Core.cluster_features).
# A node of an older version announces none (the field is absent: 0).
FEATURE_PACKED_BATCHES = 1  # kv.proto BatchOp.request: one exactly-once identity per batch
FEATURES = FEATURE_PACKED_BATCHES


@dataclass(frozen=True, slots=True)
class Config:
    """Static configuration of one core. Units go last in names."""

    node_id: int
    peers: tuple[int, ...]  # every node id of the cluster, this one included
    heartbeat_ticks: int = 1
    election_ticks_min: int = 10  # timeout drawn from [min, 2*min)
    batch_commands_max: int = 1024  # commands per slot
    batch_bytes_max: int = 1 << 20  # payload bytes per slot
    inflight_slots_max: int = 16  # pipeline depth
    catchup_entries_max: int = 512  # chosen entries per CatchupReply
    forward_commands_max: int = 1024  # commands per Forward message
    queue_commands_max: int = 100_000  # commands waiting for a slot (backpressure)
    queue_bytes_max: int = 64 << 20  # their bytes (a peer's Forwards fill it too)
    features: int = FEATURES  # what this node's binary supports (FEATURE_* bits)

    def __post_init__(self) -> None:
        if self.node_id not in self.peers:
            raise ValueError(f"node {self.node_id} is not in peers {self.peers}")
        if len(set(self.peers)) != len(self.peers) or min(self.peers) < 1:
            raise ValueError(f"peers must be distinct ids >= 1: {self.peers}")
        if self.heartbeat_ticks < 1 or self.election_ticks_min <= 2 * self.heartbeat_ticks:
            raise ValueError("need 1 <= heartbeat_ticks and election_ticks_min > 2*heartbeat_ticks")
        from paxoskv.paxos import bounds  # it imports this module: not at the top

        # The pipeline stays far inside the window every acceptor holds to.
        if not 1 <= self.inflight_slots_max <= bounds.ACCEPT_WINDOW_SLOTS // 4:
            raise ValueError(f"inflight_slots_max must be in [1, {bounds.ACCEPT_WINDOW_SLOTS // 4}]")
        for name in ("batch_commands_max", "forward_commands_max"):
            if not 1 <= getattr(self, name) <= bounds.COMMANDS_PER_MESSAGE_MAX:
                raise ValueError(f"{name} must be in [1, {bounds.COMMANDS_PER_MESSAGE_MAX}]")

    @property
    def quorum(self) -> int:
        return len(self.peers) // 2 + 1
