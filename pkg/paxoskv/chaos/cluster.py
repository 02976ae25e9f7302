"""The campaign's node processes: started, killed, paused and stopped by PID.

Rules
-----
* A node is one ``paxoskv serve`` process (or the test-only command a test
  passes as ``node_command``), run through the network's ``wrap`` (inside its
  namespace). Its stdout and stderr go, appended across restarts, to
  ``<workdir>/n<i>/node.log``; its data directory is ``<workdir>/n<i>/data``
  and survives kills, as a disk would. The peer bus runs CURVE with key
  pairs made once in ``<workdir>/keys`` (``curve=False``: the insecure bus).
* Every signal goes to the PID this object started, never to a name: SIGKILL
  (then the zombie is reaped), SIGSTOP, SIGCONT, and SIGTERM for the final
  graceful stop. Nodes run in their own session, so a Ctrl-C meant for the
  campaign does not reach them; the campaign stops them itself, in a
  ``finally``.
* ``in_fsync`` reads ``/proc/<pid>/task/*/syscall``: whether some thread of
  the node is inside fsync/fdatasync right now. The nemesis polls it to
  SIGKILL a node in the middle of a synced write.
* A node that exits without being told to is *noticed* (``unexpected_exits``)
  and reported; it is a failure of the campaign.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from paxoskv.chaos.net import LoopbackNetwork, NamespaceNetwork, NodeAddress
from paxoskv.transport.keys import local_bus_args

__all__ = ["Cluster", "NodeProcess", "default_node_command"]

# x86-64 and arm64/generic syscall numbers of fsync, fdatasync, sync_file_range.
_SYNC_SYSCALLS = {"74", "75", "277"} if os.uname().machine == "x86_64" else {"82", "83", "84"}
STOP_GRACE_S = 10.0


def default_node_command() -> list[str]:
    """``paxoskv serve``, run by this interpreter (the same virtualenv)."""
    return [sys.executable, "-c", "from paxoskv.cli import main; main()", "serve"]


@dataclass(slots=True)
class NodeProcess:
    node_id: int
    address: NodeAddress
    dir: pathlib.Path
    proc: subprocess.Popen | None = None
    paused: bool = False
    starts: int = 0
    expected_exit: bool = True  # False while it runs: an exit now is unexpected

    @property
    def data_dir(self) -> pathlib.Path:
        return self.dir / "data"

    @property
    def log_path(self) -> pathlib.Path:
        return self.dir / "node.log"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None


@dataclass(slots=True)
class UnexpectedExit:
    node_id: int
    returncode: int | None
    at_s: float


class Cluster:
    def __init__(
        self,
        n: int,
        network: NamespaceNetwork | LoopbackNetwork,
        workdir: pathlib.Path,
        *,
        node_command: Sequence[str] | None = None,
        cluster_id: str = "chaos",
        heartbeat_ms: int = 50,
        election_ms: int = 500,
        extra_args: Sequence[str] = (),
        curve: bool = True,
        clock=time.monotonic,
    ) -> None:
        self.n = n
        self.network = network
        self.workdir = workdir
        self.node_command = list(node_command) if node_command else default_node_command()
        self.cluster_id = cluster_id
        self.heartbeat_ms = heartbeat_ms
        self.election_ms = election_ms
        self.extra_args = list(extra_args)
        self.curve = curve
        self._bus_args: list[str] | None = None  # made by the first argv(): the keys are files
        self.clock = clock
        self.nodes = {i: NodeProcess(i, network.addresses[i], workdir / f"n{i}") for i in range(1, n + 1)}
        self.unexpected_exits: list[UnexpectedExit] = []
        # kill() may run in a worker thread; it and check_exits() must not
        # interleave (a kill seen half-done would look like a crash).
        self._lock = threading.Lock()

    @property
    def ids(self) -> list[int]:
        return sorted(self.nodes)

    def argv(self, i: int) -> list[str]:
        node = self.nodes[i]
        if self._bus_args is None:
            self._bus_args = local_bus_args(self.workdir / "keys", self.ids, curve=self.curve)
        peers = ",".join(
            f"{j}={p.address.host}:{p.address.port}:{p.address.bus_port}"
            for j, p in sorted(self.nodes.items())
            if j != i
        )
        args = [
            *self.node_command,
            "--id",
            str(i),
            "--cluster-id",
            self.cluster_id,
            "--listen",
            node.address.host,
            "--port",
            str(node.address.port),
            "--bus-port",
            str(node.address.bus_port),
            "--peers",
            peers,
            "--data-dir",
            str(node.data_dir),
            "--heartbeat-ms",
            str(self.heartbeat_ms),
            "--election-ms",
            str(self.election_ms),
            *self._bus_args,
            *self.extra_args,
        ]
        return self.network.wrap(i, args)

    # ---- Signals, by PID -------------------------------------------------------------

    def start(self, i: int) -> None:
        node = self.nodes[i]
        assert not node.running, f"node {i} is already running (pid {node.pid})"
        node.dir.mkdir(parents=True, exist_ok=True)
        node.starts += 1
        with open(node.log_path, "ab") as log:
            log.write(f"=== chaos: start #{node.starts} of node {i} at t={self.clock():.3f}s ===\n".encode())
            log.flush()
            node.proc = subprocess.Popen(
                self.argv(i),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        node.paused = False
        node.expected_exit = False

    def kill(self, i: int) -> None:
        """SIGKILL (works on a paused node too) and reap. Safe from a worker thread."""
        node = self.nodes[i]
        with self._lock:
            node.expected_exit = True
            if node.proc is None:
                return
            with contextlib.suppress(ProcessLookupError):
                os.kill(node.proc.pid, signal.SIGKILL)
            node.proc.wait()
            node.paused = False

    def pause(self, i: int) -> None:
        node = self.nodes[i]
        if node.running and not node.paused:
            os.kill(node.proc.pid, signal.SIGSTOP)
            node.paused = True

    def resume(self, i: int) -> None:
        node = self.nodes[i]
        if node.paused:
            if node.running:
                os.kill(node.proc.pid, signal.SIGCONT)
            node.paused = False

    def in_fsync(self, i: int) -> bool:
        node = self.nodes[i]
        if not node.running:
            return False
        for task in pathlib.Path(f"/proc/{node.proc.pid}/task").glob("*/syscall"):
            try:
                first = task.read_text().split(maxsplit=1)
            except OSError:
                continue
            if first and first[0] in _SYNC_SYSCALLS:
                return True
        return False

    def stop(self, i: int) -> int | None:
        """Graceful stop: SIGCONT, SIGTERM, then SIGKILL after the grace.
        Returns the exit code, or None when it had to be killed."""
        node = self.nodes[i]
        node.expected_exit = True
        if not node.running:
            return node.proc.returncode if node.proc is not None else 0
        self.resume(i)
        os.kill(node.proc.pid, signal.SIGTERM)
        try:
            return node.proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            self.kill(i)
            return None

    def kill_all(self) -> None:
        """Every node, as close to the same instant as signals allow."""
        with self._lock:
            self._kill_all_locked()

    def _kill_all_locked(self) -> None:
        procs = []
        for node in self.nodes.values():
            node.expected_exit = True
            if node.proc is not None and node.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(node.proc.pid, signal.SIGKILL)
                procs.append(node)
        for node in procs:
            node.proc.wait()
            node.paused = False

    def check_exits(self) -> list[UnexpectedExit]:
        """Nodes that exited although nobody stopped them (noted once each)."""
        found: list[UnexpectedExit] = []
        if not self._lock.acquire(blocking=False):
            return found  # a kill is in progress (in a worker thread): look next time
        try:
            found = self._check_exits_locked()
        finally:
            self._lock.release()
        return found

    def _check_exits_locked(self) -> list[UnexpectedExit]:
        found = []
        for node in self.nodes.values():
            if not node.expected_exit and node.proc is not None and node.proc.poll() is not None:
                node.expected_exit = True
                ev = UnexpectedExit(node.node_id, node.proc.returncode, self.clock())
                self.unexpected_exits.append(ev)
                found.append(ev)
        return found

    def up(self, i: int) -> bool:
        """Running and not paused."""
        node = self.nodes[i]
        return node.running and not node.paused

    def shutdown(self) -> dict[int, int | None]:
        """Stop every node that still runs (used in ``finally``); exit codes."""
        codes = {}
        for i in self.ids:
            codes[i] = self.stop(i)
        return codes


@dataclass(slots=True)
class LogFinding:
    node_id: int
    line_no: int
    line: str


@dataclass(slots=True)
class LogScan:
    findings: list[LogFinding] = field(default_factory=list)
    lines: int = 0


def scan_logs(cluster: Cluster, words: Sequence[str] = ("assertion", "traceback")) -> LogScan:
    """Lines of every node log that contain one of ``words`` (any case)."""
    scan = LogScan()
    for i, node in sorted(cluster.nodes.items()):
        if not node.log_path.exists():
            continue
        with open(node.log_path, encoding="utf-8", errors="replace") as f:
            for no, line in enumerate(f, start=1):
                scan.lines += 1
                low = line.lower()
                if any(w in low for w in words):
                    scan.findings.append(LogFinding(i, no, line.rstrip("\n")))
    return scan
