"""The asyncio client of a paxoskv cluster.

Rules:

- Leader-agnostic: any node serves any request (followers forward to the
  leader), so a call goes to the node that answered last. When that node
  answers UNAVAILABLE the next attempt goes to the leader it names (trailing
  metadata ``paxoskv-leader: ID=HOST:PORT``), or else to the next endpoint.
  A connection failure moves on to the next endpoint at once.
- Retries: UNAVAILABLE, a connection failure and an attempt's own timeout are
  retried, with exponential backoff and jitter between rounds, until the
  call's overall deadline (``timeout_s``). Every other status is final.
  Each attempt gets at most ``attempt_timeout_s`` of the time left, so one
  node that hangs (paused, cut off) costs one attempt, not the whole deadline.
  With ``retry_unreachable=False`` (the CLI's choice) a call gives up at once
  when every endpoint it may use has just refused the connection (or has a
  name that does not resolve): no other endpoint and no leader change can
  help then; the default keeps trying until the deadline (a node restarting).
- Exactly-once: every Put and Delete carries ``(client_id, sequence)``; all
  attempts of ONE logical request carry the SAME pair, so the cluster applies
  it once however many attempts reached it, and answers retries with the
  first result. The server's session per client_id remembers only its last
  sequence, so one client_id must never have two requests in flight: the
  client keeps a pool of sessions (``<client_id>``, ``<client_id>.1``, ...)
  and gives each concurrent request its own, so ``N`` requests in flight use
  ``N`` sessions. A request whose outcome stayed unknown (deadline) still
  used up its sequence; the session continues after it.
- A ``Client`` created with an explicit ``client_id`` starts its sequences at
  ``first_sequence`` (default 1): reusing a client_id in a new ``Client``
  needs a ``first_sequence`` past the last one it used, or the cluster
  answers FAILED_PRECONDITION (``StaleSequence``). Without ``client_id`` a
  random one is made, which is always safe.
- Errors: ``InvalidArgument`` (nothing written: fix the request),
  ``StaleSequence``, ``Unavailable`` (the deadline passed and no node could
  serve the request: a write may or may not have been applied),
  ``DeadlineExceeded`` (the deadline passed while a node was working on the
  request; a write may be applied later), ``ClientError`` for anything else.
  A message says "may still be applied" at most once, and only for a write.

- Ranges and transactions: ``range`` reads keys with their revisions
  (``KeyValue``); ``txn(Txn().when(..).then(..).otherwise(..))`` (builder
  in ``paxoskv.client.txn``) and ``put_if`` (a put under one condition on
  the key's version, mod revision or value) are exactly-once writes like
  ``put``: a retry is applied once, and if the first attempt was applied
  the answer is its outcome with ``replayed`` set (no reads in it).

- TLS: ``tls=ClientTLS(...)`` (``paxoskv.tls``; ``ClientTLS.from_files(cacert,
  cert, key)``) makes every channel a TLS one, checking the node's
  certificate against the CA and showing the client certificate when
  given; ``tls=None`` (the default) speaks plaintext. A node that refuses
  the handshake (no or a wrong client certificate, a plaintext client at a
  TLS port or the reverse) looks like an unreachable one: UNAVAILABLE,
  retried until the deadline, the last error naming the node.

Theory of operation: one ``grpc.aio`` channel per node address, made on
first use, with grpc's own retries off (this module decides) and a short
reconnect backoff so a restarted node is used again within a second.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import grpc

from paxoskv import wire
from paxoskv.client.txn import KeyValue, Txn, as_bytes, mod_revision as mod_revision_of, value as value_of, version as version_of
from paxoskv.client.txn import get as get_op, put as put_op
from paxoskv.etcdpb import rpc_pb2
from paxoskv.tls import ClientTLS, aio_channel
from paxoskv.v1 import kv_pb2, kv_pb2_grpc

__all__ = [
    "Client",
    "ClientError",
    "DeadlineExceeded",
    "GetResult",
    "InvalidArgument",
    "KeyValue",
    "LEADER_METADATA_KEY",
    "NodeStatus",
    "OutOfRange",
    "RangeResult",
    "TxnResult",
    "StaleSequence",
    "Unavailable",
    "Unreachable",
    "WriteResult",
]

LEADER_METADATA_KEY = wire.LEADER_METADATA_KEY

CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.enable_retries", 0),
    ("grpc.max_receive_message_length", wire.MESSAGE_BYTES_MAX),
    ("grpc.max_send_message_length", wire.MESSAGE_BYTES_MAX),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
)


# ---- errors ------------------------------------------------------------------------


# After a KV.PackedBatch answered UNIMPLEMENTED (an older server, or a cluster
# not known to take packed batches everywhere yet), batches go per op this long.
PACKED_RETRY_AFTER_S = 30.0

class ClientError(Exception):
    """A request failed; ``str(err)`` is one line; ``code`` the last gRPC status;
    ``attempts`` how many calls were made (0: not counted)."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.attempts = 0


class InvalidArgument(ClientError):
    """The request was refused as malformed or over a limit; nothing was written."""


class StaleSequence(ClientError):
    """The request's sequence is older than the last one applied for its client_id."""


class OutOfRange(ClientError):
    """A read at a revision the store no longer keeps (compacted) or does not
    have yet (a future revision)."""


class Unavailable(ClientError):
    """No node could serve the request before the deadline. A write may or may
    not have been applied (retrying it with a new sequence may apply it twice)."""


class Unreachable(Unavailable):
    """Every endpoint refused the connection (or its host name did not
    resolve), so no request reached a node: nothing was written by it."""


class DeadlineExceeded(ClientError):
    """The deadline passed while a node was working on the request; a write
    may still be applied."""


# ---- results -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WriteResult:
    """A Put's or Delete's answer. ``existed``: the key had a value before."""

    existed: bool
    index: int  # the log slot the command was applied at
    node_id: int  # the node that answered
    leader_id: int
    revision: int = 0  # the store's revision after it: a put's mod_revision (0: an older server)


@dataclass(frozen=True, slots=True)
class GetResult:
    value: bytes | None  # None: no such key
    index: int  # the applied index the answer reflects
    node_id: int
    leader_id: int
    revision: int = 0  # the store's revision it was read at (0: an older server)

    @property
    def found(self) -> bool:
        return self.value is not None


@dataclass(frozen=True, slots=True)
class RangeResult:
    """A range's keys in key order (``count``: how many are in the range,
    ``more``: ``limit`` cut some off) at the store's ``revision``."""

    kvs: list[KeyValue]
    more: bool
    count: int
    revision: int
    index: int
    node_id: int
    leader_id: int


@dataclass(frozen=True, slots=True)
class TxnResult:
    """A transaction's outcome: which branch ran (``succeeded``: the
    compares held), the revision after it, and per op of that branch its
    answer: a get's ``list[KeyValue]``, a delete's count of keys deleted, a
    put's None. ``replayed``: a retry of a transaction applied before (its
    answers are not repeated: ``responses`` is empty)."""

    succeeded: bool
    revision: int
    responses: list[list[KeyValue] | int | None]
    replayed: bool
    index: int
    node_id: int
    leader_id: int


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """One endpoint's answer to Status: ``status`` or ``error``."""

    endpoint: str
    status: kv_pb2.StatusResponse | None
    error: ClientError | None


# ---- internals ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Session:
    client_id: str
    next_sequence: int


class _Channel:
    """One node's channel and its method callables (the generated stubs')."""

    __slots__ = ("target", "channel", "get", "put", "delete", "batch", "packed_batch", "range", "txn", "status")

    def __init__(self, target: str, tls: ClientTLS | None = None) -> None:
        self.target = target
        ch = aio_channel(target, tls, CHANNEL_OPTIONS)
        self.channel = ch
        kv = kv_pb2_grpc.KVStub(ch)
        self.get = kv.Get
        self.put = kv.Put
        self.delete = kv.Delete
        self.batch = kv.Batch
        self.packed_batch = kv.PackedBatch
        self.range = kv.Range
        self.txn = kv.Txn
        self.status = kv_pb2_grpc.MaintenanceStub(ch).Status


_as_bytes = as_bytes


def _leader_hint(err: grpc.aio.AioRpcError) -> str | None:
    """The ``host:port`` the trailing metadata names as leader, if usable."""
    hint = wire.parse_leader_hint(err.trailing_metadata())
    return hint[1] if hint is not None else None


class Client:
    """An asyncio client of a paxoskv cluster (see the module docstring).

    ``endpoints``: ``host:port`` of some or all nodes (order: first tried first).
    ``timeout_s``: default overall deadline of one call, retries included.
    ``tls``: a ``paxoskv.tls.ClientTLS`` to speak TLS (None: plaintext).
    """

    def __init__(
        self,
        endpoints: Iterable[str],
        *,
        client_id: str | None = None,
        first_sequence: int = 1,
        timeout_s: float = 5.0,
        attempt_timeout_s: float = 2.0,
        backoff_s: float = 0.02,
        backoff_s_max: float = 0.5,
        retry_unreachable: bool = True,
        rng: random.Random | None = None,
        tls: ClientTLS | None = None,
    ) -> None:
        self.endpoints = list(dict.fromkeys(endpoints))
        if not self.endpoints:
            raise ValueError("a Client needs at least one endpoint")
        if timeout_s <= 0 or attempt_timeout_s <= 0:
            raise ValueError("timeouts must be > 0")
        if first_sequence < 1:
            raise ValueError("sequences start at 1")
        self.client_id = client_id or f"c-{uuid.uuid4().hex}"
        self.timeout_s = timeout_s
        self.attempt_timeout_s = attempt_timeout_s
        self.backoff_s = backoff_s
        self.backoff_s_max = backoff_s_max
        self.retry_unreachable = retry_unreachable
        self._rng = rng or random.Random()
        self.tls = tls
        self._channels: dict[str, _Channel] = {}
        self._current = self.endpoints[0]
        self._free_sessions: list[_Session] = []
        self._sessions_made = 0
        self._first_sequence = first_sequence
        self._packed_retry_at = 0.0  # monotonic time from which batches go packed again
        self._closed = False

    # ---- lifecycle ---------------------------------------------------------------

    async def close(self) -> None:
        self._closed = True
        channels, self._channels = list(self._channels.values()), {}
        for ch in channels:
            await ch.channel.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def current_endpoint(self) -> str:
        """The node the next call goes to first."""
        return self._current

    @property
    def sessions(self) -> int:
        """How many sessions (client ids) this client has used."""
        return self._sessions_made

    # ---- API ---------------------------------------------------------------------------

    async def put(
        self,
        key: bytes | str,
        value: bytes | str,
        *,
        timeout_s: float | None = None,
        endpoint: str | None = None,
    ) -> WriteResult:
        """Set ``key`` to ``value``, exactly once. ``endpoint`` pins the node."""
        req = kv_pb2.PutRequest(key=_as_bytes(key, "key"), value=_as_bytes(value, "value"))
        resp = await self._exactly_once("put", req, timeout_s, endpoint)
        h = resp.header
        return WriteResult(resp.existed, h.index, h.node_id, h.leader_id, h.revision)

    async def delete(
        self, key: bytes | str, *, timeout_s: float | None = None, endpoint: str | None = None
    ) -> WriteResult:
        """Delete ``key``, exactly once; ``existed`` says whether it was there."""
        req = kv_pb2.DeleteRequest(key=_as_bytes(key, "key"))
        resp = await self._exactly_once("delete", req, timeout_s, endpoint)
        h = resp.header
        return WriteResult(resp.deleted, h.index, h.node_id, h.leader_id, h.revision)

    async def range(
        self,
        key: bytes | str = b"",
        range_end: bytes | str = b"",
        *,
        prefix: bool = False,
        limit: int = 0,
        revision: int = 0,
        serializable: bool = False,
        keys_only: bool = False,
        count_only: bool = False,
        timeout_s: float | None = None,
        endpoint: str | None = None,
    ) -> RangeResult:
        """The keys in [key, range_end) with their values and revisions
        (``prefix=True``: every key starting with ``key``; no ``range_end``:
        ``key`` alone; ``range_end="\\0"``: every key from ``key`` on), at most
        ``limit`` (0: all), as of ``revision`` (0: now; ``OutOfRange`` when
        compacted or in the future). Linearizable unless ``serializable``."""
        req = kv_pb2.RangeRequest(
            key=_as_bytes(key, "key"),
            range_end=_as_bytes(range_end, "range_end"),
            prefix=prefix,
            limit=limit,
            revision=revision,
            serializable=serializable,
            keys_only=keys_only,
            count_only=count_only,
        )
        resp = await self._call("range", req, timeout_s, endpoint)
        h = resp.header
        kvs = [KeyValue.from_proto(kv) for kv in resp.kvs]
        return RangeResult(kvs, resp.more, resp.count, h.revision, h.index, h.node_id, h.leader_id)

    async def get_kv(self, key: bytes | str, **kw: object) -> KeyValue | None:
        """``key``'s value with its revisions, or None (``range``'s options)."""
        kvs = (await self.range(key, **kw)).kvs  # type: ignore[arg-type]
        return kvs[0] if kvs else None

    async def txn(self, txn: Txn, *, timeout_s: float | None = None, endpoint: str | None = None) -> TxnResult:
        """Run ``txn`` (``paxoskv.client.txn``), exactly once."""
        if not isinstance(txn, Txn):
            raise TypeError(f"txn() takes a paxoskv.client.txn.Txn, not {type(txn).__name__}")
        req = kv_pb2.TxnRequest(compare=[c.proto for c in txn.compares], success=txn.success, failure=txn.failure)
        resp = await self._exactly_once("txn", req, timeout_s, endpoint)
        h = resp.header
        return TxnResult(
            resp.succeeded,
            h.revision,
            [_txn_answer(r) for r in resp.responses],
            resp.replayed,
            h.index,
            h.node_id,
            h.leader_id,
        )

    async def put_if(
        self,
        key: bytes | str,
        new_value: bytes | str,
        *,
        version: int | None = None,
        mod_revision: int | None = None,
        value: bytes | str | None = None,
        timeout_s: float | None = None,
    ) -> TxnResult:
        """Compare-and-swap: set ``key`` to ``new_value`` only if its
        ``version`` (0: it does not exist), ``mod_revision`` or ``value`` is
        the one given (exactly one of them). ``succeeded`` says whether it
        was written; if not, ``responses[0]`` holds the key as it is
        (``[]``: absent), unless ``replayed``."""
        given = [(n, v) for n, v in (("version", version), ("mod_revision", mod_revision), ("value", value)) if v is not None]
        if len(given) != 1:
            raise ValueError("put_if takes exactly one of version=, mod_revision= or value=")
        name, operand = given[0]
        target = {"version": version_of, "mod_revision": mod_revision_of, "value": value_of}[name](key)
        txn = Txn().when(target == operand).then(put_op(key, new_value)).otherwise(get_op(key))
        return await self.txn(txn, timeout_s=timeout_s)

    async def read(
        self,
        key: bytes | str,
        *,
        serializable: bool = False,
        timeout_s: float | None = None,
        endpoint: str | None = None,
    ) -> GetResult:
        """Read ``key``: linearizable, or from the node's own state if ``serializable``."""
        req = kv_pb2.GetRequest(key=_as_bytes(key, "key"), serializable=serializable)
        resp = await self._call("get", req, timeout_s, endpoint)
        h = resp.header
        return GetResult(resp.value if resp.found else None, h.index, h.node_id, h.leader_id, h.revision)

    async def get(
        self,
        key: bytes | str,
        *,
        serializable: bool = False,
        timeout_s: float | None = None,
        endpoint: str | None = None,
    ) -> bytes | None:
        """The value of ``key``, or None if it has none."""
        return (
            await self.read(key, serializable=serializable, timeout_s=timeout_s, endpoint=endpoint)
        ).value

    async def batch(
        self, ops: Sequence[tuple], *, timeout_s: float | None = None, packed: bool = True
    ) -> list[WriteResult | GetResult | ClientError]:
        """Many operations in one call per attempt: ``("put", key, value)``,
        ``("delete", key)``, ``("get", key)`` or ``("get", key, True)`` (a
        serializable read). The writes are exactly-once: ``packed`` (the
        default, and the cheaper form) as one packed batch of one session
        (``KV.PackedBatch``), applied at one log index, all or none; otherwise
        each with a session of its own (``KV.Batch``). A server without
        packed batches, or a cluster not known to take them everywhere yet,
        answers UNIMPLEMENTED having applied nothing: this client then sends
        the per-op form, and tries packed again after
        ``PACKED_RETRY_AFTER_S``. A retry resends the
        operations still undecided (the writes of a packed batch all
        together) with their same identities. Returns, in order, each one's
        result or its error (InvalidArgument, StaleSequence, Unavailable,
        DeadlineExceeded)."""
        packed = packed and time.monotonic() >= self._packed_retry_at
        total_s = self.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + total_s
        reqs: list[kv_pb2.RequestOp] = []
        sessions: list[_Session] = []
        packed_header: kv_pb2.RequestHeader | None = None
        writes: list[int] = []  # positions of the writes
        try:
            for op in ops:
                kind = op[0]
                if kind == "get":
                    serializable = bool(op[2]) if len(op) > 2 else False
                    reqs.append(kv_pb2.RequestOp(get=kv_pb2.GetRequest(key=_as_bytes(op[1], "key"), serializable=serializable)))
                    continue
                if kind not in ("put", "delete"):
                    raise ValueError(f"unknown operation {kind!r}: put, delete or get")
                writes.append(len(reqs))
                header = None
                if not packed:
                    session = self._acquire()
                    sessions.append(session)
                    header = kv_pb2.RequestHeader(client_id=session.client_id, sequence=session.next_sequence)
                    session.next_sequence += 1
                if kind == "put":
                    put = kv_pb2.PutRequest(request=header, key=_as_bytes(op[1], "key"), value=_as_bytes(op[2], "value"))
                    reqs.append(kv_pb2.RequestOp(put=put))
                else:
                    reqs.append(kv_pb2.RequestOp(delete=kv_pb2.DeleteRequest(request=header, key=_as_bytes(op[1], "key"))))
            if packed and writes:
                session = self._acquire()
                sessions.append(session)
                packed_header = kv_pb2.RequestHeader(client_id=session.client_id, sequence=session.next_sequence)
                session.next_sequence += len(writes)
            results: list[WriteResult | GetResult | ClientError | None] = [None] * len(reqs)
            pending = list(range(len(reqs)))
            failures = 0
            last_error = ""
            while pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                request = kv_pb2.BatchRequest(ops=[reqs[i] for i in pending])
                if packed_header is not None and any(results[i] is None for i in writes):
                    # The sequences of a packed batch follow from the order of
                    # its writes: a retry resends every one of them.
                    pending = sorted(set(pending) | set(writes))
                    request = kv_pb2.BatchRequest(ops=[reqs[i] for i in pending], request=packed_header)
                try:
                    resp = await self._call("packed_batch" if request.HasField("request") else "batch", request, remaining, None)
                except ClientError as exc:
                    if (
                        exc.code == wire.UNIMPLEMENTED
                        and request.HasField("request")
                        and failures == 0
                        and exc.attempts == 1
                    ):
                        # An older server, on the call's first attempt: nothing
                        # can have been applied, so the per-op form is safe.
                        self._packed_retry_at = time.monotonic() + PACKED_RETRY_AFTER_S
                        return await self.batch(ops, timeout_s=max(0.0, deadline - time.monotonic()), packed=False)
                    for i in pending:
                        results[i] = exc
                    pending = []
                    break
                still: list[int] = []
                for i, r in zip(pending, resp.results):
                    if r.code == 0:
                        results[i] = _op_result(r)
                        continue
                    code = wire.status_code(r.code)
                    if code in wire.RETRYABLE:
                        still.append(i)
                        last_error = r.error
                    else:
                        results[i] = _op_error(code, r.error)
                pending = still
                if pending:
                    failures += 1
                    delay = min(self.backoff_s_max, self.backoff_s * 2 ** (failures - 1))
                    delay = min(delay * (0.5 + 0.5 * self._rng.random()), deadline - time.monotonic())
                    if delay > 0:
                        await asyncio.sleep(delay)
            for i in pending:
                caveat = "; a write may still be applied" if i in writes and _CAVEAT not in last_error else ""
                results[i] = Unavailable(f"no answer within {total_s:.3g}s ({last_error}){caveat}", wire.UNAVAILABLE)
            return results  # type: ignore[return-value]
        finally:
            self._free_sessions.extend(sessions)

    async def status(
        self, endpoint: str, *, timeout_s: float | None = None
    ) -> kv_pb2.StatusResponse:
        """One node's status (no failover: it is that node's view)."""
        timeout = self.timeout_s if timeout_s is None else timeout_s
        try:
            return await self._channel(endpoint).status(kv_pb2.StatusRequest(), timeout=timeout)
        except grpc.aio.AioRpcError as err:
            raise _final_error(err, endpoint) from None

    async def status_all(
        self, endpoints: Iterable[str] | None = None, *, timeout_s: float | None = None
    ) -> list[NodeStatus]:
        """Every endpoint's status, asked concurrently, in endpoint order."""
        eps = list(endpoints) if endpoints is not None else list(self.endpoints)

        async def one(ep: str) -> NodeStatus:
            try:
                return NodeStatus(ep, await self.status(ep, timeout_s=timeout_s), None)
            except ClientError as exc:
                return NodeStatus(ep, None, exc)

        return list(await asyncio.gather(*(one(ep) for ep in eps)))

    # ---- machinery -------------------------------------------------------------------------

    async def _exactly_once(self, method: str, req, timeout_s: float | None, endpoint: str | None):  # noqa: ANN001, ANN202
        """Call ``method`` with ``req`` under a session's next sequence (its
        ``request`` header), the same in every attempt."""
        session = self._acquire()
        try:
            req.request.client_id = session.client_id
            req.request.sequence = session.next_sequence
            session.next_sequence += 1
            return await self._call(method, req, timeout_s, endpoint)
        finally:
            self._free_sessions.append(session)

    def _acquire(self) -> _Session:
        if self._free_sessions:
            return self._free_sessions.pop()
        n = self._sessions_made
        self._sessions_made += 1
        cid = self.client_id if n == 0 else f"{self.client_id}.{n}"
        return _Session(cid, self._first_sequence)

    def _channel(self, target: str) -> _Channel:
        if self._closed:
            raise ClientError("the client is closed")
        ch = self._channels.get(target)
        if ch is None:
            ch = self._channels[target] = _Channel(target, self.tls)
        return ch

    def _next_endpoint(self, after: str) -> str:
        eps = self.endpoints
        try:
            i = eps.index(after)
        except ValueError:
            return eps[0]
        return eps[(i + 1) % len(eps)]

    async def _call(self, method: str, req: object, timeout_s: float | None, pinned: str | None):
        total_s = self.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + total_s
        target = pinned or self._current
        failures = 0
        last: grpc.aio.AioRpcError | None = None
        last_target = target
        tried_hint: set[str] = set()
        unreachable: dict[str, str] = {}  # endpoint -> why its last attempt reached no server
        usable = [pinned] if pinned is not None else self.endpoints
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            attempt_s = min(remaining, self.attempt_timeout_s)
            try:
                resp = await getattr(self._channel(target), method)(req, timeout=attempt_s)
            except grpc.aio.AioRpcError as err:
                code = err.code()
                if code not in wire.RETRYABLE:
                    final = _final_error(err, target)
                    final.attempts = failures + 1
                    raise final from None
                last, last_target = err, target
                failures += 1
                reason = wire.unreachable_reason(code, err.details())
                if reason is None:
                    unreachable.pop(target, None)
                else:
                    unreachable[target] = reason
                    if not self.retry_unreachable and all(ep in unreachable for ep in usable):
                        error = Unreachable(_unreachable_text(unreachable, usable), code)
                        error.attempts = failures
                        raise error from None
                hint = _leader_hint(err) if pinned is None else None
                if hint is not None and hint != target and hint not in tried_hint:
                    tried_hint.add(hint)
                    target = hint  # go straight to the leader it named
                    continue
                if pinned is None:
                    target = self._next_endpoint(target)
                # Back off once per round through the endpoints, and between
                # attempts at a pinned node.
                if pinned is not None or failures >= len(self.endpoints):
                    rounds = failures // max(1, len(self.endpoints) if pinned is None else 1)
                    delay = min(self.backoff_s_max, self.backoff_s * (2 ** max(0, rounds - 1)))
                    delay *= 0.5 + 0.5 * self._rng.random()
                    delay = min(delay, deadline - time.monotonic())
                    if delay > 0:
                        await asyncio.sleep(delay)
                    tried_hint.clear()
                continue
            if pinned is None:
                self._current = target
            return resp
        if last is None:
            raise DeadlineExceeded(
                f"no attempt fit in the deadline of {total_s:.3f}s",
                wire.DEADLINE,
            )
        detail = last.details() or last.code().name
        if last.code() == wire.UNAVAILABLE:
            raise Unavailable(
                f"no node could serve the request within {total_s:.3g}s "
                f"(last: {last_target}: {detail})",
                last.code(),
            )
        caveat = "; a write may still be applied" if method in _WRITES and _CAVEAT not in detail else ""
        raise DeadlineExceeded(
            f"no answer within {total_s:.3g}s (last: {last_target}: {detail}){caveat}",
            last.code(),
        )


_WRITES = frozenset({"put", "delete", "batch", "packed_batch", "txn"})
_CAVEAT = "may still be applied"


def _unreachable_text(unreachable: dict[str, str], endpoints: Sequence[str]) -> str:
    if len(endpoints) == 1:
        ep = endpoints[0]
        if unreachable[ep] in (wire.TLS_CLOSED, wire.TLS_FAILED):
            return f"cannot reach {ep}: {unreachable[ep]}"
        return f"cannot reach {ep} ({unreachable[ep]}): is a node running there?"
    return "cannot reach any endpoint: " + ", ".join(f"{ep} ({unreachable[ep]})" for ep in endpoints)


def _op_result(r: kv_pb2.ResponseOp) -> WriteResult | GetResult:
    kind = r.WhichOneof("op")
    if kind == "get":
        h = r.get.header
        return GetResult(r.get.value if r.get.found else None, h.index, h.node_id, h.leader_id, h.revision)
    if kind == "put":
        h = r.put.header
        return WriteResult(r.put.existed, h.index, h.node_id, h.leader_id, h.revision)
    h = r.delete.header
    return WriteResult(r.delete.deleted, h.index, h.node_id, h.leader_id, h.revision)


def _txn_answer(r: rpc_pb2.ResponseOp) -> list[KeyValue] | int | None:
    kind = r.WhichOneof("response")
    if kind == "response_range":
        return [KeyValue.from_proto(kv) for kv in r.response_range.kvs]
    if kind == "response_delete_range":
        return r.response_delete_range.deleted
    return None


def _op_error(code: grpc.StatusCode, detail: str) -> ClientError:
    if code == wire.INVALID:
        return InvalidArgument(detail, code)
    if code == wire.STALE:
        return StaleSequence(detail, code)
    return ClientError(f"{code.name}: {detail}", code)


def _final_error(err: grpc.aio.AioRpcError, target: str) -> ClientError:
    code = err.code()
    detail = err.details() or code.name
    if code == wire.INVALID:
        return InvalidArgument(detail, code)
    if wire.is_too_large(code, detail):
        return InvalidArgument(f"request too large: {detail}", code)
    if code == wire.STALE:
        return StaleSequence(detail, code)
    if code == grpc.StatusCode.OUT_OF_RANGE:
        return OutOfRange(detail, code)
    if code == wire.UNAVAILABLE:
        return Unavailable(f"{target}: {detail}", code)
    if code == wire.DEADLINE:
        return DeadlineExceeded(f"{target}: {detail}", code)
    return ClientError(f"{target}: {code.name}: {detail}", code)
