"""Simulated clients: concurrent Put/Get/Delete with timeouts and retries.

Rules:

- A client runs one operation at a time: think, invoke, attempt, wait.
- An attempt goes to a random node. A write carries ``(client_id, sequence)``;
  sequences start at 1 and grow by one per new write; every retry of a write
  keeps its sequence (exactly-once is the state machine's job).
- An attempt ends by an answer, a refusal (the node knows no leader, or could
  not confirm a read) or a timeout. A refusal or timeout leads to a retry on
  another node after a capped exponential backoff with jitter. An answer to
  any attempt of the current operation completes it; answers for operations
  already over are ignored.
- A write whose attempt timed out may have entered the log (``maybe_applied``).
  In the safety phase a client may give up after ``give_up_attempts`` attempts:
  the operation ends ``unknown`` (or ``fail`` if no attempt can have reached a
  log) and the client moves on. In the liveness phase clients never give up.
- Answers: ``("applied", result)`` for a write (a kv ``CommandResult``),
  ``("value", bytes | None)`` for a read, ``("refused", None)``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Protocol

from paxoskv.sim.history import DELETE, FAIL, GET, OK, PENDING, PUT, UNKNOWN, Operation
from paxoskv.sim.scheduler import Scheduler


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


@dataclass(frozen=True, slots=True)
class Request:
    """A client attempt on its way to a node."""

    client: Client
    op: Operation
    token: int  # the attempt number
    node_id: int


class ClientEnv(Protocol):
    scheduler: Scheduler
    node_ids: tuple[int, ...]
    keys: tuple[bytes, ...]
    history: list[Operation]
    trace: list[str] | None  # None: no trace is kept (skip formatting notes)

    def take_op(self) -> bool:
        """May a new operation start now? (consumes the run's operation budget)"""

    def may_give_up(self) -> bool:
        """True in the safety phase only."""

    def send_request(self, req: Request) -> None: ...

    def client_idle(self, client: Client) -> None: ...

    def violation(self, kind: str, detail: str) -> None: ...

    def note(self, text: str) -> None: ...


class Client:
    __slots__ = (
        "env",
        "client_id",
        "rng",
        "params",
        "sequence",
        "op",
        "_failures",
        "_last_node",
        "_sched",
        "_kinds",
    )

    def __init__(
        self, env: ClientEnv, client_id: str, rng: random.Random, params: ClientParams
    ) -> None:
        self.env = env
        self.client_id = client_id
        self.rng = rng
        self.params = params
        self.sequence = 0
        self.op: Operation | None = None
        self._failures = 0
        self._last_node = 0
        self._sched = env.scheduler
        self._kinds = (
            [PUT] * params.put_weight + [GET] * params.get_weight + [DELETE] * params.delete_weight
        )

    @property
    def busy(self) -> bool:
        return self.op is not None

    def start(self) -> None:
        self._sched.after(self._think_us(), self._next_op)

    def _think_us(self) -> int:
        return self.rng.randint(self.params.think_min_us, self.params.think_max_us)

    # ---- Operations -----------------------------------------------------------

    def _next_op(self, _: Any = None) -> None:
        assert self.op is None
        if not self.env.take_op():
            self.env.client_idle(self)
            return
        rng = self.rng
        kind = rng.choice(self._kinds)
        key = rng.choice(self.env.keys)
        value = None
        sequence = 0
        if kind != GET:
            self.sequence += 1
            sequence = self.sequence
            if kind == PUT:
                value = f"{self.client_id}.{sequence}".encode()
        op = Operation(
            op_id=len(self.env.history),
            client_id=self.client_id,
            kind=kind,
            key=key,
            value=value,
            sequence=sequence,
            call_us=self._sched.now_us,
        )
        self.env.history.append(op)
        if self.env.trace is not None:
            self.env.note(f"{self.client_id} invoke: {op.describe()}")
        self.op = op
        self._failures = 0
        self._last_node = 0
        self._attempt(op.op_id)

    def _attempt(self, op_id: int) -> None:
        op = self.op
        if op is None or op.op_id != op_id:
            return
        op.attempts += 1
        nodes = self.env.node_ids
        node_id = self.rng.choice(nodes)
        if node_id == self._last_node:  # "elsewhere": another node if the last one failed us
            node_id = nodes[(nodes.index(node_id) + 1) % len(nodes)]
        self._last_node = node_id
        self.env.send_request(Request(self, op, op.attempts, node_id))
        self._sched.after(self.params.timeout_us, self._timeout, (op_id, op.attempts))

    def _timeout(self, arg: tuple[int, int]) -> None:
        op_id, token = arg
        op = self.op
        if op is None or op.op_id != op_id or op.attempts != token:
            return
        if op.kind != GET:
            op.maybe_applied = True
        self._retry(op)

    def _retry(self, op: Operation) -> None:
        p = self.params
        if p.give_up_attempts and op.attempts >= p.give_up_attempts and self.env.may_give_up():
            self._finish(op, UNKNOWN if (op.maybe_applied or op.kind == GET) else FAIL)
            return
        self._failures += 1
        backoff = min(p.backoff_max_us, p.backoff_base_us << min(self._failures, 16))
        backoff = self.rng.randint(backoff // 2, backoff)
        self._sched.after(backoff, self._attempt, op.op_id)

    def on_answer(self, arg: tuple[int, int, str, Any]) -> None:
        """An answer from a node (already carried over the client link)."""
        op_id, token, what, payload = arg
        op = self.op
        if op is None or op.op_id != op_id:
            return  # an answer to an operation already over
        assert op.outcome == PENDING
        if what == "refused":
            if token == op.attempts:  # only the live attempt's refusal counts
                self._retry(op)
            return
        if what == "value":
            assert op.kind == GET
            op.value = payload
            self._finish(op, OK)
            return
        assert what == "applied" and op.kind != GET, (what, op)
        result = payload
        if result.code == result.OK:
            op.existed = bool(result.existed)
            self._finish(op, OK)
        elif result.code == result.INVALID:
            self._finish(op, FAIL)  # the state machine refused it: no effect
        else:
            # STALE_SEQUENCE for the client's newest sequence cannot happen
            # (the session never runs ahead of the client): a violation.
            self.env.violation("exactly-once", f"{op.describe()} answered {result}")
            self._finish(op, UNKNOWN)

    def _finish(self, op: Operation, outcome: str) -> None:
        op.finish(outcome, self._sched.now_us)
        if self.env.trace is not None:
            self.env.note(f"{self.client_id} done: {op.describe()}")
        self.op = None
        self._sched.after(self._think_us(), self._next_op)
