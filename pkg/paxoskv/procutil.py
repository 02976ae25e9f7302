"""Child processes that cannot outlive their parent.

Tests, ``paxoskv cluster``, the benchmark and the chaos campaign start nodes
as subprocesses and stop them by PID. If the parent itself is killed
(SIGKILL, a CI timeout), nothing would stop them, so they are started with
Linux's parent-death signal (``PR_SET_PDEATHSIG``): SIGKILL when the parent
goes.

The signal is set by util-linux's ``setpriv --pdeathsig KILL`` in front of the
command, which then execs it (same PID), not by a ``preexec_fn``: a
``preexec_fn`` makes CPython ``fork()`` instead of ``vfork()``, and ``fork()``
runs gRPC's fork handlers, which hang for good while gRPC is shutting a
channel down in its background thread (grpc/grpc#37259). Where ``setpriv`` is
missing the command runs as it is; its starter still stops it by PID.
"""

from __future__ import annotations

import shutil
import sys

_SETPRIV = shutil.which("setpriv") if sys.platform.startswith("linux") else None


def die_with_parent(argv: list[str]) -> list[str]:
    """``argv``, prefixed so that the process is SIGKILLed when its parent exits."""
    if _SETPRIV is None:
        return list(argv)
    return [_SETPRIV, "--pdeathsig", "KILL", "--", *argv]
