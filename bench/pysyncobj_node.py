#!/usr/bin/env python3
"""A PySyncObj key-value node with a small gRPC front, for ``bench/compare``.

PySyncObj (a Raft library: you replicate a Python object's methods between
processes) has no client protocol of its own, so each node here also serves
the ``paxoskv.v1.KV`` gRPC service (Get, Put, Delete): the very protocol and
client code ``paxoskv bench`` uses against paxoskv, so both are driven the
same way, over the same kind of Python gRPC front end.

Rules of this node:

- Put and Delete call replicated methods; the answer waits for PySyncObj's
  callback, i.e. for the command to be committed by a majority and applied
  here. A follower forwards the command to the leader (PySyncObj does that).
- Get with ``serializable`` reads the local copy (possibly stale). A
  linearizable Get (the default) is a replicated read: a ``get`` command
  through the Raft log, answered when applied -- PySyncObj has no read
  index or lease, so that is its linearizable read.
- Durability: PySyncObj 0.3.17 never fsyncs on the write path. Its file
  journal (``--journal``) is an mmap'ed file written in the page cache and
  only flushed at shutdown; acknowledged writes survive a process crash
  (the kernel has them) but not a power loss. Log compaction keeps the
  library's defaults (an in-memory dump every 5,000 entries).
- PySyncObj runs its Raft loop in its own thread (``autoTick``); callbacks
  come from that thread and are handed to the asyncio loop with
  ``call_soon_threadsafe``.
- ``/pysyncobjbench.Load/Run`` (raw JSON in, JSON out, not part of any
  proto) runs a closed-loop load *inside this process* against its own
  SyncObj: ``inflight`` commands outstanding, each new one issued from the
  callback of the previous one, no network client at all. That is how the
  issue's reference figure for PySyncObj was taken; ``bench/compare`` shows
  it on a row of its own, beside the gRPC figures.
- Binds 127.0.0.1 only. Stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import threading
import time

import grpc
import grpc.aio
from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated

from paxoskv.v1 import kv_pb2, kv_pb2_grpc

FAIL_NAMES = {v: k for k, v in vars(FAIL_REASON).items() if not k.startswith("_")}


class KVStore(SyncObj):
    def __init__(self, self_addr: str, partners: list[str], conf: SyncObjConf) -> None:
        super().__init__(self_addr, partners, conf=conf)
        self._data: dict[bytes, bytes] = {}

    @replicated
    def put(self, key: bytes, value: bytes) -> bool:
        existed = key in self._data
        self._data[key] = value
        return existed

    @replicated
    def delete(self, key: bytes) -> bool:
        return self._data.pop(key, None) is not None

    @replicated
    def get(self, key: bytes) -> bytes | None:
        return self._data.get(key)

    def local_get(self, key: bytes) -> bytes | None:
        return self._data.get(key)


class Front(kv_pb2_grpc.KVServicer):
    def __init__(self, store: KVStore, node_id: int, loop: asyncio.AbstractEventLoop) -> None:
        self.store = store
        self.node_id = node_id
        self.loop = loop

    async def _call(self, method, *args):
        fut = self.loop.create_future()

        def done(result, error) -> None:
            self.loop.call_soon_threadsafe(_settle, fut, result, error)

        method(*args, callback=done)
        result, error = await fut
        return result, error

    def _header(self) -> kv_pb2.ResponseHeader:
        return kv_pb2.ResponseHeader(node_id=self.node_id)

    async def Put(self, request, context):
        existed, error = await self._call(self.store.put, bytes(request.key), bytes(request.value))
        if error != FAIL_REASON.SUCCESS:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"pysyncobj: {FAIL_NAMES.get(error, error)}")
        return kv_pb2.PutResponse(header=self._header(), existed=bool(existed))

    async def Delete(self, request, context):
        deleted, error = await self._call(self.store.delete, bytes(request.key))
        if error != FAIL_REASON.SUCCESS:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"pysyncobj: {FAIL_NAMES.get(error, error)}")
        return kv_pb2.DeleteResponse(header=self._header(), deleted=bool(deleted))

    async def Get(self, request, context):
        if request.serializable:
            value = self.store.local_get(bytes(request.key))
        else:
            value, error = await self._call(self.store.get, bytes(request.key))
            if error != FAIL_REASON.SUCCESS:
                await context.abort(grpc.StatusCode.UNAVAILABLE, f"pysyncobj: {FAIL_NAMES.get(error, error)}")
        return kv_pb2.GetResponse(header=self._header(), found=value is not None, value=value or b"")


def _settle(fut: asyncio.Future, result, error) -> None:
    if not fut.done():
        fut.set_result((result, error))


def in_process_load(store: KVStore, spec: dict) -> dict:
    """Closed-loop load on ``store`` from inside this process; blocks the calling thread."""
    inflight = int(spec.get("inflight", 64))
    warmup_s = float(spec.get("warmup_s", 1.0))
    duration_s = float(spec.get("duration_s", 10.0))
    keys = int(spec.get("keys", 10_000))
    read_share = float(spec.get("read_share", 0.0))
    value = os.urandom(int(spec.get("value_bytes", 100)))
    rng = random.Random(int(spec.get("seed", 1)))
    lock = threading.Lock()
    t_start = time.monotonic()
    m0, m1 = t_start + warmup_s, t_start + warmup_s + duration_s
    latencies: list[float] = []
    errors: dict[str, int] = {}
    finished = threading.Event()
    outstanding = [0]

    def issue() -> None:
        now = time.monotonic()
        if now >= m1:
            with lock:
                outstanding[0] -= 1
                if outstanding[0] == 0:
                    finished.set()
            return
        with lock:
            is_read = read_share > 0 and rng.random() < read_share
            key = b"bench/%08d" % rng.randrange(keys)

        def done(_result, error, t0=now) -> None:
            t1 = time.monotonic()
            if m0 <= t1 < m1:
                with lock:
                    if error == FAIL_REASON.SUCCESS:
                        latencies.append(t1 - t0)
                    else:
                        name = FAIL_NAMES.get(error, str(error))
                        errors[name] = errors.get(name, 0) + 1
            issue()

        if is_read:
            store.get(key, callback=done)
        else:
            store.put(key, value, callback=done)

    outstanding[0] = inflight
    for _ in range(inflight):
        issue()
    finished.wait(timeout=warmup_s + duration_s + 30.0)
    with lock:
        return {
            "ops": len(latencies),
            "duration_s": duration_s,
            "latencies_us": [round(x * 1e6) for x in latencies],
            "errors": dict(errors),
        }


async def serve(args: argparse.Namespace) -> None:
    conf = SyncObjConf(journalFile=args.journal, dynamicMembershipChange=False)
    partners = [p for p in args.partners.split(",") if p]
    store = KVStore(args.self_addr, partners, conf)
    loop = asyncio.get_running_loop()
    node_id = 1 + sorted([args.self_addr, *partners]).index(args.self_addr)
    server = grpc.aio.server()
    kv_pb2_grpc.add_KVServicer_to_server(Front(store, node_id, loop), server)

    async def run_load(request: bytes, context) -> bytes:
        spec = json.loads(request or b"{}")
        result = await asyncio.to_thread(in_process_load, store, spec)
        return json.dumps(result).encode()

    load_handler = grpc.method_handlers_generic_handler(
        "pysyncobjbench.Load",
        {"Run": grpc.unary_unary_rpc_method_handler(run_load, request_deserializer=None, response_serializer=None)},
    )
    server.add_generic_rpc_handlers((load_handler,))
    server.add_insecure_port(f"127.0.0.1:{args.grpc_port}")
    await server.start()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"pysyncobj node {args.self_addr} serving gRPC on 127.0.0.1:{args.grpc_port}", flush=True)
    await stop.wait()
    await server.stop(1.0)
    store.destroy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="run one node")
    s.add_argument("--self", dest="self_addr", required=True, help="this node's Raft address host:port")
    s.add_argument("--partners", required=True, help="the other nodes' Raft addresses, comma-separated")
    s.add_argument("--grpc-port", type=int, required=True)
    s.add_argument("--journal", default=None, help="journal file (none: in-memory log)")
    args = parser.parse_args()
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
