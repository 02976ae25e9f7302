"""Local process clusters: N ``paxoskv serve`` nodes on this machine, by PID.

``paxoskv cluster``, the benchmark harness, the chaos campaign and the
integration tests start their nodes with this module.

Rules:

- Node ``i``'s ``--peers`` are the other nodes, ``j=HOST:PORT[:BUSPORT]`` in
  id order; a peer's bus port is written only where it is not the rule every
  node applies by default (``PORT + BUS_PORT_OFFSET``).
- ``serve_args`` writes the flags in one order: ``--id --cluster-id --listen
  --port --bus-port --peers --data-dir``, then those of ``--heartbeat-ms
  --election-ms --log-level`` that were given, then the caller's extra ones.
- ``spawn`` starts a process that cannot outlive its starter
  (``procutil.die_with_parent``), in a session of its own (a Ctrl-C at the
  terminal reaches the starter only, which then stops it), stdin closed,
  stdout and stderr appended to its log file, ``PYTHONUNBUFFERED=1``.
- Every signal goes to a PID that was started here, never to a name.
  ``stop_procs``: SIGCONT (a paused node must hear it) and SIGTERM to each
  that runs, up to ``grace_s`` for all of them together, then SIGKILL and
  reap; the exit codes, None for a process that had to be killed.
- ``agreed_leader``: the leader every node names, when every node answered
  ``Maintenance.Status`` and the one named says it leads.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import grpc

from paxoskv.procutil import die_with_parent
from paxoskv.server.config import BUS_PORT_OFFSET
from paxoskv.tls import ClientTLS, channel
from paxoskv.util.ports import free_ports
from paxoskv.v1 import kv_pb2, kv_pb2_grpc
from paxoskv.wire import format_hostport

__all__ = [
    "HOST",
    "STOP_GRACE_S",
    "NodeAddress",
    "ServeCluster",
    "ServeNode",
    "agreed_leader",
    "local_addresses",
    "node_status",
    "peers_spec",
    "send_signal",
    "serve_args",
    "serve_command",
    "spawn",
    "stop_procs",
]

HOST = "127.0.0.1"
STOP_GRACE_S = 10.0


@dataclass(frozen=True, slots=True)
class NodeAddress:
    """Where a node listens: its public gRPC port and its peer-bus port."""

    host: str
    port: int
    bus_port: int

    @property
    def target(self) -> str:
        """``host:port`` of the gRPC port, what clients dial."""
        return format_hostport(self.host, self.port)


def local_addresses(n: int, *, host: str = HOST, base_port: int | None = None) -> dict[int, NodeAddress]:
    """Addresses of nodes 1..n on ``host``: with ``base_port`` node i at
    ``base_port + i - 1`` and its bus port that + BUS_PORT_OFFSET (what
    ``paxoskv cluster`` documents); without, ports chosen free now."""
    if base_port is not None:
        return {
            i: NodeAddress(host, base_port + i - 1, base_port + i - 1 + BUS_PORT_OFFSET) for i in range(1, n + 1)
        }
    ports = free_ports(2 * n, host=host)
    return {i: NodeAddress(host, ports[2 * i - 2], ports[2 * i - 1]) for i in range(1, n + 1)}


def peers_spec(addresses: Mapping[int, NodeAddress], node_id: int) -> str:
    """The ``--peers`` value of ``node_id``: every other node, in id order."""
    specs = []
    for j, a in sorted(addresses.items()):
        if j == node_id:
            continue
        spec = f"{j}={format_hostport(a.host, a.port)}"
        if a.bus_port != a.port + BUS_PORT_OFFSET:
            spec += f":{a.bus_port}"
        specs.append(spec)
    return ",".join(specs)


def serve_args(
    node_id: int,
    addresses: Mapping[int, NodeAddress],
    *,
    cluster_id: str,
    data_dir: str | os.PathLike,
    listen: str | None = None,
    heartbeat_ms: int | None = None,
    election_ms: int | None = None,
    log_level: str | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """The flags of ``paxoskv serve`` for ``node_id`` (``listen``: the address
    it binds, default its own host)."""
    own = addresses[node_id]
    args = [
        "--id", str(node_id),
        "--cluster-id", cluster_id,
        "--listen", own.host if listen is None else listen,
        "--port", str(own.port),
        "--bus-port", str(own.bus_port),
        "--peers", peers_spec(addresses, node_id),
        "--data-dir", str(data_dir),
    ]  # fmt: skip
    for flag, value in (("--heartbeat-ms", heartbeat_ms), ("--election-ms", election_ms), ("--log-level", log_level)):
        if value is not None:
            args += [flag, str(value)]
    return [*args, *extra]


def serve_command() -> list[str]:
    """``paxoskv serve``, run by this interpreter (the same virtualenv)."""
    return [sys.executable, "-c", "from paxoskv.cli import main; main()", "serve"]


def spawn(
    argv: Sequence[str],
    log_path: pathlib.Path,
    *,
    header: str | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen:
    """Start ``argv`` (see the module rules), its output appended to ``log_path``
    after the line ``header`` if given. ``env``: instead of this process's."""
    env = dict(os.environ if env is None else env, PYTHONUNBUFFERED="1")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        if header is not None:
            log.write(header.encode() + b"\n")
            log.flush()
        return subprocess.Popen(
            die_with_parent(list(argv)),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )


def send_signal(proc: subprocess.Popen, sig: int) -> bool:
    """``sig`` to ``proc``'s PID if it has not been reaped; whether it was sent."""
    if proc.poll() is not None:
        return False
    try:
        os.kill(proc.pid, sig)
    except ProcessLookupError:
        return False
    return True


def stop_procs(
    procs: Iterable[subprocess.Popen], grace_s: float = STOP_GRACE_S, *, sig: int = signal.SIGTERM
) -> list[int | None]:
    """Stop every process (see the module rules; ``sig`` instead of SIGTERM
    for a program that must not stop gracefully); their exit codes in order."""
    procs = list(procs)
    for p in procs:
        if send_signal(p, signal.SIGCONT):
            send_signal(p, sig)
    deadline = time.monotonic() + grace_s
    codes: list[int | None] = []
    for p in procs:
        try:
            codes.append(p.wait(timeout=max(0.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            send_signal(p, signal.SIGKILL)
            p.wait()
            codes.append(None)
    return codes


@dataclass(slots=True, eq=False)
class ServeNode:
    """One node of a ``ServeCluster``: where it listens and keeps its files,
    and its current process (None before the first start)."""

    node_id: int
    address: NodeAddress
    data_dir: pathlib.Path
    log_path: pathlib.Path
    proc: subprocess.Popen | None = None
    starts: int = 0

    @property
    def port(self) -> int:
        return self.address.port

    @property
    def bus_port(self) -> int:
        return self.address.bus_port

    @property
    def endpoint(self) -> str:
        return self.address.target

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None


class ServeCluster:
    """The ``paxoskv serve`` processes of one cluster, each started, signalled
    and stopped by its PID. ``command``: what runs ``paxoskv serve`` (default
    ``serve_command()``); ``wrap(i, argv)``: the argv node i really runs (say,
    inside a network namespace)."""

    def __init__(
        self,
        nodes: Mapping[int, ServeNode],
        *,
        cluster_id: str,
        command: Sequence[str] | None = None,
        heartbeat_ms: int | None = None,
        election_ms: int | None = None,
        log_level: str | None = None,
        extra_args: Sequence[str] = (),
        wrap: Callable[[int, list[str]], list[str]] | None = None,
    ) -> None:
        self.nodes = dict(nodes)
        self.cluster_id = cluster_id
        self.command = list(command) if command else serve_command()
        self.heartbeat_ms = heartbeat_ms
        self.election_ms = election_ms
        self.log_level = log_level
        self.extra_args = tuple(extra_args)
        self.wrap = wrap

    @property
    def ids(self) -> list[int]:
        return sorted(self.nodes)

    @property
    def endpoints(self) -> list[str]:
        return [self.nodes[i].endpoint for i in self.ids]

    def endpoint(self, node_id: int) -> str:
        return self.nodes[node_id].endpoint

    def argv(self, node_id: int) -> list[str]:
        n = self.nodes[node_id]
        args = [
            *self.command,
            *serve_args(
                node_id,
                {i: node.address for i, node in self.nodes.items()},
                cluster_id=self.cluster_id,
                data_dir=n.data_dir,
                heartbeat_ms=self.heartbeat_ms,
                election_ms=self.election_ms,
                log_level=self.log_level,
                extra=self.extra_args,
            ),
        ]
        return self.wrap(node_id, args) if self.wrap is not None else args

    def start(self, node_id: int, *, header: str | None = None) -> ServeNode:
        """Start the node (it must not run); its log gets ``header``, by
        default ``=== start #<k> of node <i> ===``."""
        n = self.nodes[node_id]
        assert not n.running, f"node {node_id} is already running (pid {n.pid})"
        n.starts += 1
        if header is None:
            header = f"=== start #{n.starts} of node {node_id} ==="
        n.proc = spawn(self.argv(node_id), n.log_path, header=header)
        return n

    def kill(self, node_id: int, sig: int = signal.SIGKILL, timeout_s: float | None = None) -> int | None:
        """``sig`` to the node's PID, then wait for it to exit (SIGKILL works on
        a paused node too); its exit code. Past ``timeout_s``: SIGKILL, and
        RuntimeError. None if it was never started."""
        n = self.nodes[node_id]
        if n.proc is None:
            return None
        send_signal(n.proc, sig)
        try:
            return n.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            send_signal(n.proc, signal.SIGKILL)
            n.proc.wait()
            raise RuntimeError(f"node {node_id} did not exit within {timeout_s}s of signal {sig}") from None

    def stop(self, node_ids: Iterable[int] | None = None, grace_s: float = STOP_GRACE_S) -> dict[int, int | None]:
        """Stop the nodes (all by default) as ``stop_procs`` does; their exit
        codes (0 for a node never started, None for one that had to be killed)."""
        ids = self.ids if node_ids is None else list(node_ids)
        started = [i for i in ids if self.nodes[i].proc is not None]
        codes = dict(zip(started, stop_procs([self.nodes[i].proc for i in started], grace_s), strict=True))
        return {i: codes.get(i, 0) for i in ids}

    def log_text(self, node_id: int) -> str:
        p = self.nodes[node_id].log_path
        return p.read_text(errors="replace") if p.exists() else ""


def node_status(endpoint: str, timeout_s: float = 1.0, tls: ClientTLS | None = None) -> kv_pb2.StatusResponse | None:
    """``endpoint``'s answer to ``Maintenance.Status``; None if it did not answer
    (``tls``: over TLS, with this client identity)."""
    with channel(endpoint, tls) as ch:
        with contextlib.suppress(grpc.RpcError):
            return kv_pb2_grpc.MaintenanceStub(ch).Status(kv_pb2.StatusRequest(), timeout=timeout_s)
    return None


def agreed_leader(statuses: Iterable[kv_pb2.StatusResponse | None]) -> int | None:
    """The leader all of ``statuses`` name, if none is None (no answer), they
    name one, and it is among them saying it leads."""
    answers = list(statuses)
    if not answers or any(s is None for s in answers):
        return None
    named = {s.leader_id for s in answers if s is not None}
    if len(named) != 1:
        return None
    lid = named.pop()
    own = [s for s in answers if s is not None and s.node_id == lid]
    return lid if lid != 0 and own and own[0].role == "leader" else None
