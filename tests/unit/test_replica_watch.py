"""The watch hub (paxoskv.replica.watch): which event goes to which watcher,
catch-up from the history, progress, bounds. A state machine applied by the
test (no node), then three nodes in one process (tests/unit/test_node_layer)."""

from __future__ import annotations

import pytest

from paxoskv.etcdpb import kv_pb2 as mvccpb
from paxoskv.etcdpb import rpc_pb2
from paxoskv.kv import commands
from paxoskv.kv.state_machine import KVStateMachine
from paxoskv.replica.watch import ERR_DUPLICATE_ID, ERR_EMPTY_RANGE, WatchHub, WatchLimits
from paxoskv.v1 import kv_pb2

from test_node_layer import IDS, Net

R = rpc_pb2
PUT, DELETE = mvccpb.Event.PUT, mvccpb.Event.DELETE


class Store:
    """A state machine the test writes to, and its hub."""

    def __init__(self, limits: WatchLimits | None = None) -> None:
        self.sm = KVStateMachine()
        self.index = 0
        self.hub = WatchHub(lambda: self.sm, self, limits)

    def history_rows(self, start: bytes, stop: bytes | None = None):  # noqa: ANN201 - the current state's rows
        return self.sm.store.history_rows(start, stop)

    def write(self, *requests: object) -> None:
        """Each request one slot; the hub sees them as one applied batch."""
        sm = self.sm
        for req in requests:
            self.index += 1
            cmd = kv_pb2.Command(client_id=commands.node_assigned_id(self.index), sequence=1)
            field = {R.PutRequest: "put", R.DeleteRangeRequest: "delete_range", R.TxnRequest: "txn",
                     R.CompactionRequest: "compaction"}[type(req)]
            getattr(cmd.etcd, field).CopyFrom(req)
            sm.apply(self.index, (commands.encode(cmd),))
        changes = sm.take_changes()
        if self.hub.watching:
            self.hub.applied(changes.history)

    def put(self, key: bytes, value: bytes = b"v") -> None:
        self.write(R.PutRequest(key=key, value=value))


def create(**kw: object) -> R.WatchRequest:
    return R.WatchRequest(create_request=R.WatchCreateRequest(**kw))


def drain(hub: WatchHub, stream) -> list[R.WatchResponse]:  # noqa: ANN001
    out = []
    while (r := hub.take(stream)) is not None:
        out.append(r)
    return out


def events(resps: list[R.WatchResponse], wid: int | None = None) -> list[tuple[int, int, bytes, bytes]]:
    return [
        (e.kv.mod_revision, e.type, e.kv.key, e.kv.value)
        for r in resps
        if wid is None or r.watch_id == wid
        for e in r.events
    ]


def test_create_answers_created_with_the_current_revision_and_auto_ids_count_from_zero() -> None:
    st = Store()
    st.put(b"a")
    s = st.hub.open()
    st.hub.request(s, create(key=b"a"))
    st.hub.request(s, create(key=b"b"))
    st.hub.request(s, create(key=b"c", watch_id=7))
    st.hub.request(s, create(key=b"d", watch_id=7))
    st.hub.request(s, create(key=b"b", range_end=b"a"))
    out = drain(st.hub, s)
    assert [(r.watch_id, r.created, r.canceled, r.cancel_reason) for r in out] == [
        (0, True, False, ""),
        (1, True, False, ""),
        (7, True, False, ""),
        (-1, True, True, ERR_DUPLICATE_ID),
        (-1, True, True, ERR_EMPTY_RANGE),
    ]
    assert {r.header.revision for r in out} == {2}


def test_events_in_revision_order_once_each_with_ranges_prefix_from_key_and_filters() -> None:
    st = Store()
    hub = st.hub
    s = hub.open()
    hub.request(s, create(key=b"k"))  # 0: one key
    hub.request(s, create(key=b"p/", range_end=b"p0"))  # 1: prefix
    hub.request(s, create(key=b"m", range_end=b"\x00"))  # 2: from key
    hub.request(s, create(key=b"", range_end=b"\x00", filters=[R.WatchCreateRequest.NOPUT]))  # 3: deletes of all
    hub.request(s, create(key=b"p/", range_end=b"p0", filters=[R.WatchCreateRequest.NODELETE]))  # 4
    drain(hub, s)
    st.put(b"k", b"1")
    st.put(b"p/x", b"2")
    st.write(R.DeleteRangeRequest(key=b"k"), R.PutRequest(key=b"p/y", value=b"3"))
    st.write(R.DeleteRangeRequest(key=b"p/", range_end=b"p0"))
    out = drain(hub, s)
    assert events(out, 0) == [(2, PUT, b"k", b"1"), (4, DELETE, b"k", b"")]
    assert events(out, 1) == [(3, PUT, b"p/x", b"2"), (5, PUT, b"p/y", b"3"), (6, DELETE, b"p/x", b""), (6, DELETE, b"p/y", b"")]
    assert events(out, 2) == [(3, PUT, b"p/x", b"2"), (5, PUT, b"p/y", b"3"), (6, DELETE, b"p/x", b""), (6, DELETE, b"p/y", b"")]
    assert events(out, 3) == [(4, DELETE, b"k", b""), (6, DELETE, b"p/x", b""), (6, DELETE, b"p/y", b"")]
    assert events(out, 4) == [(3, PUT, b"p/x", b"2"), (5, PUT, b"p/y", b"3")]
    # both deletes of revision 6 in one response, per watcher
    for wid in (1, 2, 3):
        assert [len(r.events) for r in out if r.watch_id == wid][-1] == 2


def test_a_watch_from_a_past_revision_catches_up_from_the_history_then_follows() -> None:
    st = Store(WatchLimits(catchup_rows_max=3))
    for i in range(10):
        st.put(b"k%d" % (i % 2), b"%d" % i)  # revisions 2..11
    hub = st.hub
    s = hub.open()
    hub.request(s, create(key=b"k0", start_revision=5, prev_kv=True))
    st.put(b"k0", b"new")  # revision 12, while it is still catching up
    out = drain(hub, s)
    assert out[0].created
    got = events(out)
    assert got == [(6, PUT, b"k0", b"4"), (8, PUT, b"k0", b"6"), (10, PUT, b"k0", b"8"), (12, PUT, b"k0", b"new")]
    prevs = [e.prev_kv.value for r in out for e in r.events]
    assert prevs == [b"2", b"4", b"6", b"8"]
    st.put(b"k0", b"later")
    assert events(drain(hub, s)) == [(13, PUT, b"k0", b"later")]


def test_start_below_the_compaction_is_cancelled_with_compact_revision_and_no_header_revision() -> None:
    st = Store()
    for i in range(5):
        st.put(b"k", b"%d" % i)
    st.write(R.CompactionRequest(revision=4))
    s = st.hub.open()
    st.hub.request(s, create(key=b"k", start_revision=3))
    st.hub.request(s, create(key=b"k", start_revision=4))  # at the compaction: etcd serves it
    out = drain(st.hub, s)
    created = [r for r in out if r.created]
    assert [r.watch_id for r in created] == [0, 1]
    cancelled = [r for r in out if r.canceled]
    assert [(r.watch_id, r.compact_revision, r.header.revision) for r in cancelled] == [(0, 4, 0)]
    assert events(out, 1) == [(4, PUT, b"k", b"2"), (5, PUT, b"k", b"3"), (6, PUT, b"k", b"4")]


def test_cancel_answers_known_ids_only_and_stops_the_events() -> None:
    st = Store()
    s = st.hub.open()
    st.hub.request(s, create(key=b"k"))
    st.hub.request(s, R.WatchRequest(cancel_request=R.WatchCancelRequest(watch_id=0)))
    st.hub.request(s, R.WatchRequest(cancel_request=R.WatchCancelRequest(watch_id=42)))
    st.put(b"k")
    out = drain(st.hub, s)
    assert [(r.watch_id, r.created, r.canceled) for r in out] == [(0, True, False), (0, False, True)]
    assert st.hub.watching == 0


def test_a_full_outbox_turns_the_watcher_unsynced_and_nothing_is_lost_or_repeated() -> None:
    st = Store(WatchLimits(stream_bytes_max=300, catchup_rows_max=2))
    hub = st.hub
    slow, fast = hub.open(), hub.open()
    hub.request(slow, create(key=b"k"))
    hub.request(fast, create(key=b"k"))
    for i in range(50):
        st.put(b"k", b"x" * 40 + b"%d" % i)
        assert slow.bytes < 300 + 200  # one response over the bound at most
        assert [r for r in drain(hub, fast) if r.events]  # the other stream is not held back
    assert slow.unsynced == 1
    got = events(drain(hub, slow))
    assert [rev for rev, *_ in got] == list(range(2, 52))
    assert slow.unsynced == 0


def test_progress_request_waits_until_every_watcher_is_synced() -> None:
    st = Store(WatchLimits(stream_bytes_max=1, catchup_rows_max=1))
    hub = st.hub
    for i in range(5):
        st.put(b"k", b"%d" % i)
    s = hub.open()
    hub.request(s, create(key=b"k", start_revision=2))
    hub.request(s, R.WatchRequest(progress_request=R.WatchProgressRequest()))
    out = []
    while (r := hub.take(s)) is not None:
        out.append(r)
    progress = [i for i, r in enumerate(out) if r.watch_id == -1]
    assert len(progress) == 1
    before = [e.kv.mod_revision for r in out[: progress[0]] for e in r.events]
    assert before == [2, 3, 4, 5, 6]
    assert out[progress[0]].header.revision == 6
    hub.request(s, R.WatchRequest(progress_request=R.WatchProgressRequest()))
    assert [(r.watch_id, r.header.revision) for r in drain(hub, s)] == [(-1, 6)]


def test_progress_notify_goes_to_quiet_synced_watchers_each_interval() -> None:
    st = Store(WatchLimits(progress_interval_ticks=5))
    hub = st.hub
    s = hub.open()
    hub.request(s, create(key=b"a", progress_notify=True))
    hub.request(s, create(key=b"b", progress_notify=True))
    hub.request(s, create(key=b"c"))
    drain(hub, s)
    for _ in range(4):
        hub.tick(True)
    st.put(b"a")
    hub.tick(True)
    out = drain(hub, s)
    assert [(r.watch_id, len(r.events), r.header.revision) for r in out] == [(0, 1, 2), (1, 0, 2)]


def test_a_require_leader_stream_fails_with_no_leader_after_the_bound() -> None:
    st = Store(WatchLimits(no_leader_ticks_max=3))
    hub = st.hub
    strict, lax = hub.open(require_leader=True), hub.open()
    hub.request(strict, create(key=b"k"))
    hub.request(lax, create(key=b"k"))
    hub.tick(False)
    hub.tick(True)
    hub.tick(False)
    hub.tick(False)
    assert strict.failed is None
    hub.tick(False)
    assert strict.failed is not None and strict.failed.message == "etcdserver: no leader"
    assert strict.failed.code == "UNAVAILABLE"
    assert hub.take(strict) is None and lax.failed is None and hub.watching == 1


def test_fragment_splits_a_large_revision_and_marks_all_but_the_last() -> None:
    st = Store(WatchLimits(fragment_bytes=250))
    hub = st.hub
    s = hub.open()
    hub.request(s, create(key=b"p", range_end=b"q", fragment=True))
    hub.request(s, create(key=b"p", range_end=b"q"))
    drain(hub, s)
    txn = R.TxnRequest(success=[R.RequestOp(request_put=R.PutRequest(key=b"p%d" % i, value=b"v" * 60)) for i in range(10)])
    st.write(txn)
    out = drain(hub, s)
    frag = [r for r in out if r.watch_id == 0]
    assert len(frag) > 1 and [r.fragment for r in frag] == [True] * (len(frag) - 1) + [False]
    assert all(r.ByteSize() < 250 or len(r.events) == 1 for r in frag)
    assert events(frag) == events([r for r in out if r.watch_id == 1])
    assert len([r for r in out if r.watch_id == 1]) == 1


def test_closing_a_stream_frees_its_watchers_and_bytes() -> None:
    st = Store()
    hub = st.hub
    s = hub.open()
    for i in range(100):
        hub.request(s, create(key=b"k%d" % i))
    st.put(b"k1")
    assert hub.bytes > 0 and hub.watching == 100
    hub.close(s)
    assert hub.bytes == 0 and hub.watching == 0
    st.put(b"k1")  # nothing to deliver to


def test_watches_per_stream_are_bounded() -> None:
    st = Store(WatchLimits(watches_per_stream_max=2))
    s = st.hub.open()
    for _ in range(3):
        st.hub.request(s, create(key=b"k"))
    out = drain(st.hub, s)
    assert [r.watch_id for r in out] == [0, 1, -1] and "too many watches" in out[2].cancel_reason


# ---- on the node layer ------------------------------------------------------------


def test_a_follower_serves_a_watch_from_its_own_applied_history() -> None:
    net = Net()
    leader = net.leader()
    follower = next(i for i in IDS if i != leader)
    fnode = net.nodes[follower]
    s = fnode.watches.open()
    fnode.watches.request(s, create(key=b"k", prev_kv=True))
    for v in (b"1", b"2"):
        net.nodes[leader].etcd_write(R.PutRequest(key=b"k", value=v), 5.0, lambda c: None)
        net.settle()
    net.tick(2)
    out = drain(fnode.watches, s)
    assert [(e.kv.value, e.prev_kv.value) for r in out for e in r.events] == [(b"1", b""), (b"2", b"1")]


def test_the_put_path_does_not_call_the_hub_when_nobody_watches(monkeypatch: pytest.MonkeyPatch) -> None:
    net = Net()
    leader = net.leader()
    node = net.nodes[leader]
    calls = []
    monkeypatch.setattr(node.watches, "applied", lambda rows: calls.append(rows))
    node.etcd_write(R.PutRequest(key=b"k", value=b"v"), 5.0, lambda c: None)
    net.settle()
    assert calls == []
    s = node.watches.open()
    node.watches.request(s, create(key=b"k"))
    node.etcd_write(R.PutRequest(key=b"k", value=b"w"), 5.0, lambda c: None)
    net.settle()
    assert calls and any(v for rows in calls for v in rows.values())


def test_responses_are_cut_at_revision_boundaries_above_the_response_bound() -> None:
    st = Store(WatchLimits(response_bytes_max=200, catchup_bytes_max=300))
    hub = st.hub
    for i in range(3):
        st.put(b"old%d" % i, b"o" * 100)
    s = hub.open()
    hub.request(s, create(key=b"", range_end=b"\x00", start_revision=2))  # catches up 3 revisions
    hub.request(s, create(key=b"", range_end=b"\x00", watch_id=9))
    caught_up = [r for r in drain(hub, s) if r.watch_id == 0 and r.events]
    assert [[e.kv.mod_revision for e in r.events] for r in caught_up] == [[2, 3], [4]]
    txn = R.TxnRequest(success=[R.RequestOp(request_put=R.PutRequest(key=b"t%d" % i, value=b"t" * 100)) for i in range(3)])
    st.write(R.PutRequest(key=b"a", value=b"a" * 250), txn, R.PutRequest(key=b"b", value=b"b" * 250))  # one batch
    out = drain(hub, s)
    for wid in (0, 9):
        mine = [r for r in out if r.watch_id == wid]
        assert [sorted({e.kv.mod_revision for e in r.events}) for r in mine] == [[5], [6], [7]]
        assert [len(r.events) for r in mine] == [1, 3, 1]


def test_a_snapshot_install_makes_synced_watchers_catch_up_from_the_installed_history() -> None:
    st = Store()
    hub = st.hub
    s = hub.open()
    hub.request(s, create(key=b"k"))
    st.put(b"k", b"1")
    assert events(drain(hub, s)) == [(2, PUT, b"k", b"1")]
    # another member's state, three revisions ahead, replaces this one (an install)
    other = Store()
    for v in (b"1", b"2", b"3", b"4"):
        other.put(b"k", v)
    st.sm, st.index = other.sm, other.index
    hub.tick(True)
    assert events(drain(hub, s)) == [(3, PUT, b"k", b"2"), (4, PUT, b"k", b"3"), (5, PUT, b"k", b"4")]
    st.put(b"k", b"5")
    assert events(drain(hub, s)) == [(6, PUT, b"k", b"5")]


def test_a_watcher_left_behind_by_a_compaction_is_cancelled_with_its_revision() -> None:
    st = Store(WatchLimits(stream_bytes_max=1))
    hub = st.hub
    s = hub.open()
    hub.request(s, create(key=b"k"))
    assert drain(hub, s)[0].created
    for i in range(5):
        st.put(b"k", b"%d" % i)  # the first response fills the stream: the rest waits in the history
    st.write(R.CompactionRequest(revision=5))
    out = drain(hub, s)
    assert events(out) == [(2, PUT, b"k", b"0")]
    assert [(r.canceled, r.compact_revision) for r in out[-1:]] == [(True, 5)]
    assert hub.watching == 0


def test_answers_of_a_stream_without_watchers_carry_the_current_revision() -> None:
    st = Store()
    s = st.hub.open()
    st.put(b"a")
    st.put(b"b")  # nobody watches: the hub is not told
    st.hub.request(s, R.WatchRequest(progress_request=R.WatchProgressRequest()))
    st.hub.request(s, create(key=b"b", range_end=b"a"))
    st.hub.request(s, create(key=b"a"))
    assert [(r.watch_id, r.header.revision) for r in drain(st.hub, s)] == [(-1, 3), (-1, 3), (0, 3)]


def test_events_are_read_from_rows_of_every_shape() -> None:
    from paxoskv.kv.mvcc import encode_row, encode_tombstone
    from paxoskv.replica.watch import _event
    from paxoskv.v1 import storage_pb2

    rows = [
        encode_row(b"k", 2, 5, 3, b"v\x10\x01", 7),  # a value ending like a tombstone flag
        encode_row(b"k" * 200, 2, 2, 1, b"", 0),
        encode_tombstone(b"k", 9),
        storage_pb2.HistoryRecord(kv=mvccpb.KeyValue(key=b"x", mod_revision=4), tombstone=True).SerializeToString(),
    ]
    for row in rows:
        rec = storage_pb2.HistoryRecord.FromString(row)
        assert _event(row) == mvccpb.Event(type=DELETE if rec.tombstone else PUT, kv=rec.kv)


def test_events_written_and_compacted_in_one_batch_cancel_the_synced_watcher() -> None:
    """A batch that writes k@2 and k@3 and then compacts at 3 drops the row
    of k@2 before the hub sees it: the synced watcher cannot be given it, so
    it is cancelled with the compaction (as a lagging one is), never left
    with a silent gap. (Found by the simulator's watch checks, seed 21.)"""
    st = Store()
    hub = st.hub
    s = hub.open()
    hub.request(s, create(key=b"k"))
    assert drain(hub, s)[0].created
    st.write(R.PutRequest(key=b"k", value=b"1"), R.PutRequest(key=b"k", value=b"2"), R.CompactionRequest(revision=3))
    out = drain(hub, s)
    assert events(out) == []
    assert [(r.canceled, r.compact_revision) for r in out] == [(True, 3)]
    assert hub.watching == 0
