"""How one operation reaches each kind of server: the only target-specific code.

Rules:

- The client is raw and the same for every target: each method is a
  ``channel.unary_unary(path)`` (or ``stream_stream``) without serializers,
  bytes in, bytes out. What differs between targets is the method paths and
  the request bytes, nothing else: no per-call protobuf message is built.
  Each process encodes a key's request body once, on first use, with the
  generated messages (``_Table``); what changes per call (paxoskv's
  exactly-once header, the list of a batch's ops) is joined by hand from
  ``paxoskv.protowire`` pieces, which the tests parse back with protobuf.
  Unary answers are not parsed (gRPC's status says whether the call
  succeeded); a paxoskv batch's answer is, once per call, for its per-op
  codes, and so is a stream's, for the id it answers.
- A ``Target`` names the service it speaks (``paxoskv``: ``paxoskv.v1.KV``;
  ``etcd``: etcd's v3 ``etcdserverpb.KV``) and the modes it supports.
  ``Target.codec(workload, value)`` is a process's encoder,
  ``Target.connect(channel, mode=...)`` an ``Endpoint`` (the raw methods of
  one channel), and ``Target.slot(endpoints, codec, client_id, ...)`` the
  ``SlotClient`` one closed-loop slot drives.
- A slot sends its calls to the endpoints it is given in turn, from
  ``endpoints[first]`` (which endpoints: ``worker._slot_endpoints``).
- A ``SlotClient`` has ``get(i)``, ``put(i)`` (``i`` a key index, see
  ``workload.key_name``) and ``batch(ops)`` (``ops``: ``(is_read, i)``
  pairs). A failed operation raises ``OpFailed`` with the gRPC status code's
  name, and so does a failed batch call; a batch that was answered returns
  one code name (or ``None``) per operation.
- paxoskv writes are exactly-once: each slot is its own client session
  (``client_id``, ``sequence`` + 1 per write), as a real client would be. A
  failed write is not retried; the next one takes the next sequence. Mode
  ``batch`` sends ``KV.PackedBatch`` (one ``BatchRequest.request`` for the
  call, the k-th put has sequence first + k), ``batch-per-op`` ``KV.Batch``
  with a header in every put. etcd has no such header; its ``batch`` is one
  ``Txn`` whose ``success`` branch holds the ops, without compares: one
  revision for the call, as paxoskv's batch is one log slot.
- Reads are linearizable unless the workload says ``serializable``
  (``GetRequest.serializable``, ``RangeRequest.serializable``).
- Mode ``stream`` (paxoskv only): the slots of a process that use the same
  endpoint share one ``KV.Session`` stream; requests carry an id and the
  answers, in any order, complete the matching future. A broken stream fails
  its pending operations and the next operation opens a new one.

Adding a mode: give the targets that can do it a way to send it, and give
``worker.MODE_LOOPS`` a loop for it.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import grpc
import grpc.aio

from paxoskv.bench.workload import Workload, key_name
from paxoskv.protowire import len_field, varint
from paxoskv.v1 import kv_pb2

__all__ = ["CHANNEL_OPTIONS", "TARGETS", "Endpoint", "OpFailed", "SlotClient", "Target", "code_name"]

_CODE_NAMES: dict[int, str] = {sc.value[0]: sc.name for sc in grpc.StatusCode}

CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.max_send_message_length", 64 << 20),
    # Every channel of a process gets its own connection (no sharing of
    # subchannels between channels that name the same address).
    ("grpc.use_local_subchannel_pool", 1),
    # No retry policy is configured, so gRPC never retries a call anyway;
    # this takes its retry layer out of every call's path (less client CPU).
    ("grpc.enable_retries", 0),
)


def code_name(code: int) -> str:
    return _CODE_NAMES.get(code, f"CODE_{code}")


class OpFailed(Exception):
    """One operation failed; ``code`` is the gRPC status code's name."""

    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code


class SlotClient(Protocol):
    async def get(self, i: int) -> None: ...

    async def put(self, i: int) -> None: ...

    async def batch(self, ops: list[tuple[bool, int]]) -> list[OpFailed | None]: ...


class Endpoint(Protocol):
    async def close(self) -> None: ...


class Target(Protocol):
    name: str
    service: str  # the gRPC service it calls, e.g. "etcdserverpb.KV"
    modes: frozenset[str]

    def codec(self, workload: Workload, value: bytes) -> Any: ...

    def connect(self, channel: grpc.aio.Channel, *, mode: str) -> Endpoint: ...

    def slot(
        self, endpoints: Sequence[Endpoint], codec: Any, client_id: str, *, first: int, timeout_s: float
    ) -> SlotClient: ...


def _rpc_failed(exc: grpc.aio.AioRpcError) -> OpFailed:
    return OpFailed(exc.code().name, exc.details() or "")


def method_paths(pb_module: Any, service: str) -> dict[str, str]:
    """``{"Put": "/etcdserverpb.KV/Put", ...}`` from a generated module's
    descriptor: no method path is typed by hand."""
    svc = pb_module.DESCRIPTOR.services_by_name[service]
    return {m.name: f"/{svc.full_name}/{m.name}" for m in svc.methods}


def _unary(channel: grpc.aio.Channel, path: str) -> Any:
    """A raw unary method: bytes in, bytes out, registered once per channel."""
    return channel.unary_unary(path, _registered_method=True)


class _Table:
    """A key index's encoded bytes, built on first use and kept."""

    __slots__ = ("_items", "_make")

    def __init__(self, keys: int, make: Callable[[int], bytes]) -> None:
        self._items: list[bytes | None] = [None] * keys
        self._make = make

    def __getitem__(self, i: int) -> bytes:
        b = self._items[i]
        if b is None:
            b = self._items[i] = self._make(i)
        return b


class _KeyBodies:
    """A target's per-key request bytes: a read's body (``read_cls(key,
    serializable)``), a write's (``write_cls(key, value)``), and each as one
    entry of a batch's repeated op field. The only thing that differs
    between targets is which messages and tags these are."""

    __slots__ = ("read", "write", "read_entry", "write_entry")

    def __init__(
        self, workload: Workload, value: bytes, read_cls: Any, write_cls: Any,
        read_entry: tuple[bytes, bytes], write_entry: tuple[bytes, bytes],
    ) -> None:
        """``*_entry``: (tag of the batch's op field, tag of the op's oneof
        field): the entry is the body wrapped in both."""
        ser, keys = workload.serializable, workload.keys
        self.read = _Table(keys, lambda i: read_cls(key=key_name(i), serializable=ser).SerializeToString())
        self.write = _Table(keys, lambda i: write_cls(key=key_name(i), value=value).SerializeToString())
        self.read_entry = _Table(keys, lambda i: len_field(read_entry[0], len_field(read_entry[1], self.read[i])))
        self.write_entry = _Table(keys, lambda i: len_field(write_entry[0], len_field(write_entry[1], self.write[i])))

    def entries(self, ops: list[tuple[bool, int]]) -> bytes:
        """The batch's op field, one entry per op, in order."""
        rd, wr = self.read_entry, self.write_entry
        return b"".join([rd[i] if is_read else wr[i] for is_read, i in ops])


async def _call(method: Any, body: bytes, timeout_s: float) -> bytes:
    try:
        return await method(body, timeout=timeout_s)
    except grpc.aio.AioRpcError as exc:
        raise _rpc_failed(exc) from None


def _rotation(endpoints: Sequence[Any], first: int) -> Callable[[], Any]:
    """The endpoints in turn, from ``endpoints[first % n]``: a C-level ``next``."""
    n = len(endpoints)
    k = first % n
    return itertools.cycle([*endpoints[k:], *endpoints[:k]]).__next__


# ---- paxoskv ------------------------------------------------------------------

# field tags of paxoskv.v1 messages (number << 3 | wire type)
_T1_LEN = b"\x0a"  # field 1, bytes: RequestHeader.client_id, PutRequest.request, BatchRequest.ops, RequestOp.get
_T2_LEN = b"\x12"  # field 2, bytes: RequestOp.put, BatchRequest.request, SessionRequest.op
_T1_VARINT = b"\x08"  # field 1, varint: SessionRequest.id
_T2_VARINT = b"\x10"  # field 2, varint: RequestHeader.sequence

_PAXOS_PATHS = method_paths(kv_pb2, "KV")


class _PaxosCodec:
    """paxoskv.v1 request bytes of one process (see the module's rules)."""

    def __init__(self, workload: Workload, value: bytes) -> None:
        # A write's body is PutRequest's key and value (fields 2, 3): the
        # header goes in front. Entries: BatchRequest.ops of RequestOp.get /
        # RequestOp.put (a packed batch's put: no header).
        self.keys = _KeyBodies(workload, value, kv_pb2.GetRequest, kv_pb2.PutRequest, (_T1_LEN, _T1_LEN), (_T1_LEN, _T2_LEN))
        self.get = self.keys.read

    @staticmethod
    def client_field(client_id: str) -> bytes:
        return len_field(_T1_LEN, client_id.encode())

    @staticmethod
    def header(client_field: bytes, seq: int) -> bytes:
        """A RequestHeader's bytes."""
        return client_field + _T2_VARINT + varint(seq)

    def put_body(self, client_field: bytes, seq: int, i: int) -> bytes:
        """A PutRequest with its header."""
        return len_field(_T1_LEN, self.header(client_field, seq)) + self.keys.write[i]

    def packed_batch(self, ops: list[tuple[bool, int]], client_field: bytes, first_seq: int) -> bytes:
        """BatchRequest of ``ops``, its puts headerless, the call's header
        (``first_seq``) last; no header when the batch has no put."""
        body = self.keys.entries(ops)
        if any(not is_read for is_read, _ in ops):
            body += len_field(_T2_LEN, self.header(client_field, first_seq))
        return body

    def batch_per_op(self, ops: list[tuple[bool, int]], client_field: bytes, first_seq: int) -> bytes:
        """BatchRequest of ``ops``, a header in every put (first_seq, +1 ...)."""
        parts = []
        seq = first_seq
        for is_read, i in ops:
            if is_read:
                parts.append(self.keys.read_entry[i])
            else:
                parts.append(len_field(_T1_LEN, len_field(_T2_LEN, self.put_body(client_field, seq, i))))
                seq += 1
        return b"".join(parts)

    def session_request(self, rid: int, op: bytes) -> bytes:
        """SessionRequest(id=rid, op=op); ``op`` is a RequestOp's bytes."""
        return _T1_VARINT + varint(rid) + len_field(_T2_LEN, op)

    def get_request_op(self, i: int) -> bytes:
        return len_field(_T1_LEN, self.get[i])

    def put_request_op(self, client_field: bytes, seq: int, i: int) -> bytes:
        return len_field(_T2_LEN, self.put_body(client_field, seq, i))


class _PaxosSession:
    """One ``KV.Session`` stream shared by the slots of one endpoint.

    A writer task owns ``call.write`` (one write at a time, in order); a
    reader task completes the futures. Either one ending fails every pending
    operation and closes the stream; the next ``call`` opens a new one.
    """

    def __init__(self, method: Any) -> None:
        self._method = method
        self._queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._pending: dict[int, asyncio.Future[kv_pb2.ResponseOp]] = {}
        self._next_id = 0
        self._call: Any = None
        self._tasks: list[asyncio.Task] = []

    def _open(self) -> None:
        call = self._method()
        self._call = call
        self._queue = asyncio.Queue()
        self._tasks = [asyncio.create_task(self._write(call, self._queue)), asyncio.create_task(self._read(call))]

    async def _write(self, call: Any, queue: asyncio.Queue) -> None:
        try:
            while True:
                await call.write(await queue.get())
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as exc:
            failure = _rpc_failed(exc) if isinstance(exc, grpc.aio.AioRpcError) else OpFailed("UNAVAILABLE", str(exc))
            if call.done():  # a write after the RPC ended: report why it ended
                failure = OpFailed((await call.code()).name, await call.details() or "")
            self._broken(call, failure)

    async def _read(self, call: Any) -> None:
        failure = OpFailed("UNAVAILABLE", "session stream ended")
        try:
            async for raw in call:
                resp = kv_pb2.SessionResponse.FromString(raw)
                fut = self._pending.pop(resp.id, None)
                if fut is not None and not fut.done():
                    fut.set_result(resp.result)
        except grpc.aio.AioRpcError as exc:
            failure = _rpc_failed(exc)
        except Exception as exc:  # an answer that does not parse  # noqa: BLE001
            failure = OpFailed("PROTOCOL", f"bad SessionResponse: {exc}")
        self._broken(call, failure)

    def _broken(self, call: Any, failure: OpFailed) -> None:
        if self._call is not call:
            return
        self._call = None
        call.cancel()
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(failure)

    async def call(self, codec: _PaxosCodec, op: bytes, timeout_s: float) -> None:
        if self._call is None:
            self._open()
        self._next_id += 1
        rid = self._next_id
        fut: asyncio.Future[kv_pb2.ResponseOp] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        self._queue.put_nowait(codec.session_request(rid, op))
        try:
            async with asyncio.timeout(timeout_s):
                result = await fut
        except TimeoutError:
            self._pending.pop(rid, None)
            raise OpFailed("DEADLINE_EXCEEDED", "no answer on the session stream") from None
        if result.code != 0:
            raise OpFailed(code_name(result.code), result.error)

    async def close(self) -> None:
        if self._call is not None:
            self._broken(self._call, OpFailed("CANCELLED", "session closed"))
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class _PaxosEndpoint:
    """The raw paxoskv.v1.KV methods of one channel."""

    def __init__(self, channel: grpc.aio.Channel, *, mode: str) -> None:
        p = _PAXOS_PATHS
        self.get = _unary(channel, p["Get"])
        self.put = _unary(channel, p["Put"])
        self.batch = _unary(channel, p["Batch"])
        self.packed_batch = _unary(channel, p["PackedBatch"])
        self.session = (
            _PaxosSession(channel.stream_stream(p["Session"], _registered_method=True)) if mode == "stream" else None
        )
        self.packed = mode == "batch"  # batch-per-op: a header per write

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()


def _batch_failures(raw: bytes, n: int) -> list[OpFailed | None]:
    """Each op's failure (its code and the server's own message), None for a success."""
    try:
        results = kv_pb2.BatchResponse.FromString(raw).results
    except Exception:  # noqa: BLE001 - a body that does not parse is the server's fault
        return [OpFailed("PROTOCOL", "a BatchResponse that does not parse")] * n
    if len(results) != n:
        return [OpFailed("PROTOCOL", f"{len(results)} results for {n} operations")] * n
    return [None if r.code == 0 else OpFailed(code_name(r.code), r.error) for r in results]


class _PaxosSlot:
    __slots__ = ("_next", "_codec", "_client", "_seq", "_timeout_s")

    def __init__(
        self, endpoints: Sequence[_PaxosEndpoint], codec: _PaxosCodec, client_id: str, first: int, timeout_s: float
    ) -> None:
        self._next = _rotation(endpoints, first)
        self._codec = codec
        self._client = codec.client_field(client_id)
        self._seq = 0
        self._timeout_s = timeout_s

    async def get(self, i: int) -> None:
        ep = self._next()
        if ep.session is not None:
            await ep.session.call(self._codec, self._codec.get_request_op(i), self._timeout_s)
            return
        await _call(ep.get, self._codec.get[i], self._timeout_s)

    async def put(self, i: int) -> None:
        ep = self._next()
        self._seq += 1
        if ep.session is not None:
            await ep.session.call(self._codec, self._codec.put_request_op(self._client, self._seq, i), self._timeout_s)
            return
        await _call(ep.put, self._codec.put_body(self._client, self._seq, i), self._timeout_s)

    async def batch(self, ops: list[tuple[bool, int]]) -> list[OpFailed | None]:
        ep = self._next()
        codec = self._codec
        writes = sum(1 for is_read, _ in ops if not is_read)
        first = self._seq + 1
        self._seq += writes
        try:
            if ep.packed and writes:
                try:
                    raw = await ep.packed_batch(codec.packed_batch(ops, self._client, first), timeout=self._timeout_s)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                        raise
                    # Nothing was applied (a cluster not known to take packed
                    # batches everywhere yet, e.g. just after an election):
                    # this call per op, with new sequences.
                    first = self._seq + 1
                    self._seq += writes
                    raw = await ep.batch(codec.batch_per_op(ops, self._client, first), timeout=self._timeout_s)
            else:
                raw = await ep.batch(codec.batch_per_op(ops, self._client, first), timeout=self._timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise _rpc_failed(exc) from None
        return _batch_failures(raw, len(ops))


class PaxosKVTarget:
    name = "paxoskv"
    service = kv_pb2.DESCRIPTOR.services_by_name["KV"].full_name
    modes = frozenset({"unary", "batch", "batch-per-op", "stream"})

    def codec(self, workload: Workload, value: bytes) -> _PaxosCodec:
        return _PaxosCodec(workload, value)

    def connect(self, channel: grpc.aio.Channel, *, mode: str) -> _PaxosEndpoint:
        return _PaxosEndpoint(channel, mode=mode)

    def slot(self, endpoints, codec, client_id, *, first, timeout_s) -> _PaxosSlot:
        return _PaxosSlot(endpoints, codec, client_id, first, timeout_s)


# ---- etcd ---------------------------------------------------------------------

_T2_SUCCESS = b"\x12"  # TxnRequest.success (field 2, bytes)


class _EtcdCodec:
    """etcdserverpb request bytes of one process."""

    def __init__(self, workload: Workload, value: bytes) -> None:
        from paxoskv.etcdpb import rpc_pb2

        # Entries: TxnRequest.success of RequestOp.request_range (field 1) /
        # RequestOp.request_put (field 2).
        self.keys = _KeyBodies(
            workload, value, rpc_pb2.RangeRequest, rpc_pb2.PutRequest, (_T2_SUCCESS, b"\x0a"), (_T2_SUCCESS, b"\x12")
        )
        self.range, self.put = self.keys.read, self.keys.write

    def txn(self, ops: list[tuple[bool, int]]) -> bytes:
        """TxnRequest: no compares, ``ops`` in its success branch."""
        return self.keys.entries(ops)


def _etcd_paths() -> dict[str, str]:
    from paxoskv.etcdpb import rpc_pb2

    return method_paths(rpc_pb2, "KV")


class _EtcdEndpoint:
    """The raw etcdserverpb.KV methods of one channel (any server's)."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        p = _etcd_paths()
        self.range = _unary(channel, p["Range"])
        self.put = _unary(channel, p["Put"])
        self.txn = _unary(channel, p["Txn"])

    async def close(self) -> None:
        return None


class _EtcdSlot:
    __slots__ = ("_next", "_codec", "_timeout_s")

    def __init__(self, endpoints: Sequence[_EtcdEndpoint], codec: _EtcdCodec, first: int, timeout_s: float) -> None:
        self._next = _rotation(endpoints, first)
        self._codec = codec
        self._timeout_s = timeout_s

    async def get(self, i: int) -> None:
        await _call(self._next().range, self._codec.range[i], self._timeout_s)

    async def put(self, i: int) -> None:
        await _call(self._next().put, self._codec.put[i], self._timeout_s)

    async def batch(self, ops: list[tuple[bool, int]]) -> list[OpFailed | None]:
        """One Txn: all of its ops or none (etcd applies a txn atomically)."""
        await _call(self._next().txn, self._codec.txn(ops), self._timeout_s)
        return [None] * len(ops)


class EtcdTarget:
    name = "etcd"
    modes = frozenset({"unary", "batch"})

    @property
    def service(self) -> str:
        from paxoskv.etcdpb import rpc_pb2

        return rpc_pb2.DESCRIPTOR.services_by_name["KV"].full_name

    def codec(self, workload: Workload, value: bytes) -> _EtcdCodec:
        return _EtcdCodec(workload, value)

    def connect(self, channel: grpc.aio.Channel, *, mode: str) -> _EtcdEndpoint:
        assert mode in self.modes, mode
        return _EtcdEndpoint(channel)

    def slot(self, endpoints, codec, client_id, *, first, timeout_s) -> _EtcdSlot:
        return _EtcdSlot(endpoints, codec, first, timeout_s)


TARGETS: dict[str, Target] = {"paxoskv": PaxosKVTarget(), "etcd": EtcdTarget()}
