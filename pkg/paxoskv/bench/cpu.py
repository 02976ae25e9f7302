"""CPU time of groups of processes, from /proc, and over a time window.

The one place the benchmark reads CPU: ``paxoskv bench`` for its workers
(client CPU) and for ``--server-pid`` (server CPU), ``bench/compare`` for
the clusters it starts (per job and idle).

Rules:

- ``tree_cpu_s(pids)`` is the user + system CPU seconds used so far by the
  processes ``pids`` and every live descendant of theirs, all threads: for
  each process, fields utime + stime of ``/proc/<pid>/stat`` (the kernel
  sums every thread of the thread group there, exited threads included) plus
  cutime + cstime (the CPU of children it has waited for). A child that
  exits and is reaped inside the tree moves its CPU into its parent's
  cutime, so the total neither loses nor double-counts it; a descendant
  reaped outside the tree (re-parented to init) takes its CPU with it.
  A process that is gone counts 0.
- Descendants are found by scanning ``/proc/*/stat`` for parent ids, once
  per sample (a few ms with a few hundred processes), so sample at window
  boundaries, not in a loop.
- ``CpuWindow`` samples named groups at a window's start and end instants
  (``time.monotonic``, the clock every bench process shares) from a thread
  of its own, so the figures are the window's: not the warmup, not the
  drain. ``clock``, ``sleep`` and ``sampler`` are parameters so tests can
  run it on simulated time.
- Resolution: the kernel counts in clock ticks (``SC_CLK_TCK``, 100 per
  second here), per process; a window of seconds makes that negligible.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

__all__ = ["CpuWindow", "descendants", "per_op_us", "process_cpu_s", "tree_cpu_s"]

_TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, CPU ticks: own threads + waited-for children), None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read()
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may hold anything
    fields = text[text.rfind(b")") + 2 :].split()
    # fields[0] is field 3 (state): ppid is field 4, utime..cstime fields 14-17
    try:
        return int(fields[1]), int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
    except (IndexError, ValueError):
        return None


def process_cpu_s(pid: int) -> float:
    """One process (all its threads, its waited-for children); 0.0 if gone."""
    st = _stat(pid)
    return 0.0 if st is None else st[1] / _TICKS


def descendants(pids: Iterable[int]) -> set[int]:
    """Every live process below ``pids`` (not ``pids`` themselves)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        st = _stat(int(name))
        if st is not None:
            children.setdefault(st[0], []).append(int(name))
    roots = set(pids)
    found: set[int] = set()
    todo = list(roots)
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found and child not in roots:
                found.add(child)
                todo.append(child)
    return found


def tree_cpu_s(pids: Iterable[int]) -> float:
    """CPU seconds so far of ``pids`` and all their live descendants."""
    roots = set(pids)
    ticks = 0
    for pid in roots | descendants(roots):
        st = _stat(pid)
        if st is not None:
            ticks += st[1]
    return ticks / _TICKS


def per_op_us(cpu_s: float | None, ops: int) -> float | None:
    """Microseconds of CPU per operation; None when nothing was measured."""
    if cpu_s is None or ops <= 0:
        return None
    return cpu_s / ops * 1e6


class CpuWindow:
    """CPU seconds each group used between two instants on ``clock``.

    ``groups`` maps a name to the pids to sample (a callable, read when the
    sample is taken). ``start()`` runs the sampler in a daemon thread;
    ``result()`` waits for it and gives ``{name: seconds}``.
    """

    def __init__(
        self,
        groups: Mapping[str, Callable[[], Sequence[int]]],
        start_s: float,
        end_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        sampler: Callable[[Iterable[int]], float] = tree_cpu_s,
    ) -> None:
        if end_s < start_s:
            raise ValueError(f"the window ends ({end_s}) before it starts ({start_s})")
        self._groups = dict(groups)
        self._start_s, self._end_s = start_s, end_s
        self._clock, self._sleep, self._sampler = clock, sleep, sampler
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._result: dict[str, float] | None = None
        self._error: BaseException | None = None

    def _until(self, t: float) -> bool:
        while not self._stop.is_set():
            left = t - self._clock()
            if left <= 0:
                return True
            self._sleep(min(left, 0.05))
        return False

    def _sample(self) -> dict[str, float]:
        return {name: self._sampler(pids()) for name, pids in self._groups.items()}

    def run(self) -> None:
        """Sample at the start, then at the end (blocks until the end)."""
        try:
            if not self._until(self._start_s):
                return
            first = self._sample()
            if not self._until(self._end_s):
                return
            last = self._sample()
            self._result = {name: last[name] - first[name] for name in first}
        except BaseException as exc:  # reported by result()
            self._error = exc

    def start(self) -> CpuWindow:
        self._thread = threading.Thread(target=self.run, name="bench-cpu-window", daemon=True)
        self._thread.start()
        return self

    def cancel(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def result(self, timeout_s: float | None = None) -> dict[str, float] | None:
        """``{name: CPU seconds in the window}``; None if it was cancelled
        or did not reach its end within ``timeout_s``."""
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self._error is not None:
            raise self._error
        return self._result
