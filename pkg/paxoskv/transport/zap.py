"""The ZAP handler of a CURVE bus: admit exactly the members' keys.

Rules
-----
* One handler per ZeroMQ context (it binds ``inproc://zeromq.zap.01``), started
  before the bus's ROUTER binds and stopped after it closes, so no connection
  is ever taken without it. libzmq admits every CURVE client when no handler
  answers, so this ordering is what makes the allow-list hold.
* A CURVE handshake on domain :data:`ZAP_DOMAIN` is admitted when the client's
  long-term public key is a member's, and then every frame of that connection
  carries the member id as its ``User-Id`` property (a decimal string). Any
  other key, or domain, is refused: the connection is closed in the handshake
  and the refusal reported to ``on_refused(address, z85_key)``.

Theory of operation: pyzmq's :class:`zmq.auth.asyncio.AsyncioAuthenticator`
does the ZAP protocol on the event loop; we give it the allow-list as a
credentials callback (not a directory of certificates: exactly the members,
nothing else found on disk) and map keys to member ids in ``curve_user_id``.
Its ``handle_zap_message`` is wrapped only to know the client's address when
the callback refuses a key.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import zmq
from zmq.auth.asyncio import AsyncioAuthenticator
from zmq.utils import z85

__all__ = ["ZAP_DOMAIN", "MemberAuthenticator"]

ZAP_DOMAIN = "paxoskv-bus"


class MemberAuthenticator(AsyncioAuthenticator):
    def __init__(
        self,
        context: zmq.Context,
        members: dict[int, bytes],
        on_refused: Callable[[str, bytes], None],
    ) -> None:
        # pyzmq's own log is at DEBUG per handshake; keep it under ours.
        super().__init__(context, log=logging.getLogger("paxoskv.transport.zap.pyzmq"))
        self._member_of: dict[bytes, str] = {key: str(node_id) for node_id, key in members.items()}
        self._on_refused = on_refused
        self._address = ""
        self.configure_curve_callback(ZAP_DOMAIN, self)

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        self._address = msg[3].decode("utf-8", "replace") if len(msg) > 3 else "?"
        await super().handle_zap_message(msg)

    def callback(self, domain: str, z85_key: bytes) -> bool:
        """pyzmq's credentials-provider hook: is this key a member's?"""
        if domain == ZAP_DOMAIN and z85_key in self._member_of:
            return True
        self._on_refused(self._address, z85_key)
        return False

    def curve_user_id(self, client_public_key: bytes) -> str:
        return self._member_of[z85.encode(client_public_key)]
