"""The peer bus: core messages between nodes over ZeroMQ ROUTER/DEALER.

Rules (the why, and every byte bound with its arithmetic: docs/security.md,
"The peer bus"):

* Each node binds one ROUTER (everything addressed to it arrives there) and
  holds one DEALER per peer. A core message is one ZeroMQ message of one
  frame, an encoded ``Envelope`` (:mod:`paxoskv.paxos.codec`); a bus control
  message is two frames, :data:`CONTROL_TAG` and a ``BusControl``.
* **With keys (CURVE)** the ROUTER's ZAP handler (:mod:`paxoskv.transport.zap`)
  admits exactly the members' public keys (others: ``refused_handshakes``);
  an Envelope whose ``from`` is not the member of its frame's ``User-Id`` is
  dropped (KEY_MISMATCH). DEALER routing ids are 16 random bytes per bus, so
  ``ROUTER_HANDOVER`` cannot hand one member's link to another.
* **Without keys (insecure)** the DEALER routing id is the node id and must
  match ``from`` (IDENTITY_MISMATCH): a check against misconfiguration, not
  attackers. Only for a network nobody but the members can reach.
* **Byte bounds:** a frame over :data:`FRAME_BYTES_MAX` is never read
  (``MAXMSGSIZE``); inbound at most :data:`RECV_QUEUE_MESSAGES_MAX` whole
  messages per connection; outbound ``send_queue_max`` messages and
  ``send_bytes_max`` bytes per peer. A send over a bound is dropped and
  counted, never queued; a message over the frame limit is split when its
  type allows (Accept, Forward, CatchupReply's prefix), else dropped
  (``send_oversized``).
* **Identity:** :meth:`PeerBus.start` refuses (:class:`DuplicateNode`) to
  start a second bus of the same node id and cluster that another instance
  answers for; core messages arriving meanwhile are kept (at most 4,096).
* Sending never blocks or awaits: a full queue or a peer without a completed
  connection (``IMMEDIATE=1``) drops the message, counts it, and ``send``
  returns False. Paxos retransmits.
* Every received frame is validated; a bad one is counted under a
  :class:`DropReason`, logged at most once per sender per
  ``drop_log_interval_s`` (injected clock) and dropped.
* Reconnecting is libzmq's (``RECONNECT_IVL`` 50 ms to 1 s); a connection
  whose data is unacknowledged for ``TCP_MAXRT`` (5 s) is dropped. No ZMTP
  heartbeats anywhere (libzmq 4.3.5 aborts with them: see ``_dealer``).
* One event loop owns the bus; nothing here is thread-safe. The ROUTER's
  asyncio socket only waits; :meth:`PeerBus.recv_batch` drains through a
  synchronous shadow until ``zmq.Again``, payloads as zero-copy views.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import enum
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import zmq
import zmq.asyncio

from paxoskv.paxos.codec import CodecError, decode, encode
from paxoskv.paxos.types import Accept, CatchupReply, Forward, Message
from paxoskv.transport.keys import BusKeys
from paxoskv.transport.zap import ZAP_DOMAIN, MemberZap
from paxoskv.v1 import bus_pb2

__all__ = [
    "BusClosed",
    "BusStats",
    "CONTROL_TAG",
    "DropReason",
    "DuplicateNode",
    "FRAME_BYTES_MAX",
    "PeerBus",
    "PeerStatus",
    "RECV_QUEUE_MESSAGES_MAX",
]

log = logging.getLogger(__name__)

# The largest frame a bus reads or sends: twice a full pipeline of slots at the
# core's defaults (inflight_slots_max 16 x batch_bytes_max 1 MiB), so an Accept
# or a Promise carrying all of them fits. What cannot fit is split or dropped.
FRAME_BYTES_MAX = 32 << 20
RECV_QUEUE_MESSAGES_MAX = 8  # RCVHWM: whole messages queued per inbound connection
SEND_QUEUE_MESSAGES_MAX = 1000  # SNDHWM: messages queued per peer
SEND_LARGE_BYTES_MAX = 2 * FRAME_BYTES_MAX  # bytes of messages >= ZERO_COPY_BYTES_MIN in flight per peer
ZERO_COPY_BYTES_MIN = 64 << 10  # below this libzmq copies anyway; at or above, sends are tracked
CONTROL_TAG = b"paxoskv.bus/1"
CONTROL_BYTES_MAX = 1024  # a BusControl is a few dozen bytes
PROBE_TIMEOUT_S = 1.0
EARLY_MESSAGES_MAX = 4096  # core messages kept while start() probes
NONCE_BYTES = 16

RECONNECT_IVL_MS = 50
RECONNECT_IVL_MAX_MS = 1000
CONNECT_TIMEOUT_MS = 1000  # a SYN into a black hole must not stall reconnects for minutes
HANDSHAKE_IVL_MS = 5000  # a connection that has not finished its handshake by then is closed
TCP_MAXRT_MS = 5000  # TCP_USER_TIMEOUT of a DEALER: a peer that acknowledges nothing this long is gone
TCP_KEEPALIVE_IDLE_S = 10
TCP_KEEPALIVE_INTVL_S = 5
TCP_KEEPALIVE_CNT = 3
DEALER_INBOUND_BYTES_MAX = 4096  # only control replies ever arrive on a DEALER
ROUTER_SEND_QUEUE_MAX = 16  # per connection: only control replies leave on the ROUTER
# Plain ints skip pyzmq's enum conversions on the hot path.
_NOBLOCK = int(zmq.NOBLOCK)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_POLLOUT = int(zmq.POLLOUT)
_USER_ID = b"User-Id"


class BusClosed(Exception):
    """The bus was closed (possibly while a ``recv_batch`` was waiting)."""


class DuplicateNode(Exception):
    """Another live node of this cluster answers on the bus with this node's id."""


class DropReason(enum.Enum):
    """Why a received frame was dropped."""

    MALFORMED = "malformed"
    FOREIGN_CLUSTER = "foreign_cluster"
    UNKNOWN_SENDER = "unknown_sender"
    WRONG_DESTINATION = "wrong_destination"
    IDENTITY_MISMATCH = "identity_mismatch"  # insecure mode: routing id is not ``from``
    KEY_MISMATCH = "key_mismatch"  # CURVE: ``from`` is not the member whose key it came with
    NOT_READY = "not_ready"  # arrived while start() probed, beyond EARLY_MESSAGES_MAX


@dataclass(slots=True)
class BusStats:
    """Counters of one bus; they only grow."""

    sent: int = 0  # handed to libzmq for a peer
    send_dropped: int = 0  # peer queue full (messages or bytes), no connection, or bus closed
    send_oversized: int = 0  # encoded larger than frame_bytes_max and not splittable: never sent
    send_split: int = 0  # messages sent as several frames' worth of parts
    received: int = 0  # valid messages returned by recv_batch
    refused_handshakes: int = 0  # CURVE connections refused by the ZAP handler
    probes_answered: int = 0
    dropped: dict[DropReason, int] = field(default_factory=lambda: dict.fromkeys(DropReason, 0))

    def as_dict(self) -> dict[str, int]:
        out = {
            "sent": self.sent,
            "send_dropped": self.send_dropped,
            "send_oversized": self.send_oversized,
            "send_split": self.send_split,
            "received": self.received,
            "refused_handshakes": self.refused_handshakes,
            "probes_answered": self.probes_answered,
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
    send_bytes_queued: int = 0  # of tracked (large) messages libzmq still holds


@dataclass(slots=True)
class _Peer:
    node_id: int
    address: tuple[str, int]
    identity: bytes  # insecure mode: the routing id its DEALER uses
    user_id: str  # CURVE: the User-Id of its key
    public_key: bytes | None  # CURVE: its Z85 public key
    sock: zmq.Socket | None = None
    last_recv_s: float | None = None
    received: int = 0
    sent: int = 0
    send_dropped: int = 0
    refusing: bool = False  # the last send to it raised zmq.Again
    large: collections.deque = field(default_factory=collections.deque)  # (MessageTracker, bytes)
    large_bytes: int = 0


@dataclass(slots=True)
class _LogSlot:
    last_s: float
    suppressed: int = 0


class _RateLimitedLog:
    """At most one warning per key per interval; says how many it held back."""

    def __init__(self, clock: Callable[[], float], interval_s: float) -> None:
        self._clock = clock
        self._interval_s = interval_s
        self._slots: dict[object, _LogSlot] = {}  # keys: peer ids and a few fixed ones: bounded

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


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# Message types whose items are independent: a too-large one is sent as parts.
_SPLITTABLE: dict[type, str] = {Accept: "entries", Forward: "commands"}


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
        keys: BusKeys | None = None,
        send_queue_max: int = SEND_QUEUE_MESSAGES_MAX,
        send_bytes_max: int = SEND_LARGE_BYTES_MAX,
        recv_queue_max: int = RECV_QUEUE_MESSAGES_MAX,
        frame_bytes_max: int = FRAME_BYTES_MAX,
        probe_timeout_s: float = PROBE_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
        drop_log_interval_s: float = 60.0,
    ) -> None:
        if node_id < 1:
            raise ValueError(f"node id must be >= 1: {node_id}")
        if min(send_queue_max, send_bytes_max, recv_queue_max, frame_bytes_max) < 1:
            raise ValueError("queue and frame limits must be >= 1")
        if send_bytes_max < frame_bytes_max:
            raise ValueError(f"send_bytes_max {send_bytes_max} cannot hold one frame of {frame_bytes_max}")
        if any(p < 1 for p in peers):
            raise ValueError(f"peer ids must be >= 1: {sorted(peers)}")
        if keys is not None:
            if keys.node_id != node_id:
                raise ValueError(f"keys of node {keys.node_id} given to node {node_id}")
            missing = sorted(set(peers) - set(keys.members))
            if missing:
                raise ValueError(f"no public key for peers {missing}")
        self.node_id = node_id
        self.cluster_id = cluster_id
        self.bind_host = bind_host
        self.bind_port = bind_port
        self.send_queue_max = send_queue_max
        self.send_bytes_max = send_bytes_max
        self.recv_queue_max = recv_queue_max
        self.frame_bytes_max = frame_bytes_max
        self.probe_timeout_s = probe_timeout_s
        self.stats = BusStats()
        self._keys = keys
        self._clock = clock
        self._drop_log = _RateLimitedLog(clock, drop_log_interval_s)
        self._nonce = os.urandom(NONCE_BYTES)
        # This node's own entry, if the caller passed the whole cluster, is not a peer.
        self._peers: dict[int, _Peer] = {
            pid: _Peer(
                pid,
                (addr[0], int(addr[1])),
                str(pid).encode(),
                str(pid),
                keys.members[pid] if keys is not None else None,
            )
            for pid, addr in peers.items()
            if pid != node_id
        }
        self._peer_by_identity: dict[bytes, _Peer] = {p.identity: p for p in self._peers.values()}
        self._peer_by_user: dict[str, _Peer] = {p.user_id: p for p in self._peers.values()}
        self._ctx: zmq.asyncio.Context | None = None
        self._auth: MemberZap | None = None
        self._router: zmq.asyncio.Socket | None = None
        self._router_fd: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._rx_waiter: asyncio.Future | None = None
        self._probe_wake: asyncio.Event | None = None
        self._router_sync: zmq.Socket | None = None
        self._early: list[Message] | None = None  # while start() probes
        self._port: int | None = None
        self._started = False
        self._closed = False
        self._receiving = False

    @property
    def secure(self) -> bool:
        """True when the bus runs CURVE (it was given keys)."""
        return self._keys is not None

    # ---- lifecycle ----------------------------------------------------------

    async def start(self) -> None:
        """Bind the ROUTER, make sure no other node answers as this one
        (:class:`DuplicateNode`), then connect a DEALER to every peer."""
        if self._started or self._closed:
            raise RuntimeError("a bus starts once, and not after close()")
        self._started = True
        self._ctx = zmq.asyncio.Context()
        try:
            keys = self._keys
            if keys is not None:
                self._auth = MemberZap(self._ctx, keys.members, self._on_refused)
                self._auth.start()  # the ZAP handler exists before the first connection can
            self._router = self._ctx.socket(zmq.ROUTER)
            self._configure_common(self._router, self.bind_host)
            self._router.setsockopt(zmq.RCVHWM, self.recv_queue_max)
            self._router.setsockopt(zmq.SNDHWM, ROUTER_SEND_QUEUE_MAX)
            self._router.setsockopt(zmq.MAXMSGSIZE, self.frame_bytes_max)
            self._router.setsockopt(zmq.ROUTER_HANDOVER, 1)
            if keys is not None:
                self._router.setsockopt(zmq.CURVE_SERVER, 1)
                self._router.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)
                self._router.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN.encode())
                try:  # refuse every handshake if the handler ever stops answering
                    self._router.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
                except (AttributeError, zmq.ZMQError):
                    pass  # a libzmq without the (draft) option: the start order above still holds
            self._router.bind(_endpoint(self.bind_host, self.bind_port))
            last = self._router.getsockopt(zmq.LAST_ENDPOINT).decode()
            self._port = int(last.rsplit(":", 1)[1])
            self._router_sync = zmq.Socket.shadow(self._router.underlying)
            self._router_fd = self._router_sync.get(zmq.FD)
            self._loop = asyncio.get_running_loop()
            self._loop.add_reader(self._router_fd, self._on_router_fd)
            if self._peers:
                await self._check_unique()
            for peer in self._peers.values():
                peer.sock = self._dealer(peer.address, peer.public_key, probe=False)
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

    def _dealer(self, address: tuple[str, int], server_key: bytes | None, *, probe: bool) -> zmq.Socket:
        """A DEALER connected to ``address``. A probe's routing id is random in
        both modes (it must not take a link over) and it queues before the
        connection completes (the probe is sent once)."""
        assert self._ctx is not None
        sock = zmq.Socket(self._ctx, zmq.DEALER)
        try:
            self._configure_common(sock, address[0])
            keys = self._keys
            if keys is not None or probe:
                sock.setsockopt(zmq.ROUTING_ID, b"p" + os.urandom(NONCE_BYTES - 1))  # never a node id
            else:
                sock.setsockopt(zmq.ROUTING_ID, str(self.node_id).encode())
            if keys is not None:
                sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
                sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)
                sock.setsockopt(zmq.CURVE_SERVERKEY, server_key)
            sock.setsockopt(zmq.SNDHWM, 1 if probe else self.send_queue_max)
            sock.setsockopt(zmq.RCVHWM, 1)
            sock.setsockopt(zmq.MAXMSGSIZE, DEALER_INBOUND_BYTES_MAX)
            sock.setsockopt(zmq.IMMEDIATE, 0 if probe else 1)
            sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
            sock.setsockopt(zmq.CONNECT_TIMEOUT, CONNECT_TIMEOUT_MS)
            # No ZMTP heartbeats, anywhere: libzmq 4.3.5 aborts the process
            # (stream_engine_base.cpp:310, !_io_error) when a ROUTER whose
            # input is stopped at RCVHWM has a PING buffered from a peer that
            # then dies -- its PONG is written on a dead engine (the ROUTER's
            # own heartbeats do the same). A dead peer is found by the kernel
            # instead: data unacknowledged for TCP_MAXRT closes the connection.
            sock.setsockopt(zmq.TCP_MAXRT, TCP_MAXRT_MS)
            sock.connect(_endpoint(*address))
        except BaseException:
            sock.close(linger=0)
            raise
        return sock

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
            peer.large.clear()
            peer.large_bytes = 0
        if self._router_fd is not None and self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._router_fd)
        self._router_fd = None
        waiter = self._rx_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)  # the receiver wakes and raises BusClosed
        self._router_sync = None  # a shadow: closing the router closes what it shadows
        if self._router is not None:
            self._router.close(linger=0)
        if self._auth is not None:
            self._auth.stop()  # after the ROUTER: no connection is ever taken without it
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

    # ---- identity: is another node answering as this one? -------------------

    def _control(self, **kind: object) -> bytes:
        return bus_pb2.BusControl(
            cluster_id=self.cluster_id, from_node=self.node_id, nonce=self._nonce, **kind
        ).SerializeToString()

    async def _check_unique(self) -> None:
        """Ask every peer for this node's address, probe each one told, and
        raise :class:`DuplicateNode` if another instance answers there."""
        assert self._loop is not None
        loop = self._loop
        wake = asyncio.Event()
        self._probe_wake = wake
        self._early = []
        probe = [CONTROL_TAG, self._control(probe=bus_pb2.Probe())]
        # socket -> (peer it asks, or None for a probe of an address told to us; that address)
        probes: dict[zmq.Socket, tuple[_Peer | None, tuple[str, int]]] = {}
        pending_peers = set(self._peers)
        pending_self: set[tuple[str, int]] = set()
        told: dict[tuple[str, int], int] = {}  # address -> the peer that told us

        def add(sock: zmq.Socket, target: _Peer | None, address: tuple[str, int]) -> None:
            probes[sock] = (target, address)
            loop.add_reader(sock.get(zmq.FD), wake.set)
            sock.send_multipart(probe, _NOBLOCK)

        deadline = loop.time() + self.probe_timeout_s
        try:
            for peer in self._peers.values():
                add(self._dealer(peer.address, peer.public_key, probe=True), peer, peer.address)
            while True:
                wake.clear()
                self._drain_into(self._early)
                for sock, (target, address) in list(probes.items()):
                    for frames in self._recv_all(sock):
                        reply = self._probe_reply(frames)
                        if reply is None:
                            continue
                        frm, nonce, host, port = reply
                        if target is not None:  # a peer told us our address
                            if frm != target.node_id or target.node_id not in pending_peers:
                                continue
                            pending_peers.discard(target.node_id)
                            mine = (host, port)
                            if host and 1 <= port <= 65535 and mine not in told:
                                told[mine] = target.node_id
                                pending_self.add(mine)
                                add(self._dealer(mine, self._keys.public if self._keys else None, probe=True),
                                    None, mine)
                        elif address in pending_self:
                            pending_self.discard(address)
                            if frm == self.node_id and nonce != self._nonce:
                                raise DuplicateNode(
                                    f"node {self.node_id} of cluster {self.cluster_id!r} is already running: "
                                    f"it answers on the bus at {_hostport(*address)} (node {told[address]}'s "
                                    f"address for it); stop it, or give this node another id"
                                )
                            if frm != self.node_id:
                                log.warning(
                                    "peer bus: node %d has %s as node %d's bus address, but node %d answers "
                                    "there: check the peer lists", told[address], _hostport(*address),
                                    self.node_id, frm,
                                )
                if not pending_self and (not pending_peers or told):
                    return  # every address told has answered (and someone told us one)
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return  # nobody else answers as us: an address that does not answer is free
                try:
                    await asyncio.wait_for(wake.wait(), remaining)
                except TimeoutError:
                    pass
        finally:
            self._probe_wake = None
            for sock in probes:
                if not loop.is_closed():
                    loop.remove_reader(sock.get(zmq.FD))
                sock.close(linger=0)

    @staticmethod
    def _recv_all(sock: zmq.Socket) -> Iterable[list[bytes]]:
        if not sock.get(_EVENTS) & _POLLIN:  # also rearms the FD
            return
        while True:
            try:
                yield sock.recv_multipart(_NOBLOCK)
            except zmq.Again:
                return

    def _probe_reply(self, frames: list[bytes]) -> tuple[int, bytes, str, int] | None:
        """(answerer id, its nonce, our host, our bus port) of a valid reply to our probe."""
        if len(frames) != 2 or frames[0] != CONTROL_TAG or len(frames[1]) > CONTROL_BYTES_MAX:
            return None
        ctl = bus_pb2.BusControl()
        try:
            ctl.ParseFromString(frames[1])
        except Exception:  # noqa: BLE001 - any garbage is just not an answer
            return None
        if ctl.cluster_id != self.cluster_id or ctl.WhichOneof("kind") != "probe_reply":
            return None
        rep = ctl.probe_reply
        if rep.probe_nonce != self._nonce:
            return None
        return ctl.from_node, ctl.nonce, rep.your_host, rep.your_bus_port

    def _on_control(self, identity: bytes, body: zmq.Frame) -> None:
        """A control message on the ROUTER: answer a Probe, drop anything else."""
        user = self._user_of(body)
        if len(body) > CONTROL_BYTES_MAX:
            self._reject(identity, user, DropReason.MALFORMED, f"control message of {len(body)} B")
            return
        ctl = bus_pb2.BusControl()
        try:
            ctl.ParseFromString(body.bytes)
        except Exception as e:  # noqa: BLE001 - hostile bytes
            self._reject(identity, user, DropReason.MALFORMED, f"unparsable control message: {e}")
            return
        if ctl.cluster_id != self.cluster_id:
            self._reject(identity, user, DropReason.FOREIGN_CLUSTER, f"control message of cluster {ctl.cluster_id!r}")
            return
        if ctl.WhichOneof("kind") != "probe":
            self._reject(identity, user, DropReason.MALFORMED, "unexpected control message")
            return
        frm = ctl.from_node
        if self._keys is not None and user != str(frm):
            self._reject(identity, user, DropReason.KEY_MISMATCH, f"probe claims node {frm}")
            return
        peer = self._peers.get(frm)
        if peer is None and frm != self.node_id:
            self._reject(identity, user, DropReason.UNKNOWN_SENDER, f"probe from node {frm}, not a peer")
            return
        host, port = peer.address if peer is not None else ("", 0)
        reply = self._control(probe_reply=bus_pb2.ProbeReply(probe_nonce=ctl.nonce, your_host=host, your_bus_port=port))
        assert self._router_sync is not None
        try:
            self._router_sync.send_multipart([identity, CONTROL_TAG, reply], _NOBLOCK)
        except zmq.ZMQError:
            return  # its queue is full or it is gone: it asks again or gives up
        self.stats.probes_answered += 1

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
        if len(data) <= self.frame_bytes_max:
            return self._send_frame(peer, sock, data)
        parts = self._split(msg)
        if parts is None:
            self.stats.send_oversized += 1
            self._drop_log.warn(
                ("send", peer.node_id),
                "peer bus: not sending %s of %d B to node %d: over frame_bytes_max=%d and not splittable",
                type(msg).__name__, len(data), peer.node_id, self.frame_bytes_max,
            )
            return False
        self.stats.send_split += 1
        sent = False
        for part in parts:
            sent = self._send_frame(peer, sock, part) or sent
        return sent

    def _send_frame(self, peer: _Peer, sock: zmq.Socket, data: bytes) -> bool:
        n = len(data)
        try:
            if n < ZERO_COPY_BYTES_MIN:
                sock.send(data, _NOBLOCK)
            else:
                large = peer.large
                while large and large[0][0].done:
                    peer.large_bytes -= large.popleft()[1]
                if peer.large_bytes + n > self.send_bytes_max:
                    self._count_send_drop(peer, f"{peer.large_bytes} B of large messages still queued")
                    return False
                large.append((sock.send(data, _NOBLOCK, copy=False, track=True), n))
                peer.large_bytes += n
        except zmq.Again:
            peer.refusing = True
            self._count_send_drop(peer, "not connected or send queue full")
            return False
        peer.refusing = False
        peer.sent += 1
        self.stats.sent += 1
        return True

    def _split(self, msg: Message) -> list[bytes] | None:
        """Encoded parts of ``msg``, each within the frame limit; None if it cannot be split."""
        if isinstance(msg, CatchupReply):  # a prefix: the receiver asks for the rest
            chosen = msg.chosen
            while len(chosen) > 1:
                chosen = chosen[: len(chosen) // 2]
                data = encode(dataclasses.replace(msg, chosen=chosen), self.cluster_id)
                if len(data) <= self.frame_bytes_max:
                    return [data]
            return None
        name = _SPLITTABLE.get(type(msg))
        if name is None:
            return None
        items = getattr(msg, name)
        if len(items) < 2:
            return None
        out: list[bytes] = []
        half = len(items) // 2
        for part in (items[:half], items[half:]):
            sub = dataclasses.replace(msg, **{name: part})
            data = encode(sub, self.cluster_id)
            if len(data) <= self.frame_bytes_max:
                out.append(data)
                continue
            more = self._split(sub)
            if more is None:
                return None
            out.extend(more)
        return out

    def send_many(self, msgs: Iterable[Message]) -> int:
        """``send`` each message; return how many were queued."""
        return sum(self.send(m) for m in msgs)

    def _count_send_drop(self, peer: _Peer, why: str) -> None:
        peer.send_dropped += 1
        self.stats.send_dropped += 1
        self._drop_log.warn(
            ("send", peer.node_id),
            "peer bus: dropping messages to node %d at %s: %s",
            peer.node_id, _hostport(*peer.address), why,
        )

    # ---- receiving ----------------------------------------------------------

    async def recv_batch(self, max_messages: int = 4096) -> list[Message]:
        """Wait for at least one valid message; return all that are queued.

        Reads at most ``max_messages`` messages per drain; invalid frames are
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
            if self._early:
                out, self._early = self._early, None
                return out
            self._early = None
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
        if self._probe_wake is not None and readable:
            self._probe_wake.set()
        waiter = self._rx_waiter
        if readable and waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _drain_into(self, early: list[Message]) -> None:
        """While probing: answer control messages, keep core messages (bounded)."""
        got: list[Message] = []
        self._drain(got, EARLY_MESSAGES_MAX)
        room = EARLY_MESSAGES_MAX - len(early)
        early.extend(got[:room])
        if len(got) > room:
            self.stats.dropped[DropReason.NOT_READY] += len(got) - room
            self.stats.received -= len(got) - room

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
            if frame.more:
                self._multipart(identity, frame)
                continue
            msg = accept(identity, frame)
            if msg is not None:
                out.append(msg)

    def _multipart(self, identity: bytes, first: zmq.Frame) -> None:
        """The rest of a message of several frames: a control message, or junk."""
        assert self._router_sync is not None
        recv = self._router_sync.recv
        second = recv(_NOBLOCK, copy=False)
        frames = 2
        more = second.more
        while more:
            more = recv(_NOBLOCK, copy=False).more
            frames += 1
        if frames == 2 and len(first) == len(CONTROL_TAG) and first.bytes == CONTROL_TAG:
            self._on_control(identity, second)
        else:
            self._reject(identity, self._user_of(first), DropReason.MALFORMED, f"{frames} frames, not 1")

    def _user_of(self, frame: zmq.Frame) -> str | None:
        """CURVE: the member id our ZAP handler bound to the frame's connection
        (~0.5 us a frame). Insecure mode, or a frame without one: None."""
        if self._keys is None:
            return None
        try:
            return frame.get(_USER_ID)
        except zmq.ZMQError:  # no such property: no member vouches for it
            return None

    def _accept(self, identity: bytes, frame: zmq.Frame) -> Message | None:
        """Validate one received ZeroMQ message; the core message, or None."""
        keys = self._keys
        user = self._user_of(frame) if keys is not None else None
        try:
            cluster_id, msg = decode(frame.buffer)
        except CodecError as e:
            return self._reject(identity, user, DropReason.MALFORMED, e.reason)
        if cluster_id != self.cluster_id:
            return self._reject(
                identity, user, DropReason.FOREIGN_CLUSTER, f"cluster {cluster_id!r}, not {self.cluster_id!r}"
            )
        peer = self._peers.get(msg.frm)
        if peer is None:
            return self._reject(identity, user, DropReason.UNKNOWN_SENDER, f"from node {msg.frm}, not a peer")
        if msg.to != self.node_id:
            return self._reject(identity, user, DropReason.WRONG_DESTINATION, f"addressed to node {msg.to}")
        if keys is not None:
            if user != peer.user_id:
                return self._reject(identity, user, DropReason.KEY_MISMATCH, f"claims to be node {msg.frm}")
        elif identity != peer.identity:
            return self._reject(identity, user, DropReason.IDENTITY_MISMATCH, f"claims to be node {msg.frm}")
        peer.last_recv_s = self._clock()
        peer.received += 1
        self.stats.received += 1
        return msg

    def _reject(self, identity: bytes, user: str | None, reason: DropReason, detail: str) -> None:
        """Count and (rate-limited) log a dropped frame. The sender is named by
        its key in CURVE mode, else by the routing id it chose."""
        self.stats.dropped[reason] += 1
        peer = self._peer_by_user.get(user) if self._keys is not None else self._peer_by_identity.get(identity)
        if peer is not None:
            self._drop_log.warn(
                ("recv", peer.node_id),
                "peer bus: dropped a frame from node %d: %s: %s", peer.node_id, reason.value, detail,
            )
        elif self._keys is not None:  # our own key (a probe of ours), or a member no longer a peer
            self._drop_log.warn(
                ("recv", None),
                "peer bus: dropped a frame from key of node %s: %s: %s", user, reason.value, detail,
            )
        else:  # strangers share one budget, so they cannot grow the limiter's table
            self._drop_log.warn(
                ("recv", None),
                "peer bus: dropped a frame from unknown identity %r: %s: %s",
                identity[:32], reason.value, detail,
            )
        return None

    def _on_refused(self, address: str, z85_key: bytes) -> None:
        self.stats.refused_handshakes += 1
        self._drop_log.warn(
            ("zap", None),
            "peer bus: refused a connection from %s: its CURVE key %s is not a member's (%d refused so far)",
            address, z85_key.decode("ascii", "replace"), self.stats.refused_handshakes,
        )

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
            while p.large and p.large[0][0].done:
                p.large_bytes -= p.large.popleft()[1]
            out[pid] = PeerStatus(
                node_id=pid,
                address=p.address,
                last_recv_s=p.last_recv_s,
                writable=writable,
                received=p.received,
                sent=p.sent,
                send_dropped=p.send_dropped,
                send_bytes_queued=p.large_bytes,
            )
        return out
