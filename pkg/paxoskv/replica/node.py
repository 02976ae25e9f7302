"""The runtime-free node: a Replica, the table of waiting client calls, and
every rule about what happens to a client call.

Rules:

- Two drivers run this same object: the asyncio server (``paxoskv.server.node``:
  sockets, a worker thread for fsync, timers) and the simulator
  (``paxoskv.sim``: simulated network, disk and time). A driver feeds inputs
  (``tick``, ``step``, client calls), and while ``has_work()`` runs the pump:
  ``batch = prepare()``; ``write(batch)`` (it may run in another thread);
  ``finish(batch)``. ``prepare`` sends the messages that may leave before the
  write, ``finish`` those that may leave only after it, so no driver can send
  one too early; ``finish`` refuses a batch that was not written.
- A client call returns a ``Call`` at once; ``on_done(call)`` runs when every
  answer is in (``call.results``) or the call failed as a whole
  (``call.error``), possibly before the method returns. Each answer is a
  result or a ``NodeError``. The driver calls ``expire(call)`` at the call's
  deadline; the error it then gets says so.
- Writes are answered once applied on this node; a write waiting when this
  node's view of the leader changes is failed UNAVAILABLE (its command may
  be lost with the old leader; a retry with the same identity is safe).
- A write without a client id (alone or in a per-op batch) gets a fresh
  one, so it is applied once however often its command reaches the log
  (but not exactly-once across client retries); a packed batch is refused
  UNIMPLEMENTED, proposing nothing, until every member is known to take them.
- The etcd API's calls (``etcd_write``, ``range``) and their rules are in
  ``paxoskv.replica.etcd`` (``self.etcd``): the same waiter table, the same
  read index, the same log; its lease calls and the lessor in
  ``paxoskv.replica.lease`` (``self.lease``, ``etcd_lease``), which also
  handles the ``LeaseAsk``/``LeaseAnswer`` peer messages.
- paxoskv.v1's ``scan`` (KV.Range) and ``txn`` (KV.Txn) run etcd's rules
  on the same store with v1's: keys within ``Limits``, a prefix form; a Txn
  with writes is an etcd Txn in the log carrying the client's own
  (client_id, sequence), so it is exactly-once (a retry is answered with
  the first outcome, a ``CommandResult``); without one it gets a fresh
  identity, as an anonymous put does.
- What one call may ask for is bounded by ``CallLimits`` (this node's
  admission rules, not the state machine's: nodes may differ): at most
  ``batch_ops_max`` operations in one ``ops`` call and at most
  ``request_bytes_max`` bytes in what it proposes (a batch: the client's
  bytes, before anonymous writes are named; a unary write: its command).
  Over either, the call (a unary write: that command) fails
  INVALID_ARGUMENT, having proposed nothing (etcd: "too many operations in
  txn request", "request is too large").
- Nothing here touches a clock, a socket, a thread or the global random
  module (tests/unit/test_layers.py).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from paxoskv.etcdpb import rpc_pb2
from paxoskv.kv import commands, etcd as etcd_rules
from paxoskv.kv.commands import Limits
from paxoskv.paxos.core import Core
from paxoskv.paxos import bounds
from paxoskv.paxos.types import FEATURE_PACKED_BATCHES, Config, LeaseAnswer, LeaseAsk, Message, Role
from paxoskv.kv.etcd import EtcdLimits
from paxoskv.replica.calls import Call, CallTable
from paxoskv.replica.etcd import AutoCompaction, EtcdCalls
from paxoskv.replica.lease import LeaseCalls
from paxoskv.replica.errors import (
    DeadlineExceeded,
    EtcdFailure,
    FailedPrecondition,
    InvalidArgument,
    NodeError,
    ResourceExhausted,
    Unavailable,
    Unimplemented,
)
from paxoskv.replica.replica import Batch, Done, Replica
from paxoskv.replica.watch import WatchHub, WatchLimits
from paxoskv.storage.base import Storage
from paxoskv.v1 import kv_pb2

__all__ = ["CallLimits", "NodeStatus", "ReplicaNode", "range_request", "result_or_error", "txn_request"]

_OK = kv_pb2.CommandResult.OK
_STALE = kv_pb2.CommandResult.STALE_SEQUENCE
_NO_SPACE = kv_pb2.CommandResult.NO_SPACE


@dataclass(frozen=True, slots=True, kw_only=True)
class CallLimits:
    """What one client call may ask of this node (see the module rules)."""

    batch_ops_max: int = 10_000  # --max-batch-ops
    request_bytes_max: int = 1536 << 10  # --max-request-bytes (etcd's default)

    def __post_init__(self) -> None:
        if self.batch_ops_max < 1 or self.request_bytes_max < 1:
            raise ValueError(f"call limits must be >= 1: {self}")

    def too_many_ops(self, n: int) -> InvalidArgument | None:
        if n <= self.batch_ops_max:
            return None
        return InvalidArgument(f"{n} operations in one call, over the limit of {self.batch_ops_max} (--max-batch-ops): split the call")

    def too_large(self, n: int) -> InvalidArgument | None:
        if n <= self.request_bytes_max:
            return None
        return InvalidArgument(
            f"request is too large: {n} bytes, over the limit of {self.request_bytes_max} (--max-request-bytes)"
        )


@dataclass(frozen=True, slots=True)
class NodeStatus:
    node_id: int
    role: str
    leader_id: int | None
    ballot_round: int
    ballot_node: int
    commit_index: int
    applied_index: int
    log_start: int
    snapshot_index: int
    keys: int


def result_or_error(result: kv_pb2.CommandResult) -> kv_pb2.CommandResult | NodeError:
    """A write's answer: its result when applied, else why it was refused."""
    if result.code == _OK:
        return result
    if result.code == _NO_SPACE:
        return ResourceExhausted(f"{result.error}: disarm the NOSPACE alarm once space was freed")
    if result.code == _STALE:
        return FailedPrecondition(
            f"{result.error or 'the sequence is older than the last one applied for its client'}: "
            f"use a new client_id, or continue after its last sequence"
        )
    return InvalidArgument(result.error or "the command was rejected")


class ReplicaNode:
    """One node, runtime-free. See the module docstring."""

    def __init__(
        self,
        config: Config,
        storage: Storage,
        rng: random.Random,
        *,
        send: Callable[[list[Message]], object],
        client_addrs: Mapping[int, str] | None = None,
        limits: Limits | None = None,
        call_limits: CallLimits | None = None,
        core_factory: type[Core] = Core,
        cluster_id: str | None = None,
        etcd_limits: EtcdLimits | None = None,
        quota_bytes: int | None = None,
        auto_compaction: AutoCompaction | None = None,
        tick_ms: int = 10,
        watch_limits: WatchLimits | None = None,
        watch_progress_interval_ms: int = 600_000,
        **replica_options: Any,
    ) -> None:
        self._ids = random.Random(rng.getrandbits(64))  # anonymous client ids, batch handles
        self.replica = Replica(config, storage, rng, limits=limits, core_factory=core_factory, **replica_options)
        self.node_id = config.node_id
        self._send = send
        self._client_addrs = dict(client_addrs or {})
        self._limits = self.replica.sm.limits
        self.call_limits = call_limits or CallLimits()
        self.calls = CallTable()
        self._read_ids = 0
        self._batch_prefix = self._ids.getrandbits(64).to_bytes(8, "big")  # this life's handles
        self._batch_seq = 0
        self._leader_seen: int | None = None
        self._stopped: str | None = None
        self.etcd = EtcdCalls(
            self,
            cluster_id if cluster_id is not None else getattr(storage, "cluster_id", ""),
            etcd_limits or EtcdLimits(),
            quota_bytes,
            auto_compaction,
            tick_ms,
        )
        self.lease = LeaseCalls(self, tick_ms)
        self.watches = WatchHub(
            lambda: self.replica.sm,
            self.replica.storage,
            watch_limits or self._watch_limits(config, tick_ms, watch_progress_interval_ms),
        )

    def _watch_limits(self, config: Config, tick_ms: int, progress_ms: int) -> WatchLimits:
        """etcd's: progress every ``progress_ms`` (its default: 10 minutes),
        no leader for 3 election timeouts, fragments of --max-request-bytes."""
        return WatchLimits(
            progress_interval_ticks=max(1, progress_ms // tick_ms),
            no_leader_ticks_max=3 * config.election_ticks_min,
            fragment_bytes=self.etcd.limits.request_bytes_max,
        )

    # ---- Inputs ----------------------------------------------------------------

    def tick(self) -> None:
        self.replica.tick()
        self.etcd.tick()
        self.watches.tick(self.replica.core.leader_id is not None)
        self.lease.tick()

    def step(self, msg: Message) -> None:
        if isinstance(msg, (LeaseAsk, LeaseAnswer)):
            core = self.replica.core
            if msg.to == core.id and msg.frm != core.id and msg.frm in core.config.peers and bounds.check(msg) is None:
                self.lease.step(msg)
            return
        self.replica.step(msg)

    # ---- The pump ----------------------------------------------------------------

    def has_work(self) -> bool:
        return self.replica.has_work() or self.lease.pending

    def prepare(self) -> Batch | None:
        """Collect a batch; the messages that may precede its write leave now.
        The turn's inputs are in: the renewals they made propose their
        checkpoints first, together (``Lessor.flush``), and the lease
        messages leave at once (``Lessor.take_messages``)."""
        self.lease.flush()
        lease_out = self.lease.take_messages()
        if lease_out:
            self._send(lease_out)
        batch = self.replica.prepare()
        if batch is not None and batch.messages_early:
            self._send(batch.messages_early)
        return batch

    def write(self, batch: Batch) -> None:
        """The batch's storage write (touches only the storage: any thread)."""
        self.replica.write(batch)

    def finish(self, batch: Batch) -> Done:
        """After ``write``: send, apply, answer the calls it completes."""
        if batch.messages:
            self._send(batch.messages)
        done = self.replica.apply(batch)
        if self.watches.watching and done.history is not None:
            self.watches.applied(done.history)
        calls = self.calls
        if done.results:
            for a in done.results:
                if a.waiter:
                    calls.batch_applied(a.waiter, a.result)
                elif a.client_id:
                    calls.write_applied((a.client_id, a.sequence), result_or_error(a.result))
        if done.reads:
            refused = self._read_refused
            for rid, ok in done.reads:
                calls.read_released(rid, ok, refused)
        self.lease.applied()
        self._watch_leader()
        return done

    def _watch_leader(self) -> None:
        leader = self.replica.core.leader_id
        if leader != self._leader_seen:
            if self._leader_seen is not None and self.calls.writes_waiting:
                # Commands handed to the old leader may be lost; let clients retry
                # (with the same sequence, so nothing is applied twice).
                self.calls.fail_writes(self._unavailable("leader changed", reason=Unavailable.LEADER_CHANGED))
            self.lease.leader_changed()
            self._leader_seen = leader

    # ---- Client calls ------------------------------------------------------------

    def _call(self, n: int, on_done: Callable[[Call], None], late: str, timeout_s: float) -> Call:
        return Call(n, on_done, DeadlineExceeded(f"no answer within {timeout_s:.3f}s; {late}"))

    def expire(self, call: Call) -> None:
        """The call's deadline passed (the driver keeps the clock)."""
        self.calls.expire(call)

    def put(self, req: kv_pb2.PutRequest, timeout_s: float, on_done: Callable[[Call], None]) -> Call:
        hdr = req.request
        cmd = kv_pb2.Command(client_id=hdr.client_id, sequence=hdr.sequence, put=kv_pb2.PutOp(key=req.key, value=req.value))
        return self.submit([cmd], timeout_s, on_done)

    def delete(self, req: kv_pb2.DeleteRequest, timeout_s: float, on_done: Callable[[Call], None]) -> Call:
        hdr = req.request
        cmd = kv_pb2.Command(client_id=hdr.client_id, sequence=hdr.sequence, delete=kv_pb2.DeleteOp(key=req.key))
        return self.submit([cmd], timeout_s, on_done)

    def submit(self, cmds: Sequence[kv_pb2.Command], timeout_s: float, on_done: Callable[[Call], None]) -> Call:
        """Propose every command; answer each with its result once applied
        here (or why not)."""
        call = self._call(len(cmds), on_done, "the command may still be applied", timeout_s)
        if self._stopped is not None:
            call.fail(Unavailable(self._stopped, proposed=False, reason=Unavailable.STOPPED))
            return call
        replica = self.replica
        limits = self._limits
        for i, cmd in enumerate(cmds):
            if not cmd.client_id:
                if cmd.sequence:
                    call.set(i, InvalidArgument(f"sequence {cmd.sequence} given without a client_id"))
                    continue
                cmd.client_id = commands.node_assigned_id(self._ids.getrandbits(128))
                cmd.sequence = 1
            err = commands.validate(cmd, limits)
            if err is not None:
                call.set(i, InvalidArgument(err))
                continue
            data = commands.encode(cmd)
            too_large = self.call_limits.too_large(len(data))
            if too_large is not None:
                call.set(i, too_large)
                continue
            if not replica.propose(data):
                call.set(i, self._unavailable("no leader is known", proposed=False, reason=Unavailable.NO_LEADER))
                continue
            self.calls.add_write((cmd.client_id, cmd.sequence), call, i)
        return call

    def get(self, req: kv_pb2.GetRequest, timeout_s: float, on_done: Callable[[Call], None]) -> Call:
        """Read ``req.key``: linearizable (read index) unless ``serializable``;
        the answer is ``(value or None, applied index, store revision)``, read together."""
        call = self._call(1, on_done, "read not confirmed", timeout_s)
        if self._stopped is not None:
            call.fail(Unavailable(self._stopped, proposed=False, reason=Unavailable.STOPPED))
            return call
        self._read(call, [(0, req.key)], req.serializable)
        return call

    def ops(
        self,
        ops: Sequence[kv_pb2.RequestOp],
        timeout_s: float,
        on_done: Callable[[Call], None],
        *,
        request: kv_pb2.RequestHeader | None = None,
        raw: bytes | None = None,
    ) -> Call:
        """Many operations in one call (``KV.Batch``, ``KV.PackedBatch``, a
        group of ``KV.Session`` requests), each answered alone, in order. The
        writes go to the log as ONE batch command, the linearizable reads
        share one read index round. A get placed after a write is read once
        the call's writes are applied here, so it sees them. ``request``: a
        packed batch's identity (the writes' sequences follow from it); a
        packed batch refused before it was proposed fails the call as a whole.
        ``raw``: the encoded BatchRequest holding exactly ``ops`` (and
        ``request``), parsed straight into the batch command when every op is
        a write."""
        call = self._call(len(ops), on_done, "the writes may still be applied", timeout_s)
        if self._stopped is not None:
            call.fail(Unavailable(self._stopped, proposed=False, reason=Unavailable.STOPPED))
            return call
        refused = self.call_limits.too_many_ops(len(ops))
        if refused is None and raw is not None:
            refused = self.call_limits.too_large(len(raw))
        if refused is not None:
            call.fail(refused)  # nothing proposed, nothing read
            return call
        writes: list[tuple[int, bool]] = []  # (position, is a put)
        reads: dict[bool, list[tuple[int, bytes]]] = {False: [], True: []}
        for i, op in enumerate(ops):
            kind = op.WhichOneof("op")
            if kind == "put":
                writes.append((i, True))
            elif kind == "delete":
                writes.append((i, False))
            elif kind == "get":
                get = op.get
                reads[get.serializable].append((i, get.key))
            else:
                call.set(i, InvalidArgument("operation has no get, put or delete"))
        first_write = writes[0][0] if writes else len(ops)
        ordered = any(i > first_write for s in (False, True) for i, _ in reads[s])

        def issue_reads() -> None:
            for serializable in (False, True):
                if reads[serializable]:
                    self._read(call, reads[serializable], serializable)

        if not writes:
            issue_reads()
            return call
        cmd = kv_pb2.Command()
        if raw is not None and len(writes) == len(ops):
            cmd.batch.MergeFromString(raw)
        else:
            cmd.batch.ops.extend(ops[i] for i, _ in writes)
            if request is not None:
                cmd.batch.request.CopyFrom(request)
            if raw is None:
                too_large = self.call_limits.too_large(cmd.ByteSize())
                if too_large is not None:
                    call.fail(too_large)  # nothing proposed, nothing read
                    return call
        if request is None:
            self._name_anonymous(cmd.batch.ops)
        positions = [i for i, _ in writes]

        def on_results(results: object) -> None:
            if isinstance(results, NodeError):
                for i in positions:
                    call.set(i, results)
            elif not isinstance(results, tuple) or len(results) != len(positions):
                lost = NodeError("the batch lost its results")
                for i in positions:
                    call.set(i, lost)
            else:
                for i, r in zip(positions, results):
                    call.set(i, result_or_error(r))
            if ordered:
                issue_reads()

        refused = self._propose_batch(cmd, call, on_results)
        if refused is not None:
            if request is not None and isinstance(refused, (InvalidArgument, Unimplemented)):
                call.fail(refused)  # nothing was proposed: the call fails as a whole
                return call
            on_results(refused)
        if not ordered:
            issue_reads()
        return call

    def _name_anonymous(self, ops: Sequence[kv_pb2.RequestOp]) -> None:
        """A write of a per-op batch without identity gets a fresh one, as a
        unary one does: a batch that reaches the log twice (a duplicated
        message) then applies it once."""
        for op in ops:
            body = op.put if op.HasField("put") else op.delete
            hdr = body.request
            if not hdr.client_id and not hdr.sequence:
                hdr.client_id = commands.node_assigned_id(self._ids.getrandbits(128))
                hdr.sequence = 1

    def _new_waiter(self) -> bytes:
        """A handle for a call waiting on a command, unique to this node's life."""
        self._batch_seq += 1
        return self._batch_prefix + self._batch_seq.to_bytes(8, "big")

    def _propose_batch(self, cmd: kv_pb2.Command, call: Call, on_results: Callable[[object], None]) -> NodeError | None:
        """Propose a batch command and register ``on_results`` for its result
        tuple; or why it was not proposed."""
        waiter = self._new_waiter()
        cmd.batch.waiter = waiter
        err = commands.validate(cmd, self._limits)
        if err is not None:
            return InvalidArgument(err)
        replica = self.replica
        if cmd.batch.HasField("request") and not replica.core.cluster_features & FEATURE_PACKED_BATCHES:
            # A member of an older version would apply its writes without their
            # session (or one not heard from since this node started).
            return Unimplemented("not every node of the cluster is known to take packed batches (yet): send KV.Batch")
        if not replica.propose(commands.encode(cmd)):
            return self._unavailable("no leader is known", proposed=False, reason=Unavailable.NO_LEADER)
        self.calls.add_batch(waiter, call, on_results)
        return None

    def serve_read(self, call: Call, i: int, serve: Callable[[], object], serializable: bool) -> None:
        """Answer ``call``'s i-th result with ``serve()``: now when
        ``serializable``, else once a read index is applied here."""
        if serializable:
            call.set(i, serve())
            return
        self._read_ids += 1
        rid = self._read_ids
        self.calls.add_read(rid, call, i, serve)
        self.replica.read(rid)

    def _read(self, call: Call, keys: list[tuple[int, bytes]], serializable: bool) -> None:
        if call.done:
            return  # expired meanwhile (reads after a batch's writes)
        limits = self._limits
        key_max = limits.key_bytes_max
        replica = self.replica
        for i, key in keys:
            if not key or len(key) > key_max:  # the writes' wording (kv.commands)
                call.set(i, InvalidArgument(commands.validate_op("", 0, key, b"", limits) or "bad key"))
            elif serializable:
                sm = replica.sm
                call.set(i, (sm.get(key), sm.applied_index, sm.revision))
            else:
                self._read_ids += 1
                rid = self._read_ids
                self.calls.add_read(rid, call, i, lambda key=key: self._serve_get(key))
                replica.read(rid)

    def _serve_get(self, key: bytes) -> tuple[bytes | None, int, int]:
        sm = self.replica.sm  # the current one: a snapshot install replaces it
        return sm.get(key), sm.applied_index, sm.revision

    def _read_refused(self) -> NodeError:
        return self._unavailable("read could not be confirmed by a quorum", reason=Unavailable.UNCONFIRMED)

    # ---- Ranges and transactions (paxoskv.v1) --------------------------------------

    def scan(self, req: kv_pb2.RangeRequest, timeout_s: float, on_done: Callable[[Call], None]) -> Call:
        """paxoskv.v1 Range: linearizable unless ``serializable``; the answer
        is ``(etcd RangeResponse, applied index)``, or InvalidArgument, or an
        ``EtcdFailure`` (a compacted or future revision: OUT_OF_RANGE)."""
        call = self._call(1, on_done, "read not confirmed", timeout_s)
        if self._stopped is not None:
            call.fail(Unavailable(self._stopped, proposed=False, reason=Unavailable.STOPPED))
            return call
        request = range_request(req, self._limits)
        if isinstance(request, str):
            call.set(0, InvalidArgument(request))
            return call

        def serve() -> object:
            sm = self.replica.sm
            resp = sm.range(request)
            if isinstance(resp, etcd_rules.EtcdError):
                return EtcdFailure(resp.code, resp.message)
            return resp, sm.applied_index

        self.serve_read(call, 0, serve, request.serializable)
        return call

    def txn(self, req: kv_pb2.TxnRequest, timeout_s: float, on_done: Callable[[Call], None]) -> Call:
        """paxoskv.v1 Txn (see the module rules). The answer is
        ``(etcd TxnResponse, applied index)`` the first time, ``(CommandResult,
        its index)`` for a retry of one applied before, or a NodeError
        (FailedPrecondition for a stale sequence, ``EtcdFailure`` for etcd's
        refusals)."""
        hdr = req.request
        request = txn_request(req, self._limits)
        if isinstance(request, str):
            call = self._call(1, on_done, "the transaction may still be applied", timeout_s)
            call.set(0, InvalidArgument(request))
            return call

        def done(call: Call) -> None:
            r = call.results[0]
            if isinstance(r, kv_pb2.CommandResult):
                out = result_or_error(r)
                call.results[0] = out if isinstance(out, NodeError) else (out, out.index)
            elif isinstance(r, rpc_pb2.TxnResponse):
                call.results[0] = (r, self.replica.sm.applied_index)
            on_done(call)

        identity = (hdr.client_id, hdr.sequence) if hdr.client_id else None
        return self.etcd.write(request, timeout_s, done, identity=identity)

    # ---- The etcd API -------------------------------------------------------------

    def etcd_write(self, request: Any, timeout_s: float, on_done: Callable[[Call], None]) -> Call:
        """An etcd Put, DeleteRange, Txn, Compaction or Alarm request; the
        answer is etcd's response or an ``EtcdFailure`` (``EtcdCalls.write``)."""
        return self.etcd.write(request, timeout_s, on_done)

    def range(self, request: Any, timeout_s: float, on_done: Callable[[Call], None]) -> Call:
        """An etcd RangeRequest (``EtcdCalls.range``)."""
        return self.etcd.range(request, timeout_s, on_done)

    def etcd_lease(self, method: str, request: Any, timeout_s: float, on_done: Callable[[Call], None]) -> Call:
        """An etcd lease call: ``method`` is ``grant``, ``revoke``,
        ``keep_alive`` or ``time_to_live`` (``LeaseCalls``)."""
        lease = self.lease
        start = {"grant": lease.grant, "revoke": lease.revoke, "keep_alive": lease.keep_alive, "time_to_live": lease.time_to_live}
        return start[method](request, timeout_s, on_done)

    # ---- Errors and status -------------------------------------------------------

    @property
    def leader_id(self) -> int | None:
        return self.replica.core.leader_id

    @property
    def role(self) -> Role:
        return self.replica.core.role

    def leader_addr(self) -> str | None:
        lid = self.leader_id
        return None if lid is None else self._client_addrs.get(lid)

    def _unavailable(self, why: str, *, proposed: bool = True, reason: str = "") -> Unavailable:
        lid = self.leader_id
        addr = self.leader_addr()
        hint = f"; leader is node {lid} at {addr}" if lid is not None else "; no leader known"
        return Unavailable(why + hint, leader_id=lid, leader_addr=addr, proposed=proposed, reason=reason)

    def status(self) -> NodeStatus:
        r = self.replica
        core = r.core
        return NodeStatus(
            node_id=self.node_id,
            role=core.role.value,
            leader_id=core.leader_id,
            ballot_round=core.ballot.round,
            ballot_node=core.ballot.node,
            commit_index=core.commit_index,
            applied_index=r.sm.applied_index,
            log_start=core.log_start,
            snapshot_index=r.last_snapshot_index,
            keys=len(r.sm),
        )

    @property
    def compactions(self) -> int:
        return self.replica.compactions

    def reclaim(self) -> None:
        """Give the space of compacted entries back (long: any thread)."""
        self.replica.storage.reclaim()

    def open_snapshot(self):  # noqa: ANN201 - a storage SnapshotSource
        """A consistent view of the applied state (any thread)."""
        return self.replica.storage.open_snapshot()

    # ---- Stopping ----------------------------------------------------------------

    def stop(self, reason: str) -> None:
        """Fail every waiting call and every later one UNAVAILABLE with
        ``reason``; release snapshot transfers (the storage stays open)."""
        if self._stopped is None:
            self._stopped = reason
            self.calls.fail_all(Unavailable(reason, reason=Unavailable.STOPPED))
            self.replica.close()


# ---- paxoskv.v1 requests as etcd's ----------------------------------------------------


def _key_error(key: bytes, limits: Limits, what: str = "key") -> str | None:
    if not key:
        return f"{what} is empty"
    if len(key) > limits.key_bytes_max:
        return f"{what} is {len(key)} bytes, more than the limit of {limits.key_bytes_max}"
    return None


def range_request(req: kv_pb2.RangeRequest, limits: Limits) -> rpc_pb2.RangeRequest | str:
    """The etcd RangeRequest of a paxoskv.v1 one, or why it is invalid."""
    key, end = req.key, req.range_end
    if req.prefix:
        if end:
            return "give range_end or prefix, not both"
        key, end = (key, etcd_rules.prefix_end(key)) if key else (b"\x00", b"\x00")
    err = _key_error(key, limits) or (_key_error(end, limits, "range_end") if end else None)
    if err is not None:
        return err
    if end and end != b"\x00" and end <= key:
        return "range_end must be after key (or empty: the key alone; \"\\0\": every key from it on)"
    if req.limit < 0 or req.revision < 0:
        return f"limit and revision must not be negative (limit {req.limit}, revision {req.revision})"
    return rpc_pb2.RangeRequest(
        key=key,
        range_end=end,
        limit=req.limit,
        revision=req.revision,
        serializable=req.serializable,
        keys_only=req.keys_only,
        count_only=req.count_only,
    )


def _txn_ops_error(ops, limits: Limits) -> str | None:  # noqa: ANN001 - etcd RequestOps
    for op in ops:
        kind = op.WhichOneof("request")
        if kind == "request_put":
            put = op.request_put
            err = _key_error(put.key, limits)
            if err is None and len(put.value) > limits.value_bytes_max:
                err = f"value is {len(put.value)} bytes, more than the limit of {limits.value_bytes_max}"
        elif kind == "request_range" or kind == "request_delete_range":
            body = getattr(op, kind)
            err = _key_error(body.key, limits)
        elif kind == "request_txn":
            err = _compares_error(op.request_txn.compare, limits) or _txn_ops_error(
                (*op.request_txn.success, *op.request_txn.failure), limits
            )
        else:
            err = "a txn operation has no range, put, delete or txn"
        if err is not None:
            return err
    return None


def _compares_error(compares, limits: Limits) -> str | None:  # noqa: ANN001 - etcd Compares
    for c in compares:
        err = _key_error(c.key, limits, "compare key")
        if err is not None:
            return err
    return None


def txn_request(req: kv_pb2.TxnRequest, limits: Limits) -> rpc_pb2.TxnRequest | str:
    """The etcd TxnRequest of a paxoskv.v1 one, or why it is invalid: its
    identity and every key and value within ``limits`` (etcd's own checks,
    the op limit and the duplicate-key rule, follow in ``EtcdCalls.write``)."""
    hdr = req.request
    err = (
        commands.validate_identity(hdr.client_id, hdr.sequence, limits)
        or _compares_error(req.compare, limits)
        or _txn_ops_error((*req.success, *req.failure), limits)
    )
    if err is not None:
        return err
    return rpc_pb2.TxnRequest(compare=req.compare, success=req.success, failure=req.failure)
