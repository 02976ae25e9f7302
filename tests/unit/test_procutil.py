"""A child started through die_with_parent does not outlive a SIGKILLed parent."""

import os
import signal
import subprocess
import sys
import time

import pytest

from paxoskv.procutil import _SETPRIV, die_with_parent


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
        deadline = time.monotonic() + 30
        while not (pidfile.exists() and pidfile.read_text()) and time.monotonic() < deadline:
            time.sleep(0.02)
        child = int(pidfile.read_text())
        os.kill(child, 0)  # alive
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        time.sleep(0.02)
    os.kill(child, signal.SIGKILL)
    raise AssertionError("the child outlived its parent")


def test_the_wrapped_command_is_the_same_process():
    """setpriv execs the command: the PID a starter stops is the node's own."""
    out = subprocess.run(
        die_with_parent([sys.executable, "-c", "import os; print(os.getpid(), os.getppid())"]),
        capture_output=True, text=True, check=True,
    )
    pid, ppid = map(int, out.stdout.split())
    assert ppid == os.getpid()
