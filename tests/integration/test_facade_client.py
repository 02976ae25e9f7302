"""The gRPC facade and the client library against a scripted in-process node.

A real ``grpc.aio`` server on 127.0.0.1 (port chosen by the kernel) serves a
``FakeNode`` whose answers each test scripts, so the facade's status-code
mapping, deadlines and leader hints, and the client's failover, retries and
exactly-once sessions are checked exactly, without a cluster's timing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from paxoskv.client import (
    Client,
    DeadlineExceeded,
    InvalidArgument,
    StaleSequence,
    SyncClient,
    Unavailable,
)
from paxoskv.replica import errors
from paxoskv.replica.node import result_or_error
from paxoskv.server.grpc_api import BindError, Facade
from paxoskv.server.public import FacadeLimits
from paxoskv.util.ports import free_ports
from paxoskv.util.wait import wait_until_async
from paxoskv.wire import LEADER_METADATA_KEY, method_path
from paxoskv.v1 import kv_pb2, kv_pb2_grpc

Behaviour = Callable[[kv_pb2.Command, float], Awaitable[kv_pb2.CommandResult]]


@dataclass
class FakeNode:
    """A node whose ``submit`` follows ``behaviour`` (default: apply to a dict)."""

    node_id: int
    leader_id: int | None = 1
    kv: dict[bytes, bytes] = field(default_factory=dict)
    submits: list[tuple[str, int, float]] = field(default_factory=list)
    in_flight: set[str] = field(default_factory=set)
    index: int = 0
    behaviour: Behaviour | None = None
    fail_next: list[Exception] = field(default_factory=list)

    async def submit(self, cmd: kv_pb2.Command, *, timeout_s: float) -> kv_pb2.CommandResult:
        self.submits.append((cmd.client_id, cmd.sequence, timeout_s))
        assert cmd.client_id not in self.in_flight, "two requests of one session in flight"
        self.in_flight.add(cmd.client_id)
        try:
            await asyncio.sleep(0)  # let other calls interleave
            if self.fail_next:
                raise self.fail_next.pop(0)
            if self.behaviour is not None:
                return await self.behaviour(cmd, timeout_s)
            return self.apply(cmd)
        finally:
            self.in_flight.discard(cmd.client_id)

    def apply(self, cmd: kv_pb2.Command) -> kv_pb2.CommandResult:
        self.index += 1
        if cmd.WhichOneof("op") == "put":
            existed = cmd.put.key in self.kv
            self.kv[cmd.put.key] = cmd.put.value
        else:
            existed = self.kv.pop(cmd.delete.key, None) is not None
        return kv_pb2.CommandResult(index=self.index, existed=existed)

    async def _write(self, cmd: kv_pb2.Command, timeout_s: float) -> kv_pb2.CommandResult:
        out = result_or_error(await self.submit(cmd, timeout_s=timeout_s))
        if isinstance(out, Exception):
            raise out
        return out

    async def put(self, req: kv_pb2.PutRequest, *, timeout_s: float) -> kv_pb2.CommandResult:
        hdr = req.request
        put = kv_pb2.PutOp(key=req.key, value=req.value)
        return await self._write(kv_pb2.Command(client_id=hdr.client_id, sequence=hdr.sequence, put=put), timeout_s)

    async def delete(self, req: kv_pb2.DeleteRequest, *, timeout_s: float) -> kv_pb2.CommandResult:
        hdr = req.request
        delete = kv_pb2.DeleteOp(key=req.key)
        return await self._write(kv_pb2.Command(client_id=hdr.client_id, sequence=hdr.sequence, delete=delete), timeout_s)

    async def get(self, req: kv_pb2.GetRequest, *, timeout_s: float):
        if not req.key:
            raise errors.InvalidArgument("key is empty")
        if self.fail_next:
            raise self.fail_next.pop(0)
        return self.kv.get(req.key), self.index, self.index  # (value, applied index, revision: one per write here)

    async def ops(self, ops, *, timeout_s: float, request=None, raw=None) -> list:  # noqa: ANN001
        """Each op in turn (a fake: no batching), each answered alone."""
        out: list = []
        for op in ops:
            kind = op.WhichOneof("op")
            try:
                if kind == "get":
                    out.append(await self.get(op.get, timeout_s=timeout_s))
                elif kind == "put":
                    out.append(await self.put(op.put, timeout_s=timeout_s))
                else:
                    out.append(await self.delete(op.delete, timeout_s=timeout_s))
            except errors.NodeError as exc:
                out.append(exc)
        return out

    def open_snapshot(self):  # noqa: ANN201
        raise errors.Unavailable("a fake node has no storage")

    def status(self) -> kv_pb2.StatusResponse:
        return kv_pb2.StatusResponse(
            node_id=self.node_id, role="leader", leader_id=self.leader_id or 0
        )


class Servers:
    """Facades for fake nodes on 127.0.0.1, started and stopped in one loop."""

    def __init__(self) -> None:
        self.facades: list[Facade] = []

    async def add(self, node: FakeNode, **kw: object) -> str:
        f = Facade(node, node.node_id, **kw)
        port = f.bind("127.0.0.1:0")
        await f.start()
        await f.mark_serving()
        self.facades.append(f)
        return f"127.0.0.1:{port}"

    async def close(self) -> None:
        for f in self.facades:
            await f.shutdown(grace_s=0)


def run(body: Callable[[Servers], Awaitable[None]]) -> None:
    async def main() -> None:
        servers = Servers()
        try:
            await body(servers)
        finally:
            await servers.close()

    asyncio.run(main())


def test_put_get_delete_round_trip_and_headers() -> None:
    async def body(s: Servers) -> None:
        node = FakeNode(node_id=7, leader_id=3)
        ep = await s.add(node)
        async with Client([ep]) as c:
            r = await c.put(b"k", b"v1")
            assert (r.existed, r.index, r.node_id, r.leader_id) == (False, 1, 7, 3)
            assert (await c.put("k", "v2")).existed
            got = await c.read("k")
            assert (got.value, got.index, got.node_id) == (b"v2", 2, 7)
            assert (await c.delete("k")).existed
            assert not (await c.delete("k")).existed
            assert await c.get("k") is None
        # one session, sequences 1, 2, 3, 4 in order
        assert [(cid, seq) for cid, seq, _ in node.submits] == [
            (c.client_id, 1),
            (c.client_id, 2),
            (c.client_id, 3),
            (c.client_id, 4),
        ]

    run(body)


def test_status_codes_and_leader_hint_metadata() -> None:
    async def body(s: Servers) -> None:
        node = FakeNode(node_id=1)
        ep = await s.add(node)
        async with grpc.aio.insecure_channel(ep) as ch:
            stub = kv_pb2_grpc.KVStub(ch)
            put = kv_pb2.PutRequest(key=b"k", value=b"v")

            node.fail_next.append(
                errors.Unavailable("leader is node 2", leader_id=2, leader_addr="10.0.0.2:50051")
            )
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await stub.Put(put, timeout=5)
            assert ei.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "leader is node 2" in ei.value.details()
            assert (LEADER_METADATA_KEY, "2=10.0.0.2:50051") in tuple(ei.value.trailing_metadata())

            node.fail_next.append(errors.Unavailable("no leader known"))
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await stub.Put(put, timeout=5)
            assert ei.value.code() == grpc.StatusCode.UNAVAILABLE
            assert not [
                k for k, _ in ei.value.trailing_metadata() or () if k == LEADER_METADATA_KEY
            ]

            for exc, code in (
                (errors.InvalidArgument("key is empty"), grpc.StatusCode.INVALID_ARGUMENT),
                (errors.DeadlineExceeded("too slow"), grpc.StatusCode.DEADLINE_EXCEEDED),
            ):
                node.fail_next.append(exc)
                with pytest.raises(grpc.aio.AioRpcError) as ei:
                    await stub.Put(put, timeout=5)
                assert (ei.value.code(), ei.value.details()) == (code, str(exc))

            async def stale(cmd: kv_pb2.Command, timeout_s: float) -> kv_pb2.CommandResult:
                return kv_pb2.CommandResult(code=kv_pb2.CommandResult.STALE_SEQUENCE)

            node.behaviour = stale
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await stub.Put(put, timeout=5)
            assert ei.value.code() == grpc.StatusCode.FAILED_PRECONDITION

            async def invalid(cmd: kv_pb2.Command, timeout_s: float) -> kv_pb2.CommandResult:
                return kv_pb2.CommandResult(
                    code=kv_pb2.CommandResult.INVALID, error="value too big"
                )

            node.behaviour = invalid
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await stub.Put(put, timeout=5)
            assert (ei.value.code(), ei.value.details()) == (
                grpc.StatusCode.INVALID_ARGUMENT,
                "value too big",
            )

            # A body that is not a PutRequest at all: INVALID_ARGUMENT, the node never sees it.
            raw = ch.unary_unary(method_path("KV", "Put"))
            before = len(node.submits)
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await raw(b"\xff\xff\xff\xff garbage", timeout=5)
            assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "malformed paxoskv.v1.PutRequest" in ei.value.details()
            assert len(node.submits) == before

    run(body)


def test_request_deadline_becomes_the_node_timeout_with_a_margin() -> None:
    async def body(s: Servers) -> None:
        node = FakeNode(node_id=1)

        async def hang(cmd: kv_pb2.Command, timeout_s: float) -> kv_pb2.CommandResult:
            await asyncio.sleep(timeout_s)
            raise errors.DeadlineExceeded(f"no answer within {timeout_s:.3f}s")

        node.behaviour = hang
        ep = await s.add(node, request_timeout_s=3.0)
        async with grpc.aio.insecure_channel(ep) as ch:
            stub = kv_pb2_grpc.KVStub(ch)
            t0 = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await stub.Put(kv_pb2.PutRequest(key=b"k"), timeout=0.8)
            elapsed = time.monotonic() - t0
            # The server's own answer (its details), not the client's deadline firing.
            assert ei.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "no answer within" in ei.value.details()
            assert elapsed < 0.8
            timeout_s = node.submits[-1][2]
            assert 0.6 < timeout_s < 0.8

            node.behaviour = None
            await stub.Put(kv_pb2.PutRequest(key=b"k"))  # no deadline: the server's cap
            assert node.submits[-1][2] == 3.0
            await stub.Put(kv_pb2.PutRequest(key=b"k"), timeout=60)  # capped too
            assert node.submits[-1][2] == 3.0

    run(body)


def test_client_follows_the_leader_hint_and_sticks_to_the_node_that_answered() -> None:
    async def body(s: Servers) -> None:
        follower, leader = FakeNode(node_id=1, leader_id=2), FakeNode(node_id=2, leader_id=2)
        ep_leader = await s.add(leader)
        ep_follower = await s.add(follower)
        follower.fail_next.append(
            errors.Unavailable("not the leader", leader_id=2, leader_addr=ep_leader)
        )
        async with Client([ep_follower]) as c:  # only the follower is known
            r = await c.put("k", "v")
            assert r.node_id == 2
            assert c.current_endpoint == ep_leader
            assert (await c.read("k")).node_id == 2
        # The retry at the leader carried the same (client_id, sequence).
        assert follower.submits[0][:2] == leader.submits[0][:2] == (c.client_id, 1)

    run(body)


def test_retries_keep_the_same_sequence_until_success() -> None:
    async def body(s: Servers) -> None:
        a, b = FakeNode(node_id=1), FakeNode(node_id=2)
        ep_a, ep_b = await s.add(a), await s.add(b)
        for n in (a, b):
            n.fail_next.extend(errors.Unavailable("election in progress") for _ in range(3))
        async with Client([ep_a, ep_b], backoff_s=0.001, backoff_s_max=0.01) as c:
            await c.put("k", "v")
            await c.put("k", "w")
        tried = [(cid, seq) for cid, seq, _ in a.submits + b.submits]
        assert len(tried) == 8  # 6 refusals (3 per node, alternating), then the 2 puts
        first = [(cid, seq) for cid, seq in tried if seq == 1]
        assert len(first) == 7 and set(first) == {(c.client_id, 1)}
        assert [t for t in tried if t[1] == 2] == [(c.client_id, 2)]

    run(body)


def test_concurrent_requests_use_one_session_each() -> None:
    async def body(s: Servers) -> None:
        node = FakeNode(node_id=1)
        ep = await s.add(node)
        async with Client([ep]) as c:
            await asyncio.gather(*(c.put(f"k{i}", "v") for i in range(200)))
            sessions = c.sessions
        assert 1 < sessions <= 200
        per_client: dict[str, list[int]] = {}
        for cid, seq, _ in node.submits:
            per_client.setdefault(cid, []).append(seq)
        assert len(per_client) == sessions
        for seqs in per_client.values():  # each session: 1, 2, 3, ... in order
            assert seqs == list(range(1, len(seqs) + 1))
        assert len(node.kv) == 200

    run(body)


def test_client_errors_and_deadline_when_nothing_answers() -> None:
    async def body(s: Servers) -> None:
        node = FakeNode(node_id=1)
        ep = await s.add(node)
        async with Client([ep], timeout_s=2.0) as c:
            with pytest.raises(InvalidArgument):
                await c.get("")
            node.fail_next.append(errors.InvalidArgument("key is empty"))
            with pytest.raises(InvalidArgument):
                await c.put("", "v")

            async def stale(cmd: kv_pb2.Command, timeout_s: float) -> kv_pb2.CommandResult:
                return kv_pb2.CommandResult(code=kv_pb2.CommandResult.STALE_SEQUENCE)

            node.behaviour = stale
            with pytest.raises(StaleSequence):
                await c.put("k", "v")

            async def hang(cmd: kv_pb2.Command, timeout_s: float) -> kv_pb2.CommandResult:
                await asyncio.sleep(timeout_s)
                raise errors.DeadlineExceeded("slow")

            node.behaviour = hang
            t0 = time.monotonic()
            with pytest.raises(DeadlineExceeded):
                await c.put("k", "v", timeout_s=0.5)
            assert time.monotonic() - t0 < 1.0

        # Nobody listens at all: Unavailable once the deadline is spent, not before.
        dead = [f"127.0.0.1:{p}" for p in free_ports(2)]  # free: nothing listens
        async with Client(dead, timeout_s=0.6, backoff_s=0.01) as c:
            t0 = time.monotonic()
            with pytest.raises(Unavailable):
                await c.put("k", "v")
            assert 0.5 < time.monotonic() - t0 < 1.5

    run(body)


def test_health_reflection_listed_and_bind_conflict() -> None:
    async def body(s: Servers) -> None:
        node = FakeNode(node_id=1)
        f = Facade(node, 1)
        port = f.bind("127.0.0.1:0")
        await f.start()
        s.facades.append(f)
        ep = f"127.0.0.1:{port}"
        async with grpc.aio.insecure_channel(ep) as ch:
            health = health_pb2_grpc.HealthStub(ch)
            req = health_pb2.HealthCheckRequest(service="")
            assert (await health.Check(req)).status == health_pb2.HealthCheckResponse.NOT_SERVING
            await f.mark_serving()
            assert (await health.Check(req)).status == health_pb2.HealthCheckResponse.SERVING
            kv_req = health_pb2.HealthCheckRequest(service="paxoskv.v1.KV")
            assert (await health.Check(kv_req)).status == health_pb2.HealthCheckResponse.SERVING

        other = Facade(FakeNode(node_id=2), 2)
        with pytest.raises(BindError, match="another process"):
            other.bind(ep)

    run(body)


def test_sync_client_wraps_the_async_one() -> None:
    async def body(s: Servers) -> None:
        ep = await s.add(FakeNode(node_id=4))

        def use() -> None:
            with SyncClient([ep], timeout_s=2.0) as c:
                c.put("a", "b")
                assert c.get("a") == b"b"
                assert c.delete("a").existed
                st = c.status_all()
                assert st[0].status is not None and st[0].status.node_id == 4

        await asyncio.to_thread(use)

    run(body)


@dataclass
class GateClosedNode(FakeNode):
    """Refuses packed batches as a node does before every member is known to
    take them; applies per-op batches."""

    batches: list[bool] = field(default_factory=list)  # packed or not, per call

    async def ops(self, ops, *, timeout_s: float, request=None, raw=None) -> list:  # noqa: ANN001
        self.batches.append(request is not None)
        if request is not None:
            raise errors.Unimplemented("not every node of the cluster is known to take packed batches (fake)")
        out = []
        for op in ops:
            hdr = op.put.request
            out.append(self.apply(kv_pb2.Command(client_id=hdr.client_id, sequence=hdr.sequence, put=kv_pb2.PutOp(key=op.put.key, value=op.put.value))))
        return out


def test_a_cluster_not_known_to_take_packed_batches_answers_unimplemented_and_the_client_goes_per_op(monkeypatch):
    import paxoskv.client.client as client_module

    async def body(servers: Servers) -> None:
        node = GateClosedNode(1)
        ep = await servers.add(node)
        async with grpc.aio.insecure_channel(ep) as ch:
            stub = kv_pb2_grpc.KVStub(ch)
            req = kv_pb2.BatchRequest(
                ops=[kv_pb2.RequestOp(put=kv_pb2.PutRequest(key=b"k", value=b"v"))],
                request=kv_pb2.RequestHeader(client_id="c", sequence=1),
            )
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.PackedBatch(req, timeout=5)
            assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
            assert "known to take packed batches" in info.value.details()
        assert node.kv == {}
        node.batches.clear()
        monkeypatch.setattr(client_module, "PACKED_RETRY_AFTER_S", 0.0)  # try packed again at once
        async with Client([ep], timeout_s=5) as c:
            for key in ("a", "b"):
                [res] = await c.batch([("put", key, "1")])
                assert res.index > 0
        assert node.batches == [True, False, True, False]  # each call: packed refused, then per op
        assert node.kv == {b"a": b"1", b"b": b"1"}

    run(body)


def test_the_facade_gives_back_every_byte_it_held() -> None:
    """Bytes counted under --max-pending-mb return to zero after unary calls,
    batches, a session read to its end and a session cancelled with 1 MiB
    answers unread (counted while it waits)."""

    async def body(s: Servers) -> None:
        node = FakeNode(node_id=1)
        ep = await s.add(node, limits=FacadeLimits(stream_requests_max=8))
        facade = s.facades[-1]
        async with grpc.aio.insecure_channel(ep, options=[("grpc.max_receive_message_length", 8 << 20)]) as ch:
            stub = kv_pb2_grpc.KVStub(ch)
            await stub.Put(kv_pb2.PutRequest(key=b"a", value=b"1" * 1000))
            await stub.Put(kv_pb2.PutRequest(key=b"big", value=b"2" * (1 << 20)))
            await stub.Batch(kv_pb2.BatchRequest(ops=[kv_pb2.RequestOp(get=kv_pb2.GetRequest(key=b"a"))] * 20))
            call = stub.Session()
            for i in range(50):
                await call.write(kv_pb2.SessionRequest(id=i + 1, op=kv_pb2.RequestOp(get=kv_pb2.GetRequest(key=b"a"))))
            await call.done_writing()
            answers = [r async for r in call]
            assert sorted(r.id for r in answers) == list(range(1, 51))
            assert all(r.result.get.value == b"1" * 1000 for r in answers)
            assert facade.held_bytes == 0

            unread = stub.Session()
            for i in range(8):
                await unread.write(kv_pb2.SessionRequest(id=i + 1, op=kv_pb2.RequestOp(get=kv_pb2.GetRequest(key=b"big"))))
            await wait_until_async("the unread answers to be held", lambda: facade.held_bytes >= 2 << 20, 10)
            unread.cancel()
        await wait_until_async("the facade to hold nothing", lambda: facade.held_bytes == 0, 10)

    run(body)
