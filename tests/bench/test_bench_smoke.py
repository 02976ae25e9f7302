"""A 10-second smoke of ``paxoskv bench`` against a real local 3-node paxoskv cluster.

It checks that the command works end to end -- starts, loads every node,
prints its table, and that ``--json`` is one parseable object -- and never
asserts a figure: throughput and latency depend on the machine.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

import clusters  # bench/clusters.py (setup.cfg puts bench/ on sys.path)
from paxoskv.util.ports import free_port

ECHO_SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "bench" / "echo_node.py"

BENCH = [sys.executable, "-c", "from paxoskv.cli import main; main()", "bench"]


@pytest.fixture
def paxoskv_cluster(tmp_path):
    cluster = clusters.start_paxoskv(tmp_path / "cluster")
    try:
        cluster.wait_ready(timeout_s=60.0)
        yield cluster
    finally:
        cluster.stop()
    assert all(p.poll() is not None for p in cluster.procs)


def test_bench_prints_its_table_and_json(paxoskv_cluster):
    eps = ",".join(paxoskv_cluster.endpoints)
    pids = [f"--server-pid={pid}" for pid in paxoskv_cluster.pids()]
    common = ["--endpoints", eps, "--processes", "2", "--concurrency", "4", "--keys", "200", "--timeout-s", "10", *pids]
    table = subprocess.run(
        [*BENCH, *common, "--mix", "95-5", "--duration-s", "10", "--warmup-s", "1"],
        capture_output=True, text=True, timeout=240, check=False,
    )
    assert table.returncode == 0, table.stderr
    out = table.stdout
    assert "target paxoskv (3 endpoints), mode unary, mix 95-5" in out
    header = next(line for line in out.splitlines() if line.startswith("op "))
    assert header.split() == ["op", "ops/s", "p50", "ms", "p95", "ms", "p99", "ms", "max", "ms", "errors"]
    assert any(line.startswith("total ") for line in out.splitlines())
    assert "machine:" in out
    cpu_lines = [line for line in out.splitlines() if line.startswith(("client CPU:", "server CPU:"))]
    assert [line.split(":")[0] for line in cpu_lines] == ["client CPU", "server CPU"]
    assert all(" cores, " in line and " us per op" in line for line in cpu_lines)
    assert ", ".join(map(str, paxoskv_cluster.pids())) in cpu_lines[1]

    js = subprocess.run(
        [*BENCH, *common, "--mix", "write-only", "--duration-s", "2", "--warmup-s", "0.5", "--json"],
        capture_output=True, text=True, timeout=240, check=False,
    )
    assert js.returncode == 0, js.stderr
    doc = json.loads(js.stdout)
    assert doc["target"] == "paxoskv" and doc["mode"] == "unary" and doc["mix"] == "write-only"
    assert doc["endpoints"] == paxoskv_cluster.endpoints
    assert doc["in_flight"] == 8
    assert set(doc["total"]) == {"count", "throughput_ops_s", "mean_ms", "p50_ms", "p95_ms", "p99_ms", "max_ms"}
    assert doc["total"]["count"] == sum(v["count"] for v in doc["by_op"].values())
    assert doc["error_count"] == sum(doc["errors"].values())
    assert doc["total"]["count"] + doc["error_count"] > 0  # it sent load; how much is not asserted
    assert doc["server_pids"] == paxoskv_cluster.pids()
    assert doc["server_cpu_s"] > 0 and doc["client_cpu_s"] > 0  # the nodes and the workers did work
    if doc["total"]["count"]:
        assert doc["server_cpu_us_per_op"] == pytest.approx(doc["server_cpu_s"] / doc["total"]["count"] * 1e6)
        assert doc["client_cpu_us_per_op"] == pytest.approx(doc["client_cpu_s"] / doc["total"]["count"] * 1e6)
    assert doc["machine"]["nproc"] >= 1


def test_bench_says_why_when_nothing_answers():
    port = free_port()
    res = subprocess.run(
        [*BENCH, "--endpoints", f"127.0.0.1:{port}", "--processes", "1", "--connect-timeout-s", "1", "--duration-s", "1"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert res.returncode == 1
    assert f"127.0.0.1:{port} did not answer a read before the connect timeout" in res.stderr


def test_bench_rejects_a_mode_the_target_lacks():
    res = subprocess.run(
        [*BENCH, "--target", "etcd", "--mode", "stream", "--endpoints", "127.0.0.1:1"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert res.returncode == 2
    assert "target etcd has no mode 'stream'" in res.stderr


def test_bench_takes_its_endpoints_from_paxoskv_endpoints_as_the_client_commands_do():
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PAXOSKV_BENCH_ENDPOINTS"}
    res = subprocess.run(
        [*BENCH, "--processes", "1", "--connect-timeout-s", "1", "--duration-s", "1"],
        capture_output=True, text=True, timeout=120, check=False, env={**env, "PAXOSKV_ENDPOINTS": f"127.0.0.1:{port}"},
    )  # fmt: skip
    assert res.returncode == 1, res.stderr
    assert f"127.0.0.1:{port} did not answer a read before the connect timeout" in res.stderr
    # etcd is not paxoskv: its endpoints must be given.
    res = subprocess.run(
        [*BENCH, "--target", "etcd"], capture_output=True, text=True, timeout=60, check=False,
        env={**env, "PAXOSKV_ENDPOINTS": f"127.0.0.1:{port}"},
    )  # fmt: skip
    assert res.returncode == 2 and "required for --target etcd" in res.stderr


def test_bench_counts_failed_operations_per_op_in_batch_mode(paxoskv_cluster):
    eps = ",".join(paxoskv_cluster.endpoints)
    res = subprocess.run(
        [*BENCH, "--endpoints", eps, "--mode", "batch", "--batch-size", "2", "--mix", "50-50", "--no-prefill",
         "--value-bytes", str((1 << 20) + 1), "--keys", "10", "--processes", "1", "--concurrency", "1",
         "--duration-s", "1", "--warmup-s", "0", "--json"],
        capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    # Every put is over the value limit (INVALID_ARGUMENT, per op); a batch of two such puts is
    # over --max-request-bytes + 512 KiB as well, refused whole by gRPC (RESOURCE_EXHAUSTED, both
    # ops counted); the reads around them succeed.
    errors = doc["errors"]
    assert doc["errors_by_op"]["put"] == errors["INVALID_ARGUMENT"] + errors.get("RESOURCE_EXHAUSTED", 0)
    assert errors["INVALID_ARGUMENT"] > 0 and set(errors) <= {"INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"}, errors
    assert doc["errors_by_op"]["get"] == 0 and doc["by_op"]["put"]["count"] == 0
    assert "more than the limit of 1048576" in doc["error_samples"]["INVALID_ARGUMENT"]


def test_the_etcd_target_says_at_once_when_a_server_lacks_etcds_api(tmp_path):
    """Any endpoint list: a server without etcdserverpb.KV (here the
    paxoskv.v1-only stand-in) fails the setup read with UNIMPLEMENTED, and
    the run stops with that, not after the connect timeout."""
    echo = clusters.start_echo(tmp_path / "echo", ECHO_SCRIPT, nodes=1)
    try:
        echo.wait_ready(timeout_s=60.0)
        res = subprocess.run(
            [*BENCH, "--target", "etcd", "--endpoints", echo.endpoints[0], "--processes", "1",
             "--connect-timeout-s", "600", "--duration-s", "1"],
            capture_output=True, text=True, timeout=300, check=False,
        )
    finally:
        echo.stop()
    assert res.returncode == 1
    assert f"UNIMPLEMENTED: {echo.endpoints[0]} does not serve etcdserverpb.KV" in res.stderr
    assert "Traceback" not in res.stderr
