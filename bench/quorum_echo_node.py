#!/usr/bin/env python3
"""The least a majority-durable write costs on this stack, for
``bench/compare``: a ``paxoskv.v1.KV`` server that does the peer round trip
and the fsyncs a quorum needs, and nothing else.

Rules of this node (N of them; each knows the others' ZeroMQ ports):
- Put/Delete: send the request bytes over ZeroMQ (a DEALER per peer -> the
  peer's ROUTER), then write them to this node's LevelDB with ``sync=True``,
  on the loop; a peer writes them to its LevelDB with ``sync=True`` and
  answers; the call is answered once this node's write and N//2 peers'
  answers are in: a majority of synced copies. No consensus, no log, no
  state machine, no leader: every node acts as the leader of the calls it
  gets, so nothing is forwarded.
- Get: the same round trip without the disk (what a read index needs at
  least: one quorum round).
- ``--fanout all`` (the default) sends to every peer, as a leader that
  replicates to all followers must (paxoskv, etcd); ``--fanout thrifty``
  sends to the first N//2 peers only, the floor of a "thrifty" leader.

Everything is served the way a paxoskv node serves it: grpc.aio with the
same raw-bytes handlers and server options, pyzmq sockets read from the
loop through their file descriptor, plyvel. So the gap between this row and
``grpc-echo`` is the wire and the disk a quorum write must pay, and the gap
between this row and paxoskv's is what the consensus runtime adds on top.
Binds 127.0.0.1 only; stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools

import plyvel
import zmq

from standin import DELETE, GET, PUT, bus_sockets, quorum_node_args, serve_kv  # bench/standin.py, beside this script

_NOBLOCK = zmq.NOBLOCK
_WRITE, _READ = b"w", b"r"


class _Call:
    __slots__ = ("future", "missing")

    def __init__(self, future: asyncio.Future, missing: int) -> None:
        self.future = future
        self.missing = missing


class Quorum:
    """A ROUTER the peers send to, a DEALER to each peer's ROUTER."""

    def __init__(self, node_id: int, bus_port: int, peer_ports: list[int], db: plyvel.DB, fanout: str) -> None:
        self.ctx = zmq.Context()
        self.needed = (len(peer_ports) + 1) // 2  # peer copies that, with ours, make a majority
        targets = peer_ports if fanout == "all" else peer_ports[: self.needed]
        self.router, self.dealers = bus_sockets(self.ctx, bus_port, targets)
        self.db = db
        self.prefix = b"%d/" % node_id
        self.ids = itertools.count()
        self.calls: dict[bytes, _Call] = {}

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.add_reader(self.router.getsockopt(zmq.FD), self._serve_peers)
        for sock in self.dealers:
            loop.add_reader(sock.getsockopt(zmq.FD), self._answers, sock)

    def close(self) -> None:
        self.ctx.destroy(linger=0)

    def _serve_peers(self) -> None:
        # A peer's request: persist a write, then answer.
        sock = self.router
        while sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            identity, kind, rid, data = sock.recv_multipart(_NOBLOCK)
            if kind == _WRITE:
                self.db.put(rid, data, sync=True)
            sock.send_multipart((identity, rid), _NOBLOCK)

    def _answers(self, sock: zmq.Socket) -> None:
        # libzmq's FD is edge-like: reading EVENTS until no input rearms it.
        while sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            (rid,) = sock.recv_multipart(_NOBLOCK)
            call = self.calls.get(rid)
            if call is None:
                continue  # a late answer for a call already answered
            call.missing -= 1
            if call.missing <= 0:
                del self.calls[rid]
                if not call.future.done():
                    call.future.set_result(None)

    async def replicate(self, kind: bytes, data: bytes) -> None:
        rid = self.prefix + b"%d" % next(self.ids)
        call = _Call(asyncio.get_running_loop().create_future(), self.needed)
        self.calls[rid] = call
        for sock in self.dealers:
            sock.send_multipart((kind, rid, data), _NOBLOCK)
            self._answers(sock)  # a send can take the FD's edge
        if kind == _WRITE:
            self.db.put(rid, data, sync=True)  # our own copy, while the peers write theirs
        try:
            await call.future
        finally:
            self.calls.pop(rid, None)


async def serve(args: argparse.Namespace) -> None:
    db = plyvel.DB(args.data_dir, create_if_missing=True, compression=None)
    quorum = Quorum(args.id, args.bus_port, args.peer_bus_ports, db, args.fanout)
    quorum.start(asyncio.get_running_loop())

    async def put(data: bytes, _context: object) -> bytes:
        await quorum.replicate(_WRITE, data)
        return PUT

    async def delete(data: bytes, _context: object) -> bytes:
        await quorum.replicate(_WRITE, data)
        return DELETE

    async def get(data: bytes, _context: object) -> bytes:
        await quorum.replicate(_READ, data)
        return GET

    try:
        await serve_kv(args.port, put=put, delete=delete, get=get)
    finally:
        quorum.close()
        db.close()


def main() -> None:
    ap = quorum_node_args(__doc__.splitlines()[0])
    ap.add_argument("--fanout", choices=("all", "thrifty"), default="all")
    asyncio.run(serve(ap.parse_args()))


if __name__ == "__main__":
    main()
