"""Wire codec: core messages <-> protobuf ``paxoskv.v1.Envelope`` bytes.

Rules
-----
* One core message is one ``Envelope``: ``cluster_id``, ``from_node`` (the
  message's ``frm``), ``to_node`` (its ``to``) and exactly one member of the
  ``msg`` oneof, whose fields carry the dataclass fields of the same name.
  ``Value`` <-> ``Value.commands``, ``(slot, value)`` <-> ``SlotValue``,
  ``Entry`` <-> ``Entry``, ``Ballot`` <-> ``Ballot``.
* Errors are split by who caused them (as in h11): bytes from the network that
  do not make a well-formed message raise :class:`CodecError` (one class, with
  a ``reason``), and nothing else, whatever the bytes; a local caller handing
  :func:`encode` something that cannot be encoded gets ``ValueError`` /
  ``TypeError`` (a bug here, never the peer's fault).
* "Well-formed" is structural: at most ``ENVELOPE_BYTES_MAX`` bytes, parsable
  protobuf, a oneof member set, node ids ``>= 1``, every ballot, entry value
  and slot value the dataclass needs present on the wire (proto3 cannot tell
  an absent submessage from a default one, so :func:`encode` always marks
  them present, and :func:`decode` refuses a message that lacks one rather
  than guessing a default), a ballot's node ``>= 1`` unless the ballot is the
  zero ballot, and every number within the stated maxima of
  :mod:`paxoskv.paxos.bounds` (:func:`~paxoskv.paxos.bounds.check`: a ballot
  round or slot past them is refused here, before the core sees it).
  Protocol meaning that depends on a node's state (is this ballot current,
  is this slot within the window) is the core's business, not ours.

Theory of operation
-------------------
Dispatch is by two tables: ``_ENCODERS`` keyed by message type, and
``_DECODERS`` keyed by the oneof member name that ``WhichOneof`` returns.  Each
entry is a small function that fills (or reads) one oneof member in place, so
encoding builds a single ``Envelope`` with no intermediate copies, and
decoding does one ``ParseFromString`` plus one dataclass construction per
message and entry (ballots come from a small bounded cache of value objects,
since a leadership's messages all carry the same one); ``_DECODE`` pairs each
decoder with its message type's range check (``bounds.CHECKS``: a comparison
per field).  Both are on the hot path: keep them free of reflection and of
branching beyond the presence and range checks.
"""

from __future__ import annotations

from collections.abc import Callable

from google.protobuf.message import DecodeError

from paxoskv.paxos.bounds import CHECKS, ENVELOPE_BYTES_MAX, NODE_ID_MAX
from paxoskv.paxos.types import (
    MESSAGE_TYPES,
    ZERO_BALLOT,
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
from paxoskv.v1 import peer_pb2

__all__ = ["CodecError", "decode", "encode"]


class CodecError(Exception):
    """Bytes from the network that are not a well-formed peer message."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# ---- encode -------------------------------------------------------------------


def encode(msg: Message, cluster_id: str) -> bytes:
    """Serialize ``msg`` into one ``Envelope`` of cluster ``cluster_id``."""
    try:
        fill = _ENCODERS[type(msg)]
    except KeyError:
        raise TypeError(f"not a peer message type: {type(msg).__name__}") from None
    if not (1 <= msg.frm <= NODE_ID_MAX and 1 <= msg.to <= NODE_ID_MAX):
        raise ValueError(f"node ids must be in [1, 2**32): frm={msg.frm} to={msg.to}")
    env = peer_pb2.Envelope(cluster_id=cluster_id, from_node=msg.frm, to_node=msg.to)
    fill(msg, env)
    return env.SerializeToString()


def _put_ballot(pb: peer_pb2.Ballot, b: Ballot) -> None:
    pb.SetInParent()  # present on the wire even when it is the zero ballot
    pb.round = b.round
    pb.node = b.node


def _put_slot_values(pb: object, pairs: tuple[tuple[int, Value], ...]) -> None:
    add = pb.add  # type: ignore[attr-defined]
    for slot, value in pairs:
        sv = add(slot=slot)
        v = sv.value
        v.SetInParent()  # an empty value (no-op) is still present
        v.commands.extend(value)


def _put_entries(pb: object, entries: tuple[Entry, ...]) -> None:
    add = pb.add  # type: ignore[attr-defined]
    for e in entries:
        pe = add(slot=e.slot)
        _put_ballot(pe.ballot, e.ballot)
        v = pe.value
        v.SetInParent()
        v.commands.extend(e.value)


def _enc_pre_vote(m: PreVote, env: peer_pb2.Envelope) -> None:
    p = env.pre_vote
    _put_ballot(p.ballot, m.ballot)
    p.commit = m.commit


def _enc_pre_vote_reply(m: PreVoteReply, env: peer_pb2.Envelope) -> None:
    p = env.pre_vote_reply
    _put_ballot(p.ballot, m.ballot)
    p.granted = m.granted
    _put_ballot(p.promised, m.promised)


def _enc_prepare(m: Prepare, env: peer_pb2.Envelope) -> None:
    p = env.prepare
    _put_ballot(p.ballot, m.ballot)
    p.from_slot = m.from_slot


def _enc_promise(m: Promise, env: peer_pb2.Envelope) -> None:
    p = env.promise
    _put_ballot(p.ballot, m.ballot)
    _put_entries(p.accepted, m.accepted)
    _put_slot_values(p.chosen, m.chosen)
    p.commit = m.commit
    p.log_start = m.log_start


def _enc_nack(m: Nack, env: peer_pb2.Envelope) -> None:
    p = env.nack
    _put_ballot(p.ballot, m.ballot)
    _put_ballot(p.promised, m.promised)


def _enc_accept(m: Accept, env: peer_pb2.Envelope) -> None:
    p = env.accept
    _put_ballot(p.ballot, m.ballot)
    _put_slot_values(p.entries, m.entries)
    p.commit = m.commit


def _enc_accepted(m: Accepted, env: peer_pb2.Envelope) -> None:
    p = env.accepted
    _put_ballot(p.ballot, m.ballot)
    p.slots.extend(m.slots)


def _enc_heartbeat(m: Heartbeat, env: peer_pb2.Envelope) -> None:
    p = env.heartbeat
    _put_ballot(p.ballot, m.ballot)
    p.commit = m.commit
    p.read_seq = m.read_seq
    p.features = m.features


def _enc_heartbeat_ack(m: HeartbeatAck, env: peer_pb2.Envelope) -> None:
    p = env.heartbeat_ack
    _put_ballot(p.ballot, m.ballot)
    p.read_seq = m.read_seq
    p.features = m.features


def _enc_catchup_request(m: CatchupRequest, env: peer_pb2.Envelope) -> None:
    p = env.catchup_request
    p.SetInParent()  # all-default fields must still select the oneof member
    p.from_slot = m.from_slot
    p.to_slot = m.to_slot


def _enc_catchup_reply(m: CatchupReply, env: peer_pb2.Envelope) -> None:
    p = env.catchup_reply
    p.SetInParent()
    _put_slot_values(p.chosen, m.chosen)
    p.commit = m.commit
    p.log_start = m.log_start


def _enc_forward(m: Forward, env: peer_pb2.Envelope) -> None:
    p = env.forward
    p.SetInParent()
    p.commands.extend(m.commands)


def _enc_read_index_request(m: ReadIndexRequest, env: peer_pb2.Envelope) -> None:
    p = env.read_index_request
    p.SetInParent()
    p.read_ids.extend(m.read_ids)
    if m.ballot != ZERO_BALLOT:
        _put_ballot(p.ballot, m.ballot)


def _enc_read_index_reply(m: ReadIndexReply, env: peer_pb2.Envelope) -> None:
    p = env.read_index_reply
    p.SetInParent()
    p.read_ids.extend(m.read_ids)
    p.index = m.index
    p.ok = m.ok


def _enc_snapshot_chunk(m: SnapshotChunk, env: peer_pb2.Envelope) -> None:
    p = env.snapshot_chunk
    p.SetInParent()
    p.snapshot_index = m.snapshot_index
    p.offset = m.offset
    p.data = m.data
    p.last = m.last
    p.total_size = m.total_size
    p.sha256 = m.sha256


def _enc_snapshot_ack(m: SnapshotAck, env: peer_pb2.Envelope) -> None:
    p = env.snapshot_ack
    p.SetInParent()
    p.snapshot_index = m.snapshot_index
    p.offset = m.offset
    p.done = m.done


def _enc_lease_ask(m: LeaseAsk, env: peer_pb2.Envelope) -> None:
    p = env.lease_ask
    p.SetInParent()
    p.ask_id = m.ask_id
    p.lease_id = m.lease_id
    p.renew = m.renew
    p.applied = m.applied


def _enc_lease_answer(m: LeaseAnswer, env: peer_pb2.Envelope) -> None:
    p = env.lease_answer
    p.SetInParent()
    p.ask_id = m.ask_id
    p.lease_id = m.lease_id
    p.ttl_ms = m.ttl_ms
    p.granted_ttl = m.granted_ttl


_ENCODERS: dict[type[Message], Callable[[Message, peer_pb2.Envelope], None]] = {
    PreVote: _enc_pre_vote,  # type: ignore[dict-item]
    PreVoteReply: _enc_pre_vote_reply,  # type: ignore[dict-item]
    Prepare: _enc_prepare,  # type: ignore[dict-item]
    Promise: _enc_promise,  # type: ignore[dict-item]
    Nack: _enc_nack,  # type: ignore[dict-item]
    Accept: _enc_accept,  # type: ignore[dict-item]
    Accepted: _enc_accepted,  # type: ignore[dict-item]
    Heartbeat: _enc_heartbeat,  # type: ignore[dict-item]
    HeartbeatAck: _enc_heartbeat_ack,  # type: ignore[dict-item]
    CatchupRequest: _enc_catchup_request,  # type: ignore[dict-item]
    CatchupReply: _enc_catchup_reply,  # type: ignore[dict-item]
    Forward: _enc_forward,  # type: ignore[dict-item]
    ReadIndexRequest: _enc_read_index_request,  # type: ignore[dict-item]
    ReadIndexReply: _enc_read_index_reply,  # type: ignore[dict-item]
    SnapshotChunk: _enc_snapshot_chunk,  # type: ignore[dict-item]
    SnapshotAck: _enc_snapshot_ack,  # type: ignore[dict-item]
    LeaseAsk: _enc_lease_ask,  # type: ignore[dict-item]
    LeaseAnswer: _enc_lease_answer,  # type: ignore[dict-item]
}


# ---- decode -------------------------------------------------------------------


def decode(data: bytes | memoryview) -> tuple[str, Message]:
    """Parse one ``Envelope``: return ``(cluster_id, message)``.

    ``data`` may be any bytes-like object (the bus passes a zero-copy view of
    the ZeroMQ frame); the message returned owns its bytes.

    Raises :class:`CodecError`, and only that, when ``data`` is not a
    well-formed peer message.
    """
    if len(data) > ENVELOPE_BYTES_MAX:
        raise CodecError(f"envelope of {len(data)} B > ENVELOPE_BYTES_MAX ({ENVELOPE_BYTES_MAX})")
    env = peer_pb2.Envelope()
    try:
        env.ParseFromString(data)
    except DecodeError as e:
        raise CodecError(f"unparsable envelope: {e}") from None
    except Exception as e:  # noqa: BLE001 - the contract: nothing but CodecError escapes
        raise CodecError(f"unparsable envelope ({type(e).__name__}): {e}") from None
    which = env.WhichOneof("msg")
    if which is None:
        raise CodecError("envelope carries no message")
    frm = env.from_node
    to = env.to_node
    if frm == 0 or to == 0:
        raise CodecError(f"node ids must be >= 1: from={frm} to={to}")
    decoder, out_of_range = _DECODE[which]
    msg = decoder(env, frm, to)
    reason = out_of_range(msg)
    if reason is not None:
        raise CodecError(reason)
    return env.cluster_id, msg


# Nearly every message of a leadership carries the same ballot: reuse the value
# object instead of building a frozen dataclass per message.  Bounded by clearing.
_BALLOT_CACHE: dict[tuple[int, int], Ballot] = {}
_BALLOT_CACHE_MAX = 1024


def _ballot(holder: object, name: str, where: str) -> Ballot:
    if not holder.HasField(name):  # type: ignore[attr-defined]
        raise CodecError(f"{where}.{name}: missing ballot")
    pb = getattr(holder, name)
    key = (pb.round, pb.node)
    ballot = _BALLOT_CACHE.get(key)
    if ballot is not None:
        return ballot
    if key[1] == 0 and key[0] != 0:
        raise CodecError(f"{where}.{name}: ballot {key[0]}.0 has no node")
    if len(_BALLOT_CACHE) >= _BALLOT_CACHE_MAX:
        _BALLOT_CACHE.clear()
    ballot = _BALLOT_CACHE[key] = ZERO_BALLOT if key == (0, 0) else Ballot(*key)
    return ballot


def _slot_values(pbs: object, where: str) -> tuple[tuple[int, Value], ...]:
    out = []
    for sv in pbs:  # type: ignore[attr-defined]
        if not sv.HasField("value"):
            raise CodecError(f"{where}: slot {sv.slot} has no value")
        out.append((sv.slot, tuple(sv.value.commands)))
    return tuple(out)


def _entries(pbs: object, where: str) -> tuple[Entry, ...]:
    out = []
    for pe in pbs:  # type: ignore[attr-defined]
        if not pe.HasField("value"):
            raise CodecError(f"{where}: slot {pe.slot} has no value")
        out.append(Entry(pe.slot, _ballot(pe, "ballot", where), tuple(pe.value.commands)))
    return tuple(out)


def _dec_pre_vote(env: peer_pb2.Envelope, frm: int, to: int) -> PreVote:
    p = env.pre_vote
    return PreVote(frm=frm, to=to, ballot=_ballot(p, "ballot", "pre_vote"), commit=p.commit)


def _dec_pre_vote_reply(env: peer_pb2.Envelope, frm: int, to: int) -> PreVoteReply:
    p = env.pre_vote_reply
    return PreVoteReply(
        frm=frm,
        to=to,
        ballot=_ballot(p, "ballot", "pre_vote_reply"),
        granted=p.granted,
        promised=_ballot(p, "promised", "pre_vote_reply"),
    )


def _dec_prepare(env: peer_pb2.Envelope, frm: int, to: int) -> Prepare:
    p = env.prepare
    return Prepare(frm=frm, to=to, ballot=_ballot(p, "ballot", "prepare"), from_slot=p.from_slot)


def _dec_promise(env: peer_pb2.Envelope, frm: int, to: int) -> Promise:
    p = env.promise
    return Promise(
        frm=frm,
        to=to,
        ballot=_ballot(p, "ballot", "promise"),
        accepted=_entries(p.accepted, "promise.accepted"),
        chosen=_slot_values(p.chosen, "promise.chosen"),
        commit=p.commit,
        log_start=p.log_start,
    )


def _dec_nack(env: peer_pb2.Envelope, frm: int, to: int) -> Nack:
    p = env.nack
    return Nack(
        frm=frm,
        to=to,
        ballot=_ballot(p, "ballot", "nack"),
        promised=_ballot(p, "promised", "nack"),
    )


def _dec_accept(env: peer_pb2.Envelope, frm: int, to: int) -> Accept:
    p = env.accept
    return Accept(
        frm=frm,
        to=to,
        ballot=_ballot(p, "ballot", "accept"),
        entries=_slot_values(p.entries, "accept.entries"),
        commit=p.commit,
    )


def _dec_accepted(env: peer_pb2.Envelope, frm: int, to: int) -> Accepted:
    p = env.accepted
    return Accepted(frm=frm, to=to, ballot=_ballot(p, "ballot", "accepted"), slots=tuple(p.slots))


def _dec_heartbeat(env: peer_pb2.Envelope, frm: int, to: int) -> Heartbeat:
    p = env.heartbeat
    return Heartbeat(
        frm=frm,
        to=to,
        ballot=_ballot(p, "ballot", "heartbeat"),
        commit=p.commit,
        read_seq=p.read_seq,
        features=p.features,
    )


def _dec_heartbeat_ack(env: peer_pb2.Envelope, frm: int, to: int) -> HeartbeatAck:
    p = env.heartbeat_ack
    return HeartbeatAck(
        frm=frm, to=to, ballot=_ballot(p, "ballot", "heartbeat_ack"), read_seq=p.read_seq, features=p.features
    )


def _dec_catchup_request(env: peer_pb2.Envelope, frm: int, to: int) -> CatchupRequest:
    p = env.catchup_request
    return CatchupRequest(frm=frm, to=to, from_slot=p.from_slot, to_slot=p.to_slot)


def _dec_catchup_reply(env: peer_pb2.Envelope, frm: int, to: int) -> CatchupReply:
    p = env.catchup_reply
    return CatchupReply(
        frm=frm,
        to=to,
        chosen=_slot_values(p.chosen, "catchup_reply.chosen"),
        commit=p.commit,
        log_start=p.log_start,
    )


def _dec_forward(env: peer_pb2.Envelope, frm: int, to: int) -> Forward:
    return Forward(frm=frm, to=to, commands=tuple(env.forward.commands))


def _dec_read_index_request(env: peer_pb2.Envelope, frm: int, to: int) -> ReadIndexRequest:
    p = env.read_index_request
    ballot = _ballot(p, "ballot", "read_index_request") if p.HasField("ballot") else ZERO_BALLOT
    return ReadIndexRequest(frm=frm, to=to, read_ids=tuple(p.read_ids), ballot=ballot)


def _dec_read_index_reply(env: peer_pb2.Envelope, frm: int, to: int) -> ReadIndexReply:
    p = env.read_index_reply
    return ReadIndexReply(frm=frm, to=to, read_ids=tuple(p.read_ids), index=p.index, ok=p.ok)


def _dec_snapshot_chunk(env: peer_pb2.Envelope, frm: int, to: int) -> SnapshotChunk:
    p = env.snapshot_chunk
    return SnapshotChunk(
        frm=frm,
        to=to,
        snapshot_index=p.snapshot_index,
        offset=p.offset,
        data=p.data,
        last=p.last,
        total_size=p.total_size,
        sha256=p.sha256,
    )


def _dec_snapshot_ack(env: peer_pb2.Envelope, frm: int, to: int) -> SnapshotAck:
    p = env.snapshot_ack
    return SnapshotAck(frm=frm, to=to, snapshot_index=p.snapshot_index, offset=p.offset, done=p.done)


def _dec_lease_ask(env: peer_pb2.Envelope, frm: int, to: int) -> LeaseAsk:
    p = env.lease_ask
    return LeaseAsk(frm=frm, to=to, ask_id=p.ask_id, lease_id=p.lease_id, renew=p.renew, applied=p.applied)


def _dec_lease_answer(env: peer_pb2.Envelope, frm: int, to: int) -> LeaseAnswer:
    p = env.lease_answer
    return LeaseAnswer(frm=frm, to=to, ask_id=p.ask_id, lease_id=p.lease_id, ttl_ms=p.ttl_ms, granted_ttl=p.granted_ttl)


_DECODERS: dict[str, Callable[[peer_pb2.Envelope, int, int], Message]] = {
    "pre_vote": _dec_pre_vote,
    "pre_vote_reply": _dec_pre_vote_reply,
    "prepare": _dec_prepare,
    "promise": _dec_promise,
    "nack": _dec_nack,
    "accept": _dec_accept,
    "accepted": _dec_accepted,
    "heartbeat": _dec_heartbeat,
    "heartbeat_ack": _dec_heartbeat_ack,
    "catchup_request": _dec_catchup_request,
    "catchup_reply": _dec_catchup_reply,
    "forward": _dec_forward,
    "read_index_request": _dec_read_index_request,
    "read_index_reply": _dec_read_index_reply,
    "snapshot_chunk": _dec_snapshot_chunk,
    "snapshot_ack": _dec_snapshot_ack,
    "lease_ask": _dec_lease_ask,
    "lease_answer": _dec_lease_answer,
}

# Each oneof member's decoder with the range check of its message type.
_TYPES_BY_MEMBER = {encoder.__name__.removeprefix("_enc_"): t for t, encoder in _ENCODERS.items()}
_DECODE: dict[str, tuple[Callable[[peer_pb2.Envelope, int, int], Message], Callable[[Message], str | None]]] = {
    name: (decoder, CHECKS[_TYPES_BY_MEMBER[name]]) for name, decoder in _DECODERS.items()
}

# Every core message type has an encoder, and every oneof member a decoder.
assert set(_DECODERS) == {f.name for f in peer_pb2.Envelope.DESCRIPTOR.oneofs_by_name["msg"].fields}
assert set(_ENCODERS) == set(MESSAGE_TYPES) and len(_ENCODERS) == len(_DECODERS)
