"""etcd's ``Watch.Watch`` on asyncio: moves requests into the node layer's
watch hub (``paxoskv.replica.watch``) and its responses out to gRPC.

Rules:

- Nothing here decides which event goes where: the hub does. This module
  parses each request (etcd's gRPC size limit first), hands it to the hub,
  and writes the stream's responses in order, filling the header's cluster
  id, member id and raft term (the revision is the hub's).
- One write in flight per stream: the next response is taken only after
  the previous one was written, so a slow reader leaves its responses in
  the hub's bounded outbox, whose watchers then turn unsynced; no request
  is read while the stream's outbox is over its bound.
- Bytes on the wire: an events response leaves the hub encoded (its
  events' bytes shared by every watch given them) and is written as bytes
  with this stream's header bytes (built once per revision and term); a
  control response is a message, filled and serialized here.
- ``hasleader: true``: refused with ``etcdserver: no leader`` at open when
  this member knows no leader, and ended with it when the hub fails the
  stream (no leader for 3 election timeouts).
- A request that does not parse ends the stream with INVALID_ARGUMENT;
  the client closing its side ends nothing (etcd: the server keeps sending
  until the call is cancelled).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc

from paxoskv.etcdpb import rpc_pb2
from paxoskv.replica.errors import EtcdFailure
from paxoskv.replica.watch import EventsResponse

__all__ = ["WatchService"]


class WatchService:
    """The Watch service of one node; ``fill(header, layer)`` fills a
    header as the facade does (``EtcdFacade._fill`` without the revision)."""

    def __init__(self, node: Any, fill: Any, parse: Any, wants_leader: Any) -> None:  # noqa: ANN401
        self.node = node
        self._fill = fill
        self._parse = parse
        self._wants_leader = wants_leader

    def handler(self) -> grpc.RpcMethodHandler:
        return grpc.stream_stream_rpc_method_handler(self.watch, None, None)  # responses are written as bytes

    async def watch(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> None:
        try:
            layer = self.node.etcd_layer()
            strict = self._wants_leader(context)
            if strict:
                refused = layer.etcd.require_leader()
                if refused is not None:
                    raise refused
        except EtcdFailure as exc:
            await context.abort(grpc.StatusCode[exc.code], exc.message)
            return
        hub = layer.watches
        stream = hub.open(require_leader=strict)
        output = asyncio.Event()
        room = asyncio.Event()
        stream.on_output = output.set
        reader = asyncio.create_task(self._read(requests, layer, stream, output, room))
        head = _Heads(self._fill, layer)
        try:
            while True:
                output.clear()
                resp = hub.take_wire(stream)
                if resp is None:
                    failure = stream.failed or _failure_of(reader)
                    if failure is not None:
                        await context.abort(grpc.StatusCode[failure.code], failure.message)
                        return
                    await output.wait()
                    continue
                if isinstance(resp, EventsResponse):
                    data = resp.encode(head.of(resp.revision))
                else:
                    self._fill(resp.header, layer)
                    data = resp.SerializeToString()
                await context.write(data)
                room.set()
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            hub.close(stream)

    async def _read(self, requests: AsyncIterator[bytes], layer: Any, stream: Any,  # noqa: ANN401
                    output: asyncio.Event, room: asyncio.Event) -> None:
        hub = layer.watches
        try:
            async for data in requests:
                too_big = layer.etcd.check_message_bytes(len(data))
                if too_big is not None:
                    raise too_big
                req = self._parse(rpc_pb2.WatchRequest, data)
                while not stream.has_room and not stream.closed:
                    room.clear()
                    await room.wait()
                hub.request(stream, req)
        finally:
            output.set()  # the writer looks at how the reading ended


class _Heads:
    """The header's bytes for a revision, filled as ``fill`` fills a header;
    the last one is kept (a stream's watches share a revision's header)."""

    def __init__(self, fill: Any, layer: Any) -> None:  # noqa: ANN401
        self._fill = fill
        self._layer = layer
        self._key: tuple[int, int] | None = None
        self._bytes = b""

    def of(self, revision: int) -> bytes:
        key = (revision, self._layer.etcd.raft_term)
        if key != self._key:
            h = rpc_pb2.ResponseHeader(revision=revision)
            self._fill(h, self._layer)
            self._key = key
            self._bytes = h.SerializeToString()
        return self._bytes


def _failure_of(reader: asyncio.Task) -> EtcdFailure | None:
    """Why the requests stopped: an EtcdFailure to end the stream with, or
    None (still reading, or the client closed its side)."""
    if not reader.done() or reader.cancelled():
        return None
    exc = reader.exception()
    if exc is None:
        return None
    if isinstance(exc, EtcdFailure):
        return exc
    if isinstance(exc, grpc.aio.AioRpcError | grpc.RpcError):
        return None  # the call itself went away; the handler is cancelled next
    return EtcdFailure("INTERNAL", f"watch stream failed: {exc}")
