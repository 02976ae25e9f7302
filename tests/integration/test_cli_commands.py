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

import base64
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass

import pytest
from click.testing import CliRunner

from integration_cluster import HOST, PAXOSKV, LocalCluster, run_cli
from paxoskv.client import SyncClient
from paxoskv.cli import main as paxoskv_main
from paxoskv.server.cli import serve_cmd
from paxoskv.util.ports import free_ports
from paxoskv.util.wait import wait_until
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


def test_refused_endpoints_fail_at_once_with_exit_3() -> None:
    dead = [f"{HOST}:{p}" for p in free_ports(2)]
    for args in (("put", "k", "v"), ("get", "k"), ("delete", "k")):
        t0 = time.monotonic()
        p = cli(args[0], "--endpoints", dead[0], *args[1:])  # the default --timeout is 5 s
        elapsed = time.monotonic() - t0
        assert p.returncode == 3, p.stderr
        assert _one_line_error(p) == (
            f"paxoskv {args[0]}: error: cannot reach {dead[0]} (connection refused): is a node running there?"
        )
        assert elapsed < 1, elapsed  # retrying cannot make a node appear
    p = cli("get", "--endpoints", ",".join(dead), "k")
    assert p.returncode == 3
    assert _one_line_error(p) == (
        f"paxoskv get: error: cannot reach any endpoint: {dead[0]} (connection refused), "
        f"{dead[1]} (connection refused)"
    )


def test_two_of_three_down_says_no_quorum_and_exits_3(cluster: LocalCluster) -> None:
    c = cluster
    c.kill(2)
    c.kill(3)
    # Wait until node 1 no longer counts them as heard from (its election timeout).
    wait_until(
        "node 1 to lose its peers",
        lambda: not any(p.connected for p in c.status(1).peers),
        30,
    )
    want = (
        f"no quorum: 1 of 3 members reachable (2 down: node 2 at {c.endpoint(2)}, "
        f"node 3 at {c.endpoint(3)})"
    )
    for args, endpoints in (
        (("put", "k", "v"), c.endpoint(1)),
        (("get", "k"), ",".join(c.endpoints)),
        (("delete", "k"), c.endpoint(1)),
    ):
        p = cli(args[0], "--endpoints", endpoints, "--timeout", "1", *args[1:])
        assert p.returncode == 3, p.stderr
        line = _one_line_error(p)
        assert line.startswith(f"paxoskv {args[0]}: error: {want}"), line
        assert line.count("may still be applied") <= (0 if args[0] == "get" else 1), line


def test_a_short_deadline_says_may_still_be_applied_once_and_only_for_writes(
    shared_cluster: LocalCluster,
) -> None:
    eps = ",".join(shared_cluster.endpoints)
    for args in (("put", "k", "v"), ("get", "k"), ("delete", "k")):
        p = cli(args[0], "--endpoints", eps, "--timeout", "0.001", *args[1:])
        if p.returncode == 0:
            continue  # it made it in a millisecond: nothing to say
        assert p.returncode == 3, p.stderr
        line = _one_line_error(p)
        assert line.count("may still be applied") == (0 if args[0] == "get" else 1), line


# ---- bytes --------------------------------------------------------------------------------


def test_non_utf8_arguments_are_a_usage_error_of_one_line(shared_cluster: LocalCluster) -> None:
    eps = shared_cluster.endpoint(1)
    for argv in (
        [b"put", b"--endpoints", eps.encode(), b"\xffkey", b"v"],
        [b"put", b"--endpoints", eps.encode(), b"key", b"caf\xe9"],
        [b"get", b"--endpoints", eps.encode(), b"\xff"],
        [b"delete", b"--endpoints", eps.encode(), b"\xff"],
        [b"get", b"--endpoints", b"h\xff:1", b"k"],
        [b"status", b"--endpoints", b"h\xff:1"],
    ):
        p = subprocess.run([bytes(PAXOSKV), *argv], capture_output=True, timeout=60)
        assert p.returncode == 2, (argv, p.stderr)
        lines = p.stderr.decode("utf-8", "replace").strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in lines[0], (argv, p.stderr)
        assert "is not valid UTF-8" in lines[0] and "--hex" in lines[0], lines
        assert p.stdout == b""


def test_values_of_one_mib_from_stdin_and_from_a_file_round_trip_byte_for_byte(
    shared_cluster: LocalCluster, tmp_path
) -> None:
    eps = ",".join(shared_cluster.endpoints)
    value = os.urandom(1 << 20)  # the limit exactly, every byte value
    path = tmp_path / "value.bin"
    path.write_bytes(value[::-1])

    def paxoskv(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [str(PAXOSKV), *args, "--endpoints", eps], input=stdin, capture_output=True, timeout=60
        )

    assert paxoskv("put", "from-stdin", "-", stdin=value).stdout == b"OK\n"
    assert paxoskv("put", "from-file", "--value-file", str(path)).stdout == b"OK\n"
    got = paxoskv("get", "--raw", "from-stdin")
    assert got.returncode == 0 and got.stdout == value
    got = paxoskv("get", "--raw", "from-file")
    assert got.returncode == 0 and got.stdout == value[::-1]
    assert paxoskv("get", "from-file").stdout == value[::-1] + b"\n"  # without --raw: a newline

    over = paxoskv("put", "too-big", "-", stdin=value + b"x")
    assert over.returncode == 2
    assert over.stderr == b"paxoskv put: error: value is 1048577 bytes, more than the limit of 1048576\n"
    for args in (("put", "k"), ("put", "k", "v", "--value-file", str(path))):
        p = cli(*args, "--endpoints", eps)
        assert p.returncode == 2 and "one of them" in _one_line_error(p)
    p = cli("put", "k", "--value-file", str(tmp_path / "missing"), "--endpoints", eps)
    assert p.returncode == 2 and "No such file" in _one_line_error(p)


def test_binary_keys_and_values_with_hex_and_base64(shared_cluster: LocalCluster) -> None:
    eps = ",".join(shared_cluster.endpoints)
    key, value = b"\x00bin\xff", bytes(range(256))
    assert cli("put", "--hex", key.hex(), value.hex(), "--endpoints", eps).stdout == "OK\n"
    p = cli("get", "--hex", key.hex(), "--endpoints", eps)
    assert (p.returncode, p.stdout) == (0, value.hex() + "\n")
    b64 = base64.b64encode
    p = cli("get", "--base64", b64(key).decode(), "--endpoints", eps)
    assert (p.returncode, p.stdout) == (0, b64(value).decode() + "\n")
    with SyncClient(shared_cluster.endpoints) as client:
        assert client.get(key) == value  # the bytes themselves were stored
    p = cli("delete", "--base64", b64(key).decode(), "--endpoints", eps)
    assert (p.returncode, p.stdout) == (0, "1\n")
    for bad in (("get", "--hex", "zz"), ("get", "--base64", "!!"), ("get", "--hex", "--base64", "00")):
        p = cli(*bad, "--endpoints", eps)
        assert p.returncode == 2
        _one_line_error(p)


def test_each_error_has_one_wording_in_every_command(shared_cluster: LocalCluster) -> None:
    eps = shared_cluster.endpoint(1)
    for key, want in (("", "key is empty"), ("k" * 5000, "key is 5000 bytes, more than the limit of 4096")):
        for args in (("put", key, "v"), ("get", key), ("delete", key)):
            p = cli(*args, "--endpoints", eps)
            assert p.returncode == 2
            assert _one_line_error(p) == f"paxoskv {args[0]}: error: {want}"


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


def test_status_json_says_null_for_a_peer_never_heard_from(tmp_path) -> None:
    c = LocalCluster(tmp_path / "half", size=2)
    try:
        c.start(1)  # node 2 never runs
        p = cli("status", "--json", "--endpoints", c.endpoint(1))
        assert p.returncode == 0, p.stderr
        (peer,) = json.loads(p.stdout)[0]["peers"]
        assert (peer["node_id"], peer["connected"], peer["last_heard_seconds"]) == (2, False, None)
    finally:
        c.close()


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


def test_serve_refuses_a_data_dir_holding_a_value_past_the_maxima_with_exit_2(tmp_path) -> None:
    """A promise at round 2**64-1 (what one forged Accept left on every node
    before input checks): not a crash at the next election and again at
    every restart, but one line that says how to recover, and exit code 2."""
    from paxoskv.paxos.types import Ballot
    from paxoskv.storage import OutOfRange
    from paxoskv.storage.leveldb import LevelDBStorage

    data = tmp_path / "d1"
    with LevelDBStorage.open(data, 1, "alpha") as storage:
        storage.persist(Ballot((1 << 64) - 1, 3), [], [], sync=True)
    port, bus = _ports()
    p = _serve("--id", "1", "--cluster-id", "alpha", "--port", port, "--bus-port", bus, "--data-dir", str(data))
    assert p.returncode == 2
    line = _one_line_error(p)
    assert "a promise at ballot 18446744073709551615.3" in line and str(data) in line
    assert "move the directory away" in line
    with LevelDBStorage.open(data, 1, "alpha") as storage, pytest.raises(OutOfRange):
        storage.load()  # left as it was, for the operator to move away


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
        ("--id", "1", "--max-txn-ops", "0", "--data-dir", d),
        ("--id", "1", "--max-request-bytes", "0", "--data-dir", d),
        ("--id", "1", "--auto-compaction-retention", "1x", "--data-dir", d),
        ("--id", "1", "--auto-compaction-mode", "revision", "--auto-compaction-retention", "1h", "--data-dir", d),
        ("--id", "1", "--auto-compaction-interval", "0", "--data-dir", d),
        ("--id", "1", "--experimental-watch-progress-notify-interval", "soon", "--data-dir", d),
        ("--id", "1", "--experimental-watch-progress-notify-interval", "-1s", "--data-dir", d),
        ("--id", "1", "--experimental-watch-progress-notify-interval", "1ms", "--data-dir", d),
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
        assert f"serving gRPC on {HOST}:{port} (plaintext; bus port {bus}, CURVE" in "".join(seen), "".join(seen)
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


def test_etcd_flags_are_read_as_etcd_reads_them() -> None:
    from paxoskv.replica.etcd import DEFAULT_QUOTA_BYTES
    from paxoskv.server.config import ConfigError, build_serve_options, parse_duration_ms

    assert [parse_duration_ms(t) for t in ("1h", "30m", "10s", "1h30m", "250ms", "2", "0.5")] == [
        3_600_000, 1_800_000, 10_000, 5_400_000, 250, 7_200_000, 1_800_000,  # a bare number: hours
    ]
    for bad in ("", "1x", "h", "1h-"):
        with pytest.raises(ConfigError):
            parse_duration_ms(bad)

    def node(**kw: object):  # noqa: ANN202
        return build_serve_options(
            node_id=1, cluster_id="c", listen="127.0.0.1", port=5000, bus_port=None, peers="",
            data_dir=None, heartbeat_ms=50, election_ms=500, insecure_peer_bus=True, **kw,
        ).node

    default = node()
    assert default.auto_compaction is None and default.quota_bytes == DEFAULT_QUOTA_BYTES
    assert (default.etcd_limits.txn_ops_max, default.etcd_limits.request_bytes_max) == (128, 1572864)
    assert default.advertise_host == "127.0.0.1"
    periodic = node(auto_compaction_retention="1h", quota_backend_bytes=-1, max_txn_ops=10)
    assert (periodic.auto_compaction.mode, periodic.auto_compaction.retention_ms) == ("periodic", 3_600_000)
    assert periodic.quota_bytes is None and periodic.etcd_limits.txn_ops_max == 10
    revision = node(auto_compaction_mode="revision", auto_compaction_retention="1000", auto_compaction_interval="30s")
    assert (revision.auto_compaction.retention_revs, revision.auto_compaction.interval_ms) == (1000, 30_000)
    assert node(advertise_host="[fd00::1]").advertise_host == "fd00::1"
