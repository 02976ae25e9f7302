"""Linearizability checking of key-value histories (Wing-Gong / Lowe search).

Rules
-----
- A key-value history is linearizable iff each key's sub-history is
  (P-compositionality, Herlihy & Wing): keys are checked one by one, against a
  register model whose initial state is "absent".
- ``fail`` operations are dropped. ``unknown`` operations may take effect at any
  time after their call, or never; their output is unconstrained.
- Budgets (time, steps, and memory per search) are shared by all keys of one
  check. Running out gives verdict ``unknown``, never a guess. A violation is
  reported only when it is proven: by a search that exhausted every
  linearization, or by one of the cheap rules (_obvious_violations), each a proof.
- Equal times count as concurrent (``a`` precedes ``b`` iff ``a.ret < b.call``).

How the search works, the reductions that keep unknown operations tractable
and how a violation is explained: docs/design.md, "The linearizability
checker".
"""

from __future__ import annotations

import bisect
import math
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from paxoskv.check.history import HistoryError, Operation, distinct_ops

__all__ = ["MEMORY_BUDGET_BYTES_DEFAULT", "VERDICTS", "CheckResult", "KeyResult", "check_history", "check_key"]

VERDICTS = ("ok", "violation", "unknown")

ABSENT = 0  # model state: the key does not exist
UNREAD = 1  # model state: the key holds a value no ok get ever reads
_GET, _PUT, _DELETE = 0, 1, 2
_KIND = {"get": _GET, "put": _PUT, "delete": _DELETE}
_CHECK_EVERY_STEPS = 2048
_INVOLVED_MAX = 12
MEMORY_BUDGET_BYTES_DEFAULT = 1 << 30
_EXACT_FIRST_STEPS = 100_000  # exact search alone, before the relaxed one helps
_EXACT_FIRST_STEPS_PER_ENTRY = 20
_CACHE_ENTRY_BYTES = 200  # a cache entry (tuple, ints, set slot), measured roughly


# ---- Results ------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyResult:
    """The verdict for one key's sub-history."""

    key: str
    verdict: str
    ops: int  # operations checked (fail ops excluded)
    steps: int
    elapsed_s: float
    explanation: str = ""
    failing_op: Operation | None = None  # violation: the op that cannot be linearized
    prefix_ops: int = 0  # violation: operations in the failing prefix
    minimal: bool = False  # violation: the failing prefix is proven shortest
    involved: tuple[Operation, ...] = ()  # violation: ops worth looking at

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "key": self.key, "verdict": self.verdict, "ops": self.ops,
            "steps": self.steps, "elapsed_s": round(self.elapsed_s, 6),
        }
        if self.verdict != "ok":
            out["explanation"] = self.explanation
        if self.failing_op is not None:
            out["failing_op"] = self.failing_op.to_json()
            out["prefix_ops"] = self.prefix_ops
            out["minimal"] = self.minimal
            out["involved"] = [o.to_json() for o in self.involved]
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckResult:
    """The verdict for a whole history: ``violation`` if any key has one,
    else ``unknown`` if any key ran out of budget, else ``ok``."""

    verdict: str
    keys: tuple[KeyResult, ...]
    ops_total: int  # operations in the history
    ops_checked: int  # without the fail ones
    steps: int
    elapsed_s: float
    budget_exhausted: bool
    budget_reason: str = ""  # "time", "steps" or "memory" when exhausted

    @property
    def ok(self) -> bool:
        return self.verdict == "ok"

    @property
    def violations(self) -> tuple[KeyResult, ...]:
        return tuple(k for k in self.keys if k.verdict == "violation")

    def key(self, key: str) -> KeyResult:
        for k in self.keys:
            if k.key == key:
                return k
        raise KeyError(key)

    @property
    def explanation(self) -> str:
        if self.verdict == "violation":
            return "\n\n".join(k.explanation for k in self.violations)
        if self.verdict == "unknown":
            undecided = [k.key for k in self.keys if k.verdict == "unknown"]
            return (
                f"{self.budget_reason or 'budget'} budget exhausted before {len(undecided)} key(s) were decided: "
                + ", ".join(repr(k) for k in undecided[:10])
                + (" ..." if len(undecided) > 10 else "")
            )
        return f"all {len(self.keys)} key(s) linearizable"

    def ops_per_s(self) -> float:
        return self.ops_checked / self.elapsed_s if self.elapsed_s > 0 else math.inf

    def summary(self) -> str:
        lines = [
            f"ops: {self.ops_total} ({self.ops_checked} checked, {self.ops_total - self.ops_checked} failed ops dropped)",
            f"keys: {len(self.keys)} ({sum(k.verdict == 'ok' for k in self.keys)} ok, "
            f"{len(self.violations)} violation, {sum(k.verdict == 'unknown' for k in self.keys)} unknown)",
            f"search: {self.steps} steps in {self.elapsed_s:.3f} s",
            f"verdict: {self.verdict}",
        ]
        if self.verdict != "ok":
            lines.append("")
            lines.append(self.explanation)
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "ops_total": self.ops_total,
            "ops_checked": self.ops_checked,
            "steps": self.steps,
            "elapsed_s": round(self.elapsed_s, 6),
            "budget_exhausted": self.budget_exhausted,
            "budget_reason": self.budget_reason,
            "explanation": self.explanation,
            "keys": [k.to_json() for k in self.keys],
        }


# ---- Budget -------------------------------------------------------------------


class _Budget:
    """Time and steps shared by every search of one check; memory per search."""

    __slots__ = ("deadline", "steps_max", "steps_used", "cache_entries_max", "exhausted", "reason")

    def __init__(
        self, time_budget_s: float | None, step_budget: int | None, memory_budget_bytes: int | None
    ) -> None:
        self.deadline = None if time_budget_s is None else time.monotonic() + time_budget_s
        self.steps_max = step_budget
        self.steps_used = 0
        self.cache_entries_max = (
            math.inf if memory_budget_bytes is None else memory_budget_bytes // _CACHE_ENTRY_BYTES
        )
        self.exhausted = False
        self.reason = ""

    def exhaust(self, reason: str) -> None:
        self.exhausted = True
        self.reason = self.reason or reason

    def steps_left(self) -> int | None:
        return None if self.steps_max is None else max(0, self.steps_max - self.steps_used)

    def out_of_time(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def spent(self) -> bool:
        if self.exhausted:
            return True
        left = self.steps_left()
        if left is not None and left <= 0:
            self.exhaust("steps")
        elif self.out_of_time():
            self.exhaust("time")
        return self.exhausted


# ---- The prepared search problem ----------------------------------------------


@dataclass(slots=True)
class _Problem:
    """One key's sub-history compiled into the event list the search walks.

    Entries: 0 is the head sentinel, 1..2n the call/return events in time
    order, 2n+1 the tail sentinel. Only required operations' entries are
    linked into the list (``nxt``/``prv``); optional operations live in their
    classes and are available once their call entry precedes the first
    pending return. Per-entry arrays describe call entries.
    """

    ops: list[Operation]  # search op index -> operation
    cut_of: list[Operation]  # search op index -> the ok op whose return bounds it
    n_entries: int
    nxt: list[int]  # the initial linked list of required entries
    prv: list[int]
    is_call: list[bool]
    op_of: list[int]  # entry -> search op index
    match: list[int]  # call entry -> its return entry
    kind: list[int]
    arg: list[int]  # get: expected state; put: new state; delete: ABSENT
    existed: list[bool | None]
    rank: list[int]  # required ops: rank in call order; optional: -1
    cls_members: list[list[int]]  # class -> call entries, by call order
    readers: list[int]  # state -> required gets expecting it
    writers: list[int]  # state -> ops (required or optional) producing it


def _prepare(ops: Sequence[Operation]) -> _Problem:
    """Compile one key's non-fail operations (ok or unknown) into a ``_Problem``."""
    ops = [o for o in ops if o.outcome == "ok" or (o.outcome == "unknown" and o.op != "get")]
    read_ret: dict[str, Operation] = {}  # value -> the ok get reading it that returns first
    for o in ops:
        if o.op == "get" and o.outcome == "ok" and o.output_value is not None:
            first = read_ret.get(o.output_value)
            if first is None or _ret_key(o) < _ret_key(first):
                read_ret[o.output_value] = o
    code = {v: i + 2 for i, v in enumerate(sorted(read_ret))}
    writers: dict[str, list[Operation]] = defaultdict(list)
    for o in ops:
        if o.op == "put":
            writers[o.value].append(o)  # type: ignore[index]

    n = len(ops)
    ret_time: list[float] = []
    required: list[bool] = []
    cut_of: list[Operation] = []
    for o in ops:
        if o.outcome == "ok":
            ret_time.append(o.ret)  # type: ignore[arg-type]
            required.append(True)
            cut_of.append(o)
        elif o.op == "put" and o.value in read_ret and len(writers[o.value]) == 1:
            reader = read_ret[o.value]  # reduction 3: this unknown put surely happened
            ret_time.append(reader.ret)  # type: ignore[arg-type]
            required.append(True)
            cut_of.append(reader)
        else:
            ret_time.append(math.inf)
            required.append(False)
            cut_of.append(o)

    # Events sorted by (time, call before return, op id): equal times are concurrent.
    events = [(o.call, 0, o.id, i) for i, o in enumerate(ops)]
    events += [(ret_time[i], 1, o.id, i) for i, o in enumerate(ops)]
    events.sort()
    n_entries = 2 * n + 2
    is_call = [False] * n_entries
    op_of = [-1] * n_entries
    match = [-1] * n_entries
    kind = [0] * n_entries
    arg = [0] * n_entries
    existed: list[bool | None] = [None] * n_entries
    rank = [-1] * n_entries
    call_entry = [0] * n
    linked = [0]
    next_rank = 0
    class_of_key: dict[tuple[int, int], int] = {}
    cls_members: list[list[int]] = []
    for e, (_t, is_ret, _id, i) in enumerate(events, start=1):
        op_of[e] = i
        if required[i]:
            linked.append(e)
        if is_ret:
            match[call_entry[i]] = e
            continue
        call_entry[i] = e
        is_call[e] = True
        o = ops[i]
        k = kind[e] = _KIND[o.op]
        if k == _GET:
            arg[e] = ABSENT if o.output_value is None else code[o.output_value]
        elif k == _PUT:
            arg[e] = code.get(o.value, UNREAD)  # type: ignore[arg-type]
        existed[e] = o.output_existed
        if required[i]:
            rank[e] = next_rank  # dense, in call order: low/win rely on it
            next_rank += 1
        else:
            c = class_of_key.setdefault((k, arg[e]), len(cls_members))
            if c == len(cls_members):
                cls_members.append([])
            cls_members[c].append(e)  # entries come in call order
    linked.append(n_entries - 1)
    nxt = [0] * n_entries
    prv = [0] * n_entries
    for a, b in zip(linked, linked[1:]):
        nxt[a] = b
        prv[b] = a
    readers = [0] * (len(code) + 2)
    writers = [0] * (len(code) + 2)
    for e in range(1, n_entries - 1):
        if is_call[e]:
            if kind[e] == _GET:
                readers[arg[e]] += 1
            else:
                writers[arg[e]] += 1
    return _Problem(
        ops=ops, cut_of=cut_of, n_entries=n_entries, nxt=nxt, prv=prv, is_call=is_call,
        op_of=op_of, match=match, kind=kind, arg=arg, existed=existed, rank=rank,
        cls_members=cls_members, readers=readers, writers=writers,
    )


def _ret_key(o: Operation) -> tuple[float, int]:
    return (math.inf if o.ret is None else o.ret, o.id)


@dataclass(slots=True)
class _SearchOutcome:
    verdict: str
    steps: int
    furthest: Operation | None  # the latest-returning op the search got stuck at
    nodes: int = 0  # cache entries: distinct (linearized set, state) nodes entered


_ENTER, _BRANCH, _OPTIONAL, _BACKTRACK = 0, 1, 2, 3  # search modes
_FORCED = 0  # frame kinds; _BRANCH and _OPTIONAL double as the other two


def _search(
    p: _Problem, budget: _Budget, *, relaxed: bool = False, steps_max: int | None = None
) -> _SearchOutcome:
    """Lowe's just-in-time linearization search; iterative.

    ``relaxed``: optional ops are not used up (a class, once its first member
    is called, can act any number of times). That model allows more, so its
    "violation" is a proof for the real one, and its cache needs no class-use
    vectors. ``steps_max`` stops this search (verdict ``"capped"``) without
    exhausting the shared budget.

    At each node (entered in mode ``_ENTER``) the window is the required calls
    before the first pending return. If a get in it reads the current state,
    it is a *forced* move, linearized without branching: a get never changes
    the state, and every op that must precede it is already linearized, so
    moving it to the front of any linearization from this node keeps that
    valid; if the node has a solution, so has the child. (Not so for a put or
    delete that happens to leave the state as it is here: elsewhere it would
    not.) Otherwise the node branches over the applicable puts and deletes
    (``_BRANCH``), then over optional classes (``_OPTIONAL``); when all fail it
    backtracks. A forced frame's parent fails with its child. Every node is
    added to the cache when first entered.

    Dead-value pruning: a move that changes the state away from ``s`` while a
    required get still expects ``s`` (it is not in the window, or it would
    have been forced) and no op that could produce ``s`` again is left, leads
    only to failure; it is not taken. ``readers``/``writers`` count the
    unlinearized ops expecting/producing each state.
    """
    nxt, prv = list(p.nxt), list(p.prv)
    tail = p.n_entries - 1
    is_call, match, kind, arg, existed, rank = p.is_call, p.match, p.kind, p.arg, p.existed, p.rank
    cls_members = p.cls_members
    n_classes = len(cls_members)
    cls_pos = [0] * n_classes
    readers, writers = list(p.readers), list(p.writers)

    # The cache, keyed by (low, win, state); with optional classes, each key
    # keeps the Pareto front of class-use vectors seen (fewer used dominates).
    cache: set[tuple[int, int, int]] = set()
    fronts: dict[tuple[int, int, int], Any] = {}
    nodes = 0

    def visit_plain(key: tuple[int, int, int], vec: Any) -> bool:
        if key in cache:
            return False
        cache.add(key)
        return True

    def visit_one(key: tuple[int, int, int], vec: Any) -> bool:
        least = fronts.get(key)
        if least is not None and least <= vec:
            return False
        fronts[key] = vec
        return True

    def visit_many(key: tuple[int, int, int], vec: Any) -> bool:
        front = fronts.get(key)
        if front is None:
            fronts[key] = [vec]
            return True
        for seen in front:
            if all(a <= b for a, b in zip(seen, vec)):
                return False
        front[:] = [seen for seen in front if not all(b <= a for a, b in zip(seen, vec))]
        front.append(vec)
        return True

    single = n_classes == 1
    consume = not relaxed
    visit = visit_plain if n_classes == 0 or relaxed else visit_one if single else visit_many
    vec: Any = 0 if single else (0,) * n_classes  # optional members used, per class
    # frames: (kind, entry or class, state, low, win, vec, first_ret) of the parent
    stack: list[tuple[int, int, int, int, int, Any, int]] = []
    state, low, win = ABSENT, 0, 0
    mode = _ENTER
    scan = first_ret = ci = 0
    furthest = 0
    steps = 0
    left = budget.steps_left()
    steps_cap = math.inf if left is None else left
    if steps_max is not None and steps_max < steps_cap:
        steps_cap = steps_max
    next_check = min(_CHECK_EVERY_STEPS, steps_cap)
    verdict = ""
    while True:
        if steps >= next_check:
            if steps >= steps_cap:
                if steps_max is not None and steps_cap == steps_max:
                    verdict = "capped"
                    break
                budget.exhaust("steps")
            elif budget.out_of_time():
                budget.exhaust("time")
            elif nodes > budget.cache_entries_max:
                budget.exhaust("memory")
            if budget.exhausted:
                verdict = "unknown"
                break
            next_check = min(steps + _CHECK_EVERY_STEPS, steps_cap)
        if mode == _ENTER:
            steps += 1
            e = nxt[0]
            cand = 0
            while is_call[e]:
                steps += 1
                if kind[e] == _GET:
                    if arg[e] == state:
                        break  # forced
                elif not cand:
                    ex = existed[e]
                    if ex is None or ex == (state != ABSENT):
                        cand = e
                e = nxt[e]
            if is_call[e]:
                r = rank[e] - low
                w = win | (1 << r)
                lo = low
                if r == 0:  # advance low past the run of linearized ops
                    t = (w ^ (w + 1)).bit_length() - 1
                    w >>= t
                    lo += t
                if not visit((lo, w, state), vec):
                    mode = _BACKTRACK
                    continue
                nodes += 1
                stack.append((_FORCED, e, state, low, win, vec, 0))
                low, win = lo, w
                readers[state] -= 1
            elif e == tail:
                verdict = "ok"  # every required op is linearized
                break
            else:
                first_ret = e
                if cand:
                    scan = cand
                    mode = _BRANCH
                else:
                    ci = 0
                    mode = _OPTIONAL
                continue
        elif mode == _BRANCH:
            # No get applies here (it would have been forced): try puts and deletes.
            e = scan
            while is_call[e]:
                steps += 1
                if kind[e] != _GET:
                    ex = existed[e]
                    new = arg[e]
                    if (ex is None or ex == (state != ABSENT)) and (
                        new == state or not readers[state] or writers[state]
                    ):
                        r = rank[e] - low
                        w = win | (1 << r)
                        lo = low
                        if r == 0:
                            t = (w ^ (w + 1)).bit_length() - 1
                            w >>= t
                            lo += t
                        if visit((lo, w, new), vec):
                            nodes += 1
                            stack.append((_BRANCH, e, state, low, win, vec, first_ret))
                            low, win, state = lo, w, new
                            writers[new] -= 1
                            break
                e = nxt[e]
            if not is_call[e]:
                ci = 0
                mode = _OPTIONAL
                continue
        elif mode == _OPTIONAL:
            # Optional ops: the earliest unused member of a class, if called
            # before the first pending return and if it changes the state.
            lifted = False
            while ci < n_classes:
                steps += 1
                members = cls_members[ci]
                pos = cls_pos[ci]
                if pos < len(members):
                    e = members[pos]
                    new = arg[e]
                    if e < first_ret and new != state and (not readers[state] or writers[state]):
                        if consume:
                            nv = vec + 1 if single else vec[:ci] + (pos + 1,) + vec[ci + 1:]
                        else:
                            nv = vec
                        if visit((low, win, new), nv):
                            nodes += 1
                            stack.append((_OPTIONAL, ci, state, low, win, vec, first_ret))
                            if consume:
                                cls_pos[ci] = pos + 1
                                writers[new] -= 1
                            state, vec = new, nv
                            lifted = True
                            break
                ci += 1
            if lifted:
                mode = _ENTER
            else:
                if first_ret > furthest:
                    furthest = first_ret
                mode = _BACKTRACK
            continue
        else:  # _BACKTRACK
            while stack:
                steps += 1
                frame_kind, x, state, low, win, vec, first_ret = stack.pop()
                if frame_kind == _OPTIONAL:
                    if consume:
                        cls_pos[x] -= 1
                        writers[arg[cls_members[x][cls_pos[x]]]] += 1
                    ci = x + 1
                    mode = _OPTIONAL
                    break
                m = match[x]  # unlift, in reverse order of lifting
                nxt[prv[m]] = m
                prv[nxt[m]] = m
                nxt[prv[x]] = x
                prv[nxt[x]] = x
                if frame_kind == _BRANCH:
                    writers[arg[x]] += 1
                    scan = nxt[x]
                    mode = _BRANCH
                    break
                readers[arg[x]] += 1  # _FORCED: the parent fails with its child; unwind on
            else:
                verdict = "violation"
                break
            continue
        # A required call entry e was just linearized: unlink it and its return.
        m = match[e]
        a, b = prv[e], nxt[e]
        nxt[a] = b
        prv[b] = a
        a, b = prv[m], nxt[m]
        nxt[a] = b
        prv[b] = a
        mode = _ENTER
    budget.steps_used += steps
    stuck = p.cut_of[p.op_of[furthest]] if furthest else None
    return _SearchOutcome(verdict=verdict, steps=steps, furthest=stuck, nodes=nodes)


def _decide(p: _Problem, budget: _Budget) -> _SearchOutcome:
    """The exact search, helped by the relaxed one when optional ops exist.

    Valid histories are usually proven quickly by the exact search. When it
    drags on (an exhaustive search, as proving a violation needs), the counts
    of optional ops used multiply its nodes; the relaxed search has no such
    counts, and its "violation" is a proof. If it finds a (relaxed)
    linearization instead, only the exact search can decide: it runs on.
    """
    if not p.cls_members:
        return _search(p, budget)
    exact = _search(p, budget, steps_max=_EXACT_FIRST_STEPS + _EXACT_FIRST_STEPS_PER_ENTRY * p.n_entries)
    if exact.verdict != "capped":
        return exact
    relaxed = _search(p, budget, relaxed=True)
    if relaxed.verdict != "ok":
        return relaxed
    return _search(p, budget)


# ---- Per key ------------------------------------------------------------------


def _event_key_ret(o: Operation) -> tuple[float, int, int]:
    return (o.ret, 1, o.id)  # type: ignore[return-value]


def _prefix(ops: Sequence[Operation], cut: Operation) -> list[Operation]:
    """The prefix of a key's history up to the return of ``cut``: every op invoked
    before then; those not returned by then (or unknown) count as unknown."""
    limit = _event_key_ret(cut)
    out: list[Operation] = []
    for o in ops:
        if (o.call, 0, o.id) >= limit:
            continue
        if o.outcome == "ok" and _event_key_ret(o) <= limit:
            out.append(o)
        elif o.op != "get":  # a pending get constrains nothing
            out.append(_as_unknown(o))
    return out


def _as_unknown(o: Operation) -> Operation:
    if o.outcome == "unknown":
        return o
    return Operation(id=o.id, client=o.client, op=o.op, key=o.key, value=o.value,
                     call=o.call, ret=None, outcome="unknown")


def _obvious_violations(ops: Sequence[Operation]) -> list[tuple[Operation, str, tuple[Operation, ...]]]:
    """Ok gets that no search is needed to reject, with the reason and the ops
    that prove it, sorted by return. Ties in time count as concurrent.

    - the value read was never written, or every put of it was invoked after
      the get returned;
    - stale read: every put of the value read is ok and was surely
      overwritten before the get was invoked (some ok write of another value
      was invoked after it returned and returned before the get's call);
    - lost write: the get read "absent", yet an ok put returned before the
      get was invoked, and no delete could fall between the two.
    """
    writers: dict[str, list[Operation]] = defaultdict(list)
    for o in ops:
        if o.op == "put" and o.outcome != "fail":
            writers[o.value].append(o)  # type: ignore[index]
    ok_writes = sorted((o for o in ops if o.op != "get" and o.outcome == "ok"), key=_event_key_ret)
    write_rets = [o.ret for o in ok_writes]
    # Prefix over ok writes by return: the latest-invoked one, and the
    # latest-invoked one writing something else than that one.
    best: list[Operation | None] = []
    second: list[Operation | None] = []
    b1: Operation | None = None
    b2: Operation | None = None
    for q in ok_writes:
        if b1 is None or q.call > b1.call:
            if b1 is not None and b1.value != q.value:
                b2 = b1
            b1 = q
        elif q.value != b1.value and (b2 is None or q.call > b2.call):
            b2 = q
        best.append(b1)
        second.append(b2)
    ok_puts = [o for o in ok_writes if o.op == "put"]
    put_rets = [o.ret for o in ok_puts]
    latest_put: list[Operation] = []
    for q in ok_puts:
        latest_put.append(q if not latest_put or q.call > latest_put[-1].call else latest_put[-1])
    deletes = sorted((o for o in ops if o.op == "delete" and o.outcome != "fail"), key=lambda o: (o.call, o.id))
    delete_calls = [o.call for o in deletes]
    delete_ret_max: list[float] = []
    for d in deletes:
        r = math.inf if d.outcome != "ok" else d.ret
        delete_ret_max.append(r if not delete_ret_max else max(r, delete_ret_max[-1]))  # type: ignore[type-var]

    bad: list[tuple[Operation, str, tuple[Operation, ...]]] = []
    for g in ops:
        if g.op != "get" or g.outcome != "ok":
            continue
        v = g.output_value
        if v is None:
            i = bisect.bisect_left(put_rets, g.call)  # ok puts with ret < g.call
            if not i:
                continue
            w = latest_put[i - 1]
            j = bisect.bisect_right(delete_calls, g.ret)  # deletes with call <= g.ret
            if not j or delete_ret_max[j - 1] < w.call:
                bad.append((g, f"it read absent, but {w.describe()} returned before it was invoked, "
                               f"and no delete could come in between (a lost write)", (w,)))
            continue
        ws = writers.get(v)
        if not ws:
            bad.append((g, f"no put ever wrote {v!r} to this key", ()))
            continue
        if all(w.call > g.ret for w in ws):  # type: ignore[operator]
            bad.append((g, f"it read {v!r} before any put of {v!r} was invoked", tuple(ws)))
            continue
        if any(w.outcome != "ok" for w in ws):
            continue
        i = bisect.bisect_left(write_rets, g.call)  # ok writes with ret < g.call
        if not i:
            continue
        q = best[i - 1]
        if q is not None and q.value == v:
            q = second[i - 1]
        if q is not None and all(w.ret < q.call for w in ws):  # type: ignore[operator]
            bad.append((g, f"it read {v!r}, but {q.describe()} was invoked after every put of {v!r} "
                           f"returned, and returned before this get was invoked (a stale read)",
                        (*ws, q)))
    bad.sort(key=lambda item: _event_key_ret(item[0]))
    return bad


def check_key(
    key: str,
    ops: Iterable[Operation],
    *,
    time_budget_s: float | None = 60.0,
    step_budget: int | None = None,
    memory_budget_bytes: int | None = MEMORY_BUDGET_BYTES_DEFAULT,
) -> KeyResult:
    """Check one key's sub-history (operations on other keys are an error)."""
    ops = list(ops)
    for o in ops:
        if o.key != key:
            raise HistoryError(f"op {o.id} is on key {o.key!r}, not {key!r}")
    return _check_key(key, ops, _Budget(time_budget_s, step_budget, memory_budget_bytes))


def _check_key(key: str, ops: list[Operation], budget: _Budget) -> KeyResult:
    start = time.monotonic()
    ops = [o for o in ops if o.outcome != "fail"]
    steps_before = budget.steps_used

    def result(verdict: str, **kw: Any) -> KeyResult:
        return KeyResult(key=key, verdict=verdict, ops=len(ops), elapsed_s=time.monotonic() - start,
                         steps=budget.steps_used - steps_before, **kw)

    ok_ops = sorted((o for o in ops if o.outcome == "ok"), key=_event_key_ret)
    position = {o.id: i for i, o in enumerate(ok_ops)}
    impossible = _obvious_violations(ops)
    hint: Operation | None = None
    if impossible:
        failing_cut = impossible[0][0]
        hi = position[failing_cut.id] + 1  # known to fail
    else:
        if budget.spent():
            return result("unknown", explanation=f"key {key!r}: not checked, budget exhausted")
        outcome = _decide(_prepare(ops), budget)
        if outcome.verdict == "ok":
            return result("ok")
        if outcome.verdict == "unknown":
            return result("unknown", explanation=f"key {key!r}: {budget.reason} budget exhausted "
                                                 f"after {outcome.steps} steps")
        hi = len(ok_ops)
        hint = outcome.furthest
        assert hi > 0, "a history without ok ops is always linearizable"

    # Shortest failing prefix: prefixes 1..len(ok_ops) (cut after the return of
    # ok_ops[c-1]); prefix lo is known to pass (0: the empty one), hi to fail.
    lo = 0
    minimal = True

    def fails(c: int) -> bool | None:
        if budget.spent():
            return None
        v = _decide(_prepare(_prefix(ops, ok_ops[c - 1])), budget).verdict
        return None if v == "unknown" else v == "violation"

    # Probe order: the op the full search got stuck at and its neighbours
    # first (usually the culprit), then bisection. Failing probes cost an
    # exhaustive search, passing ones are cheap, hence the neighbour guesses.
    probes: list[int] = []
    if impossible:
        probes.append(hi - 1)
    elif hint is not None and hint.id in position:
        probes.append(position[hint.id] + 1)
    guesses_left = 2
    while hi - lo > 1:
        c = (lo + hi) // 2
        while probes:
            guess = probes.pop()
            if lo < guess < hi:
                c = guess
                break
        verdict = fails(c)
        if verdict is None:
            minimal = False
            break
        if verdict:
            hi = c
            guess = c - 1
        else:
            lo = c
            guess = c + 1
        if guesses_left > 0:
            guesses_left -= 1
            probes.append(guess)
    culprit = ok_ops[hi - 1]
    prefix = _prefix(ops, culprit)
    reason = "no order of the operations before it makes its result possible"
    proof: tuple[Operation, ...] = ()
    for o, why, witnesses in impossible:
        if o.id == culprit.id:
            reason, proof = why, witnesses
            break
    original = {o.id: o for o in ops}
    involved = [original[o.id] for o in _involved(prefix, culprit)]
    involved = sorted({o.id: o for o in (*involved, *proof)}.values(), key=lambda o: (o.call, o.id))
    explanation = _explain(key, culprit, reason, prefix, involved, minimal)
    return result("violation", explanation=explanation, failing_op=culprit,
                  prefix_ops=len(prefix), minimal=minimal, involved=tuple(involved))


def _involved(prefix: Sequence[Operation], x: Operation) -> list[Operation]:
    """The failing op, the writes that could still be visible when it was
    invoked, the writers of the value it read, the last ops that completed
    before it was invoked, and the ops concurrent with it."""
    chosen: dict[int, Operation] = {x.id: x}
    writes = [o for o in prefix if o.op != "get" and o.id != x.id]
    # An ok write w is surely overwritten before x's call if some ok write q
    # has w.ret < q.call and q.ret < x.call.
    q_call_max = max(
        (q.call for q in writes if q.outcome == "ok" and q.ret < x.call),  # type: ignore[operator]
        default=-math.inf,
    )
    visible = [w for w in writes if w.call <= x.ret  # type: ignore[operator]
               and not (w.outcome == "ok" and w.ret < q_call_max)]  # type: ignore[operator]
    visible.sort(key=lambda o: (o.call, o.id), reverse=True)
    for w in visible[:_INVOLVED_MAX]:
        chosen.setdefault(w.id, w)
    if x.op == "get" and x.output_value is not None:
        for w in [o for o in writes if o.value == x.output_value][:_INVOLVED_MAX]:
            chosen.setdefault(w.id, w)
    before = [o for o in prefix if o.outcome == "ok" and o.ret < x.call]  # type: ignore[operator]
    before.sort(key=lambda o: (o.ret, o.id), reverse=True)
    for o in before[:_INVOLVED_MAX // 2]:
        chosen.setdefault(o.id, o)
    concurrent = [o for o in prefix if o.id != x.id and o.call <= x.ret  # type: ignore[operator]
                  and (o.outcome != "ok" or o.ret >= x.call)]  # type: ignore[operator]
    concurrent.sort(key=lambda o: (o.call, o.id), reverse=True)
    for o in concurrent[:_INVOLVED_MAX]:
        chosen.setdefault(o.id, o)
    return sorted(chosen.values(), key=lambda o: (o.call, o.id))


def _explain(key: str, x: Operation, reason: str, prefix: Sequence[Operation],
             involved: Sequence[Operation], minimal: bool) -> str:
    lines = [
        f"key {key!r}: not linearizable.",
        f"  cannot linearize: {x.describe()}",
        f"  why: {reason}.",
    ]
    if minimal:
        lines.append(
            f"  The {len(prefix)} operations on {key!r} invoked before it returned have no "
            f"linearization with it, but the history up to the return before it has one."
        )
    else:
        lines.append(
            f"  The {len(prefix)} operations on {key!r} invoked before it returned have no "
            f"linearization (budget ran out before proving this prefix the shortest)."
        )
    lines.append("  operations involved (by call time):")
    for o in involved:
        mark = "  <-- cannot linearize" if o.id == x.id else ""
        lines.append(f"    {o.describe()}{mark}")
    return "\n".join(lines)


# ---- Whole history ------------------------------------------------------------


def check_history(
    ops: Iterable[Operation],
    *,
    time_budget_s: float | None = 60.0,
    step_budget: int | None = None,
    memory_budget_bytes: int | None = MEMORY_BUDGET_BYTES_DEFAULT,
) -> CheckResult:
    """Decide whether a key-value history is linearizable.

    ``time_budget_s`` and ``step_budget`` bound the whole check, and
    ``memory_budget_bytes`` (roughly) the cache of any one search (``None``: no
    bound). Keys are checked smallest first; a key left undecided when the
    budget runs out is ``unknown``, and so is the verdict unless another key
    has a violation. Raises ``HistoryError`` on duplicate operation ids.
    """
    start = time.monotonic()
    ops = distinct_ops(ops, Operation, "an Operation")
    by_key: dict[str, list[Operation]] = defaultdict(list)
    for o in ops:
        by_key[o.key].append(o)
    budget = _Budget(time_budget_s, step_budget, memory_budget_bytes)
    results = [
        _check_key(key, key_ops, budget)
        for key, key_ops in sorted(by_key.items(), key=lambda kv: (len(kv[1]), kv[0]))
    ]
    results.sort(key=lambda r: r.key)
    verdicts = {r.verdict for r in results}
    verdict = "violation" if "violation" in verdicts else "unknown" if "unknown" in verdicts else "ok"
    return CheckResult(
        verdict=verdict,
        keys=tuple(results),
        ops_total=len(ops),
        ops_checked=sum(r.ops for r in results),
        steps=budget.steps_used,
        elapsed_s=time.monotonic() - start,
        budget_exhausted=budget.exhausted,
        budget_reason=budget.reason,
    )
