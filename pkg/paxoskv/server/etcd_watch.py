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
- At most ``WRITES_IN_FLIGHT_MAX`` watch writes in flight on a node, across
  all its streams (``WriteGate``), granted in the order asked; a write
  still in flight after ``SLOT_HOLD_S_MAX`` (its reader stopped reading)
  gives its slot back within twice that, so it holds up the other streams
  that long at most.

Theory of operation (the gate). The node's event loop runs consensus,
the unary calls and every watch stream. A grpc.aio streamed write costs
about 40 us of the loop's CPU (start, then the task woken again by grpc's
poller when it completes); one put given to 1,000 watches is ~330 writes
per member, and with one task per stream every stream started a write in
each loop turn: every step of a put (its request, the bus, the fsync
hand-off, the peers' answers, the reply) waited behind a turn of one
write per stream, and a put that landed in a fan-out behind many such
turns. With the gate a stream with output takes its next response only
once it holds one of ``WRITES_IN_FLIGHT_MAX`` slots; a finished write
hands its slot to the stream that has waited longest (FIFO: no stream
starves), whose task runs in a later turn. So a loop turn starts at most
``WRITES_IN_FLIGHT_MAX`` writes, and whatever consensus scheduled runs
between those chunks. Responses that wait meanwhile stay in the hub's
outbox, where a watch's next events join its waiting response (the hub's
coalescing): the longer the fan-out waits, the fewer writes it takes.
The CPU per event is unchanged (the writes are what they were); what
changes is where the consensus path queues (docs/benchmarks.md, the
watch-gate section: writer p99 with 1,000 watchers 0.5x of main's).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import grpc

from paxoskv.etcdpb import rpc_pb2
from paxoskv.replica.errors import EtcdFailure
from paxoskv.replica.watch import EventsResponse

__all__ = ["WRITES_IN_FLIGHT_MAX", "WatchService", "WriteGate"]

WRITES_IN_FLIGHT_MAX = 8  # watch writes in flight on one node (see the gate)
SLOT_HOLD_S_MAX = 0.05  # a write not done by then (a slow reader: flow control) gives its slot back


class WriteGate:
    """At most ``in_flight_max`` slots held at once, granted in the order
    asked; a slot given back goes to the oldest waiter (who runs in a later
    loop turn). A slot held longer than ``hold_s_max`` is given back within
    twice that (one watchdog timer for the gate, none per write), so a
    reader that stopped reading holds up the others that long at most.
    One per node, shared by its Watch streams; on one event loop."""

    def __init__(self, in_flight_max: int = WRITES_IN_FLIGHT_MAX, hold_s_max: float = SLOT_HOLD_S_MAX) -> None:
        if in_flight_max < 1 or hold_s_max <= 0:
            raise ValueError(f"in_flight_max must be >= 1 and hold_s_max > 0: {in_flight_max}, {hold_s_max}")
        self.in_flight_max = in_flight_max
        self.hold_s_max = hold_s_max
        self.in_flight = 0
        self.expired = 0  # slots the watchdog took back
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._held: dict[int, int] = {}  # ticket -> the watchdog's epoch when granted
        self._next_ticket = 0
        self._epoch = 0
        self._watchdog: asyncio.TimerHandle | None = None

    @property
    def waiting(self) -> int:
        return sum(1 for f in self._waiting if not f.done())

    async def acquire(self) -> int:
        """A slot, as a ticket to give back with ``release``."""
        if self.in_flight < self.in_flight_max and not self._waiting:
            self.in_flight += 1
        else:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiting.append(fut)
            try:
                await fut
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled():
                    self._pass_on()  # granted as it was cancelled: the slot goes on
                else:
                    with contextlib.suppress(ValueError):  # a hand-over may have dropped it already
                        self._waiting.remove(fut)
                raise
        ticket = self._next_ticket
        self._next_ticket = ticket + 1
        self._held[ticket] = self._epoch
        if self._watchdog is None:
            self._watchdog = asyncio.get_running_loop().call_later(self.hold_s_max, self._expire)
        return ticket

    def release(self, ticket: int) -> None:
        """Give the slot back (again, or after the watchdog took it: nothing)."""
        if self._held.pop(ticket, None) is not None:
            self._pass_on()

    def _expire(self) -> None:
        """The watchdog: slots granted before its previous run go back."""
        self._watchdog = None
        epoch = self._epoch
        self._epoch = epoch + 1
        for ticket in [t for t, e in self._held.items() if e < epoch]:
            self.expired += 1
            self.release(ticket)
        if self._held:
            self._watchdog = asyncio.get_running_loop().call_later(self.hold_s_max, self._expire)

    def _pass_on(self) -> None:
        """A slot was given back: to the oldest waiter, else free."""
        while self._waiting:
            fut = self._waiting.popleft()
            if not fut.done():
                fut.set_result(None)  # the slot changes hands: in_flight stays
                return
        self.in_flight -= 1


class WatchService:
    """The Watch service of one node; ``fill(header, layer)`` fills a
    header as the facade does (``EtcdFacade._fill`` without the revision)."""

    def __init__(self, node: Any, fill: Any, parse: Any, wants_leader: Any,  # noqa: ANN401
                 gate: WriteGate | None = None) -> None:
        self.node = node
        self.gate = gate or WriteGate()
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
        gate = self.gate
        try:
            while True:
                output.clear()
                resp = None
                if stream.has_output:
                    # The slot first, then the response: while this stream waits
                    # its turn, its responses stay in the outbox and coalesce.
                    ticket = await gate.acquire()
                    try:
                        resp = hub.take_wire(stream)
                        if resp is not None:
                            if isinstance(resp, EventsResponse):
                                data = resp.encode(head.of(resp.revision))
                            else:
                                self._fill(resp.header, layer)
                                data = resp.SerializeToString()
                            await context.write(data)
                    finally:
                        gate.release(ticket)
                if resp is None:
                    failure = stream.failed or _failure_of(reader)
                    if failure is not None:
                        await context.abort(grpc.StatusCode[failure.code], failure.message)
                        return
                    await output.wait()
                    continue
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
