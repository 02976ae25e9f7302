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
from paxoskv.bench.targets import TARGETS, method_paths
from paxoskv.bench.workload import Workload, key_name

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


def _txn_call(endpoint: str, body: bytes):
    from paxoskv.etcdpb import rpc_pb2

    with grpc.insecure_channel(endpoint) as ch:
        raw = ch.unary_unary(method_paths(rpc_pb2, "KV")["Txn"])(body, timeout=10)
    return rpc_pb2.TxnResponse.FromString(raw)


@pytest.mark.parametrize("n", [10, 100])
def test_the_generators_txn_is_one_revision_of_n_puts(etcd_cluster, n):
    """The batch peer: the generator's own Txn bytes, sent raw, are accepted
    by etcd 3.4 and apply N puts at one revision."""
    from paxoskv.etcdpb import rpc_pb2, rpc_pb2_grpc

    value = os.urandom(40)
    codec = TARGETS["etcd"].codec(Workload(keys=5000), value)
    keys = list(range(1000 + n, 1000 + 2 * n))  # not touched by the other tests
    ep = etcd_cluster.endpoints[0]
    with grpc.insecure_channel(etcd_cluster.endpoints[2]) as ch:
        kv = rpc_pb2_grpc.KVStub(ch)
        before = kv.Range(rpc_pb2.RangeRequest(key=b"nothing"), timeout=5).header.revision
        resp = _txn_call(ep, codec.txn([(False, i) for i in keys]))
        assert resp.succeeded and len(resp.responses) == n
        assert resp.header.revision == before + 1
        for i in keys:
            got = kv.Range(rpc_pb2.RangeRequest(key=key_name(i)), timeout=5)
            assert len(got.kvs) == 1
            assert got.kvs[0].value == value and got.kvs[0].mod_revision == before + 1


def test_etcd_refuses_a_txn_beyond_its_default_ops_limit(etcd_cluster):
    """Why the 1000-op batch is paxoskv's alone: --max-txn-ops is 128."""
    codec = TARGETS["etcd"].codec(Workload(keys=5000), b"v")
    with pytest.raises(grpc.RpcError) as info:
        _txn_call(etcd_cluster.endpoints[0], codec.txn([(False, i) for i in range(129)]))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "etcdserver: too many operations in txn request"


def test_etcd_batch_mode_is_txns_with_server_cpu_per_op(etcd_cluster):
    args = [f"--server-pid={pid}" for pid in etcd_cluster.pids()]
    res = subprocess.run(
        [*BENCH, "--target", "etcd", "--endpoints", ",".join(etcd_cluster.endpoints), "--mode", "batch",
         "--batch-size", "10", "--keys", "500", "--processes", "1", "--concurrency", "2", "--duration-s", "2",
         "--warmup-s", "0.5", "--json", *args],
        capture_output=True, text=True, timeout=180, check=False,
    )
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["mode"] == "batch" and doc["batch_size"] == 10 and doc["errors"] == {}
    count = doc["by_op"]["put"]["count"]
    assert count > 0 and count % 10 == 0  # whole Txns only
    assert doc["server_pids"] == etcd_cluster.pids()
    assert doc["server_cpu_us_per_op"] == pytest.approx(doc["server_cpu_s"] / count * 1e6)
    assert doc["server_cpu_s"] > 0 and doc["client_cpu_s"] > 0
