"""The simulator's invariant checkers.

Rules:

- ``AppliedLog`` watches every application of a slot on every node, across
  crashes (a node that re-applies after a restart is checked again), and is
  fed as it happens, so a violation is caught at the moment it occurs:
  * agreement: no slot is ever applied with two different values, on any two
    nodes or on one node in two lives;
  * order: within one life, a node applies slots contiguously, each exactly
    once, starting right after the applied index it restarted from.
  Together these make every node's applied sequence a prefix of every other's;
  ``check_prefixes`` checks that directly at the end as well.
- ``check_acknowledged_writes`` checks the final state against the history
  directly (the linearizability checker implies it; this one is independent
  and cheap): for every key, the final value must come from a write that no
  acknowledged write on that key started after the end of; a write that failed
  must never be visible; an acknowledged write is lost if nothing that could
  have overwritten it explains the final value.
- ``check_convergence``: at the end of the liveness phase all nodes have the
  same applied index and the same key-value map.
- ``reference_state`` replays the agreed log through a model of the state
  machine written independently of :mod:`paxoskv.kv` (a dict and the last
  sequence per client), so a bug in the real state machine's apply or
  exactly-once sessions shows as a difference from it. It covers the etcd
  Txns the simulator sends (v1 CASes on a key's existence) and refuses any
  other etcd command (NotImplementedError) rather than guess.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from paxoskv.etcdpb import rpc_pb2
from paxoskv.kv.commands import NODE_ASSIGNED_PREFIX, Limits
from paxoskv.paxos.types import Value
from paxoskv.v1 import kv_pb2
from paxoskv.sim.history import DELETE, FAIL, OK, PUT, Operation


@dataclass(frozen=True, slots=True)
class Violation:
    kind: str  # agreement, order, prefix, acknowledged-write, linearizability, ...
    detail: str
    time_us: int

    def __str__(self) -> str:
        return f"[{self.time_us / 1000:.3f} ms] {self.kind}: {self.detail}"


class AppliedLog:
    """Every (slot -> value) any node ever applied; checks agreement and order."""

    __slots__ = ("chosen", "by_node", "applications")

    def __init__(self, node_ids: Sequence[int]) -> None:
        self.chosen: dict[int, Value] = {}
        self.by_node: dict[int, dict[int, Value]] = {n: {} for n in node_ids}
        self.applications = 0

    def record(self, node_id: int, slot: int, value: Value) -> str | None:
        """Note that ``node_id`` applied ``value`` at ``slot``; a problem or None."""
        self.applications += 1
        first = self.chosen.setdefault(slot, value)
        if first != value:
            return f"slot {slot} applied as {_short(first)} before, now {_short(value)} on node {node_id}"
        mine = self.by_node[node_id]
        earlier = mine.setdefault(slot, value)
        if earlier != value:  # unreachable given the global check; kept as a second guard
            return f"node {node_id} re-applied slot {slot} with a different value"
        return None


def check_prefixes(
    by_node: Mapping[int, Mapping[int, Value]], start_by_node: Mapping[int, int] | None = None
) -> list[str]:
    """Each node's applied slots form a contiguous run, and any two nodes agree on
    the slots both applied, so the shorter sequence is a prefix of the longer.

    ``start_by_node`` gives, per node, the slot below which it never applied
    one by one (it installed a snapshot there); default 0.
    """
    problems: list[str] = []
    seqs: dict[int, list[Value]] = {}
    for node, slots in by_node.items():
        start = (start_by_node or {}).get(node, 0)
        top = max(slots, default=start)
        missing = [s for s in range(start + 1, top + 1) if s not in slots]
        if missing:
            problems.append(f"node {node} has holes in its applied slots: {missing[:10]}")
        seqs[node] = [slots.get(s, ()) for s in range(1, top + 1)]
    nodes = sorted(seqs)
    for i, a in enumerate(nodes):
        for b in nodes[i + 1 :]:
            sa, sb = seqs[a], seqs[b]
            lo_a = (start_by_node or {}).get(a, 0)
            lo_b = (start_by_node or {}).get(b, 0)
            for slot in range(max(lo_a, lo_b) + 1, min(len(sa), len(sb)) + 1):
                if sa[slot - 1] != sb[slot - 1]:
                    problems.append(f"nodes {a} and {b} applied different values at slot {slot}")
                    break
    return problems


def check_acknowledged_writes(
    history: Sequence[Operation], final: Mapping[bytes, bytes]
) -> list[str]:
    """Is every key's final value explained by a write no acknowledged write followed?"""
    problems: list[str] = []
    writes: dict[bytes, list[Operation]] = {}
    for op in history:
        if op.kind in (PUT, DELETE):
            writes.setdefault(op.key, []).append(op)
    by_value = {op.value: op for ops in writes.values() for op in ops if op.kind == PUT}
    for key in sorted(set(writes) | set(final)):
        ops = writes.get(key, [])
        acked = [op for op in ops if op.outcome == OK]

        # A write w may be the last to take effect only if no acknowledged
        # write started after w returned (that one would come after w).
        def may_be_last(w: Operation) -> bool:
            if w.return_us is None:
                return True
            return not any(a.call_us > w.return_us for a in acked if a is not w)

        value = final.get(key)
        if value is not None:
            w = by_value.get(value)
            if w is None or w.key != key:
                problems.append(f"key {key!r} holds {value!r}, which no put on it wrote")
            elif w.outcome == FAIL:
                problems.append(f"key {key!r} holds {value!r} from a failed write {w.describe()}")
            elif not may_be_last(w):
                later = [
                    a.describe()
                    for a in acked
                    if w.return_us is not None and a.call_us > w.return_us
                ]
                problems.append(
                    f"key {key!r} holds {value!r} from {w.describe()}, but these "
                    f"acknowledged writes came after it: {later[:3]}"
                )
        else:
            deletes = [w for w in ops if w.kind == DELETE and w.outcome != FAIL]
            if acked and not any(may_be_last(d) for d in deletes):
                last = max(acked, key=lambda a: a.call_us)
                problems.append(
                    f"key {key!r} is absent, but acknowledged {last.describe()} "
                    f"was never overwritten by a delete"
                )
    return problems


def check_convergence(
    applied_index: Mapping[int, int], states: Mapping[int, Mapping[bytes, bytes]]
) -> list[str]:
    problems: list[str] = []
    if len(set(applied_index.values())) > 1:
        problems.append(f"applied indexes differ: {dict(sorted(applied_index.items()))}")
    nodes = sorted(states)
    for other in nodes[1:]:
        if states[other] != states[nodes[0]]:
            a, b = states[nodes[0]], states[other]
            diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            problems.append(f"nodes {nodes[0]} and {other} differ on keys {diff[:5]}")
    return problems


def _short(value: Value) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def reference_state(log: Mapping[int, Value], through: int, limits: Limits = Limits()) -> dict[bytes, bytes]:
    """The key-value map after applying slots ``1..through`` of ``log``, by
    the rules of the state machine written out again, simply: a command
    whose sequence is not above its client's last applied one has no effect,
    an invalid one neither; a batch applies its ops in order, each with its
    own identity, a packed batch with one identity for all of them."""
    kv: dict[bytes, bytes] = {}
    for _cmd, writes in command_effects(log, through, limits):
        for key, value in writes:
            if value is None:
                kv.pop(key, None)
            else:
                kv[key] = value
    return kv


def command_effects(
    log: Mapping[int, Value], through: int, limits: Limits = Limits()
) -> Iterator[tuple[kv_pb2.Command, list[tuple[bytes, bytes | None]]]]:
    """Every command of slots ``1..through`` in order, with the paxoskv.v1
    writes it makes (key, value or None for a delete), by the rules
    ``reference_state`` states; an etcd command (``Command.etcd``) comes
    only when its identity is fresh: a paxoskv.v1 Txn (``is_v1_txn``: the
    client's own identity, compares on existence) with the writes of the
    branch it takes, an etcd API command with none."""
    last: dict[str, int] = {}
    kv: dict[bytes, bytes] = {}  # what the v1 writes left: a v1 Txn's compares read it

    def valid(key: bytes, value: bytes) -> bool:
        return 0 < len(key) <= limits.key_bytes_max and len(value) <= limits.value_bytes_max

    def write(op: kv_pb2.PutOp | kv_pb2.DeleteOp | kv_pb2.PutRequest | kv_pb2.DeleteRequest, is_put: bool) -> tuple[bytes, bytes | None]:
        return (op.key, op.value if is_put else None)

    def fresh(client_id: str, first: int, last_seq: int) -> bool:
        if not client_id:
            return True
        if first <= last.get(client_id, 0):
            return False
        last[client_id] = last_seq
        return True

    for slot in range(1, through + 1):
        for data in log[slot]:
            cmd = kv_pb2.Command.FromString(data)
            kind = cmd.WhichOneof("op")
            out: list[tuple[bytes, bytes | None]] = []
            if kind == "etcd":
                if fresh(cmd.client_id, cmd.sequence, cmd.sequence):
                    if is_v1_txn(cmd):
                        out = _existence_txn(kv, cmd.etcd)
                        _update(kv, out)
                    yield cmd, out
                continue
            if kind in ("put", "delete"):
                body = getattr(cmd, kind)
                if valid(body.key, body.value if kind == "put" else b"") and fresh(cmd.client_id, cmd.sequence, cmd.sequence):
                    out.append(write(body, kind == "put"))
                _update(kv, out)
                yield cmd, out
                continue
            if kind != "batch":
                continue
            batch = cmd.batch
            ops = [(op.WhichOneof("op"), op) for op in batch.ops]
            if batch.HasField("request"):
                req = batch.request
                if not fresh(req.client_id, req.sequence, req.sequence + len(ops) - 1):
                    continue
                for k, op in ops:
                    if k in ("put", "delete"):
                        body = getattr(op, k)
                        if valid(body.key, body.value if k == "put" else b"") and not body.HasField("request"):
                            out.append(write(body, k == "put"))
                _update(kv, out)
                yield cmd, out
                continue
            for k, op in ops:
                if k not in ("put", "delete"):
                    continue
                body = getattr(op, k)
                hdr = body.request
                if valid(body.key, body.value if k == "put" else b"") and fresh(hdr.client_id, hdr.sequence, hdr.sequence):
                    out.append(write(body, k == "put"))
            _update(kv, out)
            yield cmd, out


def is_v1_txn(cmd: kv_pb2.Command) -> bool:
    """An etcd command in the log for a paxoskv.v1 Txn: it carries the v1
    client's own identity, not one its node assigned (an etcd API write)."""
    return cmd.WhichOneof("op") == "etcd" and bool(cmd.client_id) and not cmd.client_id.startswith(NODE_ASSIGNED_PREFIX)


def _update(kv: dict[bytes, bytes], writes: list[tuple[bytes, bytes | None]]) -> None:
    for key, value in writes:
        if value is None:
            kv.pop(key, None)
        else:
            kv[key] = value


_C = rpc_pb2.Compare
# compare result -> does it hold, given "the key exists" (a number compared with 0)
_ON_EXISTENCE = {_C.EQUAL: lambda exists: not exists, _C.NOT_EQUAL: bool, _C.GREATER: bool}


def _existence_txn(kv: Mapping[bytes, bytes], op: kv_pb2.EtcdOp) -> list[tuple[bytes, bytes | None]]:
    """The writes of an etcd Txn whose compares say whether a key exists
    (version, create or mod revision against 0: the simulator's v1 CASes),
    with puts and single-key deletes, given the map ``kv`` before it;
    anything else is beyond this model and says so."""
    if op.WhichOneof("request") != "txn":
        raise NotImplementedError(f"the reference model has no etcd {op.WhichOneof('request')}")
    txn = op.txn
    holds = True
    for c in txn.compare:
        operand = {_C.VERSION: c.version, _C.CREATE: c.create_revision, _C.MOD: c.mod_revision}.get(c.target)
        if operand != 0 or c.result not in _ON_EXISTENCE or c.range_end:
            raise NotImplementedError(f"the reference model covers existence compares only, not {c}")
        holds = holds and _ON_EXISTENCE[c.result](c.key in kv)
    writes: list[tuple[bytes, bytes | None]] = []
    for r in txn.success if holds else txn.failure:
        kind = r.WhichOneof("request")
        if kind == "request_put":
            writes.append((r.request_put.key, r.request_put.value))
        elif kind == "request_delete_range" and not r.request_delete_range.range_end:
            writes.append((r.request_delete_range.key, None))
        elif kind != "request_range":
            raise NotImplementedError(f"the reference model has no txn op {kind} of that shape")
    return writes


def check_serializable_reads(history: Sequence[Operation]) -> list[str]:
    """A serializable get may be stale, never invented: the value it read
    (if any) was written by a put on that key called before the get returned."""
    problems: list[str] = []
    by_value = {op.value: op for op in history if op.kind == PUT and op.value is not None}
    for op in history:
        if not (op.serializable and op.outcome == OK and op.value is not None):
            continue
        w = by_value.get(op.value)
        if w is None or w.key != op.key:
            problems.append(f"{op.describe()} read a value no put on that key wrote")
        elif op.return_us is not None and w.call_us > op.return_us:
            problems.append(f"{op.describe()} read the value of {w.describe()}, called after it returned")
    return problems
