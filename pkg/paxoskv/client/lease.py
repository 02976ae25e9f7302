"""etcd leases from Python (the etcd v3 API of any paxoskv member, or of etcd
itself): grant, keep alive, revoke, time to live, and a lock that names its
fencing token.

Rules:

- ``LeaseClient`` asks its endpoints in turn: an UNAVAILABLE or
  DEADLINE_EXCEEDED answer (no leader, leader changed, a node down) moves
  to the next endpoint, every other status is raised as ``LeaseError``
  (``code``, ``message``: etcd's, byte for byte). Grant, keep-alive-once,
  time-to-live and revoke are safe to retry (a revoke of a revoked lease is
  ``requested lease not found``).
- ``KeepAlive`` renews a lease every TTL/3 (etcd's clients do) in a thread
  until ``stop()``; ``lost`` is set when the lease is gone (TTL 0).
- ``Lock`` is etcd's lock (clientv3/concurrency/mutex.go, the keys
  ``etcdctl lock NAME`` uses): ``try_acquire`` puts ``NAME/<lease hex>`` if
  absent, with the lease, and holds the lock iff its key has the lowest
  create revision under ``NAME/``. Its ``token`` is that create revision:
  **a fencing token** -- a lease can end while its holder still believes it
  holds the lock (a pause, a partition), so the protected resource must
  refuse a request whose token is lower than the highest it has seen.
- ``Lock.acquire(timeout)`` waits as etcd's clients do, without polling
  (``wait_deletes``): it reads the last key under the prefix created before
  its own (Range sorted by create revision, ``max_create_revision`` = its
  own - 1), watches that key's deletion from the revision the read saw,
  and reads again; none left: it holds the lock (its key still there, or
  the lease ended meanwhile: ``LeaseError``). Past ``timeout`` it deletes
  its key (leaving no place in the queue) and raises ``LockTimeout``.
  ``with lock:`` acquires and releases.
- A watch that breaks (a member stopped or lost its leader: the stream
  asks ``hasleader``) moves to the next endpoint and reads again.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import grpc

from paxoskv.etcdpb import rpc_pb2, rpc_pb2_grpc
from paxoskv.tls import ClientTLS, channel

__all__ = ["KeepAlive", "LeaseClient", "LeaseError", "Lock", "LockTimeout", "prefix_range", "wait_deletes"]

R = rpc_pb2
_NEXT = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class LeaseError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class LockTimeout(LeaseError):
    """``acquire``/``campaign`` gave up at its timeout (its key was deleted)."""

    def __init__(self, message: str) -> None:
        super().__init__("DEADLINE_EXCEEDED", message)


@dataclass(frozen=True, slots=True)
class TimeToLive:
    lease_id: int
    ttl: int  # seconds left; -1: no such lease
    granted_ttl: int
    keys: tuple[bytes, ...]


class LeaseClient:
    def __init__(self, endpoints: list[str], *, timeout_s: float = 5.0, tls: ClientTLS | None = None) -> None:
        if not endpoints:
            raise ValueError("no endpoints")
        self.endpoints = list(endpoints)
        self.timeout_s = timeout_s
        self._tls = tls
        self._channels = [channel(ep, tls) for ep in self.endpoints]

    def close(self) -> None:
        for ch in self._channels:
            ch.close()

    def __enter__(self) -> LeaseClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, fn):  # noqa: ANN001, ANN202
        last: grpc.RpcError | None = None
        for ch in self._channels:
            try:
                return fn(ch)
            except grpc.RpcError as exc:
                if exc.code() not in _NEXT:
                    raise LeaseError(exc.code().name, exc.details() or "") from None
                last = exc
        assert last is not None
        raise LeaseError(last.code().name, last.details() or "no endpoint answered") from None

    def grant(self, ttl_s: int, lease_id: int = 0) -> tuple[int, int]:
        """(the lease id, its TTL: at least the cluster's minimum)."""
        resp = self._call(
            lambda ch: rpc_pb2_grpc.LeaseStub(ch).LeaseGrant(R.LeaseGrantRequest(TTL=ttl_s, ID=lease_id), timeout=self.timeout_s)
        )
        return resp.ID, resp.TTL

    def keep_alive_once(self, lease_id: int) -> int:
        """Renew once: the TTL it was renewed to (0: no such lease)."""

        def once(ch: grpc.Channel) -> int:
            stream = rpc_pb2_grpc.LeaseStub(ch).LeaseKeepAlive(
                iter([R.LeaseKeepAliveRequest(ID=lease_id)]), timeout=self.timeout_s
            )
            for resp in stream:
                return resp.TTL
            raise LeaseError("UNAVAILABLE", "the keep-alive stream ended without an answer")

        return self._call(once)

    def revoke(self, lease_id: int) -> int:
        """Revoke (its keys are deleted at one revision); the revision after."""
        resp = self._call(
            lambda ch: rpc_pb2_grpc.LeaseStub(ch).LeaseRevoke(R.LeaseRevokeRequest(ID=lease_id), timeout=self.timeout_s)
        )
        return resp.header.revision

    def time_to_live(self, lease_id: int, *, keys: bool = False) -> TimeToLive:
        resp = self._call(
            lambda ch: rpc_pb2_grpc.LeaseStub(ch).LeaseTimeToLive(
                R.LeaseTimeToLiveRequest(ID=lease_id, keys=keys), timeout=self.timeout_s
            )
        )
        return TimeToLive(resp.ID, resp.TTL, resp.grantedTTL, tuple(resp.keys))

    def keep_alive(self, lease_id: int, ttl_s: int) -> KeepAlive:
        """Renew every ``ttl_s / 3`` in a thread (``KeepAlive.stop()``)."""
        ka = KeepAlive(self, lease_id, ttl_s)
        ka.start()
        return ka


class KeepAlive(threading.Thread):
    def __init__(self, client: LeaseClient, lease_id: int, ttl_s: int) -> None:
        super().__init__(daemon=True, name=f"keep-alive {lease_id:x}")
        self.client = client
        self.lease_id = lease_id
        self.interval_s = max(ttl_s / 3, 0.1)
        self.lost = threading.Event()
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                if self.client.keep_alive_once(self.lease_id) <= 0:
                    self.lost.set()
                    return
            except LeaseError:
                pass  # no endpoint answered: again at the next interval, as etcd's client does
            self._stop_event.wait(self.interval_s)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=self.client.timeout_s * len(self.client.endpoints) + 1)


class Lock:
    """etcd's lock on ``name`` held through ``lease_id`` (see the module rules)."""

    def __init__(self, client: LeaseClient, name: str, lease_id: int) -> None:
        self.client = client
        self.name = name
        self.prefix = name.encode() + b"/"
        self.key = self.prefix + b"%x" % lease_id
        self.lease_id = lease_id
        self.token: int | None = None  # the fencing token, while held
        self._own_rev: int | None = None  # its key's create revision, once put

    def _enqueue(self) -> tuple[int, bool]:
        """Put the key if absent; (its create revision, whether it is the first under the prefix)."""
        key, end = prefix_range(self.prefix)
        first = R.RangeRequest(key=key, range_end=end, sort_target=R.RangeRequest.CREATE,
                               sort_order=R.RangeRequest.ASCEND, limit=1)
        txn = R.TxnRequest(
            compare=[R.Compare(key=self.key, target=R.Compare.CREATE, result=R.Compare.EQUAL, create_revision=0)],
            success=[R.RequestOp(request_put=R.PutRequest(key=self.key, lease=self.lease_id)),
                     R.RequestOp(request_range=first)],
            failure=[R.RequestOp(request_range=R.RangeRequest(key=self.key)), R.RequestOp(request_range=first)],
        )
        resp = self.client._call(lambda ch: rpc_pb2_grpc.KVStub(ch).Txn(txn, timeout=self.client.timeout_s))
        mine = resp.header.revision if resp.succeeded else resp.responses[0].response_range.kvs[0].create_revision
        owner = resp.responses[1].response_range.kvs
        self._own_rev = mine
        return mine, bool(owner) and owner[0].create_revision == mine

    def try_acquire(self) -> int | None:
        """The fencing token (the key's create revision) if this holds the lock now, else None."""
        mine, held = self._enqueue()
        self.token = mine if held else None
        return self.token

    def acquire(self, timeout: float | None = None) -> int:
        """Wait until this holds the lock (at most ``timeout`` seconds: else
        ``LockTimeout``, its key deleted); the fencing token."""
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            mine, held = self._enqueue()
            if not held:
                wait_deletes(self.client, self.prefix, mine, deadline)
                _still_there(self.client, self.key, mine, f"lock {self.name}")
        except LockTimeout as exc:
            self.release()
            raise LockTimeout(f"lock {self.name} not acquired within {timeout:g} s: {exc.message}") from None
        except BaseException:
            self.release()  # an interrupted wait leaves no place in the queue
            raise
        self.token = mine
        return mine

    def release(self) -> None:
        """Delete the lock key (the lease stays)."""
        self.client._call(
            lambda ch: rpc_pb2_grpc.KVStub(ch).DeleteRange(R.DeleteRangeRequest(key=self.key), timeout=self.client.timeout_s)
        )
        self.token = None
        self._own_rev = None

    def __enter__(self) -> Lock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _still_there(client: LeaseClient, key: bytes, create_rev: int, what: str) -> None:
    """After a wait: ``key`` must still be the one created at ``create_rev``
    (else its lease ended meanwhile: ``LeaseError``)."""
    resp = client._call(lambda ch: rpc_pb2_grpc.KVStub(ch).Range(R.RangeRequest(key=key), timeout=client.timeout_s))
    if not resp.kvs or resp.kvs[0].create_revision != create_rev:
        raise LeaseError("NOT_FOUND", f"{what}: its key {key.decode(errors='replace')} is gone (the lease ended) while waiting")

def prefix_range(prefix: bytes) -> tuple[bytes, bytes]:
    """(key, range_end) of every key starting with ``prefix`` (non-empty, not all 0xff)."""
    p = bytearray(prefix)
    while p and p[-1] == 0xFF:
        p.pop()
    if not p:
        raise ValueError(f"no key range for the prefix {prefix!r}")
    p[-1] += 1
    return prefix, bytes(p)


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else deadline - time.monotonic()


def wait_deletes(client: LeaseClient, prefix: bytes, own_rev: int, deadline: float | None) -> None:
    """Return once no key under ``prefix`` has a create revision below
    ``own_rev`` (etcd's waitDeletes); ``LockTimeout`` past ``deadline``
    (``time.monotonic()``; None: never). One Range per predecessor and one
    more, one Watch per predecessor: no polling."""
    key, end = prefix_range(prefix)
    last = R.RangeRequest(key=key, range_end=end, sort_target=R.RangeRequest.CREATE,
                          sort_order=R.RangeRequest.DESCEND, limit=1, max_create_revision=own_rev - 1)
    start = 0  # the endpoint the next watch tries first
    while True:
        resp = client._call(lambda ch: rpc_pb2_grpc.KVStub(ch).Range(last, timeout=client.timeout_s))
        if not resp.kvs:
            return
        start = _wait_delete(client, resp.kvs[0].key, resp.header.revision, deadline, start)


def _wait_delete(client: LeaseClient, key: bytes, rev: int, deadline: float | None, start: int) -> int:
    """Block until ``key`` is deleted at or after ``rev`` (or its watch
    ends: the caller reads again); the endpoint to try first next time."""
    create = R.WatchCreateRequest(key=key, start_revision=rev, filters=[R.WatchCreateRequest.NOPUT])
    channels = client._channels
    for i in range(len(channels)):
        at = (start + i) % len(channels)
        left = _left(deadline)
        if left is not None and left <= 0:
            raise LockTimeout(f"{key.decode(errors='replace')} was still there at the timeout")
        stream = rpc_pb2_grpc.WatchStub(channels[at]).Watch(
            iter([R.WatchRequest(create_request=create)]), timeout=left, metadata=(("hasleader", "true"),)
        )
        try:
            for resp in stream:
                if resp.canceled or any(e.type == e.DELETE for e in resp.events):
                    return at  # deleted; or canceled (e.g. compacted): read again
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED and deadline is not None and _left(deadline) <= 0:
                raise LockTimeout(f"{key.decode(errors='replace')} was still there at the timeout") from None
            if exc.code() not in (*_NEXT, grpc.StatusCode.CANCELLED, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
                raise LeaseError(exc.code().name, exc.details() or "") from None
        finally:
            stream.cancel()
    return start + 1  # every endpoint's stream broke: read again from the next one
