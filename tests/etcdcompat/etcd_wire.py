"""Two instruments to check the etcd wire contract without trusting our
reading of etcd's sources.

- ``compiled_descriptors(binary)``: the FileDescriptorProtos a Go binary
  built with gogo/golang protobuf carries (each registered file is stored
  gzipped); ``shape(fd)`` reduces one to what reaches the wire (names,
  numbers, types, labels, oneofs, enums, methods and their streaming), so
  ours and etcdctl's can be compared for equality.
- ``RecordingProxy(upstream)``: a gRPC server on 127.0.0.1 (free port) that
  forwards every call of etcd's services, as raw bytes, to ``upstream`` and
  records each request and response message and the call's metadata. Point
  etcdctl at it to see exactly what etcdctl sends and receives. A method
  our protos do not declare is answered UNIMPLEMENTED and recorded.
"""

from __future__ import annotations

import re
import threading
import zlib
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import DecodeError

from paxoskv.etcdpb import rpc_pb2

_GZIP_MAGIC = re.compile(rb"\x1f\x8b\x08\x00\x00\x00\x00\x00")
_SCAN_BYTES_MAX = 1 << 20


def compiled_descriptors(binary: str) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    """Every gzipped FileDescriptorProto found in the file ``binary``, by file name."""
    with open(binary, "rb") as f:
        data = f.read()
    found: dict[str, descriptor_pb2.FileDescriptorProto] = {}
    for m in _GZIP_MAGIC.finditer(data):
        try:
            raw = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data[m.start():m.start() + _SCAN_BYTES_MAX])
        except zlib.error:
            continue
        fd = descriptor_pb2.FileDescriptorProto()
        try:
            fd.ParseFromString(raw)
        except DecodeError:
            continue
        if fd.name and fd.package and (fd.message_type or fd.service or fd.enum_type):
            found.setdefault(fd.name, fd)
    return found


def _enum_shape(e: descriptor_pb2.EnumDescriptorProto) -> tuple[Any, ...]:
    return (e.name, tuple((v.name, v.number) for v in e.value))


def _message_shape(m: descriptor_pb2.DescriptorProto) -> tuple[Any, ...]:
    oneofs = [o.name for o in m.oneof_decl]
    fields = tuple(
        sorted(
            (f.number, f.name, f.type, f.label, f.type_name, oneofs[f.oneof_index] if f.HasField("oneof_index") else "")
            for f in m.field
        )
    )
    return (
        m.name,
        fields,
        tuple(sorted(_message_shape(n) for n in m.nested_type)),
        tuple(sorted(_enum_shape(e) for e in m.enum_type)),
    )


def shape(fd: descriptor_pb2.FileDescriptorProto) -> dict[str, Any]:
    """What of ``fd`` reaches the wire, keyed by kind and name (so a diff
    names the declaration that differs). Options, comments, json names
    and declaration order are left out."""
    out: dict[str, Any] = {"package": fd.package}
    for m in fd.message_type:
        out[f"message {m.name}"] = _message_shape(m)
    for e in fd.enum_type:
        out[f"enum {e.name}"] = _enum_shape(e)
    for s in fd.service:
        for meth in s.method:
            out[f"rpc {s.name}.{meth.name}"] = (
                meth.input_type, meth.output_type, meth.client_streaming, meth.server_streaming,
            )
    return out


# ---- the recording proxy ----------------------------------------------------------


def etcd_methods() -> dict[str, MethodDescriptor]:
    """Every method of our etcdserverpb services, by gRPC path."""
    return {
        f"/{svc.full_name}/{m.name}": m
        for svc in rpc_pb2.DESCRIPTOR.services_by_name.values()
        for m in svc.methods
    }


@dataclass
class Call:
    """One call the proxy forwarded: raw messages both ways, as they went."""

    method: str
    metadata: tuple[tuple[str, str], ...]
    requests: list[bytes] = field(default_factory=list)
    responses: list[bytes] = field(default_factory=list)
    code: grpc.StatusCode | None = None  # None: OK
    details: str = ""


_NO_DEADLINE_S = 1e9
_FORWARDED_METADATA_SKIP = ("user-agent", "grpc-", ":")


class RecordingProxy:
    """Forward etcd's API to ``upstream``, recording each call (see module doc)."""

    def __init__(self, upstream: str, workers: int = 32) -> None:
        self.upstream = upstream
        self.calls: list[Call] = []
        self.unknown_methods: list[str] = []
        self._lock = threading.Lock()
        self._channel = grpc.insecure_channel(upstream)
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
        self._server.add_generic_rpc_handlers((_Handler(self),))
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self.endpoint = f"127.0.0.1:{self.port}"

    def __enter__(self) -> RecordingProxy:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop(grace=None).wait()
        self._channel.close()

    def take(self) -> list[Call]:
        """The calls recorded since the last take."""
        with self._lock:
            calls, self.calls = self.calls, []
        return calls

    def _record(self, call: Call) -> None:
        with self._lock:
            self.calls.append(call)


class _Handler(grpc.GenericRpcHandler):
    def __init__(self, proxy: RecordingProxy) -> None:
        self.proxy = proxy
        self.methods = etcd_methods()

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = details.method
        desc = self.methods.get(method)
        if desc is None:
            with self.proxy._lock:
                self.proxy.unknown_methods.append(method)
            return None
        cs, ss = desc.client_streaming, desc.server_streaming
        ch = self.proxy._channel
        if not cs and not ss:
            return grpc.unary_unary_rpc_method_handler(self._unary(ch.unary_unary(method), method))
        if not cs and ss:
            return grpc.unary_stream_rpc_method_handler(self._server_stream(ch.unary_stream(method), method))
        assert cs and ss, f"{method}: etcd has no client-streaming method"
        return grpc.stream_stream_rpc_method_handler(self._bidi(ch.stream_stream(method), method))

    def _start(self, method: str, context: grpc.ServicerContext) -> tuple[Call, list[tuple[str, str]]]:
        md = [(k, v) for k, v in context.invocation_metadata() if not k.startswith(_FORWARDED_METADATA_SKIP)]
        call = Call(method, tuple(md))
        self.proxy._record(call)
        return call, md

    @staticmethod
    def _fail(call: Call, exc: grpc.RpcError, context: grpc.ServicerContext) -> None:
        call.code, call.details = exc.code(), exc.details()
        context.abort(exc.code(), exc.details())

    def _unary(self, upstream: Any, method: str) -> Any:
        def handle(request: bytes, context: grpc.ServicerContext) -> bytes:
            call, md = self._start(method, context)
            call.requests.append(request)
            try:
                resp = upstream(request, metadata=md, timeout=_timeout(context))
            except grpc.RpcError as exc:
                self._fail(call, exc, context)
            call.responses.append(resp)
            return resp
        return handle

    def _server_stream(self, upstream: Any, method: str) -> Any:
        def handle(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
            call, md = self._start(method, context)
            call.requests.append(request)
            yield from self._relay(upstream(request, metadata=md), call, context)
        return handle

    def _bidi(self, upstream: Any, method: str) -> Any:
        def handle(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
            call, md = self._start(method, context)
            yield from self._relay(upstream(_tee(requests, call.requests), metadata=md), call, context)
        return handle

    def _relay(self, stream: Any, call: Call, context: grpc.ServicerContext) -> Iterator[bytes]:
        """Upstream's responses to the client; the client's end cancels upstream."""
        context.add_callback(stream.cancel)
        try:
            for resp in stream:
                call.responses.append(resp)
                yield resp
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                self._fail(call, exc, context)


def _timeout(context: grpc.ServicerContext) -> float | None:
    """The caller's deadline (grpcio reports "none" as about 9.2e18 s)."""
    left = context.time_remaining()
    return None if left is None or left > _NO_DEADLINE_S else max(0.0, left)


def _tee(requests: Iterator[bytes], into: list[bytes]) -> Iterator[bytes]:
    """The client's messages on their way upstream; ends when the client's
    side of the call ends (also by cancellation, which the upstream call
    learns through the callback that cancels it)."""
    try:
        for r in requests:
            into.append(r)
            yield r
    except grpc.RpcError:
        return


def request_type(method: str) -> type:
    """Our message class of ``method``'s request."""
    return _message_class(etcd_methods()[method].input_type.name)


def response_type(method: str) -> type:
    return _message_class(etcd_methods()[method].output_type.name)


def _message_class(name: str) -> type:
    return getattr(rpc_pb2, name)
