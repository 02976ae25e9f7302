"""etcd's ``Lease`` service on a node: LeaseGrant, LeaseRevoke,
LeaseKeepAlive (a bidirectional stream), LeaseTimeToLive, LeaseLeases.

Rules:

- Nothing here decides anything about a lease: the node layer does
  (``paxoskv.replica.lease``). This module parses, calls the node, fills
  the headers and turns an ``EtcdFailure`` into etcd's status.
- A keep-alive stream is served one request at a time, in order (etcd's
  recvLoop): gRPC reads the next request only after the previous one was
  answered, so a client cannot make the node hold more than one keep-alive
  per stream. An unknown or expired lease is answered ``TTL: 0``, as etcd;
  a failure of the node (no leader, leader changed) ends the stream with
  etcd's status, as etcd's does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from paxoskv.etcdpb import rpc_pb2

__all__ = ["SERVICE", "lease_handlers"]

SERVICE = "etcdserverpb.Lease"
R = rpc_pb2


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
        async for data in requests:
            yield await keep_one(data, context)  # a failure aborts the call with etcd's status

    return {
        "LeaseGrant": unary(grant, R.LeaseGrantRequest),
        "LeaseRevoke": unary(revoke, R.LeaseRevokeRequest),
        "LeaseTimeToLive": unary(time_to_live, R.LeaseTimeToLiveRequest),
        "LeaseLeases": unary(leases, R.LeaseLeasesRequest),
        "LeaseKeepAlive": grpc.stream_stream_rpc_method_handler(keep_alive, None, _serialize),
    }


def _serialize(msg: Any) -> bytes:  # noqa: ANN401
    return msg.SerializeToString()
