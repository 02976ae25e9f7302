"""The Python client against servers without KV.PackedBatch (an older paxoskv).

Such a server answers UNIMPLEMENTED having applied nothing, so on a call's
first attempt the client may send the per-op form instead, and does so for
``PACKED_RETRY_AFTER_S``. After an attempt that may have been applied (UNAVAILABLE at
another node first), it must not: the per-op form would apply the writes a
second time under new sessions. Fake servers on 127.0.0.1 record the calls.
"""

from __future__ import annotations

import asyncio

import grpc

from paxoskv.client import Client
from paxoskv.client.client import ClientError, WriteResult
from paxoskv.v1 import kv_pb2, kv_pb2_grpc


class OldKV(kv_pb2_grpc.KVServicer):
    """Batch only (the generated base class answers PackedBatch UNIMPLEMENTED)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, kv_pb2.BatchRequest]] = []

    async def Batch(self, request, context):
        self.calls.append(("Batch", request))
        return kv_pb2.BatchResponse(
            results=[kv_pb2.ResponseOp(put=kv_pb2.PutResponse(header=kv_pb2.ResponseHeader(index=7))) for _ in request.ops]
        )

    def PackedBatch(self, request, context):  # what the generated servicer does, and recorded
        self.calls.append(("PackedBatch", request))
        return super().PackedBatch(request, context)


class BusyKV(OldKV):
    """Knows PackedBatch but is not the leader and names none: UNAVAILABLE."""

    async def PackedBatch(self, request, context):
        self.calls.append(("PackedBatch", request))
        await context.abort(grpc.StatusCode.UNAVAILABLE, "no leader (fake)")


async def _serve(servicer) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    kv_pb2_grpc.add_KVServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


def test_an_older_server_gets_the_per_op_form_after_one_packed_attempt() -> None:
    async def main() -> None:
        old = OldKV()
        server, ep = await _serve(old)
        try:
            async with Client([ep], timeout_s=5) as c:
                res = await c.batch([("put", "a", "1"), ("put", "b", "2")])
                assert all(isinstance(r, WriteResult) for r in res), res
                assert [name for name, _ in old.calls] == ["PackedBatch", "Batch"]
                per_op = old.calls[1][1]
                assert not per_op.HasField("request")
                assert all(op.put.request.client_id and op.put.request.sequence for op in per_op.ops)
                await c.batch([("put", "c", "3")])  # for a while: the per-op form at once
                assert [name for name, _ in old.calls] == ["PackedBatch", "Batch", "Batch"]
        finally:
            await server.stop(None)

    asyncio.run(main())


def test_no_fallback_after_an_attempt_that_may_have_been_applied() -> None:
    async def main() -> None:
        busy, old = BusyKV(), OldKV()
        s1, ep1 = await _serve(busy)
        s2, ep2 = await _serve(old)
        try:
            async with Client([ep1, ep2], timeout_s=5) as c:
                res = await c.batch([("put", "a", "1"), ("put", "b", "2")])
                assert all(isinstance(r, ClientError) and r.code == grpc.StatusCode.UNIMPLEMENTED for r in res), res
                assert [name for name, _ in busy.calls] == ["PackedBatch"]
                assert [name for name, _ in old.calls] == ["PackedBatch"]  # no per-op Batch after it
        finally:
            await s1.stop(None)
            await s2.stop(None)

    asyncio.run(main())
