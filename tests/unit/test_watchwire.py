"""WatchResponse by hand (paxoskv.kv.watchwire) against protobuf's own
encoding, byte for byte; and the hub's shared events (paxoskv.replica.watch):
what every watch is given, and how the bounds count them."""

from __future__ import annotations

import itertools

import pytest

from paxoskv.etcdpb import kv_pb2 as mvccpb
from paxoskv.etcdpb import rpc_pb2
from paxoskv.kv import watchwire
from paxoskv.replica.watch import EventsResponse, WatchLimits

from test_replica_watch import Store, create, drain

PUT, DELETE = mvccpb.Event.PUT, mvccpb.Event.DELETE

KVS = [
    mvccpb.KeyValue(key=b"k", create_revision=1, mod_revision=1, version=1, value=b"v"),
    mvccpb.KeyValue(key=b"a/b" * 50, create_revision=3, mod_revision=2**40, version=7, value=b"x" * 300, lease=2**62),
    mvccpb.KeyValue(key=b"\x00\xff", mod_revision=9),  # a delete's kv: key and mod_revision only
    mvccpb.KeyValue(key=b"e", create_revision=5, mod_revision=5, version=1),  # an empty value
]
EVENTS = [
    mvccpb.Event(type=PUT, kv=KVS[0]),
    mvccpb.Event(type=PUT, kv=KVS[1], prev_kv=KVS[0]),
    mvccpb.Event(type=DELETE, kv=KVS[2]),
    mvccpb.Event(type=DELETE, kv=KVS[2], prev_kv=KVS[1]),
    mvccpb.Event(type=PUT, kv=KVS[3], prev_kv=mvccpb.KeyValue()),  # prev_kv set and empty
]
HEADERS = [
    None,
    rpc_pb2.ResponseHeader(revision=1),
    rpc_pb2.ResponseHeader(cluster_id=2**64 - 1, member_id=0x1234567890ABCDEF, revision=2**40, raft_term=3),
    rpc_pb2.ResponseHeader(cluster_id=1, raft_term=2**33),
    rpc_pb2.ResponseHeader(),  # set and empty
]


def _event_bytes(ev: mvccpb.Event) -> bytes:
    """The hand path: an Event without prev_kv, with it appended."""
    plain = mvccpb.Event(type=ev.type, kv=ev.kv).SerializeToString()
    return watchwire.with_prev_kv(plain, ev.prev_kv.SerializeToString()) if ev.HasField("prev_kv") else plain


@pytest.mark.parametrize("head", HEADERS, ids=range(len(HEADERS)))
@pytest.mark.parametrize("watch_id", [0, 1, 127, 128, 16383, 16384, 2**40, 2**63 - 1, -1, -(2**63)])
@pytest.mark.parametrize("fragment", [False, True])
def test_watch_response_matches_protobuf_byte_for_byte(head: rpc_pb2.ResponseHeader | None, watch_id: int, fragment: bool) -> None:
    for n in range(4):
        for evs in itertools.combinations(EVENTS, n):
            want = rpc_pb2.WatchResponse(watch_id=watch_id, fragment=fragment, events=evs)
            if head is not None:
                want.header.CopyFrom(head)
            hb = None if head is None else head.SerializeToString()
            got = watchwire.watch_response(hb, watch_id, b"".join(watchwire.event_entry(_event_bytes(e)) for e in evs), fragment)
            assert got == want.SerializeToString()
            assert rpc_pb2.WatchResponse.FromString(got) == want
            if head is None or head == rpc_pb2.ResponseHeader(revision=head.revision) and head.revision:
                size = watchwire.response_size(head.revision if head else 0, watch_id, len(got) - len(watchwire.watch_response(hb, watch_id, b"", fragment)), fragment)
                assert size == len(got)


def test_event_bytes_with_prev_kv_match_protobuf() -> None:
    for ev in EVENTS:
        assert _event_bytes(ev) == ev.SerializeToString()


def _watched_store(streams: int, per_stream: int, **kw: object) -> tuple[Store, list]:  # noqa: ANN401
    st = Store(kw.pop("limits", None))  # type: ignore[arg-type]
    st.put(b"k/0", b"first")
    out = []
    for _ in range(streams):
        s = st.hub.open()
        for j in range(per_stream):
            st.hub.request(s, create(key=b"k/", range_end=b"k0", prev_kv=bool(j % 2), **kw))
        drain(st.hub, s)
        out.append(s)
    return st, out


def test_every_watch_gets_the_events_protobuf_would_build_and_shared_bytes_count_once() -> None:
    st, streams = _watched_store(20, 10)
    hub = st.hub
    base = st.sm.revision
    st.write(rpc_pb2.PutRequest(key=b"k/0", value=b"second"), rpc_pb2.PutRequest(key=b"k/1", value=b"new"),
             rpc_pb2.DeleteRangeRequest(key=b"k/0"))
    first = streams[0].outbox[0][0]
    assert isinstance(first, EventsResponse)
    per_stream = sum(size for _, size in streams[0].outbox)
    assert all(s.bytes == per_stream for s in streams)
    # the events of one revision set are held once by the node: two shared buffers (with and without prev_kv)
    shared = {id(r.events): len(r.events.data) for s in streams for r, _ in s.outbox}
    assert len(shared) == 2
    assert hub.bytes == sum(s.bytes for s in streams) - (len(streams) * 10 // 2 - 1) * sum(shared.values())
    store = st.sm.store
    for s in streams:
        out = drain(hub, s)
        assert sorted(r.watch_id for r in out) == list(range(10))
        for r in out:
            assert r.header.revision == base + 3 and not r.fragment
            assert [(e.type, e.kv.key, e.kv.value, e.kv.mod_revision) for e in r.events] == [
                (PUT, b"k/0", b"second", base + 1), (PUT, b"k/1", b"new", base + 2), (DELETE, b"k/0", b"", base + 3)]
            want_prev = [b"first", b"", b"second"] if r.watch_id % 2 else [b"", b"", b""]
            assert [e.prev_kv.value for e in r.events] == want_prev
            assert [e.HasField("prev_kv") for e in r.events] == ([True, False, True] if r.watch_id % 2 else [False] * 3)
        assert s.bytes == 0
    assert hub.bytes == 0


def _held(streams: list) -> int:
    """What the node holds: each response's own bytes, and each shared buffer once."""
    own = 0
    buffers: dict[int, int] = {}
    for s in streams:
        for r, size in s.outbox:
            if isinstance(r, EventsResponse):
                own += size - len(r.events.data)
                buffers[id(r.events)] = len(r.events.data)
            else:
                own += size
    return own + sum(buffers.values())


def test_closing_streams_releases_shared_bytes_exactly() -> None:
    st, streams = _watched_store(5, 4)
    hub = st.hub
    for i in range(3):
        st.put(b"k/%d" % i, b"v%d" % i)
    assert hub.bytes == _held(streams) > 0
    assert hub.bytes < sum(s.bytes for s in streams)
    hub.take(streams[0])
    hub.take(streams[1])
    assert hub.bytes == _held(streams)
    for i in range(4):
        hub.close(streams[i])
        assert hub.bytes == _held(streams[i + 1:])
    hub.close(streams[4])
    assert hub.bytes == 0


def test_a_stream_counts_shared_responses_whole_so_its_outbox_stays_bounded() -> None:
    st, streams = _watched_store(2, 50, limits=WatchLimits(stream_bytes_max=2_000))
    hub = st.hub
    slow, fast = streams
    for i in range(40):
        st.put(b"k/%d" % (i % 5), b"x" * 50)
        drain(hub, fast)
        assert slow.bytes < 2_000 + 500  # one response over the bound at most
    assert slow.unsynced == 50  # every watch of the full stream turned unsynced
    got = drain(hub, slow)
    first = st.sm.revision - 39
    revs: dict[int, list[int]] = {}
    for r in got:
        for e in r.events:
            revs.setdefault(r.watch_id, []).append(e.kv.mod_revision)
    assert all(v == list(range(first, first + 40)) for v in revs.values()) and len(revs) == 50  # exactly once, in order


def test_fragments_are_built_from_the_shared_events_as_protobuf_splits_them() -> None:
    st, streams = _watched_store(3, 2, fragment=True, limits=WatchLimits(fragment_bytes=300))
    hub = st.hub
    st.write(*(rpc_pb2.PutRequest(key=b"k/%d" % i, value=b"y" * 60) for i in range(8)))
    for s in streams:
        out = drain(hub, s)
        for wid in (0, 1):
            parts = [r for r in out if r.watch_id == wid]
            assert len(parts) > 1 and [r.fragment for r in parts] == [True] * (len(parts) - 1) + [False]
            assert all(r.ByteSize() < 300 or len(r.events) == 1 for r in parts)
            assert [e.kv.key for r in parts for e in r.events] == [b"k/%d" % i for i in range(8)]
    assert hub.bytes == 0
