"""etcd's ``Lease`` service on a node: LeaseGrant, LeaseRevoke,
LeaseKeepAlive (a bidirectional stream), LeaseTimeToLive, LeaseLeases.

Rules:

- Nothing here decides anything about a lease: the node layer does
  (``paxoskv.replica.lease``). This module parses, calls the node, fills
  the headers and turns an ``EtcdFailure`` into etcd's status.
- A keep-alive stream is served up to ``KEEPALIVE_WINDOW`` requests at a
  time and answered in order: the next request is read only while fewer
  than that many wait for their answer, so a client cannot make the node
  hold more per stream (each is one small message, checked as any other).
  Several in flight let one node-layer turn renew many leases (etcd serves
  one at a time, its recvLoop; a client sees the same answers in the same
  order). An unknown or expired lease is answered ``TTL: 0``, as etcd; a
  failure of the node (no leader, leader changed) ends the stream with
  etcd's status after the answers before it, as etcd's does.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc

from paxoskv.etcdpb import rpc_pb2

__all__ = ["KEEPALIVE_WINDOW", "SERVICE", "lease_handlers"]

SERVICE = "etcdserverpb.Lease"
KEEPALIVE_WINDOW = 64  # keep-alives of one stream read and not yet answered
R = rpc_pb2


class _Aborted(Exception):
    """A keep-alive's failure, held until the answers before it are sent."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(code, details)
        self.code = code
        self.details = details


class _HeldAbort:
    """The stream's context for one keep-alive of several in flight: its
    ``abort`` raises ``_Aborted`` instead of ending the call at once."""

    def __init__(self, context: grpc.aio.ServicerContext) -> None:
        self._context = context

    def __getattr__(self, name: str) -> Any:  # noqa: ANN401
        return getattr(self._context, name)

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        raise _Aborted(code, details)


def lease_handlers(facade: Any, unary: Any) -> dict[str, grpc.RpcMethodHandler]:  # noqa: ANN401
    """The Lease methods of an ``EtcdFacade`` (``unary(handler, request
    type)`` makes its unary handlers)."""
    node = facade.node

    async def call(method: str, request: object, context: Any, layer: Any) -> object:  # noqa: ANN401
        resp = await node.etcd_lease(method, request, timeout_s=facade._timeout_s(context))
        facade._fill(resp.header, layer)
        return resp

    async def grant(request: R.LeaseGrantRequest, context: Any, layer: Any) -> object:  # noqa: ANN401
        return await call("grant", request, context, layer)

    async def revoke(request: R.LeaseRevokeRequest, context: Any, layer: Any) -> object:  # noqa: ANN401
        return await call("revoke", request, context, layer)

    async def time_to_live(request: R.LeaseTimeToLiveRequest, context: Any, layer: Any) -> object:  # noqa: ANN401
        return await call("time_to_live", request, context, layer)

    async def leases(request: R.LeaseLeasesRequest, context: Any, layer: Any) -> object:  # noqa: ANN401
        resp = layer.lease.leases()
        facade._fill(resp.header, layer)
        return resp

    async def keep_alive(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[object]:
        keep_one = facade._wrap(lambda request, ctx, layer: call("keep_alive", request, ctx, layer), R.LeaseKeepAliveRequest)
        held = _HeldAbort(context)
        room = asyncio.Semaphore(KEEPALIVE_WINDOW)
        answers: asyncio.Queue[asyncio.Future | None] = asyncio.Queue()  # at most KEEPALIVE_WINDOW + 1

        async def read() -> None:
            try:
                while True:
                    await room.acquire()
                    data = await anext(requests, None)
                    if data is None:
                        return
                    answers.put_nowait(asyncio.ensure_future(keep_one(data, held)))
            finally:
                answers.put_nowait(None)

        reader = asyncio.ensure_future(read())
        try:
            while (answer := await answers.get()) is not None:
                try:
                    resp = await answer
                except _Aborted as exc:
                    await context.abort(exc.code, exc.details)  # after the answers before it, as etcd's
                yield resp
                room.release()
            await reader  # the reader's own failure, if any (the client's stream broke)
        finally:
            reader.cancel()
            while not answers.empty():
                pending = answers.get_nowait()
                if pending is not None:
                    pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    return {
        "LeaseGrant": unary(grant, R.LeaseGrantRequest),
        "LeaseRevoke": unary(revoke, R.LeaseRevokeRequest),
        "LeaseTimeToLive": unary(time_to_live, R.LeaseTimeToLiveRequest),
        "LeaseLeases": unary(leases, R.LeaseLeasesRequest),
        "LeaseKeepAlive": grpc.stream_stream_rpc_method_handler(keep_alive, None, _serialize),
    }


def _serialize(msg: Any) -> bytes:  # noqa: ANN401
    return msg.SerializeToString()
