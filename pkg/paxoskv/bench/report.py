"""Turn a ``BenchResult`` into the table a person reads or the JSON a machine reads.

Rules: the table and the JSON carry the same figures. Throughput is in
operations per second, latencies in milliseconds. CPU (``cpu.py``, sampled
at the window's boundaries) is given two ways: in cores (CPU seconds per
second of the window; on a small box the client and the servers share the
same cores, so read it beside the figures) and in microseconds per
operation that succeeded in the window. Client CPU is the worker processes',
server CPU that of ``--server-pid`` and their descendants, when given.
``machine()`` names what the figures were measured on.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
from typing import Any

from paxoskv.bench.runner import BenchResult, OpStats
from paxoskv.bench.workload import mix_name


def machine() -> dict[str, Any]:
    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }


def describe(result: BenchResult) -> str:
    cfg = result.config
    w = cfg.workload
    parts = [
        f"target {cfg.name} ({len(cfg.endpoints)} endpoint{'s' if len(cfg.endpoints) != 1 else ''})",
        f"mode {cfg.mode}" + (f" x{cfg.batch_size}" if cfg.mode.startswith("batch") else ""),
        f"mix {mix_name(w.read_share)}" + (" (serializable reads)" if w.serializable and w.read_share else ""),
        f"{w.keys} keys",
        f"{w.value_bytes} B values",
        f"{cfg.processes} processes x {cfg.concurrency} in flight",
        f"{cfg.duration_s:g} s (+{cfg.warmup_s:g} s warmup)",
    ]
    return ", ".join(parts)


def _row(name: str, s: OpStats, errors: str = "") -> list[str]:
    return [
        name,
        f"{s.throughput_ops_s:,.0f}",
        f"{s.p50_ms:.2f}",
        f"{s.p95_ms:.2f}",
        f"{s.p99_ms:.2f}",
        f"{s.max_ms:.2f}",
        errors,
    ]


def format_table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for r in [header, *rows]:
        cells = [r[0].ljust(widths[0])] + [c.rjust(widths[i]) for i, c in enumerate(r) if i > 0]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def cpu_line(cores: float | None, us_per_op: float | None) -> str:
    per_op = "-" if us_per_op is None else f"{us_per_op:,.0f}"
    return f"{cores or 0.0:.2f} cores, {per_op} us per op"


def table(result: BenchResult) -> str:
    header = ["op", "ops/s", "p50 ms", "p95 ms", "p99 ms", "max ms", "errors"]
    rows = [_row(kind, s, f"{result.errors_by_op.get(kind, 0):,}") for kind, s in result.by_op.items()]
    rows.append(_row("total", result.total, f"{result.error_count:,}"))
    out = [describe(result), "", format_table(rows, header), ""]
    for code, n in result.errors.items():
        out.append(f"error {code}: {n:,} (e.g. {result.error_samples.get(code, '')})")
    m = machine()
    when = datetime.datetime.fromtimestamp(result.started_unix_s).astimezone().isoformat(timespec="seconds")
    out.append(f"client CPU: {cpu_line(result.client_cpu_cores, result.client_cpu_us_per_op)} "
               f"over {result.config.processes} processes")
    if result.server_cpu_s is not None:
        out.append(f"server CPU: {cpu_line(result.server_cpu_cores, result.server_cpu_us_per_op)} "
                   f"(pids {', '.join(map(str, result.config.server_pids))} and their children)")
    out.append(f"machine: {m['nproc']} cores, {m['cpu_model']}, {m['kernel']}; started {when}")
    return "\n".join(out)


def to_json(result: BenchResult) -> dict[str, Any]:
    cfg = result.config
    return {
        "target": cfg.target,
        "label": cfg.name,
        "mode": cfg.mode,
        "batch_size": cfg.batch_size if cfg.mode.startswith("batch") else None,
        "endpoints": list(cfg.endpoints),
        "mix": mix_name(cfg.workload.read_share),
        "read_share": cfg.workload.read_share,
        "serializable": cfg.workload.serializable,
        "keys": cfg.workload.keys,
        "value_bytes": cfg.workload.value_bytes,
        "processes": cfg.processes,
        "concurrency": cfg.concurrency,
        "in_flight": cfg.processes * cfg.concurrency,
        "warmup_s": cfg.warmup_s,
        "duration_s": cfg.duration_s,
        "started_unix_s": result.started_unix_s,
        "total": dataclasses.asdict(result.total),
        "by_op": {k: dataclasses.asdict(v) for k, v in result.by_op.items()},
        "errors": result.errors,
        "errors_by_op": result.errors_by_op,
        "error_count": result.error_count,
        "error_samples": result.error_samples,
        "client_cpu_s": result.client_cpu_s,
        "client_cpu_cores": result.client_cpu_cores,
        "client_cpu_us_per_op": result.client_cpu_us_per_op,
        "server_pids": list(cfg.server_pids),
        "server_cpu_s": result.server_cpu_s,
        "server_cpu_cores": result.server_cpu_cores,
        "server_cpu_us_per_op": result.server_cpu_us_per_op,
        "machine": machine(),
    }
