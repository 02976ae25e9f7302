"""A real 3-node cluster on the data directories a paxoskv before revisions
wrote (tests/unit/data/format3-cluster.tar.gz): every member migrates them
to the same revision-2 history on start, and both APIs serve them."""

from __future__ import annotations

import json
import pathlib
import tarfile

import grpc

from integration_cluster import LocalCluster
from paxoskv.etcdpb import rpc_pb2, rpc_pb2_grpc
from paxoskv.v1 import kv_pb2, kv_pb2_grpc

DATA = pathlib.Path(__file__).resolve().parents[1] / "unit" / "data"


def test_a_format_3_cluster_starts_migrated_and_serves_both_apis(tmp_path) -> None:
    expected = json.loads((DATA / "format3-cluster.json").read_text())
    kv = {bytes.fromhex(k): bytes.fromhex(v) for k, v in expected["keys_hex"].items()}
    root = tmp_path / "cluster"
    root.mkdir()
    with tarfile.open(DATA / "format3-cluster.tar.gz") as tar:
        tar.extractall(root, filter="data")
    c = LocalCluster(root, cluster_id=expected["cluster_id"], heartbeat_ms=50, election_ms=1000)
    try:
        c.start_all()
        hashes = set()
        for node in c.nodes:
            with grpc.insecure_channel(c.endpoint(node)) as ch:
                r = rpc_pb2_grpc.KVStub(ch).Range(
                    rpc_pb2.RangeRequest(key=b"\x00", range_end=b"\x00", revision=2), timeout=10
                )
                assert {x.key: x.value for x in r.kvs} == kv
                assert {(x.create_revision, x.mod_revision, x.version) for x in r.kvs} == {(2, 2, 1)}
                got = kv_pb2_grpc.KVStub(ch).Get(kv_pb2.GetRequest(key=b"key05"), timeout=10)
                assert got.found and got.value == kv[b"key05"]
                hashes.add(rpc_pb2_grpc.MaintenanceStub(ch).HashKV(rpc_pb2.HashKVRequest(), timeout=10).hash)
        assert len(hashes) == 1
        with grpc.insecure_channel(c.endpoint(1)) as ch:
            put = rpc_pb2_grpc.KVStub(ch).Put(rpc_pb2.PutRequest(key=b"key05", value=b"new", prev_kv=True), timeout=10)
        assert put.header.revision == 3 and put.prev_kv.value == kv[b"key05"]
    finally:
        c.close()
