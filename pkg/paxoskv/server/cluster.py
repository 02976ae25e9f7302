"""``paxoskv cluster``: N local nodes in the foreground, for development and demos.

Rules:

- Node ``i`` (1..N) serves gRPC on ``--listen`` : ``base_port + i - 1``, its
  peer bus on that port + 1000 (the default rule of ``serve``), and keeps its
  data in ``<data-dir>/node<i>``. The peer bus runs CURVE with the key pairs
  in ``<data-dir>/keys`` (made on the first run, kept for the next: secrets
  0600). Each is a ``paxoskv serve`` child process in
  a session of its own, so a Ctrl-C in the terminal reaches only this
  command, which then stops the nodes itself.
- Every line a node writes is printed here, prefixed with ``[node<i>]`` in a
  colour of its own (colour only on a terminal).
- Once a leader is elected, a banner says how to talk to the cluster and
  how to stop or restart one node by hand (its PID and ``serve`` command).
- SIGINT or SIGTERM: SIGTERM to each node by PID, SIGKILL to any still
  running after ``STOP_GRACE_S``; then exit 0. A node that dies meanwhile
  (say, you ``kill -9`` it to test fault tolerance) is reported and the others
  keep running; the command ends when every node has ended.
- A node that fails to start (port in use, data directory refused) ends the
  whole command with that node's exit code.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import signal
import sys
import time
from dataclasses import dataclass

import click

from paxoskv.server.config import BUS_PORT_OFFSET, ConfigError, format_hostport, parse_port
from paxoskv.procutil import die_with_parent

__all__ = ["cluster_cmd"]

STOP_GRACE_S = 10.0
READY_TIMEOUT_S = 30.0
COLOURS = ("cyan", "green", "yellow", "magenta", "blue", "red", "bright_cyan", "bright_green")


@dataclass(frozen=True, slots=True)
class _NodeSpec:
    node_id: int
    port: int
    bus_port: int
    data_dir: str
    argv: tuple[str, ...]

    @property
    def label(self) -> str:
        return f"node{self.node_id}"


def _keys_dir(data_dir: str) -> str:
    return os.path.join(data_dir, "keys")


def _plan(
    nodes: int,
    base_port: int,
    data_dir: str,
    listen: str,
    cluster_id: str,
    heartbeat_ms: int,
    election_ms: int,
    log_level: str,
) -> list[_NodeSpec]:
    if nodes < 1:
        raise ConfigError(f"--nodes must be >= 1, not {nodes}")
    parse_port(base_port, "--base-port")
    last = base_port + nodes - 1 + BUS_PORT_OFFSET
    parse_port(last, f"the last bus port (--base-port + {nodes - 1} + {BUS_PORT_OFFSET})")
    peer_host = "127.0.0.1" if listen in ("0.0.0.0", "::", "") else listen
    keys_dir = _keys_dir(data_dir)
    specs = []
    for i in range(1, nodes + 1):
        port = base_port + i - 1
        peers = ",".join(
            f"{j}={format_hostport(peer_host, base_port + j - 1)}"
            for j in range(1, nodes + 1)
            if j != i
        )
        node_dir = os.path.join(data_dir, f"node{i}")
        argv = (
            sys.executable, "-m", "paxoskv.server.cli",
            "--id", str(i),
            "--cluster-id", cluster_id,
            "--listen", listen,
            "--port", str(port),
            "--bus-port", str(port + BUS_PORT_OFFSET),
            "--peers", peers,
            "--data-dir", node_dir,
            "--peer-public-keys", keys_dir,
            "--heartbeat-ms", str(heartbeat_ms),
            "--election-ms", str(election_ms),
            "--log-level", log_level,
        )  # fmt: skip
        specs.append(_NodeSpec(i, port, port + BUS_PORT_OFFSET, node_dir, argv))
    return specs


def _say(text: str) -> None:
    click.echo(click.style("[cluster] ", bold=True) + text)


async def _pump_output(spec: _NodeSpec, proc: asyncio.subprocess.Process) -> None:
    prefix = click.style(f"[{spec.label}] ", fg=COLOURS[(spec.node_id - 1) % len(COLOURS)])
    assert proc.stdout is not None
    while True:
        line = await proc.stdout.readline()
        if not line:
            return
        click.echo(prefix + line.decode("utf-8", "replace").rstrip("\n"))


async def _wait_ready(
    specs: list[_NodeSpec], procs: dict[int, asyncio.subprocess.Process]
) -> int | None:
    """The leader's id once every live node knows it; None if a node died or time ran out."""
    from paxoskv.client.client import Client

    host = "127.0.0.1"
    eps = [format_hostport(host, s.port) for s in specs]
    deadline = time.monotonic() + READY_TIMEOUT_S
    async with Client(eps, timeout_s=1.0) as client:
        while time.monotonic() < deadline:
            if any(p.returncode is not None for p in procs.values()):
                return None
            answers = await client.status_all(timeout_s=0.5)
            leaders = {a.status.leader_id for a in answers if a.status is not None}
            if (
                all(a.status is not None for a in answers)
                and len(leaders) == 1
                and 0 not in leaders
            ):
                return leaders.pop()
            await asyncio.sleep(0.1)
    return None


def _paxoskv() -> str:
    """How to run the ``paxoskv`` script from here: relative if below the cwd."""
    script = os.path.join(os.path.dirname(sys.executable), "paxoskv")
    if not os.path.exists(script):
        return "paxoskv"
    rel = os.path.relpath(script)
    return rel if not rel.startswith("..") else script


def _banner(specs: list[_NodeSpec], listen: str, leader: int, pids: dict[int, int]) -> None:
    host = "127.0.0.1" if listen in ("0.0.0.0", "::", "") else listen
    eps = ",".join(format_hostport(host, s.port) for s in specs)
    pk = _paxoskv()
    _say(f"{len(specs)} nodes up; leader is node {leader}. Talk to them:")
    click.echo(f"    {pk} put --endpoints {eps} greeting hello")
    click.echo(f"    {pk} get --endpoints {eps} greeting")
    click.echo(f"    {pk} status --endpoints {eps}")
    click.echo(f"  (or export PAXOSKV_ENDPOINTS={eps} and leave out --endpoints)")
    click.echo("  Nodes (kill -9 a PID to test fault tolerance; restart it with its command):")
    for s in specs:
        cmd = " ".join(shlex.quote(a) for a in (pk, "serve", *s.argv[3:]))
        click.echo(
            f"    {s.label}: pid {pids[s.node_id]}  gRPC {format_hostport(host, s.port)}  "
            f"bus {s.bus_port}  data {s.data_dir}"
        )
        click.echo(f"      {cmd}")
    click.echo("  Ctrl-C stops them all.")


async def _run(specs: list[_NodeSpec], listen: str) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    procs: dict[int, asyncio.subprocess.Process] = {}
    pumps: list[asyncio.Task] = []
    rc = 0
    try:
        for s in specs:
            proc = await asyncio.create_subprocess_exec(
                *die_with_parent(s.argv),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
            procs[s.node_id] = proc
            pumps.append(asyncio.create_task(_pump_output(s, proc)))
        _say("started " + ", ".join(f"node{i} (pid {p.pid})" for i, p in procs.items()))
        ready = asyncio.create_task(_wait_ready(specs, procs))
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({ready, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if stop.is_set():
            ready.cancel()
        else:
            leader = ready.result()
            if leader is None:
                failed = {
                    i: p.returncode for i, p in procs.items() if p.returncode not in (None, 0)
                }
                if failed:
                    node, code = next(iter(failed.items()))
                    _say(f"node{node} failed to start (exit code {code}); stopping the others")
                    return code or 1
                _say(f"no leader within {READY_TIMEOUT_S:.0f}s; the nodes keep trying")
            else:
                _banner(specs, listen, leader, {i: p.pid for i, p in procs.items()})
            waits = {asyncio.create_task(p.wait()): i for i, p in procs.items()}
            pending = set(waits)
            while pending and not stop.is_set():
                done, pending = await asyncio.wait(
                    pending | {stopper}, return_when=asyncio.FIRST_COMPLETED
                )
                for t in done:
                    if t is stopper:
                        continue
                    i = waits[t]
                    _say(f"node{i} exited with code {procs[i].returncode}")
                pending.discard(stopper)
            for t in pending:
                t.cancel()
        stopper.cancel()
    finally:
        await _stop_all(procs)
        await asyncio.gather(*pumps, return_exceptions=True)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    _say("all nodes stopped")
    return rc


async def _stop_all(procs: dict[int, asyncio.subprocess.Process]) -> None:
    live = {i: p for i, p in procs.items() if p.returncode is None}
    for p in live.values():
        try:
            p.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + STOP_GRACE_S
    for i, p in live.items():
        try:
            await asyncio.wait_for(p.wait(), max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            _say(f"node{i} (pid {p.pid}) did not stop within {STOP_GRACE_S:.0f}s: SIGKILL")
            try:
                p.kill()
            except ProcessLookupError:
                pass
            await p.wait()


@click.command("cluster", context_settings={"show_default": True})
@click.option(
    "--nodes", type=int, default=3, envvar="PAXOSKV_NODES", show_envvar=True, help="How many nodes."
)
@click.option(
    "--base-port",
    type=int,
    default=50051,
    envvar="PAXOSKV_BASE_PORT",
    show_envvar=True,
    help="gRPC port of node 1; node i gets base + i - 1, its bus port that + 1000.",
)
@click.option(
    "--data-dir",
    default="./data",
    envvar="PAXOSKV_CLUSTER_DATA_DIR",
    show_envvar=True,
    help="Parent directory: node i keeps its data in DATA_DIR/node<i>.",
)
@click.option(
    "--listen",
    default="127.0.0.1",
    envvar="PAXOSKV_CLUSTER_LISTEN",
    show_envvar=True,
    help="Address every node binds.",
)
@click.option(
    "--cluster-id",
    default="paxoskv",
    envvar="PAXOSKV_CLUSTER_ID",
    show_envvar=True,
    help="Cluster name.",
)
@click.option(
    "--heartbeat-ms",
    type=int,
    default=50,
    envvar="PAXOSKV_HEARTBEAT_MS",
    show_envvar=True,
    help="Leader heartbeat interval.",
)
@click.option(
    "--election-ms",
    type=int,
    default=500,
    envvar="PAXOSKV_ELECTION_MS",
    show_envvar=True,
    help="Election timeout.",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    default="info",
    envvar="PAXOSKV_LOG_LEVEL",
    show_envvar=True,
    help="Nodes' log verbosity.",
)
def cluster_cmd(
    nodes: int,
    base_port: int,
    data_dir: str,
    listen: str,
    cluster_id: str,
    heartbeat_ms: int,
    election_ms: int,
    log_level: str,
) -> None:
    """Run N local nodes in the foreground with prefixed logs; Ctrl-C stops them all."""
    try:
        specs = _plan(
            nodes, base_port, data_dir, listen, cluster_id, heartbeat_ms, election_ms, log_level
        )
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    from paxoskv.transport.keys import KeyFileError, ensure_key_pairs

    try:
        made = ensure_key_pairs(_keys_dir(data_dir), range(1, nodes + 1))
    except (KeyFileError, OSError) as exc:
        click.echo(f"paxoskv cluster: error: {exc}", err=True)
        sys.exit(2)
    if any(made.values()):
        _say(f"made CURVE key pairs for the peer bus in {_keys_dir(data_dir)}")
    sys.exit(asyncio.run(_run(specs, listen)))
