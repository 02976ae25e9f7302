#!/usr/bin/env python3
"""The least a majority-durable write costs on this stack *with group
commit*, for ``bench/compare`` (system ``quorum-echo-batched``): the
throughput and CPU floor of any replicated log served this way.

``bench/quorum_echo_node.py`` syncs every put alone, so it is a latency
floor only. This node does what any replicated log must do per drain and
nothing more:

- Put/Delete/PackedBatch: the call's request bytes join the node's pending
  list. Once per drain (the loop iteration after calls arrived), everything
  pending is sent to every peer as ONE ZeroMQ message (a DEALER per peer ->
  the peer's ROUTER), as a leader that replicates to all followers must,
  then written to this node's LevelDB in ONE ``sync=True`` write batch, one
  record per call, value = the request's bytes. While that fsync runs (on
  the loop) new calls queue up in gRPC and make the next drain. A peer
  writes every message it has received in ONE synced write batch and acks
  each. A drain's calls are answered when this node's write and N//2 peers'
  acks are in (a majority: itself + 1 of 2 peers), then applied to a dict.
  A PackedBatch of 100 puts is one record, as it is one log slot.
- Get: the same round trip without the disk (a read index's one quorum
  round), riding the drain's message if it has writes; answered from the
  dict.
- Every node applies what it receives to its dict (key -> value); there is
  no consensus state, no ballot, no log index, no leader, no session table:
  every node acts as the leader of the calls it gets, so nothing is
  forwarded.

Served as a paxoskv node serves its public port (``bench/standin.py``:
grpc.aio, raw-bytes handlers, the same server options); peer frames are
checked before use (a bad one is dropped, unacked); the pending bytes are
bounded (``--pending-bytes``, RESOURCE_EXHAUSTED beyond). No timer runs: an
idle node is idle. Binds 127.0.0.1 only; stops on SIGTERM/SIGINT.

Records: LevelDB key ``<origin id>/<drain number>/<index in drain>``.
"""

from __future__ import annotations

import argparse
import asyncio

import grpc
import plyvel
import zmq
from google.protobuf.message import DecodeError

from standin import DELETE, GET_HEAD, PUT, packed_answer, peer_ports, serve_kv  # bench/standin.py, beside this script

from paxoskv.protowire import len_field
from paxoskv.v1 import kv_pb2

_NOBLOCK = zmq.NOBLOCK
_WRITE, _READ = b"w", b"r"
_PUT, _DEL, _PACKED = 0x70, 0x64, 0x62  # b"p", b"d", b"b": a record's kind in a write message
_VALUE = b"\x1a"  # GetResponse.value (field 3, bytes)
_PEER_MESSAGE_BYTES_MAX = 128 << 20
_BID_BYTES_MAX = 32


class _Drain:
    """The calls of one drain, until a majority has them."""

    __slots__ = ("missing", "writes", "reads", "nbytes")

    def __init__(self, missing: int, writes: list, reads: list, nbytes: int) -> None:
        self.missing = missing
        self.writes = writes  # (kind, request bytes, parsed request, future)
        self.reads = reads  # (key, future)
        self.nbytes = nbytes


_PARSE = {_PUT: kv_pb2.PutRequest.FromString, _DEL: kv_pb2.DeleteRequest.FromString, _PACKED: kv_pb2.BatchRequest.FromString}


def _apply(store: dict[bytes, bytes], kind: int, req) -> None:
    """A parsed record (``_PARSE[kind]`` of its bytes) into the dict."""
    if kind == _PUT:
        store[req.key] = req.value
    elif kind == _DEL:
        store.pop(req.key, None)
    else:
        for op in req.ops:
            which = op.WhichOneof("op")
            if which == "put":
                store[op.put.key] = op.put.value
            elif which == "delete":
                store.pop(op.delete.key, None)


class GroupQuorum:
    def __init__(self, node_id: int, bus_port: int, peer_ports: list[int], db: plyvel.DB, pending_max: int) -> None:
        self.ctx = zmq.Context()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.setsockopt(zmq.MAXMSGSIZE, _PEER_MESSAGE_BYTES_MAX)
        self.router.bind(f"tcp://127.0.0.1:{bus_port}")
        self.needed = (len(peer_ports) + 1) // 2  # peer copies that, with ours, make a majority
        self.dealers = []
        for port in peer_ports:
            sock = self.ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(f"tcp://127.0.0.1:{port}")
            self.dealers.append(sock)
        self.db = db
        self.prefix = b"%d/" % node_id
        self.drains = 0
        self.inflight: dict[bytes, _Drain] = {}
        self.writes: list = []
        self.reads: list = []
        self.pending_bytes = 0
        self.pending_max = pending_max
        self.scheduled = False
        self.store: dict[bytes, bytes] = {}
        self.loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        loop.add_reader(self.router.getsockopt(zmq.FD), self._serve_peers)
        for sock in self.dealers:
            loop.add_reader(sock.getsockopt(zmq.FD), self._acks, sock)

    def close(self) -> None:
        self.ctx.destroy(linger=0)

    # ---- the node that took the calls -------------------------------------

    def admit(self, nbytes: int) -> bool:
        if self.pending_bytes + nbytes > self.pending_max:
            return False
        self.pending_bytes += nbytes
        return True

    def write(self, kind: int, data: bytes, req) -> asyncio.Future:
        fut = self.loop.create_future()
        self.writes.append((kind, data, req, fut))
        self._schedule()
        return fut

    def read(self, key: bytes) -> asyncio.Future:
        fut = self.loop.create_future()
        self.reads.append((key, fut))
        self._schedule()
        return fut

    def _schedule(self) -> None:
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self._drain)

    def _drain(self) -> None:
        self.scheduled = False
        writes, self.writes = self.writes, []
        reads, self.reads = self.reads, []
        self.drains += 1
        bid = b"%d" % self.drains
        nbytes = sum(len(w[1]) for w in writes) + sum(len(k) for k, _ in reads)
        drain = _Drain(self.needed + (1 if writes else 0), writes, reads, nbytes)
        self.inflight[bid] = drain
        if writes:
            frames = [_WRITE, bid, bytes(w[0] for w in writes), *(w[1] for w in writes)]
        else:
            frames = [_READ, bid]
        for sock in self.dealers:
            sock.send_multipart(frames, _NOBLOCK, copy=False)
        if writes:
            key = self.prefix + bid + b"/"
            with self.db.write_batch(sync=True) as wb:
                for i, w in enumerate(writes):
                    wb.put(key + b"%d" % i, w[1])
            self._count(bid)  # our own copy is on disk
        for sock in self.dealers:
            self._acks(sock)  # a send can take the FD's edge

    def _acks(self, sock: zmq.Socket) -> None:
        # libzmq's FD is edge-like: reading EVENTS until no input rearms it.
        while sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            frames = sock.recv_multipart(_NOBLOCK)
            if len(frames) == 1:
                self._count(frames[0])

    def _count(self, bid: bytes) -> None:
        drain = self.inflight.get(bid)
        if drain is None:
            return  # a late ack (the other peer's), or not ours
        drain.missing -= 1
        if drain.missing > 0:
            return
        del self.inflight[bid]
        self.pending_bytes -= drain.nbytes
        store = self.store
        for kind, _data, req, fut in drain.writes:
            _apply(store, kind, req)
            if not fut.done():
                fut.set_result(None)
        for key, fut in drain.reads:
            if not fut.done():
                fut.set_result(store.get(key))

    # ---- a peer's side -----------------------------------------------------

    def _serve_peers(self) -> None:
        # libzmq's FD is edge-like, and a send can take the edge: until no input is left.
        while self.router.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            self._serve_waiting()

    def _serve_waiting(self) -> None:
        """Every message waiting: the writes in one synced write batch, then an ack each."""
        sock = self.router
        acks: list[tuple[bytes, bytes]] = []
        records: list[tuple[bytes, bytes]] = []
        store = self.store
        while sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            frames = sock.recv_multipart(_NOBLOCK)
            if len(frames) < 3 or len(frames[2]) > _BID_BYTES_MAX or not frames[2].isdigit():
                continue
            identity, kind, bid = frames[0], frames[1], frames[2]
            if kind == _WRITE:
                if len(frames) < 4 or len(frames[3]) != len(frames) - 4 or not frames[3]:
                    continue
                kinds, datas = frames[3], frames[4:]
                try:
                    parsed = [_PARSE[k](d) for k, d in zip(kinds, datas, strict=True)]
                except (KeyError, DecodeError):
                    continue  # hostile or broken: not applied, not written, not acked
                for k, req in zip(kinds, parsed, strict=True):
                    _apply(store, k, req)
                # the origin's numbering, so a record's key says where it came from
                key = b"peer/" + identity.hex().encode() + b"/" + bid + b"/"
                records.extend((key + b"%d" % i, d) for i, d in enumerate(datas))
            elif kind != _READ or len(frames) != 3:
                continue
            acks.append((identity, bid))
        if records:
            with self.db.write_batch(sync=True) as wb:
                for key, data in records:
                    wb.put(key, data)
        for ack in acks:
            sock.send_multipart(ack, _NOBLOCK)


async def serve(args: argparse.Namespace) -> None:
    db = plyvel.DB(args.data_dir, create_if_missing=True, compression=None)
    quorum = GroupQuorum(args.id, args.bus_port, args.peer_bus_ports, db, args.pending_bytes)
    quorum.start(asyncio.get_running_loop())

    async def full(context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many bytes pending replication")

    def written(kind: int, answer):
        parse = _PARSE[kind]

        async def handler(data: bytes, context: grpc.aio.ServicerContext) -> bytes:
            try:
                req = parse(data)  # a record must parse on every node that applies it
            except DecodeError:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "request does not parse")
            if not quorum.admit(len(data)):
                await full(context)
            await quorum.write(kind, data, req)
            return answer(req)

        return handler

    async def get(data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            key = kv_pb2.GetRequest.FromString(data).key
        except DecodeError:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "request does not parse")
        if not quorum.admit(len(key)):
            await full(context)
        value = await quorum.read(key)
        return GET_HEAD if value is None else GET_HEAD + b"\x10\x01" + len_field(_VALUE, value)

    try:
        await serve_kv(
            args.port,
            put=written(_PUT, lambda _req: PUT),
            delete=written(_DEL, lambda _req: DELETE),
            get=get,
            more={"PackedBatch": written(_PACKED, lambda req: packed_answer(len(req.ops)))},
        )
    finally:
        quorum.close()
        db.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--id", type=int, required=True, help="this node's number (keys its records)")
    ap.add_argument("--port", type=int, required=True, help="gRPC port")
    ap.add_argument("--bus-port", type=int, required=True, help="this node's ROUTER port")
    ap.add_argument("--peer-bus-ports", type=peer_ports, required=True, help="the other nodes' ROUTER ports, a,b,...")
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--pending-bytes", type=int, default=64 << 20, help="request bytes pending replication, at most")
    asyncio.run(serve(ap.parse_args()))


if __name__ == "__main__":
    main()
