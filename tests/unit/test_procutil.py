"""A child started with die_with_parent does not outlive a SIGKILLed parent."""

import os
import signal
import subprocess
import sys
import time


def test_the_child_dies_with_its_killed_parent(tmp_path):
    pidfile = tmp_path / "child.pid"
    parent = subprocess.Popen(
        [sys.executable, "-c", (
            "import subprocess, sys, pathlib\n"
            "from paxoskv.procutil import die_with_parent\n"
            "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], preexec_fn=die_with_parent)\n"
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
        try:  # reap if it became our zombie (it will not: its parent was init)
            os.waitpid(child, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.02)
    os.kill(child, signal.SIGKILL)
    raise AssertionError("the child outlived its parent")
