#!/usr/bin/env python3
"""A do-nothing ``paxoskv.v1.KV`` server, for ``bench/compare``: the ceiling
of a Python grpc.aio front end on this machine.

Rules of this node: Get, Put and Delete answer at once with a constant
response (Get: found, a 100-byte value); nothing is stored, replicated or
synced. It is served exactly as a paxoskv node serves its public port
(grpc.aio, raw-bytes handlers registered by hand, the same server options),
so the gap between this row and paxoskv's is what consensus, storage and
the node cost, and the gap between this row and etcd's is what the Python
gRPC layer alone costs. ``--sync`` serves the same with grpcio's threaded
(non-asyncio) server instead, the other front end a node could use. Binds
127.0.0.1 only; stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc

from standin import DELETE, GET, PUT, serve_kv  # bench/standin.py, beside this script

from paxoskv.server.grpc_api import SERVER_OPTIONS
from paxoskv.wire import KV_SERVICE


async def serve(port: int) -> None:
    async def put(_data: bytes, _context: object) -> bytes:
        return PUT

    async def delete(_data: bytes, _context: object) -> bytes:
        return DELETE

    async def get(_data: bytes, _context: object) -> bytes:
        return GET

    await serve_kv(port, put=put, delete=delete, get=get)


def serve_sync(port: int) -> None:
    answers = {"Put": PUT, "Delete": DELETE, "Get": GET}
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(lambda _d, _c, a=answer: a, None, lambda b: b)
        for name, answer in answers.items()
    }
    server = grpc.server(ThreadPoolExecutor(64), options=SERVER_OPTIONS)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(KV_SERVICE, handlers),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop(0.5).wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--sync", action="store_true", help="grpcio's threaded server instead of grpc.aio")
    args = ap.parse_args()
    if args.sync:
        serve_sync(args.port)
    else:
        asyncio.run(serve(args.port))


if __name__ == "__main__":
    main()
