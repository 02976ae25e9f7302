"""The workload: concurrent clients doing Put/Get/Delete, every operation recorded.

Rules
-----
* Each client is one logical, sequential process (one operation in flight)
  with its own gRPC channels, one per node, each its own connection
  (``grpc.use_local_subchannel_pool``): clients never share a connection.
  Client ``c`` has the home node ``1 + c % n``: its operations start there,
  so the load is spread over every node, followers included.
* Keys come from a small set (``k0`` ... ``k{keys-1}``) so operations conflict.
  Every put writes a value unique in the history (``<client>-<seq>``), so a
  value read names the write that made it.
* Put and Delete carry ``RequestHeader(client_id, sequence)``; a retry of
  one operation reuses the pair, so it is applied at most once, and a retry
  that reaches the cluster after the first attempt was applied is answered
  with the first result.
* Outcomes, as the checker defines them (``paxoskv.check``):

  - ``ok``: an answer arrived (for a write after any number of retries).
  - ``fail``: surely not applied: INVALID_ARGUMENT or FAILED_PRECONDITION on
    the first attempt (a later attempt cannot make an earlier one undone).
  - ``unknown``: everything else once the operation's deadline passed:
    UNAVAILABLE (a forwarded command may still be chosen), DEADLINE_EXCEEDED,
    a broken connection. Never dropped.

* An attempt that fails with a retryable code is retried on another node:
  the leader named in the ``paxoskv-leader`` trailing metadata if any, else
  the next node in turn, after a short backoff, until the operation's
  deadline (``op_timeout_s``). Each attempt has its own deadline
  (``attempt_timeout_s``), so a paused node costs one attempt, not the op.
* Times are the campaign clock (seconds since the campaign started), taken
  immediately before the first attempt and immediately after the answer.
* ``p_batch``: that share of a client's steps is one ``PackedBatch`` call
  of ``batch_ops`` writes (puts and deletes on random keys, one
  ``BatchRequest.request`` for all: the k-th has sequence first + k). Each
  write is recorded as an operation of its own over the call's interval. A
  retry resends the same call, so a batch applied twice (its retry applied
  again instead of answered from the session) puts an old value back and
  the checker sees it. A write refused STALE_SEQUENCE after a retry is
  recorded unknown and counted in ``notes`` (it should never happen).
  UNIMPLEMENTED (a cluster not known to take packed batches everywhere yet)
  means nothing was proposed: the call is tried again.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import grpc

from paxoskv.check import Operation, Recorder
from paxoskv.tls import ClientTLS, aio_channel
from paxoskv.wire import INVALID, STALE, parse_leader_hint, status_code
from paxoskv.v1 import kv_pb2, kv_pb2_grpc

__all__ = ["ClientStats", "Workload", "WorkloadConfig", "channel_options", "dial"]

_RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
_SURELY_NOT_APPLIED = {INVALID, STALE}


def channel_options(tag: str) -> list[tuple[str, object]]:
    """Options for one private connection that notices a dead node fast."""
    return [
        ("grpc.use_local_subchannel_pool", 1),
        ("grpc.primary_user_agent", f"paxoskv-chaos/{tag}"),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 500),
        ("grpc.enable_retries", 0),
    ]


def dial(target: str, tag: str, tls: ClientTLS | None) -> grpc.aio.Channel:
    """One private connection (``channel_options``) to ``target``: TLS with ``tls``, plaintext without."""
    return aio_channel(target, tls, channel_options(tag))


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkloadConfig:
    clients: int = 12
    keys: int = 5
    p_get: float = 0.5
    p_delete: float = 0.1  # the rest are puts
    op_timeout_s: float = 3.0
    attempt_timeout_s: float = 1.0
    backoff_s: float = 0.02
    think_s_max: float = 0.0  # pause between one client's operations, uniform in [0, max]
    p_batch: float = 0.0  # share of steps that are a packed batch of batch_ops writes
    batch_ops: int = 3

    def __post_init__(self) -> None:
        assert self.clients >= 1 and self.keys >= 1
        assert 0 <= self.p_get and 0 <= self.p_delete and self.p_get + self.p_delete <= 1
        assert 0 <= self.p_batch <= 1 and self.batch_ops >= 1
        assert 0 < self.attempt_timeout_s <= self.op_timeout_s


@dataclass(slots=True)
class ClientStats:
    attempts: int = 0
    retries: int = 0
    batches: int = 0  # PackedBatch calls
    batch_retries: int = 0  # of them, those sent more than once
    errors: Counter = field(default_factory=Counter)  # status code name -> attempts


class _Client:
    def __init__(
        self, wl: Workload, index: int, targets: dict[int, str], rng: random.Random, run_tag: str
    ) -> None:
        self.wl = wl
        self.name = f"c{index}"
        self.client_id = f"{run_tag}-c{index}"
        ids = sorted(targets)
        self.home = ids[index % len(ids)]
        self.ids = ids
        self.rng = rng  # what to do: the same operations for the same seed
        self.jitter = random.Random(rng.random())  # backoff: how often it retries must not shift the ops
        self.seq = 0
        self.channels = {
            i: dial(t, f"{self.name}-n{i}", wl.tls) for i, t in targets.items()
        }
        self.stubs = {i: kv_pb2_grpc.KVStub(ch) for i, ch in self.channels.items()}

    async def close(self) -> None:
        for ch in self.channels.values():
            await ch.close(grace=None)

    async def run(self, stop: asyncio.Event) -> None:
        cfg = self.wl.cfg
        while not stop.is_set():
            await self.one()
            if cfg.think_s_max > 0:
                await asyncio.sleep(self.rng.uniform(0, cfg.think_s_max))

    async def one(self) -> Operation:
        cfg = self.wl.cfg
        if cfg.p_batch > 0 and self.rng.random() < cfg.p_batch:
            return (await self.batch())[-1]
        key = f"k{self.rng.randrange(cfg.keys)}"
        r = self.rng.random()
        kind = "get" if r < cfg.p_get else "delete" if r < cfg.p_get + cfg.p_delete else "put"
        if kind == "get":
            return await self._do(kind, key, None, lambda: kv_pb2.GetRequest(key=key.encode()))
        self.seq += 1
        hdr = kv_pb2.RequestHeader(client_id=self.client_id, sequence=self.seq)
        if kind == "put":
            value = f"{self.name}-{self.seq}"
            return await self._do(
                kind,
                key,
                value,
                lambda: kv_pb2.PutRequest(request=hdr, key=key.encode(), value=value.encode()),
            )
        return await self._do(kind, key, None, lambda: kv_pb2.DeleteRequest(request=hdr, key=key.encode()))

    async def _do(self, kind: str, key: str, value: str | None, make) -> Operation:
        wl = self.wl
        stats = wl.stats
        req = make()
        op_id = wl.recorder.invoke(self.name, kind, key, value)
        wl.invoked += 1
        if kind == "put":
            wl.on_write()
        node = self.home
        maybe_applied = False
        last_code: str = ""
        async for timeout_s in self._attempts():
            stub = self.stubs[node]
            method = {"get": stub.Get, "put": stub.Put, "delete": stub.Delete}[kind]
            try:
                resp = await method(req, timeout=timeout_s)
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                last_code = code.name
                stats.errors[code.name] += 1
                if code in _SURELY_NOT_APPLIED:
                    if maybe_applied:
                        break  # an earlier attempt may have been applied: unknown
                    wl.notes[f"{kind} {code.name}: {exc.details()}"] += 1
                    return wl.recorder.complete(op_id, "fail")
                maybe_applied = maybe_applied or kind != "get"
                node = self._next(node, exc)
                continue
            if kind == "get":
                out = resp.value.decode() if resp.found else None
                return wl.recorder.complete(op_id, "ok", output_value=out)
            existed = resp.existed if kind == "put" else resp.deleted
            return wl.recorder.complete(op_id, "ok", output_existed=bool(existed))
        wl.notes[f"{kind} unknown (last error {last_code or 'none'})"] += 1
        return wl.recorder.complete(op_id, "unknown")

    async def batch(self) -> list[Operation]:
        """One PackedBatch call of ``batch_ops`` writes; one operation each."""
        cfg = self.wl.cfg
        writes: list[tuple[str, str, str | None]] = []
        req = kv_pb2.BatchRequest(request=kv_pb2.RequestHeader(client_id=self.client_id, sequence=self.seq + 1))
        for _ in range(cfg.batch_ops):
            key = f"k{self.rng.randrange(cfg.keys)}"
            self.seq += 1
            if self.rng.random() < cfg.p_delete:
                writes.append(("delete", key, None))
                req.ops.add().delete.key = key.encode()
            else:
                value = f"{self.name}-{self.seq}"
                writes.append(("put", key, value))
                put = req.ops.add().put
                put.key, put.value = key.encode(), value.encode()
        wl = self.wl
        stats = wl.stats
        op_ids = [wl.recorder.invoke(self.name, kind, key, value) for kind, key, value in writes]
        wl.invoked += len(writes)
        stats.batches += 1
        wl.on_write()
        node = self.home
        attempt = 0
        maybe_applied = False
        last_code = ""
        async for timeout_s in self._attempts():
            attempt += 1
            stats.batch_retries += attempt == 2  # a call sent more than once
            retry_code = ""
            applied = True  # whether this attempt may have been applied
            try:
                resp = await self.stubs[node].PackedBatch(req, timeout=timeout_s)
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                stats.errors[code.name] += 1
                if code == grpc.StatusCode.UNIMPLEMENTED:
                    # Refused before anything was proposed: a cluster not known
                    # to take packed batches everywhere yet (a leader that has
                    # not heard every member since it started). Try again.
                    applied = False
                if code in _SURELY_NOT_APPLIED:
                    if maybe_applied:
                        last_code = code.name
                        break  # an earlier attempt may have been applied: unknown
                    wl.notes[f"batch {code.name}: {exc.details()}"] += 1
                    return [wl.recorder.complete(i, "fail") for i in op_ids]
                retry_code = code.name
                next_node = self._next(node, exc)
            else:
                codes = {status_code(r.code) for r in resp.results}
                if len(resp.results) == len(writes) and codes <= {grpc.StatusCode.OK} | _RETRYABLE and codes & _RETRYABLE:
                    retry_code = next(iter(codes & _RETRYABLE)).name  # the call's writes were refused together
                    stats.errors[retry_code] += 1
                    next_node = self.ids[(self.ids.index(node) + 1) % len(self.ids)]
                else:
                    return self._batch_outcomes(op_ids, writes, resp, maybe_applied)
            last_code = retry_code
            maybe_applied = maybe_applied or applied
            node = next_node
        wl.notes[f"batch unknown (last error {last_code or 'none'})"] += 1
        return [wl.recorder.complete(i, "unknown") for i in op_ids]

    def _batch_outcomes(self, op_ids, writes, resp, maybe_applied: bool) -> list[Operation]:  # noqa: ANN001
        wl = self.wl
        out = []
        if len(resp.results) != len(writes):
            wl.notes["batch answered with the wrong number of results"] += 1
            return [wl.recorder.complete(i, "unknown") for i in op_ids]
        for op_id, (kind, _key, _value), r in zip(op_ids, writes, resp.results):
            if r.code == 0:
                existed = r.put.existed if kind == "put" else r.delete.deleted
                out.append(wl.recorder.complete(op_id, "ok", output_existed=bool(existed)))
            elif (code := status_code(r.code)) in _SURELY_NOT_APPLIED and not maybe_applied:
                wl.notes[f"batch {kind} {code.name}: {r.error}"] += 1
                out.append(wl.recorder.complete(op_id, "fail"))
            else:
                if status_code(r.code) == STALE:
                    wl.notes["batch STALE_SEQUENCE after a retry (should never happen)"] += 1
                out.append(wl.recorder.complete(op_id, "unknown"))
        return out

    async def _attempts(self) -> AsyncIterator[float]:
        """The timeout of each attempt of one operation until its deadline
        (``op_timeout_s`` from now), each at most ``attempt_timeout_s``;
        counts attempts and retries, and backs off with jitter between them."""
        wl = self.wl
        cfg = wl.cfg
        clock = wl.clock
        deadline = clock() + cfg.op_timeout_s
        tried = 0
        while True:
            if tried:
                await asyncio.sleep(min(cfg.backoff_s * (1 + self.jitter.random()), max(0.0, deadline - clock())))
            remaining = deadline - clock()
            if remaining <= 0:
                return
            wl.stats.attempts += 1
            if tried:
                wl.stats.retries += 1
            tried += 1
            yield min(cfg.attempt_timeout_s, remaining)

    def _next(self, node: int, exc: grpc.aio.AioRpcError) -> int:
        hint = _leader_hint(exc)
        if hint is not None and hint in self.stubs and hint != node:
            return hint
        return self.ids[(self.ids.index(node) + 1) % len(self.ids)]


async def stop_clients(stop: asyncio.Event, tasks: list[asyncio.Task], clients, timeout_s: float) -> None:  # noqa: ANN001
    """Set ``stop``, wait up to ``timeout_s`` for the client tasks (cancel the
    rest; re-raise a task's exception), then close every client."""
    stop.set()
    if tasks:
        await asyncio.wait(tasks, timeout=timeout_s)
        for t in tasks:
            if not t.done():
                t.cancel()
        for t in tasks:
            if t.done() and not t.cancelled() and t.exception() is not None:
                raise t.exception()
    for c in clients:
        await c.close()


def _leader_hint(exc: grpc.aio.AioRpcError) -> int | None:
    try:
        md = exc.trailing_metadata() or ()
    except Exception:  # noqa: BLE001 - a broken call may have no metadata
        return None
    hint = parse_leader_hint(md)
    return hint[0] if hint is not None else None


class Workload:
    """``clients`` concurrent clients against ``targets`` (node id -> host:port),
    over TLS with ``tls`` (its client certificate included)."""

    def __init__(
        self,
        cfg: WorkloadConfig,
        targets: dict[int, str],
        *,
        seed: int,
        clock: Callable[[], float] = time.monotonic,
        run_tag: str = "chaos",
        on_write: Callable[[], None] = lambda: None,
        tls: ClientTLS | None = None,
    ) -> None:
        self.cfg = cfg
        self.tls = tls
        self.clock = clock
        self.recorder = Recorder(clock)
        self.stats = ClientStats()
        self.notes: Counter = Counter()
        self.on_write = on_write
        self.invoked = 0  # operations invoked so far
        self.clients = [
            _Client(self, c, targets, random.Random(f"{seed}/client/{c}"), run_tag)
            for c in range(cfg.clients)
        ]
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(c.run(self._stop), name=c.name) for c in self.clients]

    async def stop(self) -> None:
        """Let every client finish its operation in flight (bounded by its deadline)."""
        await stop_clients(self._stop, self._tasks, self.clients, self.cfg.op_timeout_s + 5.0)

    def history(self) -> list[Operation]:
        return self.recorder.history()
