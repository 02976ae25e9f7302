"""After the run: convergence, final reads, and the checks on the whole outcome.

Rules
-----
* Convergence: every node answers Status, exactly one node is leader and
  every node names it, every node's applied index equals its commit index
  and all are equal, and that holds for ``stable_polls`` polls in a row.
* Final reads: every key from every node, linearizably (retried until
  answered), recorded into the history as ``ok`` gets of client
  ``final-n<i>``: the linearizability check then covers the final state too.
  Then every key again with ``serializable`` reads (each node's own applied
  state, no quorum round) to compare the nodes' copies.
* (b) ``lost_writes``: an acknowledged put or delete is *lost* when the final
  state was provably produced before it: the final value's writer (values
  are unique) returned before the acknowledged write was invoked, or the key
  is absent while no delete could have followed the acknowledged put.
  Unknown writes may take effect at any time after their call, so they can
  always be the later one. A final value no put ever wrote is reported too.
* (c) ``compare_nodes``: identical applied index, key count and value of
  every key on every node.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import grpc

from paxoskv.chaos.monitor import Monitor, NodeStatus
from paxoskv.chaos.workload import dial
from paxoskv.check import Operation, Recorder
from paxoskv.tls import ClientTLS
from paxoskv.util.wait import WaitTimeout, wait_until_async
from paxoskv.v1 import kv_pb2, kv_pb2_grpc

__all__ = [
    "Convergence",
    "FinalState",
    "LostWrite",
    "compare_nodes",
    "final_reads",
    "lost_writes",
    "wait_converged",
]


@dataclass(slots=True)
class Convergence:
    ok: bool
    elapsed_s: float
    leader: int | None
    applied_index: dict[int, int]
    detail: str = ""


async def wait_converged(
    monitor: Monitor,
    ids: Sequence[int],
    *,
    timeout_s: float,
    clock: Callable[[], float],
    stable_polls: int = 3,
    interval_s: float = 0.2,
) -> Convergence:
    start = clock()
    last_sig = None
    stable = 0
    seen: dict[int, NodeStatus] = {}
    why = "no status yet"
    while clock() - start < timeout_s:
        seen = await monitor.poll_once(ids)
        sig = None
        if len(seen) < len(ids):
            why = f"nodes {sorted(set(ids) - set(seen))} do not answer Status"
        else:
            leaders = [i for i, st in seen.items() if st.role == "leader"]
            named = {st.leader_id for st in seen.values()}
            applied = {st.applied_index for st in seen.values()}
            behind = [i for i, st in seen.items() if st.applied_index != st.commit_index]
            if len(leaders) != 1 or named != {leaders[0]}:
                why = f"leaders {leaders}, nodes name {sorted(named)}"
            elif len(applied) != 1 or behind:
                why = f"applied indexes {({i: st.applied_index for i, st in seen.items()})}"
            else:
                sig = (leaders[0], applied.pop())
        if sig is not None and sig == last_sig:
            stable += 1
            if stable >= stable_polls:
                return Convergence(
                    True, clock() - start, sig[0], {i: st.applied_index for i, st in seen.items()}
                )
        else:
            stable = 1 if sig is not None else 0
        last_sig = sig
        await asyncio.sleep(interval_s)
    return Convergence(False, clock() - start, None, {i: st.applied_index for i, st in seen.items()}, why)


@dataclass(slots=True)
class FinalState:
    linearizable: dict[int, dict[str, str | None]] = field(default_factory=dict)  # node -> key -> value
    serializable: dict[int, dict[str, str | None]] = field(default_factory=dict)
    status: dict[int, NodeStatus] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


async def final_reads(
    targets: dict[int, str],
    keys: Sequence[str],
    recorder: Recorder,
    monitor: Monitor,
    *,
    deadline_s: float = 15.0,
    tls: ClientTLS | None = None,
) -> FinalState:
    fs = FinalState()
    for i, target in sorted(targets.items()):
        ch = dial(target, f"final-n{i}", tls)
        stub = kv_pb2_grpc.KVStub(ch)
        try:
            lin: dict[str, str | None] = {}
            for key in keys:
                failed: list[grpc.aio.AioRpcError] = []

                async def read(key: str = key) -> tuple[str | None] | None:
                    """One recorded attempt: (value,), or None after a failure."""
                    op_id = recorder.invoke(f"final-n{i}", "get", key)
                    try:
                        resp = await stub.Get(kv_pb2.GetRequest(key=key.encode()), timeout=2.0)
                    except grpc.aio.AioRpcError as exc:
                        recorder.complete(op_id, "unknown")
                        failed[:] = [exc]
                        return None
                    value = resp.value.decode() if resp.found else None
                    recorder.complete(op_id, "ok", output_value=value)
                    return (value,)

                try:
                    (lin[key],) = await wait_until_async(
                        f"node {i} to answer a linearizable get of {key}", read, deadline_s, interval_s=0.1
                    )
                except WaitTimeout:
                    exc = failed[-1]
                    fs.errors.append(f"node {i}: linearizable get {key} failed: {exc.code().name} {exc.details()}")
            fs.linearizable[i] = lin
            ser: dict[str, str | None] = {}
            for key in keys:
                try:
                    resp = await stub.Get(kv_pb2.GetRequest(key=key.encode(), serializable=True), timeout=2.0)
                except grpc.aio.AioRpcError as exc:
                    fs.errors.append(
                        f"node {i}: serializable get {key} failed: {exc.code().name} {exc.details()}"
                    )
                    continue
                ser[key] = resp.value.decode() if resp.found else None
            fs.serializable[i] = ser
        finally:
            await ch.close(grace=None)
        st = await monitor.status_of(i, timeout_s=2.0)
        if st is None:
            fs.errors.append(f"node {i}: no Status after the final reads")
        else:
            fs.status[i] = st
    return fs


def compare_nodes(
    fs: FinalState, ids: Iterable[int], keys: Sequence[str], other_keys: dict[int, int] | None = None
) -> list[str]:
    """(c) Differences between nodes' states (empty: identical). ``other_keys``:
    node -> keys it holds outside ``keys`` (another workload's)."""
    problems: list[str] = list(fs.errors)
    ids = sorted(ids)
    applied = {i: fs.status[i].applied_index for i in ids if i in fs.status}
    if len(set(applied.values())) > 1:
        problems.append(f"applied index differs: {applied}")
    counts = {i: fs.status[i].keys for i in ids if i in fs.status}
    if len(set(counts.values())) > 1:
        problems.append(f"key count differs: {counts}")
    for key in keys:
        for name, views in (("serializable", fs.serializable), ("linearizable", fs.linearizable)):
            vals = {i: views[i].get(key, "<missing>") for i in ids if i in views}
            if len(set(vals.values())) > 1:
                problems.append(f"{name} reads of {key} differ: {vals}")
    for i in ids:
        if i in counts and i in fs.serializable:
            present = sum(1 for v in fs.serializable[i].values() if v is not None)
            present += (other_keys or {}).get(i, 0)
            if present != counts[i]:
                problems.append(
                    f"node {i} holds {counts[i]} keys, {present} of them from the workload's key set"
                )
    return problems


@dataclass(frozen=True, slots=True)
class LostWrite:
    op: Operation
    final_value: str | None
    why: str

    def to_json(self) -> dict:
        return {"op": self.op.to_json(), "final_value": self.final_value, "why": self.why}


def lost_writes(history: Iterable[Operation], final: dict[str, str | None]) -> list[LostWrite]:
    """(b) Acknowledged writes whose effect is provably missing from ``final``."""
    writes: dict[str, list[Operation]] = defaultdict(list)
    for o in history:
        if o.op != "get" and o.outcome != "fail":
            writes[o.key].append(o)
    lost: list[LostWrite] = []
    for key, fv in sorted(final.items()):
        ws = writes.get(key, [])
        acked = [w for w in ws if w.outcome == "ok"]
        if fv is not None:
            producers = [w for w in ws if w.op == "put" and w.value == fv]
            if not producers:
                lost.append(
                    LostWrite(
                        Operation(
                            id=-1,
                            client="?",
                            op="put",
                            key=key,
                            value=fv,
                            call=0.0,
                            ret=None,
                            outcome="unknown",
                        ),
                        fv,
                        f"final value {fv!r} of {key} was never written by any put",
                    )
                )
                continue
            p = producers[0]
            if p.outcome != "ok":
                continue  # an unknown put may take effect at any time after its call
            for w in acked:
                if w is not p and p.ret < w.call:
                    lost.append(
                        LostWrite(
                            w,
                            fv,
                            f"{key} holds {fv!r}, written by #{p.id} which returned before "
                            f"#{w.id} was invoked",
                        )
                    )
        else:
            deletes = [w for w in ws if w.op == "delete"]
            for w in acked:
                if w.op != "put":
                    continue
                if any(d.outcome == "unknown" or d.ret > w.call for d in deletes):
                    continue
                lost.append(LostWrite(w, None, f"{key} is absent, and no delete could have followed #{w.id}"))
    return lost
