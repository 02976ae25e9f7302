"""The ZAP handler of a CURVE bus: admit exactly the members' keys.

Rules
-----
* One handler per ZeroMQ context (it binds ``inproc://zeromq.zap.01``),
  started before the bus's ROUTER binds and stopped after it closes. libzmq
  admits every CURVE client when no handler is bound, so this order is what
  makes the allow-list hold (and the ROUTER sets ``ZAP_ENFORCE_DOMAIN`` where
  libzmq has it, which refuses everyone instead).
* A request (RFC 27) is admitted when it is for :data:`ZAP_DOMAIN`, mechanism
  CURVE, and the client's long-term public key is a member's; the reply's
  user id is the member id (decimal), which libzmq then attaches to every
  frame of that connection as its ``User-Id`` property. Anything else is
  refused with status 400: the connection is closed in its handshake, and a
  refused key is reported to ``on_refused(address, z85_key)``.
* Every request is answered at once, in order, on the event loop (a REP
  socket: one reply per request); nothing here ever waits.

Theory of operation: the same ``FD``/``EVENTS`` reader as the bus's ROUTER.
Why not pyzmq's ``AsyncioAuthenticator``: its ``stop()`` closes the ZAP socket
while the cleanup of its pending poll is still queued on the loop; that
cleanup later removes whatever reader then holds the same fd number, and a
bus restarted in the same process lost its ROUTER's reader that way and
never woke up. The protocol is a few frames; doing it here also makes the
allow-list a plain dict of exactly the members and the member id the
User-Id, where pyzmq needs three overridden hooks for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import zmq
from zmq.utils import z85

__all__ = ["ZAP_DOMAIN", "ZAP_ENDPOINT", "MemberZap"]

ZAP_DOMAIN = "paxoskv-bus"
ZAP_ENDPOINT = "inproc://zeromq.zap.01"  # fixed by libzmq
_VERSION = b"1.0"
_DOMAIN = ZAP_DOMAIN.encode()


class MemberZap:
    def __init__(
        self,
        context: zmq.Context,
        members: dict[int, bytes],
        on_refused: Callable[[str, bytes], None],
    ) -> None:
        self._ctx = context
        self._user_of: dict[bytes, bytes] = {z85.decode(key): str(node_id).encode() for node_id, key in members.items()}
        self._on_refused = on_refused
        self._sock: zmq.Socket | None = None
        self._fd: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Bind the handler; call from the loop that owns the bus."""
        sock = zmq.Socket(self._ctx, zmq.REP)  # a plain socket, whatever the context's class
        try:
            sock.setsockopt(zmq.LINGER, 0)
            sock.bind(ZAP_ENDPOINT)
        except BaseException:
            sock.close(linger=0)
            raise
        self._sock = sock
        self._fd = sock.get(zmq.FD)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._fd, self._serve)
        self._serve()

    def stop(self) -> None:
        """Unbind (idempotent): from now on libzmq finds no handler."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        if self._loop is not None and not self._loop.is_closed() and self._fd is not None:
            self._loop.remove_reader(self._fd)
        sock.close(linger=0)

    @property
    def running(self) -> bool:
        return self._sock is not None

    def _serve(self) -> None:
        sock = self._sock
        while sock is not None and sock.get(zmq.EVENTS) & zmq.POLLIN:  # reading EVENTS rearms the FD
            try:
                request = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            sock.send_multipart(self._answer(request))

    def _answer(self, request: list[bytes]) -> list[bytes]:
        request_id = request[1] if len(request) > 1 else b""
        if len(request) < 6 or request[0] != _VERSION:
            return [_VERSION, request_id, b"400", b"malformed ZAP request", b"", b""]
        _, _, domain, address, _identity, mechanism, *credentials = request
        if domain != _DOMAIN or mechanism != b"CURVE" or len(credentials) != 1 or len(credentials[0]) != 32:
            return [_VERSION, request_id, b"400", b"not a paxoskv bus handshake", b"", b""]
        key = credentials[0]
        user = self._user_of.get(key)
        if user is None:
            self._on_refused(address.decode("utf-8", "replace"), z85.encode(key))
            return [_VERSION, request_id, b"400", b"not a member's key", b"", b""]
        return [_VERSION, request_id, b"200", b"OK", user, b""]
