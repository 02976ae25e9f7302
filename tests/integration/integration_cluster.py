"""Real-process clusters for the integration tests.

Rules:

- Every node is a ``paxoskv serve`` subprocess (the installed console
  script) binding 127.0.0.1 only, on ports chosen free at run time, with its
  log in a file (``log_text``), started by ``paxoskv.launch`` (its rules hold).
- The peer bus runs CURVE (keys made once in ``<root>/keys``) unless the
  cluster is made with ``curve=False`` (``--insecure-peer-bus``).
- Every process started here is stopped here, by PID: ``kill`` (SIGKILL by
  default) waits for the exit; ``close`` stops whatever still runs.
- Nothing sleeps to synchronise: ``paxoskv.util.wait.wait_until`` polls a
  condition against a deadline, and every wait says what it waited for when
  it gives up.
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from paxoskv.client import SyncClient
from paxoskv.tls import ClientTLS, channel
from paxoskv.launch import HOST, ServeCluster, ServeNode, agreed_leader, local_addresses, node_status
from paxoskv.transport.keys import local_bus_args
from paxoskv.util.wait import wait_until
from paxoskv.v1 import kv_pb2

REPO = pathlib.Path(__file__).resolve().parents[2]
PAXOSKV = pathlib.Path(sys.executable).parent / "paxoskv"


def health_status(endpoint: str, timeout_s: float = 1.0, tls: ClientTLS | None = None) -> int | None:
    """The health service's overall status of ``endpoint``; None if unreachable."""
    with channel(endpoint, tls) as ch:
        try:
            resp = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout_s
            )
        except grpc.RpcError:
            return None
    return resp.status


class LocalCluster(ServeCluster):
    """N ``paxoskv serve`` processes on 127.0.0.1 (see the module docstring):
    node i keeps its data in ``root/node<i>`` and its log in ``root/node<i>.log``.
    ``tls``: how this harness (its probes and ``client()``) dials nodes
    started with TLS flags in ``extra_args``."""

    def __init__(
        self,
        root: pathlib.Path,
        size: int = 3,
        cluster_id: str = "itest",
        heartbeat_ms: int = 20,
        election_ms: int = 200,
        extra_args: tuple[str, ...] = (),
        curve: bool = True,
        tls: ClientTLS | None = None,
    ) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.tls = tls
        self.size = size
        self.curve = curve
        # How its nodes run their bus: CURVE with keys in root/keys, or insecure.
        self.bus_args = local_bus_args(self.keys_dir, range(1, size + 1), curve=curve)
        nodes = {
            i: ServeNode(i, a, root / f"node{i}", root / f"node{i}.log")
            for i, a in local_addresses(size, host=HOST).items()
        }
        super().__init__(
            nodes,
            cluster_id=cluster_id,
            command=[str(PAXOSKV), "serve"],
            heartbeat_ms=heartbeat_ms,
            election_ms=election_ms,
            extra_args=(*self.bus_args, *extra_args),
        )

    @property
    def keys_dir(self) -> pathlib.Path:
        return self.root / "keys"

    # ---- processes --------------------------------------------------------------------

    def start(self, node_id: int, *, wait: bool = True) -> ServeNode:  # type: ignore[override]
        n = super().start(node_id)
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
            return health_status(n.endpoint, 0.5, self.tls) == health_pb2.HealthCheckResponse.SERVING

        wait_until(f"node {node_id} to serve", serving, timeout_s)

    def kill(self, node_id: int, sig: int = signal.SIGKILL, timeout_s: float | None = 15.0) -> int:  # type: ignore[override]
        """Send ``sig`` to the node by PID and wait for it to exit; its exit code."""
        assert self.nodes[node_id].proc is not None
        code = super().kill(node_id, sig, timeout_s)
        assert code is not None
        return code

    def close(self) -> None:
        self.stop()

    # ---- observation ---------------------------------------------------------------------

    def status(self, node_id: int) -> kv_pb2.StatusResponse | None:
        return node_status(self.endpoint(node_id), tls=self.tls)

    def leader(self, among: list[int] | None = None) -> int | None:
        """The leader every running node of ``among`` agrees on, or None."""
        ids = [i for i in (among or list(self.nodes)) if self.nodes[i].running]
        return agreed_leader(self.status(i) for i in ids)

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

    def client(self, **kw: object) -> SyncClient:
        kw.setdefault("timeout_s", 10.0)
        kw.setdefault("tls", self.tls)
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
