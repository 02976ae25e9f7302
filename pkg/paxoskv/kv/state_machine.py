"""The replicated state machine: chosen log slots -> an MVCC key-value store,
exactly once.

Rules:

- ``apply(index, value)`` is called once per slot, in slot order, without
  gaps: ``index == applied_index + 1`` is asserted. ``value`` is the slot's
  chosen batch of encoded ``Command`` bytes; the empty tuple is a no-op that
  only advances ``applied_index``.
- Deterministic: the outputs and the new state depend only on the previous
  state, ``index``, ``value``, ``limits`` and the session bounds. No clock, no
  randomness, no iteration over unordered containers decides anything. Every
  replica of a cluster must use the same ``limits`` and session bounds.
- Never raises on bad data from the log. An undecodable command or one that
  ``validate`` rejects is answered ``INVALID`` with the reason, and changes
  nothing (no key, no session).
- One MVCC store (``paxoskv.kv.mvcc``) holds every key, whichever API wrote
  it. A command that changes something is ONE revision: a unary put or
  delete, every write of a ``BatchOp`` (packed or per-op) and every write of
  an etcd ``Txn`` share their command's revision, with sub-revisions in
  order; a command that changes nothing (a delete of a missing key, a
  duplicate, a Txn whose branch writes nothing) does not bump it. Every
  successful result carries the revision its command left the store at
  (``CommandResult.revision``: its writes' mod revision; for a command that
  changed nothing, the store's), the ops of a batch all the batch's; the
  session remembers it with the result, so a retry is answered the same
  revision (a packed batch's: in its last op's result, even a refused one).
- An etcd command (``Command.etcd``, ``paxoskv.kv.etcd``) is answered with
  etcd's response message or an ``EtcdError`` (then nothing was written);
  its ``Applied`` carries the proposing node's ``waiter``.
- Exactly-once: a command with a non-empty ``client_id`` belongs to that
  client's session (last ``sequence``, its result, ``last_index``): a greater
  sequence is applied, an equal one answered the first result, a lower one
  ``STALE_SEQUENCE``; a packed batch is one command with a run of sequences;
  sessions are bounded in two pools (node-made identities, clients' own),
  evicting the smallest ``last_index``. The whole table, packed batches, v1
  Txns and what eviction costs: docs/design.md, "Exactly-once sessions".
- Leases (``paxoskv.kv.lease``): grant, revoke, checkpoint and expiry are
  etcd commands like the others; a revoke's deletes are one revision. The
  lessor of the node reads what changed with ``take_lease_events``.
- Every command of a slot yields one ``Applied`` entry, in order, so the node
  can answer every waiting client, duplicates included.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from paxoskv.etcdpb import rpc_pb2
from paxoskv.kv import etcd
from paxoskv.kv.commands import (
    NODE_ASSIGNED_PREFIX,
    DecodeError,
    Limits,
    decode,
    validate,
    validate_op,
    validate_packed_op,
)
from paxoskv.kv.etcd import Alarm, EtcdError
from paxoskv.kv.lease import Lease, LeaseEvent, LeaseTable
from paxoskv.kv.mvcc import HistoryReader, MVCCStore, legacy_rows
from paxoskv.protowire import len_field, varint
from paxoskv.v1 import kv_pb2, storage_pb2

__all__ = ["Applied", "Changes", "DUPLICATE", "KVStateMachine", "Session"]

_OK = kv_pb2.CommandResult.OK
_INVALID = kv_pb2.CommandResult.INVALID
_STALE = kv_pb2.CommandResult.STALE_SEQUENCE
_NO_SPACE = kv_pb2.CommandResult.NO_SPACE
# Session.batch: 0 and 1 are an applied op's ``existed``; 2 INVALID; 3 NO_SPACE.
_PACKED_INVALID = 2
_PACKED_NO_SPACE = 3
_NO_SPACE_ERROR = etcd.ERR_NO_SPACE.message
_EMPTY_RESULT = kv_pb2.CommandResult()

# The result of an etcd command applied before: its waiter had the answer.
DUPLICATE = "duplicate"


def _stale(index: int, client_id: str, sequence: int, session: Session) -> kv_pb2.CommandResult:
    return kv_pb2.CommandResult(
        code=_STALE,
        index=index,
        error=f"sequence {sequence} of client {client_id!r} is older than its last applied sequence {session.sequence}",
    )


_NOT_IN_LOG = "only put and delete ops can be in the log"


def _ok_pair(index: int, revision: int) -> tuple[kv_pb2.CommandResult, kv_pb2.CommandResult]:
    """The successful results of slot ``index`` at ``revision``, key absent /
    present before: shared by all the ops of a batch and their sessions
    (never mutated once the batch's apply returns)."""
    Result = kv_pb2.CommandResult
    return (
        Result(code=_OK, index=index, existed=False, revision=revision),
        Result(code=_OK, index=index, existed=True, revision=revision),
    )


def _settle_revision(store: MVCCStore, ok: tuple[kv_pb2.CommandResult, kv_pb2.CommandResult]) -> int:
    """The revision a batch's apply leaves the store at (its writes' mod
    revision, or the store's own when it changed nothing: only deletes of
    absent keys, then no new revision); ``ok`` made with the new one is
    set to it before the results leave."""
    rev = store.revision + 1 if store.changed else store.revision
    if ok[0].revision != rev:
        ok[0].revision = ok[1].revision = rev
    return rev


def _copy_result(result: kv_pb2.CommandResult) -> kv_pb2.CommandResult:
    out = kv_pb2.CommandResult()
    out.CopyFrom(result)
    return out


@dataclass(frozen=True, slots=True)
class Session:
    """The last applied command of one client: its sequence, result and slot."""

    sequence: int
    result: kv_pb2.CommandResult
    last_index: int
    # A packed batch's outcome per op (storage.proto Session.batch): b"" otherwise.
    batch: bytes = b""

    def to_proto(self) -> storage_pb2.Session:
        return storage_pb2.Session(
            sequence=self.sequence, result=self.result, last_index=self.last_index, batch=self.batch
        )

    def encode(self, results: dict[int, bytes] | None = None) -> bytes:
        """``to_proto().SerializeToString()``, byte for byte, built by hand:
        this runs once per applied write. ``results``: a cache of encoded
        results by ``id`` (the ops of one batch share their result objects),
        valid while those objects live."""
        result = self.result
        if results is None:
            body = result.SerializeToString()
        else:
            body = results.get(id(result))
            if body is None:
                body = results[id(result)] = result.SerializeToString()
        parts = [b"\x08" + varint(self.sequence)] if self.sequence else []
        parts.append(len_field(b"\x12", body))
        if self.last_index:
            parts.append(b"\x18" + varint(self.last_index))
        if self.batch:
            parts.append(len_field(b"\x22", self.batch))
        return b"".join(parts)

    @classmethod
    def from_proto(cls, pb: storage_pb2.Session) -> Session:
        return cls(
            sequence=pb.sequence, result=_copy_result(pb.result), last_index=pb.last_index, batch=pb.batch
        )


@dataclass(frozen=True, slots=True)
class Applied:
    """The answer to one command of a slot, for the client waiting on it.

    ``client_id`` and ``sequence`` are empty/0 for a command without a session
    and for an undecodable one. A batch command's answer is the tuple of its
    ops' results, with the proposing node's ``waiter`` handle (its
    ``BatchOp.waiter``) and no identity. An etcd command's is etcd's response
    message, an ``EtcdError`` or ``DUPLICATE``, with its ``EtcdOp.waiter``.
    """

    client_id: str
    sequence: int
    result: object
    waiter: bytes = b""


@dataclass(frozen=True, slots=True)
class Changes:
    """What changed since the last ``take_changes()``: history rows written
    (bytes) or dropped (None) by row key, sessions (None: evicted), and the
    applied index, revision counters and alarms after them."""

    history: dict[bytes, bytes | None]
    sessions: dict[str, Session | None]
    applied_index: int
    revision: int = 1
    compact_revision: int = -1
    alarms: tuple[Alarm, ...] = ()
    leases: dict[int, bytes | None] = field(default_factory=dict)  # StoredLease bytes by id; None: gone


class KVStateMachine:
    """A deterministic MVCC key-value store with exactly-once client sessions.

    ``history``: the stored history rows (row key -> row), with the store's
    ``revision`` and ``compact_revision``; ``reader``: where the store reads
    the rows it does not hold (the storage; None: it keeps them itself).
    ``sessions`` is copied.
    """

    def __init__(
        self,
        history: Mapping[bytes, bytes] | Iterable[tuple[bytes, bytes]] = (),
        sessions: Mapping[str, Session] | None = None,
        applied_index: int = 0,
        limits: Limits = Limits(),
        sessions_max: int = 100_000,
        *,
        revision: int = 1,
        compact_revision: int = -1,
        alarms: Iterable[Alarm] = (),
        reader: HistoryReader | None = None,
        node_sessions_max: int = 65_536,
        leases: Iterable[tuple[int, Lease]] = (),
    ) -> None:
        if applied_index < 0:
            raise ValueError(f"applied_index must be >= 0, not {applied_index}")
        if sessions_max < 1 or node_sessions_max < 1:
            raise ValueError(f"session bounds must be >= 1, not {sessions_max}, {node_sessions_max}")
        sessions = sessions or {}
        late = [cid for cid, s in sessions.items() if s.last_index > applied_index]
        if late:
            raise ValueError(
                f"sessions {late[:3]} were applied after applied_index {applied_index}"
            )
        rows = history.items() if isinstance(history, Mapping) else history
        self._store = MVCCStore(rows, revision=revision, compact_revision=compact_revision, reader=reader)
        ordered = sorted(sessions.items(), key=lambda item: (item[1].last_index, item[0]))
        self._sessions: OrderedDict[str, Session] = OrderedDict(
            (cid, s) for cid, s in ordered if not cid.startswith(NODE_ASSIGNED_PREFIX)
        )
        self._node_sessions: OrderedDict[str, Session] = OrderedDict(
            (cid, s) for cid, s in ordered if cid.startswith(NODE_ASSIGNED_PREFIX)
        )
        self._alarms: tuple[Alarm, ...] = tuple(sorted(set(alarms)))
        self._nospace = any(a == etcd.ALARM_NOSPACE for _, a in self._alarms)  # read per put: kept, not computed
        self._leases = LeaseTable(leases)
        self._applied_index = applied_index
        self._limits = limits
        self._sessions_max = sessions_max
        self._node_sessions_max = node_sessions_max
        self._session_changes: dict[str, Session | None] = {}
        self.get = self._store.get  # the store's dict lookup itself: the hot read

    @classmethod
    def from_kv(
        cls,
        kv: Mapping[bytes, bytes],
        sessions: Mapping[str, Session] | None = None,
        applied_index: int = 0,
        limits: Limits = Limits(),
        **kwargs: object,
    ) -> KVStateMachine:
        """A store holding ``kv`` as a store from before MVCC migrates to:
        every key version 1 at revision 2 (revision 1 when ``kv`` is empty)."""
        rows = list(legacy_rows(sorted(kv.items())))
        return cls(rows, sessions, applied_index, limits, revision=2 if rows else 1, **kwargs)  # type: ignore[arg-type]

    # ---- reading ---------------------------------------------------------------

    @property
    def applied_index(self) -> int:
        return self._applied_index

    @property
    def limits(self) -> Limits:
        return self._limits

    @property
    def sessions_max(self) -> int:
        return self._sessions_max

    @property
    def store(self) -> MVCCStore:
        """The MVCC store (read it; only ``apply`` writes)."""
        return self._store

    @property
    def revision(self) -> int:
        return self._store.revision

    @property
    def compact_revision(self) -> int:
        return self._store.compact_revision

    @property
    def alarms(self) -> tuple[Alarm, ...]:
        """The raised alarms, (member id, etcd AlarmType), sorted."""
        return self._alarms

    @property
    def leases(self) -> LeaseTable:
        """The leases (read them; only ``apply`` writes)."""
        return self._leases

    def take_lease_events(self) -> list[LeaseEvent]:
        """The lease changes applied since the last call, in order."""
        return self._leases.take_events()

    @property
    def nospace(self) -> bool:
        """The NOSPACE alarm is raised (by any member): puts are refused."""
        return self._nospace

    def get(self, key: bytes) -> bytes | None:  # replaced by the store's get in __init__
        return self._store.get(key)

    def __len__(self) -> int:
        return len(self._store)

    def __contains__(self, key: object) -> bool:
        return key in self._store

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """Every live (key, value), in no particular order."""
        return self._store.items()

    def session(self, client_id: str) -> Session | None:
        pool = self._node_sessions if client_id.startswith(NODE_ASSIGNED_PREFIX) else self._sessions
        return pool.get(client_id)

    @property
    def sessions(self) -> Mapping[str, Session]:
        """A read-only view of the clients' session table."""
        return MappingProxyType(self._sessions)

    @property
    def node_sessions(self) -> Mapping[str, Session]:
        """A read-only view of the node-assigned identities' sessions."""
        return MappingProxyType(self._node_sessions)

    # ---- applying --------------------------------------------------------------

    def apply(self, index: int, value: tuple[bytes, ...]) -> list[Applied]:
        """Apply the chosen ``value`` of slot ``index``; one ``Applied`` per command."""
        assert index == self._applied_index + 1, (index, self._applied_index)
        applied = [self._apply_one(index, data) for data in value]
        self._applied_index = index
        return applied

    def _apply_one(self, index: int, data: bytes) -> Applied:
        try:
            cmd = decode(data)
        except DecodeError as exc:
            return Applied("", 0, kv_pb2.CommandResult(code=_INVALID, index=index, error=str(exc)))
        client_id, sequence = cmd.client_id, cmd.sequence
        kind = cmd.WhichOneof("op")
        if kind == "batch":
            return self._apply_batch(index, cmd)
        if kind == "etcd":
            return self._apply_etcd(index, cmd)
        error = validate(cmd, self._limits)
        if error is not None:
            return Applied(
                client_id, sequence, kv_pb2.CommandResult(code=_INVALID, index=index, error=error)
            )
        if client_id:
            pool = self._node_sessions if client_id.startswith(NODE_ASSIGNED_PREFIX) else self._sessions
            session = pool.get(client_id)
            if session is not None and sequence == session.sequence:
                return Applied(client_id, sequence, _copy_result(session.result))
            if session is not None and sequence < session.sequence:
                return Applied(client_id, sequence, _stale(index, client_id, sequence, session))
        if kind == "put" and self._nospace:
            return Applied(client_id, sequence, kv_pb2.CommandResult(code=_NO_SPACE, index=index, error=_NO_SPACE_ERROR))
        result = self._execute(index, cmd)
        if client_id:
            self._remember(client_id, Session(sequence, _copy_result(result), index))
        return Applied(client_id, sequence, result)

    def _apply_batch(self, index: int, cmd: kv_pb2.Command) -> Applied:
        """Every op of a batch command, in order, each exactly as if it were a
        command of its own (its identity, its validation, its result); one
        ``Applied`` carries the tuple of their results. A result is shared with
        the session that remembers it: results are never mutated. The writes
        share one revision."""
        error = validate(cmd, self._limits)
        waiter = cmd.batch.waiter
        if error is not None:
            return Applied("", 0, (kv_pb2.CommandResult(code=_INVALID, index=index, error=error),), waiter)
        store = self._store
        store.begin()
        try:
            if cmd.batch.HasField("request"):
                return Applied("", 0, self._apply_packed(index, cmd.batch), waiter)
            return Applied("", 0, self._apply_per_op(index, cmd.batch), waiter)
        finally:
            store.end()

    def _apply_per_op(self, index: int, batch: kv_pb2.BatchOp) -> tuple[kv_pb2.CommandResult, ...]:
        limits = self._limits
        key_max, value_max = limits.key_bytes_max, limits.value_bytes_max
        client_id_chars_max = limits.client_id_bytes_max // 4  # this many chars fit in any UTF-8
        store = self._store
        nospace = self._nospace
        Result = kv_pb2.CommandResult
        ok = _ok_pair(index, store.revision + 1)
        results: list[kv_pb2.CommandResult] = []
        append = results.append
        for op in batch.ops:
            kind = op.WhichOneof("op")
            if kind == "put":
                req = op.put
                value = req.value
            elif kind == "delete":
                req = op.delete
                value = b""
            else:
                append(Result(code=_INVALID, index=index, error=_NOT_IN_LOG))
                continue
            hdr = req.request
            client_id = hdr.client_id
            sequence = hdr.sequence
            key = req.key
            # The common case checked inline; anything else by validate_op.
            if not (
                client_id
                and sequence
                and key
                and len(key) <= key_max
                and len(value) <= value_max
                and len(client_id) <= client_id_chars_max
            ):
                error = validate_op(client_id, sequence, key, value, limits)
                if error is not None:
                    append(Result(code=_INVALID, index=index, error=error))
                    continue
            if client_id:
                session = self.session(client_id)
                if session is not None and sequence <= session.sequence:
                    if sequence == session.sequence:
                        append(session.result)
                    else:
                        append(_stale(index, client_id, sequence, session))
                    continue
            if kind == "put":
                if nospace:
                    append(Result(code=_NO_SPACE, index=index, error=_NO_SPACE_ERROR))
                    continue
                existed = store.put(key, value) is not None
            else:
                existed = store.delete(key) is not None
            result = ok[existed]
            if client_id:
                self._remember(client_id, Session(sequence, result, index))
            append(result)
        _settle_revision(store, ok)
        return tuple(results)

    def _apply_packed(self, index: int, batch: kv_pb2.BatchOp) -> tuple[kv_pb2.CommandResult, ...]:
        """A packed batch (validated): one session check for all its ops, and
        the session remembers each op's outcome (``Session.batch``), so a
        retry of the same batch gets the same results and applies nothing."""
        client_id = batch.request.client_id
        first = batch.request.sequence
        ops = batch.ops
        last = first + len(ops) - 1
        session = self.session(client_id)
        if session is not None and first <= session.sequence:
            if session.sequence == last and len(session.batch) == len(ops):
                return self._replay_packed(session, ops)
            return tuple(_stale(index, client_id, first + k, session) for k in range(len(ops)))
        limits = self._limits
        key_max, value_max = limits.key_bytes_max, limits.value_bytes_max
        store = self._store
        put, delete = store.put, store.delete
        nospace = self._nospace
        Result = kv_pb2.CommandResult
        ok = _ok_pair(index, store.revision + 1)
        # The common case first: every op a valid put, in one store call
        # (checked in bulk: an op that is not a put reads as an empty key).
        keys: list[bytes] = []
        values: list[bytes] = []
        if not nospace:
            reqs = [op.put for op in ops]
            keys = [req.key for req in reqs]
            values = [req.value for req in reqs]
            if (
                min(map(len, keys), default=0) == 0
                or max(map(len, keys)) > key_max
                or max(map(len, values)) > value_max
                or any([req.HasField("request") for req in reqs])
            ):
                keys = values = []
        codes = store.put_many(keys, values)
        results: list[kv_pb2.CommandResult] = [ok[c] for c in codes]
        append = results.append
        done = len(codes)
        codes.extend(bytes(len(ops) - done))
        for k in range(done, len(ops)):
            op = ops[k]
            kind = op.WhichOneof("op")
            if kind == "put":
                req = op.put
                value = req.value
            elif kind == "delete":
                req = op.delete
                value = b""
            else:
                codes[k] = _PACKED_INVALID
                append(Result(code=_INVALID, index=index, error=_NOT_IN_LOG))
                continue
            key = req.key
            if not key or len(key) > key_max or len(value) > value_max or req.HasField("request"):
                error = validate_packed_op(req.HasField("request"), key, value, limits)
                if error is not None:
                    codes[k] = _PACKED_INVALID
                    append(Result(code=_INVALID, index=index, error=error))
                    continue
            if kind == "put":
                if nospace:
                    codes[k] = _PACKED_NO_SPACE
                    append(Result(code=_NO_SPACE, index=index, error=_NO_SPACE_ERROR))
                    continue
                existed = put(key, value) is not None
            else:
                existed = delete(key) is not None
            codes[k] = existed
            append(ok[existed])
        rev = _settle_revision(store, ok)
        if results[-1].revision != rev:
            # The last op was refused: its (fresh) result carries the batch's
            # revision anyway, so that the session remembers it for a replay.
            results[-1].revision = rev
        self._remember(client_id, Session(last, results[-1], index, bytes(codes)))
        return tuple(results)

    def _replay_packed(self, session: Session, ops) -> tuple[kv_pb2.CommandResult, ...]:  # noqa: ANN001
        """The results a packed batch got when it was applied, from its session."""
        index = session.last_index
        Result = kv_pb2.CommandResult
        ok = _ok_pair(index, session.result.revision)  # 0: remembered before batches kept their revision
        out: list[kv_pb2.CommandResult] = []
        for code, op in zip(session.batch, ops):
            if code == _PACKED_NO_SPACE:
                out.append(Result(code=_NO_SPACE, index=index, error=_NO_SPACE_ERROR))
                continue
            if code != _PACKED_INVALID:
                out.append(ok[code])
                continue
            kind = op.WhichOneof("op")
            req = op.put if kind == "put" else op.delete if kind == "delete" else None
            error = (
                _NOT_IN_LOG
                if req is None
                else validate_packed_op(req.HasField("request"), req.key, req.value if kind == "put" else b"", self._limits)
            )
            out.append(Result(code=_INVALID, index=index, error=error or "rejected when this batch was first applied"))
        return tuple(out)

    def _execute(self, index: int, cmd: kv_pb2.Command) -> kv_pb2.CommandResult:
        store = self._store
        if cmd.WhichOneof("op") == "put":
            existed = store.put_alone(cmd.put.key, cmd.put.value) is not None
        else:
            store.begin()
            existed = store.delete(cmd.delete.key) is not None
            store.end()
        return kv_pb2.CommandResult(code=_OK, index=index, existed=existed, revision=store.revision)

    def _apply_etcd(self, index: int, cmd: kv_pb2.Command) -> Applied:
        """An etcd write: once per identity; its response or error."""
        client_id, sequence = cmd.client_id, cmd.sequence
        op = cmd.etcd
        waiter = op.waiter
        kind = op.WhichOneof("request")
        error = validate(cmd, self._limits)
        if error is not None:
            return Applied(client_id, sequence, EtcdError("INVALID_ARGUMENT", f"etcdserver: {error}"), waiter)
        req = getattr(op, kind)
        plain = etcd.plain_puts(req) if kind == "txn" else None
        refused = etcd.check_structure(kind, req, plain)
        if refused is not None:
            return Applied(client_id, sequence, refused, waiter)
        own = client_id and not client_id.startswith(NODE_ASSIGNED_PREFIX)  # a paxoskv.v1 Txn's session
        if client_id:
            session = self.session(client_id)
            if session is not None and sequence <= session.sequence:
                if not own:
                    return Applied(client_id, sequence, DUPLICATE, waiter)
                if sequence == session.sequence:
                    return Applied(client_id, sequence, _copy_result(session.result), waiter)
                return Applied(client_id, sequence, _stale(index, client_id, sequence, session), waiter)
        store = self._store
        if kind == "put":
            result: object = etcd.apply_put(store, req, self._leases, self._nospace)
        elif kind == "delete_range":
            result = etcd.apply_delete_range(store, req)
        elif kind == "txn":
            result = etcd.apply_txn(store, req, self._leases, self._nospace, plain)
        elif kind == "compaction":
            result = etcd.apply_compaction(store, req)
        elif kind == "lease_grant":
            result = self._leases.grant(store, req)
        elif kind == "lease_revoke":
            result = self._leases.revoke(store, req)
        elif kind == "lease_checkpoint":
            result = self._leases.checkpoint(store, req)
        elif kind == "lease_expire":
            result = self._leases.expire(store, req)
        else:
            self._alarms, result = etcd.apply_alarm(self._alarms, req)
            self._nospace = any(a == etcd.ALARM_NOSPACE for _, a in self._alarms)
        if own:
            if isinstance(result, rpc_pb2.TxnResponse):
                outcome = kv_pb2.CommandResult(
                    code=_OK, index=index, revision=result.header.revision, succeeded=result.succeeded
                )
            else:  # refused (nothing written), and remembered so, as every etcd command is
                error = result.message if isinstance(result, EtcdError) else "not a transaction"
                code = _NO_SPACE if result is etcd.ERR_NO_SPACE else _INVALID
                outcome = kv_pb2.CommandResult(code=code, index=index, error=error)
            self._remember(client_id, Session(sequence, outcome, index))
        elif client_id:
            self._remember(client_id, Session(sequence, _EMPTY_RESULT, index))
        return Applied(client_id, sequence, result, waiter)

    def _remember(self, client_id: str, session: Session) -> None:
        if client_id.startswith(NODE_ASSIGNED_PREFIX):
            pool, bound = self._node_sessions, self._node_sessions_max
        else:
            pool, bound = self._sessions, self._sessions_max
        pool[client_id] = session
        pool.move_to_end(client_id)
        self._session_changes[client_id] = session
        while len(pool) > bound:
            self._evict_one(pool)

    def _evict_one(self, pool: OrderedDict[str, Session]) -> None:
        oldest_index = None
        victim = None
        for client_id, session in pool.items():
            if oldest_index is None:
                oldest_index = session.last_index
            elif session.last_index != oldest_index:
                break
            if victim is None or client_id < victim:
                victim = client_id
        assert victim is not None
        del pool[victim]
        self._session_changes[victim] = None

    # ---- reads at a moment -------------------------------------------------------

    def range(self, req: rpc_pb2.RangeRequest) -> rpc_pb2.RangeResponse | EtcdError:
        """etcd's Range on the applied state."""
        return etcd.serve_range(self._store, req)

    def read_txn(self, req: rpc_pb2.TxnRequest) -> rpc_pb2.TxnResponse | EtcdError:
        """A Txn of ranges only, on the applied state (nothing is written)."""
        return etcd.serve_txn(self._store, req)

    # ---- persistence -------------------------------------------------------------

    def take_changes(self) -> Changes:
        """Everything changed since the previous call, for one storage apply batch."""
        store = self._store
        changes = Changes(
            history=store.take_changes(),
            sessions=self._session_changes,
            applied_index=self._applied_index,
            revision=store.revision,
            compact_revision=store.compact_revision,
            alarms=self._alarms,
            leases=self._leases.take_changes(),
        )
        self._session_changes = {}
        return changes
