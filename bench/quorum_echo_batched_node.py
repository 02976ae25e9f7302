#!/usr/bin/env python3
"""The least a majority-durable write costs on this stack *with group
commit*, for ``bench/compare`` (system ``quorum-echo-batched``): the
throughput and CPU floor of any replicated log served this way.

``bench/quorum_echo_node.py`` syncs every put alone, so it is a latency
floor only. This node does what any replicated log must do per drain and
nothing more:

- Put/Delete/PackedBatch: the call's request bytes join the node's pending
  list. Each node has ONE disk writer: at most one synced LevelDB write in
  flight, in a thread (so the loop keeps taking calls meanwhile). When it
  is free it takes everything pending (a drain): sends this node's calls
  to every peer as ONE ZeroMQ message (a DEALER per peer -> the peer's
  ROUTER), as a leader that replicates to all followers must, and writes
  them, together with the peers' records that arrived meanwhile, in ONE
  ``sync=True`` write batch, one record per call, value = the request's
  bytes; then it acks the peers' messages it wrote. Calls that arrive
  while it writes make the next drain. A drain's calls are answered when
  this node's write and N//2 peers' acks are in (a majority: itself + 1 of
  2 peers), then applied to a dict. A PackedBatch of 100 puts is one
  record, as it is one log slot.
- Get: the same round trip without the disk (a read index's one quorum
  round), the gets of a loop iteration in one message, acked by a peer at
  once; answered from the dict.
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
import os
import signal

import grpc
import plyvel
import zmq
from google.protobuf.message import DecodeError

# bench/standin.py, beside this script
from standin import DELETE, GET_HEAD, PUT, bus_sockets, packed_answer, quorum_node_args, serve_kv

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

    __slots__ = ("missing", "counted", "writes", "reads", "nbytes")

    def __init__(self, missing: int, writes: list, reads: list, nbytes: int) -> None:
        self.missing = missing
        self.counted: set[object] = set()  # who has it: this node (None) and the peers' sockets that acked
        self.writes = writes  # (kind, request bytes, parsed request, future)
        self.reads = reads  # (key, future)
        self.nbytes = nbytes


_PARSE = {
    _PUT: kv_pb2.PutRequest.FromString,
    _DEL: kv_pb2.DeleteRequest.FromString,
    _PACKED: kv_pb2.BatchRequest.FromString,
}


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
    """A ROUTER the peers send to, a DEALER to each peer's ROUTER, and one
    disk writer: at most one synced write in flight per node, off the loop,
    holding everything that arrived while the previous one ran (this node's
    own calls and the peers' messages alike)."""

    def __init__(self, node_id: int, bus_port: int, peer_ports: list[int], db: plyvel.DB, pending_max: int) -> None:
        self.ctx = zmq.Context()
        self.router, self.dealers = bus_sockets(self.ctx, bus_port, peer_ports, _PEER_MESSAGE_BYTES_MAX)
        self.needed = (len(peer_ports) + 1) // 2  # peer copies that, with ours, make a majority
        self.db = db
        self.prefix = b"%d/" % node_id
        self.drains = 0
        self.inflight: dict[bytes, _Drain] = {}
        self.writes: list = []  # this node's calls not yet sent: (kind, bytes, parsed, future)
        self.reads: list = []  # (key, future)
        self.pending_bytes = 0  # this node's calls not yet answered
        self.pending_max = pending_max
        self.peer_records: list[tuple[bytes, bytes]] = []  # peers' records not yet written
        self.peer_acks: list[tuple[bytes, bytes]] = []  # (identity, drain) to ack once they are
        self.peer_bytes = 0
        self.reads_scheduled = False
        self.work = asyncio.Event()
        self.store: dict[bytes, bytes] = {}
        self.loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> asyncio.Task:
        """The disk writer's task (it ends only by failing: a failed write)."""
        self.loop = loop
        loop.add_reader(self.router.getsockopt(zmq.FD), self._serve_peers)
        for sock in self.dealers:
            loop.add_reader(sock.getsockopt(zmq.FD), self._acks, sock)
        return loop.create_task(self._writer())

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
        self.work.set()
        return fut

    def read(self, key: bytes) -> asyncio.Future:
        fut = self.loop.create_future()
        self.reads.append((key, fut))
        if not self.reads_scheduled:  # reads need no disk: one round per loop iteration
            self.reads_scheduled = True
            self.loop.call_soon(self._send_reads)
        return fut

    def _open(self, writes: list, reads: list, missing: int) -> bytes:
        self.drains += 1
        bid = b"%d" % self.drains
        nbytes = sum(len(w[1]) for w in writes) + sum(len(k) for k, _ in reads)
        self.inflight[bid] = _Drain(missing, writes, reads, nbytes)
        return bid

    def _send(self, frames: list) -> None:
        for sock in self.dealers:
            sock.send_multipart(frames, _NOBLOCK, copy=False)
        for sock in self.dealers:
            self._acks(sock)  # a send can take the FD's edge

    def _send_reads(self) -> None:
        self.reads_scheduled = False
        reads, self.reads = self.reads, []
        self._send([_READ, self._open([], reads, self.needed)])

    async def _writer(self) -> None:
        while True:
            await self.work.wait()
            self.work.clear()
            while self.writes or self.peer_records:
                writes, self.writes = self.writes, []
                records, self.peer_records = self.peer_records, []
                acks, self.peer_acks = self.peer_acks, []
                self.peer_bytes = 0
                bid = None
                if writes:
                    bid = self._open(writes, [], self.needed + 1)
                    self._send([_WRITE, bid, bytes(w[0] for w in writes), *(w[1] for w in writes)])
                    key = self.prefix + bid + b"/"
                    records.extend((key + b"%d" % i, w[1]) for i, w in enumerate(writes))
                await asyncio.to_thread(self._sync_write, records)
                if bid is not None:
                    self._count(bid, None)  # our own copy is on disk
                for ack in acks:
                    self.router.send_multipart(ack, _NOBLOCK)
                self._serve_peers()  # the sends can take the FD's edge; and read what waited
                for sock in self.dealers:
                    self._acks(sock)

    def _sync_write(self, records: list[tuple[bytes, bytes]]) -> None:
        with self.db.write_batch(sync=True) as wb:
            for key, data in records:
                wb.put(key, data)

    def _acks(self, sock: zmq.Socket) -> None:
        # libzmq's FD is edge-like: reading EVENTS until no input rearms it.
        while sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            frames = sock.recv_multipart(_NOBLOCK)
            if len(frames) == 1:
                self._count(frames[0], sock)

    def _count(self, bid: bytes, who: object) -> None:
        drain = self.inflight.get(bid)
        if drain is None or who in drain.counted:
            return  # a late ack (the other peer's), not ours, or a peer acking twice
        drain.counted.add(who)
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
        """Every message waiting, while the records not yet written stay
        under the bound (the rest wait in ZeroMQ, bounded by its high-water
        mark, until the writer has written these): a read is acked at once,
        a write's records go to the writer, acked once on disk."""
        sock = self.router
        store = self.store
        while self.peer_bytes <= self.pending_max and sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            frames = sock.recv_multipart(_NOBLOCK)
            if len(frames) < 3 or len(frames[2]) > _BID_BYTES_MAX or not frames[2].isdigit():
                continue
            identity, kind, bid = frames[0], frames[1], frames[2]
            if kind == _READ and len(frames) == 3:
                sock.send_multipart((identity, bid), _NOBLOCK)
                continue
            if kind != _WRITE or len(frames) < 5 or len(frames[3]) != len(frames) - 4:
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
            self.peer_records.extend((key + b"%d" % i, d) for i, d in enumerate(datas))
            self.peer_bytes += sum(len(d) for d in datas)
            self.peer_acks.append((identity, bid))
            self.work.set()


async def serve(args: argparse.Namespace) -> None:
    db = plyvel.DB(args.data_dir, create_if_missing=True, compression=None)
    quorum = GroupQuorum(args.id, args.bus_port, args.peer_bus_ports, db, args.pending_bytes)
    writer = quorum.start(asyncio.get_running_loop())

    def failed(task: asyncio.Task) -> None:  # a failed write: stop rather than answer without it
        if not task.cancelled() and task.exception() is not None:
            print(f"quorum-echo-batched node {args.id}: the disk writer failed: {task.exception()!r}", flush=True)
            os.kill(os.getpid(), signal.SIGTERM)

    writer.add_done_callback(failed)

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
        writer.cancel()
        quorum.close()
        db.close()


def main() -> None:
    ap = quorum_node_args(__doc__.splitlines()[0])
    ap.add_argument("--pending-bytes", type=int, default=64 << 20, help="request bytes pending replication, at most")
    asyncio.run(serve(ap.parse_args()))


if __name__ == "__main__":
    main()
