"""paxoskv.v1's Range and Txn in the node layer (paxoskv.replica.node: scan,
txn) and the state machine's sessions for a v1 Txn: three nodes in one
process, messages handed over by the test, no clock but ticks."""

from __future__ import annotations

import pytest

from paxoskv.etcdpb import rpc_pb2
from paxoskv.kv import commands, etcd
from paxoskv.kv.state_machine import KVStateMachine
from paxoskv.replica import Call
from paxoskv.replica.errors import EtcdFailure, FailedPrecondition, InvalidArgument
from paxoskv.v1 import kv_pb2

from test_node_layer import IDS, Net

R = rpc_pb2
C = rpc_pb2.Compare


def answer(call: Call) -> object:
    assert call.done, "the call is not answered"
    (result,) = call.results
    return result


def v1_put(key: bytes, value: bytes, client: str, seq: int) -> kv_pb2.PutRequest:
    return kv_pb2.PutRequest(request=kv_pb2.RequestHeader(client_id=client, sequence=seq), key=key, value=value)


def cas(key: bytes, version: int, value: bytes, client: str = "c1", seq: int = 1) -> kv_pb2.TxnRequest:
    """Put ``value`` if ``key`` has ``version``, else read it."""
    return kv_pb2.TxnRequest(
        request=kv_pb2.RequestHeader(client_id=client, sequence=seq) if client else None,
        compare=[C(key=key, target=C.VERSION, result=C.EQUAL, version=version)],
        success=[R.RequestOp(request_put=R.PutRequest(key=key, value=value))],
        failure=[R.RequestOp(request_range=R.RangeRequest(key=key))],
    )


def test_prefix_range_gives_keys_in_order_with_revisions_linearizable_at_a_follower() -> None:
    net = Net()
    leader = net.leader()
    follower = next(i for i in IDS if i != leader)
    node = net.nodes[leader]
    for i, (k, v) in enumerate([(b"app/b", b"2"), (b"app/a", b"1"), (b"apq", b"x"), (b"app/a", b"1b")]):
        node.put(v1_put(k, v, "w", i + 1), 5.0, lambda c: None)
        net.settle()
    call = net.nodes[follower].scan(kv_pb2.RangeRequest(key=b"app/", prefix=True), 5.0, lambda c: None)
    assert not call.done  # waits for the read index
    net.settle()
    resp, index = answer(call)
    assert index == net.nodes[follower].replica.sm.applied_index
    got = [(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version) for kv in resp.kvs]
    assert got == [(b"app/a", b"1b", 3, 5, 2), (b"app/b", b"2", 2, 2, 1)]
    assert resp.header.revision == 5 and resp.count == 2 and not resp.more
    # limit, an explicit range, every key, a past revision, serializable (at once)
    limited, _ = answer(net.nodes[leader].scan(kv_pb2.RangeRequest(key=b"app/", prefix=True, limit=1, serializable=True), 5.0, lambda c: None))
    assert [kv.key for kv in limited.kvs] == [b"app/a"] and limited.more and limited.count == 2
    every, _ = answer(net.nodes[leader].scan(kv_pb2.RangeRequest(prefix=True, keys_only=True, serializable=True), 5.0, lambda c: None))
    assert [kv.key for kv in every.kvs] == [b"app/a", b"app/b", b"apq"] and not any(kv.value for kv in every.kvs)
    past, _ = answer(net.nodes[leader].scan(kv_pb2.RangeRequest(key=b"app/a", revision=3, serializable=True), 5.0, lambda c: None))
    assert [(kv.value, kv.version) for kv in past.kvs] == [(b"1", 1)]


@pytest.mark.parametrize(
    ("req", "words"),
    [
        (kv_pb2.RangeRequest(), "key is empty"),
        (kv_pb2.RangeRequest(key=b"a", range_end=b"b", prefix=True), "range_end or prefix, not both"),
        (kv_pb2.RangeRequest(key=b"b", range_end=b"a"), "range_end must be after key"),
        (kv_pb2.RangeRequest(key=b"k" * 4097), "key is 4097 bytes, more than the limit of 4096"),
        (kv_pb2.RangeRequest(key=b"a", limit=-1), "must not be negative"),
    ],
)
def test_a_bad_range_is_invalid_argument_and_reads_nothing(req: kv_pb2.RangeRequest, words: str) -> None:
    net = Net()
    leader = net.leader()
    result = answer(net.nodes[leader].scan(req, 5.0, lambda c: None))
    assert isinstance(result, InvalidArgument) and words in str(result)


def test_a_range_below_the_compaction_or_in_the_future_is_etcds_out_of_range() -> None:
    net = Net()
    leader = net.leader()
    node = net.nodes[leader]
    for seq in (1, 2, 3):
        node.put(v1_put(b"k", b"%d" % seq, "w", seq), 5.0, lambda c: None)
        net.settle()
    node.etcd_write(R.CompactionRequest(revision=3), 5.0, lambda c: None)
    net.settle()
    for rev, err in ((2, etcd.ERR_COMPACTED), (99, etcd.ERR_FUTURE_REV)):
        result = answer(node.scan(kv_pb2.RangeRequest(key=b"k", revision=rev, serializable=True), 5.0, lambda c: None))
        assert isinstance(result, EtcdFailure) and (result.code, result.message) == (err.code, err.message)


def test_put_and_delete_answers_carry_the_revision_after_them() -> None:
    net = Net()
    leader = net.leader()
    node = net.nodes[leader]
    put = node.put(v1_put(b"k", b"v", "w", 1), 5.0, lambda c: None)
    net.settle()
    assert answer(put).revision == 2
    missing = node.delete(kv_pb2.DeleteRequest(request=kv_pb2.RequestHeader(client_id="w", sequence=2), key=b"nope"), 5.0, lambda c: None)
    net.settle()
    assert answer(missing).revision == 2 and not answer(missing).existed  # nothing changed: no new revision


def test_a_cas_applies_once_when_its_compare_holds_and_reads_when_it_does_not() -> None:
    net = Net()
    leader = net.leader()
    follower = next(i for i in IDS if i != leader)
    first = net.nodes[follower].txn(cas(b"k", 0, b"one", seq=1), 5.0, lambda c: None)
    net.settle()
    resp, _ = answer(first)
    assert isinstance(resp, R.TxnResponse) and resp.succeeded and resp.header.revision == 2
    second = net.nodes[follower].txn(cas(b"k", 0, b"two", seq=2), 5.0, lambda c: None)
    net.settle()
    resp, _ = answer(second)
    assert not resp.succeeded and resp.header.revision == 2  # nothing written: no new revision
    assert [(kv.value, kv.version) for kv in resp.responses[0].response_range.kvs] == [(b"one", 1)]
    for node in net.nodes.values():
        assert node.replica.sm.get(b"k") == b"one" and node.replica.sm.revision == 2
        # the client's own session, not a node-assigned one
        assert node.replica.sm.session("c1").sequence == 2


def test_a_retried_cas_is_applied_once_and_answered_with_its_first_outcome() -> None:
    net = Net()
    leader = net.leader()
    node = net.nodes[leader]
    first = node.txn(cas(b"k", 0, b"one", seq=7), 5.0, lambda c: None)
    net.settle()
    assert answer(first)[0].succeeded
    # Another write changes the key: re-applying the CAS would now fail (and
    # a blind re-apply of its put would change the value back).
    node.put(v1_put(b"k", b"other", "w", 1), 5.0, lambda c: None)
    net.settle()
    retry = node.txn(cas(b"k", 0, b"one", seq=7), 5.0, lambda c: None)
    net.settle()
    replay, index = answer(retry)
    assert isinstance(replay, kv_pb2.CommandResult)
    assert replay.succeeded and replay.revision == 2 and index == replay.index
    for n in net.nodes.values():
        assert n.replica.sm.get(b"k") == b"other" and n.replica.sm.revision == 3
    stale = node.txn(cas(b"k", 0, b"one", seq=6), 5.0, lambda c: None)
    net.settle()
    assert isinstance(answer(stale), FailedPrecondition)


def test_a_cas_command_reaching_the_log_twice_is_applied_once() -> None:
    net = Net()
    leader = net.leader()
    follower = next(i for i in IDS if i != leader)
    net.duplicate = True  # every message twice: forwarded commands too
    call = net.nodes[follower].txn(cas(b"k", 0, b"one"), 5.0, lambda c: None)
    net.settle()
    net.duplicate = False
    assert answer(call)[0].succeeded
    for n in net.nodes.values():
        assert n.replica.sm.revision == 2 and n.replica.sm.store.record(b"k").version == 1


def test_a_txn_without_identity_gets_a_node_assigned_one_and_a_read_only_txn_writes_no_session() -> None:
    net = Net()
    leader = net.leader()
    node = net.nodes[leader]
    anon = node.txn(cas(b"k", 0, b"v", client=""), 5.0, lambda c: None)
    net.settle()
    assert answer(anon)[0].succeeded
    sm = node.replica.sm
    assert not sm.sessions and len(sm.node_sessions) == 1
    read = kv_pb2.TxnRequest(
        request=kv_pb2.RequestHeader(client_id="r", sequence=1),
        compare=[C(key=b"k", target=C.VALUE, result=C.EQUAL, value=b"v")],
        success=[R.RequestOp(request_range=R.RangeRequest(key=b"k"))],
    )
    call = node.txn(read, 5.0, lambda c: None)
    net.settle()
    resp, _ = answer(call)
    assert resp.succeeded and resp.responses[0].response_range.kvs[0].value == b"v"
    assert sm.session("r") is None and sm.revision == 2


@pytest.mark.parametrize(
    ("txn", "words"),
    [
        (cas(b"", 0, b"v"), "compare key is empty"),
        (cas(b"k", 0, b"v" * ((1 << 20) + 1)), "value is 1048577 bytes"),
        (kv_pb2.TxnRequest(request=kv_pb2.RequestHeader(sequence=3)), "sequence 3 given without a client_id"),
        (
            kv_pb2.TxnRequest(success=[R.RequestOp(request_txn=R.TxnRequest(success=[R.RequestOp(request_delete_range=R.DeleteRangeRequest())]))]),
            "key is empty",
        ),
    ],
)
def test_a_txn_outside_the_v1_limits_is_invalid_and_proposes_nothing(txn: kv_pb2.TxnRequest, words: str) -> None:
    net = Net()
    leader = net.leader()
    node = net.nodes[leader]
    before = node.replica.core.commit_index
    result = answer(node.txn(txn, 5.0, lambda c: None))
    assert isinstance(result, InvalidArgument) and words in str(result)
    net.settle()
    assert node.replica.core.commit_index == before


def test_etcds_own_refusals_keep_etcds_words() -> None:
    net = Net()
    leader = net.leader()
    ops = [R.RequestOp(request_put=R.PutRequest(key=b"k%d" % i)) for i in range(129)]
    result = answer(net.nodes[leader].txn(kv_pb2.TxnRequest(success=ops), 5.0, lambda c: None))
    assert isinstance(result, EtcdFailure) and result.message == etcd.ERR_TOO_MANY_OPS.message
    twice = [R.RequestOp(request_put=R.PutRequest(key=b"k"))] * 2
    result = answer(net.nodes[leader].txn(kv_pb2.TxnRequest(success=twice), 5.0, lambda c: None))
    assert isinstance(result, EtcdFailure) and result.message == etcd.ERR_DUPLICATE_KEY.message


# ---- the state machine's table for a v1 Txn ----------------------------------------


def _txn_command(client_id: str, sequence: int, txn: R.TxnRequest) -> bytes:
    cmd = kv_pb2.Command(client_id=client_id, sequence=sequence)
    cmd.etcd.txn.CopyFrom(txn)
    return commands.encode(cmd)


def test_state_machine_remembers_a_v1_txns_outcome_and_not_a_failed_one() -> None:
    sm = KVStateMachine()
    txn = kv_pb2.TxnRequest()
    txn.MergeFrom(cas(b"k", 0, b"v"))
    etcd_txn = R.TxnRequest(compare=txn.compare, success=txn.success, failure=txn.failure)
    (a,) = sm.apply(1, (_txn_command("c", 1, etcd_txn),))
    assert isinstance(a.result, R.TxnResponse) and a.result.succeeded
    (b,) = sm.apply(2, (_txn_command("c", 1, etcd_txn),))  # the same identity again
    assert isinstance(b.result, kv_pb2.CommandResult)
    assert (b.result.succeeded, b.result.revision, b.result.index) == (True, 2, 1) and sm.revision == 2
    (c,) = sm.apply(3, (_txn_command("c", 2, etcd_txn),))  # a new request: the compare fails now
    assert isinstance(c.result, R.TxnResponse) and not c.result.succeeded
    assert sm.session("c").result.succeeded is False and sm.session("c").sequence == 2
    (d,) = sm.apply(4, (_txn_command("c", 1, etcd_txn),))
    assert d.result.code == kv_pb2.CommandResult.STALE_SEQUENCE
    # a Txn refused at apply (a put under a lease that does not exist) wrote
    # nothing; its retry gets the refusal back, as a command of an older
    # binary would (it remembers every etcd command)
    bad = R.TxnRequest(success=[R.RequestOp(request_put=R.PutRequest(key=b"x", lease=7))])
    (e,) = sm.apply(5, (_txn_command("c", 3, bad),))
    assert isinstance(e.result, etcd.EtcdError) and sm.get(b"x") is None and sm.revision == 2
    (f,) = sm.apply(6, (_txn_command("c", 3, bad),))
    assert (f.result.code, f.result.error) == (kv_pb2.CommandResult.INVALID, e.result.message)
