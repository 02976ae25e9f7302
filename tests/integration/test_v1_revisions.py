"""Revisions in paxoskv.v1's answers against a real three-node cluster: a
v1 write's revision is the mod_revision etcd's API shows for the key, a
Get's the revision it read at, a batch's ops carry theirs, and the CLI's
``put --json`` / ``delete --json`` print them."""

from __future__ import annotations

import json

import grpc

from integration_cluster import LocalCluster
from paxoskv.client import GetResult, WriteResult
from paxoskv.etcdpb import rpc_pb2, rpc_pb2_grpc
from test_cli_commands import cli


def _etcd_range(endpoint: str, key: bytes) -> rpc_pb2.RangeResponse:
    with grpc.insecure_channel(endpoint) as ch:
        return rpc_pb2_grpc.KVStub(ch).Range(rpc_pb2.RangeRequest(key=key), timeout=10)


def test_v1_answers_carry_the_revisions_etcds_api_shows(shared_cluster: LocalCluster) -> None:
    ep1, ep2 = shared_cluster.endpoint(1), shared_cluster.endpoint(2)
    with shared_cluster.client() as c:
        put = c.put("rev/a", "1")
        seen = _etcd_range(ep2, b"rev/a")
        assert put.revision > 1 and seen.kvs[0].mod_revision == put.revision
        assert seen.kvs[0].create_revision == put.revision and seen.header.revision >= put.revision

        read = c.read("rev/a", endpoint=ep1)
        assert read.value == b"1" and read.revision >= put.revision

        again = c.put("rev/a", "2")
        assert again.revision > put.revision == _etcd_range(ep1, b"rev/a").kvs[0].create_revision
        assert _etcd_range(ep1, b"rev/a").kvs[0].mod_revision == again.revision

        nothing = c.delete("rev/never-there")
        assert not nothing.existed and again.revision <= nothing.revision == c.read("rev/a").revision

        # one call's writes share one revision; its get (after them) reads at it or later
        results = c.batch([("put", "rev/b", "x"), ("put", "rev/c", "y"), ("get", "rev/b")])
        wb, wc, got = results
        assert isinstance(wb, WriteResult) and isinstance(wc, WriteResult) and isinstance(got, GetResult)
        assert wb.revision == wc.revision > again.revision and got.value == b"x" and got.revision >= wb.revision
        assert {_etcd_range(ep2, k).kvs[0].mod_revision for k in (b"rev/b", b"rev/c")} == {wb.revision}
        per_op = c.batch([("put", "rev/d", "z"), ("delete", "rev/b")], packed=False)
        assert per_op[0].revision == per_op[1].revision > wb.revision and per_op[1].existed
        assert _etcd_range(ep1, b"rev/d").kvs[0].mod_revision == per_op[0].revision


def test_cli_put_and_delete_print_their_revisions_as_json(shared_cluster: LocalCluster) -> None:
    env = {"PAXOSKV_ENDPOINTS": ",".join(shared_cluster.endpoints)}
    p = cli("put", "--json", "revcli/k", "v", env=env)
    assert p.returncode == 0, p.stderr
    put = json.loads(p.stdout)
    assert put["existed"] is False and put["revision"] == _etcd_range(shared_cluster.endpoint(1), b"revcli/k").kvs[0].mod_revision
    p = cli("get", "--json", "revcli/k", env=env)
    assert json.loads(p.stdout)["kvs"][0]["mod_revision"] == put["revision"]
    p = cli("delete", "--json", "revcli/k", env=env)
    deleted = json.loads(p.stdout)
    assert deleted == {"deleted": True, "revision": deleted["revision"]} and deleted["revision"] > put["revision"]
    p = cli("delete", "--json", "revcli/k", env=env)
    assert json.loads(p.stdout) == {"deleted": False, "revision": deleted["revision"]}
    assert cli("put", "revcli/k", "v", env=env).stdout == "OK\n"  # without --json: as before
