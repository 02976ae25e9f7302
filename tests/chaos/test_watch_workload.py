"""The watch workload's recording, on a scripted stream (no processes): what
goes into which record, and where a resumed watch starts."""

from __future__ import annotations

import asyncio

from paxoskv.chaos.watch_workload import WatchWorkload, WatchWorkloadConfig
from paxoskv.check.watch import WatchEvent
from paxoskv.etcdpb import kv_pb2 as mvccpb
from paxoskv.etcdpb import rpc_pb2

R = rpc_pb2


class ScriptedCall:
    """A Watch call that answers with ``responses``, then ends."""

    def __init__(self, responses: list[R.WatchResponse]) -> None:
        self.responses = responses

    def __aiter__(self):  # noqa: ANN204
        return self._gen()

    async def _gen(self):  # noqa: ANN202
        for r in self.responses:
            yield r


def resp(wid: int, rev: int, *events: mvccpb.Event, **fields) -> R.WatchResponse:  # noqa: ANN003
    r = R.WatchResponse(watch_id=wid, events=list(events), **fields)
    r.header.revision = rev
    return r


def put(key: bytes, value: bytes, rev: int, prev: bytes | None = None) -> mvccpb.Event:
    e = mvccpb.Event(type=mvccpb.Event.PUT, kv=mvccpb.KeyValue(key=key, value=value, mod_revision=rev))
    if prev is not None:
        e.prev_kv.CopyFrom(mvccpb.KeyValue(key=key, value=prev))
    return e


def run_script(stream_index: int, responses: list[R.WatchResponse]):  # noqa: ANN201
    async def main():  # noqa: ANN202
        wl = WatchWorkload(WatchWorkloadConfig(), {1: "127.0.0.1:1", 2: "127.0.0.1:2"}, seed=1)
        try:
            s = wl.streams[stream_index]
            live: dict = {}
            ended: list[str] = []
            await s._read(ScriptedCall(responses), live, list(s.watchers), [0.0], ended)
            return wl, s, live, ended
        finally:
            await wl.stop()

    return asyncio.run(main())


def test_server_chosen_ids_fragments_progress_and_a_compaction_cancel_are_recorded():
    # stream 1 lets the server choose ids: its watchers are the "k" prefix
    # (prev_kv, nodelete), "e/" (progress_notify) and a single key (noput)
    wl, s, live, ended = run_script(1, [
        resp(7, 10, created=True),
        resp(8, 10, created=True),
        resp(-1, 10, created=True, canceled=True, cancel_reason="mvcc: watcher range is empty"),
        resp(7, 11, put(b"k0", b"a", 11, prev=b"z"), fragment=True),
        resp(7, 11, put(b"k1", b"b", 11)),
        resp(-1, 12),
        resp(8, 13),
        resp(8, 14, canceled=True, compact_revision=5),
    ])
    w0, w1, w2 = s.watchers
    assert ended == ["broken"]  # the stream ended: the caller reconnects
    (r0,), (r1,) = w0.records, w1.records
    assert (r0.name, r0.key, r0.range_end, r0.prev_kv, r0.filters) == ("w1.0#0", b"k", b"l", True, {"nodelete"})
    assert r0.start_revision == 11  # asked for "now" at revision 10
    assert r0.responses == [[WatchEvent(11, b"k0", "put", b"a", b"z"), WatchEvent(11, b"k1", "put", b"b")]]
    assert r0.progress == [(1, 12)]
    assert r1.start_revision == 1 and r1.responses == [] and r1.progress == [(0, 12), (0, 13)]
    assert r1.canceled_compact_revision == 5 and w1.done.startswith("cancelled at compaction")
    assert w2.records == [] and w2.done.startswith("refused")
    assert list(live) == [7] and wl.events == 2 and wl.progress == 2  # responses: one answer, one notification
    assert w0.create(0).create_request.start_revision == 13  # resumes after the progress revision


def test_client_chosen_ids_and_a_resumed_watch_are_named_by_attempt():
    # stream 0 chooses ids 1, 2: the whole key space (prev_kv) and a single key
    wl, s, live, ended = run_script(0, [
        resp(2, 20, created=True),
        resp(1, 20, created=True),
        resp(1, 21, put(b"e/k0", b"x", 21)),
        resp(1, 23, put(b"k0", b"y", 22), put(b"k0", b"w", 23)),
    ])
    w0, w1 = s.watchers
    assert [r.name for r in w0.records] == ["w0.0#0"] and [r.name for r in w1.records] == ["w0.1#0"]
    assert w0.records[0].start_revision == 1 and w1.records[0].start_revision == 21
    assert [len(r) for r in w0.records[0].responses] == [1, 2]
    assert w0.create(1).create_request.start_revision == 24 and w0.create(1).create_request.watch_id == 1
    w0.created(25)
    assert [r.name for r in w0.records] == ["w0.0#0", "w0.0#1"] and w0.records[1].start_revision == 24
