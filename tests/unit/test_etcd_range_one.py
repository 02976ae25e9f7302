"""The one-key Range's fast path: ``kv.etcd.encode_range_one`` writes the
bytes the general path's message serializes to (``serve_range`` and the
header etcd's API fills), for every store state and request flag it
serves; ``is_range_one`` sends everything else to the general path; the
node layer's ``range_one`` reads as a v1 Get does."""

from __future__ import annotations

import pytest

from paxoskv.etcdpb import rpc_pb2
from paxoskv.kv import etcd
from paxoskv.kv.mvcc import MVCCStore
from paxoskv.replica.errors import EtcdFailure
from paxoskv.replica.etcd import cluster_uid, member_id

from test_node_layer import IDS, Net
from test_node_layer_etcd import answer, put

R = rpc_pb2
CLUSTER, MEMBER = cluster_uid("c"), member_id("c", 2)


def general(store: MVCCStore, req: R.RangeRequest, raft_term: int) -> bytes:
    """The general path's reply: serve_range, then the header as EtcdFacade._fill sets it."""
    resp = etcd.serve_range(store, req)
    assert isinstance(resp, R.RangeResponse)
    h = resp.header
    h.cluster_id, h.member_id, h.raft_term = CLUSTER, MEMBER, raft_term
    return resp.SerializeToString()


def fast(store: MVCCStore, req: R.RangeRequest, raft_term: int) -> bytes:
    assert etcd.is_range_one(req)
    prefix = etcd.header_prefix(CLUSTER, MEMBER)
    return etcd.encode_range_one(prefix, store.revision, raft_term, req.key, store.record(req.key), req.keys_only, req.count_only)


def a_store() -> MVCCStore:
    store = MVCCStore()
    for key, value, lease in ((b"a", b"1", 0), (b"b", b"x" * 300, 0), (b"a", b"2", 0), (b"e", b"", 0), (b"l", b"v", 7)):
        store.begin()
        store.put(key, value, lease)
        store.end()
    store.begin()
    store.put(b"gone", b"v")
    store.end()
    store.begin()
    store.delete(b"gone")
    store.end()
    return store


FLAGS = [
    {},
    {"keys_only": True},
    {"count_only": True},
    {"limit": 1},
    {"limit": -3},
    {"serializable": True},
    {"sort_order": R.RangeRequest.DESCEND, "sort_target": R.RangeRequest.VALUE},
    {"sort_target": R.RangeRequest.MOD},
]


@pytest.mark.parametrize("flags", FLAGS, ids=lambda f: ",".join(f) or "plain")
@pytest.mark.parametrize("key", [b"a", b"b", b"e", b"l", b"gone", b"never"])
def test_the_fast_reply_is_the_general_one_byte_for_byte(key: bytes, flags: dict) -> None:
    store = a_store()
    req = R.RangeRequest(key=key, **flags)
    for term in (0, 1, 300):
        assert fast(store, req, term) == general(store, req, term)


def test_large_revisions_and_ids_encode_as_protobuf_does() -> None:
    store = MVCCStore(revision=(1 << 40) + 5)
    store.begin()
    store.put(b"k", b"v", lease=(1 << 62) + 1)
    store.end()
    req = R.RangeRequest(key=b"k")
    assert fast(store, req, 1 << 33) == general(store, req, 1 << 33)
    parsed = R.RangeResponse.FromString(fast(store, req, 1 << 33))
    assert parsed.header.member_id == MEMBER and parsed.kvs[0].lease == (1 << 62) + 1 and parsed.count == 1


@pytest.mark.parametrize(
    "fields",
    [
        {"range_end": b"z"},
        {"range_end": b"\x00"},
        {"revision": 3},
        {"min_mod_revision": 2},
        {"max_mod_revision": 2},
        {"min_create_revision": 2},
        {"max_create_revision": 2},
    ],
    ids=lambda f: next(iter(f)),
)
def test_ranges_of_many_keys_past_revisions_and_filters_take_the_general_path(fields: dict) -> None:
    assert etcd.is_range_one(R.RangeRequest(key=b"a"))
    assert not etcd.is_range_one(R.RangeRequest(key=b"a", **fields))
    assert not etcd.is_range_one(R.RangeRequest())  # no key: the general path refuses it as etcd does


def test_the_node_layer_reads_one_key_through_the_read_index_or_at_once_when_serializable() -> None:
    net = Net()
    leader = net.leader()
    follower = next(i for i in IDS if i != leader)
    net.nodes[leader].etcd_write(put(b"a", b"1", lease=0), 5.0, lambda c: None)
    net.settle()
    node = net.nodes[follower]
    lin = node.etcd.range_one(R.RangeRequest(key=b"a"), 5.0, lambda c: None)
    assert not lin.done  # waits for the leader's read index, as a v1 get does
    net.settle()
    rec, revision = answer(lin)
    assert (rec.value, rec.mod, rec.version, revision) == (b"1", 2, 1, 2)
    ser = node.etcd.range_one(R.RangeRequest(key=b"nope", serializable=True), 5.0, lambda c: None)
    assert answer(ser) == (None, 2)  # at once, from the local state
    node.stop("stopping")
    stopped = node.etcd.range_one(R.RangeRequest(key=b"a"), 5.0, lambda c: None)
    failed = answer(stopped)
    assert isinstance(failed, EtcdFailure) and failed.message == etcd.ERR_STOPPED.message

