"""Batch and streaming-session calls, and `paxoskv snapshot save` from a running node."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import grpc
import pytest

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


def test_a_packed_batch_is_one_identity_and_its_retry_gets_the_first_results(shared_cluster):
    ep = shared_cluster.endpoint(3)
    with grpc.insecure_channel(ep) as ch:
        kv = kv_pb2_grpc.KVStub(ch)
        ops = [kv_pb2.RequestOp(put=kv_pb2.PutRequest(key=b"pk%d" % k, value=b"v%d" % k)) for k in range(200)]
        ops.insert(100, kv_pb2.RequestOp(get=kv_pb2.GetRequest(key=b"pk7")))  # a get: not counted in the sequences
        ops.append(kv_pb2.RequestOp(put=kv_pb2.PutRequest(key=b"", value=b"x")))
        call = kv_pb2.BatchRequest(ops=ops, request=kv_pb2.RequestHeader(client_id="packed-1", sequence=1))
        first = kv.PackedBatch(call, timeout=20)
        writes = [r for i, r in enumerate(first.results) if i != 100]
        assert [r.code for r in writes[:200]] == [0] * 200
        assert len({r.put.header.index for r in writes[:200]}) == 1  # one log index for the whole batch
        assert first.results[100].get.found and first.results[100].get.value == b"v7"  # after the writes before it
        assert writes[200].code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and "key is empty" in writes[200].error
        kv.Put(kv_pb2.PutRequest(key=b"pk0", value=b"changed"), timeout=10)
        again = kv.PackedBatch(call, timeout=20)  # a retry (the answer lost, say): nothing applied again
        assert [(r.code, r.put.header.index) for r in again.results] == [(r.code, r.put.header.index) for r in first.results]
        assert kv.Get(kv_pb2.GetRequest(key=b"pk0"), timeout=5).value == b"changed"
        # The next sequences of the client continue after the batch's last one (201).
        older = kv_pb2.BatchRequest(ops=ops[:3], request=kv_pb2.RequestHeader(client_id="packed-1", sequence=150))
        assert {r.code for r in kv.PackedBatch(older, timeout=20).results} == {grpc.StatusCode.FAILED_PRECONDITION.value[0]}
        later = kv.Put(
            kv_pb2.PutRequest(request=kv_pb2.RequestHeader(client_id="packed-1", sequence=202), key=b"pk1", value=b"u"),
            timeout=10,
        )
        assert later.header.index > writes[0].put.header.index
        # Refused as a whole, nothing applied: a packed batch without a client_id,
        # a packed batch sent to KV.Batch, KV.PackedBatch without its header.
        for method, bad, why in [
            (kv.PackedBatch, kv_pb2.BatchRequest(ops=ops[:2], request=kv_pb2.RequestHeader(sequence=1)), "needs a client_id"),
            (kv.Batch, kv_pb2.BatchRequest(ops=ops[:2], request=kv_pb2.RequestHeader(client_id="x", sequence=1)), "goes to KV.PackedBatch"),
            (kv.PackedBatch, kv_pb2.BatchRequest(ops=ops[:2]), "needs `request`"),
        ]:
            try:
                method(bad, timeout=10)
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT and why in exc.details(), exc
            else:
                raise AssertionError(f"accepted: {bad}")
        assert kv.Get(kv_pb2.GetRequest(key=b"pk0"), timeout=5).value == b"changed"


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
    from snapshot_helpers import live_keys

    assert live_keys(state)[b"snap-key"] == b"snap-value"
    assert state.log_start == state.applied_index + 1


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "per-op"])
def test_the_python_client_batches_with_per_op_results_and_exactly_once_retries(cluster, packed):
    from paxoskv.client import Client
    from paxoskv.client.client import InvalidArgument, WriteResult

    async def main():
        async with Client(cluster.endpoints, timeout_s=20) as c:
            ops = [("put", f"pk{k}", f"v{k}") for k in range(100)] + [("put", "", "x"), ("get", "pk5")]
            res = await c.batch(ops, packed=packed)
            assert all(isinstance(r, WriteResult) for r in res[:100])
            assert len({r.index for r in res[:100]}) == 1
            assert isinstance(res[100], InvalidArgument)
            assert res[101].value == b"v5"
            # The leader dies; the next batch still completes on the survivors.
            cluster.kill(cluster.wait_leader())
            res = await c.batch([("delete", f"pk{k}") for k in range(50)] + [("get", "pk70")], packed=packed)
            assert [r.existed for r in res[:50]] == [True] * 50
            assert res[50].value == b"v70"
            # Sessions go on: a unary write after the batches is applied once.
            assert (await c.put("pk0", "again")).existed is False

    asyncio.run(main())
