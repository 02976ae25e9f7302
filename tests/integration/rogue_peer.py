"""A rogue peer for the bus-attack tests, and the checks every attack ends with.

Rules:

- A ``RoguePeer`` is one DEALER in the test process at one node's bus port.
  ``RoguePeer.plain`` speaks ZMTP without CURVE (with any routing id);
  ``RoguePeer.stranger`` has a fresh CURVE key that no node lists;
  ``RoguePeer.member`` holds a member's secret key from the cluster's key
  directory, so it passes the handshake and every frame it sends is bound to
  that member -- what it sends must be stopped by validation, not by
  authentication. It sends any bytes: ``send`` (frames of one message),
  ``send_message`` (a core message, encoded), ``send_huge``.
- ``handshake()`` says how the node took the connection (from the socket's
  monitor): ``"ok"``, ``"refused"`` (its ZAP handler said no) or ``"failed"``
  (no common mechanism, wrong server key). ``cut_off()`` waits until the node
  hung up on it.
- ``raw_connections`` opens plain TCP connections to a bus port and, if
  asked, goes through the start of a ZMTP handshake on each.
- Every socket is closed by whoever made it (``with``); sends time out
  (``SNDTIMEO``) rather than hang a test.
- ``assert_cluster_intact(cluster, acked)`` is what must hold after every
  attack: every node runs and serves, one more write goes through, and every
  node has applied the same index and holds exactly the acknowledged writes
  (``acked``: every key the test wrote, with its value), read from each
  node's own state.
"""

from __future__ import annotations

import random
import socket
import struct
import time

import zmq
import zmq.auth
from zmq.utils.monitor import recv_monitor_message

from integration_cluster import HOST, LocalCluster, wait_until
from paxoskv.kv.commands import encode_put
from paxoskv.paxos.codec import encode
from paxoskv.paxos.types import Forward, Message
from paxoskv.transport.keys import public_key_path, secret_key_path
from paxoskv.v1 import peer_pb2
from snapshot_helpers import read_all, wait_same_applied

SEND_TIMEOUT_MS = 10_000
_HANDSHAKE_EVENTS = {
    zmq.EVENT_HANDSHAKE_SUCCEEDED: "ok",
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "refused",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "failed",
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "failed",
}


class RoguePeer:
    def __init__(
        self,
        port: int,
        *,
        curve: tuple[bytes, bytes, bytes] | None = None,  # (public, secret, server public)
        routing_id: bytes | None = None,
        host: str = HOST,
    ) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDTIMEO, SEND_TIMEOUT_MS)
        self.sock.setsockopt(zmq.RECONNECT_IVL, 100)
        if routing_id is not None:
            self.sock.setsockopt(zmq.ROUTING_ID, routing_id)
        if curve is not None:
            self.sock.curve_publickey, self.sock.curve_secretkey, self.sock.curve_serverkey = curve
        self._monitor = self.sock.get_monitor_socket()
        self.events: list[int] = []
        self.sock.connect(f"tcp://{host}:{port}")

    # ---- the three kinds ---------------------------------------------------------

    @classmethod
    def plain(cls, cluster: LocalCluster, target: int, routing_id: bytes | None = None) -> RoguePeer:
        """No CURVE at all."""
        return cls(cluster.nodes[target].bus_port, routing_id=routing_id)

    @classmethod
    def stranger(cls, cluster: LocalCluster, target: int, routing_id: bytes | None = None) -> RoguePeer:
        """A valid CURVE key pair that is no member's."""
        public, secret = zmq.curve_keypair()
        return cls(cluster.nodes[target].bus_port, curve=(public, secret, _server_key(cluster, target)),
                   routing_id=routing_id)

    @classmethod
    def member(
        cls, cluster: LocalCluster, target: int, as_node: int, routing_id: bytes | None = None
    ) -> RoguePeer:
        """Holding member ``as_node``'s secret key (as a stolen key, or a buggy node, would)."""
        public, secret = zmq.auth.load_certificate(secret_key_path(cluster.keys_dir, as_node))
        assert secret is not None
        return cls(cluster.nodes[target].bus_port, curve=(public, secret, _server_key(cluster, target)),
                   routing_id=routing_id)

    # ---- sending ------------------------------------------------------------------

    def send(self, *frames: bytes, wait: bool = True) -> None:
        """One ZeroMQ message of these frames (``wait=False``: zmq.Again at once
        when it cannot be queued, say on a connection that was refused)."""
        self.sock.send_multipart(list(frames), 0 if wait else zmq.NOBLOCK)

    def send_message(self, msg: Message, cluster_id: str) -> None:
        self.send(encode(msg, cluster_id))

    def send_huge(self, size: int) -> None:
        """One frame of ``size`` bytes (zeros), without a copy of it here."""
        self.sock.send(memoryview(bytearray(size)), copy=False)

    # ---- what the node made of it ----------------------------------------------

    def _poll_events(self) -> None:
        while self._monitor.poll(0):
            self.events.append(recv_monitor_message(self._monitor)["event"])

    def handshake(self, timeout_s: float = 15.0) -> str:
        def first() -> str | None:
            self._poll_events()
            return next((_HANDSHAKE_EVENTS[e] for e in self.events if e in _HANDSHAKE_EVENTS), None)

        return wait_until("the rogue peer's handshake to end", first, timeout_s)

    def cut_off(self, timeout_s: float = 15.0) -> None:
        """Wait until the node closed this connection."""

        def gone() -> bool:
            self._poll_events()
            return zmq.EVENT_DISCONNECTED in self.events

        wait_until("the node to cut the rogue peer off", gone, timeout_s)

    def close(self) -> None:
        self.sock.disable_monitor()
        self._monitor.close(linger=0)
        self.sock.close(linger=0)
        self.ctx.term()

    def __enter__(self) -> RoguePeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _server_key(cluster: LocalCluster, node_id: int) -> bytes:
    public, _ = zmq.auth.load_certificate(public_key_path(cluster.keys_dir, node_id))
    return public


# ---- frames -----------------------------------------------------------------------


def forged_put(cluster_id: str, frm: int, to: int, key: bytes, value: bytes) -> bytes:
    """A Forward carrying one client put, as if node ``frm`` passed it on."""
    cmd = encode_put("rogue-" + key.decode(), 1, key, value)
    return encode(Forward(frm=frm, to=to, commands=(cmd,)), cluster_id)


def _fill(msg, rng: random.Random, ballot: peer_pb2.Ballot, depth: int = 0) -> None:  # noqa: ANN001
    """Give every field of ``msg`` a random value (ballots: ``ballot``), recursively."""
    for field in msg.DESCRIPTOR.fields:
        n = rng.randrange(1, 3) if field.is_repeated else 1
        for _ in range(n):
            if field.message_type is not None:
                if depth > 3:
                    continue
                sub = getattr(msg, field.name).add() if field.is_repeated else getattr(msg, field.name)
                if field.message_type.name == "Ballot":
                    sub.CopyFrom(ballot)
                else:
                    _fill(sub, rng, ballot, depth + 1)
                    sub.SetInParent()
                continue
            if field.type in (field.TYPE_UINT64, field.TYPE_UINT32):
                value = rng.randrange(2**64 if field.type == field.TYPE_UINT64 else 2**32)
            elif field.type == field.TYPE_BYTES:
                value = rng.randbytes(rng.randrange(40))
            elif field.type == field.TYPE_STRING:
                value = "".join(chr(rng.randrange(32, 0x2FF)) for _ in range(rng.randrange(10)))
            elif field.type == field.TYPE_BOOL:
                value = rng.random() < 0.5
            elif field.type == field.TYPE_DOUBLE:
                value = rng.uniform(-1e9, 1e9)
            else:
                continue
            if field.is_repeated:
                getattr(msg, field.name).append(value)
            else:
                setattr(msg, field.name, value)


def garbage_envelopes(rng: random.Random, cluster_id: str) -> list[list[bytes]]:
    """Messages (their frames) a node must drop: random bytes, several frames,
    random envelopes of every kind from senders that are not what they say."""
    out: list[list[bytes]] = []
    for _ in range(50):  # random bytes
        out.append([bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))])
    out.append([b""])
    out.append([b"a", b"b", b"c"])  # several frames
    out.append([b"paxoskv.bus/1", rng.randbytes(30)])  # a control message that is not one
    kinds = [f.name for f in peer_pb2.Envelope.DESCRIPTOR.oneofs_by_name["msg"].fields]
    huge_ballot = peer_pb2.Ballot(round=10**12, node=99)
    for i in range(200):  # random envelopes, every kind, senders that are not peers
        env = peer_pb2.Envelope(
            cluster_id=rng.choice([cluster_id, "", "other", "\u00e9t\u00e9"]),
            from_node=rng.choice([0, 1, 2, 3, 4, 99, 2**32 - 1]),  # real ids: identity/key mismatch
            to_node=rng.choice([0, 1, 2, 3, 77]),
        )
        kind = kinds[i % len(kinds)]
        sub = getattr(env, kind)
        _fill(sub, rng, huge_ballot)
        sub.SetInParent()
        out.append([env.SerializeToString()])
    # A well-formed Prepare with a huge ballot from another cluster, and from
    # a node that does not exist: a node must not promise it.
    for cid, frm in (("another-cluster", 2), (cluster_id, 99)):
        env = peer_pb2.Envelope(cluster_id=cid, from_node=frm, to_node=1)
        env.prepare.ballot.CopyFrom(huge_ballot)
        env.prepare.from_slot = 1
        out.append([env.SerializeToString()])
    return out


def truncated_envelopes(rng: random.Random, cluster_id: str, frm: int, to: int, n: int = 100) -> list[bytes]:
    """Well-formed envelopes of every kind from ``frm`` to ``to``, each cut short."""
    kinds = [f.name for f in peer_pb2.Envelope.DESCRIPTOR.oneofs_by_name["msg"].fields]
    ballot = peer_pb2.Ballot(round=1, node=frm)
    out = []
    for i in range(n):
        env = peer_pb2.Envelope(cluster_id=cluster_id, from_node=frm, to_node=to)
        sub = getattr(env, kinds[i % len(kinds)])
        _fill(sub, rng, ballot)
        sub.SetInParent()
        data = env.SerializeToString()
        out.append(data[: rng.randrange(1, len(data))])
    return out


# ---- raw connections --------------------------------------------------------------


def zmtp_greeting(mechanism: bytes) -> bytes:
    """The 64-byte ZMTP 3.0 greeting of a client using ``mechanism``."""
    return b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03\x00" + mechanism.ljust(20, b"\x00") + b"\x00" + b"\x00" * 31


def zmtp_null_ready(socket_type: bytes = b"DEALER") -> bytes:
    """The READY command that completes a NULL-mechanism handshake."""
    name, prop = b"Socket-Type", socket_type
    body = b"\x05READY" + bytes([len(name)]) + name + struct.pack(">I", len(prop)) + prop
    return b"\x04" + bytes([len(body)]) + body


def raw_connections(port: int, n: int, first_bytes: bytes = b"", host: str = HOST) -> list[socket.socket]:
    """``n`` TCP connections to ``port``, each sent ``first_bytes``; the caller closes them."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.create_connection((host, port), timeout=10)
            if first_bytes:
                s.sendall(first_bytes)
            socks.append(s)
    except BaseException:
        for s in socks:
            s.close()
        raise
    return socks


def closed_by_peer(s: socket.socket) -> bool:
    """The other end closed ``s`` (EOF or reset); False while it is open."""
    s.setblocking(False)
    try:
        while True:
            data = s.recv(65536)
            if not data:
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True


# ---- after every attack -----------------------------------------------------------


def assert_cluster_intact(c: LocalCluster, acked: dict[bytes, bytes], timeout_s: float = 30.0) -> None:
    """Every node serving, one more write accepted, and every node holding exactly
    the acknowledged writes at the same applied index."""
    for i, n in c.nodes.items():
        assert n.running, f"node {i} is down:\n{c.log_text(i)[-3000:]}"
    for i in c.nodes:
        c.wait_serving(i)
    c.wait_leader(timeout_s=timeout_s)
    key = b"intact-%d" % time.monotonic_ns()
    with c.client() as client:
        client.put(key, b"ok")
    acked[key] = b"ok"
    ids = sorted(c.nodes)
    index = wait_same_applied(c, ids, timeout_s)
    keys = sorted(acked)
    for i in ids:
        st = c.status(i)
        assert st is not None and st.applied_index >= index, (i, st)
        assert st.keys == len(acked), f"node {i} holds {st.keys} keys, {len(acked)} were written"
        assert read_all(c.endpoint(i), keys, serializable=True) == acked, f"node {i} differs"
