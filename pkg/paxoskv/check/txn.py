"""Linearizability of etcd-API histories: Txn with compares, multi-key writes,
Range at a revision, against an MVCC model with a store revision.

Rules
-----
- An operation is one etcd call seen as a ``TxnOp``: compares (all must hold
  for the success branch), a success and a failure branch of ``Put``,
  ``Delete`` and ``Range`` (a Range at ``revision`` > 0 reads the past). A
  plain Put, DeleteRange or Range is a Txn without compares.
- The model is etcd's store: ``revision`` starts at 1 and grows by exactly
  one per *mutating* Txn (a put, or a delete that deleted something); every
  key has value, create, mod revision and version; history is kept. A
  ``Compaction`` (``TxnOp.compact``) moves the compaction revision (no
  revision of its own); etcd refuses one at or below it (``compacted``) or
  above the current revision (``future``), and a Range at a revision below
  it or above the current one: an ``ok`` op may carry that ``error``, and
  then changed nothing.
- An ``ok`` op's output is checked in full: which branch ran
  (``succeeded``), the header revision (a mutating Txn: the new revision; any
  other: the revision it was served at) and every Range's answer
  (``(value, create, mod, version)`` or ``None``). ``unknown`` ops may take
  effect once, at any time after their call, or never; their output is
  unconstrained. ``fail`` ops are dropped.
- Keys are not independent (a Txn spans keys), so the whole history is one
  search (Wing & Gong, with Lowe's cache of visited (linearized set, state)).
  The header revisions make it nearly linear: an ok op can only be placed
  where the model's revision is the one it reported; an op that changes
  nothing and answers as the state is now is placed at once (a forced
  move: moving a read earlier within its window breaks no order); an
  unknown op is only placed where it changes the state and no ok op still
  needs the current revision (a gap), and an unknown op whose put some ok
  op read only at the revision the read showed (values are unique).
- Every put writes a value no other put writes (both workloads make them
  so); a read then names the write it saw, and the record that write made
  (create revision, mod revision, version): a put must make it. A write of
  a key that a candidate reads as last written at or before the current
  revision is pruned (the read comes later).
- ``foreign``: the call times of writes outside the checked keys that share
  the store's revision (paxoskv.v1 writes): each may bump the revision once,
  at any time after its call, or never. They are interchangeable, so the
  search only counts how many it used. Where the revisions they took are
  known (``foreign_revisions``), exactly those go to them.
- Leases (``TxnOp.lease``, a ``LeaseCall``): ``grant`` makes lease ``id``
  live (no revision; etcd's ``lease already exists`` for a live id); a
  ``Put`` naming a lease attaches its key to it, a ``Put`` without one or
  a ``Delete`` detaches it; a ``Put`` (or a Txn branch with one) naming a
  lease that is not live fails whole with ``lease-not-found`` (etcd's
  ``requested lease not found``) and changes nothing; ``revoke`` deletes
  every key attached, in ONE revision (none if it has no keys), and ends
  the lease; ``keepalive`` and ``ttl`` change nothing and answer whether
  the lease is live (gone: ``lease-not-found``; their header revision is
  not checked: the leader serves them from memory).
- Expiry is a revoke nobody called: the checker adds one ``expire`` per
  granted id, an ``unknown`` op called at the grant's call, so it takes
  effect once somewhere after it, or never. The ok ops that saw the lease
  gone (a TimeToLive of TTL -1, a keep-alive of TTL 0, ``lease-not-found``)
  complete it: they can only be placed after it, so its place is searched
  between the grant and the first observation; every keep-alive answered
  alive is placed before it.
- Budgets (time, steps) give verdict ``unknown``, never a guess; a violation
  is reported only when every linearization was tried.
"""

from __future__ import annotations

import bisect
import math
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from paxoskv.check.history import HistoryError, distinct_ops

__all__ = [
    "LEASE_KINDS",
    "LEASE_NOT_FOUND",
    "Compare",
    "Delete",
    "LeaseCall",
    "Put",
    "Range",
    "TxnCheckResult",
    "TxnModel",
    "TxnOp",
    "check_txn_history",
    "txn_op_from_json",
]

TARGETS = ("value", "version", "create", "mod")
RESULTS = ("=", "!=", ">", "<")
OUTCOMES = ("ok", "fail", "unknown")
COMPACTED, FUTURE = "compacted", "future"
LEASE_NOT_FOUND, LEASE_EXISTS = "lease-not-found", "lease-exists"
ERRORS = (COMPACTED, FUTURE, LEASE_NOT_FOUND, LEASE_EXISTS)
GRANT, REVOKE, KEEPALIVE, TTL, EXPIRE = "grant", "revoke", "keepalive", "ttl", "expire"
LEASE_KINDS = (GRANT, REVOKE, KEEPALIVE, TTL, EXPIRE)
_OBSERVE = (KEEPALIVE, TTL)  # change nothing; no header revision checked
_LEASE_MUTATES = (GRANT, REVOKE, EXPIRE)
_CHECK_EVERY_STEPS = 1024
_FOREIGN = "\x00foreign"  # the model's key for a foreign write's revision
_FOREIGN_OP = -1  # the candidate "one foreign write, here"
_COMPACT = "\x00compact"  # in a change set: the new compaction revision (no revision of its own)
# Lease state, as model keys that take no revision: a live lease ("", 0, 0, ttl)
# and a key's attachment (str(lease id), 0, 0, 0).
_META = "\x01"
_LEASE = _META + "lease/"
_ATTACH = _META + "attach/"

Record = tuple[str, int, int, int]  # value, create revision, mod revision, version


@dataclass(frozen=True, slots=True)
class Compare:
    """etcd's Compare on one key: ``target`` ``result`` ``operand``."""

    key: str
    target: str
    result: str
    operand: str | int

    def __post_init__(self) -> None:
        if self.target not in TARGETS or self.result not in RESULTS:
            raise HistoryError(f"bad compare {self!r}")
        if (self.target == "value") != isinstance(self.operand, str):
            raise HistoryError(f"compare {self!r}: a value compare takes a string, the others an int")

    def holds(self, rec: Record | None) -> bool:
        """etcd's applyCompare on one key: a missing key fails every value
        compare and compares as the zero KeyValue otherwise."""
        if rec is None:
            if self.target == "value":
                return False
            mine: str | int = 0
        else:
            mine = {"value": rec[0], "create": rec[1], "mod": rec[2], "version": rec[3]}[self.target]
        theirs = self.operand
        c = (mine > theirs) - (mine < theirs)  # type: ignore[operator]
        return {"=": c == 0, "!=": c != 0, ">": c > 0, "<": c < 0}[self.result]


@dataclass(frozen=True, slots=True)
class Put:
    key: str
    value: str
    lease: int = 0  # > 0: attach the key to this lease; 0: detach it


@dataclass(frozen=True, slots=True)
class LeaseCall:
    """A lease call (``kind`` one of ``LEASE_KINDS``) on lease ``id``."""

    kind: str
    id: int
    ttl: int = 0  # a grant's requested TTL (seconds; not modelled: expiry is searched)

    def __post_init__(self) -> None:
        if self.kind not in LEASE_KINDS or not isinstance(self.id, int) or self.id <= 0:
            raise HistoryError(f"bad lease call {self!r}")


@dataclass(frozen=True, slots=True)
class Delete:
    key: str


@dataclass(frozen=True, slots=True)
class Range:
    key: str
    revision: int = 0  # 0: the current state


RequestOp = Put | Delete | Range


@dataclass(frozen=True, slots=True, kw_only=True)
class TxnOp:
    """One etcd call as recorded. ``reads``: the answers of the Range ops
    of the branch that ran, in order."""

    id: int
    client: str
    call: float
    ret: float | None
    outcome: str
    compares: tuple[Compare, ...] = ()
    success: tuple[RequestOp, ...] = ()
    failure: tuple[RequestOp, ...] = ()
    compact: int = 0  # > 0: a Compaction to this revision (no compares, no ops)
    succeeded: bool | None = None
    revision: int | None = None
    reads: tuple[Record | None, ...] | None = None
    error: str | None = None  # an ok op answered with one of ``ERRORS`` (it changed nothing)
    lease: LeaseCall | None = None  # a lease call (no compares, no ops)

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise HistoryError(f"op {self.id}: outcome must be one of {OUTCOMES}")
        if not math.isfinite(self.call):
            raise HistoryError(f"op {self.id}: call must be finite")
        if self.lease is not None:
            if self.compares or self.success or self.failure or self.compact:
                raise HistoryError(f"op {self.id}: a lease call has no compares, no ops, no compaction")
            if self.lease.kind == EXPIRE and self.outcome != "unknown":
                raise HistoryError(f"op {self.id}: an expiry is never observed in flight: it is unknown")
        observes = self.lease is not None and self.lease.kind in _OBSERVE
        if self.outcome == "ok":
            if self.ret is None or self.ret < self.call:
                raise HistoryError(f"op {self.id}: an ok op needs a return time not before its call")
            if self.succeeded is None or self.reads is None or (
                    self.revision is None and self.error is None and not observes):
                raise HistoryError(f"op {self.id}: an ok op needs succeeded, revision and reads "
                                   f"(an error answer may lack the revision)")
            branch = self.success if self.succeeded else self.failure
            if self.error is not None:
                if self.error not in ERRORS or self.reads:
                    raise HistoryError(f"op {self.id}: an error is one of {ERRORS}, with no reads")
            elif len(self.reads) != sum(isinstance(o, Range) for o in branch):
                raise HistoryError(f"op {self.id}: one read per Range of the branch that ran")
        else:
            object.__setattr__(self, "succeeded", None)
            object.__setattr__(self, "revision", None)
            object.__setattr__(self, "reads", None)
            object.__setattr__(self, "error", None)
        if self.compact and (self.compares or self.success or self.failure):
            raise HistoryError(f"op {self.id}: a compaction has no compares and no ops")

    @property
    def keys(self) -> set[str]:
        return {c.key for c in self.compares} | {o.key for o in (*self.success, *self.failure)}

    @property
    def leases(self) -> set[int]:
        """The lease ids this op names."""
        out = {o.lease for o in (*self.success, *self.failure) if isinstance(o, Put) and o.lease}
        return out | ({self.lease.id} if self.lease is not None else set())

    def describe(self) -> str:
        def op(o: RequestOp) -> str:
            if isinstance(o, Put):
                return f"put {o.key}={o.value!r}" + (f" lease={o.lease:x}" if o.lease else "")
            if isinstance(o, Delete):
                return f"del {o.key}"
            return f"range {o.key}" + (f"@{o.revision}" if o.revision else "")

        if self.lease is not None:
            text = f"#{self.id} {self.client} lease-{self.lease.kind}({self.lease.id:x}"
            text += f", ttl={self.lease.ttl}" if self.lease.kind == GRANT else ""
            ret = "?" if self.ret is None or self.outcome != "ok" else f"{self.ret:.6f}".rstrip("0").rstrip(".")
            text += f") [{self.call:.6f}".rstrip("0").rstrip(".") + f", {ret}] {self.outcome}"
            if self.outcome == "ok":
                text += f" -> {self.error or 'done'} rev={self.revision}"
            return text
        if self.compact:
            text = f"#{self.id} {self.client} compact({self.compact}"
            ret = "?" if self.ret is None or self.outcome != "ok" else f"{self.ret:.6f}".rstrip("0").rstrip(".")
            text += f") [{self.call:.6f}".rstrip("0").rstrip(".") + f", {ret}] {self.outcome}"
            if self.outcome == "ok":
                text += f" -> {self.error or 'done'} rev={self.revision}"
            return text
        text = f"#{self.id} {self.client} txn("
        if self.compares:
            text += " & ".join(f"{c.target}({c.key}){c.result}{c.operand!r}" for c in self.compares) + " ? "
        text += ", ".join(op(o) for o in self.success)
        if self.failure or self.compares:
            text += " : " + ", ".join(op(o) for o in self.failure)
        ret = "?" if self.ret is None or self.outcome != "ok" else f"{self.ret:.6f}".rstrip("0").rstrip(".")
        text += f") [{self.call:.6f}".rstrip("0").rstrip(".") + f", {ret}] {self.outcome}"
        if self.outcome == "ok":
            text += f" -> {'success' if self.succeeded else 'failure'} rev={self.revision}"
            if self.reads:
                text += f" reads={list(self.reads)}"
            if self.error:
                text += f" error={self.error}"
        return text

    def to_json(self) -> dict[str, Any]:
        def op(o: RequestOp) -> list[Any]:
            if isinstance(o, Put):
                return ["put", o.key, o.value, *([o.lease] if o.lease else [])]
            if isinstance(o, Delete):
                return ["delete", o.key]
            return ["range", o.key, o.revision]

        out: dict[str, Any] = {
            "id": self.id, "client": self.client, "call": self.call, "return": self.ret,
            "outcome": self.outcome,
            "compares": [[c.key, c.target, c.result, c.operand] for c in self.compares],
            "success": [op(o) for o in self.success], "failure": [op(o) for o in self.failure],
            "compact": self.compact,
        }
        if self.lease is not None:
            out["lease"] = [self.lease.kind, self.lease.id, self.lease.ttl]
        if self.outcome == "ok":
            out["output"] = {"succeeded": self.succeeded, "revision": self.revision, "error": self.error,
                             "reads": [None if r is None else list(r) for r in self.reads or ()]}
        return out


def _op_from_json(x: Any) -> RequestOp:
    if not isinstance(x, list) or not x:
        raise HistoryError(f"bad request op {x!r}")
    if x[0] == "put" and len(x) == 3:
        return Put(str(x[1]), str(x[2]))
    if x[0] == "put" and len(x) == 4 and isinstance(x[3], int) and x[3] > 0:
        return Put(str(x[1]), str(x[2]), x[3])
    if x[0] == "delete" and len(x) == 2:
        return Delete(str(x[1]))
    if x[0] == "range" and len(x) == 3 and isinstance(x[2], int):
        return Range(str(x[1]), x[2])
    raise HistoryError(f"bad request op {x!r}")


def txn_op_from_json(obj: Any) -> TxnOp:
    """The inverse of ``TxnOp.to_json``; raises ``HistoryError``."""
    try:
        out = obj.get("output") or {}
        reads = out.get("reads")
        return TxnOp(
            id=obj["id"], client=obj["client"], call=obj["call"], ret=obj.get("return"), outcome=obj["outcome"],
            compares=tuple(Compare(*c) for c in obj.get("compares", ())),
            success=tuple(_op_from_json(x) for x in obj.get("success", ())),
            failure=tuple(_op_from_json(x) for x in obj.get("failure", ())),
            compact=obj.get("compact", 0), error=out.get("error"),
            lease=None if obj.get("lease") is None else LeaseCall(*obj["lease"]),
            succeeded=out.get("succeeded"), revision=out.get("revision"),
            reads=None if reads is None else tuple(None if r is None else tuple(r) for r in reads),
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise HistoryError(f"bad etcd operation {obj!r:.200}: {exc}") from None


class TxnModel:
    """etcd's MVCC store, as the checker (and the simulator's reference)
    replays it: apply a Txn or a Compaction, undo the last one."""

    __slots__ = ("revision", "compact_revision", "kv", "hist", "_undo")

    def __init__(self) -> None:
        self.revision = 1
        self.compact_revision = 0
        self.kv: dict[str, Record] = {}
        self.hist: dict[str, list[tuple[int, Record | None]]] = {}  # key -> (revision, record) by revision
        self._undo: list[tuple[int, int, dict[str, Record | None]]] = []

    def at(self, key: str, revision: int) -> Record | None:
        """The key at ``revision`` (<= the current one)."""
        h = self.hist.get(key)
        if not h:
            return None
        i = bisect.bisect_right(h, revision, key=lambda e: e[0])
        return h[i - 1][1] if i else None

    def outcome(self, op: TxnOp) -> tuple[bool, dict[str, Record | None], tuple[Record | None, ...], str | None]:
        """(succeeded, changes, reads, error) of ``op`` if applied now:
        ``changes`` maps each key it changes to its new record (None:
        deleted), empty when it mutates nothing; ``error`` is etcd's refusal
        of the whole call (a Range or Compaction below the compaction
        revision, or above the current one), which changes nothing."""
        if op.lease is not None:
            return self._lease_outcome(op.lease)
        if op.compact:
            if op.compact <= self.compact_revision:
                return True, {}, (), COMPACTED
            if op.compact > self.revision:
                return True, {}, (), FUTURE
            return True, {_COMPACT: ("", 0, op.compact, 0)}, (), None
        ok = all(c.holds(self.kv.get(c.key)) for c in op.compares)
        branch = op.success if ok else op.failure
        if any(isinstance(o, Put) and o.lease and not self.live(o.lease) for o in branch):
            return ok, {}, (), LEASE_NOT_FOUND  # etcd checks the branch's leases before its ranges
        new = self.revision + 1
        view: dict[str, Record | None] = {}
        reads: list[Record | None] = []

        def get(key: str) -> Record | None:
            return view[key] if key in view else self.kv.get(key)

        for o in branch:
            cur = get(o.key)
            if isinstance(o, Put):
                view[o.key] = (o.value, new, new, 1) if cur is None else (o.value, cur[1], new, cur[3] + 1)
                if o.lease:
                    view[_ATTACH + o.key] = (str(o.lease), 0, 0, 0)
                elif get(_ATTACH + o.key) is not None:
                    view[_ATTACH + o.key] = None
            elif isinstance(o, Delete):
                if cur is not None:
                    view[o.key] = None
                    if get(_ATTACH + o.key) is not None:
                        view[_ATTACH + o.key] = None
            elif o.revision:
                if o.revision > self.revision:
                    return ok, {}, (), FUTURE
                if o.revision < self.compact_revision:
                    return ok, {}, (), COMPACTED
                reads.append(self.at(o.key, o.revision))
            else:
                reads.append(cur)
        return ok, view, tuple(reads), None

    def live(self, lease_id: int) -> bool:
        return _LEASE + str(lease_id) in self.kv

    def lease_of(self, key: str) -> int:
        """The lease ``key`` is attached to (0: none)."""
        rec = self.kv.get(_ATTACH + key)
        return 0 if rec is None else int(rec[0])

    def attached(self, lease_id: int) -> list[str]:
        """The keys attached to ``lease_id``, in key order."""
        mine = str(lease_id)
        return sorted(k[len(_ATTACH):] for k, rec in self.kv.items() if k.startswith(_ATTACH) and rec[0] == mine)

    def _lease_outcome(self, call: LeaseCall) -> tuple[bool, dict[str, Record | None], tuple[()], str | None]:
        live = self.live(call.id)
        if call.kind == GRANT:
            if live:
                return True, {}, (), LEASE_EXISTS
            return True, {_LEASE + str(call.id): ("", 0, 0, call.ttl)}, (), None
        if not live:
            return True, {}, (), LEASE_NOT_FOUND
        if call.kind in _OBSERVE:
            return True, {}, (), None
        changes: dict[str, Record | None] = {_LEASE + str(call.id): None}
        for key in self.attached(call.id):  # revoke or expiry: all its keys, in one revision
            changes[key] = None
            changes[_ATTACH + key] = None
        return True, changes, (), None

    def apply(self, op: TxnOp) -> tuple[bool, int, tuple[Record | None, ...], str | None]:
        """Apply ``op``; returns (succeeded, header revision, reads, error)."""
        ok, changes, reads, error = self.outcome(op)
        self.apply_changes(changes)
        return ok, self.revision, reads, error

    def apply_changes(self, changes: dict[str, Record | None]) -> None:
        """One revision more if ``changes`` writes a key (``undo`` takes it back)."""
        before: dict[str, Record | None] = {}
        compact = self.compact_revision
        writes = bumps(changes)
        new = self.revision + writes
        for key, rec in changes.items():
            if key == _COMPACT:
                continue
            before[key] = self.kv.get(key)
            if rec is None:
                self.kv.pop(key, None)  # a key put and deleted by one command may be absent before
            else:
                self.kv[key] = rec
            self.hist.setdefault(key, []).append((new, rec))  # lease state: at the revision it is seen in
        if _COMPACT in changes:
            self.compact_revision = changes[_COMPACT][2]  # type: ignore[index]
        self._undo.append((self.revision, compact, before))
        if writes:
            self.revision += 1

    def undo(self) -> None:
        rev, compact, before = self._undo.pop()
        for key, prev in before.items():
            if prev is None:
                self.kv.pop(key, None)
            else:
                self.kv[key] = prev
            self.hist[key].pop()
        self.revision = rev
        self.compact_revision = compact


def bumps(changes: dict[str, Record | None]) -> bool:
    """Whether a change set takes a revision (a compaction or lease state alone does not)."""
    return any(k != _COMPACT and not k.startswith(_META) for k in changes)


# ---- the search ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class TxnCheckResult:
    verdict: str  # ok | violation | unknown
    ops_total: int
    ops_checked: int  # without fail ops and unknown ops that can change nothing
    steps: int
    elapsed_s: float
    explanation: str = ""
    failing_op: TxnOp | None = None
    budget_reason: str = ""

    @property
    def ok(self) -> bool:
        return self.verdict == "ok"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "verdict": self.verdict, "ops_total": self.ops_total, "ops_checked": self.ops_checked,
            "steps": self.steps, "elapsed_s": round(self.elapsed_s, 6), "explanation": self.explanation,
            "budget_reason": self.budget_reason,
        }
        if self.failing_op is not None:
            out["failing_op"] = self.failing_op.to_json()
        return out


def expiries(ops: Sequence[TxnOp]) -> list[TxnOp]:
    """One ``expire`` per grant in ``ops`` that may have happened (ok or
    unknown), with ids after theirs: an unknown op called at the grant's
    call, which the ok ops that saw the lease gone complete. A history that
    already holds expiries (the simulator knows them) gets none."""
    if any(o.lease is not None and o.lease.kind == EXPIRE for o in ops):
        return []
    grants = sorted((o for o in ops if o.lease is not None and o.lease.kind == GRANT and o.outcome != "fail"),
                    key=lambda o: (o.call, o.id))
    next_id = max((o.id for o in ops), default=-1) + 1
    return [TxnOp(id=next_id + k, client="expiry", call=g.call, ret=None, outcome="unknown",
                  lease=LeaseCall(EXPIRE, g.lease.id))  # type: ignore[union-attr]
            for k, g in enumerate(grants)]


def lease_ends_once(ops: Sequence[TxnOp]) -> tuple[TxnOp, str] | None:
    """A lease is live over one interval: if an ok op saw lease ``L`` live
    (a grant, a put with it, a keep-alive or TimeToLive answered live, a
    revoke that found it, a current read of a value put with it: a key holds
    its last put's lease until a write or its lease's end deletes it), then a
    later one saw it gone (``lease-not-found``, or an ok revoke's end), no op
    called after that may see it live. (failing op, explanation) or None.
    Sound for ids granted at most once; a quick test the search would
    need every order of the unknown ops for."""
    grants = Counter(o.lease.id for o in ops if o.lease is not None and o.lease.kind == GRANT)
    lease_of = {x.value: x.lease for o in ops for x in (*o.success, *o.failure) if isinstance(x, Put) and x.lease}
    live: dict[int, list[TxnOp]] = {}
    gone: list[tuple[int, TxnOp]] = []
    for o in ops:
        if o.outcome != "ok":
            continue
        if o.lease is not None:
            if o.error == LEASE_NOT_FOUND:
                gone.append((o.lease.id, o))
            elif o.error is None:
                live.setdefault(o.lease.id, []).append(o)
                if o.lease.kind == REVOKE:
                    gone.append((o.lease.id, o))
            continue
        branch = o.success if o.succeeded else o.failure
        named = {x.lease for x in branch if isinstance(x, Put) and x.lease}
        if o.error == LEASE_NOT_FOUND and len(named) == 1:
            gone.append((named.pop(), o))
            continue
        if o.error is not None:
            continue
        seen = set(named)
        ranges = [x for x in branch if isinstance(x, Range)]
        for x, rec in zip(ranges, o.reads or ()):
            if rec is not None and not x.revision and rec[0] in lease_of:
                seen.add(lease_of[rec[0]])
        for lease_id in seen:
            live.setdefault(lease_id, []).append(o)
    first_ret = {lid: min(ls, key=lambda o: o.ret) for lid, ls in live.items()}  # type: ignore[arg-type, return-value]
    last_call = {lid: max(ls, key=lambda o: o.call) for lid, ls in live.items()}
    for lease_id, g in sorted(gone, key=lambda e: e[1].call):
        if grants[lease_id] > 1 or lease_id not in live:
            continue
        before, after = first_ret[lease_id], last_call[lease_id]
        ended = g.lease is not None and g.lease.kind == REVOKE and g.error is None
        if (ended or before.ret < g.call) and after.call > g.ret:  # type: ignore[operator]
            why = (f"not linearizable: cannot linearize {after.describe()}\n"
                   f"  lease {lease_id:x} was live at {(g if ended else before).describe()},\n"
                   f"  {'ended by' if ended else 'gone at'} {g.describe()},\n"
                   f"  and this op, called after that, saw it live (a lease ends once; a key put with it "
                   f"goes with it)")
            return after, why
    return None


def _may_mutate(branch: Sequence[RequestOp]) -> bool:
    return any(not isinstance(o, Range) for o in branch)


@dataclass(slots=True)
class _Frame:
    cands: list[int]
    pos: int = 0
    entered_by: int = -2  # the op applied to reach this node (-2: the root; _FOREIGN_OP: a foreign write)
    ok_ptr: int = 0  # first not linearized ok op, by return
    call_ptr: int = 0  # first not linearized ok op, by call
    place_ptr: int = 0  # first not linearized ok op, by place_max
    stale: frozenset[str] = frozenset()  # keys a candidate reads as last written at or before this revision


def check_txn_history(
    ops: Iterable[TxnOp],
    *,
    foreign: Iterable[float] = (),
    foreign_revisions: Iterable[int] | None = None,
    time_budget_s: float | None = 60.0,
    step_budget: int | None = None,
) -> TxnCheckResult:
    """Decide whether an etcd-API history is linearizable (see the module
    rules); ``foreign``: call times of writes outside it that may each take
    one revision; or, when known (the simulator knows the agreed log),
    ``foreign_revisions``: exactly the revisions writes outside it took."""
    start = time.monotonic()
    foreign_calls = sorted(foreign)
    taken = None if foreign_revisions is None else frozenset(foreign_revisions)
    all_ops = distinct_ops(ops, TxnOp, "a TxnOp")
    all_ops += expiries(all_ops)
    work = [o for o in all_ops if o.outcome == "ok" or (
        o.outcome == "unknown" and (o.compact or _may_mutate(o.success) or _may_mutate(o.failure)
                                    or (o.lease is not None and o.lease.kind in _LEASE_MUTATES)))]
    n = len(work)
    ok_idx = [i for i, o in enumerate(work) if o.outcome == "ok"]
    unknown_idx = [i for i, o in enumerate(work) if o.outcome != "ok"]
    by_ret = sorted(ok_idx, key=lambda i: (work[i].ret, work[i].id))
    by_call = sorted(ok_idx, key=lambda i: (work[i].call, work[i].id))
    unknown_idx.sort(key=lambda i: (work[i].call, work[i].id))
    # The latest model revision an ok op can still be placed at.
    place_max: list[float] = [0] * n
    for i in ok_idx:
        o = work[i]
        branch = o.success if o.succeeded else o.failure
        surely_mutates = o.error is None and any(isinstance(x, Put) for x in branch)
        if o.revision is None:  # an error answer without a header: anywhere (it changed nothing)
            place_max[i] = math.inf  # type: ignore[call-overload]
        else:
            place_max[i] = o.revision - 1 if surely_mutates else o.revision
    by_place = sorted(ok_idx, key=lambda i: place_max[i])
    # Values are unique, and a read shows the revision its value was written
    # at: an unknown op whose put was read can only take that revision, and
    # no other write can take it.
    written_at: dict[str, set[int]] = {}
    for i in ok_idx:
        for rec in work[i].reads or ():
            if rec is not None:
                written_at.setdefault(rec[0], set()).add(rec[2])
    # A value's record (create, mod, version) is fixed by the put that wrote
    # it: a put must make the record a read showed of its value.
    written_as: dict[str, Record] = {}
    for i in ok_idx:
        for rec in work[i].reads or ():
            if rec is not None:
                written_as.setdefault(rec[0], rec)
    pinned: dict[int, list[int]] = {}  # revision -> unknown ops that wrote there
    pin = [0] * n
    for i in unknown_idx:
        o = work[i]
        revs = {m for x in (*o.success, *o.failure) if isinstance(x, Put) for m in written_at.get(x.value, ())}
        if len(revs) == 1:
            pin[i] = revs.pop()
            pinned.setdefault(pin[i], []).append(i)
        elif revs:
            pin[i] = -1  # read at two revisions: it cannot be placed (one write, one revision)
    deadline = None if time_budget_s is None else start + time_budget_s

    def result(verdict: str, steps: int, **kw: Any) -> TxnCheckResult:
        return TxnCheckResult(verdict=verdict, ops_total=len(all_ops), ops_checked=n, steps=steps,
                              elapsed_s=time.monotonic() - start, **kw)

    if not ok_idx:
        return result("ok", 0)
    ended = lease_ends_once(work)
    if ended is not None:
        return result("violation", 0, failing_op=ended[0], explanation=ended[1])
    model = TxnModel()
    done = [False] * n
    mask = 0
    ok_left = len(ok_idx)
    digest = 0
    cache: set[tuple[int, int]] = set()
    foreign_used = 0
    steps = 0
    deepest = -1
    deepest_info: tuple[int, int, dict[str, Record]] | None = None  # (stuck op, revision, state)

    def candidates(frame: _Frame) -> list[int] | None:
        nonlocal deepest, deepest_info
        while frame.ok_ptr < len(by_ret) and done[by_ret[frame.ok_ptr]]:
            frame.ok_ptr += 1
        while frame.call_ptr < len(by_call) and done[by_call[frame.call_ptr]]:
            frame.call_ptr += 1
        first = by_ret[frame.ok_ptr]
        linearized = len(ok_idx) - ok_left
        if linearized > deepest:
            deepest = linearized
            deepest_info = (first, model.revision, dict(model.kv))
        r = model.revision
        while frame.place_ptr < len(by_place) and done[by_place[frame.place_ptr]]:
            frame.place_ptr += 1
        if frame.place_ptr < len(by_place) and place_max[by_place[frame.place_ptr]] < r:
            return None  # an ok op can no longer be placed at its revision
        min_ret = work[first].ret
        out = []
        j = frame.call_ptr
        while j < len(by_call) and work[by_call[j]].call <= min_ret:  # type: ignore[operator]
            i = by_call[j]
            if not done[i] and work[i].revision in (r, r + 1, None):
                o = work[i]
                if o.revision in (r, None):
                    succeeded, changes, reads, error = model.outcome(o)
                    if not changes and succeeded == o.succeeded and reads == o.reads and error == o.error:
                        return [i]  # forced: it changes nothing and reads the state as it is
                out.append(i)
            j += 1
        out.sort(key=lambda i: (work[i].revision or 0, work[i].ret))
        # A candidate (it comes after this point) that reads a key as last
        # written at revision <= r forbids writing or deleting that key now.
        stale = set()
        for i in (first, *out):
            o = work[i]
            if o.error is None and o.reads:
                ranges = [x for x in (o.success if o.succeeded else o.failure) if isinstance(x, Range)]
                stale.update(x.key for x, rec in zip(ranges, o.reads) if rec is not None and not x.revision and rec[2] <= r)
        frame.stale = frozenset(stale)
        pending = [i for i in unknown_idx if not done[i] and work[i].call <= min_ret]  # type: ignore[operator]
        # An unknown lease op that takes no revision (a grant; a revoke or
        # expiry of a lease with no keys) changes only what ops naming its
        # lease see: it waits until one of those is a candidate here.
        named = {lid for i in out for lid in work[i].leases}
        named.update(lid for i in pending if work[i].lease is None for lid in work[i].leases)

        def wanted(i: int) -> bool:
            o = work[i]
            if o.lease is not None:
                lid = o.lease.id
                return lid in named or (o.lease.kind != GRANT and model.live(lid) and bool(model.attached(lid)))
            if o.leases and not o.compares:  # a put naming a lease gone would change nothing
                return all(model.live(lid) for lid in o.leases)
            return True

        def no_revision() -> list[int]:
            """The unknown ops that could happen here without taking a revision:
            compactions, and lease ops of no keys whose lease a candidate names."""
            return [i for i in pending if work[i].compact or (
                work[i].lease is not None and work[i].lease.id in named  # type: ignore[union-attr]
                and not bumps(model.outcome(work[i])[1]))]

        if r + 1 in pinned:  # an unknown op's write was read at r + 1: it, or an ok op, goes there
            out.extend(i for i in pinned[r + 1] if not done[i] and work[i].call <= min_ret)  # type: ignore[operator]
            out.extend(no_revision())
            return out
        if taken is not None and r + 1 in taken and not out:
            return [_FOREIGN_OP]  # forced: nothing else can happen at this revision
        if frame.place_ptr < len(by_place) and place_max[by_place[frame.place_ptr]] == r:
            # An ok op must be placed at this revision: no other write may come
            # first (what takes no revision may).
            out.extend(no_revision())
            return out
        if taken is not None:
            if r + 1 in taken:  # the next revision is a foreign write's, and only its
                out.append(_FOREIGN_OP)
                out.extend(no_revision())
                return out
        elif bisect.bisect_right(foreign_calls, min_ret) > foreign_used:  # type: ignore[arg-type]
            out.append(_FOREIGN_OP)
        out.extend(i for i in pending if not pin[i] and wanted(i))
        return out

    root = _Frame(cands=[], entered_by=-2)
    cands = candidates(root)
    if cands is None:
        cands = []
    root.cands = cands
    stack = [root]
    digests = [0]
    while stack:
        frame = stack[-1]
        if frame.pos >= len(frame.cands):
            stack.pop()
            if frame.entered_by != -2:
                i = frame.entered_by
                model.undo()
                digests.pop()
                digest = digests[-1]
                if i == _FOREIGN_OP:
                    foreign_used -= 1
                else:
                    done[i] = False
                    mask ^= 1 << i
                    ok_left += work[i].outcome == "ok"
            continue
        i = frame.cands[frame.pos]
        frame.pos += 1
        steps += 1
        if step_budget is not None and steps > step_budget:
            return result("unknown", steps, budget_reason="steps", explanation=f"step budget exhausted ({step_budget})")
        if deadline is not None and steps % _CHECK_EVERY_STEPS == 0 and time.monotonic() >= deadline:
            return result("unknown", steps, budget_reason="time",
                          explanation=f"time budget exhausted after {steps} steps")
        if i == _FOREIGN_OP:
            new = model.revision + 1
            changes = {_FOREIGN: ("", new, new, foreign_used + 1)}
            new_digest = hash((digest, new))
            if (mask, new_digest) in cache:
                continue
            cache.add((mask, new_digest))
            model.apply_changes(changes)
            foreign_used += 1
            digest = new_digest
            digests.append(digest)
            child = _Frame(cands=[], entered_by=i, ok_ptr=frame.ok_ptr, call_ptr=frame.call_ptr,
                           place_ptr=frame.place_ptr)
            child.cands = candidates(child) or []
            stack.append(child)
            continue
        o = work[i]
        succeeded, changes, reads, error = model.outcome(o)
        if frame.stale and any(k in frame.stale for k in changes):
            continue  # a later read sees the key as it is now
        if any(rec is not None and not k.startswith(_META) and written_as.get(rec[0], rec) != rec
               for k, rec in changes.items()):
            continue  # a read saw this value with another create revision or version
        if o.outcome == "ok":
            if error != o.error or succeeded != o.succeeded or reads != o.reads:
                continue
            if o.revision is not None and model.revision + bumps(changes) != o.revision:
                continue
        elif not changes:
            continue  # an unknown op that would change nothing here is as if it never ran
        new_digest = hash((digest, tuple(sorted(changes.items())))) if changes else digest
        new_mask = mask | (1 << i)
        if (new_mask, new_digest) in cache:
            continue
        cache.add((new_mask, new_digest))
        model.apply_changes(changes)
        done[i] = True
        mask = new_mask
        digest = new_digest
        digests.append(digest)
        ok_left -= o.outcome == "ok"
        child = _Frame(cands=[], entered_by=i, ok_ptr=frame.ok_ptr, call_ptr=frame.call_ptr,
                       place_ptr=frame.place_ptr)
        if ok_left == 0:
            return result("ok", steps)
        child.cands = candidates(child) or []
        stack.append(child)
    stuck, rev, kv = deepest_info  # type: ignore[misc]
    x = work[stuck]

    def attached(k: str) -> str:
        rec = kv.get(_ATTACH + k)
        return "" if rec is None else f" lease {int(rec[0]):x}"

    state = ", ".join([f"{k}={kv[k]!r}{attached(k)}" if k in kv else f"{k} absent" for k in sorted(x.keys)]
                      + [f"lease {lid:x} {'live' if _LEASE + str(lid) in kv else 'gone'}" for lid in sorted(x.leases)])
    explanation = (
        f"not linearizable: cannot linearize {x.describe()}\n"
        f"  every order of the operations before it was tried; the furthest got to revision {rev} "
        f"with {deepest} of {len(ok_idx)} ok ops placed, and then: {state} (value, create, mod, version)"
    )
    return result("violation", steps, failing_op=x, explanation=explanation)
