"""The ``paxoskv`` command line as a script sees it: output, stderr, exit codes.

Client commands (put, get, delete, status) run against a shared healthy
cluster; ``serve`` is started on wrong, locked and unusable data directories,
busy ports and bad flags, and must refuse with one line on stderr and exit
code 2, leaving the data intact.

Some commands run as real processes (``run_cli``); most run in-process
through click's runner (``cli``): the same code and the same exit codes,
without a Python start-up per command (seconds each on a loaded machine).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass

import pytest
from click.testing import CliRunner

from integration_cluster import HOST, PAXOSKV, LocalCluster, free_ports, run_cli
from paxoskv.cli import main as paxoskv_main
from paxoskv.server.cli import serve_cmd
from paxoskv.transport.keys import ensure_key_pairs


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str


def cli(*args: str, env: dict[str, str] | None = None) -> Result:
    """``paxoskv ARGS`` in this process (click's runner)."""
    r = CliRunner().invoke(paxoskv_main, list(args), env=env)
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return Result(r.exit_code, r.stdout, r.stderr)


def _one_line_error(proc: subprocess.CompletedProcess[str] | Result) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


# ---- client commands ------------------------------------------------------------------------


def test_put_get_delete_output_and_exit_codes(shared_cluster: LocalCluster) -> None:
    eps = ",".join(shared_cluster.endpoints)
    p = run_cli("put", "--endpoints", eps, "cli-key", "hello world")
    assert (p.returncode, p.stdout, p.stderr) == (0, "OK\n", "")
    p = run_cli("get", "--endpoints", eps, "cli-key")
    assert (p.returncode, p.stdout, p.stderr) == (0, "hello world\n", "")
    p = run_cli("get", "--serializable", "--endpoints", shared_cluster.endpoint(2), "cli-key")
    assert p.returncode in (0, 1)  # a follower's own state may lag; never an error
    p = run_cli("delete", "--endpoints", eps, "cli-key")
    assert (p.returncode, p.stdout) == (0, "1\n")
    p = run_cli("delete", "--endpoints", eps, "cli-key")
    assert (p.returncode, p.stdout) == (0, "0\n")
    p = run_cli("get", "--endpoints", eps, "cli-key")
    assert (p.returncode, p.stdout) == (1, "")
    assert "key not found" in _one_line_error(p)


def test_endpoints_from_the_environment_and_unicode(shared_cluster: LocalCluster) -> None:
    env = {"PAXOSKV_ENDPOINTS": shared_cluster.endpoint(3)}
    assert cli("put", "ключ", "värde ✓", env=env).returncode == 0
    p = cli("get", "ключ", env=env)
    assert (p.returncode, p.stdout) == (0, "värde ✓\n")


def test_invalid_requests_exit_2(shared_cluster: LocalCluster) -> None:
    eps = shared_cluster.endpoint(1)
    p = cli("put", "--endpoints", eps, "", "v")
    assert p.returncode == 2
    assert "key is empty" in _one_line_error(p)
    p = cli("put", "--endpoints", eps, "k" * 5000, "v")
    assert p.returncode == 2
    assert "limit" in _one_line_error(p)
    p = cli("get", "--endpoints", "nohost:notaport", "k")
    assert p.returncode == 2 and "Traceback" not in p.stderr
    p = cli("put", "--endpoints", eps, "only-a-key")
    assert p.returncode == 2 and "Traceback" not in p.stderr


def test_unreachable_cluster_exits_3_within_the_timeout() -> None:
    dead = ",".join(f"{HOST}:{p}" for p in free_ports(2))
    for args in (("put", "k", "v"), ("get", "k"), ("delete", "k")):
        t0 = time.monotonic()
        p = cli(args[0], "--endpoints", dead, "--timeout", "1", *args[1:])
        elapsed = time.monotonic() - t0
        assert p.returncode == 3, p.stderr
        assert "no node could serve" in _one_line_error(p)
        assert elapsed < 1 + 1


def test_status_table_and_json(shared_cluster: LocalCluster) -> None:
    c = shared_cluster
    leader = c.wait_leader()
    eps = ",".join(c.endpoints)
    p = cli("status", "--endpoints", eps)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    assert lines[0].split()[:4] == ["ENDPOINT", "ID", "ROLE", "LEADER"]
    assert len(lines) == 4
    roles = {line.split()[1]: line.split()[2] for line in lines[1:]}
    assert roles[str(leader)] == "leader"

    dead = f"{HOST}:{free_ports(1)[0]}"
    p = cli("status", "--json", "--timeout", "1", "--endpoints", f"{eps},{dead}")
    assert p.returncode == 3
    data = json.loads(p.stdout)
    assert [d["endpoint"] for d in data] == [*c.endpoints, dead]
    for d in data[:3]:
        assert {"node_id", "role", "leader_id", "commit_index", "applied_index"} <= d.keys()
        assert d["leader_id"] == leader
        assert d["cluster_id"] == c.cluster_id
        assert {p["node_id"] for p in d["peers"]} == set(c.nodes) - {d["node_id"]}
        # Every node hears from the leader; the leader hears from everyone.
        seen = {p["node_id"] for p in d["peers"] if p["connected"]}
        if d["node_id"] == leader:
            assert seen == set(c.nodes) - {leader}, d
        else:
            assert leader in seen, d
    assert sorted(d["node_id"] for d in data[:3]) == [1, 2, 3]
    assert "error" in data[3] and "node_id" not in data[3]


# ---- serve: refusals ------------------------------------------------------------------------


def _serve(*args: str, timeout_s: float = 30.0, env: dict[str, str] | None = None):
    """A ``serve`` expected to be refused (the bus mode is not what these test)."""
    return run_cli("serve", "--listen", HOST, "--insecure-peer-bus", *args, timeout_s=timeout_s, env=env)


def _ports() -> list[str]:
    return [str(p) for p in free_ports(2)]


def test_serve_refuses_wrong_and_locked_data_dirs_and_keeps_the_data(tmp_path) -> None:
    c = LocalCluster(tmp_path / "one", size=1, cluster_id="alpha")
    try:
        c.start_all()
        with c.client() as client:
            for i in range(10):
                client.put(f"k{i}", f"v{i}")
        applied = c.status(1).applied_index
        data = str(c.nodes[1].data_dir)

        # Locked: node 1 is running on it.
        port, bus = _ports()
        p = _serve(
            "--id",
            "1",
            "--cluster-id",
            "alpha",
            "--port",
            port,
            "--bus-port",
            bus,
            "--data-dir",
            data,
        )
        assert p.returncode == 2
        assert "open in another process" in _one_line_error(p)
        with c.client() as client:
            assert client.get("k9") == b"v9"

        assert c.kill(1, signal.SIGTERM) == 0
        # Another node's directory, another cluster's directory.
        p = _serve(
            "--id",
            "2",
            "--cluster-id",
            "alpha",
            "--port",
            port,
            "--bus-port",
            bus,
            "--data-dir",
            data,
        )
        assert p.returncode == 2
        assert "belongs to node 1" in _one_line_error(p)
        p = _serve(
            "--id",
            "1",
            "--cluster-id",
            "beta",
            "--port",
            port,
            "--bus-port",
            bus,
            "--data-dir",
            data,
        )
        assert p.returncode == 2
        assert "belongs to cluster 'alpha'" in _one_line_error(p)

        # Nothing was harmed: node 1 starts on it with every write.
        c.start(1)
        c.wait_leader()
        assert c.status(1).applied_index >= applied
        with c.client() as client:
            assert [client.get(f"k{i}") for i in range(10)] == [f"v{i}".encode() for i in range(10)]
    finally:
        c.close()


def test_serve_refuses_unusable_data_dirs_busy_ports_and_bad_flags(tmp_path) -> None:
    port, bus = _ports()
    a_file = tmp_path / "file"
    a_file.write_text("not a directory")
    p = _serve("--id", "1", "--port", port, "--bus-port", bus, "--data-dir", str(a_file))
    assert p.returncode == 2
    assert str(a_file) in _one_line_error(p)
    assert a_file.read_text() == "not a directory"

    p = _serve("--id", "1", "--port", port, "--bus-port", bus, "--data-dir", str(a_file / "sub"))
    assert p.returncode == 2
    _one_line_error(p)

    # Busy public port, busy bus port.
    c = LocalCluster(tmp_path / "one", size=1)
    try:
        c.start_all()
        busy = str(c.nodes[1].port)
        p = _serve(
            "--id", "1", "--port", busy, "--bus-port", bus, "--data-dir", str(tmp_path / "d1")
        )
        assert p.returncode == 2
        assert "cannot listen" in _one_line_error(p)
        busy_bus = str(c.nodes[1].bus_port)
        p = _serve(
            "--id", "1", "--port", port, "--bus-port", busy_bus, "--data-dir", str(tmp_path / "d2")
        )
        assert p.returncode == 2
        assert "bus" in _one_line_error(p)
        # The failed start left its fresh data directory usable.
        c2 = LocalCluster(tmp_path / "two", size=1, cluster_id="paxoskv")
        c2.nodes[1].data_dir = tmp_path / "d2"
        try:
            c2.start_all()
        finally:
            c2.close()
        with c.client() as client:
            client.put("still", "serving")
    finally:
        c.close()

    d = str(tmp_path / "d")
    bad = [
        ("--id", "0", "--data-dir", d),
        ("--id", "x", "--data-dir", d),
        ("--data-dir", d),  # no id
        ("--id", "1", "--port", "70000", "--data-dir", d),
        ("--id", "1", "--peers", "2=hostonly", "--data-dir", d),
        ("--id", "1", "--peers", "1=h:1", "--data-dir", d),
        ("--id", "1", "--peers", "2=h:1,2=h:2", "--data-dir", d),
        ("--id", "1", "--heartbeat-ms", "100", "--election-ms", "150", "--data-dir", d),
        ("--id", "1", "--cluster-id", "", "--data-dir", d),
        ("--id", "1", "--leveldb-compression", "zstd", "--data-dir", d),
    ]
    # One for real, the rest through click in-process (the same code, no start-up cost).
    p = _serve(*bad[0])
    assert p.returncode == 2 and "Traceback" not in p.stderr and "Error" in p.stderr, p.stderr
    runner = CliRunner()
    for args in bad:
        r = runner.invoke(serve_cmd, ["--listen", HOST, *args], env={"PAXOSKV_PEERS": None})
        assert r.exit_code == 2, (args, r.output, r.exception)
        assert "Error" in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
    assert not (tmp_path / "d").exists()


def test_serve_from_environment_variables_and_clean_sigterm(tmp_path) -> None:
    port, bus = free_ports(2)
    env = {
        "PAXOSKV_ID": "5",
        "PAXOSKV_CLUSTER_ID": "envtest",
        "PAXOSKV_LISTEN": HOST,
        "PAXOSKV_PORT": str(port),
        "PAXOSKV_BUS_PORT": str(bus),
        "PAXOSKV_PEERS": "",
        "PAXOSKV_DATA_DIR": str(tmp_path / "env-data"),
        "PAXOSKV_HEARTBEAT_MS": "20",
        "PAXOSKV_ELECTION_MS": "200",
        "PAXOSKV_PEER_PUBLIC_KEYS": str(tmp_path / "keys"),  # its secret: node5.key_secret there
    }
    ensure_key_pairs(tmp_path / "keys", [5])
    proc = subprocess.Popen(
        [str(PAXOSKV), "serve"],
        env=dict(os.environ, **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        seen = []
        for line in proc.stdout:  # ends if the process does
            seen.append(line)
            if "serving gRPC on" in line:
                break
        assert f"serving gRPC on {HOST}:{port} (bus port {bus}, CURVE" in "".join(seen), "".join(seen)
        p = run_cli("put", "--endpoints", f"{HOST}:{port}", "e", "nv")
        assert p.returncode == 0, p.stderr
        st = json.loads(run_cli("status", "--json", "--endpoints", f"{HOST}:{port}").stdout)[0]
        assert (st["node_id"], st["cluster_id"], st["role"]) == (5, "envtest", "leader")
        assert (tmp_path / "env-data" / "CURRENT").exists()
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=15)
    assert proc.returncode == 0, out
    assert "node 5 stopped" in out and "Traceback" not in out


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_serve_stops_on_signal_with_exit_0(tmp_path, sig: int) -> None:
    c = LocalCluster(tmp_path / "one", size=1)
    try:
        c.start_all()
        assert c.kill(1, sig) == 0
        assert "node 1 stopped" in c.log_text(1)
    finally:
        c.close()


def test_peer_and_endpoint_specs() -> None:
    from paxoskv.server.config import ConfigError, parse_endpoints, parse_peers
    from paxoskv.server.node import PeerAddr

    assert parse_peers("2=10.0.0.2:50051, 3=h3:50052:6000", own_id=1) == {
        2: PeerAddr("10.0.0.2", 50051, 51051),  # bus port: gRPC port + 1000
        3: PeerAddr("h3", 50052, 6000),
    }
    assert parse_peers("2=[fd00::2]:50051:51000") == {2: PeerAddr("fd00::2", 50051, 51000)}
    assert parse_peers("") == {}
    assert parse_endpoints("localhost,h:1,[::1]:2,h:1") == ["localhost:50051", "h:1", "[::1]:2"]
    for bad in (
        "2",
        "2=h",
        "x=h:1",
        "2=h:0",
        "2=h:1:2:3",
        "2=:1",
        "1=h:1",
        "2=h:1,2=h:2",
        "2=h:65000",
    ):
        with pytest.raises(ConfigError):
            parse_peers(bad, own_id=1)
    for bad in ("", ",", "h:x", "[::1:5"):
        with pytest.raises(ConfigError):
            parse_endpoints(bad)
