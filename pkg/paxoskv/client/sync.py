"""A blocking wrapper of :class:`paxoskv.client.Client`, for scripts and the CLI.

Rules: the same semantics as the asyncio client (same retries, same
exactly-once sessions); each method blocks until the call ends. The wrapper
owns a private event loop, so it must not be used from inside a running
asyncio loop (use ``Client`` there), and it is not thread-safe. ``close()``
(or ``with``) releases its channels and loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from paxoskv.client.client import Client, GetResult, KeyValue, NodeStatus, RangeResult, TxnResult, WriteResult
from paxoskv.client.txn import Txn
from paxoskv.v1 import kv_pb2

__all__ = ["SyncClient"]


class SyncClient:
    """``SyncClient(["host:port", ...], timeout_s=5.0).put(b"k", b"v")``."""

    def __init__(self, endpoints: Iterable[str], **kwargs: object) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            self._client = self._run(self._make(list(endpoints), kwargs))
        except BaseException:
            self._loop.close()
            raise

    @staticmethod
    async def _make(endpoints: list[str], kwargs: dict) -> Client:
        return Client(endpoints, **kwargs)  # channels bind to the loop they are made in

    def _run(self, coro):  # noqa: ANN001, ANN202
        if self._loop.is_closed():
            raise RuntimeError("the client is closed")
        return self._loop.run_until_complete(coro)

    @property
    def client(self) -> Client:
        return self._client

    def put(self, key: bytes | str, value: bytes | str, **kw: object) -> WriteResult:
        return self._run(self._client.put(key, value, **kw))

    def delete(self, key: bytes | str, **kw: object) -> WriteResult:
        return self._run(self._client.delete(key, **kw))

    def get(self, key: bytes | str, **kw: object) -> bytes | None:
        return self._run(self._client.get(key, **kw))

    def read(self, key: bytes | str, **kw: object) -> GetResult:
        return self._run(self._client.read(key, **kw))

    def range(self, key: bytes | str = b"", range_end: bytes | str = b"", **kw: object) -> RangeResult:
        return self._run(self._client.range(key, range_end, **kw))

    def get_kv(self, key: bytes | str, **kw: object) -> KeyValue | None:
        return self._run(self._client.get_kv(key, **kw))

    def txn(self, txn: Txn, **kw: object) -> TxnResult:
        return self._run(self._client.txn(txn, **kw))

    def put_if(self, key: bytes | str, new_value: bytes | str, **kw: object) -> TxnResult:
        return self._run(self._client.put_if(key, new_value, **kw))

    def batch(self, ops, **kw: object) -> list:  # noqa: ANN001 - see Client.batch
        return self._run(self._client.batch(ops, **kw))

    def status(self, endpoint: str, **kw: object) -> kv_pb2.StatusResponse:
        return self._run(self._client.status(endpoint, **kw))

    def status_all(self, endpoints: Iterable[str] | None = None, **kw: object) -> list[NodeStatus]:
        return self._run(self._client.status_all(endpoints, **kw))

    def close(self) -> None:
        if self._loop.is_closed():
            return
        try:
            self._loop.run_until_complete(self._client.close())
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
        finally:
            self._loop.close()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
