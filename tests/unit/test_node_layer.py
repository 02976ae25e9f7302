"""The node layer (paxoskv.replica.ReplicaNode) on its own: three nodes in one
process, messages handed over by the test, no clock but ticks."""

from __future__ import annotations

import random

import pytest

from paxoskv.paxos.types import FEATURES, Config, Message, Role
from paxoskv.replica import Call, DeadlineExceeded, InvalidArgument, ReplicaNode, Unavailable, Unimplemented
from paxoskv.storage.memory import MemoryStorage
from paxoskv.v1 import kv_pb2

IDS = (1, 2, 3)


class Net:
    def __init__(self, features: dict[int, int] | None = None) -> None:
        self.outbox: list[Message] = []
        self.cut: set[int] = set()
        self.duplicate = False  # deliver every message twice
        self.nodes = {
            i: ReplicaNode(
                Config(node_id=i, peers=IDS, heartbeat_ticks=1, election_ticks_min=10, features=(features or {}).get(i, FEATURES)),
                MemoryStorage(node_id=i, cluster_id="t"),
                random.Random(i),
                send=self.outbox.extend,
                client_addrs={j: f"host{j}:5005{j}" for j in IDS},
            )
            for i in IDS
        }

    def settle(self, rounds: int = 1000) -> None:
        for _ in range(rounds):
            busy = False
            for i, node in self.nodes.items():
                batch = node.prepare()
                if batch is not None:
                    busy = True
                    node.write(batch)
                    node.finish(batch)
            out, self.outbox[:] = list(self.outbox), []
            for msg in out:
                busy = True
                if msg.to not in self.cut and msg.frm not in self.cut:
                    for _ in range(2 if self.duplicate else 1):
                        self.nodes[msg.to].step(msg)
            if not busy:
                return
        raise AssertionError("the nodes did not settle")

    def tick(self, n: int = 1) -> None:
        for _ in range(n):
            for i, node in self.nodes.items():
                if i not in self.cut:
                    node.tick()
            self.settle()

    def leader(self) -> int:
        for _ in range(200):
            self.tick()
            leaders = [i for i, n in self.nodes.items() if n.role is Role.LEADER and i not in self.cut]
            if leaders and all(self.nodes[j].leader_id == leaders[0] for j in IDS if j not in self.cut):
                return leaders[0]
        raise AssertionError("no leader")


def done(calls: list[Call]):
    return calls.append


def put(key: bytes, value: bytes, client: str = "", seq: int = 0) -> kv_pb2.PutRequest:
    hdr = kv_pb2.RequestHeader(client_id=client, sequence=seq) if client or seq else None
    return kv_pb2.PutRequest(request=hdr, key=key, value=value)


def test_a_write_answers_once_applied_and_a_linearizable_get_sees_it_everywhere() -> None:
    net = Net()
    leader = net.leader()
    follower = next(i for i in IDS if i != leader)
    finished: list[Call] = []
    call = net.nodes[follower].put(put(b"k", b"v", "c", 1), 5.0, finished.append)
    assert not call.done and net.nodes[follower].calls.pending == 1
    net.settle()
    assert finished == [call] and call.results[0].existed is False
    for i in IDS:
        got = net.nodes[i].get(kv_pb2.GetRequest(key=b"k"), 5.0, finished.append)
        net.settle()
        assert got.done and got.results[0][0] == b"v"
    assert all(n.calls.pending == 0 for n in net.nodes.values())


def test_a_write_waiting_when_the_leader_changes_is_failed_and_its_retry_applies_once() -> None:
    net = Net()
    old = net.leader()
    follower = next(i for i in IDS if i != old)
    net.cut.add(old)  # the forwarded command goes nowhere
    call = net.nodes[follower].put(put(b"k", b"1", "c", 1), 30.0, lambda c: None)
    net.settle()
    assert not call.done
    new = net.leader()
    assert new != old
    err = call.results[0]
    assert call.done and isinstance(err, Unavailable) and "leader changed" in str(err) and err.proposed
    if err.leader_id is not None:  # the leader as the node knew it then, with its address
        assert err.leader_addr == f"host{err.leader_id}:5005{err.leader_id}"
    retry = net.nodes[follower].put(put(b"k", b"1", "c", 1), 30.0, lambda c: None)
    again = net.nodes[new].put(put(b"k", b"1", "c", 1), 30.0, lambda c: None)
    net.settle()
    assert retry.results[0].index == again.results[0].index  # one application, both answered


def test_an_expired_call_gets_its_late_error_and_leaves_nothing_registered() -> None:
    net = Net()
    leader = net.leader()
    net.cut.update(i for i in IDS if i != leader)  # no quorum: nothing commits
    call = net.nodes[leader].put(put(b"k", b"v", "c", 1), 0.25, lambda c: None)
    read = net.nodes[leader].get(kv_pb2.GetRequest(key=b"k"), 0.25, lambda c: None)
    net.settle()
    assert net.nodes[leader].calls.pending == 2
    net.nodes[leader].expire(call)
    net.nodes[leader].expire(read)
    assert isinstance(call.results[0], DeadlineExceeded) and "0.250s" in str(call.results[0])
    assert "may still be applied" in str(call.results[0])
    assert isinstance(read.results[0], DeadlineExceeded)
    assert net.nodes[leader].calls.pending == 0
    net.nodes[leader].expire(call)  # twice is harmless


def test_ops_read_after_a_write_of_the_same_call_see_it_and_bad_ops_fail_alone() -> None:
    net = Net()
    leader = net.leader()
    ops = [
        kv_pb2.RequestOp(get=kv_pb2.GetRequest(key=b"a")),  # before the writes: may not see them
        kv_pb2.RequestOp(put=put(b"a", b"1", "s1", 1)),
        kv_pb2.RequestOp(put=put(b"", b"x", "s2", 1)),  # invalid: fails alone
        kv_pb2.RequestOp(),  # no op at all
        kv_pb2.RequestOp(get=kv_pb2.GetRequest(key=b"a")),  # after: sees "1"
    ]
    finished: list[Call] = []
    call = net.nodes[leader].ops(ops, 5.0, finished.append)
    net.settle()
    assert finished == [call] and call.error is None
    first, wrote, bad, empty, after = call.results
    assert first[0] in (None, b"1") and wrote.code == 0
    assert isinstance(bad, InvalidArgument) and "key is empty" in str(bad)
    assert isinstance(empty, InvalidArgument)
    assert after[0] == b"1" and after[1] >= wrote.index


def test_a_packed_batch_is_refused_as_a_whole_until_every_member_takes_them() -> None:
    net = Net(features={3: 0})  # node 3 acts as an older version
    leader = net.leader()
    net.tick(5)  # heartbeats and their acks: the leader learns node 3's features
    header = kv_pb2.RequestHeader(client_id="p", sequence=1)
    ops = [kv_pb2.RequestOp(put=put(b"a", b"1")), kv_pb2.RequestOp(put=put(b"b", b"2"))]
    call = net.nodes[leader].ops(ops, 5.0, lambda c: None, request=header)
    assert call.done and isinstance(call.error, Unimplemented)
    net.settle()
    assert net.nodes[leader].replica.sm.get(b"a") is None  # nothing was proposed


def test_invalid_requests_are_refused_before_they_are_proposed() -> None:
    net = Net()
    leader = net.leader()
    node = net.nodes[leader]
    applied = node.replica.sm.applied_index
    cases = [
        put(b"k", b"v", "", 3),  # a sequence without a client id
        put(b"", b"v", "c", 1),  # an empty key
        put(b"k" * 5000, b"v", "c", 1),  # a key over the limit
        put(b"k", b"v" * ((1 << 20) + 1), "c", 1),  # a value over the limit
    ]
    for req in cases:
        call = node.put(req, 5.0, lambda c: None)
        assert call.done and isinstance(call.results[0], InvalidArgument), req.key[:10]
    get = node.get(kv_pb2.GetRequest(key=b""), 5.0, lambda c: None)
    assert isinstance(get.results[0], InvalidArgument)
    net.settle()
    assert node.replica.sm.applied_index == applied  # nothing reached the log


def test_anonymous_writes_get_a_fresh_identity_each() -> None:
    net = Net()
    leader = net.leader()
    node = net.nodes[leader]
    calls = [node.put(put(b"k", b"v%d" % i), 5.0, lambda c: None) for i in range(3)]
    net.settle()
    assert [c.results[0].code for c in calls] == [0, 0, 0]
    anon = [cid for cid in node.replica.sm.node_sessions if cid.startswith("anon-")]
    assert len(anon) == 3
    assert not node.replica.sm.sessions  # node-assigned identities have a pool of their own


def test_a_node_with_no_leader_refuses_before_proposing_and_a_stopped_one_refuses_everything() -> None:
    net = Net()
    node = net.nodes[1]  # no election yet
    call = node.put(put(b"k", b"v", "c", 1), 5.0, lambda c: None)
    assert isinstance(call.results[0], Unavailable) and not call.results[0].proposed
    assert "no leader" in str(call.results[0])
    leader = net.leader()
    waiting = net.nodes[leader].put(put(b"k", b"v", "c", 1), 5.0, lambda c: None)
    net.nodes[leader].stop("node is shutting down")
    assert isinstance(waiting.results[0], Unavailable)
    later = net.nodes[leader].put(put(b"k", b"v", "c", 2), 5.0, lambda c: None)
    assert isinstance(later.error, Unavailable) and str(later.error) == "node is shutting down"


def test_finish_refuses_a_batch_that_was_not_written() -> None:
    net = Net()
    node = net.nodes[1]
    node.tick()
    for _ in range(50):
        node.tick()
        batch = node.prepare()
        if batch is not None:
            break
    assert batch is not None
    with pytest.raises(AssertionError, match="only after its write"):
        node.finish(batch)


def test_a_write_without_identity_in_a_batch_is_applied_once_when_its_command_arrives_twice() -> None:
    """Found by the simulator: a per-op batch's headerless writes had no
    session, so a duplicated Forward applied them twice (a delete undoing a
    later put). They get a fresh identity, as a unary anonymous write does."""
    net = Net()
    leader = net.leader()
    follower = next(i for i in IDS if i != leader)
    net.duplicate = True
    ops = [kv_pb2.RequestOp(delete=kv_pb2.DeleteRequest(key=b"k"))]
    first = net.nodes[follower].ops(ops, 5.0, lambda c: None)
    net.settle()
    net.duplicate = False
    later = net.nodes[leader].put(put(b"k", b"after", "c", 1), 5.0, lambda c: None)
    net.settle()
    net.tick(5)
    assert first.done and later.results[0].code == 0
    for node in net.nodes.values():
        assert node.replica.sm.get(b"k") == b"after"
    assert any(cid.startswith("anon-") for cid in net.nodes[leader].replica.sm.node_sessions)


def test_a_snapshot_message_out_of_range_is_dropped_and_counted_on_a_direct_step() -> None:
    from paxoskv.paxos import bounds
    from paxoskv.paxos.types import SnapshotAck, SnapshotChunk

    net = Net()
    node = net.nodes[1]
    huge = bounds.SLOT_MAX + 1
    node.step(SnapshotChunk(frm=2, to=1, snapshot_index=huge, offset=0, data=b"x", last=True, total_size=0, sha256=b""))
    node.step(SnapshotAck(frm=2, to=1, snapshot_index=huge, offset=0, done=False))
    assert node.replica.core.refused[bounds.Refusal.OUT_OF_RANGE] == 2
    assert node.prepare() is None  # nothing was started: no snapshot sent, no install staged
