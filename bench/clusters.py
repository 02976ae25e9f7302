"""Local 3-node clusters to benchmark: paxoskv, etcd and PySyncObj, on 127.0.0.1.

Rules:

- Every port is chosen free at run time (``paxoskv.util.ports``), every node binds
  127.0.0.1 only, every node keeps its data and its log under the cluster's
  directory.
- A cluster owns the processes it started and nothing else, started and
  stopped by ``paxoskv.launch`` (``spawn``, ``stop_procs``: ``stop_signal``
  -- SIGTERM; etcd: SIGKILL, see ``start_etcd`` -- to each by its PID, a
  grace, then SIGKILL for any left). ``stop()`` is safe to call
  twice and is what ``with cluster:`` does on the way out, so nodes are
  stopped on failure too. Nodes run in their own session, so a Ctrl-C at the
  terminal reaches the harness, which then stops them. A paxoskv cluster's
  argv is ``launch.serve_args``; the other systems' are their own.
- ``wait_ready`` polls (with a deadline) until every endpoint answers a read
  through the cluster's client protocol, i.e. the cluster has a leader.
- ``cpu_s()`` is the user+system CPU time the nodes have used so far (from
  /proc, all threads and child processes: ``paxoskv.bench.cpu``), and
  ``node_cpu_s()`` the same per node: sampled before and after a window
  they tell what the servers cost.

etcd: the Debian ``etcd-server`` binary, default settings (so its WAL is
fsync'ed before a write is acknowledged). PySyncObj: ``bench/pysyncobj_node.py``
(a PySyncObj KV behind a small ``paxoskv.v1.KV`` gRPC front). paxoskv:
``paxoskv serve`` per node, with its defaults (fsync on, CURVE on the peer bus).
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc

from paxoskv.bench.cpu import tree_cpu_s
from paxoskv.launch import local_addresses, serve_args, serve_command, spawn, stop_procs
from paxoskv.tls import ClientTLS, channel
from paxoskv.util.ports import free_ports
from paxoskv.util.wait import wait_until
from paxoskv.v1 import kv_pb2, kv_pb2_grpc

@dataclass
class Cluster:
    """Processes started by this object, and where clients reach them."""

    name: str
    base_dir: pathlib.Path
    target: str  # the bench target that speaks its client protocol
    endpoints: list[str] = field(default_factory=list)
    procs: list[subprocess.Popen] = field(default_factory=list)
    stop_signal: int = signal.SIGTERM
    logs: list[pathlib.Path] = field(default_factory=list)
    tls: ClientTLS | None = None  # what clients dial it with (None: plaintext)

    def _spawn(self, argv: list[str], log_name: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        log_path = self.base_dir / log_name
        self.logs.append(log_path)
        proc = spawn(argv, log_path, env=env)
        self.procs.append(proc)
        return proc

    @contextlib.contextmanager
    def starting(self) -> Iterator[Cluster]:
        """Around the spawns of a start: if one fails, stop those already started."""
        try:
            yield self
        except BaseException:
            self.stop()
            raise

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def live_pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.poll() is None]

    def cpu_s(self) -> float:
        return tree_cpu_s(self.live_pids())

    def node_cpu_s(self) -> list[float]:
        """Per node, in start order (0.0 for a node that is gone)."""
        return [tree_cpu_s([p.pid]) if p.poll() is None else 0.0 for p in self.procs]

    def check_alive(self) -> None:
        for p, log in zip(self.procs, self.logs, strict=True):
            if p.poll() is not None:
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise RuntimeError(f"{self.name}: process {p.pid} exited with {p.returncode}; log {log}:\n{tail}")

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Until every endpoint answers a read; ``WaitTimeout`` (a RuntimeError) if not in time."""
        deadline = time.monotonic() + timeout_s
        for ep in self.endpoints:

            def answers(ep: str = ep) -> bool:
                self.check_alive()
                return _probe(self.target, ep, self.tls)

            wait_until(f"{self.name}: {ep} to answer a read", answers, deadline - time.monotonic(), interval_s=0.1)

    def stop(self) -> None:
        stop_procs(self.procs, sig=self.stop_signal)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _probe(target: str, endpoint: str, tls: ClientTLS | None = None) -> bool:
    """One linearizable read through ``endpoint``; True when it succeeded."""
    with channel(endpoint, tls) as ch:
        try:
            if target == "etcd":
                from paxoskv.etcdpb import rpc_pb2, rpc_pb2_grpc

                rpc_pb2_grpc.KVStub(ch).Range(rpc_pb2.RangeRequest(key=b"probe"), timeout=2.0)
            else:
                kv_pb2_grpc.KVStub(ch).Get(kv_pb2.GetRequest(key=b"probe"), timeout=2.0)
        except grpc.RpcError:
            return False
    return True


def start_paxoskv(
    base_dir: pathlib.Path,
    nodes: int = 3,
    *,
    extra_args: tuple[str, ...] = (),
    curve: bool = True,
    tls: bool = False,
    name: str = "paxoskv",
    tree: pathlib.Path | None = None,
) -> Cluster:
    """``nodes`` paxoskv nodes; the peer bus runs CURVE (keys in ``base_dir/keys``) unless ``curve`` is False;
    with ``tls`` the public port runs TLS with client certificates (a CA made in ``base_dir/pki``).
    ``tree``: run the nodes from that checkout (its ``pkg`` first on the path, this interpreter)."""
    from paxoskv.transport.keys import local_bus_args
    from paxoskv.util.local_pki import make_local_pki

    base_dir.mkdir(parents=True, exist_ok=True)
    bus_args = local_bus_args(base_dir / "keys", range(1, nodes + 1), curve=curve)
    env = None if tree is None else {**os.environ, "PYTHONPATH": str(tree / "pkg")}
    addresses = local_addresses(nodes)
    pki = make_local_pki(base_dir / "pki", [a.host for a in addresses.values()]) if tls else None
    if pki is not None:
        extra_args = (*extra_args, *pki.serve_args())
    cluster = Cluster(name, base_dir, "paxoskv", tls=pki.client if pki else None)
    with cluster.starting():
        for i, a in addresses.items():
            args = serve_args(
                i, addresses, cluster_id="bench", data_dir=base_dir / f"node{i}", log_level="warning",
                extra=(*bus_args, *extra_args),
            )
            cluster._spawn([*serve_command(), *args], f"node{i}.log", env=env)
            cluster.endpoints.append(a.target)
    return cluster


def start_echo(base_dir: pathlib.Path, node_script: pathlib.Path, nodes: int = 3, *, sync: bool = False) -> Cluster:
    """``nodes`` do-nothing KV servers (``bench/echo_node.py``, grpc.aio or
    with ``sync`` grpcio's threaded server): the Python gRPC ceiling."""
    base_dir.mkdir(parents=True, exist_ok=True)
    cluster = Cluster("grpc-echo-sync" if sync else "grpc-echo", base_dir, "paxoskv")
    with cluster.starting():
        for i, port in enumerate(free_ports(nodes), start=1):
            argv = [sys.executable, str(node_script), "--port", str(port), *(["--sync"] if sync else [])]
            cluster._spawn(argv, f"node{i}.log")
            cluster.endpoints.append(f"127.0.0.1:{port}")
    return cluster


def start_quorum_echo(
    base_dir: pathlib.Path, node_script: pathlib.Path, nodes: int = 3, *, fanout: str | None = "all", name: str = ""
) -> Cluster:
    """``nodes`` servers (``bench/quorum_echo_node.py``) that answer a put once
    a majority of them fsync'ed it, with no consensus around it: the floor of
    a quorum write on this stack. ``fanout`` "all" or "thrifty" (see there);
    None for a script without that option (``bench/quorum_echo_batched_node.py``,
    named ``name``)."""
    base_dir.mkdir(parents=True, exist_ok=True)
    name = name or ("quorum-echo" if fanout == "all" else f"quorum-echo-{fanout}")
    cluster = Cluster(name, base_dir, "paxoskv")
    ports = free_ports(2 * nodes)
    grpc_ports, bus_ports = ports[:nodes], ports[nodes:]
    with cluster.starting():
        for i in range(nodes):
            # the others in ring order from the next one, so "thrifty" spreads the load
            peers = ",".join(str(bus_ports[(i + k) % nodes]) for k in range(1, nodes))
            argv = [
                sys.executable, str(node_script), "--id", str(i + 1), "--port", str(grpc_ports[i]),
                "--bus-port", str(bus_ports[i]), "--peer-bus-ports", peers,
                *(["--fanout", fanout] if fanout else []), "--data-dir", str(base_dir / f"node{i + 1}"),
            ]
            cluster._spawn(argv, f"node{i + 1}.log")
            cluster.endpoints.append(f"127.0.0.1:{grpc_ports[i]}")
    return cluster


def etcd_binary() -> str | None:
    return shutil.which("etcd")


def start_etcd(base_dir: pathlib.Path, nodes: int = 3, *, extra_args: tuple[str, ...] = ()) -> Cluster:
    """``nodes`` etcd members (named m1, m2, ...) forming one new cluster;
    ``endpoints`` are their client addresses (host:port, the form etcdctl's
    ``--endpoints`` takes). ``extra_args`` go to every member (for example
    ``--max-txn-ops``). The initial-cluster token is unique to ``base_dir``,
    so two clusters started side by side never share a cluster id.

    ``stop()`` kills the members: on SIGTERM etcd's leader tries to hand
    its leadership to a follower, and with every follower stopping at the
    same time it waits out its request timeout (7 s) first. etcd's WAL makes
    a kill safe, and the data directory is thrown away."""
    binary = etcd_binary()
    if binary is None:
        raise RuntimeError("etcd is not installed (apt-get install etcd-server)")
    base_dir.mkdir(parents=True, exist_ok=True)
    cluster = Cluster("etcd", base_dir, "etcd", stop_signal=signal.SIGKILL)
    ports = free_ports(2 * nodes)
    client_ports, peer_ports = ports[:nodes], ports[nodes:]
    initial = ",".join(f"m{i}=http://127.0.0.1:{peer_ports[i - 1]}" for i in range(1, nodes + 1))
    token = f"paxoskv-{os.getpid()}-{base_dir.resolve()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}
    with cluster.starting():
        for i in range(1, nodes + 1):
            client_url = f"http://127.0.0.1:{client_ports[i - 1]}"
            peer_url = f"http://127.0.0.1:{peer_ports[i - 1]}"
            argv = [
                binary, "--name", f"m{i}", "--data-dir", str(base_dir / f"m{i}"),
                "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
                "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
                "--initial-cluster", initial, "--initial-cluster-state", "new",
                "--initial-cluster-token", token, "--logger", "zap", "--log-level", "warn",
                *extra_args,
            ]
            cluster._spawn(argv, f"m{i}.log", env=env)
            cluster.endpoints.append(f"127.0.0.1:{client_ports[i - 1]}")
    return cluster


def start_pysyncobj(base_dir: pathlib.Path, node_script: pathlib.Path, nodes: int = 3) -> Cluster:
    base_dir.mkdir(parents=True, exist_ok=True)
    cluster = Cluster("pysyncobj", base_dir, "paxoskv")
    ports = free_ports(2 * nodes)
    grpc_ports, raft_ports = ports[:nodes], ports[nodes:]
    raft_addrs = [f"127.0.0.1:{p}" for p in raft_ports]
    with cluster.starting():
        for i in range(nodes):
            partners = ",".join(a for j, a in enumerate(raft_addrs) if j != i)
            argv = [
                sys.executable, str(node_script), "serve", "--self", raft_addrs[i], "--partners", partners,
                "--grpc-port", str(grpc_ports[i]), "--journal", str(base_dir / f"node{i + 1}.journal"),
            ]
            cluster._spawn(argv, f"node{i + 1}.log")
            cluster.endpoints.append(f"127.0.0.1:{grpc_ports[i]}")
    return cluster
