"""One campaign, start to finish: network, nodes, workload, nemesis, checks, report.

Theory of operation
-------------------
1. *Set up*: the network (namespaces when partitions are asked for and
   possible, else loopback), then every node's ``paxoskv serve`` process,
   secure as a deployment runs it: the peer bus on CURVE, the public port on
   TLS with client certificates (``tls``: a CA made for the campaign,
   ``paxoskv/util/local_pki.py``; every client of the campaign shows its certificate);
   wait until one leader is known to every node.
2. *Safety phase* (``duration_s``): the workload's clients and the monitor
   run from t=0; after ``warmup_s`` the nemesis runs its seeded episodes
   until ``duration_s - tail_s`` (longer, up to ``duration_max_s``, while
   fewer than ``ops_min`` operations were invoked). Then it undoes everything (heal, SIGCONT,
   restart the dead) and, when ``kill`` is among the faults, SIGKILLs the
   whole cluster at once and restarts it. The clients keep going until
   ``duration_s``, through the full restart, then finish their operations
   in flight.
3. *Liveness phase*: heal again (nothing should be left), wait for
   convergence, read every key from every node (linearizably, into the
   history, and serializably, to compare the copies).
4. *Checks*: (a) ``paxoskv.check.check_history`` on the whole history, (b)
   no acknowledged write lost, (c) identical state and applied index on all
   nodes, (d) no "assertion" or "traceback" in any node's log (scanned after
   a graceful SIGTERM stop, so shutdown is covered too), plus no node exited
   by itself. The verdict is ``pass`` only if every check passes; ``unknown``
   when the checker ran out of budget and nothing else failed.
5. *Report*: ``history.jsonl`` (the checker's format), ``verdict.json``,
   ``faults.jsonl`` and ``summary.txt`` in ``out_dir``, next to each node's
   ``n<i>/node.log`` and ``n<i>/data``.

Every process is stopped and the network removed in ``finally`` blocks,
whatever fails.
"""

from __future__ import annotations

import asyncio
import pathlib
import secrets
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from paxoskv.chaos.cluster import Cluster, LogScan, scan_logs
from paxoskv.chaos.etcd_workload import (
    EtcdOutcome,
    EtcdWorkload,
    EtcdWorkloadConfig,
    check_history_of,
    check_members,
    key_counts,
)
from paxoskv.chaos.monitor import LeaderChange, Monitor
from paxoskv.chaos.nemesis import FAULT_FAMILIES, FaultEvent, HealthPoint, Nemesis, NemesisConfig
from paxoskv.chaos.net import LoopbackNetwork, NamespaceNetwork, NetworkError, make_network
from paxoskv.chaos.verify import (
    Convergence,
    FinalState,
    LostWrite,
    compare_nodes,
    final_reads,
    lost_writes,
    wait_converged,
)
from paxoskv.chaos.watch_workload import WatchOutcome, WatchWorkload, WatchWorkloadConfig
from paxoskv.chaos.watch_workload import check as check_watchers
from paxoskv.chaos.workload import ClientStats, Workload, WorkloadConfig
from paxoskv.check import CheckResult, Operation, check_history
from paxoskv.tls import ClientTLS
from paxoskv.util.local_pki import LocalPki, make_local_pki

__all__ = ["CampaignConfig", "CampaignResult", "run_campaign"]


@dataclass(frozen=True, slots=True, kw_only=True)
class CampaignConfig:
    out_dir: pathlib.Path
    nodes: int = 3
    duration_s: float = 60.0
    # Keep the faulty phase going past ``duration_s`` (up to ``duration_max_s``)
    # until the workload has invoked ``ops_min`` operations: a slow machine
    # still yields a history worth checking.
    ops_min: int = 0
    duration_max_s: float | None = None
    faults: frozenset[str] = frozenset(FAULT_FAMILIES)
    seed: int = 1
    workload: WorkloadConfig = field(default_factory=WorkloadConfig)
    etcd: EtcdWorkloadConfig | None = None  # an etcd-API workload beside it (chaos/etcd_workload.py)
    watch: WatchWorkloadConfig | None = None  # watchers on every member (chaos/watch_workload.py)
    nemesis: NemesisConfig | None = None  # None: defaults for ``faults``
    heartbeat_ms: int = 50
    election_ms: int = 500
    retain_entries: int | None = None  # serve --retain-entries (small: lagging nodes catch up by snapshot)
    warmup_s: float = 1.0
    tail_s: float = 4.0  # clients run this long after the full-cluster restart
    start_timeout_s: float = 30.0
    converge_timeout_s: float = 30.0
    check_budget_s: float | None = 120.0
    network: str = "auto"  # "auto", "netns" (required), "loopback"
    tls: bool = True  # TLS + client certificates on the public port (the bus always runs CURVE)
    node_command: tuple[str, ...] | None = None  # test hook (the CLI never sets it): None = paxoskv serve
    progress: Callable[[str], None] | None = None  # called with a one-line status every ``progress_s``
    progress_s: float = 10.0

    def __post_init__(self) -> None:
        assert self.nodes >= 1
        assert self.network in ("auto", "netns", "loopback")
        unknown = set(self.faults) - set(FAULT_FAMILIES)
        assert not unknown, f"unknown faults {sorted(unknown)}"
        assert self.duration_s > self.warmup_s + self.tail_s, "duration too short for warmup and tail"


@dataclass(slots=True)
class CampaignResult:
    config: CampaignConfig
    verdict: str = "unknown"  # pass | fail | unknown
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    network: str = ""
    history: list[Operation] = field(default_factory=list)
    workload_ops: int = 0
    check: CheckResult | None = None
    lost: list[LostWrite] = field(default_factory=list)
    node_diffs: list[str] = field(default_factory=list)
    convergence: Convergence | None = None
    final: FinalState | None = None
    logs: LogScan | None = None
    events: list[FaultEvent] = field(default_factory=list)
    health: list[HealthPoint] = field(default_factory=list)
    leaders: list[LeaderChange] = field(default_factory=list)
    snapshots: dict[int, tuple[int, int]] = field(
        default_factory=dict
    )  # node -> (times seen rising, max index)
    client_stats: ClientStats | None = None
    client_notes: dict[str, int] = field(default_factory=dict)
    safety_end_s: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    exit_codes: dict[int, int | None] = field(default_factory=dict)
    aborted: str = ""  # why the campaign stopped early, if it did
    etcd: EtcdOutcome | None = None  # the etcd-API workload and its checks, when configured
    watch: WatchOutcome | None = None  # the watchers and their check, when configured

    @property
    def passed(self) -> bool:
        return self.verdict == "pass"


def run_campaign(cfg: CampaignConfig) -> CampaignResult:
    """Run one campaign (blocking); writes its files into ``cfg.out_dir``."""
    return asyncio.run(_run(cfg))


async def _run(cfg: CampaignConfig) -> CampaignResult:
    res = CampaignResult(config=cfg)
    t_wall = time.monotonic()
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    want_partitions = "partition" in cfg.faults
    if cfg.network == "loopback":
        network: NamespaceNetwork | LoopbackNetwork = LoopbackNetwork(cfg.nodes, "loopback network asked for")
    else:
        network = make_network(cfg.nodes, want_partitions=want_partitions or cfg.network == "netns")
        if cfg.network == "netns" and not network.partitions_supported:
            raise NetworkError(f"network namespaces are required but unavailable: {network.why_unsupported}")
    if want_partitions and not network.partitions_supported:
        res.notes.append(f"partition faults skipped: {network.why_unsupported}")
    res.network = network.describe()
    t0 = time.monotonic()

    def clock() -> float:
        return time.monotonic() - t0

    cluster: Cluster | None = None
    pki: LocalPki | None = None
    try:
        await asyncio.to_thread(network.setup)
        if cfg.tls:
            hosts = [a.host for a in network.addresses.values()]
            pki = await asyncio.to_thread(make_local_pki, cfg.out_dir / "pki", hosts)
        extra_args = [] if cfg.retain_entries is None else ["--retain-entries", str(cfg.retain_entries)]
        cluster = Cluster(
            cfg.nodes,
            network,
            cfg.out_dir,
            node_command=cfg.node_command,
            heartbeat_ms=cfg.heartbeat_ms,
            election_ms=cfg.election_ms,
            extra_args=[*extra_args, *(pki.serve_args() if pki else [])],
            clock=clock,
        )
        await _campaign(cfg, res, network, cluster, clock, pki.client if pki else None)
    except (Exception, asyncio.CancelledError) as exc:
        res.aborted = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        if cluster is not None:
            res.exit_codes = await asyncio.to_thread(cluster.shutdown)
            cluster.check_exits()
            res.logs = scan_logs(cluster)
            for ev in cluster.unexpected_exits:
                how = (
                    f"killed by {signal.Signals(-ev.returncode).name}"
                    if ev.returncode is not None
                    and ev.returncode < 0
                    and -ev.returncode in signal.valid_signals()
                    else f"code {ev.returncode}"
                )
                res.problems.append(f"node {ev.node_id} exited by itself ({how}) at t={ev.at_s:.2f}s")
            for i, code in sorted(res.exit_codes.items()):
                if code is None:
                    res.notes.append(f"node {i} did not stop within the grace on SIGTERM and was killed")
        await asyncio.to_thread(network.teardown)
        if res.aborted:
            _finish(res, t_wall)
    _finish(res, t_wall)
    return res


def _finish(res: CampaignResult, t_wall: float) -> None:
    """Decide the verdict and write the files (also for an aborted campaign)."""
    from paxoskv.chaos.report import write_outputs

    if res.logs is not None and res.logs.findings:
        for f in res.logs.findings[:10]:
            res.problems.append(f"node {f.node_id} log line {f.line_no}: {f.line.strip()[:200]}")
        if len(res.logs.findings) > 10:
            res.problems.append(f"... and {len(res.logs.findings) - 10} more suspicious log lines")
    res.timings["total_s"] = time.monotonic() - t_wall
    _decide(res)
    write_outputs(res)


async def _campaign(
    cfg: CampaignConfig, res: CampaignResult, network, cluster: Cluster, clock, tls: ClientTLS | None
) -> None:
    targets = {i: a.target for i, a in network.addresses.items()}
    monitor = Monitor(targets, cluster.up, clock=clock, tls=tls)
    watch_wl = None
    try:
        t = clock()
        for i in cluster.ids:
            cluster.start(i)
        conv = await wait_converged(
            monitor, cluster.ids, timeout_s=cfg.start_timeout_s, clock=clock, stable_polls=1
        )
        if not conv.ok:
            cluster.check_exits()
            raise RuntimeError(f"the cluster did not start: {conv.detail} (see {cfg.out_dir}/n*/node.log)")
        res.timings["startup_s"] = clock() - t
        nemesis = Nemesis(
            cfg.nemesis or NemesisConfig(faults=frozenset(cfg.faults)),
            cluster,
            network,
            monitor,
            seed=cfg.seed,
            clock=clock,
        )
        res.notes.extend(n for n in nemesis.notes if n not in res.notes)
        workload = Workload(
            cfg.workload,
            targets,
            seed=cfg.seed,
            clock=clock,
            run_tag=f"chaos{cfg.seed}-{secrets.token_hex(2)}",
            on_write=nemesis.on_write,
            tls=tls,
        )
        etcd_wl = None if cfg.etcd is None else EtcdWorkload(cfg.etcd, targets, seed=cfg.seed, clock=clock, tls=tls)
        watch_wl = None if cfg.watch is None else WatchWorkload(cfg.watch, targets, seed=cfg.seed, tls=tls)
        stop_monitor = asyncio.Event()
        t_safety = clock()
        monitor_task = asyncio.create_task(monitor.run(stop_monitor))
        watchdog = asyncio.create_task(_watch_exits(cluster, stop_monitor))
        workload.start()
        if etcd_wl is not None:
            etcd_wl.start()
        if watch_wl is not None:
            watch_wl.start()
        reporter = asyncio.create_task(_progress(cfg, workload, nemesis, monitor, stop_monitor, clock))
        try:
            await asyncio.sleep(cfg.warmup_s)
            await nemesis.run(until_s=t_safety + cfg.duration_s - cfg.tail_s)
            hard_end = t_safety + max(cfg.duration_s, cfg.duration_max_s or 0.0) - cfg.tail_s
            if workload.invoked < cfg.ops_min and clock() < hard_end:
                res.notes.append(
                    f"only {workload.invoked} operations after {cfg.duration_s:g}s: extending the run "
                    f"until {cfg.ops_min} (at most {max(cfg.duration_s, cfg.duration_max_s or 0):g}s)"
                )
                while workload.invoked < cfg.ops_min and clock() < hard_end:
                    await nemesis.run(until_s=min(hard_end, clock() + 5.0))
            tail_end = clock() + cfg.tail_s
            await nemesis.heal_all()
            if "kill" in cfg.faults:
                await nemesis.kill_all()
            await asyncio.sleep(max(0.0, tail_end - clock()))
        finally:
            await workload.stop()
            if etcd_wl is not None:
                await etcd_wl.stop()
            res.safety_end_s = clock()
            res.timings["safety_s"] = res.safety_end_s - t_safety
        await nemesis.heal_all()
        stop_monitor.set()
        await monitor_task
        await watchdog
        await reporter
        res.events = nemesis.events
        res.health = nemesis.health
        res.client_stats = workload.stats
        res.client_notes = dict(workload.notes)
        # Liveness phase.
        t = clock()
        res.convergence = await wait_converged(
            monitor, cluster.ids, timeout_s=cfg.converge_timeout_s, clock=clock
        )
        res.timings["converge_s"] = clock() - t
        res.leaders = list(monitor.changes)
        res.snapshots = {i: (monitor.snapshot_changes[i], m) for i, m in sorted(monitor.snapshot_max.items())}
        res.workload_ops = len(workload.history())
        keys = [f"k{k}" for k in range(cfg.workload.keys)]
        res.final = await final_reads(targets, keys, workload.recorder, monitor, tls=tls)
        res.history = workload.history()
        other = None
        if etcd_wl is not None:
            try:
                other = await key_counts(targets, tls)
            except grpc.aio.AioRpcError as exc:
                res.problems.append(f"etcd: counting the etcd workload's keys failed: {exc.code().name} {exc.details()}")
        res.node_diffs = compare_nodes(res.final, cluster.ids, keys, other)
        seen: set[int] = set()
        for i in sorted(res.final.linearizable):
            for lw in lost_writes(res.history, res.final.linearizable[i]):
                if lw.op.id not in seen:
                    seen.add(lw.op.id)
                    res.lost.append(lw)
        t = time.monotonic()
        res.check = await asyncio.to_thread(check_history, res.history, time_budget_s=cfg.check_budget_s)
        res.timings["check_s"] = time.monotonic() - t
        if etcd_wl is not None:
            await _etcd_checks(cfg, res, etcd_wl, targets)
        if watch_wl is not None:
            res.watch = await check_watchers(watch_wl)  # stops the watchers
    finally:
        if watch_wl is not None:
            await watch_wl.stop()
        await monitor.close()


async def _etcd_checks(cfg: CampaignConfig, res: CampaignResult, wl: EtcdWorkload, targets: dict[int, str]) -> None:
    assert cfg.etcd is not None
    out = res.etcd = EtcdOutcome(history=wl.history(), notes=wl.notes)
    t = time.monotonic()
    await check_members(cfg.etcd, targets, out, tls=wl.tls)
    out.timings["members_s"] = time.monotonic() - t
    t = time.monotonic()
    out.check = await asyncio.to_thread(check_history_of, wl, res.history, cfg.check_budget_s, out.foreign_revisions)
    out.timings["check_s"] = time.monotonic() - t


async def _progress(
    cfg: CampaignConfig, workload: Workload, nemesis: Nemesis, monitor: Monitor, stop: asyncio.Event, clock
) -> None:
    if cfg.progress is None:
        return
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), cfg.progress_s)
            return
        except asyncio.TimeoutError:
            pass
        ops = workload.history()
        ok = sum(1 for o in ops if o.outcome == "ok")
        unknown = sum(1 for o in ops if o.outcome == "unknown")
        last = nemesis.events[-1] if nemesis.events else None
        cfg.progress(
            f"t={clock():6.1f}s  ops {len(ops)} (ok {ok}, unknown {unknown})  faults {len(nemesis.events)}"
            f"{f' (last: {last.kind})' if last else ''}  leader {monitor.leader() or '?'}"
        )


async def _watch_exits(cluster: Cluster, stop: asyncio.Event) -> None:
    while not stop.is_set():
        cluster.check_exits()
        try:
            await asyncio.wait_for(stop.wait(), 0.25)
        except asyncio.TimeoutError:
            pass


def _decide(res: CampaignResult) -> None:
    if res.convergence is not None and not res.convergence.ok:
        res.problems.append(f"the cluster did not converge within the timeout: {res.convergence.detail}")
    for d in res.node_diffs:
        res.problems.append(f"nodes differ: {d}")
    for lw in res.lost:
        res.problems.append(f"lost acknowledged write: {lw.why}")
    check = res.check
    if res.etcd is not None:
        res.problems.extend(res.etcd.problems)
        if res.etcd.check is None:
            res.problems.append("the etcd history was not checked")
        elif res.etcd.check.verdict == "violation":
            res.problems.append(f"etcd history not linearizable: {res.etcd.check.explanation}")
    if res.watch is not None:
        res.problems.extend(res.watch.failures())
    if res.aborted:
        res.problems.append(f"the campaign stopped early: {res.aborted}")
    if check is None:
        res.problems.append("the history was not checked")
        res.verdict = "fail"
        return
    if check.verdict == "violation":
        for k in check.violations:
            what = k.failing_op.describe() if k.failing_op is not None else "see the checker's explanation"
            res.problems.append(f"not linearizable on key {k.key}: cannot linearize {what}")
    if res.problems or check.verdict == "violation":
        res.verdict = "fail"
    elif check.verdict == "unknown" or (res.etcd is not None and res.etcd.check is not None
                                        and res.etcd.check.verdict == "unknown"):
        res.verdict = "unknown"
    else:
        res.verdict = "pass"
