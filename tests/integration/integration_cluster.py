"""Real-process clusters for the integration tests.

Rules:

- Every node is a ``paxoskv serve`` subprocess (the installed console
  script) binding 127.0.0.1 only, on ports chosen free at run time, with its
  log in a file (``log_text``), started in a session of its own.
- The peer bus runs CURVE (keys made once in ``<root>/keys``) unless the
  cluster is made with ``curve=False`` (``--insecure-peer-bus``).
- Every process started here is stopped here, by PID: ``kill`` (SIGKILL by
  default) waits for the exit; ``close`` stops whatever still runs.
- Nothing sleeps to synchronise: ``wait_until`` polls a condition against a
  deadline, and every wait says what it waited for when it gives up.

Ports: random candidates in 20000-31999, below Linux's ephemeral range, so
the kernel never hands one of them to another process's port-0 socket; a
candidate is used only if both it and its bus port bind right now.
"""

from __future__ import annotations

import os
import pathlib
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from paxoskv.client import SyncClient
from paxoskv.transport.keys import local_bus_args
from paxoskv.v1 import kv_pb2, kv_pb2_grpc
from paxoskv.procutil import die_with_parent

T = TypeVar("T")

HOST = "127.0.0.1"
REPO = pathlib.Path(__file__).resolve().parents[2]
PAXOSKV = pathlib.Path(sys.executable).parent / "paxoskv"
_PORT_LOW, _PORT_HIGH = 20000, 31999
_rng = random.Random()


def wait_until(
    what: str, probe: Callable[[], T | None], timeout_s: float, interval_s: float = 0.02
) -> T:
    """Poll ``probe`` until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)  # polling interval of a deadline-bounded wait, not a synchronisation


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def free_ports(n: int, *, offset: int | None = None, consecutive: bool = False) -> list[int]:
    """``n`` free ports; with ``offset``, each ``p + offset`` is free too."""
    for _ in range(1000):
        if consecutive:
            base = _rng.randint(_PORT_LOW, _PORT_HIGH - n)
            cand = list(range(base, base + n))
        else:
            cand = _rng.sample(range(_PORT_LOW, _PORT_HIGH), n)
        need = cand + ([p + offset for p in cand] if offset else [])
        if len(set(need)) == len(need) and all(_bindable(p) for p in need):
            return cand
    raise AssertionError("no free ports found")


def health_status(endpoint: str, timeout_s: float = 1.0) -> int | None:
    """The health service's overall status of ``endpoint``; None if unreachable."""
    with grpc.insecure_channel(endpoint) as ch:
        try:
            resp = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout_s
            )
        except grpc.RpcError:
            return None
    return resp.status


def node_status(endpoint: str, timeout_s: float = 1.0) -> kv_pb2.StatusResponse | None:
    with grpc.insecure_channel(endpoint) as ch:
        try:
            return kv_pb2_grpc.MaintenanceStub(ch).Status(kv_pb2.StatusRequest(), timeout=timeout_s)
        except grpc.RpcError:
            return None


@dataclass
class NodeProc:
    node_id: int
    port: int
    bus_port: int
    data_dir: pathlib.Path
    log_path: pathlib.Path
    proc: subprocess.Popen | None = None
    starts: int = 0

    @property
    def endpoint(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class LocalCluster:
    """N ``paxoskv serve`` processes on 127.0.0.1 (see the module docstring)."""

    root: pathlib.Path
    size: int = 3
    cluster_id: str = "itest"
    heartbeat_ms: int = 20
    election_ms: int = 200
    extra_args: tuple[str, ...] = ()
    curve: bool = True
    nodes: dict[int, NodeProc] = field(default_factory=dict)
    bus_args: list[str] = field(default_factory=list)  # how its nodes run their bus (set at init)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.bus_args = local_bus_args(self.keys_dir, range(1, self.size + 1), curve=self.curve)
        ports = free_ports(2 * self.size)
        for i in range(1, self.size + 1):
            self.nodes[i] = NodeProc(
                node_id=i,
                port=ports[2 * (i - 1)],
                bus_port=ports[2 * (i - 1) + 1],
                data_dir=self.root / f"node{i}",
                log_path=self.root / f"node{i}.log",
            )

    # ---- addresses ------------------------------------------------------------------

    @property
    def keys_dir(self) -> pathlib.Path:
        return self.root / "keys"

    @property
    def endpoints(self) -> list[str]:
        return [n.endpoint for n in self.nodes.values()]

    def endpoint(self, node_id: int) -> str:
        return self.nodes[node_id].endpoint

    def peers_arg(self, node_id: int) -> str:
        return ",".join(
            f"{n.node_id}={HOST}:{n.port}:{n.bus_port}"
            for n in self.nodes.values()
            if n.node_id != node_id
        )

    def argv(self, node_id: int) -> list[str]:
        n = self.nodes[node_id]
        return [
            str(PAXOSKV), "serve",
            "--id", str(node_id),
            "--cluster-id", self.cluster_id,
            "--listen", HOST,
            "--port", str(n.port),
            "--bus-port", str(n.bus_port),
            "--peers", self.peers_arg(node_id),
            "--data-dir", str(n.data_dir),
            "--heartbeat-ms", str(self.heartbeat_ms),
            "--election-ms", str(self.election_ms),
            *self.bus_args,
            *self.extra_args,
        ]  # fmt: skip

    # ---- processes --------------------------------------------------------------------

    def start(self, node_id: int, *, wait: bool = True) -> NodeProc:
        n = self.nodes[node_id]
        assert not n.running, f"node {node_id} is already running"
        n.starts += 1
        with open(n.log_path, "ab") as log:
            log.write(f"==== start #{n.starts} ====\n".encode())
            log.flush()
            n.proc = subprocess.Popen(
                die_with_parent(self.argv(node_id)),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=dict(os.environ, PYTHONUNBUFFERED="1"),
            )
        if wait:
            self.wait_serving(node_id)
        return n

    def start_all(self, *, leader_timeout_s: float = 15.0) -> int:
        for i in self.nodes:
            self.start(i, wait=False)
        for i in self.nodes:
            self.wait_serving(i)
        return self.wait_leader(timeout_s=leader_timeout_s)

    def wait_serving(self, node_id: int, timeout_s: float = 15.0) -> None:
        n = self.nodes[node_id]

        def serving() -> bool:
            if not n.running:
                raise AssertionError(
                    f"node {node_id} exited with {n.proc.returncode if n.proc else None}:\n"
                    + self.log_text(node_id)[-3000:]
                )
            return health_status(n.endpoint, 0.5) == health_pb2.HealthCheckResponse.SERVING

        wait_until(f"node {node_id} to serve", serving, timeout_s)

    def kill(self, node_id: int, sig: int = signal.SIGKILL, timeout_s: float = 15.0) -> int:
        """Send ``sig`` to the node by PID and wait for it to exit; its exit code."""
        n = self.nodes[node_id]
        assert n.proc is not None
        if n.proc.poll() is None:
            os.kill(n.proc.pid, sig)
        try:
            return n.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.kill(n.proc.pid, signal.SIGKILL)
            n.proc.wait()
            raise AssertionError(f"node {node_id} did not exit within {timeout_s}s of signal {sig}")

    def close(self) -> None:
        for n in self.nodes.values():
            if n.running:
                assert n.proc is not None
                os.kill(n.proc.pid, signal.SIGTERM)
        for n in self.nodes.values():
            if n.proc is None:
                continue
            try:
                n.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(n.proc.pid, signal.SIGKILL)
                n.proc.wait()

    # ---- observation ---------------------------------------------------------------------

    def status(self, node_id: int) -> kv_pb2.StatusResponse | None:
        return node_status(self.endpoint(node_id))

    def leader(self, among: list[int] | None = None) -> int | None:
        """The leader every running node of ``among`` agrees on, or None."""
        ids = [i for i in (among or list(self.nodes)) if self.nodes[i].running]
        statuses = {i: self.status(i) for i in ids}
        if not statuses or any(s is None for s in statuses.values()):
            return None
        leaders = {s.leader_id for s in statuses.values()}
        if len(leaders) != 1:
            return None
        lid = leaders.pop()
        if lid == 0 or lid not in statuses or statuses[lid].role != "leader":
            return None
        return lid

    def wait_leader(self, among: list[int] | None = None, timeout_s: float = 15.0) -> int:
        return wait_until(
            "a leader all running nodes agree on", lambda: self.leader(among), timeout_s
        )

    def wait_applied(
        self, node_id: int, index: int, timeout_s: float = 15.0
    ) -> kv_pb2.StatusResponse:
        def probe() -> kv_pb2.StatusResponse | None:
            st = self.status(node_id)
            return st if st is not None and st.applied_index >= index else None

        return wait_until(f"node {node_id} to apply index {index}", probe, timeout_s)

    def rss_bytes(self, node_id: int) -> int:
        """The resident memory of a running node's process (/proc)."""
        n = self.nodes[node_id]
        assert n.proc is not None and n.running, f"node {node_id} is not running"
        with open(f"/proc/{n.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) << 10
        raise AssertionError(f"no VmRSS for node {node_id}")

    def log_text(self, node_id: int) -> str:
        p = self.nodes[node_id].log_path
        return p.read_text(errors="replace") if p.exists() else ""

    def client(self, **kw: object) -> SyncClient:
        kw.setdefault("timeout_s", 10.0)
        return SyncClient(self.endpoints, **kw)

    def logs(self) -> str:
        return "\n".join(
            f"---- node{i} ({n.log_path}) ----\n{self.log_text(i)[-4000:]}"
            for i, n in self.nodes.items()
        )


def run_cli(
    *args: str,
    env: dict[str, str] | None = None,
    timeout_s: float = 30.0,
    cwd: os.PathLike | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``paxoskv ARGS`` to completion; its exit code, stdout and stderr."""
    return subprocess.run(
        [str(PAXOSKV), *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=dict(os.environ, **(env or {})),
        cwd=cwd,
    )
