"""One worker process: an asyncio loop keeping ``concurrency`` operations in flight.

Rules:

- The process talks to its parent only through ``events`` (a
  multiprocessing queue): ``("ready", index)`` once it is connected, the
  target answered and its share of the keys is pre-filled; ``("progress",
  index, completed, errors, measured)`` every ``PROGRESS_PERIOD_S``;
  ``("done", index, WorkerResult)`` at the end, or ``("failed", index,
  text)`` if it could not run. It then exits. An endpoint that answers
  UNIMPLEMENTED to the setup read does not serve the target's service: the
  worker fails at once with ``UNIMPLEMENTED: <endpoint> does not serve
  <service>``, it does not wait out the connect timeout.
- After "ready" it waits for ``go`` and reads the shared start time; every
  process uses the same phase boundaries on the same clock
  (``time.monotonic_ns``, system-wide on Linux).
- An operation is recorded when it *completes* inside the measure window:
  its latency in the histogram of its kind (``get``/``put``) on success, its
  code in ``errors`` on failure. A failed operation makes its slot pause
  ``ERROR_PAUSE_S`` so a target that fails fast (no leader yet) is not
  flooded by a spinning client.
- After the window no slot starts a new operation; those in flight get
  ``timeout_s`` plus a second to finish and are then cancelled.
- CPU is not measured here: the runner samples every worker's and every
  server's CPU at the window's boundaries (``cpu.CpuWindow``), so a slow
  event loop cannot move the instants it is read at.
"""

from __future__ import annotations

import asyncio
import os
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from paxoskv.bench.histogram import Histogram
from paxoskv.bench.targets import CHANNEL_OPTIONS, TARGETS, Endpoint, OpFailed, SlotClient
from paxoskv.bench.workload import OpPicker, Workload
from paxoskv.tls import ClientTLS, aio_channel
from paxoskv.util.wait import WaitTimeout, wait_until_async

PROGRESS_PERIOD_S = 0.2
ERROR_PAUSE_S = 0.01


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerArgs:
    target: str
    mode: str
    endpoints: tuple[str, ...]
    workload: Workload
    concurrency: int
    batch_size: int
    process_index: int
    processes: int
    prefill: bool
    warmup_s: float
    duration_s: float
    timeout_s: float
    connect_timeout_s: float
    client_prefix: str
    tls: ClientTLS | None = None


@dataclass(slots=True)
class WorkerResult:
    histograms: dict[str, Histogram] = field(default_factory=lambda: {"get": Histogram(), "put": Histogram()})
    errors: Counter = field(default_factory=Counter)  # by status code
    errors_by_op: Counter = field(default_factory=Counter)  # by op kind ("get", "put")
    error_samples: dict[str, str] = field(default_factory=dict)
    completed: int = 0


class _Recorder:
    """Counts everything for the progress bar; records what falls in the window."""

    __slots__ = ("result", "measure_start_ns", "measure_end_ns", "completed", "failed", "measured")

    def __init__(self, measure_start_ns: int, measure_end_ns: int) -> None:
        self.result = WorkerResult()
        self.measure_start_ns = measure_start_ns
        self.measure_end_ns = measure_end_ns
        self.completed = 0
        self.failed = 0
        self.measured = 0

    def done(self, kind: str, latency_ns: int, error: OpFailed | None, end_ns: int) -> None:
        self.completed += 1
        if error is not None:
            self.failed += 1
        if not self.measure_start_ns <= end_ns < self.measure_end_ns:
            return
        self.measured += 1
        if error is None:
            self.result.histograms[kind].record(latency_ns)
        else:
            self.result.errors[error.code] += 1
            self.result.errors_by_op[kind] += 1
            self.result.error_samples.setdefault(error.code, str(error)[:300])

    def done_batch(self, ops: list[tuple[bool, int]], failures: list[OpFailed | None], latency_ns: int,
                   end_ns: int) -> bool:
        """The ops of one batch call, answered together (each op's failure
        with the server's own message, None for a success); True if one failed."""
        n = len(ops)
        self.completed += n
        bad = sum(1 for f in failures if f is not None)
        self.failed += bad
        if self.measure_start_ns <= end_ns < self.measure_end_ns:
            self.measured += n
            res = self.result
            if not bad:
                reads = sum(1 for is_read, _i in ops if is_read)
                if reads:
                    res.histograms["get"].record(latency_ns, reads)
                if n - reads:
                    res.histograms["put"].record(latency_ns, n - reads)
                return False
            for (is_read, _i), failure in zip(ops, failures, strict=True):
                kind = "get" if is_read else "put"
                if failure is None:
                    res.histograms[kind].record(latency_ns)
                else:
                    res.errors[failure.code] += 1
                    res.errors_by_op[kind] += 1
                    res.error_samples.setdefault(failure.code, str(failure)[:300])
        return bad > 0


async def _unary_loop(slot: SlotClient, picker: OpPicker, rec: _Recorder, end_ns: int, batch_size: int) -> None:
    clock = time.monotonic_ns
    get, put = slot.get, slot.put
    while True:
        t0 = clock()
        if t0 >= end_ns:
            return
        is_read, key = picker.next()
        error: OpFailed | None = None
        try:
            if is_read:
                await get(key)
            else:
                await put(key)
        except OpFailed as exc:
            error = exc
        t1 = clock()
        rec.done("get" if is_read else "put", t1 - t0, error, t1)
        if error is not None:
            await asyncio.sleep(ERROR_PAUSE_S)


async def _batch_loop(slot: SlotClient, picker: OpPicker, rec: _Recorder, end_ns: int, batch_size: int) -> None:
    clock = time.monotonic_ns
    while True:
        t0 = clock()
        if t0 >= end_ns:
            return
        ops = picker.batch(batch_size)
        try:
            failures: list[OpFailed | None] = await slot.batch(ops)
        except OpFailed as exc:
            failures = [exc] * len(ops)
        t1 = clock()
        if rec.done_batch(ops, failures, t1 - t0, t1):
            await asyncio.sleep(ERROR_PAUSE_S)


LoopFn = Callable[[SlotClient, OpPicker, _Recorder, int, int], Awaitable[None]]

# mode -> the closed loop one slot runs. ``stream`` is the unary loop over
# slots whose target sends each operation as a message of a shared stream;
# ``batch-per-op`` the batch loop whose target gives each write its own header.
MODE_LOOPS: dict[str, LoopFn] = {
    "unary": _unary_loop,
    "stream": _unary_loop,
    "batch": _batch_loop,
    "batch-per-op": _batch_loop,
}


class NotServed(RuntimeError):
    """The endpoint does not serve the target's service at all."""


async def _wait_ready(probe: SlotClient, endpoint: str, service: str, timeout_s: float) -> None:
    """Until a read of one key through ``endpoint`` succeeds (the target has
    a leader). UNIMPLEMENTED is final: the server lacks the service."""
    last: OpFailed | None = None

    async def answers() -> bool:
        nonlocal last
        try:
            await probe.get(0)
        except OpFailed as exc:
            if exc.code == "UNIMPLEMENTED":
                raise NotServed(f"UNIMPLEMENTED: {endpoint} does not serve {service} ({exc})") from None
            last = exc
            return False
        return True

    try:
        await wait_until_async(f"{endpoint} to answer a read", answers, timeout_s, interval_s=0.05)
    except WaitTimeout:
        raise RuntimeError(f"{endpoint} did not answer a read before the connect timeout: {last}") from None


async def _prefill(args: WorkerArgs, endpoints: list[Endpoint], codec: Any, prefix: str) -> None:
    """Write this process's share of the keys (index % processes == process_index).

    A failed write is retried (a leader change under load is normal) with a
    growing pause, until it succeeds or ``connect_timeout_s`` has passed
    since its first failure. Each filler is its own client session, so its
    writes carry sequences 1, 2, 3 ... in order.
    """
    mine = list(range(args.process_index, args.workload.keys, args.processes))

    target = TARGETS[args.target]

    async def filler(slot_index: int) -> None:
        probe = target.slot(endpoints, codec, f"{prefix}-fill{slot_index}", first=slot_index, timeout_s=args.timeout_s)
        for i in mine[slot_index :: args.concurrency]:
            give_up_at: float | None = None
            pause_s = 0.05
            while True:
                try:
                    await probe.put(i)
                    break
                except OpFailed as exc:
                    now = time.monotonic()
                    give_up_at = give_up_at or now + args.connect_timeout_s
                    if now >= give_up_at:
                        raise RuntimeError(f"pre-fill of key {i} kept failing: {exc}") from None
                    await asyncio.sleep(pause_s)
                    pause_s = min(1.0, pause_s * 2)

    await asyncio.gather(*(filler(s) for s in range(min(args.concurrency, max(1, len(mine))))))


def _slot_endpoints(endpoints: list[Endpoint], args: WorkerArgs, slot: int) -> list[Endpoint]:
    """The endpoints slot ``slot`` of this process sends to, in turn.

    Each slot keeps to one endpoint, the slots of all processes dealt round
    robin over them, so every member carries the same number of calls in
    flight at every moment. (Rotating every slot over all members per call
    does not: in a closed loop the slots that one member answered together
    move on together, in waves, and a member with one core waits while
    another is swamped -- measured: half the calls per second against the
    Python gRPC stand-in.) With fewer slots in all than endpoints, every
    slot rotates per call, so a 1-in-flight latency job meets every member
    alike instead of the first one only.
    """
    n = len(endpoints)
    if args.processes * args.concurrency < n:
        k = (args.process_index * args.concurrency + slot) % n
        return [*endpoints[k:], *endpoints[:k]]
    return [endpoints[(args.process_index + slot) % n]]


async def _run(args: WorkerArgs, events: Any, go: Any, start_at: Any) -> WorkerResult:
    target = TARGETS[args.target]
    channels = [aio_channel(ep, args.tls, CHANNEL_OPTIONS) for ep in args.endpoints]
    endpoints: list[Endpoint] = []
    try:
        codec = target.codec(args.workload, os.urandom(args.workload.value_bytes))
        unary = [target.connect(ch, mode="unary") for ch in channels]
        endpoints = [target.connect(ch, mode=args.mode) for ch in channels]
        prefix = f"{args.client_prefix}-p{args.process_index}"
        probes = [
            target.slot([ep], codec, f"{prefix}-setup{i}", first=0, timeout_s=args.timeout_s) for i, ep in enumerate(unary)
        ]
        await asyncio.gather(
            *(_wait_ready(p, ep, target.service, args.connect_timeout_s) for p, ep in zip(probes, args.endpoints, strict=True))
        )
        if args.prefill and args.workload.read_share > 0:
            await _prefill(args, unary, codec, prefix)

        events.put(("ready", args.process_index))
        loop = asyncio.get_running_loop()
        if not await loop.run_in_executor(None, go.wait, args.connect_timeout_s + 600):
            raise RuntimeError("the parent never said go")
        start_ns = int(start_at.value * 1e9)
        measure_start_ns = start_ns + int(args.warmup_s * 1e9)
        measure_end_ns = measure_start_ns + int(args.duration_s * 1e9)
        rec = _Recorder(measure_start_ns, measure_end_ns)

        async def until(t_ns: int) -> None:
            await asyncio.sleep(max(0.0, (t_ns - time.monotonic_ns()) / 1e9))

        async def progress() -> None:
            while True:
                events.put(("progress", args.process_index, rec.completed, rec.failed, rec.measured))
                await asyncio.sleep(PROGRESS_PERIOD_S)

        await until(start_ns)
        loop_fn = MODE_LOOPS[args.mode]
        slots = [
            asyncio.create_task(
                loop_fn(
                    target.slot(_slot_endpoints(endpoints, args, s), codec, f"{prefix}-s{s}", first=0, timeout_s=args.timeout_s),
                    args.workload.picker(args.process_index, s),
                    rec,
                    measure_end_ns,
                    args.batch_size,
                )
            )
            for s in range(args.concurrency)
        ]
        reporter = asyncio.create_task(progress())
        await until(measure_end_ns)
        _done, pending = await asyncio.wait(slots, timeout=args.timeout_s + 1.0)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for task in slots:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        reporter.cancel()
        await asyncio.gather(reporter, return_exceptions=True)
        events.put(("progress", args.process_index, rec.completed, rec.failed, rec.measured))
        rec.result.completed = rec.measured
        return rec.result
    finally:
        for ep in endpoints:
            await ep.close()
        for ch in channels:
            await ch.close()


def worker_main(args: WorkerArgs, events: Any, go: Any, start_at: Any) -> None:
    """Entry point of a worker process."""
    try:
        result = asyncio.run(_run(args, events, go, start_at))
    except NotServed as exc:  # says it all: no traceback
        events.put(("failed", args.process_index, str(exc)))
        return
    except BaseException:  # report anything, even KeyboardInterrupt, to the parent
        events.put(("failed", args.process_index, traceback.format_exc(limit=8)))
        return
    events.put(("done", args.process_index, result))
