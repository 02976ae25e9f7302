"""``paxoskv cluster``: N local nodes in the foreground, for development and demos.

Rules:

- Node ``i`` (1..N) serves gRPC on ``--listen`` : ``base_port + i - 1``, its
  peer bus on that port + 1000 (the default rule of ``serve``), and keeps its
  data in ``<data-dir>/node<i>``. Each is a ``paxoskv serve`` child process in
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

The addresses, the ``serve`` flags and the leader check are
``paxoskv.launch``'s, as for every local cluster; what is this command's own
is that its nodes are asyncio subprocesses whose output it pipes and
prefixes, and that it says what it does while stopping them.
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

from paxoskv.cli_options import option
from paxoskv.launch import STOP_GRACE_S, agreed_leader, local_addresses, node_status, serve_args
from paxoskv.procutil import die_with_parent
from paxoskv.server.config import BUS_PORT_OFFSET, ConfigError, format_hostport, parse_port
from paxoskv.util.wait import WaitTimeout, wait_until_async

__all__ = ["cluster_cmd"]

READY_TIMEOUT_S = 30.0
_SERVE = (sys.executable, "-m", "paxoskv.server.cli")  # the banner shows "paxoskv serve" instead
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
    addresses = local_addresses(nodes, host=peer_host, base_port=base_port)
    specs = []
    for i, a in addresses.items():
        node_dir = os.path.join(data_dir, f"node{i}")
        args = serve_args(
            i,
            addresses,
            cluster_id=cluster_id,
            data_dir=node_dir,
            listen=listen,
            heartbeat_ms=heartbeat_ms,
            election_ms=election_ms,
            log_level=log_level,
        )
        argv = (*_SERVE, *args)
        specs.append(_NodeSpec(i, a.port, a.bus_port, node_dir, argv))
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
    eps = [format_hostport("127.0.0.1", s.port) for s in specs]

    def leader() -> int | None:  # in a worker thread: the loop keeps printing the nodes' output
        return agreed_leader(node_status(ep, 0.5) for ep in eps)

    async def probe() -> int | None:
        if any(p.returncode is not None for p in procs.values()):
            raise _NodeExited
        return await asyncio.to_thread(leader)

    try:
        return await wait_until_async("a leader", probe, READY_TIMEOUT_S, interval_s=0.1)
    except (WaitTimeout, _NodeExited):
        return None


class _NodeExited(Exception):
    """A node ended while the cluster waited for a leader."""


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
        cmd = " ".join(shlex.quote(a) for a in (pk, "serve", *s.argv[len(_SERVE) :]))
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
@option("--nodes")
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
@option("--cluster-id")
@option("--heartbeat-ms")
@option("--election-ms")
@option("--log-level")
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
    sys.exit(asyncio.run(_run(specs, listen)))
