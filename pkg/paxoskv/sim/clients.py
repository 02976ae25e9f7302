"""Simulated clients: every client path the server has, with timeouts and retries.

Rules:

- A client runs one *call* at a time: think, invoke, attempt, wait. A call
  is one of the node layer's client calls, built as the gRPC facade builds
  it: a unary ``put``/``delete``/``get`` (a get linearizable or
  serializable), ``ops`` (``KV.Batch``, and ``KV.Session``'s groups: each
  write with a session of its own) or ``packed`` (``KV.PackedBatch``: one
  identity, sequences following the writes' order). A call of several
  operations records one history ``Operation`` per operation.
- An attempt goes to a random node (another one after a failure). A retry
  resends the operations still undecided with their same identities (a
  packed batch: all its writes), so exactly-once is the state machine's job.
- An answer is the node layer's ``Call``: per operation a result or a
  ``NodeError``, or an error for the whole call. UNAVAILABLE and
  DEADLINE_EXCEEDED are retried (a write may then have been applied,
  ``maybe_applied``, unless it was refused before it was proposed); INVALID_ARGUMENT ends the operation ``fail``, and is a
  violation unless the operation was drawn invalid on purpose (an empty or
  oversized key or value), which must never succeed; FAILED_PRECONDITION on
  a client's newest sequence is an exactly-once violation. A packed batch
  refused UNIMPLEMENTED on its first attempt goes per-op, as the Python
  client does.
- A ``txn`` call (``KV.Txn``, drawn with ``cas_weight``) is a v1 CAS on
  existence, which the register model expresses: put if the key is absent
  (``version == 0``) or present (``mod_revision > 0``), else read it. It
  is recorded as a put (``existed`` as the compare demanded) when it
  succeeded, as a get of the value its other branch read when not, and as
  ``fail`` when a retry found it had failed before (nothing written).
  Exactly-once: its retries carry the same (client_id, sequence).
- An anonymous client sends writes without identity: the node makes one up,
  so such a write is not exactly-once across retries, and is never retried
  once it may have been proposed (it ends ``unknown``).
- In the safety phase a client may give up after ``give_up_attempts``
  attempts (``unknown``, or ``fail`` if nothing of it can have reached a
  log). In the liveness phase clients never give up.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Protocol

from paxoskv.etcdpb import rpc_pb2
from paxoskv.kv.commands import Limits
from paxoskv.replica.errors import FailedPrecondition, InvalidArgument, NodeError, Unavailable, Unimplemented
from paxoskv.sim.history import DELETE, FAIL, GET, OK, PENDING, PUT, UNKNOWN, Operation
from paxoskv.sim.scheduler import Scheduler
from paxoskv.v1 import kv_pb2

__all__ = ["Client", "ClientParams", "Request", "SIM_LIMITS"]

# Small limits, so that over-the-limit requests are cheap to make.
SIM_LIMITS = Limits(key_bytes_max=16, value_bytes_max=48, client_id_bytes_max=64)

UNARY, OPS, PACKED, TXN = "unary", "ops", "packed", "txn"
CALL_BUDGET_US_MAX = 5_000_000  # the deadline of a call that never gives up


@dataclass(frozen=True, slots=True)
class ClientParams:
    """Per-run client behaviour, drawn from the seed."""

    think_min_us: int
    think_max_us: int
    timeout_us: int
    backoff_base_us: int
    backoff_max_us: int
    give_up_attempts: int  # 0: never give up
    put_weight: int
    get_weight: int
    delete_weight: int
    ops_weight: int = 0  # KV.Batch / Session groups
    packed_weight: int = 0  # KV.PackedBatch
    ops_max: int = 4  # operations per multi-op call
    serializable_share: float = 0.0  # of gets
    invalid_share: float = 0.0  # of operations, drawn invalid on purpose
    anonymous_share: float = 0.0  # of clients
    cas_weight: int = 0  # KV.Txn compare-and-swaps on existence


@dataclass(frozen=True, slots=True)
class Request:
    """A client attempt on its way to a node: ``form`` and ``payload`` as
    the facade hands them to the node layer (unary: the request message;
    ops/packed: ``(ops, request header or None)``)."""

    client: Client
    call_id: int
    token: int  # the attempt number
    node_id: int
    form: str
    payload: Any
    timeout_us: int  # the call's deadline at the node, from when it arrives

    def describe(self) -> str:
        return f"{self.client.client_id} call #{self.call_id} attempt {self.token} ({self.form})"


class ClientEnv(Protocol):
    scheduler: Scheduler
    node_ids: tuple[int, ...]
    keys: tuple[bytes, ...]
    history: list[Operation]
    trace: list[str] | None  # None: no trace is kept (skip formatting notes)

    def take_op(self) -> bool:
        """May a new call start now? (consumes the run's operation budget)"""

    def may_give_up(self) -> bool:
        """True in the safety phase only."""

    def send_request(self, req: Request) -> None: ...

    def client_idle(self, client: Client) -> None: ...

    def violation(self, kind: str, detail: str) -> None: ...

    def note(self, text: str) -> None: ...


@dataclass(slots=True)
class _Call:
    """The client's call in flight."""

    call_id: int
    form: str
    ops: list[Operation]
    reqs: list[kv_pb2.RequestOp]  # one per op (unary: its one op)
    invalid: set[int]  # positions drawn invalid on purpose
    packed: kv_pb2.RequestHeader | None = None
    absent: bool = False  # a txn: put if the key is absent (else if present)
    pending: list[int] = field(default_factory=list)
    sent: dict[int, tuple[int, ...]] = field(default_factory=dict)  # attempt -> positions it carried
    attempts: int = 0
    failures: int = 0


class Client:
    __slots__ = (
        "env",
        "client_id",
        "rng",
        "params",
        "anonymous",
        "sequence",
        "call",
        "_calls",
        "_writes",
        "_subsessions",
        "_last_node",
        "_sched",
        "_forms",
        "_kinds",
    )

    def __init__(self, env: ClientEnv, client_id: str, rng: random.Random, params: ClientParams) -> None:
        self.env = env
        self.client_id = client_id
        self.rng = rng
        self.params = params
        self.anonymous = params.anonymous_share > 0 and rng.random() < params.anonymous_share
        self.sequence = 0  # of the client's main session (unary writes, packed batches)
        self.call: _Call | None = None
        self._calls = 0
        self._writes = 0  # values written: <client>.<n>, unique per run
        self._subsessions = 0  # per-op batch writes: a session each, <client>.s<n>
        self._last_node = 0
        self._sched = env.scheduler
        self._kinds = [PUT] * params.put_weight + [GET] * params.get_weight + [DELETE] * params.delete_weight
        unary = params.put_weight + params.get_weight + params.delete_weight
        self._forms = [UNARY] * unary + [OPS] * params.ops_weight
        if not self.anonymous:  # a packed batch is an identity by definition
            self._forms += [PACKED] * params.packed_weight
            self._forms += [TXN] * params.cas_weight

    @property
    def busy(self) -> bool:
        return self.call is not None

    @property
    def op(self) -> Operation | None:
        """The first still-pending operation of the call in flight."""
        call = self.call
        if call is None:
            return None
        return next((op for op in call.ops if op.outcome == PENDING), None)

    def pending_ops(self) -> list[Operation]:
        call = self.call
        return [] if call is None else [op for op in call.ops if op.outcome == PENDING]

    def start(self) -> None:
        self._sched.after(self._think_us(), self._next_call)

    def _think_us(self) -> int:
        return self.rng.randint(self.params.think_min_us, self.params.think_max_us)

    # ---- Building calls -----------------------------------------------------------

    def _next_call(self, _: Any = None) -> None:
        assert self.call is None
        if not self.env.take_op():
            self.env.client_idle(self)
            return
        rng = self.rng
        form = rng.choice(self._forms)
        n = 1 if form in (UNARY, TXN) else rng.randint(1, self.params.ops_max)
        self._calls += 1
        call = _Call(self._calls, form, [], [], set())
        if form == TXN:
            self._make_cas(call)
            n = 0
        writes = 0
        for pos in range(n):
            kind = rng.choice(self._kinds)
            invalid = rng.random() < self.params.invalid_share
            op, req = self._make_op(kind, invalid, form, writes)
            writes += kind != GET
            if invalid:
                call.invalid.add(pos)
            call.ops.append(op)
            call.reqs.append(req)
        if form == PACKED and writes:
            call.packed = kv_pb2.RequestHeader(client_id=self.client_id, sequence=self.sequence + 1)
            self.sequence += writes
            k = 0
            for op in call.ops:
                if op.kind != GET:
                    op.sequence = call.packed.sequence + k
                    k += 1
        elif form == PACKED:
            call.form = OPS  # only gets: there is nothing to pack
        call.pending = list(range(len(call.ops)))
        for op in call.ops:
            op.op_id = len(self.env.history)
            self.env.history.append(op)
            if self.env.trace is not None:
                self.env.note(f"{self.client_id} invoke: {op.describe()}")
        self.call = call
        self._last_node = 0
        self._attempt(call.call_id)

    def _make_op(self, kind: str, invalid: bool, form: str, writes: int) -> tuple[Operation, kv_pb2.RequestOp]:
        rng = self.rng
        key = rng.choice(self.env.keys)
        value = None
        if kind == PUT:
            self._writes += 1
            value = f"{self.client_id}.{self._writes}".encode()
        if invalid:
            if kind != PUT or rng.random() < 0.5:
                key = b"" if rng.random() < 0.5 else b"K" * (SIM_LIMITS.key_bytes_max + 1)
            else:
                value = value.ljust(SIM_LIMITS.value_bytes_max + 1, b"x")
        header = None
        sequence = 0
        if kind != GET and not self.anonymous:
            if form == UNARY:
                self.sequence += 1
                header = kv_pb2.RequestHeader(client_id=self.client_id, sequence=self.sequence)
                sequence = self.sequence
            elif form == OPS:
                self._subsessions += 1
                header = kv_pb2.RequestHeader(client_id=f"{self.client_id}.s{self._subsessions}", sequence=1)
                sequence = 1
            # PACKED: the call's header, set once every op is drawn
        op = Operation(
            op_id=-1,  # numbered when the call is invoked
            client_id=header.client_id if header is not None and form == OPS else self.client_id,
            kind=kind,
            key=key,
            value=value,
            sequence=sequence,
            call_us=self._sched.now_us,
        )
        if kind == GET:
            op.serializable = rng.random() < self.params.serializable_share
            req = kv_pb2.RequestOp(get=kv_pb2.GetRequest(key=key, serializable=op.serializable))
        elif kind == PUT:
            req = kv_pb2.RequestOp(put=kv_pb2.PutRequest(request=header, key=key, value=value))
        else:
            req = kv_pb2.RequestOp(delete=kv_pb2.DeleteRequest(request=header, key=key))
        return op, req

    def _make_cas(self, call: _Call) -> None:
        """A put if ``key`` is absent or present, else a read of it (module rules)."""
        rng = self.rng
        key = rng.choice(self.env.keys)
        self._writes += 1
        value = f"{self.client_id}.{self._writes}".encode()
        self.sequence += 1
        call.absent = rng.random() < 0.5
        C = rpc_pb2.Compare
        compare = (
            C(key=key, target=C.VERSION, result=C.EQUAL, version=0)
            if call.absent
            else C(key=key, target=C.MOD, result=C.GREATER, mod_revision=0)
        )
        call.reqs.append(
            kv_pb2.TxnRequest(
                request=kv_pb2.RequestHeader(client_id=self.client_id, sequence=self.sequence),
                compare=[compare],
                success=[rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key, value=value))],
                failure=[rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=key))],
            )
        )
        call.ops.append(
            Operation(op_id=-1, client_id=self.client_id, kind=PUT, key=key, value=value, sequence=self.sequence, call_us=self._sched.now_us)
        )

    def _per_op(self, call: _Call) -> None:
        """A packed batch refused before anything was applied: the per-op
        form, a session per write (the packed sequences are left unused)."""
        call.form = OPS
        call.packed = None
        for pos, (op, req) in enumerate(zip(call.ops, call.reqs)):
            if op.kind == GET:
                continue
            self._subsessions += 1
            header = kv_pb2.RequestHeader(client_id=f"{self.client_id}.s{self._subsessions}", sequence=1)
            body = req.put if op.kind == PUT else req.delete
            body.request.CopyFrom(header)
            op.client_id, op.sequence = header.client_id, 1

    # ---- Attempts -----------------------------------------------------------------

    def _attempt(self, call_id: int) -> None:
        call = self.call
        if call is None or call.call_id != call_id:
            return
        call.attempts += 1
        nodes = self.env.node_ids
        node_id = self.rng.choice(nodes)
        if node_id == self._last_node:  # "elsewhere": another node if the last one failed us
            node_id = nodes[(nodes.index(node_id) + 1) % len(nodes)]
        self._last_node = node_id
        positions = call.pending
        if call.packed is not None and any(call.ops[i].kind != GET and call.ops[i].outcome == PENDING for i in range(len(call.ops))):
            writes = [i for i, op in enumerate(call.ops) if op.kind != GET]
            positions = sorted(set(positions) | set(writes))  # a packed batch's writes go together
        positions = tuple(positions)
        call.sent[call.attempts] = positions
        for i in positions:
            call.ops[i].attempts += 1
        if call.form == TXN:
            payload, form = call.reqs[0], TXN
        elif call.form == UNARY:
            req = call.reqs[0]
            kind = req.WhichOneof("op")
            payload = getattr(req, kind)
            form = kind
        else:
            payload = ([call.reqs[i] for i in positions], call.packed)
            form = call.form
        p = self.params
        # The call's deadline, as a real client's gRPC deadline: what is left
        # of its budget (the attempts it may still make), not this attempt's
        # timeout, after which it only tries elsewhere too.
        if p.give_up_attempts and self.env.may_give_up():
            budget_us = (p.give_up_attempts - call.attempts + 1) * p.timeout_us
        else:
            budget_us = CALL_BUDGET_US_MAX
        self.env.send_request(Request(self, call.call_id, call.attempts, node_id, form, payload, budget_us))
        self._sched.after(p.timeout_us, self._timeout, (call.call_id, call.attempts))

    def _timeout(self, arg: tuple[int, int]) -> None:
        call_id, token = arg
        call = self.call
        if call is None or call.call_id != call_id or call.attempts != token:
            return
        for i in call.sent[token]:
            op = call.ops[i]
            if op.outcome == PENDING and op.kind != GET:
                op.maybe_applied = True
                if self.anonymous:
                    self._finish_op(op, UNKNOWN)
        self._retry(call)

    def _retry(self, call: _Call) -> None:
        call.pending = [i for i, op in enumerate(call.ops) if op.outcome == PENDING]
        if not call.pending:
            self._end_call()
            return
        p = self.params
        if p.give_up_attempts and call.attempts >= p.give_up_attempts and self.env.may_give_up():
            for i in call.pending:
                op = call.ops[i]
                self._finish_op(op, UNKNOWN if (op.maybe_applied or op.kind == GET) else FAIL)
            self._end_call()
            return
        call.failures += 1
        backoff = min(p.backoff_max_us, p.backoff_base_us << min(call.failures, 16))
        backoff = self.rng.randint(backoff // 2, backoff)
        self._sched.after(backoff, self._attempt, call.call_id)

    # ---- Answers ------------------------------------------------------------------

    def on_answer(self, arg: tuple[int, int, Any]) -> None:
        """An answer from a node (already carried over the client link): the
        node layer's finished ``Call``."""
        call_id, token, answer = arg
        call = self.call
        if call is None or call.call_id != call_id:
            return  # an answer to a call already over
        positions = call.sent[token]
        if answer.error is not None:
            self._whole_error(call, token, answer.error)
            return
        for i, result in zip(positions, answer.results):
            op = call.ops[i]
            if op.outcome != PENDING:
                continue
            self._op_answer(call, i, op, result)
        call.pending = [i for i, op in enumerate(call.ops) if op.outcome == PENDING]
        if not call.pending:
            self._end_call()
        elif token == call.attempts:  # the live attempt left some undecided: retry them
            self._retry(call)

    def _op_answer(self, call: _Call, i: int, op: Operation, result: object) -> None:
        invalid = i in call.invalid
        if isinstance(result, NodeError):
            if isinstance(result, InvalidArgument):
                if not invalid:
                    self.env.violation("invalid", f"{op.describe()} refused as invalid: {result}")
                self._finish_op(op, FAIL)
            elif isinstance(result, FailedPrecondition):
                # The session never runs ahead of the client: a violation.
                self.env.violation("exactly-once", f"{op.describe()} answered {result}")
                self._finish_op(op, UNKNOWN)
            elif op.kind != GET and (not isinstance(result, Unavailable) or result.proposed):
                op.maybe_applied = True  # UNAVAILABLE, DEADLINE_EXCEEDED: it may be in the log
                if self.anonymous:
                    self._finish_op(op, UNKNOWN)
            return
        if invalid:
            self.env.violation("invalid", f"{op.describe()} was drawn invalid but answered {result!r}")
            self._finish_op(op, UNKNOWN)
            return
        if call.form == TXN:
            self._cas_answer(call, op, result[0])
            return
        if op.kind == GET:
            value = result[0]  # (value, applied index, revision)
            op.value = value
        else:
            op.existed = bool(result.existed)
        self._finish_op(op, OK)

    def _cas_answer(self, call: _Call, op: Operation, resp: object) -> None:
        if resp.succeeded:  # type: ignore[attr-defined]
            op.existed = not call.absent
            self._finish_op(op, OK)
        elif isinstance(resp, kv_pb2.CommandResult):
            self._finish_op(op, FAIL)  # a retry: it failed the first time, nothing written
        else:
            # The other branch read the key: a get, at the txn's moment.
            kvs = resp.responses[0].response_range.kvs  # type: ignore[attr-defined]
            op.kind, op.sequence = GET, 0
            op.value = kvs[0].value if kvs else None
            self._finish_op(op, OK)

    def _whole_error(self, call: _Call, token: int, error: NodeError) -> None:
        if isinstance(error, Unimplemented) and call.packed is not None and token == 1 and call.attempts == 1:
            self._per_op(call)  # nothing of the first attempt was applied
            self._sched.after(0, self._attempt, call.call_id)
            return
        if isinstance(error, InvalidArgument):
            self.env.violation("invalid", f"{self.client_id} call #{call.call_id} refused as a whole: {error}")
            for i in call.sent[token]:
                if call.ops[i].outcome == PENDING:
                    self._finish_op(call.ops[i], FAIL)
            if not any(op.outcome == PENDING for op in call.ops):
                self._end_call()
            return
        if token == call.attempts:  # UNAVAILABLE (a node stopping), UNIMPLEMENTED later on: retry
            self._retry(call)

    def _finish_op(self, op: Operation, outcome: str) -> None:
        op.finish(outcome, self._sched.now_us)
        if self.env.trace is not None:
            self.env.note(f"{self.client_id} done: {op.describe()}")

    def _end_call(self) -> None:
        self.call = None
        self._sched.after(self._think_us(), self._next_call)
