"""Simulated etcd-API clients, and the MVCC reference the simulator checks them by.

Rules:

- An ``EtcdClient`` makes the etcd calls a gRPC client makes, through the
  node layer's ``EtcdCalls`` (``ReplicaNode.etcd_write`` / ``range``): a
  Txn compare-and-set on ``mod_revision``, a two-key Txn on ``version``, a
  Range at a past revision, a current read and a Compaction (to a revision
  near the latest it saw: sometimes below the compaction already done, or
  in the future). Keys ``e0`` ... apart from the v1 clients' ``k0`` ...
- etcd's API has no client sequence: a call is one attempt to one node,
  never retried. Its outcome (``paxoskv.check.txn.TxnOp``): the response
  (``ok``), etcd's compacted or future-revision error (``ok`` with that
  ``error``: nothing was written), "no leader" (``fail``: never proposed),
  anything else or no answer by its timeout (``unknown``). An
  INVALID_ARGUMENT is a violation: the clients send only valid requests.
- ``reference_mvcc`` replays the agreed log (v1 commands and etcd
  commands, with the sessions of ``checks.command_effects``) through
  ``paxoskv.check.txn.TxnModel``, which shares no code with
  ``paxoskv.kv``: its revision, compaction revision and every key's value,
  create and mod revision and version must be the real state machine's.
- ``check_etcd_history``: linearizability of the etcd calls against the
  same model (CAS outcomes, header revisions, reads at a revision,
  compaction errors), the v1 writes taking revisions in between.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from paxoskv.check.txn import (
    COMPACTED,
    FUTURE,
    Compare,
    Delete,
    Put,
    Range,
    Record,
    TxnCheckResult,
    TxnModel,
    TxnOp,
    check_txn_history,
)
from paxoskv.check.watch import WatchEvent
from paxoskv.etcdpb import rpc_pb2
from paxoskv.kv import etcd as etcd_rules
from paxoskv.kv.commands import Limits
from paxoskv.paxos.types import Value
from paxoskv.replica.errors import EtcdFailure
from paxoskv.sim.checks import command_effects, is_v1_txn
from paxoskv.sim.history import FAIL, GET, Operation
from paxoskv.sim.scheduler import Scheduler

__all__ = ["EtcdClient", "check_etcd_history", "reference_mvcc", "state_of"]

_C = rpc_pb2.Compare
WRITE, RANGE = "etcd-write", "etcd-range"  # the request forms the simulator hands the node layer


class EtcdEnv(Protocol):
    scheduler: Scheduler
    node_ids: tuple[int, ...]

    def etcd_take_op(self) -> bool: ...

    def send_request(self, req: Any) -> None: ...

    def violation(self, kind: str, detail: str) -> None: ...


def _key(k: str) -> bytes:
    return k.encode()


def to_request(op: TxnOp) -> rpc_pb2.TxnRequest | rpc_pb2.RangeRequest | rpc_pb2.CompactionRequest:
    """The etcd request of a spec (a single Range with no compares is a RangeRequest)."""
    if op.compact:
        return rpc_pb2.CompactionRequest(revision=op.compact)
    if not op.compares and not op.failure and len(op.success) == 1 and isinstance(op.success[0], Range):
        r = op.success[0]
        return rpc_pb2.RangeRequest(key=_key(r.key), revision=r.revision)

    def req_op(o: Put | Delete | Range) -> rpc_pb2.RequestOp:
        if isinstance(o, Put):
            return rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=_key(o.key), value=o.value.encode()))
        if isinstance(o, Delete):
            return rpc_pb2.RequestOp(request_delete_range=rpc_pb2.DeleteRangeRequest(key=_key(o.key)))
        return rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=_key(o.key), revision=o.revision))

    compares = []
    for c in op.compares:
        if c.target == "mod":
            compares.append(_C(key=_key(c.key), target=_C.MOD, result=_C.EQUAL, mod_revision=int(c.operand)))
        else:
            compares.append(_C(key=_key(c.key), target=_C.VERSION, result=_C.EQUAL, version=int(c.operand)))
    return rpc_pb2.TxnRequest(compare=compares, success=[req_op(o) for o in op.success],
                              failure=[req_op(o) for o in op.failure])


def from_request(req: object) -> TxnOp | None:
    """The spec of an etcd request found in the log (None: not one the
    reference replays, which the simulated clients never send)."""

    def ops(lst) -> tuple | None:  # noqa: ANN001
        out: list[Put | Delete | Range] = []
        for o in lst:
            kind = o.WhichOneof("request")
            if kind == "request_put":
                out.append(Put(o.request_put.key.decode(), o.request_put.value.decode()))
            elif kind == "request_delete_range" and not o.request_delete_range.range_end:
                out.append(Delete(o.request_delete_range.key.decode()))
            elif kind == "request_range" and not o.request_range.range_end:
                out.append(Range(o.request_range.key.decode(), o.request_range.revision))
            else:
                return None
        return tuple(out)

    if isinstance(req, rpc_pb2.CompactionRequest):
        return TxnOp(id=0, client="log", call=0, ret=None, outcome="unknown", compact=req.revision)
    if isinstance(req, rpc_pb2.PutRequest):
        return TxnOp(id=0, client="log", call=0, ret=None, outcome="unknown",
                     success=(Put(req.key.decode(), req.value.decode()),))
    if not isinstance(req, rpc_pb2.TxnRequest):
        return None
    compares = []
    for c in req.compare:
        if c.result != _C.EQUAL or c.range_end:
            return None
        if c.target == _C.MOD:
            compares.append(Compare(c.key.decode(), "mod", "=", c.mod_revision))
        elif c.target == _C.VERSION:
            compares.append(Compare(c.key.decode(), "version", "=", c.version))
        else:
            return None
    success, failure = ops(req.success), ops(req.failure)
    if success is None or failure is None:
        return None
    return TxnOp(id=0, client="log", call=0, ret=None, outcome="unknown", compares=tuple(compares),
                 success=success, failure=failure)


class EtcdClient:
    """One sequential etcd-API client (see the module rules)."""

    def __init__(self, env: EtcdEnv, client_id: str, rng: random.Random, *, keys: int, timeout_us: int,
                 think_max_us: int) -> None:
        self.env = env
        self.client_id = client_id
        self.rng = rng
        self.keys = [f"e{i}" for i in range(keys)]
        self.timeout_us = timeout_us
        self.think_max_us = think_max_us
        self.history: list[TxnOp] = []
        self.seen: dict[str, Record | None] = {}
        self.last_rev = 1
        self._seq = 0
        self._call_id = 0
        self._pending: dict[str, Any] | None = None  # the spec, call time, node of the call in flight
        self._next_id = 0

    # ---- calls ---------------------------------------------------------------------

    def start(self) -> None:
        self.env.scheduler.after(self.rng.randint(0, self.think_max_us), self._next)

    def _value(self) -> str:
        self._seq += 1
        return f"{self.client_id}.{self._seq}"

    def _spec(self) -> dict[str, Any]:
        rng = self.rng
        r = rng.random()
        k = rng.choice(self.keys)
        if r < 0.35:
            rec = self.seen.get(k)
            return dict(compares=(Compare(k, "mod", "=", rec[2] if rec else 0),),
                        success=(Put(k, self._value()),), failure=(Range(k),))
        if r < 0.55 and len(self.keys) > 1:
            a, b = rng.sample(self.keys, 2)
            rec = self.seen.get(a)
            second = Put(b, self._value()) if rng.random() < 0.7 else Delete(b)
            return dict(compares=(Compare(a, "version", "=", rec[3] if rec else 0),),
                        success=(Put(a, self._value()), second), failure=(Range(a), Range(b)))
        if r < 0.75:
            return dict(success=(Range(k, rng.randint(max(1, self.last_rev - 10), self.last_rev)),))
        if r < 0.9:
            return dict(success=(Range(k),))
        return dict(compact=rng.randint(max(1, self.last_rev - 6), self.last_rev + 2))

    def _next(self, _: Any = None) -> None:
        if not self.env.etcd_take_op():
            return
        from paxoskv.sim.clients import Request  # the simulator's request, as every client's

        spec = self._spec()
        probe = TxnOp(id=0, client=self.client_id, call=0, ret=None, outcome="unknown", **spec)
        req = to_request(probe)
        self._call_id += 1
        now = self.env.scheduler.now_us
        node = self.rng.choice(self.env.node_ids)
        self._pending = dict(spec=spec, call_us=now, call_id=self._call_id)
        form = RANGE if isinstance(req, rpc_pb2.RangeRequest) else WRITE
        self.env.send_request(Request(self, self._call_id, 1, node, form, req, self.timeout_us))  # type: ignore[arg-type]
        self.env.scheduler.after(self.timeout_us, self._timeout, self._call_id)

    def _record(self, outcome: str, **output: Any) -> None:
        p = self._pending
        assert p is not None
        self._pending = None
        now = self.env.scheduler.now_us
        op = TxnOp(id=self._next_id, client=self.client_id, call=p["call_us"] / 1000,
                   ret=now / 1000 if outcome == "ok" else None, outcome=outcome, **p["spec"], **output)
        self._next_id += 1
        self.history.append(op)
        # After a call that went nowhere, wait as a client backs off (an
        # election takes a while; the calls are few).
        pause_us = self.think_max_us if outcome == "ok" else self.timeout_us
        self.env.scheduler.after(self.rng.randint(0, pause_us), self._next)

    def finish(self) -> None:
        """The run is over: a call still in flight is unknown."""
        if self._pending is not None:
            self._record("unknown")

    def _timeout(self, call_id: int) -> None:
        if self._pending is not None and self._pending["call_id"] == call_id:
            self._record("unknown")

    def on_answer(self, arg: tuple[int, int, Any]) -> None:
        call_id, _token, call = arg
        p = self._pending
        if p is None or p["call_id"] != call_id:
            return  # answered after its timeout: it is unknown already
        result = call.error if call.error is not None else call.results[0]
        if isinstance(result, EtcdFailure):
            if result.message == etcd_rules.ERR_COMPACTED.message:
                self._record("ok", error=COMPACTED, succeeded=True, reads=())
            elif result.message == etcd_rules.ERR_FUTURE_REV.message:
                self._record("ok", error=FUTURE, succeeded=True, reads=())
            elif result.message == etcd_rules.ERR_NO_LEADER.message:
                self._record("fail")
            else:
                if result.code == "INVALID_ARGUMENT":
                    self.env.violation("invalid", f"{self.client_id} etcd call refused: {result.message}")
                self._record("unknown")
            return
        spec = p["spec"]
        revision = result.header.revision
        self.last_rev = max(self.last_rev, revision)
        if isinstance(result, rpc_pb2.CompactionResponse):
            self._record("ok", succeeded=True, revision=revision, reads=())
            return
        if isinstance(result, rpc_pb2.RangeResponse):
            reads: tuple[Record | None, ...] = (_rec(result.kvs[0]) if result.kvs else None,)
            self._record("ok", succeeded=True, revision=revision, reads=reads)
            return
        reads = tuple(_rec(r.response_range.kvs[0]) if r.response_range.kvs else None
                      for r in result.responses if r.WhichOneof("response") == "response_range")
        branch = spec["success"] if result.succeeded else spec["failure"]
        it = iter(reads)
        for o in branch:
            if isinstance(o, Range):
                rec = next(it, None)
                if not o.revision:
                    self.seen[o.key] = rec
            elif isinstance(o, Put):
                self.seen.pop(o.key, None)  # its version is known only from a read
            else:
                self.seen[o.key] = None
        self._record("ok", succeeded=result.succeeded, revision=revision, reads=reads)


def _rec(kv) -> Record:  # noqa: ANN001 - an mvccpb.KeyValue
    return (kv.value.decode(), kv.create_revision, kv.mod_revision, kv.version)


# ---- the reference ----------------------------------------------------------------------


def reference_mvcc(
    log: Mapping[int, Value], through: int, limits: Limits, events: list[WatchEvent] | None = None
) -> tuple[TxnModel, list[str], list[int]]:
    """The MVCC store after slots ``1..through``, replayed by ``TxnModel``;
    the commands it could not replay (none for the simulated clients); and
    the revisions the v1 commands took. ``events``, when given, gets every
    event of the replay in order (the watch checks' reference log): one per
    put and per delete of a live key, in a command's order of writes."""
    model = TxnModel()
    skipped: list[str] = []
    v1_revisions: list[int] = []
    for cmd, writes in command_effects(log, through, limits):
        rev_before = model.revision
        if cmd.WhichOneof("op") == "etcd" and not is_v1_txn(cmd):
            field = cmd.etcd.WhichOneof("request")
            req = getattr(cmd.etcd, field) if field else None
            if isinstance(req, rpc_pb2.AlarmRequest):
                continue
            op = from_request(req)
            if op is None:
                skipped.append(f"{field}: {str(req)[:80]!r}")
                continue
            _, changes, _, _ = model.outcome(op)
            model.apply_changes(changes)
            if events is not None and model.revision > rev_before:
                # a Txn's changes are in its ops' order (its keys are distinct: etcd's rule)
                events.extend(_event(model.revision, k, rec) for k, rec in changes.items())
            continue
        # A v1 command: one revision for all its writes, if one changed something.
        view: dict[str, Record | None] = {}
        new = model.revision + 1
        mine: list[WatchEvent] = []  # the store writes a row per put and per delete of a live key
        for key_b, value in writes:
            key = key_b.decode(errors="surrogateescape")
            cur = view[key] if key in view else model.kv.get(key)
            if value is None:
                if cur is not None:
                    mine.append(WatchEvent(new, key_b, "delete"))
                if cur is not None or key in view:
                    view[key] = None
            else:
                mine.append(WatchEvent(new, key_b, "put", value))
                v = value.decode(errors="surrogateescape")
                view[key] = (v, new, new, 1) if cur is None else (v, cur[1], new, cur[3] + 1)
        model.apply_changes(view)
        if view:
            v1_revisions.append(model.revision)
            if events is not None:
                events.extend(mine)
    return model, skipped, v1_revisions


def _event(revision: int, key: str, rec: Record | None) -> WatchEvent:
    k = key.encode(errors="surrogateescape")
    if rec is None:
        return WatchEvent(revision, k, "delete")
    return WatchEvent(revision, k, "put", rec[0].encode(errors="surrogateescape"))


def state_of(sm) -> dict[str, Record]:  # noqa: ANN001 - a kv.StateMachine
    """Every live key of a state machine as the reference records it."""
    store = sm.store
    out = {}
    for key, _ in store.items():
        r = store.record(key)
        out[key.decode(errors="surrogateescape")] = (r.value.decode(errors="surrogateescape"), r.create, r.mod, r.version)
    return out


def compare_reference(model: TxnModel, sm) -> list[str]:  # noqa: ANN001
    """Where the real state machine differs from the reference (empty: nowhere)."""
    problems = []
    if model.revision != sm.revision:
        problems.append(f"revision {sm.revision}, the reference's {model.revision}")
    if max(model.compact_revision, 0) != max(sm.compact_revision, 0):
        problems.append(f"compaction revision {sm.compact_revision}, the reference's {model.compact_revision}")
    real = state_of(sm)
    ref = {k: v for k, v in model.kv.items()}
    diff = sorted(k for k in real.keys() | ref.keys() if real.get(k) != ref.get(k))
    if diff:
        k = diff[0]
        problems.append(f"{len(diff)} keys differ, e.g. {k!r}: {real.get(k)} (the reference: {ref.get(k)})")
    return problems


def check_etcd_history(
    history: Sequence[TxnOp], v1_history: Sequence[Operation], steps_max: int, v1_revisions: Sequence[int] | None
) -> TxnCheckResult:
    """The etcd calls' history against the MVCC model; the v1 writes took
    ``v1_revisions`` (from the agreed log) or, when those are not known, may
    take revisions after their call."""
    if v1_revisions is not None:
        return check_txn_history(history, foreign_revisions=v1_revisions, time_budget_s=None, step_budget=steps_max)
    foreign = [op.call_us / 1000 for op in v1_history if op.kind != GET and op.outcome != FAIL]
    return check_txn_history(history, foreign=foreign, time_budget_s=None, step_budget=steps_max)
