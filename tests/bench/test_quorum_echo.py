"""``bench/quorum_echo_node.py``: the floor of a quorum write, a
``bench/compare`` row.

Its figures depend on the machine and are never asserted. What is checked
is that it does the work its row claims: a put is answered only once it is
in the LevelDB of a majority of the nodes, each copy the request's bytes,
and "thrifty" sends it to a majority only.
"""

from __future__ import annotations

import collections
import pathlib

import grpc
import plyvel
import pytest

import clusters  # bench/clusters.py (setup.cfg puts bench/ on sys.path)
from paxoskv.v1 import kv_pb2, kv_pb2_grpc

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "bench" / "quorum_echo_node.py"
PUTS_PER_NODE = 20


@pytest.mark.parametrize("fanout", ["all", "thrifty"])
def test_every_answered_put_is_on_a_majority(tmp_path, fanout):
    cluster = clusters.start_quorum_echo(tmp_path, SCRIPT, fanout=fanout)
    sent: dict[bytes, int] = {}
    try:
        cluster.wait_ready(timeout_s=60)
        for node, ep in enumerate(cluster.endpoints, start=1):
            with grpc.insecure_channel(ep) as ch:
                stub = kv_pb2_grpc.KVStub(ch)
                for i in range(PUTS_PER_NODE):
                    req = kv_pb2.PutRequest(key=b"k%d-%d" % (node, i), value=b"v" * 100)
                    stub.Put(req, timeout=10)
                    sent[req.SerializeToString()] = node
                assert stub.Get(kv_pb2.GetRequest(key=b"k"), timeout=10).found
    finally:
        cluster.stop()

    copies: collections.Counter[bytes] = collections.Counter()
    holders: dict[bytes, set[int]] = collections.defaultdict(set)
    for node in (1, 2, 3):
        db = plyvel.DB(str(tmp_path / f"node{node}"))
        try:
            for _rid, value in db:
                copies[value] += 1
                holders[value].add(node)
        finally:
            db.close()
    assert set(copies) == set(sent), "a put is missing, or something else was written (a read?)"
    for value, origin in sent.items():
        assert origin in holders[value], "the node that took the call keeps a copy"
        assert copies[value] >= 2, "answered before a majority had it"
        if fanout == "thrifty":
            assert holders[value] == {origin, origin % 3 + 1}, "thrifty: the node and the next one only"
