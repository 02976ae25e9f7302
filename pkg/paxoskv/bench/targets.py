"""How one operation reaches each kind of server: the only target-specific code.

Rules:

- A ``Target`` names the protocol spoken (``paxoskv``: the ``paxoskv.v1.KV``
  service; ``etcd``: etcd's v3 ``etcdserverpb.KV`` service) and the modes it
  supports. ``Target.connect(channel)`` gives an ``Endpoint`` (one per gRPC
  channel); ``Endpoint.slot(client_id)`` gives the ``SlotClient`` one
  closed-loop slot drives.
- A ``SlotClient`` has ``get(key)``, ``put(key, value)`` and, where the mode
  is ``batch``, ``batch(ops, value)``. A failed operation raises ``OpFailed``
  with the gRPC status code's name; ``batch`` returns one code name (or
  ``None`` for success) per operation instead.
- paxoskv writes are exactly-once: each slot is its own client session
  (``client_id``, ``sequence`` + 1 per write), as a real client would be. A
  failed write is not retried by the benchmark; the next one simply takes
  the next sequence. etcd has no such header. Mode ``batch`` sends packed
  batches (``KV.PackedBatch``: one ``BatchRequest.request`` for the call,
  the k-th put has sequence first + k), mode ``batch-per-op`` ``KV.Batch``
  with a header in every put.
- Reads are linearizable unless the workload says ``serializable`` (paxoskv
  ``GetRequest.serializable``, etcd ``RangeRequest.serializable``).
- Mode ``stream`` (paxoskv only): every slot of a process that uses the same
  endpoint shares one ``KV.Session`` stream; requests carry an id and the
  answers, in any order, complete the matching future. A broken stream fails
  its pending operations (they count as errors) and the next operation
  opens a new one.

Adding a mode: give the targets that can do it a way to send it, and give
``worker.MODE_LOOPS`` a loop for it.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

import grpc
import grpc.aio

from paxoskv.v1 import kv_pb2, kv_pb2_grpc

__all__ = ["TARGETS", "Endpoint", "OpFailed", "SlotClient", "Target", "code_name"]

_CODE_NAMES: dict[int, str] = {sc.value[0]: sc.name for sc in grpc.StatusCode}

CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.max_send_message_length", 64 << 20),
    # Every channel of a process gets its own connection (no sharing of
    # subchannels between channels that name the same address).
    ("grpc.use_local_subchannel_pool", 1),
)


def code_name(code: int) -> str:
    return _CODE_NAMES.get(code, f"CODE_{code}")


class OpFailed(Exception):
    """One operation failed; ``code`` is the gRPC status code's name."""

    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code


class SlotClient(Protocol):
    async def get(self, key: bytes) -> None: ...

    async def put(self, key: bytes, value: bytes) -> None: ...

    async def batch(self, ops: list[tuple[bool, bytes]], value: bytes) -> list[OpFailed | None]: ...


class Endpoint(Protocol):
    def slot(self, client_id: str) -> SlotClient: ...

    async def close(self) -> None: ...


class Target(Protocol):
    name: str
    modes: frozenset[str]

    def connect(self, channel: grpc.aio.Channel, *, mode: str, serializable: bool, timeout_s: float) -> Endpoint: ...


def _rpc_failed(exc: grpc.aio.AioRpcError) -> OpFailed:
    return OpFailed(exc.code().name, exc.details() or "")


# ---- paxoskv ------------------------------------------------------------------


class _PaxosSession:
    """One ``KV.Session`` stream shared by the slots of one endpoint.

    A writer task owns ``call.write`` (one write at a time, in order); a
    reader task completes the futures. Either one ending fails every pending
    operation and closes the stream; the next ``call`` opens a new one.
    """

    def __init__(self, stub: kv_pb2_grpc.KVStub) -> None:
        self._stub = stub
        self._queue: asyncio.Queue[kv_pb2.SessionRequest] = asyncio.Queue()
        self._pending: dict[int, asyncio.Future[kv_pb2.ResponseOp]] = {}
        self._next_id = 0
        self._call: Any = None
        self._tasks: list[asyncio.Task] = []

    def _open(self) -> None:
        call = self._stub.Session()
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
            async for resp in call:
                fut = self._pending.pop(resp.id, None)
                if fut is not None and not fut.done():
                    fut.set_result(resp.result)
        except grpc.aio.AioRpcError as exc:
            failure = _rpc_failed(exc)
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

    async def call(self, op: kv_pb2.RequestOp, timeout_s: float) -> kv_pb2.ResponseOp:
        if self._call is None:
            self._open()
        self._next_id += 1
        rid = self._next_id
        fut: asyncio.Future[kv_pb2.ResponseOp] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        self._queue.put_nowait(kv_pb2.SessionRequest(id=rid, op=op))
        try:
            async with asyncio.timeout(timeout_s):
                return await fut
        except TimeoutError:
            self._pending.pop(rid, None)
            raise OpFailed("DEADLINE_EXCEEDED", "no answer on the session stream") from None

    async def close(self) -> None:
        if self._call is not None:
            self._broken(self._call, OpFailed("CANCELLED", "session closed"))
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _check_op(result: kv_pb2.ResponseOp) -> None:
    if result.code != 0:
        raise OpFailed(code_name(result.code), result.error)


class _PaxosSlot:
    __slots__ = ("_ep", "_client_id", "_seq")

    def __init__(self, ep: _PaxosEndpoint, client_id: str) -> None:
        self._ep = ep
        self._client_id = client_id
        self._seq = 0

    def _put_request(self, key: bytes, value: bytes) -> kv_pb2.PutRequest:
        self._seq += 1
        return kv_pb2.PutRequest(
            request=kv_pb2.RequestHeader(client_id=self._client_id, sequence=self._seq), key=key, value=value
        )

    async def get(self, key: bytes) -> None:
        ep = self._ep
        req = kv_pb2.GetRequest(key=key, serializable=ep.serializable)
        if ep.session is not None:
            _check_op(await ep.session.call(kv_pb2.RequestOp(get=req), ep.timeout_s))
            return
        try:
            await ep.stub.Get(req, timeout=ep.timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise _rpc_failed(exc) from None

    async def put(self, key: bytes, value: bytes) -> None:
        ep = self._ep
        req = self._put_request(key, value)
        if ep.session is not None:
            _check_op(await ep.session.call(kv_pb2.RequestOp(put=req), ep.timeout_s))
            return
        try:
            await ep.stub.Put(req, timeout=ep.timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise _rpc_failed(exc) from None

    def _batch_request(self, ops: list[tuple[bool, bytes]], value: bytes, packed: bool) -> kv_pb2.BatchRequest:
        """``packed``: one header for the call, the k-th put has sequence
        first + k (KV.PackedBatch); else a header in every put (KV.Batch)."""
        serializable = self._ep.serializable
        req = kv_pb2.BatchRequest(
            ops=[
                kv_pb2.RequestOp(get=kv_pb2.GetRequest(key=key, serializable=serializable))
                if is_read
                else kv_pb2.RequestOp(put=kv_pb2.PutRequest(key=key, value=value) if packed else self._put_request(key, value))
                for is_read, key in ops
            ]
        )
        writes = sum(1 for is_read, _ in ops if not is_read) if packed else 0
        if writes:
            req.request.client_id = self._client_id
            req.request.sequence = self._seq + 1
            self._seq += writes
        return req

    async def batch(self, ops: list[tuple[bool, bytes]], value: bytes) -> list[OpFailed | None]:
        """Each op's error (its code and the server's message), None for a success."""
        ep = self._ep
        req = self._batch_request(ops, value, ep.packed)
        try:
            call = ep.stub.PackedBatch if req.HasField("request") else ep.stub.Batch
            resp = await call(req, timeout=ep.timeout_s)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNIMPLEMENTED or not req.HasField("request"):
                return [_rpc_failed(exc)] * len(ops)
            # Nothing was applied (a cluster not known to take packed batches
            # everywhere yet, e.g. just after an election): this call per op.
            try:
                resp = await ep.stub.Batch(self._batch_request(ops, value, False), timeout=ep.timeout_s)
            except grpc.aio.AioRpcError as exc2:
                return [_rpc_failed(exc2)] * len(ops)
        if len(resp.results) != len(ops):
            return [OpFailed("PROTOCOL", f"{len(resp.results)} results for {len(ops)} operations")] * len(ops)
        return [None if r.code == 0 else OpFailed(code_name(r.code), r.error) for r in resp.results]


class _PaxosEndpoint:
    def __init__(self, channel: grpc.aio.Channel, *, mode: str, serializable: bool, timeout_s: float) -> None:
        self.stub = kv_pb2_grpc.KVStub(channel)
        self.serializable = serializable
        self.timeout_s = timeout_s
        self.session = _PaxosSession(self.stub) if mode == "stream" else None
        self.packed = mode == "batch"  # batch-per-op: a header per write

    def slot(self, client_id: str) -> _PaxosSlot:
        return _PaxosSlot(self, client_id)

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()


class PaxosKVTarget:
    name = "paxoskv"
    modes = frozenset({"unary", "batch", "batch-per-op", "stream"})

    def connect(self, channel: grpc.aio.Channel, *, mode: str, serializable: bool, timeout_s: float) -> Endpoint:
        return _PaxosEndpoint(channel, mode=mode, serializable=serializable, timeout_s=timeout_s)


# ---- etcd ---------------------------------------------------------------------


class _EtcdSlot:
    __slots__ = ("_ep",)

    def __init__(self, ep: _EtcdEndpoint) -> None:
        self._ep = ep

    async def get(self, key: bytes) -> None:
        ep = self._ep
        try:
            await ep.stub.Range(ep.pb.RangeRequest(key=key, serializable=ep.serializable), timeout=ep.timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise _rpc_failed(exc) from None

    async def put(self, key: bytes, value: bytes) -> None:
        ep = self._ep
        try:
            await ep.stub.Put(ep.pb.PutRequest(key=key, value=value), timeout=ep.timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise _rpc_failed(exc) from None

    async def batch(self, ops: list[tuple[bool, bytes]], value: bytes) -> list[OpFailed | None]:
        raise OpFailed("UNIMPLEMENTED", "the etcd target has no batch mode")


class _EtcdEndpoint:
    def __init__(self, channel: grpc.aio.Channel, *, serializable: bool, timeout_s: float) -> None:
        from paxoskv.etcdpb import rpc_pb2, rpc_pb2_grpc

        self.pb = rpc_pb2
        self.stub = rpc_pb2_grpc.KVStub(channel)
        self.serializable = serializable
        self.timeout_s = timeout_s

    def slot(self, client_id: str) -> _EtcdSlot:
        return _EtcdSlot(self)

    async def close(self) -> None:
        return None


class EtcdTarget:
    name = "etcd"
    modes = frozenset({"unary"})

    def connect(self, channel: grpc.aio.Channel, *, mode: str, serializable: bool, timeout_s: float) -> Endpoint:
        assert mode in self.modes, mode
        return _EtcdEndpoint(channel, serializable=serializable, timeout_s=timeout_s)


TARGETS: dict[str, Target] = {"paxoskv": PaxosKVTarget(), "etcd": EtcdTarget()}
