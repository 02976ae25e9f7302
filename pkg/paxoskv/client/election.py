"""etcd's leader election from Python (clientv3/concurrency/election.go, the
keys ``etcdctl elect NAME`` uses, so the two contend on one name).

Rules:

- A candidate's key is ``NAME/<lease hex>``, put with its lease and its
  proposal as the value; the leader is the key with the lowest create
  revision under ``NAME/``. That create revision is the leadership's
  **fencing token**: a leader whose lease ended may still believe it leads,
  so what it drives must refuse a token lower than the highest it has seen.
- ``campaign(value, timeout)`` puts the key (or finds it, and proclaims the
  value if it differs) and waits, without polling, until every key created
  before it is deleted (``lease.wait_deletes``): then it leads. Past
  ``timeout`` it deletes its key and raises ``LockTimeout``.
- ``proclaim(value)`` changes the leader's value, only while its key is the
  one it campaigned with (else ``NotLeader``: etcd's ``election: not
  leader``); ``resign()`` deletes the key (the next candidate leads).
- ``leader()``: (value, fencing token) of the current leader; ``NoLeader``
  (etcd's ``election: no leader``) when there is none.
- ``observe()``: an async iterator of (value, token) leaderships, the
  current one first (etcd's Observe): it reads the leader and watches the
  prefix from the revision after that read; a change of the leader's value
  is yielded, its deletion makes it read the next leader.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from paxoskv.client.etcd_watch import WatchCanceled, watch
from paxoskv.client.lease import LeaseClient, LeaseError, LockTimeout, _still_there, prefix_range, wait_deletes
from paxoskv.etcdpb import kv_pb2 as mvccpb
from paxoskv.etcdpb import rpc_pb2, rpc_pb2_grpc

__all__ = ["Election", "NoLeader", "NotLeader"]

R = rpc_pb2


class NoLeader(LeaseError):
    def __init__(self) -> None:
        super().__init__("NOT_FOUND", "election: no leader")


class NotLeader(LeaseError):
    def __init__(self) -> None:
        super().__init__("FAILED_PRECONDITION", "election: not leader")


def _bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


class Election:
    """One candidate of the election ``name``, through ``lease_id`` (see the
    module rules; ``leader()`` and ``observe()`` need no lease: 0)."""

    def __init__(self, client: LeaseClient, name: str, lease_id: int = 0) -> None:
        self.client = client
        self.name = name
        self.prefix = name.encode() + b"/"
        self.key = self.prefix + b"%x" % lease_id
        self.lease_id = lease_id
        self.token: int | None = None  # the fencing token, while it leads

    def _txn(self, txn: R.TxnRequest) -> R.TxnResponse:
        c = self.client
        return c._call(lambda ch: rpc_pb2_grpc.KVStub(ch).Txn(txn, timeout=c.timeout_s))

    def campaign(self, value: bytes | str, timeout: float | None = None) -> int:
        """Wait until this candidate leads with ``value``; its fencing token."""
        if not self.lease_id:
            raise ValueError("a candidate campaigns through a lease: Election(client, name, lease_id)")
        deadline = None if timeout is None else time.monotonic() + timeout
        val = _bytes(value)
        resp = self._txn(R.TxnRequest(
            compare=[R.Compare(key=self.key, target=R.Compare.CREATE, result=R.Compare.EQUAL, create_revision=0)],
            success=[R.RequestOp(request_put=R.PutRequest(key=self.key, value=val, lease=self.lease_id))],
            failure=[R.RequestOp(request_range=R.RangeRequest(key=self.key))],
        ))
        if resp.succeeded:
            mine = resp.header.revision
        else:
            kv = resp.responses[0].response_range.kvs[0]
            mine = kv.create_revision
            if kv.value != val:
                self.token = mine
                self.proclaim(val)
        try:
            wait_deletes(self.client, self.prefix, mine, deadline)
            _still_there(self.client, self.key, mine, f"election {self.name}")
        except LockTimeout as exc:
            self.resign(own_rev=mine)
            raise LockTimeout(f"election {self.name} not won within {timeout:g} s: {exc.message}") from None
        except BaseException:
            self.resign(own_rev=mine)
            raise
        self.token = mine
        return mine

    def proclaim(self, value: bytes | str) -> None:
        """The leader's new value (``NotLeader`` unless this leads with the key it campaigned with)."""
        if self.token is None:
            raise NotLeader()
        resp = self._txn(R.TxnRequest(
            compare=[R.Compare(key=self.key, target=R.Compare.CREATE, result=R.Compare.EQUAL,
                               create_revision=self.token)],
            success=[R.RequestOp(request_put=R.PutRequest(key=self.key, value=_bytes(value), lease=self.lease_id))],
        ))
        if not resp.succeeded:
            self.token = None
            raise NotLeader()

    def resign(self, *, own_rev: int | None = None) -> None:
        """Give up the leadership (or the place in the queue): delete the key it campaigned with."""
        rev = own_rev if own_rev is not None else self.token
        self.token = None
        if rev is None:
            return
        self._txn(R.TxnRequest(
            compare=[R.Compare(key=self.key, target=R.Compare.CREATE, result=R.Compare.EQUAL, create_revision=rev)],
            success=[R.RequestOp(request_delete_range=R.DeleteRangeRequest(key=self.key))],
        ))

    def _first(self) -> tuple[mvccpb.KeyValue | None, int]:
        """The leader's key-value (None: no leader) and the revision of the read."""
        key, end = prefix_range(self.prefix)
        first = R.RangeRequest(key=key, range_end=end, sort_target=R.RangeRequest.CREATE,
                               sort_order=R.RangeRequest.ASCEND, limit=1)
        c = self.client
        resp = c._call(lambda ch: rpc_pb2_grpc.KVStub(ch).Range(first, timeout=c.timeout_s))
        return (resp.kvs[0] if resp.kvs else None), resp.header.revision

    def leader(self) -> tuple[bytes, int]:
        """(the leader's value, its fencing token); ``NoLeader`` if none."""
        kv, _ = self._first()
        if kv is None:
            raise NoLeader()
        return kv.value, kv.create_revision

    async def observe(self) -> AsyncIterator[tuple[bytes, int]]:
        """Every leadership (value, token) from the current one on, and every
        value a leader proclaims; runs until the caller stops iterating. If
        the revision after a read is compacted before the watch opens, the
        leader is read again (a leadership that came and went entirely in
        that window is not seen)."""
        last: tuple[bytes, int] | None = None
        c = self.client
        while True:
            kv, rev = await asyncio.to_thread(self._first)
            if kv is not None and (kv.value, kv.create_revision) != last:
                last = (kv.value, kv.create_revision)
                yield last
            events = watch(c.endpoints, self.prefix, prefix=True, start_revision=rev + 1, tls=c._tls)
            try:
                async with contextlib.aclosing(events):
                    async for batch in events:
                        moved = False  # read the leader again: there was none and a key was put, or it went
                        for ev in batch.events:
                            if kv is None or ev.key != kv.key:
                                moved = kv is None and ev.type == "PUT"
                            elif ev.type == "DELETE":
                                moved = True
                            elif last is not None and ev.value != last[0]:
                                last = (ev.value, ev.create_revision)
                                yield last
                            if moved:
                                break
                        if moved:
                            break
            except WatchCanceled as exc:
                if not exc.compact_revision:
                    raise
                # the revision after the read was compacted before the watch
                # opened: what happened in between is read again, not lost
