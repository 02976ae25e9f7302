"""The public gRPC facade of a node: ``paxoskv.v1.KV``, ``paxoskv.v1.Maintenance``,
standard health checking and server reflection (v1 and v1alpha), on one
``grpc.aio`` server.

Rules (the status codes a client sees, one per cause, are the README's
"Errors are gRPC status codes" list, and a test holds each):

- Every call is answered from the node it reached; the node forwards writes
  and linearizable reads to the leader over the peer bus.
- Nothing is written when a call is refused with INVALID_ARGUMENT,
  FAILED_PRECONDITION, RESOURCE_EXHAUSTED or PERMISSION_DENIED; after
  UNAVAILABLE or DEADLINE_EXCEEDED a write may or may not be applied (retry
  it with the same ``(client_id, sequence)``). ``Range`` and ``Txn`` refuse
  with etcd's codes and words.
- Deadlines: a call gets the caller's remaining deadline less a small margin
  (the answer, even a failure, arrives first), at most ``request_timeout_s``.
- Exactly-once: a Put/Delete/Txn whose ``RequestHeader`` names a client_id
  and a sequence is applied at most once however often it is retried; without
  one the node makes up a client_id and a retry may apply twice.
- Health: ``""`` and each added service report SERVING from ``mark_serving()``
  until ``shutdown()`` or the node's failure. Another facade on the port
  (etcd's API) adds its services with ``add_service`` before ``start()``, so
  the port's TLS, client-certificate check, admin gate and limits cover it.
- Limits (``FacadeLimits``; each flag in the README's serve table): a message
  over ``--max-request-bytes`` + 512 KiB is refused by gRPC, a smaller one
  over it and a batch over ``--max-batch-ops`` by the node layer; the bytes
  all calls hold stay under ``--max-pending-mb``; a batch's answer stays
  under the message limit; a ``Session`` stream holds at most
  ``--max-stream-requests`` requests and ``--max-stream-bytes`` unanswered,
  and is not read while full (HTTP/2 flow control stops its client).
- Handlers are registered by hand on raw bytes (a garbage body is our
  INVALID_ARGUMENT, not grpc's INTERNAL), parsed with ``FromString``, and
  touch the context only for errors and the deadline: grpc.aio's per-call
  cost is the front end's floor. SO_REUSEPORT is off (a second node on the
  port fails to bind).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import hashlib
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, Protocol

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from paxoskv import wire
from paxoskv.protowire import len_field, varint
from paxoskv.server.public import AdminGate, FacadeLimits, ServerTLS
from paxoskv.wire import KV_SERVICE, MAINTENANCE_SERVICE, MESSAGE_BYTES_MAX
from paxoskv.replica.errors import (
    DeadlineExceeded,
    EtcdFailure,
    FailedPrecondition,
    InvalidArgument,
    NodeError,
    ResourceExhausted,
    Unavailable,
    Unimplemented,
)
from paxoskv.reflection.v1 import reflection_pb2 as reflection_v1_pb2
from paxoskv.v1 import kv_pb2

__all__ = [
    "call_timeout_s",
    "snapshot_stream",
    "BindError",
    "Facade",
    "NodeLike",
    "SERVER_OPTIONS",
    "server_options",
]

log = logging.getLogger("paxoskv.grpc")


# Answer this much before the caller's deadline (fraction of what remains,
# capped), so even a failure arrives while the caller still listens.
DEADLINE_MARGIN_FRACTION = 0.05
DEADLINE_MARGIN_S_MAX = 0.05


def server_options(limits: FacadeLimits) -> tuple[tuple[str, int], ...]:
    """The grpc server's options for ``limits``."""
    return (
        ("grpc.so_reuseport", 0),
        ("grpc.max_receive_message_length", limits.receive_bytes_max),
        ("grpc.max_send_message_length", MESSAGE_BYTES_MAX),
        ("grpc.max_concurrent_streams", limits.concurrent_streams_max),
        ("grpc.max_allowed_incoming_connections", limits.connections_max),
        ("grpc.server_handshake_timeout_ms", limits.handshake_timeout_ms),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    )


SERVER_OPTIONS = server_options(FacadeLimits())

# A batch's answer: its values stay this far under the message limit, room
# for the headers and per-op errors of up to the op limit.
ANSWER_MARGIN_BYTES = 2 << 20

_INVALID = wire.INVALID
_UNAVAILABLE = wire.UNAVAILABLE
_DEADLINE = wire.DEADLINE
_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


class _Held:
    """Bytes of requests and answers the facade holds, every call together,
    under ``max``: ``take`` refuses what would pass it; ``add`` counts what
    exists anyway (an answer already made)."""

    __slots__ = ("bytes", "max")

    def __init__(self, max_bytes: int) -> None:
        self.bytes = 0
        self.max = max_bytes

    def take(self, n: int) -> bool:
        if self.bytes + n > self.max:
            return False
        self.bytes += n
        return True

    def add(self, n: int) -> None:
        self.bytes += n

    def give(self, n: int) -> None:
        self.bytes -= n

    def refusal(self, n: int) -> str:
        return (
            f"node is holding {self.bytes >> 20} MiB of pending requests and answers; {n} bytes more would pass "
            f"its limit of {self.max >> 20} MiB (--max-pending-mb): retry later"
        )


REFLECTION_V1_SERVICE = reflection_v1_pb2.DESCRIPTOR.services_by_name["ServerReflection"].full_name


def _add_reflection(server: grpc.aio.Server, services: Sequence[str]) -> None:
    """Server reflection, v1 and v1alpha: one grpcio-reflection servicer behind
    both paths (v1's messages are v1alpha's on the wire,
    tests/unit/test_reflection_v1.py); the generated v1 module puts v1's
    descriptor in the pool, so a client can describe it too."""
    names = (*services, REFLECTION_V1_SERVICE, reflection.SERVICE_NAME)
    servicer = reflection.aio.ReflectionServicer(names)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    v1 = {
        "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
        )
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(REFLECTION_V1_SERVICE, v1),))


class BindError(Exception):
    """The public port could not be bound; ``str(err)`` is one line."""


class NodeLike(Protocol):
    """What the facade needs of a node (``paxoskv.server.node.Node`` has it).
    Each call answers with results or raises a ``NodeError``."""

    @property
    def leader_id(self) -> int | None: ...

    async def put(self, req: kv_pb2.PutRequest, *, timeout_s: float) -> kv_pb2.CommandResult: ...

    async def delete(self, req: kv_pb2.DeleteRequest, *, timeout_s: float) -> kv_pb2.CommandResult: ...

    async def get(self, req: kv_pb2.GetRequest, *, timeout_s: float) -> tuple[bytes | None, int, int]: ...

    async def scan(self, req: kv_pb2.RangeRequest, *, timeout_s: float) -> tuple[Any, int]: ...

    async def txn(self, req: kv_pb2.TxnRequest, *, timeout_s: float) -> tuple[Any, int]: ...

    async def ops(
        self,
        ops: Sequence[kv_pb2.RequestOp],
        *,
        timeout_s: float,
        request: kv_pb2.RequestHeader | None = None,
        raw: bytes | None = None,
    ) -> list[object]: ...

    def open_snapshot(self) -> Any: ...

    def status(self) -> kv_pb2.StatusResponse: ...


class _Abort(Exception):
    """Internal: end the call with ``code`` and ``details`` (and metadata)."""

    def __init__(self, code: grpc.StatusCode, details: str, metadata: tuple = ()) -> None:
        super().__init__(details)
        self.code = code
        self.details = details
        self.metadata = metadata


def _error_of(exc: NodeError) -> _Abort:
    if isinstance(exc, InvalidArgument):
        return _Abort(_INVALID, str(exc))
    if isinstance(exc, Unavailable):
        md: tuple = ()
        if exc.leader_id and exc.leader_addr:
            md = wire.leader_hint(exc.leader_id, exc.leader_addr)
        return _Abort(_UNAVAILABLE, str(exc), md)
    if isinstance(exc, DeadlineExceeded):
        return _Abort(_DEADLINE, str(exc))
    if isinstance(exc, FailedPrecondition):
        return _Abort(wire.STALE, str(exc))
    if isinstance(exc, Unimplemented):
        return _Abort(wire.UNIMPLEMENTED, str(exc))
    if isinstance(exc, ResourceExhausted):
        return _Abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
    if isinstance(exc, EtcdFailure):  # Range and Txn run etcd's rules: etcd's code and words
        return _Abort(grpc.StatusCode[exc.code], exc.message)
    return _Abort(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")


class Facade:
    """The gRPC server of one node. ``bind()``, ``start()``, ``shutdown()``."""

    def __init__(
        self,
        node: NodeLike,
        node_id: int,
        *,
        request_timeout_s: float = 10.0,
        limits: FacadeLimits | None = None,
        tls: ServerTLS | None = None,
        admin_cns: Sequence[str] = (),
    ) -> None:
        assert request_timeout_s > 0, request_timeout_s
        assert not admin_cns or (tls is not None and tls.client_cert_auth), "--admin-cn needs client certificates"
        self.node = node
        self.node_id = node_id
        self.request_timeout_s = request_timeout_s
        self.limits = limits or FacadeLimits()
        self.tls = tls
        self.health = HealthServicer()
        self.server = grpc.aio.server(
            options=server_options(self.limits),
            maximum_concurrent_rpcs=self.limits.concurrent_rpcs_max,
            interceptors=[AdminGate(admin_cns)] if admin_cns else None,
        )
        self.port: int | None = None
        self.services: list[str] = []
        self._held = _Held(self.limits.pending_bytes_max)
        self._register()

    @property
    def held_bytes(self) -> int:
        """Bytes of requests and answers held now, every call together."""
        return self._held.bytes

    # ---- lifecycle ----------------------------------------------------------

    def bind(self, address: str) -> int:
        """Bind ``host:port`` (port 0: any free one); return the port."""
        _probe_bind(address)
        try:
            if self.tls is None:
                port = self.server.add_insecure_port(address)
            else:
                port = self.server.add_secure_port(address, self.tls.credentials())
        except RuntimeError as exc:
            raise BindError(
                f"cannot listen on {address} ({exc}): is another process using the port? "
                f"pick another --port or --listen"
            ) from None
        if port == 0:  # older grpc reports failure this way
            raise BindError(f"cannot listen on {address}: pick another --port or --listen")
        self.port = port
        return port

    async def start(self) -> None:
        _add_reflection(self.server, (*self.services, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name))
        for service in ("", *self.services):
            await self.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.start()

    async def mark_serving(self) -> None:
        for service in ("", *self.services):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)

    async def shutdown(self, grace_s: float = 1.0) -> None:
        """NOT_SERVING, then stop accepting calls; give running ones ``grace_s``."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)

    # ---- registration ---------------------------------------------------------

    def add_service(self, name: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        """Serve ``handlers`` (method name -> handler) as service ``name`` on
        this port, with its health status and reflection (before ``start``)."""
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
        self.server.add_registered_method_handlers(name, handlers)
        self.services.append(name)

    def held(self, fn):  # noqa: ANN001, ANN201 - a unary handler taking raw bytes
        """``fn`` with its request's bytes counted under ``--max-pending-mb``
        while it runs (RESOURCE_EXHAUSTED when they would pass it)."""
        held = self._held

        async def handler(data: bytes, context: grpc.aio.ServicerContext) -> object:
            n = len(data)
            if not held.take(n):
                await context.abort(_EXHAUSTED, held.refusal(n))
            try:
                return await fn(data, context)
            finally:
                held.give(n)

        return handler

    def _register(self) -> None:
        ser = _serialize
        held = self.held
        self.add_service(
            KV_SERVICE,
            {
                "Get": grpc.unary_unary_rpc_method_handler(held(self._get), None, ser),
                "Put": grpc.unary_unary_rpc_method_handler(held(self._put), None, ser),
                "Delete": grpc.unary_unary_rpc_method_handler(held(self._delete), None, ser),
                "Batch": grpc.unary_unary_rpc_method_handler(held(self._batch), None, ser),
                "PackedBatch": grpc.unary_unary_rpc_method_handler(held(self._packed_batch), None, ser),
                "Session": grpc.stream_stream_rpc_method_handler(self._session, None, ser),
                "Range": grpc.unary_unary_rpc_method_handler(held(self._range), None, ser),
                "Txn": grpc.unary_unary_rpc_method_handler(held(self._txn), None, ser),
            },
        )
        self.add_service(
            MAINTENANCE_SERVICE,
            {
                "Status": grpc.unary_unary_rpc_method_handler(self._status, None, ser),
                "Snapshot": grpc.unary_stream_rpc_method_handler(self._snapshot, None, ser),
            },
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)

    # ---- handlers ---------------------------------------------------------------

    def _timeout_s(self, context: grpc.aio.ServicerContext) -> float:
        return call_timeout_s(context, self.request_timeout_s)

    def _header(self, index: int, revision: int = 0) -> kv_pb2.ResponseHeader:
        return kv_pb2.ResponseHeader(
            node_id=self.node_id, leader_id=self.node.leader_id or 0, index=index, revision=revision
        )

    async def _fail(self, context: grpc.aio.ServicerContext, exc: Exception) -> None:
        err = exc if isinstance(exc, _Abort) else _error_of(exc)  # type: ignore[arg-type]
        if err.metadata:
            context.set_trailing_metadata(err.metadata)
        await context.abort(err.code, err.details)

    async def _get(self, data: bytes, context: grpc.aio.ServicerContext) -> object:
        try:
            req = _parse(kv_pb2.GetRequest, data)
            value, index, revision = await self.node.get(req, timeout_s=self._timeout_s(context))
        except (NodeError, _Abort) as exc:
            await self._fail(context, exc)
            raise
        if value is None:
            return kv_pb2.GetResponse(header=self._header(index, revision), found=False)
        return kv_pb2.GetResponse(header=self._header(index, revision), found=True, value=value)

    async def _put(self, data: bytes, context: grpc.aio.ServicerContext) -> object:
        try:
            req = _parse(kv_pb2.PutRequest, data)
            result = await self.node.put(req, timeout_s=self._timeout_s(context))
        except (NodeError, _Abort) as exc:
            await self._fail(context, exc)
            raise
        return kv_pb2.PutResponse(header=self._header(result.index, result.revision), existed=result.existed)

    async def _delete(self, data: bytes, context: grpc.aio.ServicerContext) -> object:
        try:
            req = _parse(kv_pb2.DeleteRequest, data)
            result = await self.node.delete(req, timeout_s=self._timeout_s(context))
        except (NodeError, _Abort) as exc:
            await self._fail(context, exc)
            raise
        return kv_pb2.DeleteResponse(header=self._header(result.index, result.revision), deleted=result.existed)

    # ---- ranges and transactions --------------------------------------------------

    async def _range(self, data: bytes, context: grpc.aio.ServicerContext) -> object:
        try:
            req = _parse(kv_pb2.RangeRequest, data)
            found, index = await self.node.scan(req, timeout_s=self._timeout_s(context))
            size = found.ByteSize()
            if size > MESSAGE_BYTES_MAX - ANSWER_MARGIN_BYTES:
                raise _Abort(
                    _EXHAUSTED,
                    f"the answer would be {size} bytes, over the limit of {MESSAGE_BYTES_MAX - ANSWER_MARGIN_BYTES}: "
                    f"read fewer keys per call (limit, then continue after the last key)",
                )
            if not self._held.take(size):
                raise _Abort(_EXHAUSTED, self._held.refusal(size))
        except (NodeError, _Abort) as exc:
            await self._fail(context, exc)
            raise
        try:
            return kv_pb2.RangeResponse(
                header=self._header(index, found.header.revision), kvs=found.kvs, more=found.more, count=found.count
            ).SerializeToString()
        finally:
            self._held.give(size)

    async def _txn(self, data: bytes, context: grpc.aio.ServicerContext) -> object:
        try:
            req = _parse(kv_pb2.TxnRequest, data)
            result, index = await self.node.txn(req, timeout_s=self._timeout_s(context))
        except (NodeError, _Abort) as exc:
            await self._fail(context, exc)
            raise
        if isinstance(result, kv_pb2.CommandResult):  # a retry of a Txn applied before
            return kv_pb2.TxnResponse(
                header=self._header(index, result.revision), succeeded=result.succeeded, replayed=True
            )
        return kv_pb2.TxnResponse(
            header=self._header(index, result.header.revision), succeeded=result.succeeded, responses=result.responses
        )

    # ---- many operations per call ----------------------------------------------

    def _op_error(self, exc: Exception) -> bytes:
        err = exc if isinstance(exc, _Abort) else _error_of(exc)  # type: ignore[arg-type]
        return kv_pb2.ResponseOp(code=err.code.value[0], error=err.details).SerializeToString()

    async def _run_ops(  # noqa: ANN001
        self,
        ops,
        timeout_s: float,
        raw: bytes | None = None,
        request: kv_pb2.RequestHeader | None = None,
        *,
        answer_bytes_max: int,
        whole: bool = False,
        tag: bytes = b"",
    ) -> list[bytes]:
        """Each operation's encoded ``ResponseOp``, in order (the node layer's
        ``ops`` decides; this only encodes), their values together at most
        ``answer_bytes_max``; ``tag``: each one framed as that
        length-delimited field. ``whole`` (a Batch or PackedBatch call): a call
        the node refused as a whole as invalid or unimplemented raises
        ``_Abort``; otherwise each op gets the call's error."""
        try:
            outcomes = await self.node.ops(ops, timeout_s=timeout_s, request=request, raw=raw)
        except NodeError as exc:
            if whole and isinstance(exc, (InvalidArgument, Unimplemented)):
                raise _error_of(exc) from None
            failed = self._op_error(exc)
            return [len_field(tag, failed) if tag else failed] * len(ops)
        return self._responses(ops, outcomes, answer_bytes_max, tag)

    def _responses(self, ops, outcomes, answer_bytes_max: int, tag: bytes = b"") -> list[bytes]:  # noqa: ANN001
        """The encoded ResponseOp of each op (``tag``: framed as that field).
        Successful writes of one slot share their result objects (the state
        machine's, alive through this loop): each (result, kind) is encoded
        and framed once. A get whose value would take the values past
        ``answer_bytes_max`` is answered RESOURCE_EXHAUSTED instead."""
        made: dict[tuple[int, bool], bytes] = {}
        node_id = self.node_id
        leader_id = self.node.leader_id or 0
        room = answer_bytes_max
        out: list[bytes] = []
        if tag:
            frame = len_field
            append = lambda data: out.append(frame(tag, data))  # noqa: E731
        else:
            append = out.append
        for op, r in zip(ops, outcomes):
            if isinstance(r, Exception):
                append(self._op_error(r))
                continue
            kind = op.WhichOneof("op")
            if kind == "get":
                value, index, revision = r
                resp = kv_pb2.GetResponse(header=self._header(index, revision), found=value is not None)
                if value is not None:
                    if len(value) > room:
                        append(self._op_error(_Abort(
                            _EXHAUSTED,
                            f"the answer would pass {answer_bytes_max} bytes with this value of {len(value)}: "
                            f"read fewer or smaller values per call",
                        )))
                        continue
                    room -= len(value)
                    resp.value = value
                append(kv_pb2.ResponseOp(get=resp).SerializeToString())
                continue
            is_put = kind == "put"
            key = (id(r), is_put)
            data = made.get(key)
            if data is None:
                header = kv_pb2.ResponseHeader(node_id=node_id, leader_id=leader_id, index=r.index, revision=r.revision)
                if is_put:
                    msg = kv_pb2.ResponseOp(put=kv_pb2.PutResponse(header=header, existed=r.existed))
                else:
                    msg = kv_pb2.ResponseOp(delete=kv_pb2.DeleteResponse(header=header, deleted=r.existed))
                data = msg.SerializeToString()
                if tag:
                    data = len_field(tag, data)
                made[key] = data
            out.append(data)
        return out

    async def _packed_batch(self, data: bytes, context: grpc.aio.ServicerContext) -> object:
        return await self._batch(data, context, packed=True)

    async def _batch(self, data: bytes, context: grpc.aio.ServicerContext, packed: bool = False) -> object:
        try:
            req = _parse(kv_pb2.BatchRequest, data)
            if req.HasField("request") != packed:
                raise _Abort(
                    _INVALID,
                    "KV.PackedBatch needs `request` (the call's client_id and first sequence)"
                    if packed
                    else "a packed batch (`request` set) goes to KV.PackedBatch, not KV.Batch",
                )
        except _Abort as exc:
            await self._fail(context, exc)
            raise
        try:
            results = await self._run_ops(
                req.ops,
                self._timeout_s(context),
                raw=data,
                request=req.request if req.HasField("request") else None,
                answer_bytes_max=MESSAGE_BYTES_MAX - ANSWER_MARGIN_BYTES,
                whole=True,
                tag=b"\x12",
            )
        except _Abort as exc:
            await self._fail(context, exc)
            raise
        # BatchResponse, encoded by hand: header (field 1), then each result (field 2, framed above).
        results.insert(0, len_field(b"\x0a", self._header(0).SerializeToString()))
        return b"".join(results)

    async def _session(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        """Answer each SessionRequest as it completes, paired by id. Requests
        that arrive within one turn of the event loop go to the node together
        (a group stays under --max-request-bytes). While the stream holds
        --max-stream-requests requests, or --max-stream-bytes of them and
        their answers, it is not read (see the module rules)."""
        loop = asyncio.get_running_loop()
        limits = self.limits
        requests_max, bytes_max = limits.stream_requests_max, limits.stream_bytes_max
        group_bytes_max = limits.request_bytes_max
        node_held = self._held
        out: asyncio.Queue[bytes | None] = asyncio.Queue()
        running: set[asyncio.Task] = set()
        pending: list[tuple[kv_pb2.SessionRequest, int]] = []
        room = asyncio.Event()
        room.set()
        timeout_s = self.request_timeout_s
        # What this stream holds: requests read and not yet answered and sent,
        # and the bytes of those requests or of their answers. Every byte
        # counted here is counted in node_held too.
        held = {"requests": 0, "bytes": 0, "group": 0}
        closed = False

        def answer(resp: bytes, freed: int) -> None:
            """Queue an answer; its request's ``freed`` bytes are let go."""
            if closed:
                return
            n = len(resp)
            held["bytes"] += n - freed
            node_held.add(n)
            node_held.give(freed)
            out.put_nowait(resp)

        def refuse(rid: int, code: grpc.StatusCode, why: str) -> None:
            held["requests"] += 1
            answer(_session_response(rid, kv_pb2.ResponseOp(code=code.value[0], error=why).SerializeToString()), 0)

        async def run(group: list[tuple[kv_pb2.SessionRequest, int]]) -> None:
            results = await self._run_ops([r.op for r, _ in group], timeout_s, answer_bytes_max=bytes_max)
            for (r, n), res in zip(group, results):
                answer(_session_response(r.id, res), n)

        def flush() -> None:
            if not pending:
                return
            group = pending[:]
            pending.clear()
            held["group"] = 0
            task = asyncio.create_task(run(group))
            running.add(task)
            task.add_done_callback(running.discard)

        async def read() -> None:
            it = requests.__aiter__()
            try:
                while True:
                    while held["requests"] >= requests_max or held["bytes"] >= bytes_max:
                        room.clear()
                        await room.wait()  # the writer sets it as answers leave
                    try:
                        data = await it.__anext__()
                    except StopAsyncIteration:
                        break
                    try:
                        req = kv_pb2.SessionRequest.FromString(data)
                    except (DecodeError, ValueError, TypeError) as exc:
                        refuse(0, _INVALID, f"malformed request: {exc}")
                        continue
                    n = len(data)
                    if not node_held.take(n):
                        refuse(req.id, _EXHAUSTED, node_held.refusal(n))
                        continue
                    held["requests"] += 1
                    held["bytes"] += n
                    if pending and held["group"] + n > group_bytes_max:
                        flush()
                    if not pending:
                        loop.call_soon(flush)
                    pending.append((req, n))
                    held["group"] += n
                flush()
                while running:
                    await asyncio.gather(*list(running))
            finally:
                out.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while True:
                resp = await out.get()
                if resp is None:
                    break
                yield resp
                n = len(resp)
                held["requests"] -= 1
                held["bytes"] -= n
                node_held.give(n)
                if held["requests"] < requests_max and held["bytes"] < bytes_max:
                    room.set()
        finally:
            closed = True
            reader.cancel()
            for task in list(running):
                task.cancel()
            node_held.give(held["bytes"])
            held["bytes"] = 0

    async def _snapshot(self, data: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[object]:
        try:
            request = _parse(kv_pb2.SnapshotRequest, data)
        except _Abort as exc:
            await self._fail(context, exc)
            raise
        async for resp in snapshot_stream(self.node, request, context):
            yield resp

    async def _status(self, data: bytes, context: grpc.aio.ServicerContext) -> object:
        try:
            _parse(kv_pb2.StatusRequest, data)
            return self.node.status()
        except (NodeError, _Abort) as exc:
            await self._fail(context, exc)
            raise


def call_timeout_s(context: grpc.aio.ServicerContext, request_timeout_s: float) -> float:
    """The time a node may spend on a call: the caller's remaining deadline
    less the margin, never more than ``request_timeout_s``."""
    remaining = context.time_remaining()
    if remaining is None:
        return request_timeout_s
    remaining -= min(DEADLINE_MARGIN_S_MAX, remaining * DEADLINE_MARGIN_FRACTION)
    return max(0.0, min(remaining, request_timeout_s))


def _probe_bind(address: str) -> None:
    """Raise ``BindError`` if ``address`` cannot be bound, before grpc tries.

    grpc's C core logs its own multi-line complaint on a failed bind; this
    check, made the way grpc binds (SO_REUSEADDR), keeps the message ours.
    """
    host, _, port_text = address.rpartition(":")
    host = host.strip("[]")
    try:
        infos = socket.getaddrinfo(
            host or None, int(port_text), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except (OSError, ValueError) as exc:
        raise BindError(f"cannot listen on {address} ({exc}): check --listen") from None
    family, type_, proto, _, sockaddr = infos[0]
    with socket.socket(family, type_, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(sockaddr)
        except OSError as exc:
            raise BindError(
                f"cannot listen on {address} ({exc.strerror}): is another process using the "
                f"port? pick another --port or --listen"
            ) from None


def _serialize(msg: object) -> bytes:
    if type(msg) is bytes:  # encoded by hand already (Batch, Session)
        return msg
    return msg.SerializeToString()  # type: ignore[attr-defined]


def _session_response(rid: int, result: bytes) -> bytes:
    """An encoded SessionResponse: id (field 1, omitted when 0) + result (field 2)."""
    head = b"\x08" + varint(rid) if rid else b""
    return head + len_field(b"\x12", result)


def _parse(cls: type, data: bytes):  # noqa: ANN202 - returns an instance of cls
    try:
        return cls.FromString(data)
    except (DecodeError, ValueError, TypeError) as exc:
        raise _Abort(
            _INVALID, f"malformed {cls.DESCRIPTOR.full_name} ({len(data)} bytes): {exc}"
        ) from None


# ---- Maintenance.Snapshot ---------------------------------------------------------

STREAM_CHUNK_BYTES = 512 << 10  # under gRPC's default 4 MiB message limit


async def snapshot_stream(
    node: NodeLike, request: kv_pb2.SnapshotRequest, context: Any
) -> AsyncIterator[kv_pb2.SnapshotResponse]:
    """Stream a consistent snapshot of ``node``'s applied state. Every
    response carries the applied index; the last one also ``total_bytes``
    and ``sha256`` of the whole stream. The node keeps serving and writing
    meanwhile: the view is a storage snapshot, the chunks are produced in a
    worker thread."""
    try:
        source = await asyncio.to_thread(node.open_snapshot)
    except NodeError as exc:
        await context.abort(_UNAVAILABLE, f"{exc}: retry shortly")
        return
    chunks: Iterator[bytes] | None = None
    try:
        index = source.applied_index
        chunks = source.chunks(STREAM_CHUNK_BYTES)
        digest = hashlib.sha256()
        total = 0
        pending = await asyncio.to_thread(next, chunks, None)
        while pending is not None:
            following = await asyncio.to_thread(next, chunks, None)
            digest.update(pending)
            total += len(pending)
            response = kv_pb2.SnapshotResponse(data=pending, applied_index=index)
            if following is None:
                response.total_bytes = total
                response.sha256 = digest.digest()
            yield response
            pending = following
    finally:
        await asyncio.to_thread(_close_all, chunks, source)


def _close_all(chunks: Iterator[bytes] | None, source: Any) -> None:
    if chunks is not None and hasattr(chunks, "close"):
        chunks.close()  # releases the storage iterators it holds, now
    source.close()
