"""HostSet.close() when a container does not halt: what the deploy tests' teardown does.

Seen once in CI: a container's ``systemctl --force halt`` failed after all
its units (paxoskv included) had stopped, so nspawn never exited on the
first SIGTERM. The teardown then sends nspawn's second SIGTERM ("terminate
now") and warns, quoting the console; it fails when the console shows the
paxoskv unit itself failing, or when even SIGKILL was needed.

No container is booted: the "container" is a child process that reacts to
SIGTERM the way a hung nspawn does, so these run anywhere in a second.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from nspawn_hosts import Host, HostSet, _halt_failures, _remove_cgroup

# Exits on the n-th SIGTERM (0: never); says "ready" once its handler is set.
CHILD = """
import signal, sys, time
need = int(sys.argv[1]); seen = 0
def on_term(*_):
    global seen
    seen += 1
    if need and seen >= need:
        sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
print("ready", flush=True)
while True:
    time.sleep(1)
"""

HALT_FAILED = (
    "[\x1b[0;32m  OK  \x1b[0m] Stopped \x1b[0;1;39mpaxoskv.service\x1b[0m - paxoskv node 3.\n"
    "Failed to create symlink /sys/fs/cgroup/cpu: File exists\n"
    "[\x1b[0;1;31mFAILED\x1b[0m] Failed to start \x1b[0;1;39msystemd-halt.service\x1b[0m - System Halt.\n"
)
UNIT_FAILED = "[FAILED] Failed to stop paxoskv.service - paxoskv node 3.\n" + HALT_FAILED


def _host_set(tmp_path: Path, terms_to_exit: int, console: str) -> tuple[HostSet, subprocess.Popen[str]]:
    log = tmp_path / "node1.console.log"
    log.write_text(console)
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(terms_to_exit)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    host = Host(
        name="node1",
        address="10.237.255.11",
        netns="paxoskv-teardown-test-none",  # does not exist: its deletion fails quietly
        veth="pxateardownnone",
        machine="paxoskv-teardown-test",
        upper=tmp_path / "node1",
        merged=tmp_path / "node1" / "root",
        console_log=log,
        process=proc,
    )
    hs = HostSet(count=1, workdir=tmp_path, login_key=tmp_path / "key", hosts=[host], halt_timeout_s=0.5,
        terminate_timeout_s=1.0,
    )
    return hs, proc


def test_console_failures_leave_out_boot_noise_and_colours(tmp_path: Path) -> None:
    log = tmp_path / "c.log"
    log.write_text(HALT_FAILED)
    assert _halt_failures(log) == "[FAILED] Failed to start systemd-halt.service - System Halt."
    log.write_text("[  OK  ] Stopped paxoskv.service\n")
    assert _halt_failures(log) == "(no failure reported)"


def test_a_failed_halt_is_ended_by_a_second_sigterm_and_only_warns(tmp_path: Path) -> None:
    hs, proc = _host_set(tmp_path, terms_to_exit=2, console=HALT_FAILED)
    with pytest.warns(UserWarning, match=r"node1 did not halt .* second SIGTERM.*systemd-halt\.service"):
        hs.close()
    assert proc.returncode == 0  # it exited on its own on the second SIGTERM: not killed


def test_a_paxoskv_unit_that_failed_to_stop_fails_the_teardown(tmp_path: Path) -> None:
    hs, proc = _host_set(tmp_path, terms_to_exit=2, console=UNIT_FAILED)
    with pytest.raises(RuntimeError, match=r"Failed to stop paxoskv\.service"):
        hs.close()
    assert proc.returncode == 0


def test_a_container_deaf_to_sigterm_is_killed_and_fails_the_teardown(tmp_path: Path) -> None:
    hs, proc = _host_set(tmp_path, terms_to_exit=0, console=HALT_FAILED)
    with pytest.raises(RuntimeError, match=r"node1 did not stop .* nor after a second SIGTERM; killed"):
        hs.close()
    assert proc.returncode == -9


def test_a_container_that_halts_needs_nothing_more(tmp_path: Path, recwarn: pytest.WarningsRecorder) -> None:
    hs, proc = _host_set(tmp_path, terms_to_exit=1, console="")
    hs.close()
    assert proc.returncode == 0
    assert not [w for w in recwarn.list if "did not halt" in str(w.message)]


def test_a_container_cgroup_goes_with_what_its_systemd_made_below_it(tmp_path: Path) -> None:
    tree = tmp_path / "paxoskv-test-x"
    (tree / "payload" / "system.slice" / "ssh.service").mkdir(parents=True)
    (tree / "payload" / "init.scope").mkdir()
    assert _remove_cgroup(tree) and not tree.exists()
    assert _remove_cgroup(tree)  # already gone
    busy = tmp_path / "busy"
    (busy / "payload").mkdir(parents=True)
    (busy / "payload" / "cgroup.procs").write_text("123")  # a plain directory stands for a non-empty cgroup
    assert not _remove_cgroup(busy)
