"""etcd v3's key-value semantics over the MVCC store: the checks etcd makes
before it proposes a request, and what applying or serving it does.

Rules (etcd 3.4.23: etcdserver/apply.go, api/v3rpc/key.go, mvcc/kvstore_txn.go):

- ``check_*`` are etcd's API-layer checks (v3rpc/key.go): they look at the
  request only. The node layer runs them, with the configured limits
  (``EtcdLimits``), before it proposes; the state machine runs the
  structural ones again (``check_structure``: empty keys, the duplicate-key
  rule) on every etcd command it reads from the log, never the configurable
  limits, so replicas configured differently still agree.
- ``apply_*`` run one etcd write on the store as ONE write transaction
  (``MVCCStore.begin``/``end``): either etcd's response message (its
  ``header.revision`` set as etcd's applier sets it) or an ``EtcdError``,
  and then nothing was written. ``serve_range`` and ``serve_txn`` (a Txn
  of ranges only) read without writing.
- The Range of one key at the current revision (``is_range_one``: no
  range_end, no revision, no min/max filter; sorting and a limit change
  nothing for one key) is the hot read: the caller reads the key's live
  ``KeyRecord`` and the store's revision and ``encode_range_one`` writes
  the RangeResponse's bytes, the same bytes ``serve_range``'s message
  serializes to with the header etcd's API fills (tests/unit/test_etcd_range_one.py).
- An error is etcd's gRPC status code name and message, byte for byte
  (rpctypes/error.go): the Go client rebuilds typed errors from the text.
- Leases: a put naming a lease needs it to exist (``Leases``: the state
  machine's ``kv.lease.LeaseTable``; ``NO_LEASES`` for a store without
  any), else ``requested lease not found``.
- NOSPACE: while that alarm is raised, a put, and a Txn with a put in one of
  its branches (not counting nested Txns: etcd's costTxn), is refused.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from paxoskv.etcdpb import kv_pb2 as mvccpb
from paxoskv.etcdpb import rpc_pb2
from paxoskv.kv.mvcc import KeyRecord, MVCCStore
from paxoskv.protowire import len_field, varint

__all__ = [
    "ALARM_NOSPACE",
    "EtcdError",
    "EtcdLimits",
    "Leases",
    "NO_LEASES",
    "apply_alarm",
    "apply_compaction",
    "apply_delete_range",
    "apply_put",
    "apply_txn",
    "check_put",
    "check_range",
    "check_delete_range",
    "check_structure",
    "check_txn",
    "encode_range_one",
    "header_prefix",
    "is_range_one",
    "is_txn_readonly",
    "is_txn_serializable",
    "plain_puts",
    "prefix_end",
    "request_bytes",
    "serve_range",
    "serve_txn",
    "txn_cost",
]


@dataclass(frozen=True, slots=True)
class EtcdError:
    """An etcd error: gRPC status code name (``grpc.StatusCode`` member name)
    and etcd's message."""

    code: str
    message: str

    def __str__(self) -> str:
        return self.message


# rpctypes/error.go, the ones the KV and Maintenance paths produce.
ERR_EMPTY_KEY = EtcdError("INVALID_ARGUMENT", "etcdserver: key is not provided")
ERR_KEY_NOT_FOUND = EtcdError("INVALID_ARGUMENT", "etcdserver: key not found")
ERR_VALUE_PROVIDED = EtcdError("INVALID_ARGUMENT", "etcdserver: value is provided")
ERR_LEASE_PROVIDED = EtcdError("INVALID_ARGUMENT", "etcdserver: lease is provided")
ERR_TOO_MANY_OPS = EtcdError("INVALID_ARGUMENT", "etcdserver: too many operations in txn request")
ERR_DUPLICATE_KEY = EtcdError("INVALID_ARGUMENT", "etcdserver: duplicate key given in txn request")
ERR_COMPACTED = EtcdError("OUT_OF_RANGE", "etcdserver: mvcc: required revision has been compacted")
ERR_FUTURE_REV = EtcdError("OUT_OF_RANGE", "etcdserver: mvcc: required revision is a future revision")
ERR_NO_SPACE = EtcdError("RESOURCE_EXHAUSTED", "etcdserver: mvcc: database space exceeded")
ERR_LEASE_NOT_FOUND = EtcdError("NOT_FOUND", "etcdserver: requested lease not found")
ERR_REQUEST_TOO_LARGE = EtcdError("INVALID_ARGUMENT", "etcdserver: request is too large")
ERR_NO_LEADER = EtcdError("UNAVAILABLE", "etcdserver: no leader")
ERR_NOT_LEADER = EtcdError("FAILED_PRECONDITION", "etcdserver: not leader")
ERR_LEADER_CHANGED = EtcdError("UNAVAILABLE", "etcdserver: leader changed")
ERR_NOT_CAPABLE = EtcdError("UNAVAILABLE", "etcdserver: not capable")
ERR_STOPPED = EtcdError("UNAVAILABLE", "etcdserver: server stopped")
ERR_TIMEOUT = EtcdError("UNAVAILABLE", "etcdserver: request timed out")
ERR_BAD_LEADER_TRANSFEREE = EtcdError("FAILED_PRECONDITION", "etcdserver: bad leader transferee")
ERR_MEMBER_NOT_FOUND = EtcdError("NOT_FOUND", "etcdserver: member not found")
ERR_MEMBER_NOT_LEARNER = EtcdError("FAILED_PRECONDITION", "etcdserver: can only promote a learner member")

ALARM_NOSPACE = rpc_pb2.NOSPACE
_NOSPACE = ALARM_NOSPACE

_RangeReq = rpc_pb2.RangeRequest
_Compare = rpc_pb2.Compare


@dataclass(frozen=True, slots=True, kw_only=True)
class EtcdLimits:
    """etcd's request limits (its flags and defaults). Checked before a
    request is proposed, never when it is applied."""

    txn_ops_max: int = 128  # --max-txn-ops
    request_bytes_max: int = 1536 * 1024  # --max-request-bytes


class Leases(Protocol):
    """What the key-value semantics need of leases (``kv.lease.LeaseTable``)."""

    def exists(self, lease_id: int) -> bool: ...


class _NoLeases:
    def exists(self, lease_id: int) -> bool:
        return False


NO_LEASES: Leases = _NoLeases()


# ---- ranges -----------------------------------------------------------------------


def _end(range_end: bytes) -> bytes | None:
    """etcd's range end (mkGteRange): none -> the key alone (None), ``"\\0"``
    -> every key from ``key`` on (``b""``), else ``[key, range_end)``."""
    if not range_end:
        return None
    if range_end == b"\x00":
        return b""
    return range_end


def prefix_end(prefix: bytes) -> bytes:
    """The range end of every key starting with ``prefix`` (etcdctl's
    GetPrefixRangeEnd): its last byte below 0xff plus one, the 0xff bytes
    after it dropped; ``"\0"`` (every key from ``prefix`` on) when there is none."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return b"\x00"
    return stripped[:-1] + bytes((stripped[-1] + 1,))


def _in_interval(k: bytes, key: bytes, end: bytes | None) -> bool:
    if end is None:
        return k == key
    return k >= key and (end == b"" or k < end)


# ---- API-layer checks (v3rpc/key.go) -------------------------------------------------


def check_range(req: rpc_pb2.RangeRequest) -> EtcdError | None:
    return ERR_EMPTY_KEY if not req.key else None


def check_put(req: rpc_pb2.PutRequest) -> EtcdError | None:
    if not req.key:
        return ERR_EMPTY_KEY
    if req.ignore_value and req.value:
        return ERR_VALUE_PROVIDED
    if req.ignore_lease and req.lease:
        return ERR_LEASE_PROVIDED
    return None


def check_delete_range(req: rpc_pb2.DeleteRangeRequest) -> EtcdError | None:
    return ERR_EMPTY_KEY if not req.key else None


def _check_op(op: rpc_pb2.RequestOp, ops_max: int | None) -> EtcdError | None:
    kind = op.WhichOneof("request")
    if kind == "request_range":
        return check_range(op.request_range)
    if kind == "request_put":
        return check_put(op.request_put)
    if kind == "request_delete_range":
        return check_delete_range(op.request_delete_range)
    if kind == "request_txn":
        return _check_txn(op.request_txn, ops_max)
    return ERR_KEY_NOT_FOUND  # an empty op


def _check_txn(req: rpc_pb2.TxnRequest, ops_max: int | None) -> EtcdError | None:
    opc = max(len(req.compare), len(req.success), len(req.failure))
    if ops_max is not None and opc > ops_max:
        return ERR_TOO_MANY_OPS
    for c in req.compare:
        if not c.key:
            return ERR_EMPTY_KEY
    rest = None if ops_max is None else ops_max - opc
    for op in req.success:
        err = _check_op(op, rest)
        if err is not None:
            return err
    for op in req.failure:
        err = _check_op(op, rest)
        if err is not None:
            return err
    return None


def plain_puts(req: rpc_pb2.TxnRequest) -> tuple[list[bytes], list[bytes]] | None:
    """The keys and values of a Txn whose ``success`` branch is one or more
    plain puts (a key, a value, nothing else: no lease, prev_kv,
    ignore_value or ignore_lease) of distinct keys and whose ``failure``
    branch is empty, in order; None for any other Txn. Such a Txn (the batch
    of puts etcd clients send) passes every op check and the duplicate-key
    rule, so it is checked and applied without the per-op walks."""
    if req.failure:
        return None
    puts = [op.request_put for op in req.success]  # an op that is not a put reads as an empty key
    keys = [p.key for p in puts]
    if min(map(len, keys), default=0) == 0 or len(set(keys)) != len(keys):
        return None
    if any([p.lease or p.prev_kv or p.ignore_value or p.ignore_lease for p in puts]):
        return None
    return keys, [p.value for p in puts]


def _check_plain(req: rpc_pb2.TxnRequest, ops_max: int | None) -> EtcdError | None:
    """``_check_txn`` and the duplicate rule for a Txn of ``plain_puts``:
    only the op count and the compares' keys can fail it."""
    if ops_max is not None and max(len(req.compare), len(req.success)) > ops_max:
        return ERR_TOO_MANY_OPS
    for c in req.compare:
        if not c.key:
            return ERR_EMPTY_KEY
    return None


def check_txn(
    req: rpc_pb2.TxnRequest, limits: EtcdLimits, plain: tuple[list[bytes], list[bytes]] | None = None
) -> EtcdError | None:
    """etcd's checkTxnRequest (ops counted against ``txn_ops_max``; a nested
    Txn against what its parent left), then the duplicate-key rule.
    ``plain``: ``plain_puts(req)``, when the caller has it."""
    if plain is not None:
        return _check_plain(req, limits.txn_ops_max)
    err = _check_txn(req, limits.txn_ops_max)
    if err is not None:
        return err
    return _check_duplicates(req)


class _Deletes:
    """The delete ranges of a txn level and its nested txns: [key, end) with
    end None for a single key and b"" for no end."""

    def __init__(self) -> None:
        self.ranges: list[tuple[bytes, bytes | None]] = []

    def add(self, key: bytes, end: bytes | None) -> None:
        self.ranges.append((key, end))

    def covers(self, k: bytes) -> bool:
        return any(_in_interval(k, key, end) for key, end in self.ranges)


def _intervals(ops: Sequence[rpc_pb2.RequestOp]) -> tuple[set[bytes], _Deletes] | None:
    """etcd's checkIntervals: the puts and deletes of one branch, or None on
    a forbidden overlap."""
    dels = _Deletes()
    for op in ops:
        if op.WhichOneof("request") == "request_delete_range":
            d = op.request_delete_range
            # etcd keeps the raw range_end here: "\0" is the interval [key, "\0")
            dels.add(d.key, d.range_end if d.range_end else None)
    puts: set[bytes] = set()
    for op in ops:
        if op.WhichOneof("request") != "request_txn":
            continue
        then = _intervals(op.request_txn.success)
        if then is None:
            return None
        other = _intervals(op.request_txn.failure)
        if other is None:
            return None
        puts_then, dels_then = then
        puts_else, dels_else = other
        for k in puts_then:
            if k in puts or dels.covers(k):
                return None
            puts.add(k)
        for k in puts_else:
            if (k in puts and k not in puts_then) or dels.covers(k):
                return None
            puts.add(k)
        dels.ranges.extend(dels_then.ranges)
        dels.ranges.extend(dels_else.ranges)
    for op in ops:
        if op.WhichOneof("request") != "request_put":
            continue
        k = op.request_put.key
        if k in puts or dels.covers(k):
            return None
        puts.add(k)
    return puts, dels


def _check_duplicates(req: rpc_pb2.TxnRequest) -> EtcdError | None:
    if _intervals(req.success) is None or _intervals(req.failure) is None:
        return ERR_DUPLICATE_KEY
    return None


def check_structure(
    op_kind: str, req: object, plain: tuple[list[bytes], list[bytes]] | None = None
) -> EtcdError | None:
    """The checks that make a logged etcd write applicable at all (no
    configurable limit): what the state machine checks on every replica.
    ``plain``: a Txn's ``plain_puts``, when the caller has it."""
    if op_kind == "put":
        return check_put(req)  # type: ignore[arg-type]
    if op_kind == "delete_range":
        return check_delete_range(req)  # type: ignore[arg-type]
    if op_kind == "txn":
        if plain is not None:
            return _check_plain(req, None)  # type: ignore[arg-type]
        err = _check_txn(req, None)  # type: ignore[arg-type]
        return err if err is not None else _check_duplicates(req)  # type: ignore[arg-type]
    return None


def request_bytes(size: int, member_id: int) -> int:
    """The size etcd compares with --max-request-bytes for a request of
    ``size`` bytes received by member ``member_id``: its InternalRaftRequest,
    i.e. the request as a field of it, plus a header (field 100) holding the
    request id, whose top 16 bits are the member id's low 16 bits and whose
    next 40 the clock's milliseconds (pkg/idutil), so its varint is as long
    as the member id makes it."""
    request_id = ((member_id & 0xFFFF) << 48) | (1 << 47)
    header = 2 + 1 + 1 + _varint_len(request_id)  # tag 100, length, tag 1, the id
    return 1 + _varint_len(size) + size + header


def _varint_len(n: int) -> int:
    length = 1
    while n >= 0x80:
        n >>= 7
        length += 1
    return length


def is_txn_readonly(req: rpc_pb2.TxnRequest) -> bool:
    return all(op.WhichOneof("request") == "request_range" for op in (*req.success, *req.failure))


def is_txn_serializable(req: rpc_pb2.TxnRequest) -> bool:
    return all(
        op.WhichOneof("request") == "request_range" and op.request_range.serializable
        for op in (*req.success, *req.failure)
    )


def txn_cost(req: rpc_pb2.TxnRequest, plain: tuple[list[bytes], list[bytes]] | None = None) -> int:
    """etcd's costTxn: the larger branch's put bytes (+256 per put); nested
    txns do not count. ``plain``: ``plain_puts(req)``, when the caller has it."""
    if plain is not None:
        keys, values = plain
        return 256 * len(keys) + sum(map(len, keys)) + sum(map(len, values))

    def cost(ops: Iterable[rpc_pb2.RequestOp]) -> int:
        return sum(put_cost(op.request_put) for op in ops if op.WhichOneof("request") == "request_put")

    return max(cost(req.success), cost(req.failure))


def put_cost(req: rpc_pb2.PutRequest) -> int:
    return 256 + len(req.key) + len(req.value)


# ---- serving a range ----------------------------------------------------------------

_SORT_KEYS: dict[int, Callable[[mvccpb.KeyValue], object]] = {
    _RangeReq.KEY: lambda kv: kv.key,
    _RangeReq.VERSION: lambda kv: kv.version,
    _RangeReq.CREATE: lambda kv: kv.create_revision,
    _RangeReq.MOD: lambda kv: kv.mod_revision,
    _RangeReq.VALUE: lambda kv: kv.value,
}


def serve_range(store: MVCCStore, req: rpc_pb2.RangeRequest) -> rpc_pb2.RangeResponse | EtcdError:
    """etcd's Range on the store's current view (inside a write transaction:
    with its writes so far). ``header.revision`` is that view's revision."""
    cur = store.read_revision
    rev = req.revision
    if rev > cur:
        return ERR_FUTURE_REV
    if rev <= 0:
        rev = cur
    if rev < store.compact_revision:
        return ERR_COMPACTED
    end = _end(req.range_end)
    key = req.key
    if rev == cur:
        found: list[tuple[bytes, object]] = list(store.live_in(key, end))
    else:
        found = []
        for k in store.keys_in(key, end):
            enc = store.version_at(k, rev)
            if enc is not None:
                found.append((k, enc))
    resp = rpc_pb2.RangeResponse(count=len(found))
    resp.header.revision = cur
    if req.count_only:
        return resp
    limit = req.limit
    filtered = (
        req.sort_order != _RangeReq.NONE
        or req.min_mod_revision
        or req.max_mod_revision
        or req.min_create_revision
        or req.max_create_revision
    )
    if filtered or limit <= 0:
        take = found
    else:
        take = found[: limit + 1]
    kvs = [
        rec.to_kv(k) if isinstance(rec, KeyRecord) else store.kv_of(k, rec)  # type: ignore[arg-type]
        for k, rec in take
    ]
    if req.max_mod_revision:
        kvs = [kv for kv in kvs if kv.mod_revision <= req.max_mod_revision]
    if req.min_mod_revision:
        kvs = [kv for kv in kvs if kv.mod_revision >= req.min_mod_revision]
    if req.max_create_revision:
        kvs = [kv for kv in kvs if kv.create_revision <= req.max_create_revision]
    if req.min_create_revision:
        kvs = [kv for kv in kvs if kv.create_revision >= req.min_create_revision]
    order = req.sort_order
    if req.sort_target != _RangeReq.KEY and order == _RangeReq.NONE:
        order = _RangeReq.ASCEND
    if order in (_RangeReq.ASCEND, _RangeReq.DESCEND):
        sort_key = _SORT_KEYS.get(req.sort_target)
        if sort_key is not None:
            # stable, as Go's insertion sort is on the small inputs etcd
            # sorts that way (ties keep key order); etcd leaves ties unspecified
            kvs.sort(key=sort_key, reverse=order == _RangeReq.DESCEND)
    if limit > 0 and len(kvs) > limit:
        del kvs[limit:]
        resp.more = True
    if req.keys_only:
        for kv in kvs:
            kv.value = b""
    resp.kvs.extend(kvs)
    return resp


def is_range_one(req: rpc_pb2.RangeRequest) -> bool:
    """``req`` reads one (non-empty) key at the current revision with no
    revision filter: what ``encode_range_one`` answers (see the rules)."""
    return bool(
        req.key
        and not req.range_end
        and not req.revision
        and not req.min_mod_revision
        and not req.max_mod_revision
        and not req.min_create_revision
        and not req.max_create_revision
    )


_U64 = (1 << 64) - 1


def _uint(tag: bytes, n: int) -> bytes:
    """A varint field (int64/uint64: a negative number as its two's complement), omitted at 0."""
    return tag + varint(n & _U64) if n else b""


def header_prefix(cluster_id: int, member_id: int) -> bytes:
    """The fixed start of a member's ResponseHeader bytes: cluster_id (1), member_id (2)."""
    return _uint(b"\x08", cluster_id) + _uint(b"\x10", member_id)


def encode_range_one(
    prefix: bytes, revision: int, raft_term: int, key: bytes, rec: KeyRecord | None, keys_only: bool, count_only: bool
) -> bytes:
    """The encoded RangeResponse of an ``is_range_one`` request: ``rec`` is
    ``key``'s live record (None: no such key) read at store ``revision``;
    the header is ``prefix`` (``header_prefix``), ``revision`` and ``raft_term``."""
    head = prefix + _uint(b"\x18", revision) + _uint(b"\x20", raft_term)
    out = b"\x0a" + varint(len(head)) + head
    if rec is None:
        return out
    if not count_only:
        value = b"" if keys_only else rec.value
        kv = (
            b"\x0a" + varint(len(key)) + key
            + _uint(b"\x10", rec.create)
            + _uint(b"\x18", rec.mod)
            + _uint(b"\x20", rec.version)
            + (b"\x2a" + varint(len(value)) + value if value else b"")
            + _uint(b"\x30", rec.lease)
        )
        out += b"\x12" + varint(len(kv)) + kv
    return out + b"\x20\x01"  # count: 1


# ---- compares and transactions ----------------------------------------------------------

_OPERAND = {
    _Compare.VERSION: "version",
    _Compare.CREATE: "create_revision",
    _Compare.MOD: "mod_revision",
    _Compare.LEASE: "lease",
}
_OF_RECORD: dict[int, Callable[[KeyRecord], int]] = {
    _Compare.VERSION: lambda r: r.version,
    _Compare.CREATE: lambda r: r.create,
    _Compare.MOD: lambda r: r.mod,
    _Compare.LEASE: lambda r: r.lease,
}


def _compare_one(c: rpc_pb2.Compare, rec: KeyRecord | None) -> bool:
    """etcd's compareKV on ``rec`` (None: the zero KeyValue)."""
    target = c.target
    union = c.WhichOneof("target_union")
    if target == _Compare.VALUE:
        mine = rec.value if rec is not None else b""
        theirs = c.value if union == "value" else b""
        result = (mine > theirs) - (mine < theirs)
    elif target in _OPERAND:
        mine_i = _OF_RECORD[target](rec) if rec is not None else 0
        field = _OPERAND[target]
        theirs_i = getattr(c, field) if union == field else 0
        result = (mine_i > theirs_i) - (mine_i < theirs_i)
    else:
        result = 0
    op = c.result
    if op == _Compare.EQUAL:
        return result == 0
    if op == _Compare.NOT_EQUAL:
        return result != 0
    if op == _Compare.GREATER:
        return result > 0
    if op == _Compare.LESS:
        return result < 0
    return True


def _compare(store: MVCCStore, c: rpc_pb2.Compare) -> bool:
    recs = [rec for _, rec in store.live_in(c.key, _end(c.range_end))]
    if not recs:
        if c.target == _Compare.VALUE:
            return False  # a missing key has no value to compare
        return _compare_one(c, None)
    return all(_compare_one(c, rec) for rec in recs)


@dataclass(frozen=True, slots=True)
class _Path:
    """Which branch a txn takes, and the paths of the txns nested in it."""

    succeeded: bool
    nested: tuple[_Path, ...]


def _path(store: MVCCStore, req: rpc_pb2.TxnRequest) -> _Path:
    ok = all(_compare(store, c) for c in req.compare)
    ops = req.success if ok else req.failure
    return _Path(ok, tuple(_path(store, op.request_txn) for op in ops if op.WhichOneof("request") == "request_txn"))


def _check_taken(
    store: MVCCStore, req: rpc_pb2.TxnRequest, path: _Path, check: Callable[[rpc_pb2.RequestOp], EtcdError | None]
) -> EtcdError | None:
    """etcd's checkRequests: ``check`` on every op of the branches the txn
    will take, nested txns included, in order."""
    nested = iter(path.nested)
    for op in req.success if path.succeeded else req.failure:
        if op.WhichOneof("request") == "request_txn":
            err = _check_taken(store, op.request_txn, next(nested), check)
        else:
            err = check(op)
        if err is not None:
            return err
    return None


def _put_checker(store: MVCCStore, leases: Leases) -> Callable[[rpc_pb2.RequestOp], EtcdError | None]:
    def check(op: rpc_pb2.RequestOp) -> EtcdError | None:
        if op.WhichOneof("request") != "request_put":
            return None
        p = op.request_put
        if (p.ignore_value or p.ignore_lease) and store.record(p.key) is None:
            return ERR_KEY_NOT_FOUND
        if p.lease and not leases.exists(p.lease):
            return ERR_LEASE_NOT_FOUND
        return None

    return check


def _range_checker(store: MVCCStore) -> Callable[[rpc_pb2.RequestOp], EtcdError | None]:
    current, first = store.revision, store.compact_revision

    def check(op: rpc_pb2.RequestOp) -> EtcdError | None:
        if op.WhichOneof("request") != "request_range":
            return None
        rev = op.request_range.revision
        if rev == 0:
            return None
        if rev > current:
            return ERR_FUTURE_REV
        if rev < first:
            return ERR_COMPACTED
        return None

    return check


def _put(store: MVCCStore, p: rpc_pb2.PutRequest) -> rpc_pb2.PutResponse:
    """A checked put inside the open transaction (etcd's applier Put)."""
    value, lease = p.value, p.lease
    prev = store.record(p.key)
    if prev is not None:
        if p.ignore_value:
            value = prev.value
        if p.ignore_lease:
            lease = prev.lease
    resp = rpc_pb2.PutResponse()
    if p.prev_kv and prev is not None:
        resp.prev_kv.CopyFrom(prev.to_kv(p.key))
    store.put(p.key, value, lease)
    resp.header.revision = store.revision + 1
    return resp


def _delete_range(store: MVCCStore, d: rpc_pb2.DeleteRangeRequest) -> rpc_pb2.DeleteRangeResponse:
    end = _end(d.range_end)
    found = list(store.live_in(d.key, end))
    resp = rpc_pb2.DeleteRangeResponse(deleted=len(found))
    if d.prev_kv:
        resp.prev_kvs.extend(rec.to_kv(k) for k, rec in found)
    for k, _ in found:
        store.delete(k)
    resp.header.revision = store.revision + 1 if store.changed else store.revision
    return resp


def _run_txn(store: MVCCStore, req: rpc_pb2.TxnRequest, path: _Path, resp: rpc_pb2.TxnResponse) -> None:
    resp.succeeded = path.succeeded
    nested = iter(path.nested)
    for op in req.success if path.succeeded else req.failure:
        kind = op.WhichOneof("request")
        out = resp.responses.add()
        if kind == "request_range":
            r = serve_range(store, op.request_range)
            assert not isinstance(r, EtcdError), r  # revisions were checked before
            out.response_range.CopyFrom(r)
        elif kind == "request_put":
            out.response_put.CopyFrom(_put(store, op.request_put))
        elif kind == "request_delete_range":
            out.response_delete_range.CopyFrom(_delete_range(store, op.request_delete_range))
        elif kind == "request_txn":
            sub = out.response_txn
            sub.header.SetInParent()  # etcd sends a nested txn's header, empty
            _run_txn(store, op.request_txn, next(nested), sub)


def serve_txn(store: MVCCStore, req: rpc_pb2.TxnRequest) -> rpc_pb2.TxnResponse | EtcdError:
    """A Txn whose branches hold ranges only, served without writing."""
    path = _path(store, req)
    err = _check_taken(store, req, path, _range_checker(store))
    if err is not None:
        return err
    resp = rpc_pb2.TxnResponse()
    _run_txn(store, req, path, resp)
    resp.header.revision = store.revision
    return resp


# ---- writes -----------------------------------------------------------------------------


def apply_put(
    store: MVCCStore, req: rpc_pb2.PutRequest, leases: Leases, nospace: bool
) -> rpc_pb2.PutResponse | EtcdError:
    if nospace:
        return ERR_NO_SPACE
    if req.lease and not leases.exists(req.lease):
        return ERR_LEASE_NOT_FOUND
    if (req.ignore_value or req.ignore_lease) and store.record(req.key) is None:
        return ERR_KEY_NOT_FOUND
    store.begin()
    resp = _put(store, req)
    store.end()
    return resp


def apply_delete_range(store: MVCCStore, req: rpc_pb2.DeleteRangeRequest) -> rpc_pb2.DeleteRangeResponse:
    store.begin()
    resp = _delete_range(store, req)
    store.end()
    return resp


def _plain_response(puts: int, revision: int) -> rpc_pb2.TxnResponse:
    """What ``_run_txn`` answers a succeeded Txn of ``puts`` plain puts at
    ``revision``: every PutResponse's header holds only the revision, so the
    response is parsed from bytes made once (field numbers: rpc.proto)."""
    header = len_field(b"\x0a", b"\x18" + varint(revision))  # header (1) { revision (3) }
    op = len_field(b"\x1a", len_field(b"\x12", header))  # responses (3) { response_put (2) { header } }
    return rpc_pb2.TxnResponse.FromString(b"".join((header, b"\x10\x01", op * puts)))


def apply_txn(
    store: MVCCStore,
    req: rpc_pb2.TxnRequest,
    leases: Leases,
    nospace: bool,
    plain: tuple[list[bytes], list[bytes]] | None = None,
) -> rpc_pb2.TxnResponse | EtcdError:
    """``plain``: ``plain_puts(req)``, when the caller has it: a Txn whose
    compares hold writes its puts in one store call (nothing for the op
    checks to refuse: no lease, no ignore_*, no range)."""
    if plain is not None:
        if nospace:
            return ERR_NO_SPACE  # a plain Txn has a put: its cost is > 0
        if all(_compare(store, c) for c in req.compare):
            keys, values = plain
            store.begin()
            store.put_many(keys, values)
            store.end()
            return _plain_response(len(keys), store.revision)
    if nospace and txn_cost(req) > 0:
        return ERR_NO_SPACE
    path = _path(store, req)
    err = None
    if not is_txn_readonly(req):
        err = _check_taken(store, req, path, _put_checker(store, leases))
    if err is None:
        err = _check_taken(store, req, path, _range_checker(store))
    if err is not None:
        return err
    resp = rpc_pb2.TxnResponse()
    store.begin()
    _run_txn(store, req, path, resp)
    store.end()
    resp.header.revision = store.revision
    return resp


def apply_compaction(store: MVCCStore, req: rpc_pb2.CompactionRequest) -> rpc_pb2.CompactionResponse | EtcdError:
    rev = req.revision
    if rev <= store.compact_revision:
        return ERR_COMPACTED
    if rev > store.revision:
        return ERR_FUTURE_REV
    store.compact(rev)
    resp = rpc_pb2.CompactionResponse()
    resp.header.revision = store.revision
    return resp


# ---- alarms ----------------------------------------------------------------------------


Alarm = tuple[int, int]  # (member id, etcdserverpb.AlarmType)


def alarms_of(alarms: Sequence[Alarm], alarm_type: int) -> list[rpc_pb2.AlarmMember]:
    """The raised alarms of a type (NONE: all), in (type, member) order."""
    return [
        rpc_pb2.AlarmMember(memberID=m, alarm=a)
        for m, a in sorted(alarms, key=lambda x: (x[1], x[0]))
        if alarm_type == rpc_pb2.NONE or a == alarm_type
    ]


def apply_alarm(alarms: tuple[Alarm, ...], req: rpc_pb2.AlarmRequest) -> tuple[tuple[Alarm, ...], rpc_pb2.AlarmResponse]:
    """etcd's Alarm apply: the alarms after, and the response (no header:
    etcd sends none)."""
    resp = rpc_pb2.AlarmResponse()
    item = (req.memberID, req.alarm)
    if req.action == rpc_pb2.AlarmRequest.GET:
        resp.alarms.extend(alarms_of(alarms, req.alarm))
        return alarms, resp
    if req.action == rpc_pb2.AlarmRequest.ACTIVATE:
        if req.alarm == rpc_pb2.NONE:
            return alarms, resp  # etcd's store refuses to raise NONE
        resp.alarms.append(rpc_pb2.AlarmMember(memberID=req.memberID, alarm=req.alarm))
        if item in alarms:
            return alarms, resp
        after = list(alarms)
        bisect.insort(after, item)
        return tuple(after), resp
    if req.action == rpc_pb2.AlarmRequest.DEACTIVATE:
        if item not in alarms:
            return alarms, resp
        resp.alarms.append(rpc_pb2.AlarmMember(memberID=req.memberID, alarm=req.alarm))
        return tuple(a for a in alarms if a != item), resp
    return alarms, resp


def alarm_text(member_id: int, alarm: int) -> str:
    """An AlarmMember as etcd's Status lists it (gogo's compact text form)."""
    name = rpc_pb2.AlarmType.Name(alarm) if alarm in rpc_pb2.AlarmType.values() else str(alarm)
    return f"memberID:{member_id} alarm:{name} "
