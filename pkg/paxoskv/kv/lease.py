"""Leases in the replicated state machine: what granting, revoking,
checkpointing and expiring a lease does to the state every member keeps.

Rules (etcd 3.4.23: lease/lessor.go, etcdserver/apply.go):

- A lease is its id (int64, never 0), its granted TTL in seconds, the
  remaining time of its last checkpoint (``remaining_ms``, 0: none since it
  was granted or last renewed through the log) and its ``epoch`` (renewals
  through the log). Its keys are the live keys whose record names it
  (``MVCCStore.lease_keys``): a put with another lease or none moves the
  key, a delete drops it; nothing else records them.
- Everything here is deterministic and reads no clock: time is measured by
  the leader's lessor (``paxoskv.replica.lease``) on its ticks, and reaches
  the state machine only as numbers in the log (a checkpoint's
  ``remaining_ms``). The proposer chooses a grant's id and clamps its TTL to
  its minimum before proposing; applying takes both as they are.
- Grant: id 0 is ``requested lease not found`` (etcd's lessor refuses
  NoLease), a TTL over ``MAX_LEASE_TTL`` is ``too large lease TTL``, an id
  in use is ``lease already exists``.
- Revoke (a client's, or an expiry the leader proposed whose epoch still
  matches): every attached key is deleted in ONE revision (key order), then
  the lease is gone. An unknown id is ``requested lease not found``; an
  expiry of a lease renewed since (another epoch) changes nothing.
- Every change is handed to storage with the apply batch
  (``take_changes``: id -> ``StoredLease`` bytes, None: gone) and, as a
  ``LeaseEvent``, to the node's lessor (``take_events``), which stamps it
  with its own tick count.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from paxoskv.etcdpb import rpc_pb2
from paxoskv.kv.etcd import ERR_LEASE_NOT_FOUND, EtcdError
from paxoskv.kv.mvcc import MVCCStore
from paxoskv.v1 import kv_pb2, storage_pb2

__all__ = [
    "ERR_LEASE_EXISTS",
    "ERR_LEASE_TTL_TOO_LARGE",
    "GRANT",
    "CHECKPOINT",
    "MAX_LEASE_TTL",
    "RENEW",
    "REVOKE",
    "Lease",
    "LeaseEvent",
    "LeaseTable",
    "lease_row_key",
]

MAX_LEASE_TTL = 9_000_000_000  # seconds (lease.MaxLeaseTTL)
ERR_LEASE_EXISTS = EtcdError("FAILED_PRECONDITION", "etcdserver: lease already exists")
ERR_LEASE_TTL_TOO_LARGE = EtcdError("OUT_OF_RANGE", "etcdserver: too large lease TTL")

GRANT, CHECKPOINT, RENEW, REVOKE = "grant", "checkpoint", "renew", "revoke"

_ID = struct.Struct(">q")


def lease_row_key(lease_id: int) -> bytes:
    """The 8-byte key of a lease's record (int64 big-endian)."""
    return _ID.pack(lease_id)


@dataclass(slots=True)
class Lease:
    ttl: int  # granted, seconds
    remaining_ms: int = 0  # last checkpoint; 0: none since the grant or the last renewal
    epoch: int = 0

    def to_proto(self, lease_id: int) -> storage_pb2.StoredLease:
        return storage_pb2.StoredLease(ID=lease_id, ttl=self.ttl, remaining_ms=self.remaining_ms, epoch=self.epoch)

    @classmethod
    def from_proto(cls, pb: storage_pb2.StoredLease) -> Lease:
        return cls(pb.ttl, pb.remaining_ms, pb.epoch)


def check_stored(pb: storage_pb2.StoredLease) -> str | None:
    """Why a stored (or snapshot) lease record cannot be one, or None."""
    if pb.ID == 0:
        return "a lease with id 0"
    if not 1 <= pb.ttl <= MAX_LEASE_TTL:
        return f"lease {pb.ID:x} has TTL {pb.ttl}"
    if not 0 <= pb.remaining_ms <= pb.ttl * 1000:
        return f"lease {pb.ID:x} has {pb.remaining_ms} ms left of a {pb.ttl} s TTL"
    return None


@dataclass(frozen=True, slots=True)
class LeaseEvent:
    """A lease change applied here, for the lessor: ``GRANT`` and ``RENEW``
    (the whole ``ttl`` from now), ``CHECKPOINT`` (``remaining_ms`` from
    now), ``REVOKE``."""

    kind: str
    lease_id: int
    ttl: int = 0
    remaining_ms: int = 0
    epoch: int = 0


class LeaseTable:
    """The leases of one state machine (implements ``kv.etcd.Leases``)."""

    def __init__(self, leases: Iterable[tuple[int, Lease]] = ()) -> None:
        self._leases: dict[int, Lease] = dict(leases)
        self._changes: dict[int, Lease | None] = {}
        self._events: list[LeaseEvent] = []

    def exists(self, lease_id: int) -> bool:
        return lease_id in self._leases

    def get(self, lease_id: int) -> Lease | None:
        return self._leases.get(lease_id)

    def __len__(self) -> int:
        return len(self._leases)

    def items(self) -> Iterator[tuple[int, Lease]]:
        """Every (id, lease), in id order."""
        for lease_id in sorted(self._leases):
            yield lease_id, self._leases[lease_id]

    # ---- applying (the state machine calls these) ---------------------------------

    def grant(self, store: MVCCStore, req: rpc_pb2.LeaseGrantRequest) -> rpc_pb2.LeaseGrantResponse | EtcdError:
        if req.ID == 0:
            return ERR_LEASE_NOT_FOUND
        if req.TTL > MAX_LEASE_TTL:
            return ERR_LEASE_TTL_TOO_LARGE
        if req.ID in self._leases:
            return ERR_LEASE_EXISTS
        ttl = max(1, req.TTL)  # the proposer clamped it to the minimum; never below a second
        lease = self._leases[req.ID] = Lease(ttl)
        self._changed(req.ID, lease)
        self._events.append(LeaseEvent(GRANT, req.ID, ttl=ttl))
        resp = rpc_pb2.LeaseGrantResponse(ID=req.ID, TTL=ttl)
        resp.header.revision = store.revision
        return resp

    def revoke(self, store: MVCCStore, req: rpc_pb2.LeaseRevokeRequest) -> rpc_pb2.LeaseRevokeResponse | EtcdError:
        if req.ID not in self._leases:
            return ERR_LEASE_NOT_FOUND
        self._revoke(store, req.ID)
        resp = rpc_pb2.LeaseRevokeResponse()
        resp.header.revision = store.revision
        return resp

    def expire(self, store: MVCCStore, req: kv_pb2.LeaseExpire) -> rpc_pb2.LeaseRevokeResponse | EtcdError:
        """An expiry the leader proposed: a revoke, unless renewed since."""
        lease = self._leases.get(req.ID)
        if lease is None or lease.epoch != req.epoch:
            return ERR_LEASE_NOT_FOUND
        self._revoke(store, req.ID)
        resp = rpc_pb2.LeaseRevokeResponse()
        resp.header.revision = store.revision
        return resp

    def checkpoint(self, store: MVCCStore, req: kv_pb2.LeaseCheckpoints) -> rpc_pb2.LeaseCheckpointResponse:
        for cp in req.checkpoints:
            lease = self._leases.get(cp.ID)
            if lease is None or cp.remaining_ms < 0:
                continue  # revoked meanwhile (or nonsense): nothing to remember
            if cp.remaining_ms == 0:
                lease.remaining_ms = 0
                lease.epoch += 1
                self._events.append(LeaseEvent(RENEW, cp.ID, ttl=lease.ttl, epoch=lease.epoch))
            else:
                lease.remaining_ms = min(cp.remaining_ms, lease.ttl * 1000)
                self._events.append(
                    LeaseEvent(CHECKPOINT, cp.ID, ttl=lease.ttl, remaining_ms=lease.remaining_ms, epoch=lease.epoch)
                )
            self._changed(cp.ID, lease)
        resp = rpc_pb2.LeaseCheckpointResponse()
        resp.header.revision = store.revision
        return resp

    def _revoke(self, store: MVCCStore, lease_id: int) -> None:
        keys = sorted(store.lease_keys(lease_id))
        if keys:
            store.begin()
            for key in keys:
                store.delete(key)
            store.end()
        del self._leases[lease_id]
        self._changed(lease_id, None)
        self._events.append(LeaseEvent(REVOKE, lease_id))

    def _changed(self, lease_id: int, lease: Lease | None) -> None:
        self._changes[lease_id] = lease

    # ---- persistence -----------------------------------------------------------------

    def take_changes(self) -> dict[int, bytes | None]:
        """The lease records written (``StoredLease`` bytes) or dropped (None)
        since the last call."""
        changes, self._changes = self._changes, {}
        return {
            lease_id: None if lease is None else lease.to_proto(lease_id).SerializeToString()
            for lease_id, lease in changes.items()
        }

    def take_events(self) -> list[LeaseEvent]:
        events, self._events = self._events, []
        return events
