"""The launchers people type: the README's first command and client examples
from a fresh checkout, ``paxoskv cluster``, and the original version's
``bin/server``, ``bin/client`` and ``bin/run_cluster.sh``, verbatim.

Ports differ from the documented 50051-50053 (tests bind ports chosen free at
run time): ``bin/run_cluster.sh`` gets ``PAXOSKV_BASE_PORT``, and in the
README's commands the documented port numbers are replaced by the real ones.
Everything else runs as written.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import re
import shutil
import signal
import subprocess

from integration_cluster import (
    HOST,
    PAXOSKV,
    REPO,
    free_ports,
    health_status,
    node_status,
    run_cli,
    wait_until,
)
from grpc_health.v1 import health_pb2

MARKER = "<!-- tested: client-examples"
DOC_PORTS = (50051, 50052, 50053)


def _readme_examples() -> list[tuple[str, str]]:
    """(command, expected output) of the README's tested client examples."""
    text = (REPO / "README.md").read_text()
    assert MARKER in text, "the README lost its tested client examples"
    block = text.split(MARKER, 1)[1].split("```console\n", 1)[1].split("```", 1)[0]
    examples: list[tuple[str, str]] = []
    for line in block.splitlines():
        if line.startswith("$ "):
            examples.append((line[2:], ""))
        else:
            assert examples, f"output before any command in the README block: {line!r}"
            cmd, out = examples[-1]
            examples[-1] = (cmd, out + line + "\n")
    assert len(examples) >= 5
    return examples


def _fresh_checkout(dest: pathlib.Path) -> pathlib.Path:
    """The files a clone has that the launchers use, and the project's .venv.

    ``bin/setup`` finds the virtualenv current (same setup.cfg, pyproject.toml
    and extras) and does nothing; we check that first, so it never installs
    anything into the shared virtualenv.
    """
    dest.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, dest / name)
    shutil.copytree(REPO / "bin", dest / "bin")
    shutil.copytree(REPO / "docs", dest / "docs")
    (dest / ".venv").symlink_to(REPO / ".venv")
    digest = hashlib.sha256(
        (REPO / "setup.cfg").read_bytes() + (REPO / "pyproject.toml").read_bytes()
    )
    want = f"{digest.hexdigest()[:16]} {os.environ.get('PAXOSKV_EXTRAS', 'test,ansible')}"
    stamp = REPO / ".venv" / ".paxoskv-setup"
    assert stamp.read_text().strip() == want, "the virtualenv is stale: run bin/setup first"
    return dest


def _pids_from_banner(text: str) -> dict[int, int]:
    return {int(n): int(p) for n, p in re.findall(r"node(\d+): pid (\d+)", text)}


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _wait_banner(proc: subprocess.Popen, out_path: pathlib.Path, timeout_s: float) -> str:
    """The output up to the banner that ends "Ctrl-C stops them all."."""

    def probe() -> str | None:
        text = out_path.read_text()
        if "Ctrl-C stops them all" in text:
            return text
        assert proc.poll() is None, f"exited with {proc.returncode}:\n{text}"
        return None

    return wait_until("the cluster's banner", probe, timeout_s)


def _stop(proc: subprocess.Popen, sig: int = signal.SIGINT, timeout_s: float = 30.0) -> int:
    if proc.poll() is None:
        os.kill(proc.pid, sig)
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        raise


def test_readme_first_command_and_client_examples_from_a_fresh_checkout(tmp_path) -> None:
    checkout = _fresh_checkout(tmp_path / "paxoskv")
    base = free_ports(3, offset=1000, consecutive=True)[0]
    ports = {doc: base + i for i, doc in enumerate(DOC_PORTS)}
    out_path = tmp_path / "run_cluster.out"
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(
            ["bin/run_cluster.sh"],  # the README's first command
            cwd=checkout,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, PAXOSKV_BASE_PORT=str(base)),
            start_new_session=True,
        )
    try:
        banner = _wait_banner(proc, out_path, 90)
        pids = _pids_from_banner(banner)
        assert sorted(pids) == [1, 2, 3]
        env = dict(os.environ, PAXOSKV_ENDPOINTS=f"localhost:{base}")
        for cmd, expected in _readme_examples():
            real = cmd
            for doc, port in ports.items():
                real = real.replace(str(doc), str(port))
            p = subprocess.run(  # stdout and stderr interleaved, as on a terminal
                ["bash", "-c", real],
                cwd=checkout,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=60,
            )
            assert p.stdout == expected, f"README example {cmd!r} printed {p.stdout!r}"
        p = run_cli("status", "--endpoints", ",".join(f"localhost:{p}" for p in ports.values()))
        assert p.returncode == 0 and len(p.stdout.strip().splitlines()) == 4, p.stdout + p.stderr
        assert sorted(os.listdir(checkout / "data")) == ["keys", "node1", "node2", "node3"]
        _assert_local_keys(checkout / "data" / "keys", 3)
    finally:
        rc = _stop(proc)  # Ctrl-C
    text = out_path.read_text()
    assert rc == 0, text
    assert "all nodes stopped" in text
    for i in (1, 2, 3):  # every node ran the CURVE bus
        assert re.search(rf"\[node{i}\] .*serving gRPC on .*\(bus port \d+, CURVE,", text), text
    for pid in pids.values():
        assert _gone(pid)


def _assert_local_keys(keys: pathlib.Path, n: int) -> None:
    """The key pairs a local cluster made: one per node, secrets readable by their owner only."""
    assert sorted(os.listdir(keys)) == sorted(f"node{i}.{k}" for i in range(1, n + 1) for k in ("key", "key_secret"))
    for i in range(1, n + 1):
        assert (keys / f"node{i}.key_secret").stat().st_mode & 0o777 == 0o600


def test_cluster_command_prefixes_logs_reports_a_killed_node_and_stops_all(tmp_path) -> None:
    base = free_ports(3, offset=1000, consecutive=True)[0]
    out_path = tmp_path / "cluster.out"
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(
            [
                str(PAXOSKV), "cluster", "--nodes", "3", "--base-port", str(base),
                "--data-dir", str(tmp_path / "data"), "--heartbeat-ms", "20", "--election-ms", "200",
            ],  # fmt: skip
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        banner = _wait_banner(proc, out_path, 60)
        for i in (1, 2, 3):
            assert f"[node{i}] " in banner
        pids = _pids_from_banner(banner)
        eps = ",".join(f"{HOST}:{base + i}" for i in range(3))
        assert run_cli("put", "--endpoints", eps, "a", "1").returncode == 0
        os.kill(pids[3], signal.SIGKILL)  # fault tolerance by hand
        wait_until(
            "the cluster to report node3's death",
            lambda: "node3 exited with code -9" in out_path.read_text(),
            30,
        )
        p = run_cli("put", "--endpoints", eps, "b", "2")
        assert p.returncode == 0, p.stderr
        assert run_cli("get", "--endpoints", eps, "a").stdout == "1\n"
    finally:
        rc = _stop(proc, signal.SIGTERM)
    assert rc == 0, out_path.read_text()
    assert all(_gone(pid) for pid in pids.values())
    _assert_local_keys(tmp_path / "data" / "keys", 3)
    assert out_path.read_text().count(", CURVE, data ") == 3


def test_bin_server_and_bin_client_as_the_original(tmp_path) -> None:
    ports = free_ports(3, offset=1000)  # each node: its port, and port + 1000 for the bus
    env = dict(
        os.environ,
        PAXOSKV_LISTEN=HOST,  # tests bind 127.0.0.1 only (the default is 0.0.0.0)
        PAXOSKV_HEARTBEAT_MS="20",
        PAXOSKV_ELECTION_MS="200",
    )
    procs: dict[int, subprocess.Popen] = {}
    try:
        for i, port in enumerate(ports, start=1):
            peers = ",".join(f"{j}={HOST}:{p}" for j, p in enumerate(ports, start=1) if j != i)
            with open(tmp_path / f"server{i}.log", "wb") as log:
                procs[i] = subprocess.Popen(
                    [
                        str(REPO / "bin" / "server"),
                        "-id",
                        str(i),
                        "-port",
                        str(port),
                        "-peers",
                        peers,
                    ],
                    cwd=tmp_path,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        for i, port in enumerate(ports, start=1):
            wait_until(
                f"bin/server node {i} to serve",
                lambda: procs[i].poll() is not None
                or health_status(f"{HOST}:{port}", 0.5) == health_pb2.HealthCheckResponse.SERVING,
                30,
            )
            assert procs[i].poll() is None, (tmp_path / f"server{i}.log").read_text()

        def agreed_leader() -> int | None:
            st = [node_status(f"{HOST}:{p}") for p in ports]
            leaders = {s.leader_id for s in st if s is not None}
            return (
                leaders.pop() if None not in st and len(leaders) == 1 and 0 not in leaders else None
            )

        wait_until("a leader", agreed_leader, 30)

        def client(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [str(REPO / "bin" / "client"), *args], capture_output=True, text=True, timeout=60
            )

        s1, s2, s3 = (f"{HOST}:{p}" for p in ports)
        assert client("-server", s1, "-op", "put", "-key", "lang", "-val", "go").stdout == "OK\n"
        assert (
            client("-server", s2, "-op", "put", "-key", "lang", "-val", "python").stdout == "OK\n"
        )
        got = client("-server", s3, "-op", "get", "-key", "lang")
        assert (got.returncode, got.stdout) == (0, "Value: python\n")
        assert client("-server", s3, "-op=delete", "-key=lang").stdout == "OK\n"
        missing = client("-server", s1, "-op", "get", "-key", "lang")
        assert (
            missing.returncode == 1 and "key not found" in missing.stderr and missing.stdout == ""
        )
        empty_val = client("-server", s1, "-op", "put", "-key", "e", "-val", "")
        assert empty_val.stdout == "OK\n"
        assert client("-server", s2, "-op", "get", "-key", "e").stdout == "Value: \n"
        for bad in (
            ("-server", s1, "-op", "get"),  # no key
            ("-server", s1, "-op", "put", "-key", "k"),  # no value
            ("-server", s1, "-op", "frobnicate", "-key", "k"),
            ("-op", "get", "-key", "k"),  # no server
            ("-server", s1, "-op", "get", "-key", "k", "-bogus", "1"),
        ):
            p = client(*bad)
            assert p.returncode == 2 and "usage" in p.stderr, (bad, p.stderr)
        assert sorted(os.listdir(tmp_path / "data")) == ["node1", "node2", "node3"]
    finally:
        for p in procs.values():
            _stop(p, signal.SIGTERM)
    assert [p.returncode for p in procs.values()] == [0, 0, 0]
    for i in (1, 2, 3):  # without keys: the unauthenticated bus, and a warning saying how to turn CURVE on
        log_text = (tmp_path / f"server{i}.log").read_text()
        assert "bin/server: WARNING: no peer keys given" in log_text and "--peer-public-keys" in log_text
        assert "*** INSECURE PEER BUS" in log_text and ", INSECURE, data " in log_text


def test_bin_server_refuses_bad_flags() -> None:
    for args in (("-id",), ("-id", "1", "-frob", "x"), ("stray",)):
        p = subprocess.run(
            [str(REPO / "bin" / "server"), *args], capture_output=True, text=True, timeout=30
        )
        assert p.returncode == 2 and "usage" in p.stderr, (args, p.stderr)
