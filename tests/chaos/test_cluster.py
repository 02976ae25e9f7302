"""Node processes by PID: a crash is noticed and its log lines are found;
kill, pause and stop reach exactly the process that was started."""

from __future__ import annotations

from paxoskv.chaos.cluster import Cluster, scan_logs
from paxoskv.chaos.net import LoopbackNetwork
from paxoskv.util.wait import wait_until


def cluster(tmp_path, script: str) -> Cluster:
    # ``sh -c SCRIPT NAME ARGS...``: the serve flags the cluster appends become $1...
    return Cluster(2, LoopbackNetwork(2, "test"), tmp_path, node_command=["sh", "-c", script, "node"])


def test_a_node_that_dies_by_itself_is_noticed_once_and_its_log_is_scanned(tmp_path):
    c = cluster(tmp_path, 'echo "Traceback (most recent call last):"; echo "AssertionError: boom"; exit 3')
    try:
        c.start(1)
        (ev,) = wait_until("node 1 to exit by itself", c.check_exits, 10)
        assert (ev.node_id, ev.returncode) == (1, 3)
        assert c.check_exits() == []  # noted once
        scan = scan_logs(c)
        assert [(f.node_id, f.line) for f in scan.findings] == [
            (1, "Traceback (most recent call last):"),
            (1, "AssertionError: boom"),
        ]
        assert "=== chaos: start #1 of node 1" in c.nodes[1].log_path.read_text()
    finally:
        c.shutdown()


def test_kill_pause_resume_and_stop_act_on_the_started_pid(tmp_path):
    c = cluster(tmp_path, 'trap "exit 0" TERM; echo ready; while :; do sleep 0.05; done')

    def ready(i: int, starts: int) -> bool:  # the trap is installed
        return c.nodes[i].log_path.read_text().count("\nready\n") == starts

    try:
        c.start(1)
        c.start(2)
        wait_until("both nodes to install their trap", lambda: ready(1, 1) and ready(2, 1), 10)
        pid = c.nodes[1].pid
        c.pause(1)
        assert not c.up(1) and c.up(2)
        wait_until("node 1 to be stopped", lambda: open(f"/proc/{pid}/stat").read().split()[2] == "T", 10)
        c.resume(1)
        assert c.up(1)
        c.kill(1)  # expected: not reported as a crash
        assert not c.nodes[1].running and c.check_exits() == []
        c.start(1)
        assert c.nodes[1].pid != pid and c.nodes[1].starts == 2
        wait_until("node 1 to start again", lambda: ready(1, 2), 10)
        c.pause(2)
        codes = c.shutdown()  # SIGCONT then SIGTERM, even for a paused node
        assert codes == {1: 0, 2: 0}
        assert c.check_exits() == []
    finally:
        c.shutdown()
