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
- Before it starts anything it refuses, with one line and exit code 2: a
  data directory another ``paxoskv cluster`` runs on (it holds the
  directory's control socket, ``cluster_control``), a node directory whose
  LevelDB is locked by another process, a gRPC or bus port already in use.
- "N nodes up" is printed once every node runs and they agree on a leader;
  the banner then says how to talk to the cluster and, per node, its PID and
  the command that restarts it under this command (``--restart N``, through
  the control socket), so that Ctrl-C stops it too.
- SIGINT or SIGTERM: SIGTERM to each node by PID, SIGKILL to any still
  running after ``STOP_GRACE_S``. A node that dies meanwhile (say, you
  ``kill -9`` it to test fault tolerance) is reported and the others keep
  running; the command ends when every node has ended.
- Exit code: 0 after a stop on request with every node healthy until then;
  1 if a node died unexpectedly (a signal or a non-zero exit code of its
  own) at any time; a node that fails to start ends the whole command with
  that node's exit code.

The addresses, the ``serve`` flags and the leader check are
``paxoskv.launch``'s, as for every local cluster; what is this command's own
is that its nodes are asyncio subprocesses whose output it pipes and
prefixes, and that it says what it does while stopping them.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import shlex
import signal
import socket
import sys
import time
from dataclasses import dataclass

import click

from paxoskv.cli_options import option
from paxoskv.launch import STOP_GRACE_S, agreed_leader, local_addresses, node_status, serve_args
from paxoskv.procutil import die_with_parent
from paxoskv.server import cluster_control
from paxoskv.server.config import BUS_PORT_OFFSET, ConfigError, format_hostport, parse_port
from paxoskv.util.ports import bindable
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
    addresses = local_addresses(nodes, host=peer_host, base_port=base_port)
    keys_dir = _keys_dir(data_dir)
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
            extra=("--peer-public-keys", keys_dir),
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


def _preflight(specs: list[_NodeSpec], listen: str) -> str | None:
    """Why the nodes cannot start here (one line), or None."""
    host = "0.0.0.0" if listen in ("", "0.0.0.0") else listen
    for s in specs:
        lock = os.path.join(s.data_dir, "LOCK")
        if os.path.exists(lock) and _locked(lock):
            return f"data directory {s.data_dir} is in use by another process (a node runs on it)"
        for port, what in ((s.port, "gRPC"), (s.bus_port, "bus")):
            if not bindable(host, port):
                return (
                    f"port {port} ({s.label}'s {what} port) is in use on {host}: is another cluster "
                    f"running? --base-port (PAXOSKV_BASE_PORT) moves the ports"
                )
    return None


def _locked(path: str) -> bool:
    """Whether another process holds LevelDB's lock (a POSIX record lock) on ``path``."""
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing drops the lock we may have taken
    return False


def _paxoskv() -> str:
    """How to run the ``paxoskv`` script from here: relative if below the cwd."""
    script = os.path.join(os.path.dirname(sys.executable), "paxoskv")
    if not os.path.exists(script):
        return "paxoskv"
    rel = os.path.relpath(script)
    return rel if not rel.startswith("..") else script


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class _Supervisor:
    """The nodes of one ``paxoskv cluster`` run: start, watch, restart, stop."""

    def __init__(self, specs: list[_NodeSpec], listen: str, data_dir: str) -> None:
        self.specs = {s.node_id: s for s in specs}
        self.listen = listen
        self.data_dir = data_dir
        self.env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self.pumps: list[asyncio.Task] = []
        self.watchers: set[asyncio.Task] = set()
        self.stopping = False
        self.died: dict[int, int] = {}  # node -> exit code of its last unexpected end
        self.changed = asyncio.Event()  # a node ended

    async def start(self, node_id: int) -> asyncio.subprocess.Process:
        spec = self.specs[node_id]
        proc = await asyncio.create_subprocess_exec(
            *die_with_parent(list(spec.argv)),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
        )
        self.procs[node_id] = proc
        self.pumps.append(asyncio.create_task(_pump_output(spec, proc)))
        watcher = asyncio.create_task(self._watch(node_id, proc))
        self.watchers.add(watcher)
        watcher.add_done_callback(self.watchers.discard)
        return proc

    async def _watch(self, node_id: int, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        if not self.stopping:
            if code != 0:
                self.died[node_id] = code
                _say(
                    f"node{node_id} died unexpectedly ({_describe_exit(code)}); the others keep "
                    f"running. Restart it with: {self.restart_command(node_id)}"
                )
            else:
                _say(f"node{node_id} stopped (exit code 0)")
        self.changed.set()

    def running(self) -> list[int]:
        return [i for i, p in self.procs.items() if p.returncode is None]

    def restart_command(self, node_id: int) -> str:
        return " ".join(
            shlex.quote(a) for a in (_paxoskv(), "cluster", "--data-dir", self.data_dir, "--restart", str(node_id))
        )

    async def handle(self, line: str) -> str:
        """A control request (``cluster_control``): ``restart N``."""
        verb, _, arg = line.partition(" ")
        if verb != "restart" or not arg.strip().isdigit():
            return "error: unknown request (expected: restart N)"
        node_id = int(arg)
        if node_id not in self.specs:
            return f"error: no node{node_id} in this cluster (nodes 1..{len(self.specs)})"
        if self.stopping:
            return "error: the cluster is stopping"
        proc = self.procs.get(node_id)
        if proc is not None and proc.returncode is None:
            return f"error: node{node_id} is running (pid {proc.pid}): stop it first"
        try:
            proc = await self.start(node_id)
        except OSError as exc:
            return f"error: cannot start node{node_id}: {exc}"
        _say(f"node{node_id} restarted on request (pid {proc.pid})")
        return f"ok: node{node_id} restarted (pid {proc.pid}); its log is in the cluster's output"

    async def wait_ready(self) -> int | None:
        """The leader's id once every node runs and knows it; None if a node
        ended first or time ran out."""
        eps = [format_hostport("127.0.0.1", s.port) for s in self.specs.values()]

        def leader() -> int | None:  # in a worker thread: the loop keeps printing the nodes' output
            return agreed_leader(node_status(ep, 0.5) for ep in eps)

        async def probe() -> int | None:
            if len(self.running()) < len(self.specs):
                raise _NodeExited
            lid = await asyncio.to_thread(leader)
            if len(self.running()) < len(self.specs):
                raise _NodeExited  # an answer from a node that is not ours
            return lid

        try:
            return await wait_until_async("a leader", probe, READY_TIMEOUT_S, interval_s=0.1)
        except (WaitTimeout, _NodeExited):
            return None

    def banner(self, leader: int) -> None:
        host = "127.0.0.1" if self.listen in ("0.0.0.0", "::", "") else self.listen
        specs = list(self.specs.values())
        eps = ",".join(format_hostport(host, s.port) for s in specs)
        pk = _paxoskv()
        _say(f"{len(specs)} nodes up; leader is node {leader}. Talk to them:")
        click.echo(f"    {pk} put --endpoints {eps} greeting hello")
        click.echo(f"    {pk} get --endpoints {eps} greeting")
        click.echo(f"    {pk} status --endpoints {eps}")
        click.echo(f"  (or export PAXOSKV_ENDPOINTS={eps} and leave out --endpoints)")
        click.echo("  Nodes (kill -9 a PID to test fault tolerance; its command restarts it here):")
        for s in specs:
            click.echo(
                f"    {s.label}: pid {self.procs[s.node_id].pid}  gRPC {format_hostport(host, s.port)}  "
                f"bus {s.bus_port}  data {s.data_dir}"
            )
            click.echo(f"      {self.restart_command(s.node_id)}")
        click.echo("  Ctrl-C stops them all.")

    async def stop_all(self) -> None:
        self.stopping = True
        live = {i: p for i, p in self.procs.items() if p.returncode is None}
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
        await asyncio.gather(*self.pumps, *self.watchers, return_exceptions=True)


class _NodeExited(Exception):
    """A node ended while the cluster waited for a leader."""


async def _run(specs: list[_NodeSpec], listen: str, data_dir: str, control: socket.socket) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    sup = _Supervisor(specs, listen, data_dir)
    server = await cluster_control.serve(control, sup.handle)
    try:
        for s in specs:
            await sup.start(s.node_id)
        _say("started " + ", ".join(f"node{i} (pid {p.pid})" for i, p in sup.procs.items()))
        ready = asyncio.create_task(sup.wait_ready())
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({ready, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if stop.is_set():
            ready.cancel()
        else:
            leader = ready.result()
            if leader is None:
                failed = {i: p.returncode for i, p in sup.procs.items() if p.returncode not in (None, 0)}
                if failed:
                    node, code = next(iter(failed.items()))
                    _say(f"node{node} failed to start ({_describe_exit(code)}); stopping the others")
                    return code if code > 0 else 1
                _say(f"no leader within {READY_TIMEOUT_S:.0f}s; the nodes keep trying")
            else:
                sup.banner(leader)
            while sup.running() and not stop.is_set():
                sup.changed.clear()
                changed = asyncio.create_task(sup.changed.wait())
                await asyncio.wait({changed, stopper}, return_when=asyncio.FIRST_COMPLETED)
                changed.cancel()
            if not stop.is_set():
                _say("every node has ended")
        stopper.cancel()
    finally:
        server.close()
        await sup.stop_all()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    if sup.died:
        _say(
            "all nodes stopped; exit code 1: "
            + ", ".join(f"node{i} died unexpectedly ({_describe_exit(c)})" for i, c in sorted(sup.died.items()))
        )
        return 1
    _say("all nodes stopped")
    return 0


def _fail(message: str) -> None:
    click.echo(f"paxoskv cluster: error: {message}", err=True)
    sys.exit(2)


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
@click.option(
    "--restart",
    "restart_node",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Do not start a cluster: restart node N of the one running on --data-dir, under it "
    "(after a kill -9; Ctrl-C there stops it too).",
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
    restart_node: int | None,
) -> None:
    """Run N local nodes in the foreground with prefixed logs; Ctrl-C stops them all.

    Exit codes: 0 stopped on request; 1 a node died unexpectedly; 2 it cannot
    start (a port or the data directory in use, a bad flag).
    """
    if restart_node is not None:
        try:
            answer = cluster_control.request(data_dir, f"restart {restart_node}")
        except cluster_control.NotRunning:
            _fail(f"no paxoskv cluster runs on data directory {data_dir}")
        except OSError as exc:
            _fail(f"cannot reach the paxoskv cluster of {data_dir}: {exc}")
        click.echo(answer, err=not answer.startswith("ok:"))
        sys.exit(0 if answer.startswith("ok:") else 1)
    try:
        specs = _plan(
            nodes, base_port, data_dir, listen, cluster_id, heartbeat_ms, election_ms, log_level
        )
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        control = cluster_control.claim(data_dir)
    except cluster_control.InUse:
        _fail(f"data directory {data_dir} is in use by another paxoskv cluster (stop it first, or pick another --data-dir)")
    from paxoskv.transport.keys import KeyFileError, ensure_key_pairs

    try:
        refusal = _preflight(specs, listen)  # before anything is made: a refusal leaves nothing behind
        if refusal is not None:
            _fail(refusal)
        try:
            made = ensure_key_pairs(_keys_dir(data_dir), range(1, nodes + 1))
        except (KeyFileError, OSError) as exc:
            _fail(str(exc))
        if any(made.values()):
            _say(f"made CURVE key pairs for the peer bus in {_keys_dir(data_dir)}")
        sys.exit(asyncio.run(_run(specs, listen, data_dir, control)))
    finally:
        control.close()
