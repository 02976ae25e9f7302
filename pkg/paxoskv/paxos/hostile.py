"""Hostile peer messages, for the tests and the simulator.

Rules
-----
* Every message made here breaks a rule the node enforces
  (:mod:`paxoskv.paxos.bounds`, or a check of the core named by its
  ``Refusal``), so a correct node drops it, or its hostile part, and
  neither agreement nor its memory suffers. Messages that only
  authentication can stop (a member's lie that looks like the truth: a
  forged Accept at the leader's ballot with a commit point covering it, a
  made-up Promise or Accepted, a Forward of real commands) are not made:
  no check of values can tell them from the truth.
* :func:`past_the_maxima` lists, for every numeric field of every message
  type, a message with that field one past its maximum (still encodable:
  the codec must refuse it, not fail to build it); :func:`past_the_counts`
  the same for the counts per message (large messages).
* :func:`forge` draws one hostile message for ``victim`` from ``frm`` (a
  member), aimed with what the victim's core shows (its commit point, its
  ballots, its read round), from the injected ``random.Random`` only. It is
  meant to be stepped at once, as the victim's state at that moment makes
  it refusable (a read-index answer from a non-leader, say).
* :func:`inject` is the hook for a driver (the simulator, the tests): it
  forges from a random other member, passes the message through the wire
  codec half the time (as the bus would: a ``CodecError`` drops it), and
  steps what is left into the victim at once.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING

from paxoskv.paxos import bounds, codec
from paxoskv.paxos.types import (
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
    REPLICA_MESSAGES,
    LeaseAnswer,
    LeaseAsk,
    SnapshotAck,
    SnapshotChunk,
)

if TYPE_CHECKING:
    from paxoskv.paxos.core import Core

__all__ = ["FORGED", "forge", "inject", "past_the_counts", "past_the_maxima"]

U64_MAX = (1 << 64) - 1
_ROUND = bounds.BALLOT_ROUND_MAX + 1
_SLOT = bounds.SLOT_MAX + 1


# The command every forged value carries: a driver checks none is ever applied.
FORGED = b"forged"


def past_the_maxima(frm: int = 2, to: int = 1) -> list[tuple[str, Message]]:
    """``(field, message)`` for every numeric field of every message type,
    set one past its maximum; every other field is valid."""
    ok = Ballot(3, frm)
    big = Ballot(_ROUND, frm)
    k = {"frm": frm, "to": to}
    return [
        ("pre_vote.ballot", PreVote(**k, ballot=big, commit=0)),
        ("pre_vote.commit", PreVote(**k, ballot=ok, commit=_SLOT)),
        ("pre_vote_reply.ballot", PreVoteReply(**k, ballot=big, granted=True, promised=ok)),
        ("pre_vote_reply.promised", PreVoteReply(**k, ballot=ok, granted=False, promised=big)),
        ("prepare.ballot", Prepare(**k, ballot=big, from_slot=1)),
        ("prepare.from_slot", Prepare(**k, ballot=ok, from_slot=_SLOT)),
        ("promise.ballot", Promise(**k, ballot=big, accepted=(), chosen=(), commit=0, log_start=1)),
        (
            "promise.accepted.slot",
            Promise(**k, ballot=ok, accepted=(Entry(_SLOT, ok, ()),), chosen=(), commit=0, log_start=1),
        ),
        (
            "promise.accepted.ballot",
            Promise(**k, ballot=ok, accepted=(Entry(5, big, ()),), chosen=(), commit=0, log_start=1),
        ),
        ("promise.chosen.slot", Promise(**k, ballot=ok, accepted=(), chosen=((_SLOT, ()),), commit=0, log_start=1)),
        ("promise.commit", Promise(**k, ballot=ok, accepted=(), chosen=(), commit=_SLOT, log_start=1)),
        ("promise.log_start", Promise(**k, ballot=ok, accepted=(), chosen=(), commit=7, log_start=9)),
        ("nack.ballot", Nack(**k, ballot=big, promised=ok)),
        ("nack.promised", Nack(**k, ballot=ok, promised=big)),
        ("accept.ballot", Accept(**k, ballot=big, entries=((1, (b"x",)),), commit=0)),
        ("accept.entries.slot", Accept(**k, ballot=ok, entries=((_SLOT, (b"x",)),), commit=0)),
        ("accept.entries.slot zero", Accept(**k, ballot=ok, entries=((0, (b"x",)),), commit=0)),
        ("accept.commit", Accept(**k, ballot=ok, entries=(), commit=_SLOT)),
        ("accepted.ballot", Accepted(**k, ballot=big, slots=(1,))),
        ("accepted.slots", Accepted(**k, ballot=ok, slots=(1, _SLOT))),
        ("heartbeat.ballot", Heartbeat(**k, ballot=big, commit=0, read_seq=0)),
        ("heartbeat.commit", Heartbeat(**k, ballot=ok, commit=_SLOT, read_seq=0)),
        ("heartbeat.read_seq", Heartbeat(**k, ballot=ok, commit=0, read_seq=bounds.READ_SEQ_MAX + 1)),
        ("heartbeat_ack.ballot", HeartbeatAck(**k, ballot=big, read_seq=0)),
        ("heartbeat_ack.read_seq", HeartbeatAck(**k, ballot=ok, read_seq=bounds.READ_SEQ_MAX + 1)),
        ("catchup_request.from_slot", CatchupRequest(**k, from_slot=_SLOT, to_slot=1)),
        ("catchup_request.to_slot", CatchupRequest(**k, from_slot=1, to_slot=_SLOT)),
        ("catchup_reply.chosen.slot", CatchupReply(**k, chosen=((_SLOT, ()),), commit=0, log_start=1)),
        ("catchup_reply.commit", CatchupReply(**k, chosen=(), commit=_SLOT, log_start=1)),
        ("catchup_reply.log_start", CatchupReply(**k, chosen=(), commit=0, log_start=2)),
        ("read_index_request.ballot", ReadIndexRequest(**k, read_ids=(1,), ballot=big)),
        ("read_index_reply.index", ReadIndexReply(**k, read_ids=(1,), index=_SLOT, ok=True)),
        (
            "snapshot_chunk.snapshot_index",
            SnapshotChunk(**k, snapshot_index=_SLOT, offset=0, data=b"", last=False, total_size=0, sha256=b""),
        ),
        (
            "snapshot_chunk.offset",
            SnapshotChunk(
                **k,
                snapshot_index=1,
                offset=bounds.SNAPSHOT_BYTES_MAX + 1,
                data=b"",
                last=False,
                total_size=0,
                sha256=b"",
            ),
        ),
        (
            "snapshot_chunk.offset + len(data)",
            SnapshotChunk(
                **k, snapshot_index=1, offset=bounds.SNAPSHOT_BYTES_MAX, data=b"x", last=False, total_size=0, sha256=b""
            ),
        ),
        (
            "snapshot_chunk.total_size",
            SnapshotChunk(
                **k,
                snapshot_index=1,
                offset=0,
                data=b"",
                last=True,
                total_size=bounds.SNAPSHOT_BYTES_MAX + 1,
                sha256=b"",
            ),
        ),
        (
            "snapshot_chunk.sha256",
            SnapshotChunk(**k, snapshot_index=1, offset=0, data=b"", last=True, total_size=0, sha256=b"\x00" * 31),
        ),
        ("snapshot_ack.snapshot_index", SnapshotAck(**k, snapshot_index=_SLOT, offset=0, done=False)),
        ("snapshot_ack.offset", SnapshotAck(**k, snapshot_index=1, offset=bounds.SNAPSHOT_BYTES_MAX + 1, done=False)),
        ("lease_ask.ask_id", LeaseAsk(**k, ask_id=bounds.ASK_ID_MAX + 1, lease_id=1, renew=True)),
        ("lease_ask.applied", LeaseAsk(**k, ask_id=1, lease_id=1, renew=True, applied=_SLOT)),
        ("lease_answer.ttl_ms", LeaseAnswer(**k, ask_id=1, lease_id=1, ttl_ms=-2, granted_ttl=0)),
        (
            "lease_answer.granted_ttl",
            LeaseAnswer(**k, ask_id=1, lease_id=1, ttl_ms=0, granted_ttl=bounds.LEASE_TTL_MAX + 1),
        ),
    ]


def past_the_counts(frm: int = 2, to: int = 1) -> list[tuple[str, Message]]:
    """``(field, message)`` for every repeated field, one element past its
    count per message (each message is a few MiB encoded)."""
    ok = Ballot(3, frm)
    k = {"frm": frm, "to": to}
    commands = (b"",) * (bounds.COMMANDS_PER_MESSAGE_MAX + 1)
    entries = bounds.ENTRIES_PER_MESSAGE_MAX + 1
    pairs = tuple((s, ()) for s in range(1, entries + 1))
    ids = tuple(range(bounds.READ_IDS_PER_MESSAGE_MAX + 1))
    return [
        ("forward.commands", Forward(**k, commands=commands)),
        ("accept.entries.commands", Accept(**k, ballot=ok, entries=((1, commands),), commit=0)),
        ("accept.entries", Accept(**k, ballot=ok, entries=pairs, commit=0)),
        ("accepted.slots", Accepted(**k, ballot=ok, slots=tuple(range(1, entries + 1)))),
        ("catchup_reply.chosen", CatchupReply(**k, chosen=pairs, commit=entries, log_start=1)),
        (
            "promise.accepted",
            Promise(
                **k, ballot=ok, accepted=tuple(Entry(s, ok, ()) for s, _ in pairs), chosen=(), commit=0, log_start=1
            ),
        ),
        ("read_index_request.read_ids", ReadIndexRequest(**k, read_ids=ids)),
        ("read_index_reply.read_ids", ReadIndexReply(**k, read_ids=ids, index=0, ok=False)),
    ]


# ---- forge ----------------------------------------------------------------------


def inject(rng: random.Random, victim: Core, step: Callable[[Message], None]) -> str:
    """Forge one hostile message for ``victim`` from a random other member
    and hand it to ``step`` (the victim's ``Replica.step`` or ``Core.step``);
    half the time through the codec first, as the bus would. Returns what
    became of it: ``"codec"`` (refused by the codec) or ``"stepped"``."""
    frm = rng.choice([p for p in victim.config.peers if p != victim.id])
    msg = forge(rng, victim, frm)
    if rng.random() < 0.5:
        try:
            _, msg = codec.decode(codec.encode(msg, "hostile"))
        except codec.CodecError:
            return "codec"
    step(msg)
    return "stepped"


def forge(rng: random.Random, victim: Core, frm: int) -> Message:
    """One hostile message for the core ``victim`` (read only) from member
    ``frm``; see the module docstring."""
    make = rng.choice(_FORGERS)
    return make(rng, victim, frm)


def _huge(rng: random.Random, limit: int) -> int:
    """A value past ``limit``, still a uint64."""
    return rng.choice((limit + 1, U64_MAX, rng.randint(limit + 1, U64_MAX)))


def _out_of_range(rng: random.Random, victim: Core, frm: int) -> Message:
    # Not the snapshot messages: the replica handles those, after the codec.
    cases = [m for _, m in past_the_maxima(frm, victim.id) if not isinstance(m, REPLICA_MESSAGES)]
    return rng.choice(cases)


def _huge_round(rng: random.Random, victim: Core, frm: int) -> Message:
    """The first attack of issue 17: a round an election cannot pass."""
    ballot = Ballot(_huge(rng, bounds.BALLOT_ROUND_MAX), frm)
    to = victim.id
    slot = victim.commit_index + 1
    return rng.choice(
        (
            Accept(frm=frm, to=to, ballot=ballot, entries=((slot, (FORGED,)),), commit=slot),
            Prepare(frm=frm, to=to, ballot=ballot, from_slot=slot),
            PreVote(frm=frm, to=to, ballot=ballot, commit=_huge(rng, bounds.SLOT_MAX)),
            Heartbeat(frm=frm, to=to, ballot=ballot, commit=slot, read_seq=0),
            Nack(frm=frm, to=to, ballot=victim.ballot, promised=ballot),
            PreVoteReply(frm=frm, to=to, ballot=victim.ballot, granted=True, promised=ballot),
        )
    )


def _foreign_ballot(rng: random.Random, victim: Core, frm: int) -> Message:
    """A proposer's message at a ballot that is not its sender's: the
    victim's promised ballot (its leader's), with a commit point over it."""
    b = victim.promised
    if b.node in (frm, 0):
        b = Ballot(b.round + rng.randint(0, 2), victim.id)  # the victim's own id is not frm
    to = victim.id
    slot = victim.commit_index + 1
    return rng.choice(
        (
            Accept(frm=frm, to=to, ballot=b, entries=((slot, (FORGED,)),), commit=slot + rng.randint(0, 3)),
            Heartbeat(frm=frm, to=to, ballot=b, commit=slot + rng.randint(0, 3), read_seq=0),
            Prepare(frm=frm, to=to, ballot=Ballot(b.round + 1, b.node), from_slot=1),
            PreVote(frm=frm, to=to, ballot=Ballot(b.round + 1, b.node), commit=slot),
        )
    )


def _not_a_member(rng: random.Random, victim: Core, frm: int) -> Message:
    """A promised ballot naming a node outside the cluster, at a high round."""
    outsider = max(victim.config.peers) + rng.randint(1, 1000)
    promised = Ballot(rng.randint(victim.promised.round + 1, bounds.BALLOT_ROUND_MAX), outsider)
    if rng.random() < 0.5:
        return Nack(frm=frm, to=victim.id, ballot=victim.ballot, promised=promised)
    return PreVoteReply(frm=frm, to=victim.id, ballot=victim.ballot, granted=True, promised=promised)


def _beyond_window(rng: random.Random, victim: Core, frm: int) -> Message:
    """The second attack: a slot far past the commit point (10**12, or just
    past the window), from the sender at its own ballot, above the promise
    (so the victim promises it), with a commit point that covers it; or a
    catch-up reply carrying such slots."""
    window_end = victim.commit_index + bounds.ACCEPT_WINDOW_SLOTS
    slot = rng.choice((window_end + 1, window_end + rng.randint(1, 1 << 20), 10**12, bounds.SLOT_MAX))
    commit = rng.choice((slot, bounds.SLOT_MAX, victim.commit_index))
    if rng.random() < 0.7:
        ballot = Ballot(max(victim.promised.round, victim.ballot.round) + rng.randint(1, 3), frm)
        return Accept(frm=frm, to=victim.id, ballot=ballot, entries=((slot, (FORGED,)),), commit=commit)
    return CatchupReply(frm=frm, to=victim.id, chosen=((slot, (FORGED,)),), commit=commit, log_start=1)


def _read_seq_ahead(rng: random.Random, victim: Core, frm: int) -> Message:
    """An ack of a read round the leader has not started: it would confirm it, and every later one."""
    seq = victim._read_seq + rng.choice((1, 1000, bounds.READ_SEQ_MAX - victim._read_seq))
    return HeartbeatAck(frm=frm, to=victim.id, ballot=victim.ballot, read_seq=seq)


def _stale_read_index(rng: random.Random, victim: Core, frm: int) -> Message:
    """A read index 0 "from" a member that is not the victim's leader, for
    the reads it waits on: served, it would return stale data."""
    ids = tuple(victim._reads_remote_pending) or (rng.randint(0, U64_MAX),)
    if frm == victim.leader_id:
        frm = next(p for p in victim.config.peers if p not in (victim.id, victim.leader_id))
    return ReadIndexReply(frm=frm, to=victim.id, read_ids=ids, index=0, ok=True)


def _unsolicited_catchup(rng: random.Random, victim: Core, frm: int) -> Message:
    """Chosen values the victim did not ask for (harmless even if it did:
    they are past its window, or differ from what it knows chosen)."""
    known = [s for s in victim.chosen if s > victim.applied_index]
    if known and rng.random() < 0.5:
        slot = rng.choice(known)
        value = (*victim.chosen[slot], FORGED)
    else:
        slot = victim.commit_index + bounds.ACCEPT_WINDOW_SLOTS + rng.randint(1, 100)
        value = (FORGED,)
    commit = rng.choice((slot, bounds.SLOT_MAX))
    return CatchupReply(frm=frm, to=victim.id, chosen=((slot, value),), commit=commit, log_start=1)


_FORGERS: tuple[Callable[[random.Random, Core, int], Message], ...] = (
    _out_of_range,
    _huge_round,
    _foreign_ballot,
    _not_a_member,
    _beyond_window,
    _read_seq_ahead,
    _stale_read_index,
    _unsolicited_catchup,
)
