"""``paxoskv bench --target etcd`` against a real 3-member etcd (Debian's etcd-server).

etcd is installed with apt-get when missing and this runs as root; where it
cannot be installed the test is skipped and says why.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import grpc
import pytest

import clusters  # bench/clusters.py (setup.cfg puts bench/ on sys.path)
from paxoskv.bench.workload import key_name

BENCH = [sys.executable, "-c", "from paxoskv.cli import main; main()", "bench"]


def _ensure_etcd() -> str:
    if shutil.which("etcd"):
        return shutil.which("etcd")  # type: ignore[return-value]
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("etcd is not installed and cannot be installed here (needs root and apt-get): "
                    "apt-get install etcd-server")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "etcd-server"]
    res = subprocess.run(install, capture_output=True, text=True, env=env, timeout=600, check=False)
    if res.returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, env=env, timeout=600, check=False)
        res = subprocess.run(install, capture_output=True, text=True, env=env, timeout=600, check=False)
    if res.returncode != 0 or not shutil.which("etcd"):
        pytest.skip(f"apt-get could not install etcd-server: {res.stderr.strip()[-300:]}")
    return shutil.which("etcd")  # type: ignore[return-value]


@pytest.fixture(scope="module")
def etcd_cluster(tmp_path_factory):
    _ensure_etcd()
    cluster = clusters.start_etcd(tmp_path_factory.mktemp("etcd"))
    try:
        cluster.wait_ready(timeout_s=60.0)
        yield cluster
    finally:
        cluster.stop()
    assert all(p.poll() is not None for p in cluster.procs)


def test_etcd_target_reads_and_writes_through_etcds_kv_api(etcd_cluster):
    eps = ",".join(etcd_cluster.endpoints)
    res = subprocess.run(
        [*BENCH, "--target", "etcd", "--endpoints", eps, "--mix", "50-50", "--keys", "50", "--value-bytes", "33",
         "--processes", "1", "--concurrency", "4", "--duration-s", "2", "--warmup-s", "0.5", "--json"],
        capture_output=True, text=True, timeout=180, check=False,
    )
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["target"] == "etcd"
    assert set(doc["by_op"]) == {"get", "put"}
    assert doc["errors"] == {}
    # The pre-fill and the puts really went to etcd: every key holds a 33-byte value.
    from paxoskv.etcdpb import rpc_pb2, rpc_pb2_grpc

    with grpc.insecure_channel(etcd_cluster.endpoints[1]) as ch:
        kv = rpc_pb2_grpc.KVStub(ch)
        for i in (0, 17, 49):
            got = kv.Range(rpc_pb2.RangeRequest(key=key_name(i)), timeout=5)
            assert len(got.kvs) == 1 and len(got.kvs[0].value) == 33
            assert got.header.revision > 0


def test_etcd_serializable_reads(etcd_cluster):
    res = subprocess.run(
        [*BENCH, "--target", "etcd", "--endpoints", etcd_cluster.endpoints[0], "--mix", "read-only", "--serializable",
         "--keys", "10", "--processes", "1", "--concurrency", "2", "--duration-s", "1", "--warmup-s", "0", "--json"],
        capture_output=True, text=True, timeout=180, check=False,
    )
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["serializable"] is True and set(doc["by_op"]) == {"get"} and doc["errors"] == {}
