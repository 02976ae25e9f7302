"""Batch and streaming-session calls, and `paxoskv snapshot save` from a running node."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import grpc

from paxoskv.v1 import kv_pb2, kv_pb2_grpc


def put_op(cid: str, seq: int, key: bytes, value: bytes) -> kv_pb2.RequestOp:
    return kv_pb2.RequestOp(
        put=kv_pb2.PutRequest(request=kv_pb2.RequestHeader(client_id=cid, sequence=seq), key=key, value=value)
    )


def test_a_batch_answers_each_op_and_a_retried_batch_applies_nothing_twice(shared_cluster):
    ep = shared_cluster.endpoint(2)
    with grpc.insecure_channel(ep) as ch:
        kv = kv_pb2_grpc.KVStub(ch)
        ops = [put_op(f"b{k}", 1, b"bk%d" % k, b"v%d" % k) for k in range(200)]
        ops.append(put_op("bad", 1, b"", b"x"))
        ops.append(kv_pb2.RequestOp(get=kv_pb2.GetRequest(key=b"bk7")))
        first = kv.Batch(kv_pb2.BatchRequest(ops=ops), timeout=20)
        assert [r.code for r in first.results[:200]] == [0] * 200
        assert first.results[200].code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert "key" in first.results[200].error
        again = kv.Batch(kv_pb2.BatchRequest(ops=ops[:200]), timeout=20)
        assert [r.put.header.index for r in again.results] == [r.put.header.index for r in first.results[:200]]
        got = kv.Get(kv_pb2.GetRequest(key=b"bk199"), timeout=5)
        assert got.found and got.value == b"v199"


def test_a_session_streams_answers_paired_by_id(shared_cluster):
    async def main():
        async with grpc.aio.insecure_channel(shared_cluster.endpoint(3)) as ch:
            kv = kv_pb2_grpc.KVStub(ch)

            async def requests():
                for k in range(300):
                    yield kv_pb2.SessionRequest(id=k + 1, op=put_op(f"s{k}", 1, b"sk%d" % (k % 10), b"%d" % k))
                yield kv_pb2.SessionRequest(id=1000, op=kv_pb2.RequestOp(get=kv_pb2.GetRequest(key=b"sk3")))

            answers = {}
            async for resp in kv.Session(requests(), timeout=30):
                answers[resp.id] = resp.result
            assert sorted(answers) == list(range(1, 301)) + [1000]
            assert all(answers[i].code == 0 for i in range(1, 301))
            assert answers[1000].get.found

    asyncio.run(main())


def test_snapshot_save_from_a_running_node_restores_into_a_new_data_dir(shared_cluster, tmp_path):
    c = shared_cluster.client()
    c.put(b"snap-key", b"snap-value")
    out = tmp_path / "backup.snap"
    paxoskv = [sys.executable, "-m", "paxoskv.cli"]
    r = subprocess.run([*paxoskv, "snapshot", "save", str(out), "--endpoints", shared_cluster.endpoint(1)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([*paxoskv, "snapshot", "status", str(out), "--json"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([*paxoskv, "snapshot", "restore", str(out), "--data-dir", str(tmp_path / "new"), "--id", "1"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    from paxoskv.storage.leveldb import LevelDBStorage

    with LevelDBStorage.open(str(tmp_path / "new"), 1, shared_cluster.cluster_id, create=False) as st:
        state = st.load()
    assert state.kv[b"snap-key"] == b"snap-value"
    assert state.log_start == state.applied_index + 1


def test_the_python_client_batches_with_per_op_results_and_exactly_once_retries(cluster):
    from paxoskv.client import Client
    from paxoskv.client.client import InvalidArgument, WriteResult

    async def main():
        async with Client(cluster.endpoints, timeout_s=20) as c:
            ops = [("put", f"pk{k}", f"v{k}") for k in range(100)] + [("put", "", "x"), ("get", "pk5")]
            res = await c.batch(ops)
            assert all(isinstance(r, WriteResult) for r in res[:100])
            assert isinstance(res[100], InvalidArgument)
            assert res[101].value == b"v5"
            # The leader dies; the next batch still completes on the survivors.
            cluster.kill(cluster.wait_leader())
            res = await c.batch([("delete", f"pk{k}") for k in range(50)] + [("get", "pk70")])
            assert [r.existed for r in res[:50]] == [True] * 50
            assert res[50].value == b"v70"

    asyncio.run(main())
