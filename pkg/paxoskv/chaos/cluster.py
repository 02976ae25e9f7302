"""The campaign's node processes: started, killed, paused and stopped by PID.

Rules
-----
* A node is one ``paxoskv serve`` process (or the test-only command a test
  passes as ``node_command``), run through the network's ``wrap`` (inside its
  namespace) and started by ``paxoskv.launch`` (argv, spawn, stop: the rules
  there hold). Its stdout and stderr go, appended across restarts, to
  ``<workdir>/n<i>/node.log``; its data directory is ``<workdir>/n<i>/data``
  and survives kills, as a disk would. The peer bus runs CURVE with key
  pairs made once in ``<workdir>/keys`` (``curve=False``: the insecure bus).
* Every signal goes to the PID this object started, never to a name: SIGKILL
  (then the zombie is reaped), SIGSTOP, SIGCONT, and SIGTERM for the final
  graceful stop of every node at once (``shutdown``).
* ``in_fsync`` reads ``/proc/<pid>/task/*/syscall``: whether some thread of
  the node is inside fsync/fdatasync right now. The nemesis polls it to
  SIGKILL a node in the middle of a synced write.
* A node that exits without being told to is *noticed* (``unexpected_exits``)
  and reported; it is a failure of the campaign.

What is the campaign's own, beside the shared launcher: the namespace wrap,
pause and resume, ``in_fsync``, the bookkeeping of expected exits (under a
lock: the nemesis kills from a worker thread) and the log header with the
campaign's clock.
"""

from __future__ import annotations

import os
import pathlib
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from paxoskv.chaos.net import LoopbackNetwork, NamespaceNetwork
from paxoskv.launch import ServeCluster, ServeNode, send_signal, serve_command
from paxoskv.transport.keys import local_bus_args

__all__ = ["Cluster", "NodeProcess", "default_node_command"]

# x86-64 and arm64/generic syscall numbers of fsync, fdatasync, sync_file_range.
_SYNC_SYSCALLS = {"74", "75", "277"} if os.uname().machine == "x86_64" else {"82", "83", "84"}

default_node_command = serve_command


@dataclass(slots=True, eq=False)
class NodeProcess(ServeNode):
    paused: bool = False
    expected_exit: bool = True  # False while it runs: an exit now is unexpected

    @property
    def dir(self) -> pathlib.Path:
        return self.log_path.parent


@dataclass(slots=True)
class UnexpectedExit:
    node_id: int
    returncode: int | None
    at_s: float


class Cluster(ServeCluster):
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
        nodes = {
            i: NodeProcess(i, network.addresses[i], workdir / f"n{i}" / "data", workdir / f"n{i}" / "node.log")
            for i in range(1, n + 1)
        }
        # The peer bus runs CURVE (keys made once in workdir/keys) unless ``curve`` is False.
        bus_args = local_bus_args(workdir / "keys", nodes, curve=curve)
        super().__init__(
            nodes,
            cluster_id=cluster_id,
            command=node_command,
            heartbeat_ms=heartbeat_ms,
            election_ms=election_ms,
            extra_args=(*bus_args, *extra_args),
            wrap=network.wrap,
        )
        self.curve = curve
        self.n = n
        self.network = network
        self.workdir = workdir
        self.clock = clock
        self.nodes: dict[int, NodeProcess]
        self.unexpected_exits: list[UnexpectedExit] = []
        # kill() may run in a worker thread; it and check_exits() must not
        # interleave (a kill seen half-done would look like a crash).
        self._lock = threading.Lock()

    # ---- Signals, by PID -------------------------------------------------------------

    def start(self, i: int, *, header: str | None = None) -> NodeProcess:
        node = self.nodes[i]
        header = header or f"=== chaos: start #{node.starts + 1} of node {i} at t={self.clock():.3f}s ==="
        super().start(i, header=header)
        node.paused = False
        node.expected_exit = False
        return node

    def kill(self, i: int, sig: int = signal.SIGKILL, timeout_s: float | None = None) -> int | None:
        """SIGKILL (works on a paused node too) and reap. Safe from a worker thread."""
        node = self.nodes[i]
        with self._lock:
            node.expected_exit = True
            code = super().kill(i, sig, timeout_s)
            node.paused = False
        return code

    def pause(self, i: int) -> None:
        node = self.nodes[i]
        if node.running and not node.paused:
            send_signal(node.proc, signal.SIGSTOP)
            node.paused = True

    def resume(self, i: int) -> None:
        node = self.nodes[i]
        if node.paused:
            if node.running:
                send_signal(node.proc, signal.SIGCONT)
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

    def kill_all(self) -> None:
        """Every node, as close to the same instant as signals allow."""
        with self._lock:
            procs = []
            for node in self.nodes.values():
                node.expected_exit = True
                if node.proc is not None and send_signal(node.proc, signal.SIGKILL):
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
        """Stop every node that still runs (used in ``finally``): SIGCONT and
        SIGTERM to all, SIGKILL after the grace; exit codes (None: killed)."""
        for node in self.nodes.values():
            node.expected_exit = True
        codes = self.stop()
        for node in self.nodes.values():
            node.paused = False
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
