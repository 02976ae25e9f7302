"""``bench/quorum_echo_batched_node.py``: the group-commit floor of a quorum
write, a ``bench/compare`` row (``quorum-echo-batched``).

Its figures depend on the machine and are never asserted. What is checked
is that it does the work its row claims: every answered put (unary, and a
PackedBatch as one record) is in the LevelDB of a majority of the nodes,
byte for byte, and the node that took it is one of them; with one peer
stopped the other one's copy is what answers; with both stopped nothing is
answered, neither a put nor a linearizable get; calls that arrive together
share a synced write.
"""

from __future__ import annotations

import collections
import os
import pathlib
import signal

import grpc
import plyvel

import clusters  # bench/clusters.py (setup.cfg puts bench/ on sys.path)
from paxoskv.v1 import kv_pb2, kv_pb2_grpc

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "bench" / "quorum_echo_batched_node.py"
IN_FLIGHT = 40
UNANSWERED_S = 2.0  # a call a correct node never answers: how long the test waits to see it unanswered


def _put(i: int, tag: bytes) -> kv_pb2.PutRequest:
    return kv_pb2.PutRequest(
        request=kv_pb2.RequestHeader(client_id="t", sequence=i + 1), key=b"%s-%d" % (tag, i), value=b"v%d" % i * 20
    )


def _puts_at_once(stub: kv_pb2_grpc.KVStub, tag: bytes, n: int) -> list[bytes]:
    """``n`` puts in flight together; the request bytes of each, all answered."""
    reqs = [_put(i, tag) for i in range(n)]
    futures = [stub.Put.future(r, timeout=20) for r in reqs]
    for f in futures:
        f.result()
    return [r.SerializeToString() for r in reqs]


def test_every_answered_put_is_on_a_majority_and_drains_share_a_write(tmp_path):
    cluster = clusters.start_quorum_echo(tmp_path, SCRIPT, fanout=None, name="quorum-echo-batched")
    origin: dict[bytes, int] = {}  # request bytes -> the node that took the call
    with_peer_2: list[bytes] = []  # answered while node 3 was stopped
    try:
        cluster.wait_ready(timeout_s=60)
        for node, ep in enumerate(cluster.endpoints, start=1):
            with grpc.insecure_channel(ep) as ch:
                stub = kv_pb2_grpc.KVStub(ch)
                for data in _puts_at_once(stub, b"n%d" % node, IN_FLIGHT):
                    origin[data] = node
                batch = kv_pb2.BatchRequest(
                    request=kv_pb2.RequestHeader(client_id="b%d" % node, sequence=1),
                    ops=[kv_pb2.RequestOp(put=kv_pb2.PutRequest(key=b"b%d-%d" % (node, i), value=b"w" * 100))
                         for i in range(100)],
                )
                answer = ch.unary_unary("/paxoskv.v1.KV/PackedBatch")(batch.SerializeToString(), timeout=20)
                results = kv_pb2.BatchResponse.FromString(answer).results
                assert len(results) == 100 and all(r.code == 0 for r in results)
                origin[batch.SerializeToString()] = node
                got = stub.Get(kv_pb2.GetRequest(key=b"n%d-7" % node), timeout=10)
                assert got.found and got.value == _put(7, b"").value  # applied before it was answered
                got = stub.Get(kv_pb2.GetRequest(key=b"b%d-99" % node), timeout=10)
                assert got.found and got.value == b"w" * 100

        pid2, pid3 = cluster.pids()[1], cluster.pids()[2]
        os.kill(pid3, signal.SIGSTOP)
        with grpc.insecure_channel(cluster.endpoints[0]) as ch:
            stub = kv_pb2_grpc.KVStub(ch)
            with_peer_2 = _puts_at_once(stub, b"lone", IN_FLIGHT // 2)  # node 2's copy makes the majority
            for data in with_peer_2:
                origin[data] = 1
            os.kill(pid2, signal.SIGSTOP)  # no majority left for node 1
            for call, req in (
                (stub.Put, _put(0, b"none")),
                (stub.Get, kv_pb2.GetRequest(key=b"n1-1")),
            ):
                try:
                    call(req, timeout=UNANSWERED_S)
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED, exc
                else:
                    raise AssertionError(f"{type(req).__name__} answered without a majority")
    finally:
        cluster.stop()  # SIGCONT first, then SIGTERM, by PID

    copies: collections.Counter[bytes] = collections.Counter()
    holders: dict[bytes, set[int]] = collections.defaultdict(set)
    drains: dict[int, collections.Counter[bytes]] = {}
    for node in (1, 2, 3):
        db = plyvel.DB(str(tmp_path / f"node{node}"))
        try:
            drains[node] = collections.Counter()
            for key, value in db:
                copies[value] += 1
                holders[value].add(node)
                if not key.startswith(b"peer/"):
                    drains[node][key.rsplit(b"/", 1)[0]] += 1  # <origin>/<drain>
        finally:
            db.close()
    unanswered = _put(0, b"none").SerializeToString()
    assert set(copies) - {unanswered} == set(origin), "a put is missing, or something else was written (a read?)"
    for value, node in origin.items():
        assert node in holders[value], "the node that took the call keeps a copy"
        assert copies[value] >= 2, "answered before a majority had it"
    for value in with_peer_2:
        assert {1, 2} <= holders[value], "answered with node 3 stopped: nodes 1 and 2 hold it"
    for node in (1, 2, 3):  # the origin's own records: one per call, fewer synced writes than calls
        # node 1 also took the lone puts and the unanswered one (on its own disk, not a majority's)
        assert sum(drains[node].values()) == IN_FLIGHT + 1 + (IN_FLIGHT // 2 + 1 if node == 1 else 0)
        assert max(drains[node].values()) > 1, f"node {node}: {IN_FLIGHT} calls in flight, never two in one write"


def test_a_peer_counts_once_and_bad_peer_frames_are_dropped(tmp_path):
    """In one process, no event loop running: a drain needs this node's copy
    and one *distinct* peer's ack; frames that do not check are neither
    written nor acked."""
    import asyncio

    import zmq

    import quorum_echo_batched_node as node
    from paxoskv.util.ports import free_ports
    from paxoskv.util.wait import wait_until

    bus, peer_a, peer_b = free_ports(3)
    db = plyvel.DB(str(tmp_path / "db"), create_if_missing=True)
    q = node.GroupQuorum(1, bus, [peer_a, peer_b], db, 1 << 20)
    loop = asyncio.new_event_loop()
    q.loop = loop
    try:
        fut = q.write(node._PUT, _put(1, b"k").SerializeToString(), _put(1, b"k"))
        bid = q._open(q.writes, [], q.needed + 1)
        sock_a, sock_b = q.dealers
        q._count(bid, sock_a)
        q._count(bid, sock_a)  # the same peer again: still one copy
        assert not fut.done()
        q._count(bid, None)  # this node's own copy: a majority
        assert fut.done() and q.store[b"k-1"] == _put(1, b"").value

        sender = q.ctx.socket(zmq.DEALER)
        sender.setsockopt(zmq.LINGER, 0)
        sender.connect(f"tcp://127.0.0.1:{bus}")
        good = _put(2, b"k").SerializeToString()
        for frames in (
            [b"w", b"7"],  # no records
            [b"w", b"7", b"p", good, good],  # two records, one kind
            [b"w", b"x7", b"p", good],  # a drain number that is not one
            [b"w", b"7", b"z", good],  # an unknown record kind
            [b"w", b"7", b"p", b"\xff\xff"],  # a record that does not parse
            [b"q", b"7"],  # an unknown message
            [b"w", b"8", b"p", good],  # the only good one
        ):
            sender.send_multipart(frames)

        def served() -> bool:
            q._serve_peers()
            return bool(q.peer_acks)

        wait_until("the good message", served, 10.0)
        assert [bid for _identity, bid in q.peer_acks] == [b"8"]
        assert [data for _key, data in q.peer_records] == [good]
        sender.close()
    finally:
        loop.close()
        q.close()
        db.close()
