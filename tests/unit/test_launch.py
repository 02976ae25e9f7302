"""``paxoskv.launch``: the serve flags of a local cluster, and processes
started, signalled and stopped by PID."""

from __future__ import annotations

import os
import signal
import sys
from types import SimpleNamespace

from paxoskv.launch import (
    NodeAddress,
    ServeCluster,
    ServeNode,
    agreed_leader,
    local_addresses,
    peers_spec,
    serve_args,
    spawn,
    stop_procs,
)
from paxoskv.server.config import parse_peers
from paxoskv.util.wait import wait_until


def test_peers_name_every_other_node_and_a_bus_port_only_where_it_is_not_the_default():
    addrs = {
        1: NodeAddress("127.0.0.1", 50051, 51051),
        2: NodeAddress("::1", 50052, 51052),
        3: NodeAddress("10.0.0.3", 7000, 9999),
    }
    assert peers_spec(addrs, 1) == "2=[::1]:50052,3=10.0.0.3:7000:9999"
    assert peers_spec(addrs, 3) == "1=127.0.0.1:50051,2=[::1]:50052"
    parsed = parse_peers(peers_spec(addrs, 2), 2)  # what serve makes of it
    assert {i: (p.host, p.port, p.bus_port) for i, p in parsed.items()} == {
        1: ("127.0.0.1", 50051, 51051),
        3: ("10.0.0.3", 7000, 9999),
    }


def test_serve_flags_come_in_one_order_and_only_the_tuning_given():
    addrs = local_addresses(2, base_port=50051)
    assert addrs[2] == NodeAddress("127.0.0.1", 50052, 51052)
    assert serve_args(2, addrs, cluster_id="c", data_dir="d/node2", listen="0.0.0.0", election_ms=300, extra=("--x", "1")) == [
        "--id", "2", "--cluster-id", "c", "--listen", "0.0.0.0", "--port", "50052", "--bus-port", "51052",
        "--peers", "1=127.0.0.1:50051", "--data-dir", "d/node2", "--election-ms", "300", "--x", "1",
    ]  # fmt: skip
    free = local_addresses(3)
    ports = [p for a in free.values() for p in (a.port, a.bus_port)]
    assert len(set(ports)) == 6


def test_agreed_leader_needs_every_answer_one_name_and_that_node_leading():
    def st(node_id: int, leader_id: int, role: str = "follower") -> SimpleNamespace:
        return SimpleNamespace(node_id=node_id, leader_id=leader_id, role=role)

    good = [st(1, 2), st(2, 2, "leader"), st(3, 2)]
    assert agreed_leader(good) == 2
    assert agreed_leader([]) is None
    assert agreed_leader([st(1, 2), None, st(3, 2)]) is None  # one did not answer
    assert agreed_leader([st(1, 2), st(2, 3, "leader"), st(3, 2)]) is None  # two names
    assert agreed_leader([st(1, 0), st(2, 0), st(3, 0)]) is None  # no leader yet
    assert agreed_leader([st(1, 2), st(2, 2, "candidate"), st(3, 2)]) is None  # it does not lead
    assert agreed_leader([st(1, 4), st(3, 4)]) is None  # the one named is not among them


SCRIPT = """
import os, signal, sys, time
mode = sys.argv[1]
if mode == "term":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(7))
elif mode == "deaf":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", os.getpid(), os.environ.get("PYTHONUNBUFFERED"), flush=True)
while True:
    time.sleep(0.05)
"""


def test_spawned_processes_log_their_output_and_stop_by_pid(tmp_path):
    log = tmp_path / "sub" / "p.log"
    procs = [spawn([sys.executable, "-c", SCRIPT, mode], log, header=f"=== {mode} ===") for mode in ("term", "deaf")]
    done = spawn([sys.executable, "-c", "raise SystemExit(3)"], tmp_path / "done.log")
    try:
        wait_until("both to say ready", lambda: log.read_text().count("ready") == 2, 30)
        text = log.read_text()
        for p in procs:
            assert f"ready {p.pid} 1" in text  # the same PID (setpriv execs), unbuffered
            assert os.getsid(p.pid) == p.pid  # a session of its own
        assert "=== term ===" in text and "=== deaf ===" in text
        done.wait(timeout=30)
        os.kill(procs[0].pid, signal.SIGSTOP)  # a paused process still hears SIGTERM
        assert stop_procs([*procs, done], grace_s=1.0) == [7, None, 3]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def test_a_serve_cluster_runs_its_command_with_each_nodes_flags(tmp_path):
    addrs = local_addresses(2)
    nodes = {i: ServeNode(i, a, tmp_path / f"d{i}", tmp_path / f"n{i}.log") for i, a in addrs.items()}
    echo = [sys.executable, "-c", "import sys; print(' '.join(sys.argv[1:]))"]
    c = ServeCluster(nodes, cluster_id="t", command=echo, heartbeat_ms=20, wrap=lambda i, argv: [*argv, f"wrapped{i}"])
    try:
        for i in c.ids:
            c.start(i)
        wait_until("the echoes to end", lambda: not any(n.running for n in c.nodes.values()), 30)
        assert c.kill(1, timeout_s=30) == 0  # already ended: its exit code, no signal
        out = c.log_text(2).splitlines()
        assert out[0] == "=== start #1 of node 2 ==="
        assert out[1] == " ".join([*serve_args(2, addrs, cluster_id="t", data_dir=tmp_path / "d2", heartbeat_ms=20), "wrapped2"])
        c.start(2)
        assert c.nodes[2].starts == 2
        wait_until("the second echo to end", lambda: not c.nodes[2].running, 30)
        assert c.stop() == {1: 0, 2: 0}
        assert c.log_text(2).count("=== start #2 of node 2 ===") == 1
    finally:
        c.stop()
