"""The node layer's etcd pieces: member and cluster ids, the raft term of a
ballot, etcd's errors for a failed call, auto-compaction and HashKV.

Rules:

- Ids are fixed by the cluster id string and the node id, so every member
  computes the same ones, at every start, with nothing to store:
  ``cluster_uid(cluster_id)`` and ``member_id(cluster_id, node_id)`` are the
  first 8 bytes of a SHA-256 (a value below 2**32 gets bit 62 set, so ``%x``
  prints at least 8 digits, as etcd's random ids do).
- ``raft_term(promised)`` is the round of the ballot the node has promised:
  it never goes back on a node (the promise is durable) and grows with every
  election.
- ``as_etcd(error)`` is what a failed etcd call answers: etcd's code and
  message for the cause (no leader, leader changed, timed out, stopped).
- ``AutoCompactor`` is etcd's v3compactor on logical time: the node ticks
  it with the milliseconds of a tick and tells it whether it leads; it says
  when to compact and to which revision. Only the leader compacts, through
  the log, so every member compacts at the same revision; time is the
  leader's tick count, never read inside the state machine.
- ``EtcdCalls`` (a node's ``etcd``) holds every rule of an etcd call: the
  checks etcd makes before it proposes (request size, txn ops, duplicate
  keys, the space quota), reads through the read index unless
  serializable, writes proposed with a node-assigned identity and answered
  by their waiter once applied here. The Range of one key at the current
  revision (``range_one``) is served as a paxoskv.v1 Get is: its live
  record and the revision, the reply encoded by the API layer.
- ``hash_kv(view, revision)``: a CRC-32 of every history row the view
  retains up to ``revision`` (its 16-byte key and its bytes, in revision
  order): equal on every member that applied the same history and
  compactions (etcd's HashKV, over paxoskv's rows; zlib's CRC-32 rather than
  etcd's Castagnoli, since only paxoskv members compare it).
"""

from __future__ import annotations

import hashlib
import zlib
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from paxoskv.etcdpb import rpc_pb2
from paxoskv.kv import commands, etcd
from paxoskv.kv.mvcc import row_key
from paxoskv.kv.state_machine import DUPLICATE
from paxoskv.paxos.types import Ballot
from paxoskv.replica.errors import DeadlineExceeded, EtcdFailure, NodeError, Unavailable
from paxoskv.v1 import kv_pb2

__all__ = [
    "AutoCompaction",
    "AutoCompactor",
    "DEFAULT_QUOTA_BYTES",
    "EtcdCalls",
    "EtcdStatus",
    "ERR_MEMBERSHIP_STATIC",
    "as_etcd",
    "cluster_uid",
    "failure",
    "hash_kv",
    "member_change",
    "member_id",
    "raft_term",
]

_ID_MIN = 1 << 32


def _id(*parts: str) -> int:
    value = int.from_bytes(hashlib.sha256("\0".join(parts).encode()).digest()[:8], "big")
    return value if value >= _ID_MIN else value | (1 << 62)


def cluster_uid(cluster_id: str) -> int:
    """The etcd cluster id (uint64) of the paxoskv cluster ``cluster_id``."""
    return _id("paxoskv-cluster", cluster_id)


def member_id(cluster_id: str, node_id: int) -> int:
    """The etcd member id (uint64) of node ``node_id``."""
    return _id("paxoskv-member", cluster_id, str(node_id))


def raft_term(promised: Ballot) -> int:
    return promised.round


def failure(error: etcd.EtcdError) -> EtcdFailure:
    return EtcdFailure(error.code, error.message)


def as_etcd(error: NodeError) -> EtcdFailure:
    """etcd's answer for a call that failed in the node layer."""
    if isinstance(error, EtcdFailure):
        return error
    if isinstance(error, Unavailable):
        return failure(
            {
                Unavailable.NO_LEADER: etcd.ERR_NO_LEADER,
                Unavailable.LEADER_CHANGED: etcd.ERR_LEADER_CHANGED,
                Unavailable.STOPPED: etcd.ERR_STOPPED,
            }.get(error.reason, etcd.ERR_TIMEOUT)
        )
    if isinstance(error, DeadlineExceeded):
        return failure(etcd.ERR_TIMEOUT)
    return EtcdFailure("UNKNOWN", f"etcdserver: {error}")


# ---- auto-compaction ------------------------------------------------------------------

PERIODIC = "periodic"
REVISION = "revision"
HOUR_MS = 3_600_000
REVISION_INTERVAL_MS = 300_000  # etcd compacts every 5 minutes in revision mode


@dataclass(frozen=True, slots=True)
class AutoCompaction:
    """``--auto-compaction-mode`` and ``--auto-compaction-retention``:
    periodic with ``retention_ms``, or revision with ``retention_revs``
    (``interval_ms``: how often revision mode looks); retention 0: off."""

    mode: str = PERIODIC
    retention_ms: int = 0
    retention_revs: int = 0
    interval_ms: int = REVISION_INTERVAL_MS

    def __post_init__(self) -> None:
        if self.mode not in (PERIODIC, REVISION):
            raise ValueError(f"auto-compaction mode must be {PERIODIC} or {REVISION}, not {self.mode!r}")
        if self.retention_ms < 0 or self.retention_revs < 0 or self.interval_ms < 1:
            raise ValueError(f"auto-compaction values must be positive: {self}")

    @property
    def enabled(self) -> bool:
        return (self.retention_ms if self.mode == PERIODIC else self.retention_revs) > 0


class AutoCompactor:
    """etcd's periodic and revision compactors (v3compactor/periodic.go,
    revision.go) on the node's logical time. ``tick(ms, leader, revision)``
    returns the revision to compact now, or None; ``done(ok)`` tells it how
    the compaction it asked for ended (``ok``: applied, or already compacted)."""

    def __init__(self, policy: AutoCompaction) -> None:
        self.policy = policy
        self._now_ms = 0
        self._pending = False
        if policy.mode == PERIODIC:
            period = policy.retention_ms
            self._step_ms = max(1, min(period, HOUR_MS) // 10)
            self._compact_interval_ms = min(period, HOUR_MS)
            self._retentions = period // self._step_ms + 1 if period else 1
            self._base_ms = period  # until the first success: the whole period
            self._last_success_ms = 0
            self._revs: deque[int] = deque()
            self._next_ms = 0  # sample at once, as etcd does when it starts
        else:
            self._step_ms = policy.interval_ms
            self._next_ms = policy.interval_ms
            self._prev = 0
        self._asked = 0

    @property
    def pending(self) -> bool:
        return self._pending

    def tick(self, elapsed_ms: int, leader: bool, revision: int) -> int | None:
        if not self.policy.enabled:
            return None
        self._now_ms += elapsed_ms
        if self._now_ms < self._next_ms:
            return None
        self._next_ms = self._now_ms + self._step_ms
        if self.policy.mode == PERIODIC:
            return self._periodic(leader, revision)
        return self._revision(leader, revision)

    def _periodic(self, leader: bool, revision: int) -> int | None:
        self._revs.append(revision)
        while len(self._revs) > self._retentions:
            self._revs.popleft()  # revs[0] is the revision of a period ago
        if not leader or self._pending or self._now_ms - self._last_success_ms < self._base_ms:
            return None
        if self._base_ms == self.policy.retention_ms:
            self._base_ms = self._compact_interval_ms
        self._pending = True
        self._asked = self._revs[0]
        return self._asked

    def _revision(self, leader: bool, revision: int) -> int | None:
        rev = revision - self.policy.retention_revs
        if not leader or self._pending or rev <= 0 or rev == self._prev:
            return None
        self._pending = True
        self._asked = rev
        return rev

    def done(self, ok: bool) -> None:
        """The compaction asked for ended; ``ok``: it applied, or the store
        was compacted there already."""
        self._pending = False
        if not ok:
            return
        if self.policy.mode == PERIODIC:
            self._last_success_ms = self._now_ms
        else:
            self._prev = self._asked


# ---- HashKV ------------------------------------------------------------------------------


class HistoryView(Protocol):
    """What ``hash_kv`` reads (a storage ``SnapshotSource``)."""

    @property
    def revision(self) -> int: ...

    @property
    def compact_revision(self) -> int: ...

    def history_rows(self, start: bytes = ..., stop: bytes | None = ...): ...  # noqa: ANN201


def hash_kv(view: HistoryView, revision: int) -> rpc_pb2.HashKVResponse | EtcdFailure:
    """etcd's HashKV on a consistent view of the store (rules above);
    ``header.revision`` is the view's revision."""
    current, compacted = view.revision, view.compact_revision
    if revision > 0 and revision <= compacted:
        return failure(etcd.ERR_COMPACTED)  # at the compaction too, as etcd
    if revision > current:
        return failure(etcd.ERR_FUTURE_REV)
    rev = revision if revision > 0 else current
    crc = zlib.crc32(b"rev")
    for key, row in view.history_rows(b"", row_key(rev + 1, 0)):
        crc = zlib.crc32(row, zlib.crc32(key, crc))
    resp = rpc_pb2.HashKVResponse(hash=crc, compact_revision=compacted)
    resp.header.revision = current
    return resp


# ---- the etcd calls of a node --------------------------------------------------------

_FIELDS = {
    rpc_pb2.PutRequest: "put",
    rpc_pb2.DeleteRangeRequest: "delete_range",
    rpc_pb2.TxnRequest: "txn",
    rpc_pb2.CompactionRequest: "compaction",
    rpc_pb2.AlarmRequest: "alarm",
}
DEFAULT_QUOTA_BYTES = 2 << 30  # etcd's --quota-backend-bytes default
# A message may be this much larger than --max-request-bytes before gRPC
# refuses it (RESOURCE_EXHAUSTED) instead of the node (INVALID_ARGUMENT, with
# the limit named): etcd's grpcOverheadBytes (v3rpc/grpc.go). The server's
# gRPC options take it from here.
GRPC_OVERHEAD_BYTES = 512 << 10
_INTERNAL_WAIT_TICKS = 3000  # a call of the node's own unanswered this long is given up


@dataclass(frozen=True, slots=True)
class EtcdStatus:
    """What ``Maintenance.Status`` reports of a member."""

    member_id: int
    leader: int  # the leader's member id, 0: none known
    raft_index: int  # committed
    raft_applied_index: int
    raft_term: int
    revision: int
    errors: tuple[str, ...]


class EtcdCalls:
    """The etcd calls of one ``ReplicaNode`` (its ``etcd`` attribute): the
    rules of every etcd request, the quota and the auto-compactor. Answers
    are etcd's response messages (``header.revision`` set) or
    ``EtcdFailure``; ``node`` is the ReplicaNode."""

    def __init__(
        self,
        node,  # noqa: ANN001 - a ReplicaNode (imported by it)
        cluster_id: str,
        limits: etcd.EtcdLimits,
        quota_bytes: int | None,
        auto_compaction: AutoCompaction | None,
        tick_ms: int,
    ) -> None:
        self._node = node
        self.cluster_id = cluster_id
        self.cluster_uid = cluster_uid(cluster_id)
        self.member_id = member_id(cluster_id, node.node_id)
        self.header_prefix = etcd.header_prefix(self.cluster_uid, self.member_id)  # encode_range_one's
        self.limits = limits
        self.quota_bytes = quota_bytes
        self.backend_bytes = 0
        self._tick_ms = tick_ms
        self._compactor = AutoCompactor(auto_compaction) if auto_compaction and auto_compaction.enabled else None
        self._alarm_pending = False
        self._internal: dict[object, int] = {}  # calls the node made itself -> ticks they waited

    # ---- reading the node --------------------------------------------------------

    @property
    def _sm(self):  # noqa: ANN202 - the current state machine (an install replaces it)
        return self._node.replica.sm

    @property
    def raft_term(self) -> int:
        return raft_term(self._node.replica.core.promised)

    @property
    def revision(self) -> int:
        return self._sm.revision

    def check_message_bytes(self, size: int) -> EtcdFailure | None:
        """etcd's gRPC server takes messages up to --max-request-bytes plus
        512 KiB, and refuses larger ones in grpc-go's words (before etcd sees
        them); paxoskv's port takes more for its own API, so the etcd API
        draws etcd's line itself."""
        limit = self.limits.request_bytes_max + GRPC_OVERHEAD_BYTES
        if size > limit:
            return EtcdFailure("RESOURCE_EXHAUSTED", f"grpc: received message larger than max ({size} vs. {limit})")
        return None

    def leader_member_id(self) -> int:
        lid = self._node.leader_id
        return 0 if lid is None else member_id(self.cluster_id, lid)

    def require_leader(self) -> EtcdFailure | None:
        """etcd's answer to a call that demands a leader (metadata
        ``hasleader``) when this member knows none."""
        return failure(etcd.ERR_NO_LEADER) if self._node.leader_id is None else None

    def status(self) -> EtcdStatus:
        core = self._node.replica.core
        sm = self._sm
        errors = [] if core.leader_id is not None else [etcd.ERR_NO_LEADER.message]
        errors += [etcd.alarm_text(m, a) for m, a in sm.alarms]
        return EtcdStatus(
            member_id=self.member_id,
            leader=self.leader_member_id(),
            raft_index=core.commit_index,
            raft_applied_index=sm.applied_index,
            raft_term=self.raft_term,
            revision=sm.revision,
            errors=tuple(errors),
        )

    # ---- calls -------------------------------------------------------------------

    def _call(self, on_done, timeout_s: float):  # noqa: ANN001, ANN202
        """A one-answer call whose node-layer failures become etcd's."""

        def done(call) -> None:  # noqa: ANN001
            if call.error is not None:
                call.error = as_etcd(call.error)
            r = call.results[0]
            if isinstance(r, NodeError):
                call.results[0] = as_etcd(r)
            on_done(call)

        return self._node._call(1, done, "the request may still be applied", timeout_s)

    def write(self, request, timeout_s: float, on_done, *, identity: tuple[str, int] | None = None):  # noqa: ANN001, ANN201
        """An etcd write (Put, DeleteRange, Txn, Compaction, Alarm): checked
        as etcd checks it, proposed, answered once applied here. A Txn of
        ranges only and an Alarm GET are reads. ``identity``: a paxoskv.v1
        client's (client_id, sequence) for the command (a v1 Txn: the state
        machine's session table applies to it) instead of a node-assigned one."""
        call = self._call(on_done, timeout_s)
        node = self._node
        if node._stopped is not None:
            call.set(0, failure(etcd.ERR_STOPPED))
            return call
        field = _FIELDS[type(request)]
        plain = etcd.plain_puts(request) if field == "txn" else None
        err = self._check(field, request, plain)
        if err is not None:
            call.set(0, failure(err))
            return call
        if field == "txn" and plain is None and etcd.is_txn_readonly(request):
            self._read(call, lambda: self._answer(self._sm.read_txn(request)), etcd.is_txn_serializable(request))
            return call
        if field == "alarm" and request.action == rpc_pb2.AlarmRequest.GET:
            self._read(call, lambda: etcd.apply_alarm(self._sm.alarms, request)[1], False)
            return call
        if etcd.request_bytes(request.ByteSize(), self.member_id) > self.limits.request_bytes_max:
            call.set(0, failure(etcd.ERR_REQUEST_TOO_LARGE))
            return call
        cost = etcd.put_cost(request) if field == "put" else etcd.txn_cost(request, plain) if field == "txn" else 0
        if cost and not self._space_for(cost):
            call.set(0, failure(etcd.ERR_NO_SPACE))
            return call
        self._propose(field, request, call, identity)
        return call

    def range(self, request: rpc_pb2.RangeRequest, timeout_s: float, on_done):  # noqa: ANN001, ANN201
        """etcd's Range: linearizable (a read index) unless ``serializable``;
        the answer is computed from the state machine when the read is released."""
        call = self._call(on_done, timeout_s)
        if self._node._stopped is not None:
            call.set(0, failure(etcd.ERR_STOPPED))
            return call
        err = etcd.check_range(request)
        if err is not None:
            call.set(0, failure(err))
            return call
        self._read(call, lambda: self._answer(self._sm.range(request)), request.serializable)
        return call

    def range_one(self, request: rpc_pb2.RangeRequest, timeout_s: float, on_done):  # noqa: ANN001, ANN201
        """The Range of one key at the current revision (``etcd.is_range_one``):
        a v1 Get's path (the same read index rounds, nothing built but the
        answer), answered ``(KeyRecord or None, revision)`` read together; a
        failure is the node layer's ``NodeError``, for ``as_etcd``."""
        node = self._node
        call = node._call(1, on_done, "read not confirmed", timeout_s)
        if node._stopped is not None:
            call.set(0, failure(etcd.ERR_STOPPED))
            return call
        node.serve_read(call, 0, lambda key=request.key: self._record(key), request.serializable)
        return call

    def _record(self, key: bytes) -> tuple[object, int]:
        sm = self._sm
        return sm.store.record(key), sm.revision

    def _check(self, field: str, request, plain=None) -> etcd.EtcdError | None:  # noqa: ANN001
        if field == "put":
            return etcd.check_put(request)
        if field == "delete_range":
            return etcd.check_delete_range(request)
        if field == "txn":
            return etcd.check_txn(request, self.limits, plain)
        return None

    @staticmethod
    def _answer(result):  # noqa: ANN001, ANN205
        return failure(result) if isinstance(result, etcd.EtcdError) else result

    def _read(self, call, serve, serializable: bool) -> None:  # noqa: ANN001
        self._node.serve_read(call, 0, serve, serializable)

    def _propose(self, field: str, request, call, identity: tuple[str, int] | None = None) -> None:  # noqa: ANN001
        node = self._node
        client_id, sequence = identity or (commands.node_assigned_id(node._ids.getrandbits(128)), 1)
        cmd = kv_pb2.Command(client_id=client_id, sequence=sequence)
        getattr(cmd.etcd, field).CopyFrom(request)
        waiter = node._new_waiter()
        cmd.etcd.waiter = waiter
        if not node.replica.propose(commands.encode(cmd)):
            call.set(0, failure(etcd.ERR_NO_LEADER))
            return

        def on_result(result: object) -> None:
            if isinstance(result, etcd.EtcdError):
                result = failure(result)
            elif result is DUPLICATE:  # never for a waiter: it was answered the first time
                result = EtcdFailure("UNKNOWN", "etcdserver: the request was applied before")
            call.set(0, result)

        node.calls.add_batch(waiter, call, on_result)

    # ---- quota and alarms --------------------------------------------------------

    def _space_for(self, cost: int) -> bool:
        """etcd's quota check: False when the NOSPACE alarm is raised, or
        when the backend plus ``cost`` would reach the quota (then this member
        raises the alarm)."""
        if self._sm.nospace:
            return False
        if self.quota_bytes is None or self.backend_bytes + cost < self.quota_bytes:
            return True
        self._raise_nospace()
        return False

    def set_backend_bytes(self, size: int) -> None:
        """The driver measured the data directory; at the quota, raise the alarm."""
        self.backend_bytes = size
        if self.quota_bytes is not None and size >= self.quota_bytes:
            self._raise_nospace()  # this member's own, whatever others raised

    def _raise_nospace(self) -> None:
        if self._alarm_pending or (self.member_id, etcd.ALARM_NOSPACE) in self._sm.alarms:
            return
        self._alarm_pending = True

        def done(_: object) -> None:
            self._alarm_pending = False

        request = rpc_pb2.AlarmRequest(
            action=rpc_pb2.AlarmRequest.ACTIVATE, memberID=self.member_id, alarm=rpc_pb2.NOSPACE
        )
        self._propose("alarm", request, self._internal_call(done))

    def _internal_call(self, done):  # noqa: ANN001, ANN202
        """A call of the node's own (an alarm, a compaction), given up after
        ``_INTERNAL_WAIT_TICKS`` ticks unanswered."""

        def finished(call) -> None:  # noqa: ANN001
            self._internal.pop(call, None)
            done(call)

        call = self._node._call(1, finished, "not answered", _INTERNAL_WAIT_TICKS * self._tick_ms / 1000)
        self._internal[call] = 0
        return call

    # ---- auto-compaction ------------------------------------------------------------

    def tick(self) -> None:
        if self._internal:
            for call in list(self._internal):
                self._internal[call] += 1
                if self._internal[call] > _INTERNAL_WAIT_TICKS:
                    self._node.expire(call)
        compactor = self._compactor
        if compactor is None:
            return
        node = self._node
        rev = compactor.tick(self._tick_ms, node.replica.core.is_leader and node._stopped is None, self.revision)
        if rev is None:
            return

        def done(call) -> None:  # noqa: ANN001
            result = call.results[0]
            ok = isinstance(result, rpc_pb2.CompactionResponse) or (
                isinstance(result, EtcdFailure) and result.message == etcd.ERR_COMPACTED.message
            )
            compactor.done(ok)

        self._propose("compaction", rpc_pb2.CompactionRequest(revision=rev), self._internal_call(done))

    # ---- membership and leadership ------------------------------------------------

    @property
    def members(self) -> tuple[int, ...]:
        """The node ids of the cluster (static)."""
        return tuple(self._node.replica.core.config.peers)

    def member_change(self, method: str, target: int) -> EtcdFailure:
        return member_change(self.cluster_id, self.members, method, target)

    def move_leader(self, target: int) -> EtcdFailure | None:
        """etcd's MoveLeader: only the leader takes it; a target that is no
        member is etcd's bad transferee; the leader itself is done already;
        moving to another member paxoskv does not do (FAILED_PRECONDITION,
        which clients do not retry, as they would etcd's UNAVAILABLE "not
        capable")."""
        if not self._node.replica.core.is_leader:
            return failure(etcd.ERR_NOT_LEADER)
        if target not in {member_id(self.cluster_id, n) for n in self.members}:
            return failure(etcd.ERR_BAD_LEADER_TRANSFEREE)
        if target == self.member_id:
            return None
        return failure(ERR_NO_LEADER_TRANSFER)

    # ---- long reads (any thread) ----------------------------------------------------

    def hash_kv(self, revision: int) -> rpc_pb2.HashKVResponse | EtcdFailure:
        """etcd's HashKV of this member's applied history (long: any thread)."""
        with self._node.replica.storage.open_snapshot() as view:
            return hash_kv(view, revision)

    def defragment(self) -> None:
        """Give the space of every deleted record back (long: any thread)."""
        self._node.replica.storage.defragment()


# ---- membership (static) -----------------------------------------------------------------

ERR_NO_LEADER_TRANSFER = etcd.EtcdError(
    "FAILED_PRECONDITION",
    "etcdserver: leader transfer is not supported: a paxoskv leader changes only by election",
)
ERR_MEMBERSHIP_STATIC = etcd.EtcdError(
    "FAILED_PRECONDITION",
    "etcdserver: membership is static: paxoskv members are the nodes named by --peers at start",
)


def member_change(cluster_id: str, members: tuple[int, ...], method: str, target: int) -> EtcdFailure:
    """What ``MemberAdd``/``Remove``/``Update``/``Promote`` answer: etcd's
    error where etcd has one for the request (an unknown member; promoting a
    member that is no learner), else that membership is static."""
    known = {member_id(cluster_id, n) for n in members}
    if method != "MemberAdd" and target not in known:
        return failure(etcd.ERR_MEMBER_NOT_FOUND)
    if method == "MemberPromote":
        return failure(etcd.ERR_MEMBER_NOT_LEARNER)  # every paxoskv member votes
    return failure(ERR_MEMBERSHIP_STATIC)
