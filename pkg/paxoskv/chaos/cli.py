"""``paxoskv chaos``: run a fault campaign against a local cluster of real processes.

Rules
-----
* The command starts its own cluster of ``paxoskv serve`` processes (data,
  logs and results under ``--out``), runs the campaign, prints the summary
  and exits 0 on a ``pass`` verdict, 1 on ``fail``, 3 on ``unknown`` (the
  checker ran out of budget: raise ``--check-budget``), 2 on bad usage.
* ``--faults`` is a comma list of ``kill``, ``pause``, ``partition`` (or
  ``none``). Partitions need root and network namespaces; without them they
  are skipped with a message and the other faults still run.
* Durations accept ``90``, ``90s``, ``10m``, ``1h``.
* There is deliberately no flag to run anything but the real ``paxoskv
  serve``: the weakened node of the test suite is reachable from the tests
  only.
"""

from __future__ import annotations

import pathlib
import re
import sys
import time

import click

from paxoskv.cli_options import option
from paxoskv.chaos.campaign import CampaignConfig, run_campaign
from paxoskv.chaos.etcd_workload import EtcdWorkloadConfig
from paxoskv.chaos.nemesis import FAULT_FAMILIES
from paxoskv.chaos.net import NetworkError
from paxoskv.chaos.watch_workload import WatchWorkloadConfig
from paxoskv.chaos.workload import WorkloadConfig

__all__ = ["chaos_cmd", "parse_duration", "parse_faults"]

EXIT_PASS, EXIT_FAIL, EXIT_USAGE, EXIT_UNKNOWN = 0, 1, 2, 3
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if not m:
        raise click.BadParameter(f"{text!r} is not a duration like 90s, 10m or 1h")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_faults(text: str) -> frozenset[str]:
    names = {f.strip() for f in text.split(",") if f.strip()}
    if names == {"none"}:
        return frozenset()
    unknown = names - set(FAULT_FAMILIES)
    if unknown:
        raise click.BadParameter(
            f"unknown fault(s) {', '.join(sorted(unknown))}; choose from "
            f"{', '.join(FAULT_FAMILIES)} or none"
        )
    return frozenset(names)


@click.command("chaos", context_settings={"show_default": True})
@option("--nodes", type=click.IntRange(1, 9), envvar=None)  # a campaign is its flags only
@click.option("--duration", "duration", default="60s", help="Length of the faulty phase (90s, 10m, ...).")
@click.option(
    "--faults", default="kill,pause,partition", help="Comma list of kill, pause, partition (or none)."
)
@click.option(
    "--seed", type=int, default=None, help="Seed of the fault schedule and the clients (default: time)."
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=pathlib.Path),
    default=None,
    help="Directory for history, verdict, summary, node logs and data (default: ./chaos-<seed>).",
)
@click.option("--clients", type=click.IntRange(1, 1000), default=12, help="Concurrent clients.")
@click.option("--keys", type=click.IntRange(1, 10_000), default=5, help="Size of the key set.")
@click.option(
    "--p-batch",
    type=click.FloatRange(0.0, 1.0),
    default=0.2,
    show_default=True,
    help="Share of a client's steps that are one PackedBatch call of 3 writes (exactly-once retries of a batch).",
)
@click.option(
    "--etcd-clients",
    type=click.IntRange(0, 100),
    default=0,
    help="etcd-API clients beside the paxoskv.v1 ones (Txn, Range at a revision; checked by paxoskv.check.txn).",
)
@click.option(
    "--lease-clients",
    type=click.IntRange(0, 100),
    default=2,
    help="With --etcd-clients: lease clients among them (grant, put with the lease, keep-alive, revoke, expiry).",
)
@option("--election-ms", type=click.IntRange(50, 60_000), envvar=None)
@option("--heartbeat-ms", type=click.IntRange(5, 10_000), envvar=None)
@click.option(
    "--retain-entries",
    type=click.IntRange(1, None),
    default=None,
    help="Passed to serve: log entries kept after compaction (small values make lagging nodes catch up "
    "by snapshot). Default: serve's own.",
)
@click.option(
    "--check-budget", "check_budget", default="10m", help="Time budget of the linearizability check."
)
@click.option(
    "--network",
    type=click.Choice(["auto", "netns", "loopback"]),
    default="auto",
    help="auto: namespaces when partitions are asked for and possible; netns: require them.",
)
@click.option(
    "--tls/--no-tls",
    default=True,
    show_default=True,
    help="TLS and client certificates on the nodes' public port (a CA made for the campaign). "
    "The peer bus always runs CURVE.",
)
@click.option(
    "--watch/--no-watch",
    default=False,
    show_default=True,
    help="Also run watchers (etcd Watch streams) on every member and check what they received "
    "against the event log (docs/chaos.md).",
)
def chaos_cmd(
    nodes: int,
    duration: str,
    faults: str,
    seed: int | None,
    out_dir: pathlib.Path | None,
    clients: int,
    keys: int,
    p_batch: float,
    etcd_clients: int,
    lease_clients: int,
    election_ms: int,
    heartbeat_ms: int,
    retain_entries: int | None,
    check_budget: str,
    network: str,
    tls: bool,
    watch: bool,
) -> None:
    """Run real nodes under concurrent clients and a nemesis, then check everything.

    Checks: (a) the history is linearizable, (b) no acknowledged write is lost,
    (c) all nodes end with identical state and applied index, (d) no node log
    mentions an assertion or a traceback.
    """
    try:
        duration_s = parse_duration(duration)
        budget_s = parse_duration(check_budget)
        fault_set = parse_faults(faults)
    except click.BadParameter as exc:
        raise click.UsageError(str(exc)) from None
    if seed is None:
        seed = int(time.time()) % 1_000_000
    if out_dir is None:
        out_dir = pathlib.Path(f"chaos-{seed}")
    out_dir = out_dir.resolve()
    if out_dir.exists() and any(out_dir.iterdir()):
        raise click.UsageError(f"{out_dir} is not empty: pass another --out (nodes would reuse old data)")
    tail_s = 4.0
    if duration_s <= 1.0 + tail_s + 1.0:
        raise click.UsageError(f"--duration must be longer than {2.0 + tail_s:g}s")
    cfg = CampaignConfig(
        out_dir=out_dir,
        nodes=nodes,
        duration_s=duration_s,
        faults=fault_set,
        seed=seed,
        workload=WorkloadConfig(clients=clients, keys=keys, p_batch=p_batch),
        etcd=EtcdWorkloadConfig(clients=etcd_clients, lease_clients=lease_clients) if etcd_clients else None,
        heartbeat_ms=heartbeat_ms,
        election_ms=election_ms,
        retain_entries=retain_entries,
        tail_s=tail_s,
        check_budget_s=budget_s,
        network=network,
        tls=tls,
        watch=WatchWorkloadConfig() if watch else None,
        progress=lambda line: click.echo(f"paxoskv chaos: {line}", err=True),
        progress_s=max(5.0, min(30.0, duration_s / 10)),
    )
    click.echo(
        f"paxoskv chaos: seed {seed}, {nodes} nodes, {duration_s:g}s, faults "
        f"{','.join(sorted(fault_set)) or 'none'}; results in {out_dir}/",
        err=True,
    )
    try:
        res = run_campaign(cfg)
    except NetworkError as exc:
        click.echo(f"paxoskv chaos: error: {exc}", err=True)
        sys.exit(EXIT_FAIL)
    except KeyboardInterrupt:
        click.echo("paxoskv chaos: interrupted; nodes stopped and the network removed", err=True)
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the summary was written; say where
        click.echo(
            (out_dir / "summary.txt").read_text() if (out_dir / "summary.txt").exists() else "", nl=False
        )
        click.echo(f"paxoskv chaos: the campaign stopped: {type(exc).__name__}: {exc}", err=True)
        sys.exit(EXIT_FAIL)
    click.echo((out_dir / "summary.txt").read_text(), nl=False)
    sys.exit({"pass": EXIT_PASS, "fail": EXIT_FAIL}.get(res.verdict, EXIT_UNKNOWN))
