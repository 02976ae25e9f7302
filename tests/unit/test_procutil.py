"""A child started through die_with_parent does not outlive a SIGKILLed parent."""

import os
import signal
import subprocess
import sys

import pytest

from paxoskv.procutil import _SETPRIV, die_with_parent
from paxoskv.util.wait import WaitTimeout, wait_until


@pytest.mark.skipif(_SETPRIV is None, reason="setpriv (util-linux) is not installed")
def test_the_child_dies_with_its_killed_parent(tmp_path):
    pidfile = tmp_path / "child.pid"
    parent = subprocess.Popen(
        [sys.executable, "-c", (
            "import subprocess, sys, pathlib\n"
            "from paxoskv.procutil import die_with_parent\n"
            "c = subprocess.Popen(die_with_parent([sys.executable, '-c', 'import time; time.sleep(600)']))\n"
            f"pathlib.Path({str(pidfile)!r}).write_text(str(c.pid))\n"
            "import time; time.sleep(600)\n"
        )],
    )
    try:
        child = int(wait_until("the child's pid", lambda: pidfile.exists() and pidfile.read_text(), 30))
        os.kill(child, 0)  # alive
    finally:
        parent.kill()
        parent.wait()
    def gone() -> bool:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return True
        return False

    try:
        wait_until("the child to die with its parent", gone, 10)
    except WaitTimeout:
        os.kill(child, signal.SIGKILL)
        raise


def test_the_wrapped_command_is_the_same_process():
    """setpriv execs the command: the PID a starter stops is the node's own."""
    out = subprocess.run(
        die_with_parent([sys.executable, "-c", "import os; print(os.getpid(), os.getppid())"]),
        capture_output=True, text=True, check=True,
    )
    pid, ppid = map(int, out.stdout.split())
    assert ppid == os.getpid()
