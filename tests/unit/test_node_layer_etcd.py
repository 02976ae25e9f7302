"""The etcd calls of the node layer (paxoskv.replica.etcd): three nodes in one
process, messages handed over by the test, no clock but ticks."""

from __future__ import annotations

import random

import pytest

from paxoskv.etcdpb import rpc_pb2
from paxoskv.kv import etcd
from paxoskv.paxos.types import Ballot, Config
from paxoskv.replica import Call, ReplicaNode
from paxoskv.replica.errors import EtcdFailure, Unavailable
from paxoskv.replica.etcd import (
    AutoCompaction,
    AutoCompactor,
    as_etcd,
    cluster_uid,
    member_id,
    raft_term,
)
from paxoskv.storage.memory import MemoryStorage
from paxoskv.v1 import kv_pb2

from test_node_layer import IDS, Net

R = rpc_pb2


def answer(call: Call) -> object:
    assert call.done, "the call is not answered"
    (result,) = call.results
    return result


def put(key: bytes, value: bytes = b"v", **kw: object) -> R.PutRequest:
    return R.PutRequest(key=key, value=value, **kw)


def op_put(key: bytes, value: bytes = b"v") -> R.RequestOp:
    return R.RequestOp(request_put=put(key, value))


def test_ids_are_fixed_by_the_cluster_and_node_and_look_like_etcds() -> None:
    assert member_id("prod", 1) == member_id("prod", 1) != member_id("prod", 2)
    assert member_id("prod", 1) != member_id("staging", 1)
    assert cluster_uid("prod") != cluster_uid("staging")
    for value in (member_id("c", n) for n in range(1, 200)):
        assert 1 << 32 <= value < 1 << 64 and len("%x" % value) >= 9
    assert raft_term(Ballot(7, 2)) == 7


def test_a_put_at_a_follower_is_forwarded_applied_everywhere_and_answered_with_its_revision() -> None:
    net = Net()
    leader = net.leader()
    follower = next(i for i in IDS if i != leader)
    call = net.nodes[follower].etcd_write(put(b"k", prev_kv=True), 5.0, lambda c: None)
    net.settle()
    resp = answer(call)
    assert isinstance(resp, R.PutResponse) and resp.header.revision == 2 and not resp.HasField("prev_kv")
    for node in net.nodes.values():
        assert node.replica.sm.get(b"k") == b"v" and node.replica.sm.revision == 2
    # the identity was made up by the node and lives in the node pool
    assert not net.nodes[leader].replica.sm.sessions and len(net.nodes[leader].replica.sm.node_sessions) == 1


def test_a_linearizable_range_waits_for_the_read_index_and_a_serializable_one_does_not() -> None:
    net = Net()
    leader = net.leader()
    follower = next(i for i in IDS if i != leader)
    net.nodes[leader].etcd_write(put(b"a", b"1"), 5.0, lambda c: None)
    net.settle()
    lin = net.nodes[follower].range(R.RangeRequest(key=b"a"), 5.0, lambda c: None)
    assert not lin.done  # waits for the leader's read index
    net.settle()
    assert [kv.value for kv in answer(lin).kvs] == [b"1"] and answer(lin).header.revision == 2
    ser = net.nodes[follower].range(R.RangeRequest(key=b"a", serializable=True), 5.0, lambda c: None)
    assert answer(ser).kvs[0].value == b"1"  # at once, from the local state


def test_etcds_checks_refuse_before_proposing() -> None:
    net = Net()
    node = net.nodes[net.leader()]
    applied = node.replica.sm.applied_index
    cases = [
        (put(b""), etcd.ERR_EMPTY_KEY),
        (put(b"k", ignore_value=True), etcd.ERR_VALUE_PROVIDED),
        (R.PutRequest(key=b"k", lease=1, ignore_lease=True), etcd.ERR_LEASE_PROVIDED),
        (R.DeleteRangeRequest(range_end=b"z"), etcd.ERR_EMPTY_KEY),
        (R.TxnRequest(success=[op_put(b"k%d" % i) for i in range(129)]), etcd.ERR_TOO_MANY_OPS),
        (R.TxnRequest(success=[op_put(b"k"), op_put(b"k")]), etcd.ERR_DUPLICATE_KEY),
        (put(b"k", b"x" * (1536 * 1024)), etcd.ERR_REQUEST_TOO_LARGE),
    ]
    for request, error in cases:
        result = answer(node.etcd_write(request, 5.0, lambda c: None))
        assert isinstance(result, EtcdFailure) and (result.code, result.message) == (error.code, error.message)
    assert isinstance(answer(node.range(R.RangeRequest(), 5.0, lambda c: None)), EtcdFailure)
    net.settle()
    assert node.replica.sm.applied_index == applied  # nothing reached the log


def test_the_request_size_limit_is_etcds_and_configurable() -> None:
    net = Net()
    node = net.nodes[net.leader()]
    node.etcd.limits = etcd.EtcdLimits(request_bytes_max=1000)
    largest = max(
        n for n in range(900, 1000) if etcd.request_bytes(put(b"k", b"x" * n).ByteSize(), node.etcd.member_id) <= 1000
    )
    at = node.etcd_write(put(b"k", b"x" * largest), 5.0, lambda c: None)
    over = node.etcd_write(put(b"k", b"x" * (largest + 1)), 5.0, lambda c: None)
    net.settle()
    assert isinstance(answer(at), R.PutResponse)
    assert answer(over).message == "etcdserver: request is too large" and answer(over).code == "INVALID_ARGUMENT"
    assert node.replica.sm.revision == 2


def test_a_txn_of_ranges_only_is_a_read_and_a_write_txn_goes_through_the_log() -> None:
    net = Net()
    node = net.nodes[net.leader()]
    node.etcd_write(put(b"k", b"1"), 5.0, lambda c: None)
    net.settle()
    applied = node.replica.sm.applied_index
    read = R.TxnRequest(
        compare=[R.Compare(key=b"k", target=R.Compare.VALUE, value=b"1")],
        success=[R.RequestOp(request_range=R.RangeRequest(key=b"k", serializable=True))],
    )
    r = answer(node.etcd_write(read, 5.0, lambda c: None))  # serializable: served at once
    assert r.succeeded and r.responses[0].response_range.kvs[0].value == b"1"
    net.settle()
    assert node.replica.sm.applied_index == applied
    write = R.TxnRequest(compare=read.compare, success=[op_put(b"k", b"2")])
    w = node.etcd_write(write, 5.0, lambda c: None)
    net.settle()
    assert answer(w).succeeded and answer(w).header.revision == 3 and node.replica.sm.applied_index > applied


def test_range_errors_of_revisions_are_decided_when_served() -> None:
    net = Net()
    node = net.nodes[net.leader()]
    for i in range(4):
        node.etcd_write(put(b"k", b"%d" % i), 5.0, lambda c: None)
    net.settle()
    future = node.range(R.RangeRequest(key=b"k", revision=99, serializable=True), 5.0, lambda c: None)
    assert answer(future).message == etcd.ERR_FUTURE_REV.message
    c = node.etcd_write(R.CompactionRequest(revision=4), 5.0, lambda c: None)
    net.settle()
    assert answer(c).header.revision == 5
    old = node.range(R.RangeRequest(key=b"k", revision=3), 5.0, lambda c: None)
    net.settle()
    assert answer(old).code == "OUT_OF_RANGE" and answer(old).message == etcd.ERR_COMPACTED.message
    again = node.etcd_write(R.CompactionRequest(revision=3), 5.0, lambda c: None)
    net.settle()
    assert answer(again).message == etcd.ERR_COMPACTED.message


def test_a_put_with_a_lease_is_refused_as_etcd_refuses_an_unknown_lease() -> None:
    net = Net()
    node = net.nodes[net.leader()]
    c = node.etcd_write(put(b"k", lease=0x1234), 5.0, lambda c: None)
    net.settle()
    assert (answer(c).code, answer(c).message) == ("NOT_FOUND", "etcdserver: requested lease not found")
    assert node.replica.sm.get(b"k") is None and node.replica.sm.revision == 1


def test_failures_become_etcds_errors() -> None:
    net = Net()
    no_leader = answer(net.nodes[1].etcd_write(put(b"k"), 5.0, lambda c: None))
    assert (no_leader.code, no_leader.message) == ("UNAVAILABLE", "etcdserver: no leader")
    assert net.nodes[1].etcd.require_leader().message == "etcdserver: no leader"
    assert as_etcd(Unavailable("x", reason=Unavailable.LEADER_CHANGED)).message == "etcdserver: leader changed"
    old = net.leader()
    assert net.nodes[old].etcd.require_leader() is None
    follower = next(i for i in IDS if i != old)
    net.cut.add(old)
    waiting = net.nodes[follower].etcd_write(put(b"k"), 30.0, lambda c: None)
    net.settle()
    net.leader()
    assert answer(waiting).message == "etcdserver: leader changed"
    net.nodes[follower].stop("node is shutting down")
    stopped = answer(net.nodes[follower].range(R.RangeRequest(key=b"k"), 5.0, lambda c: None))
    assert stopped.message == "etcdserver: server stopped"
    expired = net.nodes[old].range(R.RangeRequest(key=b"k"), 5.0, lambda c: None)  # cut off: never confirmed
    net.nodes[old].expire(expired)
    assert (answer(expired).code, answer(expired).message) == ("UNAVAILABLE", "etcdserver: request timed out")


def test_status_names_the_leader_by_member_id_and_lists_alarms() -> None:
    net = Net()
    leader = net.leader()
    for i, node in net.nodes.items():
        st = node.etcd.status()
        assert st.member_id == member_id("t", i) and st.leader == member_id("t", leader)
        assert st.errors == () and st.raft_term >= 1 and st.raft_applied_index <= st.raft_index
    node = net.nodes[leader]
    A = R.AlarmRequest
    node.etcd_write(A(action=A.ACTIVATE, memberID=node.etcd.member_id, alarm=R.NOSPACE), 5.0, lambda c: None)
    net.settle()
    listed = node.etcd_write(A(action=A.GET), 5.0, lambda c: None)
    net.settle()
    assert [(a.memberID, a.alarm) for a in answer(listed).alarms] == [(node.etcd.member_id, R.NOSPACE)]
    assert node.etcd.status().errors == (f"memberID:{node.etcd.member_id} alarm:NOSPACE ",)
    refused = answer(node.etcd_write(put(b"k"), 5.0, lambda c: None))
    assert refused.message == "etcdserver: mvcc: database space exceeded"
    deleted = node.etcd_write(R.DeleteRangeRequest(key=b"k"), 5.0, lambda c: None)
    net.settle()
    assert answer(deleted).deleted == 0


def test_the_quota_raises_the_nospace_alarm_through_the_log() -> None:
    net = Net()
    leader = net.leader()
    node = net.nodes[leader]
    node.etcd.quota_bytes = 10_000
    node.etcd.set_backend_bytes(9_000)
    ok = node.etcd_write(put(b"a", b"x" * 100), 5.0, lambda c: None)
    net.settle()
    assert isinstance(answer(ok), R.PutResponse)
    over = answer(node.etcd_write(put(b"b", b"x" * 800), 5.0, lambda c: None))  # 9000 + 256 + 801 >= 10000
    assert over.code == "RESOURCE_EXHAUSTED"
    net.settle()
    for n in net.nodes.values():  # every member now refuses puts, of both APIs
        assert n.replica.sm.alarms == ((node.etcd.member_id, R.NOSPACE),)
    v1 = net.nodes[leader].put(kv_pb2.PutRequest(key=b"c", value=b"v"), 5.0, lambda c: None)
    net.settle()
    assert type(answer(v1)).__name__ == "ResourceExhausted"
    other = net.nodes[next(i for i in IDS if i != leader)]
    other.etcd.quota_bytes = 100
    other.etcd.set_backend_bytes(100)  # a second member over its quota raises its own
    net.settle()
    assert len(node.replica.sm.alarms) == 2


@pytest.mark.parametrize("mode", ["revision", "periodic"])
def test_auto_compaction_runs_on_the_leader_through_the_log(mode: str) -> None:
    policy = (
        AutoCompaction(mode="revision", retention_revs=3, interval_ms=100)
        if mode == "revision"
        else AutoCompaction(mode="periodic", retention_ms=200)
    )
    net = Net()
    for node in net.nodes.values():
        node.etcd._compactor = AutoCompactor(policy)
        node.etcd._tick_ms = 10
    leader = net.leader()
    for i in range(10):
        net.nodes[leader].etcd_write(put(b"k", b"%d" % i), 5.0, lambda c: None)
        net.settle()
        net.tick(7)
    net.tick(60)
    revs = {n.replica.sm.compact_revision for n in net.nodes.values()}
    assert len(revs) == 1 and revs.pop() > 1  # the same compaction on every member
    compacted = net.nodes[leader].replica.sm.compact_revision
    if mode == "revision":
        assert compacted == net.nodes[leader].replica.sm.revision - 3


def test_the_periodic_compactor_keeps_etcds_schedule() -> None:
    """period 1 s: samples every 100 ms, compacts first after the whole
    period to the revision sampled one period before, then every period."""
    c = AutoCompactor(AutoCompaction(mode="periodic", retention_ms=1000))
    asked = []
    for t in range(0, 3001, 10):
        rev = c.tick(10 if t else 0, True, 100 + t // 10)
        if rev is not None:
            asked.append((t, rev))
            c.done(True)
    assert asked[0] == (1000, 100)  # the revision of a period ago
    assert [t for t, _ in asked] == [1000, 2000, 3000]
    follower = AutoCompactor(AutoCompaction(mode="periodic", retention_ms=1000))
    assert all(follower.tick(10, False, 5) is None for _ in range(300))
    off = AutoCompactor(AutoCompaction(mode="periodic", retention_ms=0))
    assert all(off.tick(10, True, 5) is None for _ in range(300))


def test_hash_kv_is_the_same_on_every_member_and_refuses_compacted_revisions() -> None:
    net = Net()
    node = net.nodes[net.leader()]
    for i in range(5):
        node.etcd_write(put(b"k%d" % (i % 2), b"%d" % i), 5.0, lambda c: None)
        net.settle()
    net.tick(3)
    hashes = {n.etcd.hash_kv(0).hash for n in net.nodes.values()}
    assert len(hashes) == 1
    at4 = {n.etcd.hash_kv(4).hash for n in net.nodes.values()}
    assert len(at4) == 1 and at4 != hashes
    assert node.etcd.hash_kv(99).message == etcd.ERR_FUTURE_REV.message
    node.etcd_write(R.CompactionRequest(revision=4), 5.0, lambda c: None)
    net.settle()
    assert node.etcd.hash_kv(4).message == etcd.ERR_COMPACTED.message
    r = node.etcd.hash_kv(0)
    assert r.compact_revision == 4 and r.header.revision == 6
