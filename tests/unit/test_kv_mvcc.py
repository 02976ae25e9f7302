"""paxoskv.kv.mvcc and paxoskv.kv.etcd: revisions, versions, generations,
history rows and compaction; etcd's Range, Put, DeleteRange, Txn and
Compact on the store; and a property test against a model that keeps a
full copy of the map at every revision."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paxoskv.etcdpb import kv_pb2 as mvccpb
from paxoskv.etcdpb import rpc_pb2
from paxoskv.kv import etcd
from paxoskv.kv.etcd import EtcdError, EtcdLimits
from paxoskv.kv.mvcc import (
    MemoryHistory,
    MVCCStore,
    decode_row,
    encode_kv,
    encode_row,
    encode_tombstone,
    row_key,
    split_row_key,
)
from paxoskv.v1 import storage_pb2

Range = rpc_pb2.RangeRequest
Cmp = rpc_pb2.Compare


class _Leases:
    def __init__(self, *ids: int) -> None:
        self.ids = set(ids)

    def exists(self, lease_id: int) -> bool:
        return lease_id in self.ids


def put(store: MVCCStore, key: bytes, value: bytes, lease: int = 0, **kw: object) -> rpc_pb2.PutResponse:
    r = etcd.apply_put(store, rpc_pb2.PutRequest(key=key, value=value, lease=lease, **kw), _Leases(lease), False)
    assert not isinstance(r, EtcdError), r
    return r


def delete(store: MVCCStore, key: bytes, end: bytes = b"", prev_kv: bool = False) -> rpc_pb2.DeleteRangeResponse:
    return etcd.apply_delete_range(store, rpc_pb2.DeleteRangeRequest(key=key, range_end=end, prev_kv=prev_kv))


def rng(store: MVCCStore, key: bytes, end: bytes = b"", **kw: object) -> rpc_pb2.RangeResponse:
    r = etcd.serve_range(store, Range(key=key, range_end=end, **kw))
    assert not isinstance(r, EtcdError), r
    return r


def keys(resp: rpc_pb2.RangeResponse) -> list[bytes]:
    return [kv.key for kv in resp.kvs]


def op_put(key: bytes, value: bytes = b"v", **kw: object) -> rpc_pb2.RequestOp:
    return rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key, value=value, **kw))


def op_del(key: bytes, end: bytes = b"") -> rpc_pb2.RequestOp:
    return rpc_pb2.RequestOp(request_delete_range=rpc_pb2.DeleteRangeRequest(key=key, range_end=end))


def op_range(key: bytes, end: bytes = b"", **kw: object) -> rpc_pb2.RequestOp:
    return rpc_pb2.RequestOp(request_range=Range(key=key, range_end=end, **kw))


def op_txn(**kw: object) -> rpc_pb2.RequestOp:
    return rpc_pb2.RequestOp(request_txn=rpc_pb2.TxnRequest(**kw))


def txn(store: MVCCStore, leases: etcd.Leases = etcd.NO_LEASES, **kw: object) -> rpc_pb2.TxnResponse | EtcdError:
    return etcd.apply_txn(store, rpc_pb2.TxnRequest(**kw), leases, False)


# ---- revisions, versions, generations ------------------------------------------------------


def test_a_store_starts_at_revision_1_and_each_write_bumps_it_once() -> None:
    s = MVCCStore()
    assert (s.revision, s.compact_revision, len(s)) == (1, -1, 0)
    assert put(s, b"a", b"1").header.revision == 2
    assert put(s, b"a", b"2").header.revision == 3  # same value or not: a new revision
    assert put(s, b"a", b"2").header.revision == 4
    rec = s.record(b"a")
    assert (rec.create, rec.mod, rec.version, rec.value) == (2, 4, 3, b"2")
    assert s.get(b"a") == b"2" and s.get(b"b") is None


def test_a_delete_ends_the_generation_and_a_miss_changes_nothing() -> None:
    s = MVCCStore()
    put(s, b"a", b"1")
    put(s, b"a", b"2")
    d = delete(s, b"a")
    assert (d.deleted, d.header.revision, s.revision) == (1, 4, 4)
    miss = delete(s, b"a")
    assert (miss.deleted, miss.header.revision, s.revision) == (0, 4, 4)  # no bump
    put(s, b"a", b"new")
    rec = s.record(b"a")
    assert (rec.create, rec.mod, rec.version) == (5, 5, 1)  # a new generation


def test_the_writes_of_one_transaction_share_a_revision_with_sub_revisions() -> None:
    s = MVCCStore()
    r = txn(s, success=[op_put(b"a"), op_put(b"b"), op_del(b"a"), op_put(b"c")])
    assert r.header.revision == 2 and s.revision == 2
    rows = s.take_changes()
    assert [split_row_key(k) for k in rows] == [(2, 0), (2, 1), (2, 2), (2, 3)]
    assert [decode_row(v).kv.key for v in rows.values()] == [b"a", b"b", b"a", b"c"]
    assert [decode_row(v).tombstone for v in rows.values()] == [False, False, True, False]
    assert decode_row(rows[row_key(2, 2)]).kv == mvccpb.KeyValue(key=b"a", mod_revision=2)
    assert s.get(b"a") is None and s.record(b"b").version == 1


def test_a_txn_that_writes_nothing_does_not_bump_the_revision() -> None:
    s = MVCCStore()
    put(s, b"a", b"1")
    for kw in ({}, {"success": [op_range(b"a")]}, {"success": [op_del(b"zzz")]},
               {"compare": [Cmp(key=b"a", target=Cmp.VALUE, value=b"x")]}):
        r = txn(s, **kw)
        assert r.header.revision == 2 and s.revision == 2, kw
    assert txn(s).succeeded  # an empty txn succeeds


def test_rows_encode_as_protobuf_does() -> None:
    for key, c, m, v, val, lease in itertools.product(
        [b"k", b"x" * 200], [1, 200, 70000, 3 << 21, 1 << 40], [1, 300, 5_000_000], [1, 2, 129],
        [b"", b"v", b"y" * 20000], [0, 5, -3, 1 << 62],
    ):
        kv = mvccpb.KeyValue(key=key, create_revision=c, mod_revision=m, version=v, value=val, lease=lease)
        assert encode_kv(key, c, m, v, val, lease) == kv.SerializeToString(deterministic=True)
        want = storage_pb2.HistoryRecord(kv=kv).SerializeToString(deterministic=True)
        assert encode_row(key, c, m, v, val, lease) == want
    tomb = storage_pb2.HistoryRecord(kv=mvccpb.KeyValue(key=b"k", mod_revision=9), tombstone=True)
    assert encode_tombstone(b"k", 9) == tomb.SerializeToString(deterministic=True)


def _state(s: MVCCStore) -> tuple:
    live = {k: (r.value, r.create, r.mod, r.sub, r.version, r.lease) for k, r in s._live.items()}
    return s.revision, live, dict(s.items()), s._index, s._messy, s._leased, sorted(s._sorted_keys())


@pytest.mark.parametrize("start", [1, 3 << 21])
def test_put_many_is_the_same_puts_one_by_one(start: int) -> None:
    """Rows (byte for byte), records, index, leases and revisions, over new
    and old keys, keys and values across the varint boundaries, a key put
    twice in one call, versions past 127 and a leased key losing its lease."""
    one, many = MVCCStore(revision=start), MVCCStore(revision=start)
    keys = [b"k", b"x" * 127, b"y" * 128, b"z" * 300]
    values = [b"", b"v", b"w" * 127, b"u" * 128, b"t" * 20000]
    for s in (one, many):
        s.begin()
        s.put(b"k", b"leased", lease=7)
        s.end()
    for rnd in range(140):
        ks = [keys[(rnd + i) % len(keys)] for i in range(1 + rnd % 6)] + [b"k", b"k"]
        vs = [values[(rnd * 3 + i) % len(values)] for i in range(len(ks))]
        one.begin()
        many.begin()
        if rnd % 9 == 4:  # a delete first: the key's next put starts a new generation
            one.delete(keys[2])
            many.delete(keys[2])
        expect = [one.put(k, v) is not None for k, v in zip(ks, vs)]
        assert list(many.put_many(ks, vs)) == expect
        assert one.changed and many.changed
        one.end()
        many.end()
        assert many.take_changes() == one.take_changes()
        assert _state(many) == _state(one)
    assert many.record(b"k").version > 128 and many.lease_keys(7) == set()
    many.begin()
    assert many.put_many([], []) == bytearray() and not many.changed
    many.end()
    assert many.revision == one.revision


def test_a_store_rebuilt_from_its_rows_is_the_same_store() -> None:
    s = MVCCStore()
    for i in range(30):
        put(s, b"k%d" % (i % 7), b"v%d" % i)
        if i % 5 == 0:
            delete(s, b"k%d" % (i % 3))
    etcd.apply_compaction(s, rpc_pb2.CompactionRequest(revision=12))
    s.take_changes()
    rows = dict(s.history_rows())
    again = MVCCStore(rows, revision=s.revision, compact_revision=s.compact_revision)
    assert dict(again.items()) == dict(s.items())
    for rev in range(12, s.revision + 1):
        assert rng(again, b"\x00", b"\x00", revision=rev) == rng(s, b"\x00", b"\x00", revision=rev)


def test_a_store_refuses_rows_that_do_not_fit() -> None:
    with pytest.raises(ValueError, match="after the store's revision"):
        MVCCStore({row_key(5, 0): encode_row(b"k", 5, 5, 1, b"v", 0)}, revision=4)
    with pytest.raises(ValueError, match="holds mod_revision"):
        MVCCStore({row_key(3, 0): encode_row(b"k", 2, 2, 1, b"v", 0)}, revision=4)
    keyless = storage_pb2.HistoryRecord(kv=mvccpb.KeyValue(mod_revision=3)).SerializeToString()
    with pytest.raises(ValueError, match="no key"):
        MVCCStore({row_key(3, 0): keyless}, revision=4)
    with pytest.raises(ValueError, match="does not parse"):
        MVCCStore({row_key(3, 0): b"\x0a\x0b"}, revision=4)


# ---- Range -----------------------------------------------------------------------------------


@pytest.fixture
def abc() -> MVCCStore:
    """/a=1 (rev 2), /b=2 (3), /c=3 (4), /a=10 (5), x=x (6)."""
    s = MVCCStore()
    for k, v in ((b"/a", b"1"), (b"/b", b"2"), (b"/c", b"3"), (b"/a", b"10"), (b"x", b"x")):
        put(s, k, v)
    return s


def test_range_forms_key_range_prefix_from_key(abc: MVCCStore) -> None:
    assert keys(rng(abc, b"/a")) == [b"/a"]
    assert keys(rng(abc, b"/nope")) == []
    assert keys(rng(abc, b"/a", b"/c")) == [b"/a", b"/b"]
    assert keys(rng(abc, b"/", b"0")) == [b"/a", b"/b", b"/c"]  # prefix "/"
    assert keys(rng(abc, b"/b", b"\x00")) == [b"/b", b"/c", b"x"]  # from key
    assert keys(rng(abc, b"\x00", b"\x00")) == [b"/a", b"/b", b"/c", b"x"]  # every key
    assert keys(rng(abc, b"/c", b"/a")) == []  # range_end below key: empty, no error
    r = rng(abc, b"/a")
    assert r.header.revision == 6 and r.count == 1
    assert r.kvs[0] == mvccpb.KeyValue(key=b"/a", create_revision=2, mod_revision=5, version=2, value=b"10")


def test_range_limit_more_and_count(abc: MVCCStore) -> None:
    r = rng(abc, b"\x00", b"\x00", limit=2)
    assert keys(r) == [b"/a", b"/b"] and r.more and r.count == 4
    r = rng(abc, b"\x00", b"\x00", limit=4)
    assert len(r.kvs) == 4 and not r.more and r.count == 4
    r = rng(abc, b"\x00", b"\x00", limit=-1)
    assert len(r.kvs) == 4 and not r.more
    r = rng(abc, b"\x00", b"\x00", count_only=True)
    assert (list(r.kvs), r.count, r.more) == ([], 4, False)
    r = rng(abc, b"/", b"0", keys_only=True)
    assert [kv.value for kv in r.kvs] == [b"", b"", b""] and [kv.version for kv in r.kvs] == [2, 1, 1]


def test_range_at_a_past_revision_and_its_errors(abc: MVCCStore) -> None:
    assert [kv.value for kv in rng(abc, b"/", b"0", revision=4).kvs] == [b"1", b"2", b"3"]
    assert keys(rng(abc, b"/", b"0", revision=2)) == [b"/a"]
    assert keys(rng(abc, b"/", b"0", revision=1)) == []
    assert rng(abc, b"/a", revision=3).header.revision == 6  # the current revision, as etcd
    assert etcd.serve_range(abc, Range(key=b"/a", revision=7)) == etcd.ERR_FUTURE_REV
    assert etcd.apply_compaction(abc, rpc_pb2.CompactionRequest(revision=4)).header.revision == 6
    assert etcd.serve_range(abc, Range(key=b"/a", revision=3)) == etcd.ERR_COMPACTED
    assert [kv.value for kv in rng(abc, b"/", b"0", revision=4).kvs] == [b"1", b"2", b"3"]  # at it: served
    assert rng(abc, b"/a", revision=-5).kvs[0].value == b"10"  # <= 0: current


def test_range_reads_past_rows_from_the_change_set_and_from_the_reader(abc: MVCCStore) -> None:
    before = rng(abc, b"\x00", b"\x00", revision=3)
    history = MemoryHistory()
    history.update(abc.take_changes())
    on_disk = MVCCStore(history.rows, revision=abc.revision, reader=history)
    assert rng(on_disk, b"\x00", b"\x00", revision=3) == before
    put(on_disk, b"/b", b"new")  # row 7 only in the change set, row 3 only in the reader
    assert [kv.value for kv in rng(on_disk, b"/b", revision=3).kvs] == [b"2"]
    assert [kv.value for kv in rng(on_disk, b"/b", revision=7).kvs] == [b"new"]


@pytest.mark.parametrize(
    ("target", "order", "expected"),
    [
        (Range.KEY, Range.NONE, [b"/a", b"/b", b"/c"]),
        (Range.KEY, Range.DESCEND, [b"/c", b"/b", b"/a"]),
        (Range.MOD, Range.DESCEND, [b"/a", b"/c", b"/b"]),
        (Range.CREATE, Range.ASCEND, [b"/a", b"/b", b"/c"]),
        (Range.CREATE, Range.NONE, [b"/a", b"/b", b"/c"]),  # a target alone sorts ascending
        (Range.VALUE, Range.DESCEND, [b"/c", b"/b", b"/a"]),  # "3" > "2" > "10"
        (Range.VERSION, Range.NONE, [b"/b", b"/c", b"/a"]),  # ties keep key order
        (Range.VERSION, Range.DESCEND, [b"/a", b"/b", b"/c"]),
    ],
)
def test_range_sorts(abc: MVCCStore, target: int, order: int, expected: list[bytes]) -> None:
    assert keys(rng(abc, b"/", b"0", sort_target=target, sort_order=order)) == expected


def test_range_sort_and_filters_read_everything_before_the_limit(abc: MVCCStore) -> None:
    r = rng(abc, b"/", b"0", sort_target=Range.MOD, sort_order=Range.DESCEND, limit=1)
    assert keys(r) == [b"/a"] and r.more and r.count == 3
    r = rng(abc, b"/", b"0", min_mod_revision=3, max_mod_revision=4)
    assert keys(r) == [b"/b", b"/c"] and r.count == 3  # count before the filters
    r = rng(abc, b"/", b"0", min_create_revision=3)
    assert keys(r) == [b"/b", b"/c"]
    r = rng(abc, b"/", b"0", max_create_revision=2, limit=1)
    assert keys(r) == [b"/a"] and not r.more


# ---- Put and DeleteRange -------------------------------------------------------------------


def test_put_prev_kv_ignore_value_ignore_lease_and_leases() -> None:
    s = MVCCStore()
    leases = _Leases(7)
    assert etcd.apply_put(s, rpc_pb2.PutRequest(key=b"k", value=b"v", lease=7), leases, False).header.revision == 2
    r = etcd.apply_put(s, rpc_pb2.PutRequest(key=b"k", value=b"w", prev_kv=True, ignore_lease=True), leases, False)
    assert r.prev_kv == mvccpb.KeyValue(key=b"k", create_revision=2, mod_revision=2, version=1, value=b"v", lease=7)
    assert (s.record(b"k").value, s.record(b"k").lease) == (b"w", 7)
    etcd.apply_put(s, rpc_pb2.PutRequest(key=b"k", ignore_value=True), leases, False)
    assert (s.record(b"k").value, s.record(b"k").lease, s.record(b"k").version) == (b"w", 0, 3)
    assert etcd.apply_put(s, rpc_pb2.PutRequest(key=b"k", lease=8), leases, False) == etcd.ERR_LEASE_NOT_FOUND
    assert etcd.apply_put(s, rpc_pb2.PutRequest(key=b"no", ignore_value=True), leases, False) == etcd.ERR_KEY_NOT_FOUND
    assert etcd.apply_put(s, rpc_pb2.PutRequest(key=b"k", value=b"x"), leases, True) == etcd.ERR_NO_SPACE
    assert s.revision == 4  # the refused ones wrote nothing
    assert not put(s, b"new", b"1", prev_kv=True).HasField("prev_kv")


def test_delete_range_forms_and_prev_kvs(abc: MVCCStore) -> None:
    r = delete(abc, b"/", b"0", prev_kv=True)
    assert r.deleted == 3 and [kv.key for kv in r.prev_kvs] == [b"/a", b"/b", b"/c"]
    assert r.prev_kvs[0].value == b"10" and r.header.revision == 7
    rows = [decode_row(v) for v in abc.take_changes().values()]
    assert [(rec.kv.key, rec.tombstone) for rec in rows[-3:]] == [(b"/a", True), (b"/b", True), (b"/c", True)]
    assert delete(abc, b"x", b"\x00").deleted == 1 and len(abc) == 0


# ---- Txn -------------------------------------------------------------------------------------


def _cmp(target: int, result: int, key: bytes = b"/a", end: bytes = b"", **operand: object) -> Cmp:
    return Cmp(key=key, range_end=end, target=target, result=result, **operand)


@pytest.mark.parametrize(
    ("target", "field", "equal", "smaller", "bigger"),
    [
        (Cmp.VALUE, "value", b"10", b"1", b"9"),
        (Cmp.VERSION, "version", 2, 1, 3),
        (Cmp.CREATE, "create_revision", 2, 1, 3),
        (Cmp.MOD, "mod_revision", 5, 4, 6),
        (Cmp.LEASE, "lease", 0, -1, 1),
    ],
)
def test_compares_every_target_and_result(abc, target, field, equal, smaller, bigger) -> None:  # noqa: ANN001
    def holds(result: int, operand: object, key: bytes = b"/a", end: bytes = b"") -> bool:
        r = txn(abc, compare=[_cmp(target, result, key, end, **{field: operand})])
        return r.succeeded

    assert holds(Cmp.EQUAL, equal) and not holds(Cmp.EQUAL, smaller)
    assert holds(Cmp.NOT_EQUAL, bigger) and not holds(Cmp.NOT_EQUAL, equal)
    assert holds(Cmp.GREATER, smaller) and not holds(Cmp.GREATER, equal)
    assert holds(Cmp.LESS, bigger) and not holds(Cmp.LESS, equal)


def test_compares_over_a_range_hold_for_every_key_and_a_missing_key_is_zero(abc: MVCCStore) -> None:
    assert txn(abc, compare=[_cmp(Cmp.VERSION, Cmp.GREATER, b"/", b"0", version=0)]).succeeded
    assert not txn(abc, compare=[_cmp(Cmp.VERSION, Cmp.GREATER, b"/", b"0", version=1)]).succeeded  # /b, /c are 1
    assert txn(abc, compare=[_cmp(Cmp.MOD, Cmp.LESS, b"/", b"0", mod_revision=6)]).succeeded
    assert txn(abc, compare=[_cmp(Cmp.CREATE, Cmp.EQUAL, b"/zz", create_revision=0)]).succeeded
    assert txn(abc, compare=[_cmp(Cmp.VERSION, Cmp.EQUAL, b"/zz", version=0)]).succeeded
    # a value compare on no key is false, whatever it asks
    assert not txn(abc, compare=[_cmp(Cmp.VALUE, Cmp.EQUAL, b"/zz", value=b"")]).succeeded
    assert not txn(abc, compare=[_cmp(Cmp.VALUE, Cmp.NOT_EQUAL, b"/zz", value=b"x")]).succeeded
    # the operand is taken only from the target's own field
    assert txn(abc, compare=[_cmp(Cmp.VERSION, Cmp.GREATER, mod_revision=100)]).succeeded
    # compares are a conjunction
    both = [_cmp(Cmp.VALUE, Cmp.EQUAL, value=b"10"), _cmp(Cmp.VERSION, Cmp.EQUAL, version=9)]
    assert not txn(abc, compare=both).succeeded


def test_txn_branches_responses_and_reads_of_its_own_writes(abc: MVCCStore) -> None:
    r = txn(abc, compare=[_cmp(Cmp.VALUE, Cmp.EQUAL, value=b"10")],
            success=[op_put(b"/t", b"yes"), op_range(b"/t"), op_range(b"/t", revision=6), op_del(b"/zz")],
            failure=[op_put(b"/t", b"no")])
    assert r.succeeded and r.header.revision == 7
    kinds = [resp.WhichOneof("response") for resp in r.responses]
    assert kinds == ["response_put", "response_range", "response_range", "response_delete_range"]
    assert r.responses[0].response_put.header.revision == 7
    assert [kv.value for kv in r.responses[1].response_range.kvs] == [b"yes"]  # its own write
    assert r.responses[1].response_range.header.revision == 7
    assert list(r.responses[2].response_range.kvs) == []  # at revision 6: not yet
    assert r.responses[3].response_delete_range.header.revision == 7  # the txn wrote before it
    f = txn(abc, compare=[_cmp(Cmp.VALUE, Cmp.EQUAL, value=b"nope")], failure=[op_range(b"/t")])
    assert not f.succeeded and f.header.revision == 7 and f.responses[0].response_range.kvs[0].value == b"yes"


def test_a_nested_txn_sees_the_state_before_the_outer_writes(abc: MVCCStore) -> None:
    inner = op_txn(compare=[_cmp(Cmp.VERSION, Cmp.EQUAL, b"/new", version=0)], success=[op_put(b"/inner", b"1")],
                   failure=[op_put(b"/inner", b"2")])
    r = txn(abc, success=[op_put(b"/new", b"x"), inner])
    assert r.succeeded and abc.get(b"/inner") == b"1"  # compared before /new was written
    nested = r.responses[1].response_txn
    assert nested.succeeded and nested.HasField("header") and nested.header == rpc_pb2.ResponseHeader()
    assert nested.responses[0].response_put.header.revision == 7


def test_txn_checks_the_taken_branch_before_writing_anything(abc: MVCCStore) -> None:
    assert txn(abc, success=[op_put(b"/ok"), op_put(b"/zz", ignore_value=True)]) == etcd.ERR_KEY_NOT_FOUND
    assert txn(abc, success=[op_put(b"/ok"), op_put(b"/l", lease=5)]) == etcd.ERR_LEASE_NOT_FOUND
    assert txn(abc, success=[op_put(b"/ok"), op_range(b"/a", revision=99)]) == etcd.ERR_FUTURE_REV
    # the puts are checked before the ranges
    assert txn(abc, success=[op_range(b"/a", revision=99), op_put(b"/l", lease=5)]) == etcd.ERR_LEASE_NOT_FOUND
    # the branch not taken is not checked
    assert txn(abc, compare=[_cmp(Cmp.VERSION, Cmp.EQUAL, version=2)], failure=[op_put(b"/l", lease=5)]).succeeded
    assert abc.revision == 6 and abc.get(b"/ok") is None
    etcd.apply_compaction(abc, rpc_pb2.CompactionRequest(revision=4))
    assert txn(abc, success=[op_range(b"/a", revision=3)]) == etcd.ERR_COMPACTED
    assert txn(abc, success=[op_put(b"/p")], leases=etcd.NO_LEASES).header.revision == 7
    assert etcd.apply_txn(abc, rpc_pb2.TxnRequest(success=[op_put(b"/q")]), etcd.NO_LEASES, True) == etcd.ERR_NO_SPACE
    assert etcd.apply_txn(abc, rpc_pb2.TxnRequest(success=[op_del(b"/p")]), etcd.NO_LEASES, True).succeeded


def test_a_read_only_txn_is_served_without_writing(abc: MVCCStore) -> None:
    req = rpc_pb2.TxnRequest(compare=[_cmp(Cmp.MOD, Cmp.EQUAL, mod_revision=5)], success=[op_range(b"/", b"0")])
    assert etcd.is_txn_readonly(req) and not etcd.is_txn_serializable(req)
    abc.take_changes()
    r = etcd.serve_txn(abc, req)
    assert r.succeeded and r.header.revision == 6 and len(r.responses[0].response_range.kvs) == 3
    assert not abc.take_changes()


# ---- the API-layer checks --------------------------------------------------------------------


def test_checks_of_puts_ranges_and_deletes() -> None:
    assert etcd.check_put(rpc_pb2.PutRequest(value=b"v")) == etcd.ERR_EMPTY_KEY
    assert etcd.check_put(rpc_pb2.PutRequest(key=b"k", value=b"v", ignore_value=True)) == etcd.ERR_VALUE_PROVIDED
    assert etcd.check_put(rpc_pb2.PutRequest(key=b"k", lease=3, ignore_lease=True)) == etcd.ERR_LEASE_PROVIDED
    assert etcd.check_range(Range()) == etcd.ERR_EMPTY_KEY
    assert etcd.check_delete_range(rpc_pb2.DeleteRangeRequest(range_end=b"z")) == etcd.ERR_EMPTY_KEY
    assert etcd.check_put(rpc_pb2.PutRequest(key=b"k")) is None


def test_txn_op_limits_count_the_widest_list_and_nested_txns_get_the_rest() -> None:
    limits = EtcdLimits()
    ok = rpc_pb2.TxnRequest(success=[op_put(b"k%d" % i) for i in range(128)])
    assert etcd.check_txn(ok, limits) is None
    big = rpc_pb2.TxnRequest(failure=[op_put(b"k%d" % i) for i in range(129)])
    assert etcd.check_txn(big, limits) == etcd.ERR_TOO_MANY_OPS
    cmps = rpc_pb2.TxnRequest(compare=[_cmp(Cmp.VERSION, Cmp.EQUAL, b"k%d" % i) for i in range(129)])
    assert etcd.check_txn(cmps, limits) == etcd.ERR_TOO_MANY_OPS
    nested = rpc_pb2.TxnRequest(success=[op_put(b"a"), op_txn(success=[op_put(b"k%d" % i) for i in range(127)])])
    assert etcd.check_txn(nested, limits) == etcd.ERR_TOO_MANY_OPS  # 128 - 2 left for it
    fits = rpc_pb2.TxnRequest(success=[op_put(b"a"), op_txn(success=[op_put(b"k%d" % i) for i in range(126)])])
    assert etcd.check_txn(fits, limits) is None
    assert etcd.check_txn(rpc_pb2.TxnRequest(success=[rpc_pb2.RequestOp()]), limits) == etcd.ERR_KEY_NOT_FOUND
    assert etcd.check_txn(rpc_pb2.TxnRequest(compare=[Cmp()]), limits) == etcd.ERR_EMPTY_KEY


_PLAIN = [op_put(b"a", b"1"), op_put(b"b" * 200, b""), op_put(b"c", b"x" * 300)]


@pytest.mark.parametrize(
    ("req", "plain"),
    [
        (rpc_pb2.TxnRequest(success=_PLAIN), True),
        (rpc_pb2.TxnRequest(success=[op_put(b"a", b"2")]), True),
        (rpc_pb2.TxnRequest(compare=[_cmp(Cmp.VERSION, Cmp.EQUAL, b"a", version=1)], success=_PLAIN), True),
        (rpc_pb2.TxnRequest(compare=[_cmp(Cmp.VERSION, Cmp.EQUAL, b"a", version=9)], success=_PLAIN), True),
        (rpc_pb2.TxnRequest(compare=[Cmp()], success=_PLAIN), True),  # an empty compare key: refused all the same
        (rpc_pb2.TxnRequest(success=[op_put(b"k%d" % i) for i in range(129)]), True),  # too many ops
        (rpc_pb2.TxnRequest(compare=[_cmp(Cmp.VERSION, Cmp.EQUAL, b"k%d" % i) for i in range(129)], success=_PLAIN), True),
        (rpc_pb2.TxnRequest(), False),
        (rpc_pb2.TxnRequest(success=[op_put(b"a"), op_put(b"a")]), False),
        (rpc_pb2.TxnRequest(success=[op_put(b"")]), False),
        (rpc_pb2.TxnRequest(success=[op_put(b"a", lease=5)]), False),
        (rpc_pb2.TxnRequest(success=[op_put(b"a", prev_kv=True)]), False),
        (rpc_pb2.TxnRequest(success=[op_put(b"a", b"", ignore_value=True)]), False),
        (rpc_pb2.TxnRequest(success=[op_put(b"a", ignore_lease=True)]), False),
        (rpc_pb2.TxnRequest(success=[*_PLAIN, op_del(b"z")]), False),
        (rpc_pb2.TxnRequest(success=[*_PLAIN, op_range(b"a")]), False),
        (rpc_pb2.TxnRequest(success=[*_PLAIN, rpc_pb2.RequestOp()]), False),
        (rpc_pb2.TxnRequest(success=_PLAIN, failure=[op_put(b"f")]), False),
    ],
)
def test_a_txn_of_plain_puts_is_checked_and_applied_as_any_txn(req: rpc_pb2.TxnRequest, plain: bool) -> None:
    """``plain_puts`` picks exactly the Txns of plain puts of distinct keys,
    and with it every check, the cost and the apply (response byte for byte,
    rows, records, revision) are what they are without it."""
    found = etcd.plain_puts(req)
    assert (found is not None) is plain
    if found is None:
        return
    assert found == ([op.request_put.key for op in req.success], [op.request_put.value for op in req.success])
    limits = EtcdLimits()
    assert etcd.check_txn(req, limits, found) == etcd.check_txn(req, limits)
    assert etcd.check_structure("txn", req, found) == etcd.check_structure("txn", req)
    assert etcd.txn_cost(req, found) == etcd.txn_cost(req)
    for nospace in (False, True):
        fast, slow = MVCCStore(), MVCCStore()
        for s in (fast, slow):
            put(s, b"a", b"0", lease=3)
            put(s, b"c", b"0")
        a = etcd.apply_txn(fast, req, _Leases(3), nospace, found)
        b = etcd.apply_txn(slow, req, _Leases(3), nospace)
        if isinstance(b, EtcdError):
            assert a == b
        else:
            assert a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True)
        assert fast.take_changes() == slow.take_changes()
        assert _state(fast) == _state(slow)


@pytest.mark.parametrize(
    ("ops", "duplicate"),
    [
        ([op_put(b"a"), op_put(b"a")], True),
        ([op_del(b"a"), op_del(b"a")], False),  # overlapping deletes are fine
        ([op_put(b"a"), op_del(b"a")], True),
        ([op_del(b"a", b"c"), op_put(b"b")], True),
        ([op_del(b"a", b"c"), op_put(b"c")], False),
        ([op_del(b"a", b"\x00"), op_put(b"z")], False),  # etcd keeps "\0" raw here: [a, "\0") is empty
        ([op_put(b"a"), op_txn(success=[op_put(b"a")])], True),
        ([op_txn(success=[op_put(b"a")], failure=[op_put(b"a")])], False),  # then/else exclude each other
        ([op_txn(success=[op_put(b"a")]), op_txn(success=[op_put(b"a")])], True),
        ([op_del(b"a"), op_txn(success=[op_put(b"a")])], True),
        ([op_txn(success=[op_del(b"a")]), op_put(b"a")], True),  # nested deletes count at the parent
        ([op_range(b"a"), op_put(b"a")], False),
    ],
)
def test_the_duplicate_key_rule(ops: list[rpc_pb2.RequestOp], duplicate: bool) -> None:
    for req in (rpc_pb2.TxnRequest(success=ops), rpc_pb2.TxnRequest(failure=ops)):
        err = etcd.check_txn(req, EtcdLimits())
        assert (err == etcd.ERR_DUPLICATE_KEY) is duplicate
        assert (etcd.check_structure("txn", req) == etcd.ERR_DUPLICATE_KEY) is duplicate


def test_txn_cost_counts_the_larger_branch_and_not_nested_txns() -> None:
    req = rpc_pb2.TxnRequest(success=[op_put(b"k", b"vv")], failure=[op_put(b"k", b"v" * 10), op_del(b"x")])
    assert etcd.txn_cost(req) == 256 + 1 + 10
    assert etcd.txn_cost(rpc_pb2.TxnRequest(success=[op_txn(success=[op_put(b"k")])])) == 0


# ---- compaction ------------------------------------------------------------------------------


def test_compaction_keeps_each_keys_latest_version_and_drops_tombstones() -> None:
    s = MVCCStore()
    put(s, b"a", b"1")  # 2
    put(s, b"a", b"2")  # 3
    put(s, b"b", b"1")  # 4
    delete(s, b"b")  # 5
    put(s, b"a", b"3")  # 6
    put(s, b"c", b"1")  # 7
    s.take_changes()
    assert etcd.apply_compaction(s, rpc_pb2.CompactionRequest(revision=5)).header.revision == 7
    dropped = s.take_changes()
    assert sorted(split_row_key(k) for k, v in dropped.items() if v is None) == [(2, 0), (4, 0), (5, 0)]
    assert s.compact_revision == 5 and s.rows_retained == 3  # a@3, a@6, c@7
    assert [kv.value for kv in rng(s, b"a", revision=5).kvs] == [b"2"]
    assert keys(rng(s, b"\x00", b"\x00", revision=5)) == [b"a"]
    assert etcd.apply_compaction(s, rpc_pb2.CompactionRequest(revision=5)) == etcd.ERR_COMPACTED  # again
    assert etcd.apply_compaction(s, rpc_pb2.CompactionRequest(revision=4)) == etcd.ERR_COMPACTED
    assert etcd.apply_compaction(s, rpc_pb2.CompactionRequest(revision=8)) == etcd.ERR_FUTURE_REV
    etcd.apply_compaction(s, rpc_pb2.CompactionRequest(revision=7))
    assert s.rows_retained == 2 and s.compact_revision == 7  # a@6, c@7


def test_a_fresh_store_compacts_at_0_once() -> None:
    s = MVCCStore()
    assert etcd.apply_compaction(s, rpc_pb2.CompactionRequest(revision=0)).header.revision == 1
    assert s.compact_revision == 0
    assert etcd.apply_compaction(s, rpc_pb2.CompactionRequest(revision=0)) == etcd.ERR_COMPACTED
    assert etcd.apply_compaction(s, rpc_pb2.CompactionRequest(revision=-3)) == etcd.ERR_COMPACTED


def test_a_key_deleted_and_compacted_leaves_the_index() -> None:
    s = MVCCStore()
    put(s, b"gone", b"1")
    delete(s, b"gone")
    put(s, b"kept", b"1")
    etcd.apply_compaction(s, rpc_pb2.CompactionRequest(revision=4))
    assert list(s.keys_in(b"\x00", b"")) == [b"kept"]
    assert s.rows_retained == 1


# ---- alarms ----------------------------------------------------------------------------------


def test_alarms_activate_deactivate_and_list() -> None:
    A = rpc_pb2.AlarmRequest
    alarms, r = etcd.apply_alarm((), A(action=A.ACTIVATE, memberID=7, alarm=rpc_pb2.NOSPACE))
    assert alarms == ((7, rpc_pb2.NOSPACE),) and [a.memberID for a in r.alarms] == [7]
    again, r = etcd.apply_alarm(alarms, A(action=A.ACTIVATE, memberID=7, alarm=rpc_pb2.NOSPACE))
    assert again == alarms and len(r.alarms) == 1
    _, listed = etcd.apply_alarm(alarms, A(action=A.GET, alarm=rpc_pb2.NONE))
    assert [(a.memberID, a.alarm) for a in listed.alarms] == [(7, rpc_pb2.NOSPACE)]
    _, none = etcd.apply_alarm(alarms, A(action=A.GET, alarm=rpc_pb2.CORRUPT))
    assert list(none.alarms) == [] and not none.HasField("header")
    after, r = etcd.apply_alarm(alarms, A(action=A.DEACTIVATE, memberID=7, alarm=rpc_pb2.NOSPACE))
    assert after == () and len(r.alarms) == 1
    assert etcd.alarm_text(7, rpc_pb2.NOSPACE) == "memberID:7 alarm:NOSPACE "


# ---- a model with a full map per revision ------------------------------------------------


class Model:
    """etcd's semantics the slow way: a copy of the map at every revision."""

    def __init__(self) -> None:
        self.states: dict[int, dict[bytes, tuple[int, int, int, bytes]]] = {1: {}}
        self.revision = 1
        self.compacted = -1
        self.rows: list[int] = []  # the revision of every row written

    def write(self, ops: list[tuple[str, bytes, bytes]]) -> None:
        cur = dict(self.states[self.revision])
        changed = False
        rev = self.revision + 1
        for kind, key, value in ops:
            if kind == "put":
                old = cur.get(key)
                cur[key] = (old[0] if old else rev, rev, old[2] + 1 if old else 1, value)
                changed = True
                self.rows.append(rev)
            elif key in cur:
                del cur[key]
                changed = True
                self.rows.append(rev)
        if changed:
            self.revision = rev
            self.states[rev] = cur

    def state(self, rev: int) -> dict[bytes, tuple[int, int, int, bytes]]:
        return self.states[max(r for r in self.states if r <= rev)]

    def range(self, key: bytes, end: bytes | None, rev: int) -> list[mvccpb.KeyValue]:
        state = self.state(rev)
        picked = sorted(
            k for k in state if (k == key if end is None else k >= key and (end == b"" or k < end))
        )
        return [
            mvccpb.KeyValue(key=k, create_revision=state[k][0], mod_revision=state[k][1], version=state[k][2],
                            value=state[k][3])
            for k in picked
        ]


_KEYS = st.sampled_from([b"a", b"b", b"c", b"d", b"e"])
_OP = st.tuples(st.sampled_from(["put", "del"]), _KEYS, st.sampled_from([b"", b"1", b"22"]))
_STEP = st.one_of(
    st.tuples(st.just("write"), st.lists(_OP, min_size=1, max_size=3)),
    st.tuples(st.just("compact"), st.integers(min_value=0, max_value=12)),
    st.tuples(st.just("take"), st.just(0)),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(_STEP, max_size=30))
def test_the_store_answers_as_the_model_at_every_retained_revision(steps) -> None:  # noqa: ANN001
    store = MVCCStore()
    model = Model()
    for kind, arg in steps:
        if kind == "write":
            req = rpc_pb2.TxnRequest(success=[
                op_put(k, v) if op == "put" else op_del(k) for op, k, v in arg
            ])
            # the duplicate-key rule is etcd's API check: only valid txns reach the store
            if etcd.check_txn(req, EtcdLimits()) is not None:
                continue
            r = etcd.apply_txn(store, req, etcd.NO_LEASES, False)
            model.write(arg)
            assert r.header.revision == model.revision == store.revision
        elif kind == "compact":
            r = etcd.apply_compaction(store, rpc_pb2.CompactionRequest(revision=arg))
            if arg <= model.compacted:
                assert r == etcd.ERR_COMPACTED
            elif arg > model.revision:
                assert r == etcd.ERR_FUTURE_REV
            else:
                assert not isinstance(r, EtcdError)
                model.compacted = arg
        else:
            store.take_changes()
    for rev in range(max(1, model.compacted), model.revision + 1):
        for key, end in ((b"a", None), (b"b", b"d"), (b"\x00", b""), (b"c", b"")):
            want = model.range(key, end, rev)
            range_end = b"" if end is None else (b"\x00" if end == b"" else end)
            got = rng(store, key, range_end, revision=rev)
            assert list(got.kvs) == want, (rev, key, end)
            assert got.count == len(want) and got.header.revision == model.revision
    if model.compacted > 1:
        assert etcd.serve_range(store, Range(key=b"a", revision=model.compacted - 1)) == etcd.ERR_COMPACTED
    # retained: each key's version live at the compaction, and every row after it
    if model.compacted >= 1:
        retained = len(model.state(model.compacted)) + sum(1 for r in model.rows if r > model.compacted)
    else:
        retained = len(model.rows)
    assert store.rows_retained == retained
    store.take_changes()
    assert len(list(store.history_rows())) == retained
