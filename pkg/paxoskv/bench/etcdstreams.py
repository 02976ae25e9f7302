"""etcd's streams under load: watch event latency and lease keep-alive throughput.

Two loads, both through etcd's v3 API, so they run against etcd and against
paxoskv's etcd API alike (``bench/compare`` jobs ``watch1``, ``watch1000``,
``keepalive``). The processes are driven as ``runner.run``'s are
(``runner.drive``: spawned, started together, CPU sampled over the measure
window on the clock every process shares).

Rules:

- **Watch** (``run_watch``): ``streams`` Watch streams dealt round robin
  over the endpoints and over ``processes`` watcher processes, each with
  ``watchers_per_stream`` watches of one key, ``WATCH_KEY``; one more
  process, the writer, puts that key at ``put_rate_s`` puts per second on a
  fixed schedule (open loop: a slow put does not delay the next, at most
  ``WRITES_IN_FLIGHT_MAX`` are in flight; one skipped for that counts as
  an error), the puts rotating over the endpoints. Each put's value carries
  the instant it was sent (``time.monotonic_ns``, system-wide on Linux), so
  a watcher gets an event's latency -- put sent to event received -- from
  the bytes it received, with nothing shared between processes. This is
  the shape of etcd's own ``benchmark watch-latency`` (streams x watchers
  per stream, one key, a put rate).
- Raw: every call is bytes in, bytes out; a watcher finds the send instants
  in a response's bytes (``_MARK``), it builds no message per event. A
  response without one is parsed: a cancel (or anything but a progress
  notification) is an error.
- An event counts in the latency histogram when it is received inside the
  measure window, a put when it is answered inside it. After the window
  the writer stops and publishes how many puts were answered in all; each
  stream then reads until it holds ``watchers_per_stream`` events for each
  of them, or for ``timeout_s``: what it lacks then is ``missing`` (an
  acknowledged put that some watcher never saw), which must be 0.
- **Keep-alive** (``run_keepalive``): each of ``processes`` processes
  grants its share of ``leases`` leases (TTL ``ttl_s``) in setup and opens
  its share of ``streams`` LeaseKeepAlive streams, dealt round robin over
  the endpoints, each cycling over its leases with ``depth`` requests in
  flight (etcd answers a stream's keep-alives in order, one at a time; so
  does paxoskv). An answer's latency is from its request's send; an answer
  with TTL <= 0 (the lease is unknown or expired) is an error.
"""

from __future__ import annotations

import asyncio
import collections
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import grpc

from paxoskv.bench.histogram import Histogram
from paxoskv.bench.runner import drive
from paxoskv.bench.targets import CHANNEL_OPTIONS, code_name
from paxoskv.etcdpb import rpc_pb2
from paxoskv.protowire import read_varint, varint
from paxoskv.tls import ClientTLS, aio_channel

__all__ = ["KeepAliveConfig", "KeepAliveResult", "WATCH_KEY", "WatchConfig", "WatchResult", "run_keepalive", "run_watch"]

WATCH_KEY = b"/paxoskv-bench/watch"
WRITES_IN_FLIGHT_MAX = 64
_MARK = b"<sent-ns:"  # in a put's value: _MARK, 19 digits, ">"
_STAMP = len(_MARK) + 19 + 1
_WATCH = "/etcdserverpb.Watch/Watch"
_PUT = "/etcdserverpb.KV/Put"
_GRANT = "/etcdserverpb.Lease/LeaseGrant"
_KEEPALIVE = "/etcdserverpb.Lease/LeaseKeepAlive"


@dataclass(frozen=True, slots=True, kw_only=True)
class _Phases:
    endpoints: tuple[str, ...]
    processes: int = 2
    warmup_s: float = 2.0
    duration_s: float = 10.0
    timeout_s: float = 10.0
    connect_timeout_s: float = 30.0
    server_pids: tuple[int, ...] = ()
    tls: ClientTLS | None = None

    def _check(self) -> None:
        if not self.endpoints:
            raise ValueError("at least one endpoint is needed")
        if self.processes < 1 or self.duration_s <= 0 or self.warmup_s < 0 or self.timeout_s <= 0:
            raise ValueError("processes must be >= 1, duration and timeout > 0, warmup >= 0")


@dataclass(frozen=True, slots=True, kw_only=True)
class WatchConfig(_Phases):
    streams: int = 1
    watchers_per_stream: int = 1
    put_rate_s: float = 10.0
    value_bytes: int = 100

    def __post_init__(self) -> None:
        self._check()
        if self.streams < 0 or self.watchers_per_stream < 1 or self.put_rate_s <= 0:
            raise ValueError("streams must be >= 0 (0: the writer alone), watchers per stream >= 1, the put rate > 0")
        if self.value_bytes < _STAMP:
            raise ValueError(f"a value must hold the send instant: at least {_STAMP} bytes")

    @property
    def watchers(self) -> int:
        return self.streams * self.watchers_per_stream


@dataclass(frozen=True, slots=True, kw_only=True)
class KeepAliveConfig(_Phases):
    leases: int = 1000
    ttl_s: int = 60
    streams: int = 8
    depth: int = 16

    def __post_init__(self) -> None:
        self._check()
        if self.streams < self.processes or self.leases < self.streams or self.depth < 1 or self.ttl_s < 1:
            raise ValueError("need streams >= processes, leases >= streams, depth >= 1, ttl >= 1 s")


@dataclass(slots=True)
class _Part:
    """What one process measured (sent to the parent with "done")."""

    hist: Histogram = field(default_factory=Histogram)  # events (watch) / keep-alives
    put_hist: Histogram = field(default_factory=Histogram)  # the writer's puts
    events_total: int = 0  # every phase
    missing: int = 0
    puts_answered: int = 0  # the writer's, every phase
    errors: collections.Counter = field(default_factory=collections.Counter)
    error_samples: dict[str, str] = field(default_factory=dict)

    def error(self, code: str, text: str) -> None:
        self.errors[code] += 1
        self.error_samples.setdefault(code, text[:300])


@dataclass(frozen=True, slots=True)
class WatchResult:
    config: WatchConfig
    events: Histogram  # put sent -> event received, events received in the window
    puts: Histogram  # the writer's puts answered in the window
    events_total: int  # events received in every phase
    puts_answered: int  # the writer's puts acknowledged in every phase
    missing: int  # events of acknowledged puts some watcher never received
    errors: dict[str, int]
    error_samples: dict[str, str]
    client_cpu_s: float
    server_cpu_s: float | None


@dataclass(frozen=True, slots=True)
class KeepAliveResult:
    config: KeepAliveConfig
    keepalives: Histogram  # answered in the window
    errors: dict[str, int]
    error_samples: dict[str, str]
    client_cpu_s: float
    server_cpu_s: float | None


@dataclass(frozen=True, slots=True)
class _Args:
    role: str  # "watch", "write", "keepalive"
    index: int  # among the processes of its role
    cfg: Any
    puts_answered: Any  # a shared int: -1 until the writer is done


# ---- the wire, by hand ----------------------------------------------------------


def _fields(raw: bytes) -> dict[int, int]:
    """The varint fields at the top of a message (length-delimited ones skipped)."""
    out: dict[int, int] = {}
    i = 0
    while i < len(raw):
        tag, i = read_varint(raw, i)
        if tag < 0:
            raise ValueError("a truncated tag")
        kind = tag & 7
        if kind == 0:
            out[tag >> 3], i = read_varint(raw, i)
        elif kind == 2:
            n, i = read_varint(raw, i)
            if n < 0:
                raise ValueError("a truncated length")
            i += n
        else:
            raise ValueError(f"unexpected wire type {kind}")
    return out


def _put_body(value_prefix: bytes, pad: bytes, sent_ns: int) -> bytes:
    """PutRequest{key: WATCH_KEY, value: MARK + sent_ns + ">" + pad}."""
    return value_prefix + b"%019d>" % sent_ns + pad


# ---- the watch load -------------------------------------------------------------


def _channels(cfg: _Phases) -> list[grpc.aio.Channel]:
    return [aio_channel(ep, cfg.tls, CHANNEL_OPTIONS) for ep in cfg.endpoints]


async def _open_watch(channel: grpc.aio.Channel, n: int, timeout_s: float) -> Any:
    """A Watch stream with ``n`` created watches of ``WATCH_KEY``."""
    create = rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(key=WATCH_KEY)).SerializeToString()
    call = channel.stream_stream(_WATCH)()
    for _ in range(n):
        await call.write(create)
    created = 0
    while created < n:
        raw = await asyncio.wait_for(call.read(), timeout_s)
        if raw is grpc.aio.EOF:
            raise RuntimeError(f"a Watch stream ended after {created} of {n} creates: {await call.code()}")
        resp = rpc_pb2.WatchResponse.FromString(raw)
        if not resp.created or resp.canceled:
            raise RuntimeError(f"a watch create was refused: {resp.cancel_reason or resp}")
        created += 1
    return call


async def _wait_answers(channels: list[grpc.aio.Channel], timeout_s: float) -> None:
    """Until every endpoint answers a Range (it has a leader)."""
    body = rpc_pb2.RangeRequest(key=WATCH_KEY).SerializeToString()
    deadline = time.monotonic() + timeout_s
    for ch in channels:
        method = ch.unary_unary("/etcdserverpb.KV/Range")
        while True:
            try:
                await method(body, timeout=5.0)
                break
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.UNIMPLEMENTED or time.monotonic() > deadline:
                    raise RuntimeError(f"an endpoint did not answer a Range: {code_name(exc.code().value[0])} "
                                       f"{exc.details()}") from None
                await asyncio.sleep(0.05)


class _StreamCount:
    __slots__ = ("got",)

    def __init__(self) -> None:
        self.got = 0  # events received, every phase


async def _watch_stream(call: Any, part: _Part, window: tuple[int, int], count: _StreamCount) -> None:
    """Read one stream until cancelled: each event's latency (by the
    send instant in its bytes) and the number of events."""
    start_ns, end_ns = window
    clock = time.monotonic_ns
    hist = part.hist
    mark, width = _MARK, len(_MARK)
    read = call.read  # not ``async for``: the creates were read with read(), and gRPC does not mix the two
    while (raw := await read()) is not grpc.aio.EOF:
        t1 = clock()
        i = raw.find(mark)
        if i < 0:
            resp = rpc_pb2.WatchResponse.FromString(raw)
            if resp.canceled or resp.events or not resp.header.revision:
                part.error("WATCH", f"an unexpected watch response: {str(resp)[:200]}")
            continue
        while i >= 0:
            count.got += 1
            if start_ns <= t1 < end_ns:
                hist.record(t1 - int(raw[i + width : i + width + 19]))
            i = raw.find(mark, i + _STAMP)
    part.error("EOF", f"a Watch stream ended: {await call.code()} {await call.details()}")


async def _watcher(args: _Args, events: Any, go: Any, start_at: Any) -> _Part:
    cfg: WatchConfig = args.cfg
    channels = _channels(cfg)
    part = _Part()
    try:
        await _wait_answers(channels, cfg.connect_timeout_s)
        mine = [s for s in range(cfg.streams) if s % cfg.processes == args.index]
        calls = [
            await _open_watch(channels[s % len(channels)], cfg.watchers_per_stream, cfg.connect_timeout_s) for s in mine
        ]
        events.put(("ready", args.index))
        window = await _wait_go(go, start_at, cfg)
        counts = [_StreamCount() for _ in calls]
        tasks = [asyncio.create_task(_watch_stream(c, part, window, n)) for c, n in zip(calls, counts, strict=True)]
        await _until(window[1])
        # after the window: until every stream holds the events of every acknowledged put
        per = cfg.watchers_per_stream
        deadline = time.monotonic() + cfg.timeout_s + 2.0
        while time.monotonic() < deadline:
            answered = args.puts_answered.value
            if answered >= 0 and all(n.got >= answered * per for n in counts):
                break
            await asyncio.sleep(0.02)
        answered = args.puts_answered.value
        if answered < 0:
            part.error("WRITER", "the writer did not finish in time: missing events not counted")
        else:
            part.missing += sum(max(0, answered * per - n.got) for n in counts)
        part.events_total += sum(n.got for n in counts)
        for c, t in zip(calls, tasks, strict=True):
            c.cancel()
            t.cancel()
        for t in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(t, Exception) and not isinstance(t, asyncio.CancelledError):
                raise t
        return part
    finally:
        for ch in channels:
            await ch.close()


async def _writer(args: _Args, events: Any, go: Any, start_at: Any) -> _Part:
    cfg: WatchConfig = args.cfg
    channels = _channels(cfg)
    part = _Part()
    # PutRequest: key (field 1), then value (field 2) whose bytes begin with MARK
    pad = b"x" * (cfg.value_bytes - _STAMP)
    prefix = rpc_pb2.PutRequest(key=WATCH_KEY).SerializeToString()
    value_prefix = prefix + b"\x12" + varint(cfg.value_bytes) + _MARK
    try:
        await _wait_answers(channels, cfg.connect_timeout_s)
        puts = [ch.unary_unary(_PUT) for ch in channels]
        events.put(("ready", args.index))
        start_ns, end_ns = await _wait_go(go, start_at, cfg)
        clock = time.monotonic_ns
        answered = 0
        in_flight: set[asyncio.Task] = set()

        async def one(k: int) -> None:
            nonlocal answered
            t0 = clock()
            try:
                await puts[k % len(puts)](_put_body(value_prefix, pad, t0), timeout=cfg.timeout_s)
            except grpc.aio.AioRpcError as exc:
                part.error(code_name(exc.code().value[0]), exc.details() or "")
                return
            t1 = clock()
            answered += 1
            if start_ns <= t1 < end_ns:
                part.put_hist.record(t1 - t0)

        period_ns = int(1e9 / cfg.put_rate_s)
        first_ns = int(start_at.value * 1e9)
        k = 0
        while True:
            due = first_ns + k * period_ns
            if due >= end_ns:
                break
            await _until(due)
            if len(in_flight) >= WRITES_IN_FLIGHT_MAX:
                part.error("BEHIND", f"{WRITES_IN_FLIGHT_MAX} puts in flight: one skipped")
            else:
                task = asyncio.create_task(one(k))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            k += 1
        if in_flight:
            await asyncio.wait(set(in_flight), timeout=cfg.timeout_s + 1.0)
        args.puts_answered.value = part.puts_answered = answered
        return part
    finally:
        if args.puts_answered.value < 0:
            args.puts_answered.value = 0  # the watchers must not wait for a writer that failed
        for ch in channels:
            await ch.close()


# ---- the keep-alive load --------------------------------------------------------


async def _grant(channels: list[grpc.aio.Channel], n: int, ttl_s: int, timeout_s: float) -> list[int]:
    body = rpc_pb2.LeaseGrantRequest(TTL=ttl_s).SerializeToString()
    grants = [ch.unary_unary(_GRANT) for ch in channels]
    ids: list[int] = []

    async def one(k: int) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                raw = await grants[k % len(grants)](body, timeout=5.0)
                break
            except grpc.aio.AioRpcError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)
        lease = _fields(raw).get(2, 0)  # LeaseGrantResponse.ID
        if lease <= 0:
            raise RuntimeError(f"LeaseGrant answered no lease id: {raw!r}")
        ids.append(lease)

    for first in range(0, n, 32):
        await asyncio.gather(*(one(k) for k in range(first, min(n, first + 32))))
    return ids


async def _keepalive_stream(call: Any, bodies: list[bytes], depth: int, part: _Part, window: tuple[int, int]) -> None:
    start_ns, end_ns = window
    clock = time.monotonic_ns
    hist = part.hist
    sent: collections.deque[int] = collections.deque()
    nxt = 0
    for _ in range(depth):
        sent.append(clock())
        await call.write(bodies[nxt])
        nxt = (nxt + 1) % len(bodies)
    while sent:
        raw = await call.read()
        if raw is grpc.aio.EOF:
            part.error(code_name((await call.code()).value[0]), await call.details() or "")
            break
        t1 = clock()
        t0 = sent.popleft()
        if _fields(raw).get(3, 0) <= 0:  # LeaseKeepAliveResponse.TTL
            part.error("TTL_0", "a keep-alive answered TTL 0: the lease is unknown or expired")
        elif start_ns <= t1 < end_ns:
            hist.record(t1 - t0)
        if t1 < end_ns:
            sent.append(clock())
            await call.write(bodies[nxt])
            nxt = (nxt + 1) % len(bodies)
    call.cancel()


async def _keepalive(args: _Args, events: Any, go: Any, start_at: Any) -> _Part:
    cfg: KeepAliveConfig = args.cfg
    channels = _channels(cfg)
    part = _Part()
    try:
        await _wait_answers(channels, cfg.connect_timeout_s)
        share = len(range(args.index, cfg.leases, cfg.processes))
        leases = await _grant(channels, share, cfg.ttl_s, cfg.connect_timeout_s)
        streams = [s for s in range(cfg.streams) if s % cfg.processes == args.index]
        calls = [channels[s % len(channels)].stream_stream(_KEEPALIVE)() for s in streams]
        per = [[b"\x08" + varint(lease) for lease in leases[j :: len(calls)]] for j in range(len(calls))]
        events.put(("ready", args.index))
        window = await _wait_go(go, start_at, cfg)
        tasks = [asyncio.create_task(_keepalive_stream(c, b, cfg.depth, part, window)) for c, b in zip(calls, per, strict=True)]
        _done, late = await asyncio.wait(tasks, timeout=(window[1] - time.monotonic_ns()) / 1e9 + cfg.timeout_s)
        for t in late:
            part.error("DEADLINE_EXCEEDED", f"a keep-alive stream had no answer {cfg.timeout_s} s after the window")
            t.cancel()
        for c in calls:
            c.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for t in _done:
            if t.exception() is not None:
                raise t.exception()  # type: ignore[misc]
        return part
    finally:
        for ch in channels:
            await ch.close()


# ---- processes ------------------------------------------------------------------


async def _until(t_ns: int) -> None:
    await asyncio.sleep(max(0.0, (t_ns - time.monotonic_ns()) / 1e9))


async def _wait_go(go: Any, start_at: Any, cfg: _Phases) -> tuple[int, int]:
    """Wait for the parent's go; the measure window, in monotonic ns."""
    loop = asyncio.get_running_loop()
    if not await loop.run_in_executor(None, go.wait, cfg.connect_timeout_s + 600):
        raise RuntimeError("the parent never said go")
    start_ns = int(start_at.value * 1e9) + int(cfg.warmup_s * 1e9)
    await _until(int(start_at.value * 1e9))
    return start_ns, start_ns + int(cfg.duration_s * 1e9)


_ROLES = {"watch": _watcher, "write": _writer, "keepalive": _keepalive}


def _main(args: _Args, events: Any, go: Any, start_at: Any) -> None:
    """Entry point of a process (``runner.drive``'s protocol)."""
    try:
        part = asyncio.run(_ROLES[args.role](args, events, go, start_at))
    except BaseException:  # report anything to the parent
        events.put(("failed", args.index, traceback.format_exc(limit=8)))
        return
    events.put(("done", args.index, part))


def _merge_parts(parts: list[_Part]) -> _Part:
    total = _Part()
    for p in parts:
        total.hist.merge(p.hist)
        total.put_hist.merge(p.put_hist)
        total.events_total += p.events_total
        total.missing += p.missing
        total.puts_answered += p.puts_answered
        total.errors.update(p.errors)
        for code, text in p.error_samples.items():
            total.error_samples.setdefault(code, text)
    return total


def run_watch(cfg: WatchConfig) -> WatchResult:
    import multiprocessing

    answered = multiprocessing.get_context("spawn").Value("q", -1, lock=False)
    # the writer is the last process (index ``processes``), so every process has its own index
    watchers = cfg.processes if cfg.streams else 0  # no stream: the writer alone, the baseline of its put latency
    args = [_Args("watch", i, cfg, answered) for i in range(watchers)]
    args.append(_Args("write", watchers, cfg, answered))
    parts, cpu, _started = drive(cfg, _main, args)
    t = _merge_parts(parts)
    return WatchResult(cfg, t.hist, t.put_hist, t.events_total, t.puts_answered, t.missing, dict(t.errors), t.error_samples,
                       cpu["client"], cpu.get("server"))


def run_keepalive(cfg: KeepAliveConfig) -> KeepAliveResult:
    args = [_Args("keepalive", i, cfg, None) for i in range(cfg.processes)]
    parts, cpu, _started = drive(cfg, _main, args)
    t = _merge_parts(parts)
    return KeepAliveResult(cfg, t.hist, dict(t.errors), t.error_samples, cpu["client"], cpu.get("server"))
