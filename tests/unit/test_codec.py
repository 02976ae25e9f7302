"""The wire codec: round trips for every message, and CodecError (only) on garbage."""

from __future__ import annotations

import time

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from paxoskv.paxos import bounds, codec, hostile
from paxoskv.paxos.bounds import (
    BALLOT_ROUND_MAX,
    COMMANDS_PER_MESSAGE_MAX,
    ENVELOPE_BYTES_MAX,
    READ_SEQ_MAX,
    SLOT_MAX,
    SNAPSHOT_BYTES_MAX,
)
from paxoskv.paxos.codec import CodecError, decode, encode
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
)
from paxoskv.v1 import peer_pb2

U64 = (1 << 64) - 1
U32 = (1 << 32) - 1

# ---- strategies -----------------------------------------------------------------

# Every value the protocol allows (paxoskv.paxos.bounds), edges included.
u64 = st.integers(0, U64)
node_ids = st.integers(1, U32)
rounds = st.one_of(st.integers(1, 3), st.integers(1, BALLOT_ROUND_MAX), st.just(BALLOT_ROUND_MAX))
ballots = st.one_of(st.just(ZERO_BALLOT), st.builds(Ballot, rounds, node_ids))
slots = st.one_of(st.integers(1, 3), st.integers(1, SLOT_MAX), st.just(SLOT_MAX))
indexes = st.one_of(st.just(0), slots)  # commit, from/to slot, read index
commands = st.binary(max_size=64)
values = st.lists(commands, max_size=5).map(tuple)  # () is the no-op
slot_values = st.lists(st.tuples(slots, values), max_size=5).map(tuple)
entries = st.lists(st.builds(Entry, slots, ballots, values), max_size=5).map(tuple)
slot_lists = st.lists(slots, max_size=8).map(tuple)
u64s = st.lists(u64, max_size=8).map(tuple)
read_seqs = st.integers(0, READ_SEQ_MAX)
snapshot_bytes = st.integers(0, SNAPSHOT_BYTES_MAX - 256)
cluster_ids = st.text(max_size=20)


def _msg(cls: type[Message], **fields: st.SearchStrategy) -> st.SearchStrategy:
    return st.builds(cls, frm=node_ids, to=node_ids, **fields)


@st.composite
def _with_log_start(draw: st.DrawFn, cls: type[Message], **fields: st.SearchStrategy) -> Message:
    """A Promise or CatchupReply: its log starts at most one past its commit."""
    commit = draw(indexes)
    log_start = draw(st.one_of(st.integers(0, commit + 1), st.just(commit + 1)))
    return draw(_msg(cls, commit=st.just(commit), log_start=st.just(log_start), **fields))


MESSAGE_STRATEGIES: dict[type[Message], st.SearchStrategy] = {
    PreVote: _msg(PreVote, ballot=ballots, commit=indexes),
    PreVoteReply: _msg(PreVoteReply, ballot=ballots, granted=st.booleans(), promised=ballots),
    Prepare: _msg(Prepare, ballot=ballots, from_slot=indexes),
    Promise: _with_log_start(Promise, ballot=ballots, accepted=entries, chosen=slot_values),
    Nack: _msg(Nack, ballot=ballots, promised=ballots),
    Accept: _msg(Accept, ballot=ballots, entries=slot_values, commit=indexes),
    Accepted: _msg(Accepted, ballot=ballots, slots=slot_lists),
    Heartbeat: _msg(Heartbeat, ballot=ballots, commit=indexes, read_seq=read_seqs, features=st.integers(0, U32)),
    HeartbeatAck: _msg(HeartbeatAck, ballot=ballots, read_seq=read_seqs, features=st.integers(0, U32)),
    CatchupRequest: _msg(CatchupRequest, from_slot=indexes, to_slot=indexes),
    CatchupReply: _with_log_start(CatchupReply, chosen=slot_values),
    Forward: _msg(Forward, commands=st.lists(commands, max_size=5).map(tuple)),
    ReadIndexRequest: _msg(ReadIndexRequest, read_ids=u64s, ballot=ballots),
    ReadIndexReply: _msg(ReadIndexReply, read_ids=u64s, index=indexes, ok=st.booleans()),
    SnapshotChunk: _msg(
        SnapshotChunk,
        snapshot_index=indexes,
        offset=snapshot_bytes,
        data=st.binary(max_size=256),
        last=st.booleans(),
        total_size=snapshot_bytes,
        sha256=st.one_of(st.just(b""), st.binary(min_size=32, max_size=32)),
    ),
    SnapshotAck: _msg(SnapshotAck, snapshot_index=indexes, offset=snapshot_bytes, done=st.booleans()),
    LeaseAsk: _msg(
        LeaseAsk,
        ask_id=st.integers(0, bounds.ASK_ID_MAX),
        lease_id=st.integers(-(1 << 63), (1 << 63) - 1),
        renew=st.booleans(),
        applied=indexes,
    ),
    LeaseAnswer: _msg(
        LeaseAnswer,
        ask_id=st.integers(0, bounds.ASK_ID_MAX),
        lease_id=st.integers(-(1 << 63), (1 << 63) - 1),
        ttl_ms=st.integers(-1, bounds.LEASE_TTL_MAX * 1000),
        granted_ttl=st.integers(0, bounds.LEASE_TTL_MAX),
    ),
}
any_message = st.one_of(*MESSAGE_STRATEGIES.values())


def test_every_message_type_has_a_strategy() -> None:
    assert set(MESSAGE_STRATEGIES) == set(MESSAGE_TYPES)


# A generic generator of arbitrary, parsable but possibly nonsensical protobufs,
# driven by the descriptors: any subset of fields set, any values in range.

_SCALARS: dict[int, st.SearchStrategy] = {
    FieldDescriptor.TYPE_UINT64: st.one_of(st.integers(0, 3), u64),
    FieldDescriptor.TYPE_UINT32: st.one_of(st.integers(0, 3), st.integers(0, U32)),
    FieldDescriptor.TYPE_INT64: st.one_of(st.integers(-3, 3), st.integers(-(1 << 63), (1 << 63) - 1)),
    FieldDescriptor.TYPE_BOOL: st.booleans(),
    FieldDescriptor.TYPE_BYTES: st.binary(max_size=16),
    FieldDescriptor.TYPE_STRING: st.text(max_size=8),
}


@st.composite
def _pb_of(draw: st.DrawFn, descriptor: Descriptor, depth: int = 0) -> object:
    msg = getattr(peer_pb2, descriptor.name)()
    oneof_fields = {f.name for o in descriptor.oneofs for f in o.fields}
    chosen_oneof = draw(st.sampled_from([None, *sorted(oneof_fields)])) if oneof_fields else None
    for f in descriptor.fields:
        if f.name in oneof_fields and f.name != chosen_oneof:
            continue
        if f.name != chosen_oneof and draw(st.integers(0, 4)) == 0:  # mostly set
            continue
        repeated = f.is_repeated
        if f.type == FieldDescriptor.TYPE_MESSAGE:
            if depth > 3:
                continue
            sub = st.deferred(lambda f=f: _pb_of(f.message_type, depth + 1))
            if repeated:
                getattr(msg, f.name).extend(draw(st.lists(sub, max_size=3)))
            else:
                getattr(msg, f.name).CopyFrom(draw(sub))
                getattr(msg, f.name).SetInParent()
        elif repeated:
            getattr(msg, f.name).extend(draw(st.lists(_SCALARS[f.type], max_size=3)))
        else:
            setattr(msg, f.name, draw(_SCALARS[f.type]))
    return msg


weird_envelopes = _pb_of(peer_pb2.Envelope.DESCRIPTOR)

# ---- round trips ----------------------------------------------------------------


@pytest.mark.parametrize("cls", MESSAGE_TYPES, ids=lambda c: c.__name__)
@settings(deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), cluster_id=cluster_ids)
def test_round_trip(cls: type[Message], data: st.DataObject, cluster_id: str) -> None:
    msg = data.draw(MESSAGE_STRATEGIES[cls])
    wire = encode(msg, cluster_id)
    assert decode(wire) == (cluster_id, msg)


def test_round_trip_of_defaults_keeps_presence() -> None:
    """All-default fields (zero ballots, no-op values, empty lists) still round-trip."""
    for msg in (
        PreVoteReply(frm=1, to=2, ballot=ZERO_BALLOT, granted=False, promised=ZERO_BALLOT),
        Promise(
            frm=1, to=2, ballot=ZERO_BALLOT, accepted=(Entry(1, ZERO_BALLOT, ()),),
            chosen=((1, ()),), commit=0, log_start=0,
        ),
        Accept(frm=1, to=2, ballot=ZERO_BALLOT, entries=((1, ()), (2, (b"",))), commit=0),
        CatchupRequest(frm=1, to=2, from_slot=0, to_slot=0),
        CatchupReply(frm=1, to=2, chosen=(), commit=0, log_start=0),
        Forward(frm=1, to=2, commands=()),
        ReadIndexRequest(frm=1, to=2, read_ids=()),
        ReadIndexReply(frm=1, to=2, read_ids=(), index=0, ok=False),
        SnapshotChunk(frm=1, to=2, snapshot_index=0, offset=0, data=b"", last=False,
                      total_size=0, sha256=b""),
        SnapshotAck(frm=1, to=2, snapshot_index=0, offset=0, done=False),
        LeaseAsk(frm=1, to=2, ask_id=0, lease_id=0, renew=False),
        LeaseAnswer(frm=1, to=2, ask_id=0, lease_id=0, ttl_ms=0, granted_ttl=0),
    ):
        assert decode(encode(msg, "")) == ("", msg)


def test_decode_takes_a_view_and_the_message_owns_its_bytes() -> None:
    msg = Forward(frm=2, to=1, commands=(b"abc", b"defg"))
    buf = bytearray(encode(msg, "c"))
    got = decode(memoryview(buf))
    buf[:] = bytes(len(buf))  # the receive buffer is reused
    assert got == ("c", msg)


def test_many_distinct_ballots_round_trip() -> None:
    """More ballots than the decoder's value cache holds: each still decodes to itself."""
    for r in range(3 * codec._BALLOT_CACHE_MAX):
        msg = Nack(frm=1, to=2, ballot=Ballot(r, 1 + r % 7), promised=Ballot(r + 1, 3))
        assert decode(encode(msg, "c")) == ("c", msg)
    assert len(codec._BALLOT_CACHE) <= codec._BALLOT_CACHE_MAX


def test_wire_is_the_envelope_of_the_schema() -> None:
    """The bytes are the schema's Envelope, fields named as in the proto."""
    msg = Accept(frm=3, to=1, ballot=Ballot(7, 3), entries=((9, (b"a", b"b")),), commit=4)
    env = peer_pb2.Envelope.FromString(encode(msg, "prod"))
    assert (env.cluster_id, env.from_node, env.to_node) == ("prod", 3, 1)
    assert env.WhichOneof("msg") == "accept"
    assert (env.accept.ballot.round, env.accept.ballot.node, env.accept.commit) == (7, 3, 4)
    assert [(e.slot, list(e.value.commands)) for e in env.accept.entries] == [(9, [b"a", b"b"])]


def test_dispatch_tables_cover_schema_and_types() -> None:
    oneof = {f.name for f in peer_pb2.Envelope.DESCRIPTOR.oneofs_by_name["msg"].fields}
    assert set(codec._DECODERS) == oneof
    assert set(codec._ENCODERS) == set(MESSAGE_TYPES)


# ---- encode: local misuse -------------------------------------------------------


def test_encode_rejects_bad_node_ids_and_non_messages() -> None:
    with pytest.raises(ValueError):
        encode(CatchupRequest(frm=0, to=2, from_slot=1, to_slot=2), "c")
    with pytest.raises(ValueError):
        encode(CatchupRequest(frm=1, to=U32 + 1, from_slot=1, to_slot=2), "c")
    with pytest.raises(ValueError):
        encode(CatchupRequest(frm=1, to=2, from_slot=U64 + 1, to_slot=2), "c")
    with pytest.raises(TypeError):
        encode(Message(frm=1, to=2), "c")
    with pytest.raises(TypeError):
        encode("hello", "c")  # type: ignore[arg-type]


# ---- decode: CodecError with a reason -------------------------------------------


def _envelope(**kw: object) -> peer_pb2.Envelope:
    kw.setdefault("cluster_id", "c")
    kw.setdefault("from_node", 1)
    kw.setdefault("to_node", 2)
    return peer_pb2.Envelope(**kw)


BAD_ENVELOPES: dict[str, tuple[bytes, str]] = {
    "garbage": (b"\xff\xff\xff\xff", "unparsable"),
    "truncated": (encode(Heartbeat(frm=1, to=2, ballot=Ballot(1, 1), commit=9, read_seq=2), "c")[:-1],
                  "unparsable"),
    "bad utf-8 cluster id": (b"\x0a\x02\xff\xfe", "unparsable"),
    "empty": (b"", "no message"),
    "no oneof": (_envelope().SerializeToString(), "no message"),
    "from 0": (_envelope(from_node=0, forward=peer_pb2.Forward()).SerializeToString(), ">= 1"),
    "to 0": (_envelope(to_node=0, forward=peer_pb2.Forward()).SerializeToString(), ">= 1"),
    "missing ballot": (_envelope(accept=peer_pb2.Accept(commit=3)).SerializeToString(),
                       "accept.ballot: missing"),
    "missing promised": (
        _envelope(nack=peer_pb2.Nack(ballot=peer_pb2.Ballot(round=1, node=1))).SerializeToString(),
        "nack.promised: missing",
    ),
    "missing entry ballot": (
        _envelope(promise=peer_pb2.Promise(
            ballot=peer_pb2.Ballot(round=1, node=1),
            accepted=[peer_pb2.Entry(slot=4, value=peer_pb2.Value())],
        )).SerializeToString(),
        "missing ballot",
    ),
    "missing slot value": (
        _envelope(accept=peer_pb2.Accept(
            ballot=peer_pb2.Ballot(round=1, node=1), entries=[peer_pb2.SlotValue(slot=4)]
        )).SerializeToString(),
        "slot 4 has no value",
    ),
    "ballot without node": (
        _envelope(prepare=peer_pb2.Prepare(ballot=peer_pb2.Ballot(round=5))).SerializeToString(),
        "has no node",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_ENVELOPES))
def test_decode_rejects_malformed(case: str) -> None:
    data, reason = BAD_ENVELOPES[case]
    with pytest.raises(CodecError) as exc:
        decode(data)
    assert reason in exc.value.reason
    assert str(exc.value) == exc.value.reason


@pytest.mark.parametrize(("field", "msg"), hostile.past_the_maxima(), ids=[f for f, _ in hostile.past_the_maxima()])
def test_a_field_past_its_stated_maximum_is_refused(field: str, msg: Message) -> None:
    """Every numeric field of every message type: one past its maximum (and
    still a uint64 on the wire) is a CodecError that names the message."""
    with pytest.raises(CodecError) as exc:
        decode(encode(msg, "c"))
    assert exc.value.reason.startswith(field.split(".")[0]), exc.value.reason


def test_the_maxima_themselves_are_accepted() -> None:
    top = Ballot(BALLOT_ROUND_MAX, 3)
    for msg in (
        Accept(frm=3, to=1, ballot=top, entries=((SLOT_MAX, (b"x",) * COMMANDS_PER_MESSAGE_MAX),), commit=SLOT_MAX),
        Promise(frm=3, to=1, ballot=top, accepted=(Entry(SLOT_MAX, top, ()),), chosen=((SLOT_MAX, ()),),
                commit=SLOT_MAX, log_start=SLOT_MAX + 1),
        Heartbeat(frm=3, to=1, ballot=top, commit=SLOT_MAX, read_seq=READ_SEQ_MAX, features=U32),
        SnapshotChunk(frm=3, to=1, snapshot_index=SLOT_MAX, offset=SNAPSHOT_BYTES_MAX - 1, data=b"x",
                      last=True, total_size=SNAPSHOT_BYTES_MAX, sha256=b"\x01" * 32),
    ):
        assert decode(encode(msg, "c")) == ("c", msg)


def test_a_count_past_its_maximum_per_message_is_refused() -> None:
    for field, msg in hostile.past_the_counts():
        with pytest.raises(CodecError) as exc:
            decode(encode(msg, "c"))
        assert exc.value.reason.startswith(field.split(".")[0]), (field, exc.value.reason)
        assert "_PER_MESSAGE_MAX (" in exc.value.reason, exc.value.reason


def test_an_envelope_past_envelope_bytes_max_is_refused_before_parsing() -> None:
    data = b"\x00" * (ENVELOPE_BYTES_MAX + 1)
    with pytest.raises(CodecError, match="ENVELOPE_BYTES_MAX"):
        decode(memoryview(data))


def test_unknown_fields_are_ignored() -> None:
    """A newer peer's extra fields do not break an older decoder."""
    msg = SnapshotAck(frm=1, to=2, snapshot_index=3, offset=4, done=True)
    extra = bytes([0xF8, 0x3E, 0x07])  # field 999, varint 7
    assert decode(encode(msg, "c") + extra) == ("c", msg)


# ---- fuzz: nothing but CodecError, whatever the bytes ---------------------------


def _decode_or_codec_error(data: bytes) -> tuple[str, Message] | None:
    try:
        return decode(data)
    except CodecError as e:
        assert isinstance(e.reason, str) and e.reason
        return None


@settings(deadline=None, max_examples=400)
@given(st.binary(max_size=512))
def test_fuzz_random_bytes(data: bytes) -> None:
    _decode_or_codec_error(data)


@settings(deadline=None, max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(weird_envelopes)
def test_fuzz_weird_envelopes(env: peer_pb2.Envelope) -> None:
    data = env.SerializeToString()
    got = _decode_or_codec_error(data)
    if got is not None:
        cluster_id, msg = got
        assert isinstance(msg, MESSAGE_TYPES)
        assert msg.frm >= 1 and msg.to >= 1
        assert decode(encode(msg, cluster_id)) == got  # what we accept we can say again


@settings(deadline=None, max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(any_message, st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=4),
       st.integers(0, 10_000))
def test_fuzz_mutated_encodings(msg: Message, flips: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(encode(msg, "cluster"))
    for pos, byte in flips:
        if data:
            data[pos % len(data)] = byte
    _decode_or_codec_error(bytes(data[: max(0, len(data) - cut % (len(data) + 1))]))


# ---- speed ------------------------------------------------------------------------


def test_encode_decode_throughput_figure(capsys: pytest.CaptureFixture[str]) -> None:
    """Encode+decode of an Accept of 100 commands x 100 B (printed, not asserted)."""
    msg = Accept(
        frm=1, to=2, ballot=Ballot(12, 1),
        entries=((1000, tuple(bytes([i]) * 100 for i in range(100))),), commit=999,
    )
    n = 2000
    start = time.perf_counter()
    for _ in range(n):
        _, out = decode(encode(msg, "bench"))
    elapsed_s = time.perf_counter() - start
    assert out == msg
    with capsys.disabled():
        print(f"\ncodec: Accept(100 x 100 B) encode+decode {n / elapsed_s:,.0f} msgs/s "
              f"({len(encode(msg, 'bench'))} B each)")
