"""Child processes that cannot outlive their parent.

Tests, ``paxoskv cluster``, the benchmark and the chaos campaign start nodes
as subprocesses and stop them by PID. If the parent itself is killed
(SIGKILL, a CI timeout), nothing would stop them: ``die_with_parent`` asks
Linux to SIGKILL the child when the parent goes (``PR_SET_PDEATHSIG``).
Pass it as ``preexec_fn`` to ``subprocess.Popen``, from the thread that will
live as long as the child should (the signal follows the parent thread).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In the child, before exec: be SIGKILLed when the parent exits. Linux only."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)
