"""Watching keys through the etcd API: ``watch(...)`` is an async iterator
of ``WatchBatch``es, the events of one or more revisions each.

Rules:

- One watch on one ``Watch`` stream (gRPC metadata ``hasleader=true``, as
  etcdctl, so a member cut off from the leader ends it rather than going
  quiet). Events arrive in revision order, each once, all events of one
  revision in the same batch (a fragmented response is joined first).
- Reconnect: when the stream breaks (the member stopped, lost its leader,
  became unreachable), the next endpoint is tried, from the revision after
  the last one seen (an event's, or a progress notification's), so the
  iterator's events stay exactly-once and gap-free across members, until
  ``reconnect_s`` seconds pass without a stream that answers.
- The watch ends with ``WatchCanceled`` when the server cancels it: below
  the compaction (``compact_revision`` set: resume from there, or read the
  current state again) or for another ``reason``.
- ``progress_notify``: empty batches with ``progress=True`` whose
  ``revision`` says every later event is above it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

import grpc

from paxoskv.client.client import CHANNEL_OPTIONS, ClientError, Unavailable
from paxoskv.etcdpb import kv_pb2 as mvccpb
from paxoskv.etcdpb import rpc_pb2, rpc_pb2_grpc
from paxoskv.tls import ClientTLS, aio_channel

__all__ = ["WatchBatch", "WatchCanceled", "WatchEvent", "prefix_end", "watch"]

_RETRY = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED,
          grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: str  # "PUT" or "DELETE"
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int
    prev_value: bytes | None  # with prev_kv, when the key had a previous version


@dataclass(frozen=True, slots=True)
class WatchBatch:
    revision: int  # the member's revision when it sent this
    events: tuple[WatchEvent, ...]
    progress: bool = False  # a progress notification: no event <= revision follows


class WatchCanceled(ClientError):
    def __init__(self, message: str, compact_revision: int = 0) -> None:
        super().__init__(message)
        self.compact_revision = compact_revision


def prefix_end(prefix: bytes) -> bytes:
    """etcd's range end of a prefix (every key that starts with it)."""
    p = bytearray(prefix)
    while p and p[-1] == 0xFF:
        p.pop()
    if not p:
        return b"\x00"
    p[-1] += 1
    return bytes(p)


def _event(e: mvccpb.Event) -> WatchEvent:
    kv = e.kv
    return WatchEvent(
        "DELETE" if e.type == mvccpb.Event.DELETE else "PUT",
        kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease,
        e.prev_kv.value if e.HasField("prev_kv") and e.prev_kv.key else None,
    )


async def watch(
    endpoints: Iterable[str],
    key: bytes | str,
    *,
    prefix: bool = False,
    range_end: bytes | None = None,
    start_revision: int = 0,
    prev_kv: bool = False,
    progress_notify: bool = False,
    reconnect_s: float = 10.0,
    tls: ClientTLS | None = None,
) -> AsyncIterator[WatchBatch]:
    """Watch ``key`` (or the range from it to ``range_end``, or every key
    with the prefix) from ``start_revision`` (0: from now). See the module rules."""
    eps = list(dict.fromkeys(endpoints))
    if not eps:
        raise ValueError("watch needs at least one endpoint")
    k = key.encode() if isinstance(key, str) else bytes(key)
    if prefix and range_end is not None:
        raise ValueError("prefix and range_end are mutually exclusive")
    end = prefix_end(k) if prefix else (range_end or b"")
    next_rev = start_revision
    attempt = 0
    failed_since: float | None = None
    loop = asyncio.get_running_loop()
    while True:
        target = eps[attempt % len(eps)]
        create = rpc_pb2.WatchCreateRequest(key=k, range_end=end, start_revision=next_rev, prev_kv=prev_kv,
                                            progress_notify=progress_notify, fragment=True)
        channel = aio_channel(target, tls, CHANNEL_OPTIONS)
        try:
            call = rpc_pb2_grpc.WatchStub(channel).Watch(metadata=(("hasleader", "true"),))
            await call.write(rpc_pb2.WatchRequest(create_request=create))
            parts: list[mvccpb.Event] = []
            async for resp in call:
                if resp.created:
                    if resp.canceled:
                        raise WatchCanceled(resp.cancel_reason or "the watch was refused")
                    failed_since = None
                    if not next_rev:
                        next_rev = resp.header.revision + 1  # "from now", fixed on the first stream
                    continue
                if resp.canceled:
                    if resp.compact_revision:
                        raise WatchCanceled(
                            f"revision {next_rev} is compacted (compaction at {resp.compact_revision})",
                            resp.compact_revision,
                        )
                    raise WatchCanceled(resp.cancel_reason or "the watch was canceled by the server")
                if resp.fragment:
                    parts.extend(resp.events)
                    continue
                events = [*parts, *resp.events]
                parts = []
                if not events:
                    next_rev = max(next_rev, resp.header.revision + 1)
                    yield WatchBatch(resp.header.revision, (), progress=True)
                    continue
                next_rev = max(next_rev, events[-1].kv.mod_revision + 1)
                yield WatchBatch(resp.header.revision, tuple(_event(e) for e in events))
            raise Unavailable(f"{target} ended the watch stream")
        except (grpc.aio.AioRpcError, Unavailable) as exc:
            code = exc.code() if isinstance(exc, grpc.aio.AioRpcError) else grpc.StatusCode.UNAVAILABLE
            if code not in _RETRY:
                raise ClientError(f"watch on {target}: {exc.details() if isinstance(exc, grpc.aio.AioRpcError) else exc}",
                                  code) from None
            now = loop.time()
            failed_since = failed_since if failed_since is not None else now
            if now - failed_since > reconnect_s:
                raise Unavailable(f"no member served the watch for {reconnect_s:.1f}s (last: {target})") from None
            attempt += 1
            await asyncio.sleep(min(0.05 * attempt, 0.5))  # back off between members
        finally:
            await channel.close()
