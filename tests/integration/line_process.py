"""Helpers of tests that drive long-running commands and blocking calls:
``LineProcess`` (a process whose output lines are read with a deadline,
stopped by PID) and ``in_thread`` (a call run in a thread, its value or
exception kept for the test)."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence

LINE_S = 30.0  # how long a process may take to print a line it owes


class LineProcess:
    """One long-running process whose output lines are read with a deadline."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=dict(env) if env is not None else None, start_new_session=True,
        )
        assert self.proc.stdout is not None
        os.set_blocking(self.proc.stdout.fileno(), False)
        self._buf = b""
        self.lines: list[str] = []
        self._next = 0  # lines[:_next] were taken by line()

    def _read(self, timeout_s: float) -> None:
        assert self.proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if sel.select(timeout_s):
                self._buf += os.read(self.proc.stdout.fileno(), 65536)
        *done, self._buf = self._buf.split(b"\n")
        self.lines.extend(line.decode() for line in done)

    def line(self, timeout_s: float = LINE_S) -> str:
        """The next output line; fails if none comes within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while len(self.lines) <= self._next:
            left = deadline - time.monotonic()
            assert left > 0, f"{self.proc.args[1:]} printed no line in {timeout_s} s: {self.stderr_now()}"
            self._read(min(left, 0.5))
        self._next += 1
        return self.lines[self._next - 1]

    def printed_nothing_new(self) -> bool:
        self._read(0)
        return len(self.lines) == self._next

    def stderr_now(self) -> str:
        return "" if self.proc.poll() is None else (self.proc.stderr.read() or b"").decode(errors="replace")

    def interrupt(self) -> int:
        """SIGINT and its exit code."""
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=LINE_S)
        finally:
            self.stop()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        for f in (self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()


def in_thread(fn: Callable[[], object]) -> tuple[threading.Thread, dict]:
    """Run ``fn()`` in a daemon thread; the dict gets ``value`` or ``error``."""
    out: dict = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out
