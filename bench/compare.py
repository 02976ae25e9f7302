"""The side-by-side benchmark: paxoskv against etcd and PySyncObj, same box, same run.

Run it as ``bench/compare`` from the repository root (that wrapper installs
what is missing, then runs this file with the project's virtualenv).

Theory of operation
-------------------
For each round, for each system in turn (paxoskv, etcd, pysyncobj, then
again in the same order: A B C A B C ...), the harness starts a fresh
3-node cluster of that system on 127.0.0.1 (free ports, data under one
temporary directory, each system's default durability), waits until every
node answers a read, pre-fills the keys, runs every workload against it with
``paxoskv.bench.runner.run`` -- the code behind ``paxoskv bench``, so every
system meets the same client -- and stops the cluster by PID before the
next system starts. Only one system runs at a time, so none of them pays
for another's idle heartbeats, and alternating rounds spreads slow drifts
of the machine (other load, thermal, page cache) over all of them.

The table shows, for each workload and figure, the median over the rounds
of each system and the ratio paxoskv / peer (for throughput higher is
better; for latency and CPU lower is better). CPU is sampled by the runner
at the measure window's boundaries (``paxoskv.bench.cpu``: utime + stime of
every node process, all threads, and of their children): ``server us/op``
is the cluster's CPU in the window divided by the operations that succeeded
in it, the figure that carries over to a machine per node; ``server
cores`` the same CPU per second of the window; ``client us/op`` and
``client cores`` the same for the load generator's worker processes, so a
reader sees how heavy the client is (on a small box both share the same
cores). The ``idle`` job loads nothing: each node's CPU over ``--idle-s``
seconds after a settle of ``--warmup-s``, in % of one core.

Batches compare like with like: paxoskv's ``KV.PackedBatch`` of N puts
against etcd's ``Txn`` of N puts (distinct keys, no compares: one revision,
as a packed batch is one log slot), for N = 10 and 100, within etcd's
default ``--max-txn-ops`` of 128; paxoskv's per-op ``KV.Batch`` of 100 is
set beside etcd's Txn of 100 (``*``), and N = 1000 is paxoskv's alone
(beyond etcd's default). ``paxoskv-etcdapi`` is a paxoskv cluster loaded
through etcd's API (the generator's etcd target against paxoskv's port); a
paxoskv that does not serve ``etcdserverpb.KV`` fails its cells with
``UNIMPLEMENTED: paxoskv does not serve etcdserverpb.KV yet``.

Watches and leases (``watch1``, ``watch1000``, ``keepalive``) speak etcd's
Watch and Lease streams (``paxoskv.bench.etcdstreams``), so they run for
etcd and for paxoskv through the etcd API its port serves (not again as
``paxoskv-etcdapi``: the same servers, the same port). A watch job is
etcd's ``benchmark watch-latency`` shape: N watches of one key (0, 1, or 100
streams x 10), dealt over the members, and one writer putting that key at
``--watch-put-rate`` per second for ``--watch-duration-s`` (30 s: the
writer's p99 is then one of 300 puts, not the worst of 60); the latency is from a put sent to its
event received at each watcher (the send instant travels in the value),
``events missing`` counts acknowledged puts some watcher never got (must be
0), the writer's put p99 beside it says what the watchers cost the writes,
and CPU is per event received. ``keepalive`` grants ``--leases`` leases and
keeps them alive over ``--keepalive-streams`` LeaseKeepAlive streams with
``--keepalive-depth`` keep-alives in flight each: keep-alives answered per
second and CPU per keep-alive.

What security costs: ``paxoskv-insecure`` runs the nodes with
``--insecure-peer-bus`` and a plaintext port, ``paxoskv-secure`` with CURVE
on the bus and TLS with client certificates on the port (a CA made for the
run, ``paxoskv.util.local_pki``; the client shows its certificate), and
``paxoskv`` itself is between them (CURVE, plaintext port). Not in the
default ``--systems``; ``--systems paxoskv,paxoskv-insecure,paxoskv-secure``
puts the three side by side in one run.

PySyncObj has no client protocol; ``bench/pysyncobj_node.py`` puts a small
``paxoskv.v1.KV`` gRPC front on each node, so it is measured through the
same client as paxoskv. Its ``in-process`` row is different: a closed loop
inside each node process calling the replicated method directly (no gRPC,
no client process), which is how the issue's reference figure was taken.
PySyncObj never fsyncs; etcd and paxoskv fsync before acknowledging.

Every process started here is stopped by PID in ``finally`` blocks, on
success, on failure, on Ctrl-C and on SIGTERM.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import pathlib
import shutil
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass

import grpc

import clusters  # bench/clusters.py: this file runs as a script from bench/

from paxoskv.bench import report
from paxoskv.bench.cpu import CpuWindow, per_op_us
from paxoskv.bench.etcdstreams import KeepAliveConfig, WatchConfig, WatchResult, run_keepalive, run_watch
from paxoskv.bench.histogram import Histogram
from paxoskv.bench.runner import BenchConfig, BenchError, BenchResult, run
from paxoskv.bench.workload import Workload

ROOT = pathlib.Path(__file__).resolve().parents[1]
NODE_SCRIPT = ROOT / "bench" / "pysyncobj_node.py"
ECHO_SCRIPT = ROOT / "bench" / "echo_node.py"
QUORUM_ECHO_SCRIPT = ROOT / "bench" / "quorum_echo_node.py"
BATCHED_ECHO_SCRIPT = ROOT / "bench" / "quorum_echo_batched_node.py"
SYSTEMS = (
    "paxoskv", "etcd", "pysyncobj", "grpc-echo", "grpc-echo-sync", "quorum-echo", "quorum-echo-thrifty",
    "quorum-echo-batched", "paxoskv-etcdapi",
    "paxoskv-insecure", "paxoskv-secure", "paxoskv-base", "paxoskv-base-etcdapi",
)
# Not by default: paxoskv-insecure and paxoskv-secure, what security costs (the insecure bus and
# plaintext port; CURVE with TLS and client certificates); paxoskv-base and paxoskv-base-etcdapi
# (the base tree's nodes loaded through etcd's API) need --base-tree.
SECURITY = ("paxoskv-insecure", "paxoskv-secure")
BASE = ("paxoskv-base", "paxoskv-base-etcdapi")
DEFAULT_SYSTEMS = tuple(s for s in SYSTEMS if s not in BASE and s not in SECURITY)
ETCD_API = ("etcd", "paxoskv-etcdapi", "paxoskv-base-etcdapi")  # the systems loaded through etcd's v3 API
BATCHING = ("paxoskv", "paxoskv-base", *ETCD_API, "quorum-echo-batched")  # the systems with a batch: PackedBatch, Txn
# The jobs that speak etcd's Watch and Lease streams: etcd, and paxoskv's own port (it serves
# etcd's API there), so paxoskv-etcdapi, the same servers through the same port, would repeat them.
ETCD_STREAMS = ("paxoskv", "paxoskv-base", *SECURITY, "etcd")
BASE_TREE: pathlib.Path | None = None  # --base-tree: the checkout paxoskv-base runs
NOT_SERVED = "UNIMPLEMENTED: paxoskv does not serve etcdserverpb.KV yet"


@dataclass(frozen=True)
class Job:
    key: str
    title: str
    mode: str = "unary"
    read_share: float = 0.0
    processes: int | None = None  # None: the run's --processes
    concurrency: int | None = None  # None: the run's --concurrency
    batch_size: int | None = None  # None: the run's --batch-size
    systems: tuple[str, ...] = SYSTEMS
    baseline: str | None = None  # for a paxoskv-only job: the peers' job it is compared with
    streams: int = 1  # mode watch: Watch streams in all
    per_stream: int = 1  # mode watch: watches per stream


JOBS: tuple[Job, ...] = (
    # idle: paxoskv-etcdapi runs the same servers as paxoskv, and no load means no API
    Job("idle", "idle, no load", mode="idle", systems=tuple(s for s in SYSTEMS if not s.endswith("-etcdapi"))),
    Job("put", "put, unary"),
    Job("get", "get, linearizable, unary", read_share=1.0),
    Job("mix50", "50% get / 50% put, unary", read_share=0.5),
    Job("mix95", "95% get / 5% put, unary", read_share=0.95),
    Job("put1", "put, 1 client, 1 in flight", processes=1, concurrency=1),
    Job("get1", "get, 1 client, 1 in flight", read_share=1.0, processes=1, concurrency=1),
    *(
        Job(f"put-batch-{n}", f"put, {n} per call: PackedBatch / Txn", mode="batch", concurrency=8, batch_size=n, systems=BATCHING)
        for n in (10, 100)
    ),
    Job("put-batch-per-op", "put, 100 per call, a header per op (Batch)", mode="batch-per-op", concurrency=8, batch_size=100,
        systems=("paxoskv",), baseline="put-batch-100"),
    Job("put-batch-1000", "put, 1000 per call (beyond etcd's default --max-txn-ops 128)", mode="batch", concurrency=8,
        batch_size=1000, systems=("paxoskv",)),
    Job("put-stream", "put, KV.Session stream", mode="stream", systems=("paxoskv",), baseline="put"),
    # etcd's benchmark watch-latency shape: streams x watches per stream on one key, one writer at a steady rate
    Job("watch0", "watch, no watcher: the writer alone", mode="watch", streams=0, systems=ETCD_STREAMS),
    Job("watch1", "watch, 1 watcher, put to event", mode="watch", systems=ETCD_STREAMS),
    Job("watch1000", "watch, 1000 watchers (100 streams x 10), put to event", mode="watch", streams=100, per_stream=10,
        systems=ETCD_STREAMS),
    Job("keepalive", "lease keep-alive, LeaseKeepAlive streams", mode="keepalive", systems=ETCD_STREAMS),
)


def target_of(system: str) -> str:
    """The generator's target: the API a system is loaded through."""
    return "etcd" if system in ETCD_API else "paxoskv"


def start(system: str, base: pathlib.Path) -> clusters.Cluster:
    if system in ("paxoskv", "paxoskv-etcdapi"):
        return clusters.start_paxoskv(base)
    if system in SECURITY:
        secure = system == "paxoskv-secure"
        return clusters.start_paxoskv(base, curve=secure, tls=secure, name=system)
    if system in BASE:
        assert BASE_TREE is not None
        return clusters.start_paxoskv(base, tree=BASE_TREE, name=system)
    if system == "etcd":
        return clusters.start_etcd(base)
    if system in ("grpc-echo", "grpc-echo-sync"):
        return clusters.start_echo(base, ECHO_SCRIPT, sync=system == "grpc-echo-sync")
    if system == "quorum-echo-batched":
        return clusters.start_quorum_echo(base, BATCHED_ECHO_SCRIPT, fanout=None, name=system)
    if system in ("quorum-echo", "quorum-echo-thrifty"):
        return clusters.start_quorum_echo(base, QUORUM_ECHO_SCRIPT, fanout="all" if system == "quorum-echo" else "thrifty")
    return clusters.start_pysyncobj(base, NODE_SCRIPT)


def idle(cluster: clusters.Cluster, settle_s: float, idle_s: float) -> dict:
    """Each node's CPU over ``idle_s`` with no load, after ``settle_s``, in % of a core."""
    t_start = time.monotonic() + settle_s
    window = CpuWindow(
        {f"node{i}": (lambda pid=pid: [pid]) for i, pid in enumerate(cluster.live_pids(), 1)}, t_start, t_start + idle_s
    )
    window.run()
    cpu = window.result()
    if cpu is None:
        raise RuntimeError("the idle window did not complete")
    pct = [100.0 * c / idle_s for c in cpu.values()]
    return {
        "idle_pct_mean": statistics.fmean(pct),
        "idle_pct_max": max(pct),
        "idle_pct_nodes": pct,
        "idle_s": idle_s,
    }


def in_process_pysyncobj(cluster: clusters.Cluster, args: argparse.Namespace) -> dict:
    """The issue's way of loading PySyncObj: inside each node, no client. All nodes at once."""
    spec = {
        "inflight": args.pysyncobj_inflight,
        "warmup_s": args.warmup_s,
        "duration_s": args.duration_s,
        "keys": args.keys,
        "value_bytes": args.value_bytes,
        "read_share": 0.0,
    }

    def one(i_ep: tuple[int, str]) -> dict:
        i, ep = i_ep
        with grpc.insecure_channel(ep, options=[("grpc.max_receive_message_length", 256 << 20)]) as ch:
            call = ch.unary_unary("/pysyncobjbench.Load/Run")
            return json.loads(call(json.dumps({**spec, "seed": i}).encode(), timeout=args.warmup_s + args.duration_s + 120))

    c0 = cluster.cpu_s()
    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(len(cluster.endpoints)) as pool:
        parts = list(pool.map(one, enumerate(cluster.endpoints)))
    cpu_s = cluster.cpu_s() - c0  # the whole call: warmup and all, the nodes' own load loop
    cores = cpu_s / (time.monotonic() - t0)
    lat = sorted(x for p in parts for x in p["latencies_us"])

    def q(f: float) -> float:
        return lat[min(len(lat) - 1, int(f * len(lat)))] / 1000 if lat else 0.0

    errors: dict[str, int] = {}
    for p in parts:
        for k, v in p["errors"].items():
            errors[k] = errors.get(k, 0) + v
    return {
        "throughput_ops_s": len(lat) / args.duration_s,
        "p50_ms": q(0.50),
        "p99_ms": q(0.99),
        "max_ms": lat[-1] / 1000 if lat else 0.0,
        "errors": sum(errors.values()),
        "server_cores": cores,
    }


def figures(result: BenchResult) -> dict:
    t = result.total
    nan = float("nan")  # no successful operation: no latency (or CPU per op) to show

    def num(v: float | None) -> float:
        return nan if v is None else v

    return {
        "throughput_ops_s": t.throughput_ops_s,
        "p50_ms": t.p50_ms if t.count else nan,
        "p99_ms": t.p99_ms if t.count else nan,
        "max_ms": t.max_ms if t.count else nan,
        "errors": result.error_count,
        "error_codes": result.errors,
        "ops": t.count,
        "server_cpu_s": num(result.server_cpu_s),
        "server_us_per_op": num(result.server_cpu_us_per_op),
        "server_cores": num(result.server_cpu_cores),
        "client_cpu_s": result.client_cpu_s,
        "client_us_per_op": num(result.client_cpu_us_per_op),
        "client_cores": result.client_cpu_cores,
    }


def _ms(hist: Histogram, q: float) -> float:
    return hist.quantile(q) / 1e6 if hist.count else float("nan")


def _cpu_figures(cpu_s: float | None, client_cpu_s: float, ops: int, duration_s: float) -> dict:
    nan = float("nan")
    server_us = per_op_us(cpu_s, ops)
    client_us = per_op_us(client_cpu_s, ops)
    return {
        "server_cpu_s": nan if cpu_s is None else cpu_s,
        "server_us_per_op": nan if server_us is None else server_us,
        "server_cores": nan if cpu_s is None else cpu_s / duration_s,
        "client_cpu_s": client_cpu_s,
        "client_us_per_op": nan if client_us is None else client_us,
        "client_cores": client_cpu_s / duration_s,
    }


def watch_figures(r: WatchResult) -> dict:
    """Event latency, the writer's put latency, and CPU per event received."""
    d = r.config.duration_s
    return {
        "watchers": r.config.watchers,
        "p50_ms": _ms(r.events, 0.50),
        "p99_ms": _ms(r.events, 0.99),
        "max_ms": r.events.max / 1e6 if r.events.count else float("nan"),
        "events_s": r.events.count / d,
        "events": r.events.count,
        "events_total": r.events_total,
        "puts_answered": r.puts_answered,
        "missing": r.missing,
        "puts_s": r.puts.count / d,
        "put_p50_ms": _ms(r.puts, 0.50),
        "put_p99_ms": _ms(r.puts, 0.99),
        "errors": sum(r.errors.values()),
        "error_codes": r.errors,
        "error_samples": r.error_samples,
        **_cpu_figures(r.server_cpu_s, r.client_cpu_s, r.events.count, d),
    }


def _fresh_cluster(system: str, base: pathlib.Path, args: argparse.Namespace, base_cfg: dict) -> clusters.Cluster:
    """Start a cluster, wait for it, pre-fill every key once (not measured)."""
    cluster = start(system, base)
    try:
        cluster.wait_ready(timeout_s=60.0)
        wl = Workload(read_share=1.0, keys=args.keys, value_bytes=args.value_bytes)
        run(BenchConfig(target=target_of(system), endpoints=tuple(cluster.endpoints), workload=wl, label=system,
                        tls=cluster.tls,
                        **{**base_cfg, "warmup_s": 0.0, "duration_s": 0.1}))
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _why(system: str, exc: BaseException) -> str:
    """One line for a failed cell. paxoskv loaded through etcd's API that
    says it has no such service gets the sentence the table is known by."""
    text = str(exc)
    if system.endswith("-etcdapi") and "UNIMPLEMENTED" in text and "does not serve etcdserverpb.KV" in text:
        return NOT_SERVED
    return text.strip().splitlines()[-1][:200]


def run_job(job: Job, system: str, cluster: clusters.Cluster, args: argparse.Namespace, base_cfg: dict, rnd: int) -> dict:
    """One job against a running cluster: its figures."""
    if job.mode == "idle":
        return idle(cluster, args.warmup_s, args.idle_s)
    phases = dict(
        endpoints=tuple(cluster.endpoints), processes=args.processes, warmup_s=args.warmup_s, duration_s=args.duration_s,
        timeout_s=args.timeout_s, connect_timeout_s=30.0, server_pids=tuple(cluster.live_pids()), tls=cluster.tls,
    )
    if job.mode == "watch":
        phases["duration_s"] = args.watch_duration_s
        return watch_figures(run_watch(WatchConfig(
            **phases, streams=job.streams, watchers_per_stream=job.per_stream, put_rate_s=args.watch_put_rate,
            value_bytes=args.value_bytes,
        )))
    if job.mode == "keepalive":
        k = run_keepalive(KeepAliveConfig(
            **phases, leases=args.leases, streams=args.keepalive_streams, depth=args.keepalive_depth,
        ))
        h = k.keepalives
        return {
            "throughput_ops_s": h.count / args.duration_s,
            "p50_ms": _ms(h, 0.50),
            "p99_ms": _ms(h, 0.99),
            "max_ms": h.max / 1e6 if h.count else float("nan"),
            "ops": h.count,
            "errors": sum(k.errors.values()),
            "error_codes": k.errors,
            "error_samples": k.error_samples,
            **_cpu_figures(k.server_cpu_s, k.client_cpu_s, h.count, args.duration_s),
        }
    cfg = BenchConfig(
        target=target_of(system),
        endpoints=tuple(cluster.endpoints),
        mode=job.mode,
        workload=Workload(read_share=job.read_share, keys=args.keys, value_bytes=args.value_bytes, seed=rnd + 1),
        label=system,
        prefill=False,
        server_pids=tuple(cluster.live_pids()),
        tls=cluster.tls,
        **{
            **base_cfg,
            "processes": job.processes or args.processes,
            "concurrency": job.concurrency or args.concurrency,
            "batch_size": job.batch_size or args.batch_size,
        },
    )
    return figures(run(cfg))


def run_all(args: argparse.Namespace, work: pathlib.Path) -> dict:
    """Every figure of every round: results[job][system] = [figures of round 1, ...].

    A job that fails (the cluster stopped answering, a node died) is recorded
    as ``{"failed": why}``; the cluster is then replaced by a fresh one for
    the jobs after it, so one failure costs one cell, not the whole table.
    A system that does not serve the API it is loaded through fails every
    job of the round with that reason, without starting more clusters.
    """
    base_cfg = dict(
        processes=args.processes,
        concurrency=args.concurrency,
        warmup_s=args.warmup_s,
        duration_s=args.duration_s,
        timeout_s=args.timeout_s,
        connect_timeout_s=30.0,
        batch_size=args.batch_size,
    )
    jobs = [j for j in JOBS if not args.jobs or j.key in args.jobs]
    results: dict[str, dict[str, list[dict]]] = {}
    for rnd in range(args.rounds):
        for system in args.systems:
            print(f"== round {rnd + 1}/{args.rounds}: {system}, 3 nodes", file=sys.stderr, flush=True)
            cluster: clusters.Cluster | None = None
            starts = 0
            not_served: str | None = None
            try:
                for job in jobs:
                    if system not in job.systems:
                        continue
                    fig: dict | None = None
                    try:
                        if not_served:
                            raise RuntimeError(not_served)
                        if cluster is None:
                            starts += 1
                            cluster = _fresh_cluster(system, work / f"r{rnd + 1}-{system}-{starts}", args, base_cfg)
                        fig = run_job(job, system, cluster, args, base_cfg, rnd)
                        cluster.check_alive()
                        cluster.wait_ready(timeout_s=20.0)  # still serving after the load?
                    except (BenchError, RuntimeError, ValueError) as exc:  # ValueError: a job the options cannot make
                        why = _why(system, exc)
                        if why == NOT_SERVED:
                            not_served = why
                        fig = {"failed": why} if fig is None else {**fig, "failed_after": why}
                        if cluster is not None:
                            cluster.stop()
                            cluster = None
                    results.setdefault(job.key, {}).setdefault(system, []).append(fig)
                    _say(job.title, fig)
                if system == "pysyncobj" and args.pysyncobj_inflight > 0 and (not args.jobs or "inproc" in args.jobs):
                    try:
                        if cluster is None:
                            starts += 1
                            cluster = _fresh_cluster(system, work / f"r{rnd + 1}-{system}-{starts}", args, base_cfg)
                        fig = in_process_pysyncobj(cluster, args)
                    except (grpc.RpcError, RuntimeError, BenchError) as exc:
                        fig = {"failed": str(exc).strip().splitlines()[-1][:200]}
                    results.setdefault("inproc", {}).setdefault(system, []).append(fig)
                    _say("put, in-process (no client)", fig)
            finally:
                if cluster is not None:
                    cluster.stop()
    return results


def _say(title: str, fig: dict) -> None:
    if "idle_pct_mean" in fig:
        nodes = " ".join(f"{v:.1f}" for v in fig["idle_pct_nodes"])
        line = f"   {title:34} {fig['idle_pct_mean']:5.1f}% of a core per node (nodes: {nodes})"
    elif "events_s" in fig:
        line = (f"   {title:34} {fig['events_s']:>9,.0f} events/s  p50 {fig['p50_ms']:7.2f} ms  p99 {fig['p99_ms']:7.2f} ms"
                f"  missing {fig['missing']}  put p99 {fig['put_p99_ms']:7.2f} ms  errors {fig['errors']}"
                f"  server {fmt(fig['server_us_per_op'], 'server_us_per_op')} us/event")
    elif "throughput_ops_s" in fig:
        line = (f"   {title:34} {fig['throughput_ops_s']:>9,.0f} ops/s  p50 {fig['p50_ms']:7.2f} ms"
                f"  p99 {fig['p99_ms']:7.2f} ms  errors {fig['errors']}")
        if "server_us_per_op" in fig:
            line += f"  server {fmt(fig['server_us_per_op'], 'server_us_per_op')} us/op"
        if "client_us_per_op" in fig:
            line += f"  client {fmt(fig['client_us_per_op'], 'client_us_per_op')} us/op"
    if "failed" in fig:
        line = f"   {title:34} FAILED: {fig['failed']}"
    elif "failed_after" in fig:
        line += f"  -- then the cluster stopped answering: {fig['failed_after']}"
    print(line, file=sys.stderr, flush=True)


def median(runs: list[dict], name: str) -> float | None:
    """The median over the rounds that produced figures; None if none did."""
    values = [r[name] for r in runs if name in r and r[name] == r[name]]  # not NaN
    return statistics.median(values) if values else None


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0 or a != a or b != b:
        return "-"
    return f"{a / b:.2f}x"


def fmt(v: float | None, name: str) -> str:
    if v is None or v != v:
        return "-"
    if name in ("throughput_ops_s", "errors", "events_s", "puts_s", "missing") or name.endswith("_us_per_op"):
        return f"{v:,.0f}"
    if name.startswith("idle_pct"):
        return f"{v:.1f}%"
    return f"{v:.2f}"


LOAD_FIGURES = (
    ("throughput_ops_s", "ops/s"),
    ("p50_ms", "p50 ms"),
    ("p99_ms", "p99 ms"),
    ("errors", "errors"),
    ("server_us_per_op", "server us/op"),
    ("client_us_per_op", "client us/op"),
    ("server_cores", "server cores"),
    ("client_cores", "client cores"),
)
IDLE_FIGURES = (
    ("idle_pct_mean", "% core per node"),
    ("idle_pct_max", "% core, busiest node"),
)
WATCH_FIGURES = (
    ("p50_ms", "event p50 ms"),
    ("p99_ms", "event p99 ms"),
    ("events_s", "events/s"),
    ("missing", "events missing"),
    ("puts_s", "puts/s"),
    ("put_p50_ms", "put p50 ms"),
    ("put_p99_ms", "put p99 ms"),
    ("errors", "errors"),
    ("server_us_per_op", "server us/event"),
    ("client_us_per_op", "client us/event"),
    ("server_cores", "server cores"),
    ("client_cores", "client cores"),
)
KEEPALIVE_FIGURES = (("throughput_ops_s", "keep-alives/s"), *LOAD_FIGURES[1:])
INPROC_FIGURES = (
    ("throughput_ops_s", "ops/s"),
    ("p50_ms", "p50 ms"),
    ("p99_ms", "p99 ms"),
    ("server_cores", "server cores"),
)

# the figures a ratio paxoskv / peer is shown for (throughput: higher is
# better; latency, CPU per op and idle CPU: lower is better)
COMPARABLE = ("throughput_ops_s", "p50_ms", "p99_ms", "put_p50_ms", "put_p99_ms", "server_us_per_op", "idle_pct_mean", "idle_pct_max")
FIGURES_OF_MODE = {"idle": IDLE_FIGURES, "watch": WATCH_FIGURES, "keepalive": KEEPALIVE_FIGURES}


def cell(runs: list[dict] | None, value: float | None, name: str) -> str:
    """A median, marked ``!`` when some rounds failed; ``failed`` when all did."""
    if runs is None:
        return "-"
    broken = sum(1 for r in runs if "failed" in r or "failed_after" in r)
    if value is None:  # every round failed, or none has this figure (no event without a watcher)
        return "failed" if broken else "-"
    return fmt(value, name) + ("!" if broken else "")


def failures(results: dict) -> list[str]:
    out = []
    for key, by_system in results.items():
        for system, runs in by_system.items():
            for i, r in enumerate(runs, 1):
                why = r.get("failed") or r.get("failed_after")
                if why:
                    when = "failed" if "failed" in r else "measured, then stopped answering"
                    out.append(f"! {system} {key} round {i}: {when}: {why}")
    return out


def table(results: dict, args: argparse.Namespace) -> str:
    peers = [s for s in args.systems if s != "paxoskv"]
    header = ["workload", "figure", "paxoskv"]
    for p in peers:
        header += [p, f"paxoskv/{p}"]
    rows: list[list[str]] = []
    titles = {j.key: j for j in JOBS}
    for key, by_system in results.items():
        job = titles.get(key)
        if job is None:
            title, names = "put, in-process load, no client (PySyncObj only)", INPROC_FIGURES
        else:
            title, names = job.title, FIGURES_OF_MODE.get(job.mode, LOAD_FIGURES)
        shown = False
        for name, label in names:
            mine = median(by_system["paxoskv"], name) if "paxoskv" in by_system else None
            row = [title if not shown else "", label, cell(by_system.get("paxoskv"), mine, name)]
            shown = True
            for p in peers:
                if p in by_system:
                    theirs: float | None = median(by_system[p], name)
                    row += [cell(by_system[p], theirs, name), ratio(mine, theirs) if name in COMPARABLE else ""]
                    continue
                if job is not None and job.baseline and p in results.get(job.baseline, {}) and name in COMPARABLE:
                    theirs = median(results[job.baseline][p], name)
                    note = "*" if theirs is not None else ""
                else:
                    theirs, note = None, ""
                row += [fmt(theirs, name) + note, ratio(mine, theirs) if name in COMPARABLE else ""]
            rows.append(row)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    out = []
    for r in [header, *rows]:
        out.append("  ".join([r[0].ljust(widths[0]), r[1].ljust(widths[1])] + [c.rjust(widths[i]) for i, c in enumerate(r) if i > 1]).rstrip())
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description="paxoskv vs etcd vs PySyncObj, 3 nodes each on 127.0.0.1, one system at a time.")
    ap.add_argument("--rounds", type=int, default=2, help="alternations A B C A B C ... (figures are medians)")
    ap.add_argument("--duration-s", type=float, default=10.0)
    ap.add_argument("--warmup-s", type=float, default=2.0)
    ap.add_argument("--processes", type=int, default=2, help="client worker processes")
    ap.add_argument("--concurrency", type=int, default=32, help="requests in flight per client process")
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--keys", type=int, default=10_000)
    ap.add_argument("--value-bytes", type=int, default=100)
    ap.add_argument("--timeout-s", type=float, default=10.0)
    ap.add_argument("--idle-s", type=float, default=10.0, help="length of the idle job's window (after --warmup-s of settling)")
    ap.add_argument("--systems", default=",".join(DEFAULT_SYSTEMS), help="comma-separated subset of " + ",".join(SYSTEMS))
    ap.add_argument("--jobs", default="", help=f"comma-separated subset of {','.join(j.key for j in JOBS)},inproc")
    ap.add_argument("--watch-put-rate", type=float, default=10.0,
                    help="watch jobs: the writer's puts per second (each is an event for every watcher)")
    ap.add_argument("--watch-duration-s", type=float, default=30.0,
                    help="watch jobs: the measured window (at 10 puts/s, 30 s makes the writer's p99 one of 300 puts; "
                         "in 6 s it is the worst of 60)")
    ap.add_argument("--leases", type=int, default=1000, help="keepalive job: leases granted and kept alive")
    ap.add_argument("--keepalive-streams", type=int, default=8, help="keepalive job: LeaseKeepAlive streams in all")
    ap.add_argument("--keepalive-depth", type=int, default=16, help="keepalive job: keep-alives in flight per stream")
    ap.add_argument("--pysyncobj-inflight", type=int, default=1000, help="in-process PySyncObj load per node (0: skip)")
    ap.add_argument("--json", dest="json_out", default="", help="also write every figure of every round to this file")
    ap.add_argument("--keep-data", action="store_true", help="keep the clusters' data directories and logs")
    ap.add_argument("--base-tree", default="", help="a checkout of paxoskv (e.g. a worktree of main) whose nodes run as "
                    "system paxoskv-base, beside this tree's, for an A/B in one run")
    args = ap.parse_args()
    args.systems = [s for s in args.systems.split(",") if s]
    args.jobs = [j for j in args.jobs.split(",") if j]
    unknown = set(args.systems) - set(SYSTEMS)
    if unknown or "paxoskv" not in args.systems:
        ap.error(f"--systems must include paxoskv and only name {', '.join(SYSTEMS)}")
    if bool(set(BASE) & set(args.systems)) != bool(args.base_tree):
        ap.error("--systems paxoskv-base (or paxoskv-base-etcdapi) and --base-tree go together")
    if args.base_tree:
        global BASE_TREE
        BASE_TREE = pathlib.Path(args.base_tree).resolve()
        if not (BASE_TREE / "pkg" / "paxoskv" / "cli.py").is_file():
            ap.error(f"--base-tree {args.base_tree}: not a paxoskv checkout (no pkg/paxoskv/cli.py)")
    unknown = set(args.jobs) - {j.key for j in JOBS} - {"inproc"}
    if unknown:
        ap.error(f"unknown --jobs {', '.join(sorted(unknown))}: use {', '.join(j.key for j in JOBS)}, inproc")

    def on_term(_sig, _frame):
        raise KeyboardInterrupt  # unwinds through every finally: clusters are stopped

    signal.signal(signal.SIGTERM, on_term)
    started = datetime.datetime.now().astimezone()
    work = pathlib.Path(tempfile.mkdtemp(prefix="paxoskv-compare-"))
    try:
        results = run_all(args, work)
    except (BenchError, RuntimeError) as exc:
        print(f"bench/compare: {exc}", file=sys.stderr)
        print(f"logs and data kept in {work}", file=sys.stderr)
        return 1
    if args.keep_data:
        print(f"logs and data kept in {work}", file=sys.stderr)
    else:
        shutil.rmtree(work, ignore_errors=True)
    m = report.machine()
    etcd_version = _etcd_version()
    head = [
        f"paxoskv vs peers, {started.isoformat(timespec='seconds')}",
        f"machine: {m['nproc']} cores, {m['cpu_model']}, {m['kernel']}, Python {m['python']}",
        f"systems: paxoskv (this tree, fsync on), etcd {etcd_version} (Debian, fsync on), "
        f"PySyncObj 0.3.17 (no fsync; gRPC front bench/pysyncobj_node.py), "
        f"grpc-echo / grpc-echo-sync (bench/echo_node.py: answers at once, stores nothing: "
        f"the Python gRPC ceiling, grpc.aio / threaded server), "
        f"quorum-echo / quorum-echo-thrifty (bench/quorum_echo_node.py: answers once a majority fsync'ed the "
        f"request, no consensus: the floor of a quorum write, sent to all peers / to a majority only), "
        f"quorum-echo-batched (bench/quorum_echo_batched_node.py: the same with group commit, one message and one "
        f"synced write per drain: the throughput and CPU floor of a replicated log), "
        f"paxoskv-etcdapi (paxoskv loaded through etcd's v3 API on its own port), "
        f"paxoskv-insecure / paxoskv-secure (--insecure-peer-bus and a plaintext port / CURVE, TLS and client "
        f"certificates; paxoskv itself: CURVE, plaintext port)"
        + (f", paxoskv-base (the nodes of {BASE_TREE} at {_git_head(BASE_TREE)}, same client)" if BASE_TREE else ""),
        f"each: 3 nodes on 127.0.0.1, load spread over all nodes; {args.rounds} rounds A B C ..., medians; "
        f"{args.processes} client processes x {args.concurrency} in flight unless the workload says otherwise; "
        f"{args.keys} keys, {args.value_bytes} B values; {args.duration_s:g} s measured after {args.warmup_s:g} s warmup",
        "ratio = paxoskv / peer (throughput: higher is better; latency and CPU: lower is better);"
        " batch rows: paxoskv's PackedBatch of N puts vs etcd's Txn of N puts; * = the peer's figure of the row"
        " paxoskv's is compared with (per-op Batch: the Txn of 100; stream: the unary put)",
        f"watch jobs: one writer at {args.watch_put_rate:g} puts/s for {args.watch_duration_s:g} s, latency put sent -> event received, CPU per event;"
        f" keepalive: {args.leases} leases, {args.keepalive_streams} streams x {args.keepalive_depth} in flight",
        "CPU: utime+stime of all processes, threads and children, from /proc, over the measured window;"
        " us/op = that / operations succeeded in the window (a batch: per put); idle: % of one core per node"
        f" over {args.idle_s:g} s with no load",
    ]
    print("\n".join([*head, table(results, args), *failures(results)]))
    if args.json_out:
        pathlib.Path(args.json_out).write_text(
            json.dumps({"started": started.isoformat(), "machine": m, "etcd": etcd_version, "args": vars(args), "results": results}, indent=2)
        )
    return 0


def _git_head(tree: pathlib.Path) -> str:
    import subprocess

    out = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
    return out.stdout.strip() or "?"


def _etcd_version() -> str:
    import subprocess

    binary = clusters.etcd_binary()
    if binary is None:
        return "?"
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False).stdout
    for line in out.splitlines():
        if line.startswith("etcd Version:"):
            return line.split(":", 1)[1].strip()
    return "?"


if __name__ == "__main__":
    sys.exit(main())
