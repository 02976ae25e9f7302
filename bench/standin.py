"""The front end of ``bench/compare``'s stand-in servers (``bench/echo_node.py``,
``bench/quorum_echo_node.py``, ``bench/quorum_echo_batched_node.py``,
which import it from beside them):
``paxoskv.v1.KV`` served exactly as a node serves its public port (grpc.aio,
raw-bytes handlers registered by hand, the same server options), with
constant answers, on 127.0.0.1 only."""

from __future__ import annotations

import argparse
import asyncio
import functools
import signal
from collections.abc import Awaitable, Callable

import grpc
import zmq

from paxoskv.server.grpc_api import SERVER_OPTIONS
from paxoskv.v1 import kv_pb2
from paxoskv.wire import KV_SERVICE

_HEADER = kv_pb2.ResponseHeader(node_id=1, leader_id=1, index=1)
PUT = kv_pb2.PutResponse(header=_HEADER).SerializeToString()
DELETE = kv_pb2.DeleteResponse(header=_HEADER, deleted=True).SerializeToString()
GET = kv_pb2.GetResponse(header=_HEADER, found=True, value=b"v" * 100).SerializeToString()
GET_HEAD = kv_pb2.GetResponse(header=_HEADER).SerializeToString()  # not found; + found and value fields if it is
_PUT_RESULT = kv_pb2.ResponseOp(put=kv_pb2.PutResponse(header=_HEADER))


@functools.lru_cache(maxsize=64)
def packed_answer(n: int) -> bytes:
    """A BatchResponse of ``n`` successful puts."""
    return kv_pb2.BatchResponse(header=_HEADER, results=[_PUT_RESULT] * n).SerializeToString()


def bus_sockets(
    ctx: zmq.Context, bus_port: int, peer_ports: list[int], message_bytes_max: int = -1
) -> tuple[zmq.Socket, list[zmq.Socket]]:
    """A ROUTER on ``bus_port`` (127.0.0.1) the peers send to, and a DEALER to each of ``peer_ports``."""
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.setsockopt(zmq.MAXMSGSIZE, message_bytes_max)
    router.bind(f"tcp://127.0.0.1:{bus_port}")
    dealers = []
    for port in peer_ports:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(f"tcp://127.0.0.1:{port}")
        dealers.append(sock)
    return router, dealers


def quorum_node_args(description: str) -> argparse.ArgumentParser:
    """The options every quorum stand-in node takes (add its own after)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--id", type=int, required=True, help="this node's number (keys its records)")
    ap.add_argument("--port", type=int, required=True, help="gRPC port")
    ap.add_argument("--bus-port", type=int, required=True, help="this node's ROUTER port")
    ap.add_argument("--peer-bus-ports", type=_peer_ports, required=True, help="the other nodes' ROUTER ports, a,b,...")
    ap.add_argument("--data-dir", required=True)
    return ap


def _peer_ports(text: str) -> list[int]:
    """argparse type: a comma-separated list of ports, at least one."""
    try:
        ports = [int(p) for p in text.split(",") if p]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of ports: {text!r}") from None
    if not ports:
        raise argparse.ArgumentTypeError("at least one peer port")
    return ports


Handler = Callable[[bytes, object], Awaitable[bytes]]


async def serve_kv(
    port: int, *, put: Handler, delete: Handler, get: Handler, more: dict[str, Handler] | None = None
) -> None:
    """Serve Put, Delete and Get with these handlers (request bytes in,
    response bytes out), and the KV methods named in ``more``, until SIGTERM
    or SIGINT."""

    def raw(b: bytes) -> bytes:
        return b

    handlers = {
        name: grpc.unary_unary_rpc_method_handler(fn, None, raw)
        for name, fn in (("Put", put), ("Delete", delete), ("Get", get), *(more or {}).items())
    }
    server = grpc.aio.server(options=SERVER_OPTIONS)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(KV_SERVICE, handlers),))
    server.add_registered_method_handlers(KV_SERVICE, handlers)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(0.5)
