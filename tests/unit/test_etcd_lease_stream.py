"""The LeaseKeepAlive stream handler (paxoskv.server.etcd_lease) against a
node whose answers the test gives: several keep-alives of a stream in
flight, never more than KEEPALIVE_WINDOW, answered in the order asked, and
a failure ends the stream after the answers before it."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import grpc
import pytest

from paxoskv.etcdpb import rpc_pb2
from paxoskv.replica.errors import EtcdFailure
from paxoskv.server.etcd_api import EtcdFacade
from paxoskv.server.etcd_lease import KEEPALIVE_WINDOW, lease_handlers

R = rpc_pb2


class _Node:
    """``etcd_lease`` waits for the future the test resolves, per call in order."""

    def __init__(self) -> None:
        etcd = SimpleNamespace(
            check_message_bytes=lambda n: None, require_leader=lambda: None, cluster_uid=7, member_id=3, raft_term=2, revision=5
        )
        self.layer = SimpleNamespace(etcd=etcd)
        self.calls: list[tuple[int, asyncio.Future]] = []

    def etcd_layer(self) -> SimpleNamespace:
        return self.layer

    async def etcd_lease(self, method: str, request: R.LeaseKeepAliveRequest, *, timeout_s: float) -> object:
        assert method == "keep_alive" and timeout_s > 0
        fut = asyncio.get_running_loop().create_future()
        self.calls.append((request.ID, fut))
        return await fut


class _Aborted(Exception):
    pass


class _Context:
    def __init__(self) -> None:
        self.status: tuple[grpc.StatusCode, str] | None = None

    def invocation_metadata(self) -> tuple:
        return ()

    def time_remaining(self) -> None:
        return None

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        self.status = (code, details)
        raise _Aborted(details)


async def _until(what: str, cond, timeout_s: float = 5.0) -> None:  # noqa: ANN001
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not cond():
        assert loop.time() < deadline, what
        await asyncio.sleep(0)  # let the handler's tasks run


def _stream(node: _Node):  # noqa: ANN202
    handler = lease_handlers(EtcdFacade(node, None), lambda h, t: None)["LeaseKeepAlive"]
    return handler.stream_stream


async def _requests(ids: list[int], more: asyncio.Event | None = None):  # noqa: ANN202
    for lid in ids:
        yield R.LeaseKeepAliveRequest(ID=lid).SerializeToString()
    if more is not None:
        await more.wait()


def test_up_to_the_window_are_in_flight_and_the_answers_come_in_the_order_asked() -> None:
    async def main() -> None:
        node = _Node()
        n = KEEPALIVE_WINDOW + 36
        out = _stream(node)(_requests(list(range(1, n + 1))), _Context())
        first = asyncio.ensure_future(anext(out))
        await _until("a window of keep-alives started", lambda: len(node.calls) == KEEPALIVE_WINDOW)
        for _ in range(100):
            await asyncio.sleep(0)
        assert len(node.calls) == KEEPALIVE_WINDOW  # no more read while none is answered
        for lid, fut in reversed(node.calls):  # the node answers the last first
            fut.set_result(R.LeaseKeepAliveResponse(ID=lid, TTL=60))
        got = [await first]
        while len(got) < n:
            nxt = asyncio.ensure_future(anext(out))
            while not nxt.done():
                for lid, fut in node.calls:
                    if not fut.done():
                        fut.set_result(R.LeaseKeepAliveResponse(ID=lid, TTL=0 if lid % 10 == 0 else 60))
                await asyncio.sleep(0)
            got.append(nxt.result())
            assert len(node.calls) - len(got) <= KEEPALIVE_WINDOW  # read and not answered: never more than the window
        assert len(node.calls) == n
        assert [r.ID for r in got] == list(range(1, n + 1))
        assert [r.TTL for r in got[KEEPALIVE_WINDOW:]] == [0 if i % 10 == 0 else 60 for i in range(KEEPALIVE_WINDOW + 1, n + 1)]
        assert all(r.header.member_id == 3 and r.header.revision == 5 for r in got)
        with pytest.raises(StopAsyncIteration):
            await anext(out)

    asyncio.run(main())


def test_a_failure_ends_the_stream_after_the_answers_before_it() -> None:
    async def main() -> None:
        node = _Node()
        ctx = _Context()
        more = asyncio.Event()
        out = _stream(node)(_requests([1, 2, 3], more), ctx)
        first = asyncio.ensure_future(anext(out))
        await _until("three keep-alives started", lambda: len(node.calls) == 3)
        node.calls[2][1].set_result(R.LeaseKeepAliveResponse(ID=3, TTL=60))  # answered, but after the failure
        node.calls[1][1].set_exception(EtcdFailure("UNAVAILABLE", "etcdserver: leader changed"))
        for _ in range(50):
            await asyncio.sleep(0)
        assert not first.done() and ctx.status is None  # the first is still unanswered: nothing sent yet
        node.calls[0][1].set_result(R.LeaseKeepAliveResponse(ID=1, TTL=60))
        assert (await first).ID == 1
        with pytest.raises(_Aborted):
            await anext(out)
        assert ctx.status == (grpc.StatusCode.UNAVAILABLE, "etcdserver: leader changed")

    asyncio.run(main())
