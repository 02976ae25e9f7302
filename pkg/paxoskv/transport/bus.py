"""The peer bus: core messages between nodes over ZeroMQ ROUTER/DEALER.

Rules
-----
* Each node binds one ROUTER socket (everything addressed to it arrives
  there) and holds one DEALER per peer, connected to that peer's ROUTER, with
  routing identity ``str(node_id).encode()``.  Traffic is one-way per socket:
  a node sends only on its DEALERs and receives only on its ROUTER.
* One ZeroMQ message is one encoded ``Envelope`` (:mod:`paxoskv.paxos.codec`),
  a single frame; the ROUTER prepends the sender's identity frame on receipt.
* Sending never blocks and never awaits.  When a peer's queue is full
  (``SNDHWM`` = ``send_queue_max`` messages) or the peer has no completed
  connection, :meth:`PeerBus.send` drops the message, counts it and returns
  False.  Paxos retransmits, so a dropped message costs latency, never
  safety; a queued stale one costs memory and bandwidth when the peer comes
  back.  Hence ``IMMEDIATE=1``: nothing is queued for a peer we are not
  connected to, and a connection that dies takes its queue with it.  Memory
  per peer is bounded by ``send_queue_max`` messages on the way out and
  ``send_queue_max`` on the way in (``RCVHWM``) plus kernel buffers (a bound
  in messages, not bytes: each is at most ``frame_bytes_max``).
* Every received frame is validated and, if bad, counted in :attr:`PeerBus.stats`
  under a :class:`DropReason`, logged at most once per peer per
  ``drop_log_interval_s`` (by the injected clock) and dropped; the bus keeps
  working.  Bad means: not two frames or not decodable (MALFORMED), larger
  than ``frame_bytes_max`` (OVERSIZED; libzmq itself cuts the connection of a
  peer sending frames over ``2 * frame_bytes_max``: ``MAXMSGSIZE``), another
  cluster's id (FOREIGN_CLUSTER), a sender not among our peers
  (UNKNOWN_SENDER), addressed to another node (WRONG_DESTINATION), or an
  identity frame that is not the sender's own (IDENTITY_MISMATCH: a node
  claiming to be another).
* Connections and reconnections are libzmq's job: a DEALER retries every
  ``RECONNECT_IVL`` (50 ms, backing off to 1 s), so a restarted peer is
  reached again without anyone's help; ``ROUTER_HANDOVER`` lets the restarted
  peer's new connection take its identity over from a half-dead old one.
  ZMTP heartbeats (1 s, timeout 3 s) notice a peer that stopped answering
  (SIGSTOP, a cut cable) far sooner than TCP would; TCP keepalive is on too
  for the middleboxes.
* The bus trusts its network: identities are not authenticated (ZeroMQ
  CURVE would be the step beyond), so the checks above catch mistakes and
  misconfiguration (a node of another cluster, a wrong peer table), not an
  attacker.

Theory of operation
-------------------
The ROUTER is a ``zmq.asyncio`` socket, used only to *wait* for input.
:meth:`PeerBus.recv_batch` awaits readability once, then drains everything
already queued through a plain synchronous shadow of the same socket
(``recv(NOBLOCK)`` frame by frame until ``zmq.Again``; the payload frame is
decoded from a zero-copy view), so a burst of ten thousand messages costs one
await, not ten thousand.  The DEALERs are plain synchronous sockets:
``send(NOBLOCK)`` either hands the frame to libzmq's I/O thread or raises
``zmq.Again`` at once; while a peer refuses, later sends ask the socket
(``EVENTS``) first and drop without encoding.  Nothing here is thread-safe: one
event loop owns the bus, and one task at a time may call ``recv_batch``.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import zmq
import zmq.asyncio

from paxoskv.paxos.codec import CodecError, decode, encode
from paxoskv.paxos.types import Message

__all__ = ["BusClosed", "BusStats", "DropReason", "PeerBus", "PeerStatus"]

log = logging.getLogger(__name__)

RECONNECT_IVL_MS = 50
RECONNECT_IVL_MAX_MS = 1000
CONNECT_TIMEOUT_MS = 1000  # a SYN into a black hole must not stall reconnects for minutes
HANDSHAKE_IVL_MS = 5000
HEARTBEAT_IVL_MS = 1000
HEARTBEAT_TIMEOUT_MS = 3000
TCP_KEEPALIVE_IDLE_S = 10
TCP_KEEPALIVE_INTVL_S = 5
TCP_KEEPALIVE_CNT = 3
DEALER_INBOUND_BYTES_MAX = 4096  # nothing legitimate ever arrives on a DEALER
ZERO_COPY_BYTES_MIN = 64 << 10  # below this libzmq copies anyway
# Plain ints skip pyzmq's enum conversions on the hot path.
_NOBLOCK = int(zmq.NOBLOCK)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_EVENTS = int(zmq.EVENTS)
_POLLOUT = int(zmq.POLLOUT)


class BusClosed(Exception):
    """The bus was closed (possibly while a ``recv_batch`` was waiting)."""


class DropReason(enum.Enum):
    """Why a received frame was dropped."""

    MALFORMED = "malformed"
    OVERSIZED = "oversized"
    FOREIGN_CLUSTER = "foreign_cluster"
    UNKNOWN_SENDER = "unknown_sender"
    WRONG_DESTINATION = "wrong_destination"
    IDENTITY_MISMATCH = "identity_mismatch"


@dataclass(slots=True)
class BusStats:
    """Counters of one bus; they only grow."""

    sent: int = 0  # handed to libzmq for a peer
    send_dropped: int = 0  # peer queue full, no connection, or bus closed
    send_oversized: int = 0  # encoded larger than frame_bytes_max: never sent
    received: int = 0  # valid messages returned by recv_batch
    dropped: dict[DropReason, int] = field(default_factory=lambda: dict.fromkeys(DropReason, 0))

    def as_dict(self) -> dict[str, int]:
        out = {
            "sent": self.sent,
            "send_dropped": self.send_dropped,
            "send_oversized": self.send_oversized,
            "received": self.received,
        }
        for reason, n in self.dropped.items():
            out[f"dropped_{reason.value}"] = n
        return out


@dataclass(frozen=True, slots=True)
class PeerStatus:
    """A snapshot of what the bus knows about one peer."""

    node_id: int
    address: tuple[str, int]
    last_recv_s: float | None  # clock() when a valid message last came from it
    writable: bool  # connected, and its send queue has room
    received: int
    sent: int
    send_dropped: int


@dataclass(slots=True)
class _Peer:
    node_id: int
    address: tuple[str, int]
    identity: bytes
    sock: zmq.Socket | None = None
    last_recv_s: float | None = None
    received: int = 0
    sent: int = 0
    send_dropped: int = 0
    refusing: bool = False  # the last send to it raised zmq.Again


@dataclass(slots=True)
class _LogSlot:
    last_s: float
    suppressed: int = 0


class _RateLimitedLog:
    """At most one warning per key per interval; says how many it held back."""

    def __init__(self, clock: Callable[[], float], interval_s: float) -> None:
        self._clock = clock
        self._interval_s = interval_s
        self._slots: dict[object, _LogSlot] = {}  # keys: peer ids and one "unknown": bounded

    def warn(self, key: object, fmt: str, *args: object) -> None:
        """Log ``fmt % args`` unless ``key`` was logged within the interval."""
        now = self._clock()
        slot = self._slots.get(key)
        if slot is not None and now - slot.last_s < self._interval_s:
            slot.suppressed += 1
            return
        if slot is not None and slot.suppressed:
            log.warning(fmt + " (%d more like it since the last report)", *args, slot.suppressed)
        else:
            log.warning(fmt, *args)
        self._slots[key] = _LogSlot(now)


def _endpoint(host: str, port: int) -> str:
    return f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"


class PeerBus:
    """One node's sockets to every peer.  See the module docstring."""

    def __init__(
        self,
        node_id: int,
        cluster_id: str,
        bind_host: str,
        bind_port: int,
        peers: dict[int, tuple[str, int]],
        *,
        send_queue_max: int = 10_000,
        frame_bytes_max: int = 64 << 20,
        clock: Callable[[], float] = time.monotonic,
        drop_log_interval_s: float = 60.0,
    ) -> None:
        if node_id < 1:
            raise ValueError(f"node id must be >= 1: {node_id}")
        if send_queue_max < 1 or frame_bytes_max < 1:
            raise ValueError("send_queue_max and frame_bytes_max must be >= 1")
        if any(p < 1 for p in peers):
            raise ValueError(f"peer ids must be >= 1: {sorted(peers)}")
        self.node_id = node_id
        self.cluster_id = cluster_id
        self.bind_host = bind_host
        self.bind_port = bind_port
        self.send_queue_max = send_queue_max
        self.frame_bytes_max = frame_bytes_max
        self.stats = BusStats()
        self._clock = clock
        self._drop_log = _RateLimitedLog(clock, drop_log_interval_s)
        # This node's own entry, if the caller passed the whole cluster, is not a peer.
        self._peers: dict[int, _Peer] = {
            pid: _Peer(pid, (addr[0], int(addr[1])), str(pid).encode())
            for pid, addr in peers.items()
            if pid != node_id
        }
        self._peer_by_identity: dict[bytes, _Peer] = {p.identity: p for p in self._peers.values()}
        self._ctx: zmq.asyncio.Context | None = None
        self._router: zmq.asyncio.Socket | None = None
        self._router_fd: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._rx_waiter: asyncio.Future | None = None
        self._router_sync: zmq.Socket | None = None
        self._port: int | None = None
        self._started = False
        self._closed = False
        self._receiving = False

    # ---- lifecycle ----------------------------------------------------------

    async def start(self) -> None:
        """Bind the ROUTER and connect a DEALER to every peer."""
        if self._started or self._closed:
            raise RuntimeError("a bus starts once, and not after close()")
        self._started = True
        self._ctx = zmq.asyncio.Context()
        try:
            self._router = self._ctx.socket(zmq.ROUTER)
            self._configure_common(self._router, self.bind_host)
            self._router.setsockopt(zmq.RCVHWM, self.send_queue_max)
            self._router.setsockopt(zmq.MAXMSGSIZE, 2 * self.frame_bytes_max)
            self._router.setsockopt(zmq.ROUTER_HANDOVER, 1)
            self._router.bind(_endpoint(self.bind_host, self.bind_port))
            last = self._router.getsockopt(zmq.LAST_ENDPOINT).decode()
            self._port = int(last.rsplit(":", 1)[1])
            self._router_sync = zmq.Socket.shadow(self._router.underlying)
            self._router_fd = self._router_sync.get(zmq.FD)
            self._loop = asyncio.get_running_loop()
            self._loop.add_reader(self._router_fd, self._on_router_fd)
            for peer in self._peers.values():
                sock = zmq.Socket(self._ctx, zmq.DEALER)
                peer.sock = sock
                self._configure_common(sock, peer.address[0])
                sock.setsockopt(zmq.ROUTING_ID, str(self.node_id).encode())
                sock.setsockopt(zmq.SNDHWM, self.send_queue_max)
                sock.setsockopt(zmq.RCVHWM, 1)
                sock.setsockopt(zmq.MAXMSGSIZE, DEALER_INBOUND_BYTES_MAX)
                sock.setsockopt(zmq.IMMEDIATE, 1)
                sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
                sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
                sock.setsockopt(zmq.CONNECT_TIMEOUT, CONNECT_TIMEOUT_MS)
                # ZMTP heartbeats on the DEALERs only: they notice a dead or
                # paused peer. On the ROUTER, libzmq 4.3.5 aborts the process
                # (stream_engine_base.cpp:310, !_io_error) when a peer
                # disconnects while the ROUTER's input is stopped at RCVHWM
                # (tests/unit/test_transport_bus.py has the reproduction).
                sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
                sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
                sock.connect(_endpoint(*peer.address))
        except BaseException:
            await self.close()
            raise

    @staticmethod
    def _configure_common(sock: zmq.Socket, host: str) -> None:
        sock.setsockopt(zmq.LINGER, 0)
        if ":" in host:
            sock.setsockopt(zmq.IPV6, 1)
        sock.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_IVL_MS)
        sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
        sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, TCP_KEEPALIVE_IDLE_S)
        sock.setsockopt(zmq.TCP_KEEPALIVE_INTVL, TCP_KEEPALIVE_INTVL_S)
        sock.setsockopt(zmq.TCP_KEEPALIVE_CNT, TCP_KEEPALIVE_CNT)

    async def close(self) -> None:
        """Close every socket at once (linger 0: queued messages are dropped).

        Idempotent.  A ``recv_batch`` waiting meanwhile raises :class:`BusClosed`.
        """
        if self._closed:
            return
        self._closed = True
        for peer in self._peers.values():
            if peer.sock is not None:
                peer.sock.close(linger=0)
        if self._router_fd is not None and self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._router_fd)
        self._router_fd = None
        waiter = self._rx_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)  # the receiver wakes and raises BusClosed
        self._router_sync = None  # a shadow: closing the router closes what it shadows
        if self._router is not None:
            self._router.close(linger=0)
        if self._ctx is not None:
            self._ctx.term()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def port(self) -> int:
        """The port the ROUTER is bound to (useful with ``bind_port=0``)."""
        if self._port is None:
            raise RuntimeError("bus not started")
        return self._port

    # ---- sending ------------------------------------------------------------

    def send(self, msg: Message) -> bool:
        """Queue ``msg`` for ``msg.to`` without blocking; False if dropped.

        A message to a node that is not a peer, or not from this node, is a
        bug of the caller: ``ValueError``.
        """
        peer = self._peers.get(msg.to)
        if peer is None:
            raise ValueError(f"node {msg.to} is not a peer of node {self.node_id}")
        if msg.frm != self.node_id:
            raise ValueError(f"node {self.node_id} cannot send a message from node {msg.frm}")
        if not self._started:
            raise RuntimeError("bus not started")
        if self._closed:
            self._count_send_drop(peer, "bus closed")
            return False
        sock = peer.sock
        assert sock is not None
        # While a peer is refusing messages (down, or its queue full), ask libzmq
        # before paying for an encoding and an exception per dropped message.
        if peer.refusing and not sock.get(_EVENTS) & _POLLOUT:
            self._count_send_drop(peer, "not connected or send queue full")
            return False
        data = encode(msg, self.cluster_id)
        if len(data) > self.frame_bytes_max:
            self.stats.send_oversized += 1
            self._drop_log.warn(
                ("send", peer.node_id),
                "peer bus: not sending %s of %d B to node %d: over frame_bytes_max=%d",
                type(msg).__name__, len(data), peer.node_id, self.frame_bytes_max,
            )
            return False
        try:
            sock.send(data, _NOBLOCK, copy=len(data) < ZERO_COPY_BYTES_MIN)
        except zmq.Again:
            peer.refusing = True
            self._count_send_drop(peer, "not connected or send queue full")
            return False
        peer.refusing = False
        peer.sent += 1
        self.stats.sent += 1
        return True

    def send_many(self, msgs: Iterable[Message]) -> int:
        """``send`` each message; return how many were queued."""
        return sum(self.send(m) for m in msgs)

    def _count_send_drop(self, peer: _Peer, why: str) -> None:
        peer.send_dropped += 1
        self.stats.send_dropped += 1
        self._drop_log.warn(
            ("send", peer.node_id),
            "peer bus: dropping messages to node %d at %s:%d: %s",
            peer.node_id, peer.address[0], peer.address[1], why,
        )

    # ---- receiving ----------------------------------------------------------

    async def recv_batch(self, max_messages: int = 4096) -> list[Message]:
        """Wait for at least one valid message; return all that are queued.

        Reads at most ``max_messages`` frames per drain; invalid frames are
        counted and dropped, never returned and never raised.
        """
        if max_messages < 1:
            raise ValueError(f"max_messages must be >= 1: {max_messages}")
        if not self._started:
            raise RuntimeError("bus not started")
        if self._closed:
            raise BusClosed("bus closed")
        if self._receiving:
            raise RuntimeError("recv_batch is already running in another task")
        self._receiving = True
        try:
            out: list[Message] = []
            while not out:
                await self._wait_readable()
                self._drain(out, max_messages)
            return out
        finally:
            self._receiving = False

    async def _wait_readable(self) -> None:
        """Return once the ROUTER has input. libzmq's ``FD`` is edge-like: it
        signals that ``EVENTS`` may have changed, and reading ``EVENTS``
        rearms it, so the reader installed in ``start`` reads it on every
        signal and wakes the one waiter. (zmq.asyncio's ``poll`` does the same
        with a Poller, several futures and flag enums per wait: a tenth of a
        millisecond a message on this path.)"""
        sock = self._router_sync
        assert sock is not None
        if sock.get(_EVENTS) & _POLLIN:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._rx_waiter = waiter
        try:
            await waiter
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self._closed and (task is None or task.cancelling() == 0):
                raise BusClosed("bus closed while receiving") from None
            raise
        finally:
            self._rx_waiter = None
        if self._closed:
            raise BusClosed("bus closed while receiving")

    def _on_router_fd(self) -> None:
        sock = self._router_sync
        if sock is None:
            return
        try:
            readable = sock.get(_EVENTS) & _POLLIN
        except zmq.ZMQError:
            readable = True  # closing: let the waiter find out
        waiter = self._rx_waiter
        if readable and waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _drain(self, out: list[Message], max_messages: int) -> None:
        # recv_multipart asks libzmq for RCVMORE through the option enums on every
        # frame; reading frames by hand with Frame.more is several times cheaper.
        sock = self._router_sync
        assert sock is not None
        recv = sock.recv
        accept = self._accept
        for _ in range(max_messages):
            try:
                identity = recv(_NOBLOCK)
            except zmq.Again:
                return
            # A ROUTER delivers the identity and every part of a message at once.
            frame = recv(_NOBLOCK, copy=False)
            extra = 0
            more = frame.more
            while more:
                more = recv(_NOBLOCK, copy=False).more
                extra += 1
            msg = accept(identity, frame, extra)
            if msg is not None:
                out.append(msg)

    def _accept(self, identity: bytes, frame: zmq.Frame, extra_frames: int) -> Message | None:
        """Validate one received ZeroMQ message; the core message, or None."""
        if extra_frames:
            return self._reject(identity, DropReason.MALFORMED, f"{extra_frames + 1} frames, not 1")
        size = len(frame)
        if size > self.frame_bytes_max:
            return self._reject(
                identity, DropReason.OVERSIZED, f"{size} B > frame_bytes_max={self.frame_bytes_max}"
            )
        try:
            cluster_id, msg = decode(frame.buffer)
        except CodecError as e:
            return self._reject(identity, DropReason.MALFORMED, e.reason)
        if cluster_id != self.cluster_id:
            return self._reject(
                identity, DropReason.FOREIGN_CLUSTER, f"cluster {cluster_id!r}, not {self.cluster_id!r}"
            )
        peer = self._peers.get(msg.frm)
        if peer is None:
            return self._reject(identity, DropReason.UNKNOWN_SENDER, f"from node {msg.frm}, not a peer")
        if msg.to != self.node_id:
            return self._reject(identity, DropReason.WRONG_DESTINATION, f"addressed to node {msg.to}")
        if identity != peer.identity:
            return self._reject(
                identity, DropReason.IDENTITY_MISMATCH, f"claims to be node {msg.frm}"
            )
        peer.last_recv_s = self._clock()
        peer.received += 1
        self.stats.received += 1
        return msg

    def _reject(self, identity: bytes, reason: DropReason, detail: str) -> None:
        self.stats.dropped[reason] += 1
        peer = self._peer_by_identity.get(identity)
        if peer is not None:
            self._drop_log.warn(
                ("recv", peer.node_id),
                "peer bus: dropped a frame from node %d: %s: %s", peer.node_id, reason.value, detail,
            )
        else:  # strangers share one budget, so they cannot grow the limiter's table
            self._drop_log.warn(
                ("recv", None),
                "peer bus: dropped a frame from unknown identity %r: %s: %s",
                identity[:32], reason.value, detail,
            )
        return None

    # ---- status -------------------------------------------------------------

    def peer_status(self) -> dict[int, PeerStatus]:
        """Per peer: when it was last heard from, and the send/receive counts."""
        out = {}
        for pid, p in self._peers.items():
            writable = (
                p.sock is not None
                and not self._closed
                and bool(p.sock.getsockopt(zmq.EVENTS) & zmq.POLLOUT)
            )
            out[pid] = PeerStatus(
                node_id=pid,
                address=p.address,
                last_recv_s=p.last_recv_s,
                writable=writable,
                received=p.received,
                sent=p.sent,
                send_dropped=p.send_dropped,
            )
        return out
