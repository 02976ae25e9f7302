"""The etcd v3 API of a node: ``etcdserverpb.KV``, ``Maintenance`` and
``Cluster``, served on the paxoskv facade's grpc.aio server and port.

Rules:

- Nothing here decides what happens to a request: the node layer does
  (``paxoskv.replica.etcd``). This module parses the request bytes, calls
  the node, fills the response headers and turns an ``EtcdFailure`` into
  etcd's gRPC status (code and message byte for byte).
- Headers as etcd fills them (v3rpc/header.go): cluster id, the answering
  member's id and its raft term when the answer leaves; the revision the
  applier set, else the current one. A Range of one key at the current
  revision (``kv.etcd.is_range_one``) is read as a paxoskv.v1 Get is and
  its reply encoded by hand (``encode_range_one``: the same bytes). None where etcd sends none (Alarm,
  Defragment, Snapshot, MoveLeader); MemberList's has no revision.
- ``hasleader: true`` in the metadata: refused with ``etcdserver: no
  leader`` while this member knows none (v3rpc/interceptor.go).
- Snapshot: the node's snapshot (paxoskv's format) in etcd's envelope --
  padded to a multiple of 512 bytes, then a last message holding the
  SHA-256 of all that -- which ``etcdctl snapshot save`` accepts and
  ``paxoskv snapshot restore`` reads. The stream is spooled to a temporary
  file first, so every message carries ``remaining_bytes`` as etcd's do.
- Watch: ``paxoskv.server.etcd_watch`` (the node layer's watch hub);
  Lease: ``paxoskv.server.etcd_lease``. Auth is not registered
  (UNIMPLEMENTED).
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from paxoskv import __version__
from paxoskv.etcdpb import rpc_pb2
from paxoskv.kv.etcd import encode_range_one, is_range_one
from paxoskv.replica.errors import EtcdFailure, NodeError
from paxoskv.replica.etcd import as_etcd, member_id
from paxoskv.server.config import format_hostport
from paxoskv.server.etcd_watch import WatchService
from paxoskv.server.etcd_lease import lease_handlers
from paxoskv.server.grpc_api import _serialize, call_timeout_s  # _serialize passes bytes encoded by hand
from paxoskv.storage.snapshot import CHUNK_BYTES, etcd_envelope

__all__ = ["ETCD_VERSION", "EtcdFacade", "SERVICES"]

ETCD_VERSION = "3.4.23"  # the etcd whose API and errors this one matches
SNAPSHOT_MESSAGE_BYTES = 32 << 10  # etcd's snapshotSendBufferSize
SPOOL_MEMORY_BYTES = 8 << 20
SERVICES = (
    "etcdserverpb.KV",
    "etcdserverpb.Maintenance",
    "etcdserverpb.Cluster",
    "etcdserverpb.Watch",
    "etcdserverpb.Lease",
)

R = rpc_pb2


class EtcdFacade:
    """The etcd services of one node; ``services()`` gives their handlers to
    the paxoskv ``Facade`` (same server, same port)."""

    def __init__(self, node: Any, cfg: Any, *, request_timeout_s: float = 10.0) -> None:  # noqa: ANN401
        self.node = node  # paxoskv.server.node.Node
        self.cfg = cfg  # its NodeConfig
        self.request_timeout_s = request_timeout_s

    def services(self, held: Callable[[Any], Any] | None = None) -> dict[str, dict[str, grpc.RpcMethodHandler]]:
        """The handlers by service name; ``held`` (``Facade.held``) wraps each
        unary handler so its request counts under ``--max-pending-mb``."""
        hold = held or (lambda fn: fn)

        def unary(handler: Any, request: type) -> grpc.RpcMethodHandler:  # noqa: ANN401
            return grpc.unary_unary_rpc_method_handler(hold(self._wrap(handler, request)), None, _serialize)

        kv = {
            "Range": unary(self._range, R.RangeRequest),
            "Put": unary(self._write, R.PutRequest),
            "DeleteRange": unary(self._write, R.DeleteRangeRequest),
            "Txn": unary(self._write, R.TxnRequest),
            "Compact": unary(self._write, R.CompactionRequest),
        }
        maintenance = {
            "Alarm": unary(self._alarm, R.AlarmRequest),
            "Status": unary(self._status, R.StatusRequest),
            "Defragment": unary(self._defragment, R.DefragmentRequest),
            "Hash": unary(self._hash, R.HashRequest),
            "HashKV": unary(self._hash_kv, R.HashKVRequest),
            "Snapshot": grpc.unary_stream_rpc_method_handler(self._snapshot, None, _serialize),
            "MoveLeader": unary(self._move_leader, R.MoveLeaderRequest),
        }
        cluster = {
            "MemberList": unary(self._member_list, R.MemberListRequest),
            **{
                name: unary(self._member_change(name), request)
                for name, request in (
                    ("MemberAdd", R.MemberAddRequest),
                    ("MemberRemove", R.MemberRemoveRequest),
                    ("MemberUpdate", R.MemberUpdateRequest),
                    ("MemberPromote", R.MemberPromoteRequest),
                )
            },
        }
        watch = {"Watch": WatchService(self.node, lambda h, layer: self._fill(h, layer, revision=False), _parse, _wants_leader).handler()}
        lease = lease_handlers(self, unary)
        return dict(zip(SERVICES, (kv, maintenance, cluster, watch, lease), strict=True))

    # ---- plumbing ------------------------------------------------------------------

    def _wrap(self, handler: Any, request_type: type) -> Any:  # noqa: ANN401
        async def call(data: bytes, context: grpc.aio.ServicerContext) -> object:
            try:
                layer = self.node.etcd_layer()
                too_big = layer.etcd.check_message_bytes(len(data))
                if too_big is not None:
                    raise too_big
                request = _parse(request_type, data)
                if _wants_leader(context):
                    refused = layer.etcd.require_leader()
                    if refused is not None:
                        raise refused
                return await handler(request, context, layer)
            except EtcdFailure as exc:
                await context.abort(grpc.StatusCode[exc.code], exc.message)
                raise

        return call

    def _fill(self, header: rpc_pb2.ResponseHeader, layer: Any, revision: bool = True) -> None:  # noqa: ANN401
        e = layer.etcd
        header.cluster_id = e.cluster_uid
        header.member_id = e.member_id
        header.raft_term = e.raft_term
        if revision and not header.revision:
            header.revision = e.revision

    def _timeout_s(self, context: grpc.aio.ServicerContext) -> float:
        return call_timeout_s(context, self.request_timeout_s)

    # ---- KV --------------------------------------------------------------------------

    async def _range(self, request: R.RangeRequest, context: Any, layer: Any) -> object:  # noqa: ANN401
        timeout_s = self._timeout_s(context)
        if is_range_one(request):  # the hot read: a v1 Get's path, the reply encoded by hand
            try:
                rec, revision = await self.node.etcd_range_one(request, timeout_s=timeout_s)
            except NodeError as exc:
                raise as_etcd(exc) from None
            e = layer.etcd
            return encode_range_one(
                e.header_prefix, revision, e.raft_term, request.key, rec, request.keys_only, request.count_only
            )
        resp = await self.node.etcd_range(request, timeout_s=timeout_s)
        self._fill(resp.header, layer)
        return resp

    async def _write(self, request: Any, context: Any, layer: Any) -> object:  # noqa: ANN401
        resp = await self.node.etcd_write(request, timeout_s=self._timeout_s(context))
        self._fill(resp.header, layer)
        return resp

    # ---- Maintenance ---------------------------------------------------------------

    async def _alarm(self, request: R.AlarmRequest, context: Any, layer: Any) -> object:  # noqa: ANN401
        return await self.node.etcd_write(request, timeout_s=self._timeout_s(context))  # no header: etcd's has none

    async def _status(self, request: R.StatusRequest, context: Any, layer: Any) -> object:  # noqa: ANN401
        st = layer.etcd.status()
        resp = R.StatusResponse(
            version=f"{ETCD_VERSION}+paxoskv.{__version__}",
            dbSize=self.node.db_bytes,
            dbSizeInUse=self.node.db_bytes,
            leader=st.leader,
            raftIndex=st.raft_index,
            raftTerm=st.raft_term,
            raftAppliedIndex=st.raft_applied_index,
            errors=list(st.errors),
            isLearner=False,
        )
        self._fill(resp.header, layer)
        return resp

    async def _defragment(self, request: R.DefragmentRequest, context: Any, layer: Any) -> object:  # noqa: ANN401
        await self.node.etcd_in_thread("defragment")
        return R.DefragmentResponse()  # no header, as etcd's

    async def _hash_kv(self, request: R.HashKVRequest, context: Any, layer: Any) -> object:  # noqa: ANN401
        resp = await self.node.etcd_in_thread("hash_kv", request.revision)
        if isinstance(resp, EtcdFailure):
            raise resp
        self._fill(resp.header, layer)
        return resp

    async def _hash(self, request: R.HashRequest, context: Any, layer: Any) -> object:  # noqa: ANN401
        """etcd hashes its whole backend; here: the whole history (HashKV at the current revision)."""
        kv = await self.node.etcd_in_thread("hash_kv", 0)
        if isinstance(kv, EtcdFailure):
            raise kv
        resp = R.HashResponse(hash=kv.hash)
        resp.header.revision = kv.header.revision
        self._fill(resp.header, layer)
        return resp

    async def _move_leader(self, request: R.MoveLeaderRequest, context: Any, layer: Any) -> object:  # noqa: ANN401
        refused = layer.etcd.move_leader(request.targetID)
        if refused is not None:
            raise refused
        return R.MoveLeaderResponse()

    async def _snapshot(self, data: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[object]:
        try:
            _parse(R.SnapshotRequest, data)
            layer = self.node.etcd_layer()
        except EtcdFailure as exc:
            await context.abort(grpc.StatusCode[exc.code], exc.message)
            return
        spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES)  # noqa: SIM115 - closed below
        try:
            body, digest = await asyncio.to_thread(_spool, layer, spool)
            sent = 0
            while sent < body:
                blob = await asyncio.to_thread(spool.read, SNAPSHOT_MESSAGE_BYTES)
                sent += len(blob)
                yield R.SnapshotResponse(remaining_bytes=body - sent, blob=blob)
            yield R.SnapshotResponse(remaining_bytes=0, blob=digest)
        finally:
            spool.close()

    # ---- Cluster ---------------------------------------------------------------------

    async def _member_list(self, request: R.MemberListRequest, context: Any, layer: Any) -> object:  # noqa: ANN401
        resp = R.MemberListResponse()
        cluster = self.cfg.cluster_id
        members = sorted(self.cfg.members().items(), key=lambda item: member_id(cluster, item[0]))
        for node_id, addr in members:
            resp.members.add(
                ID=member_id(cluster, node_id),
                name=f"node{node_id}",
                peerURLs=[f"http://{format_hostport(addr.host, addr.bus_port)}"],
                clientURLs=[f"http://{format_hostport(addr.host, addr.port)}"],
                isLearner=False,
            )
        self._fill(resp.header, layer, revision=False)  # etcd's has no revision
        return resp

    def _member_change(self, method: str) -> Any:  # noqa: ANN401
        async def refuse(request: Any, context: Any, layer: Any) -> object:  # noqa: ANN401
            raise layer.etcd.member_change(method, getattr(request, "ID", 0))

        return refuse


def _spool(layer: Any, spool: Any) -> tuple[int, bytes]:  # noqa: ANN401
    """Write the node's snapshot in etcd's envelope to ``spool``; (the body's
    size, its SHA-256: the envelope's last chunk). Runs in a worker thread."""
    body = 0
    previous: bytes | None = None
    with layer.open_snapshot() as source:
        for chunk in etcd_envelope(source.chunks(CHUNK_BYTES)):
            if previous is not None:
                spool.write(previous)
                body += len(previous)
            previous = chunk
    assert previous is not None and len(previous) == 32, "the envelope ends in a SHA-256"
    spool.seek(0)
    return body, previous


def _wants_leader(context: grpc.aio.ServicerContext) -> bool:
    return any(k == "hasleader" and v == "true" for k, v in context.invocation_metadata() or ())


def _parse(cls: type, data: bytes):  # noqa: ANN202 - an instance of cls
    try:
        return cls.FromString(data)
    except (DecodeError, ValueError, TypeError) as exc:
        raise EtcdFailure("INVALID_ARGUMENT", f"etcdserver: malformed {cls.DESCRIPTOR.full_name}: {exc}") from None

