"""The raw generator's request bytes, parsed back with protobuf's own classes.

``paxoskv.bench.targets`` joins request bodies by hand (a header per call,
a batch's op list); whatever it sends must be exactly the message the
proto describes, for paxoskv.v1 and for etcd's etcdserverpb alike.
"""

from __future__ import annotations

import pytest

from paxoskv.bench.targets import TARGETS, method_paths
from paxoskv.bench.workload import Workload, key_name
from paxoskv.etcdpb import rpc_pb2
from paxoskv.v1 import kv_pb2

VALUE = bytes(range(100))
CLIENT = "bench123-p0-s7"


@pytest.fixture
def paxos():
    return TARGETS["paxoskv"].codec(Workload(keys=5000, serializable=True), VALUE)


@pytest.fixture
def etcd():
    return TARGETS["etcd"].codec(Workload(keys=5000), VALUE)


def test_paxoskv_unary_bodies(paxos):
    cf = paxos.client_field(CLIENT)
    for seq in (1, 127, 128, 300, 2**40):
        put = kv_pb2.PutRequest.FromString(paxos.put_body(cf, seq, 4321))
        assert put == kv_pb2.PutRequest(
            request=kv_pb2.RequestHeader(client_id=CLIENT, sequence=seq), key=key_name(4321), value=VALUE
        )
    assert kv_pb2.GetRequest.FromString(paxos.get[17]) == kv_pb2.GetRequest(key=key_name(17), serializable=True)


def test_paxoskv_packed_batch(paxos):
    cf = paxos.client_field(CLIENT)
    ops = [(False, 3), (True, 9), (False, 4000)]
    req = kv_pb2.BatchRequest.FromString(paxos.packed_batch(ops, cf, 1000))
    assert req.request == kv_pb2.RequestHeader(client_id=CLIENT, sequence=1000)
    assert list(req.ops) == [
        kv_pb2.RequestOp(put=kv_pb2.PutRequest(key=key_name(3), value=VALUE)),
        kv_pb2.RequestOp(get=kv_pb2.GetRequest(key=key_name(9), serializable=True)),
        kv_pb2.RequestOp(put=kv_pb2.PutRequest(key=key_name(4000), value=VALUE)),
    ]
    reads_only = kv_pb2.BatchRequest.FromString(paxos.packed_batch([(True, 1)], cf, 5))
    assert not reads_only.HasField("request")


def test_paxoskv_batch_per_op(paxos):
    cf = paxos.client_field(CLIENT)
    req = kv_pb2.BatchRequest.FromString(paxos.batch_per_op([(False, 1), (True, 2), (False, 3)], cf, 7))
    assert not req.HasField("request")
    header = lambda seq: kv_pb2.RequestHeader(client_id=CLIENT, sequence=seq)  # noqa: E731
    assert list(req.ops) == [
        kv_pb2.RequestOp(put=kv_pb2.PutRequest(request=header(7), key=key_name(1), value=VALUE)),
        kv_pb2.RequestOp(get=kv_pb2.GetRequest(key=key_name(2), serializable=True)),
        kv_pb2.RequestOp(put=kv_pb2.PutRequest(request=header(8), key=key_name(3), value=VALUE)),
    ]


def test_paxoskv_session_requests(paxos):
    cf = paxos.client_field(CLIENT)
    got = kv_pb2.SessionRequest.FromString(paxos.session_request(300, paxos.put_request_op(cf, 5, 11)))
    assert got.id == 300
    assert got.op == kv_pb2.RequestOp(
        put=kv_pb2.PutRequest(request=kv_pb2.RequestHeader(client_id=CLIENT, sequence=5), key=key_name(11), value=VALUE)
    )
    got = kv_pb2.SessionRequest.FromString(paxos.session_request(1, paxos.get_request_op(11)))
    assert got.op == kv_pb2.RequestOp(get=kv_pb2.GetRequest(key=key_name(11), serializable=True))


def test_etcd_bodies_and_txn(etcd):
    assert rpc_pb2.PutRequest.FromString(etcd.put[8]) == rpc_pb2.PutRequest(key=key_name(8), value=VALUE)
    assert rpc_pb2.RangeRequest.FromString(etcd.range[8]) == rpc_pb2.RangeRequest(key=key_name(8))
    txn = rpc_pb2.TxnRequest.FromString(etcd.txn([(False, i) for i in range(100)]))
    assert len(txn.compare) == 0 and len(txn.failure) == 0
    assert list(txn.success) == [
        rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key_name(i), value=VALUE)) for i in range(100)
    ]
    mixed = rpc_pb2.TxnRequest.FromString(etcd.txn([(True, 1), (False, 2)]))
    assert list(mixed.success) == [
        rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=key_name(1))),
        rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key_name(2), value=VALUE)),
    ]


def test_method_paths_come_from_the_descriptors():
    assert method_paths(kv_pb2, "KV")["PackedBatch"] == "/paxoskv.v1.KV/PackedBatch"
    assert method_paths(rpc_pb2, "KV")["Txn"] == "/etcdserverpb.KV/Txn"
    assert TARGETS["etcd"].service == "etcdserverpb.KV" and TARGETS["paxoskv"].service == "paxoskv.v1.KV"


def test_a_batch_has_distinct_keys():
    picker = Workload(keys=150, read_share=0.5).picker(0, 0)
    for _ in range(50):
        ops = picker.batch(128)
        assert len({i for _r, i in ops}) == 128
        assert all(0 <= i < 150 for _r, i in ops)
    assert {r for _ in range(5) for r, _i in picker.batch(100)} == {True, False}


def test_a_batch_larger_than_the_key_space_is_refused():
    from paxoskv.bench.runner import BenchConfig

    with pytest.raises(ValueError, match="a batch of 101 distinct keys needs at least that many keys"):
        BenchConfig(target="etcd", endpoints=("127.0.0.1:1",), mode="batch", batch_size=101, workload=Workload(keys=100))
    BenchConfig(target="etcd", endpoints=("127.0.0.1:1",), mode="unary", batch_size=101, workload=Workload(keys=100))


def _worker_args(processes: int, concurrency: int, index: int):
    from paxoskv.bench.worker import WorkerArgs

    return WorkerArgs(
        target="paxoskv", mode="unary", endpoints=("a:1", "b:1", "c:1"), workload=Workload(), concurrency=concurrency,
        batch_size=1, process_index=index, processes=processes, prefill=False, warmup_s=0.0, duration_s=1.0,
        timeout_s=1.0, connect_timeout_s=1.0, client_prefix="t",
    )


def test_slots_keep_to_one_member_dealt_evenly_and_rotate_only_when_fewer_than_members():
    from collections import Counter

    from paxoskv.bench.worker import _slot_endpoints

    eps = ["a", "b", "c"]
    held = Counter()
    for p in range(2):
        for s in range(32):
            got = _slot_endpoints(eps, _worker_args(2, 32, p), s)
            assert len(got) == 1
            held[got[0]] += 1
    assert sorted(held.values()) == [21, 21, 22]
    assert _slot_endpoints(eps, _worker_args(1, 1, 0), 0) == ["a", "b", "c"]  # 1 in flight: every member in turn
    two = [_slot_endpoints(eps, _worker_args(1, 2, 0), s) for s in range(2)]
    assert two == [["a", "b", "c"], ["b", "c", "a"]]
