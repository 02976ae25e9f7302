"""Bad input from clients and from the network: refused or dropped, and the
cluster keeps serving and loses nothing.

gRPC: keys and values over the limits, empty keys, a sequence without a
client id, bodies that are not the method's message at all, fields of the
wrong wire type, invalid UTF-8 in a string field, a message over gRPC's size
limit. Peer bus: garbage frames, random protobuf envelopes, a foreign
cluster id, a sender id that does not exist, a sender claiming another
node's id, a multi-frame message -- sent with a raw ZeroMQ DEALER to nodes on
the insecure bus (test_bus_attacks.py sends them with CURVE keys).
"""

from __future__ import annotations

import random

import grpc
import pytest
import zmq

from integration_cluster import HOST, LocalCluster
from rogue_peer import garbage_envelopes
from paxoskv.client import SyncClient
from paxoskv.kv.commands import Limits
from paxoskv.v1 import kv_pb2, kv_pb2_grpc, peer_pb2
from paxoskv.wire import MESSAGE_BYTES_MAX, method_path

LIMITS = Limits()  # the nodes run with the defaults


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def test_grpc_bad_requests_are_invalid_argument_and_write_nothing(
    shared_cluster: LocalCluster,
) -> None:
    c = shared_cluster
    with c.client() as client:
        client.put("keep", "me")
        keys_before = c.status(c.wait_leader()).keys
    big_key = b"k" * (LIMITS.key_bytes_max + 1)
    big_value = b"v" * (LIMITS.value_bytes_max + 1)
    cases: list[tuple[str, str, bytes]] = [
        ("Put", "oversized key", kv_pb2.PutRequest(key=big_key, value=b"x").SerializeToString()),
        (
            "Put",
            "oversized value",
            kv_pb2.PutRequest(key=b"big", value=big_value).SerializeToString(),
        ),
        ("Put", "empty key", kv_pb2.PutRequest(key=b"", value=b"x").SerializeToString()),
        ("Delete", "empty key", kv_pb2.DeleteRequest(key=b"").SerializeToString()),
        ("Get", "empty key", kv_pb2.GetRequest(key=b"").SerializeToString()),
        ("Get", "oversized key", kv_pb2.GetRequest(key=big_key).SerializeToString()),
        (
            "Put",
            "sequence without client id",
            kv_pb2.PutRequest(
                request=kv_pb2.RequestHeader(sequence=5), key=b"seq", value=b"x"
            ).SerializeToString(),
        ),
        (
            "Put",
            "client id without sequence",
            kv_pb2.PutRequest(
                request=kv_pb2.RequestHeader(client_id="c"), key=b"seq", value=b"x"
            ).SerializeToString(),
        ),
        ("Put", "garbage body", b"\xff\xfe\xfd\xfc this is not protobuf \x00\x01"),
        (
            "Get",
            "garbage body",
            bytes(random.Random(7).randrange(256) for _ in range(64)) + b"\xff",
        ),
        (
            "Put",
            "truncated body",
            kv_pb2.PutRequest(key=b"t", value=b"x" * 100).SerializeToString()[:50],
        ),
        # key (field 2) sent as a varint: a wrong wire type for a bytes field
        ("Put", "key of the wrong type", b"\x10" + _varint(12345) + b"\x1a\x01x"),
        # client_id (RequestHeader field 1, a string) holding invalid UTF-8
        ("Put", "client id not UTF-8", b"\x0a\x06\x0a\x02\xff\xfe\x10\x01" + b"\x12\x01k\x1a\x01v"),
    ]
    with grpc.insecure_channel(
        c.endpoint(1), options=[("grpc.max_send_message_length", 2 * MESSAGE_BYTES_MAX)]
    ) as ch:
        for method, what, body in cases:
            call = ch.unary_unary(method_path("KV", method))
            with pytest.raises(grpc.RpcError) as ei:
                call(body, timeout=5)
            assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (what, ei.value.details())
            assert ei.value.details(), what
        # Over gRPC's own message limit: refused before any parsing.
        call = ch.unary_unary(method_path("KV", "Put"))
        huge = kv_pb2.PutRequest(key=b"huge", value=b"v" * (MESSAGE_BYTES_MAX + (1 << 20))).SerializeToString()
        with pytest.raises(grpc.RpcError) as ei:
            call(huge, timeout=10)
        assert ei.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    with c.client() as client:
        for key in (b"big", b"seq", b"t", b"k", b"huge"):
            assert client.get(key) is None
        assert client.get("keep") == b"me"
        client.put("still", "serving")
        assert client.get("still") == b"serving"
        assert c.status(c.wait_leader()).keys == keys_before + 1
    for i in c.nodes:
        assert c.nodes[i].running


def test_bus_garbage_foreign_and_unknown_senders_are_dropped(insecure_cluster: LocalCluster) -> None:
    """On the insecure bus, where such frames reach the node at all (with CURVE
    they are refused in the handshake, or bound to a member's key: test_bus_attacks)."""
    c = insecure_cluster
    leader = c.wait_leader()
    before = c.status(leader)
    with c.client() as client:
        for i in range(20):
            client.put(f"pre{i}", str(i))
    rng = random.Random(20261124)
    ctx = zmq.Context()
    try:
        senders = []
        for node_id in c.nodes:
            # identity "99": no such node; "liar": will claim to be node 2
            for ident in (b"99", b"liar"):
                s = ctx.socket(zmq.DEALER)
                s.setsockopt(zmq.LINGER, 0)
                s.setsockopt(zmq.ROUTING_ID, ident)
                s.connect(f"tcp://{HOST}:{c.nodes[node_id].bus_port}")
                senders.append(s)
        frames_sent = 0
        with SyncClient(c.endpoints, timeout_s=10.0) as client:
            for round_ in range(3):
                for s in senders:
                    for frames in garbage_envelopes(rng, c.cluster_id):
                        s.send_multipart(frames)
                        frames_sent += 1
                # the cluster keeps serving while garbage arrives
                client.put(f"during{round_}", str(round_))
        # Well-formed, our cluster, claiming to be node 2 on a connection that is not node 2's.
        for s in senders:
            env = peer_pb2.Envelope(cluster_id=c.cluster_id, from_node=2, to_node=1)
            env.prepare.ballot.round = 10**12
            env.prepare.ballot.node = 2
            s.send(env.SerializeToString())
    finally:
        ctx.destroy(linger=0)  # closes every socket made above

    with c.client() as client:
        client.put("after", "ok")
        for i in range(20):
            assert client.get(f"pre{i}") == str(i).encode()
        for r in range(3):
            assert client.get(f"during{r}") == str(r).encode()
        assert client.get("after") == b"ok"
    assert c.wait_leader() == leader, "garbage on the bus changed the leader"
    for i in c.nodes:
        st = c.status(i)
        assert st is not None and st.ballot_round < 10**12, f"node {i} took a forged ballot"
        assert st.ballot_round == before.ballot_round
        log = c.log_text(i)
        assert "peer bus: dropped a frame" in log
        assert "Traceback" not in log
    print(f"\n{frames_sent} bad frames sent; leader {leader} kept, nothing lost")
    assert all(n.running for n in c.nodes.values())
