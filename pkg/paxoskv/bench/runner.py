"""Start the worker processes, drive the phases, merge what they measured.

Rules:

- Workers are started with the *spawn* method and stopped by the runner:
  joined when they finish, terminated (by their ``Process`` handle, i.e.
  their PID) when anything goes wrong, including Ctrl-C.
- The run starts only when every worker said "ready"; a worker that failed
  or died stops the whole run with ``BenchError`` carrying its message.
- The start time is set ``START_MARGIN_S`` ahead so every worker is waiting
  for it, not racing it.
- Throughput is operations completed in the window divided by its length;
  latency quantiles come from the merged histograms, in milliseconds.
- CPU: a ``cpu.CpuWindow`` thread of the runner samples the workers
  (client CPU) and ``server_pids`` with their descendants (server CPU) at
  the window's start and end instants, on the clock the workers use. Per
  operation means divided by the operations that succeeded in the window
  (for a batch, each op of it); ``server_cpu_s`` is None without
  ``server_pids``.
"""

from __future__ import annotations

import multiprocessing
import os
import queue as queue_mod
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

from paxoskv.bench.cpu import CpuWindow, per_op_us
from paxoskv.bench.histogram import Histogram
from paxoskv.bench.targets import TARGETS
from paxoskv.bench.worker import WorkerArgs, WorkerResult, worker_main
from paxoskv.bench.workload import Workload
from paxoskv.tls import ClientTLS

START_MARGIN_S = 0.3
SETUP_TIMEOUT_EXTRA_S = 600.0  # pre-filling many keys into a slow target takes time


class BenchError(Exception):
    """The benchmark could not run; ``str(e)`` says why."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BenchConfig:
    target: str
    endpoints: tuple[str, ...]
    mode: str = "unary"
    workload: Workload = field(default_factory=Workload)
    processes: int = 2
    concurrency: int = 32
    batch_size: int = 100
    prefill: bool = True
    warmup_s: float = 2.0
    duration_s: float = 10.0
    timeout_s: float = 5.0
    connect_timeout_s: float = 30.0
    label: str = ""
    server_pids: tuple[int, ...] = ()  # local server processes whose CPU to report
    tls: ClientTLS | None = None  # TLS to the servers (None: plaintext)

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"unknown target {self.target!r}: one of {', '.join(TARGETS)}")
        modes = TARGETS[self.target].modes
        if self.mode not in modes:
            raise ValueError(f"target {self.target} has no mode {self.mode!r}: it has {', '.join(sorted(modes))}")
        if not self.endpoints:
            raise ValueError("at least one endpoint is needed")
        if self.processes < 1 or self.concurrency < 1 or self.batch_size < 1:
            raise ValueError("processes, concurrency and batch size must be >= 1")
        if self.duration_s <= 0 or self.warmup_s < 0 or self.timeout_s <= 0:
            raise ValueError("duration and timeout must be > 0, warmup >= 0")
        if self.mode.startswith("batch") and self.batch_size > self.workload.keys:
            raise ValueError(
                f"a batch of {self.batch_size} distinct keys needs at least that many keys, not {self.workload.keys}"
            )

    @property
    def name(self) -> str:
        return self.label or self.target


@dataclass(frozen=True, slots=True)
class OpStats:
    count: int
    throughput_ops_s: float
    mean_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float

    @classmethod
    def of(cls, hist: Histogram, duration_s: float) -> OpStats:
        ms = 1e-6
        return cls(
            count=hist.count,
            throughput_ops_s=hist.count / duration_s,
            mean_ms=hist.mean() * ms,
            p50_ms=hist.quantile(0.50) * ms,
            p95_ms=hist.quantile(0.95) * ms,
            p99_ms=hist.quantile(0.99) * ms,
            max_ms=hist.max * ms,
        )


@dataclass(frozen=True, slots=True)
class BenchResult:
    config: BenchConfig
    total: OpStats
    by_op: dict[str, OpStats]  # every kind that completed or failed in the window
    errors: dict[str, int]
    errors_by_op: dict[str, int]
    error_samples: dict[str, str]
    client_cpu_s: float
    started_unix_s: float
    server_cpu_s: float | None = None  # None: no server_pids

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def client_cpu_cores(self) -> float:
        return self.client_cpu_s / self.config.duration_s

    @property
    def client_cpu_us_per_op(self) -> float | None:
        return per_op_us(self.client_cpu_s, self.total.count)

    @property
    def server_cpu_cores(self) -> float | None:
        return None if self.server_cpu_s is None else self.server_cpu_s / self.config.duration_s

    @property
    def server_cpu_us_per_op(self) -> float | None:
        return per_op_us(self.server_cpu_s, self.total.count)


@dataclass(frozen=True, slots=True)
class Progress:
    phase: str  # "setup", "warmup", "measure", "drain"
    elapsed_s: float  # since the load started (0 during setup)
    total_s: float  # warmup + duration
    completed: int  # operations completed so far, every phase
    errors: int
    rate_ops_s: float  # over the last report period


ProgressFn = Callable[[Progress], None]


def run(cfg: BenchConfig, on_progress: ProgressFn | None = None) -> BenchResult:
    prefix = f"bench{os.getpid()}-{int(time.time() * 1000) % 10**9}"
    args = [
        WorkerArgs(
            target=cfg.target,
            mode=cfg.mode,
            endpoints=cfg.endpoints,
            workload=cfg.workload,
            concurrency=cfg.concurrency,
            batch_size=cfg.batch_size,
            process_index=i,
            processes=cfg.processes,
            prefill=cfg.prefill,
            warmup_s=cfg.warmup_s,
            duration_s=cfg.duration_s,
            timeout_s=cfg.timeout_s,
            connect_timeout_s=cfg.connect_timeout_s,
            client_prefix=prefix,
            tls=cfg.tls,
        )
        for i in range(cfg.processes)
    ]
    results, cpu, started_unix_s = drive(cfg, worker_main, args, on_progress)
    return _merge(cfg, results, started_unix_s, cpu)


def drive(cfg: Any, worker: Callable[..., None], worker_args: list[Any],
          on_progress: ProgressFn | None = None) -> tuple[list[Any], dict[str, float], float]:
    """One spawned process per item of ``worker_args``, each running
    ``worker(args, events, go, start_at)`` (the protocol of ``worker.py``):
    wait until all are ready, start them together, sample CPU over the
    measure window, collect what each sent with "done" (in process order).

    ``cfg`` gives ``warmup_s``, ``duration_s``, ``timeout_s``,
    ``connect_timeout_s`` and ``server_pids``. Returns the results, the CPU
    seconds of the window (``client``, and ``server`` with server pids) and
    the wall time the load started at.
    """
    ctx = multiprocessing.get_context("spawn")
    events = ctx.Queue()
    go = ctx.Event()
    start_at = ctx.Value("d", 0.0, lock=False)
    procs = [
        ctx.Process(target=worker, args=(a, events, go, start_at), name=f"bench-worker-{i}", daemon=True)
        for i, a in enumerate(worker_args)
    ]
    notify = on_progress or (lambda _p: None)
    window: CpuWindow | None = None
    try:
        for p in procs:
            p.start()
        _await_ready(cfg, procs, events, notify)
        started_unix_s = time.time()
        start_at.value = time.monotonic() + START_MARGIN_S
        measure_start = start_at.value + cfg.warmup_s
        groups = {"client": lambda: [p.pid for p in procs]}
        if cfg.server_pids:
            groups["server"] = lambda: cfg.server_pids
        window = CpuWindow(groups, measure_start, measure_start + cfg.duration_s).start()
        go.set()
        results = _await_done(cfg, procs, events, notify, start_at.value)
        cpu = window.result(timeout_s=10.0)
        if cpu is None:
            raise BenchError("the CPU sampler did not reach the end of the window")
        for p in procs:
            p.join(timeout=10)
    finally:
        if window is not None:
            window.cancel()
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join()
        events.close()
    return results, cpu, started_unix_s


def _next_event(events, procs, timeout_s: float):
    try:
        return events.get(timeout=timeout_s)
    except queue_mod.Empty:
        for p in procs:
            if p.exitcode is not None and p.exitcode != 0:
                raise BenchError(f"worker {p.name} (pid {p.pid}) died with exit code {p.exitcode}") from None
        return None


def _await_ready(cfg: Any, procs, events, notify: ProgressFn) -> None:
    ready: set[int] = set()
    deadline = time.monotonic() + cfg.connect_timeout_s + SETUP_TIMEOUT_EXTRA_S
    while len(ready) < len(procs):
        if time.monotonic() > deadline:
            raise BenchError(f"only {len(ready)} of {len(procs)} workers got ready in time")
        event = _next_event(events, procs, 0.2)
        notify(Progress("setup", 0.0, cfg.warmup_s + cfg.duration_s, 0, 0, 0.0))
        if event is None:
            continue
        kind, index, *rest = event
        if kind == "failed":
            raise BenchError(f"worker {index} failed during setup:\n{rest[0]}")
        if kind == "ready":
            ready.add(index)


def _await_done(cfg: Any, procs, events, notify: ProgressFn, start_s: float) -> list[Any]:
    total_s = cfg.warmup_s + cfg.duration_s
    deadline = start_s + total_s + cfg.timeout_s + 30.0
    results: dict[int, Any] = {}
    completed: dict[int, int] = {}
    errors: dict[int, int] = {}
    last_t, last_completed, rate = time.monotonic(), 0, 0.0
    while len(results) < len(procs):
        if time.monotonic() > deadline:
            raise BenchError(f"only {len(results)} of {len(procs)} workers finished in time")
        event = _next_event(events, procs, 0.1)
        if event is not None:
            kind, index, *rest = event
            if kind == "failed":
                raise BenchError(f"worker {index} failed:\n{rest[0]}")
            if kind == "progress":
                completed[index], errors[index] = rest[0], rest[1]
            elif kind == "done":
                results[index] = rest[0]
        now = time.monotonic()
        if now - last_t >= 0.25:
            done = sum(completed.values())
            rate = (done - last_completed) / (now - last_t)
            last_t, last_completed = now, done
        elapsed = max(0.0, now - start_s)
        phase = "warmup" if elapsed < cfg.warmup_s else "measure" if elapsed < total_s else "drain"
        notify(Progress(phase, min(elapsed, total_s), total_s, sum(completed.values()), sum(errors.values()), rate))
    return [results[i] for i in sorted(results)]


def _merge(cfg: BenchConfig, results: list[WorkerResult], started_unix_s: float, cpu: dict[str, float]) -> BenchResult:
    hists = {"get": Histogram(), "put": Histogram()}
    errors: Counter = Counter()
    errors_by_op: Counter = Counter()
    samples: dict[str, str] = {}
    for r in results:
        for kind, h in r.histograms.items():
            hists[kind].merge(h)
        errors.update(r.errors)
        errors_by_op.update(r.errors_by_op)
        for code, text in r.error_samples.items():
            samples.setdefault(code, text)
    total = Histogram()
    for h in hists.values():
        total.merge(h)
    by_op = {kind: OpStats.of(h, cfg.duration_s) for kind, h in hists.items() if h.count or errors_by_op[kind]}
    return BenchResult(
        config=cfg,
        total=OpStats.of(total, cfg.duration_s),
        by_op=by_op,
        errors=dict(sorted(errors.items())),
        errors_by_op={kind: errors_by_op[kind] for kind in by_op},
        error_samples=samples,
        client_cpu_s=cpu["client"],
        started_unix_s=started_unix_s,
        server_cpu_s=cpu.get("server"),
    )
