"""``paxoskv bench``: the command line of the load generator.

Rules: progress goes to stderr (a live bar on a terminal), the result to
stdout: the table, or with ``--json`` one JSON object and nothing else. Exit
status 0 when the run completed (even with failed operations: they are in
the figures), 1 when it could not run (no answer from the target, a worker
failed), 2 for a bad option. ``--cacert --cert --key`` (as the client
commands) speak TLS to every endpoint.
"""

from __future__ import annotations

import json
import os
import sys

import click

from paxoskv.bench import report
from paxoskv.bench.runner import BenchConfig, BenchError, Progress, run
from paxoskv.bench.targets import TARGETS
from paxoskv.bench.workload import MIXES, Workload, parse_mix
from paxoskv.cli_options import tls_options
from paxoskv.tls import client_tls
from paxoskv.wire import DEFAULT_PORT, ConfigError, parse_endpoints


def _endpoints(ctx: click.Context, _param, value: str | None) -> tuple[str, ...]:
    """HOST:PORT,... as every command reads endpoints, but with repeats kept
    (each gets its share). Given (or PAXOSKV_BENCH_ENDPOINTS), the port is
    required: any server, etcd too. Against paxoskv it falls back, as every
    client command does, to PAXOSKV_ENDPOINTS and then localhost:50051."""
    default_port = None
    if value is None:
        if ctx.params.get("target", "paxoskv") != "paxoskv":
            raise click.BadParameter("required for --target etcd (or set PAXOSKV_BENCH_ENDPOINTS)")
        value = os.environ.get("PAXOSKV_ENDPOINTS") or f"localhost:{DEFAULT_PORT}"
        default_port = DEFAULT_PORT
    try:
        return tuple(parse_endpoints(value, default_port=default_port, unique=False))
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from None


def _mix(_ctx, _param, value: str) -> float:
    try:
        return parse_mix(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command("bench")
@click.option("--target", type=click.Choice(sorted(TARGETS)), default="paxoskv", show_default=True,
              help="Protocol of the servers: paxoskv.v1.KV or etcd's v3 KV API.")
@click.option("--endpoints", "-e", default=None, callback=_endpoints, envvar="PAXOSKV_BENCH_ENDPOINTS", show_envvar=True,
              help="Comma-separated host:port of the servers' client ports; load is spread over all of them. "
                   "Default for --target paxoskv: $PAXOSKV_ENDPOINTS, else localhost:50051.")
@click.option("--mode", type=click.Choice(["unary", "batch", "batch-per-op", "stream"]), default="unary", show_default=True,
              help="One RPC per operation; --batch-size operations on distinct keys per RPC (batch: paxoskv's "
                   "PackedBatch, one exactly-once header per call, or etcd's Txn; batch-per-op: paxoskv's Batch, "
                   "a header per write); or messages of a KV.Session stream.")
@click.option("--mix", default="write-only", show_default=True, callback=_mix,
              help=f"Read share: {', '.join(MIXES)} (95-5 = 95% reads), or a number in [0, 1].")
@click.option("--keys", type=click.IntRange(min=1), default=10_000, show_default=True, help="Distinct keys, chosen uniformly.")
@click.option("--value-bytes", type=click.IntRange(min=0), default=100, show_default=True, help="Size of each written value.")
@click.option("--duration-s", type=click.FloatRange(min=0.1), default=10.0, show_default=True, help="Length of the measured window.")
@click.option("--warmup-s", type=click.FloatRange(min=0.0), default=2.0, show_default=True, help="Load before the window, not recorded.")
@click.option("--processes", "-p", type=click.IntRange(min=1), default=2, show_default=True, help="Worker processes.")
@click.option("--concurrency", "-c", type=click.IntRange(min=1), default=32, show_default=True,
              help="Requests in flight per process (closed loop).")
@click.option("--batch-size", type=click.IntRange(min=1), default=100, show_default=True, help="Operations per RPC in batch mode.")
@click.option("--serializable", is_flag=True, help="Serializable (possibly stale) reads instead of linearizable ones.")
@click.option("--prefill/--no-prefill", default=True, show_default=True,
              help="Write every key once before a run that reads.")
@click.option("--timeout-s", type=click.FloatRange(min=0.01), default=5.0, show_default=True, help="Deadline of each RPC.")
@click.option("--connect-timeout-s", type=click.FloatRange(min=0.1), default=30.0, show_default=True,
              help="How long to wait for every endpoint to answer before the run.")
@click.option("--seed", type=int, default=1, show_default=True, help="Seed of the key and operation choices.")
@click.option("--label", default="", help="Name of the system in the output (default: the target).")
@click.option("--server-pid", "server_pids", type=click.IntRange(min=1), multiple=True,
              help="A local server process (repeat for each): report the CPU it and its children used "
                   "in the window, per operation.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the table.")
@tls_options
def bench_cmd(
    target: str,
    endpoints: tuple[str, ...],
    mode: str,
    mix: float,
    keys: int,
    value_bytes: int,
    duration_s: float,
    warmup_s: float,
    processes: int,
    concurrency: int,
    batch_size: int,
    serializable: bool,
    prefill: bool,
    timeout_s: float,
    connect_timeout_s: float,
    seed: int,
    label: str,
    server_pids: tuple[int, ...],
    as_json: bool,
    tls_cacert: str | None,
    tls_cert: str | None,
    tls_key: str | None,
) -> None:
    """Closed-loop load against a paxoskv (or etcd) cluster: throughput and latency."""
    try:
        cfg = BenchConfig(
            target=target,
            endpoints=endpoints,
            mode=mode,
            workload=Workload(read_share=mix, keys=keys, value_bytes=value_bytes, serializable=serializable, seed=seed),
            processes=processes,
            concurrency=concurrency,
            batch_size=batch_size,
            prefill=prefill,
            warmup_s=warmup_s,
            duration_s=duration_s,
            timeout_s=timeout_s,
            connect_timeout_s=connect_timeout_s,
            label=label,
            server_pids=server_pids,
            tls=client_tls(tls_cacert, tls_cert, tls_key),
        )
    except ValueError as exc:  # a ConfigError too
        raise click.UsageError(str(exc)) from None
    total_ms = int((warmup_s + duration_s) * 1000)
    shown = {"ms": 0, "setup": False}
    with click.progressbar(
        length=total_ms,
        label=f"bench {cfg.name}",
        file=sys.stderr,
        show_eta=False,
        show_percent=False,
        item_show_func=lambda p: None if p is None else f"{p.phase:7} {p.rate_ops_s:>9,.0f} ops/s  {p.errors:,} errors",
    ) as bar:

        def on_progress(p: Progress) -> None:
            now_ms = int(p.elapsed_s * 1000)
            if now_ms > shown["ms"] or not shown["setup"]:
                shown["setup"] = True
                bar.update(max(0, now_ms - shown["ms"]), p)
                shown["ms"] = max(shown["ms"], now_ms)

        try:
            result = run(cfg, on_progress)
        except BenchError as exc:
            raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(report.to_json(result), indent=2))
    else:
        click.echo(report.table(result))
