"""Feature gates of the node layer: a command kind that a member of an older
version cannot decode or would apply differently is proposed only once
every member is known to take it (``Core.cluster_features``: the bits each
member announced in its HeartbeatAck, aggregated by the leader).

Rules:

- Leases (``FEATURE_LEASES``): a lease grant, revoke, checkpoint or expiry;
  a Put naming a lease or ``ignore_lease``; a Txn holding one, or comparing
  a key's LEASE. A member without leases would apply such a put without its
  lease (and keep the key past its lease's end) or evaluate such a compare
  on a record without one: the members' states would diverge.
- While the gate is closed the call is refused before anything is proposed,
  with ``ERR_LEASES_NOT_ANNOUNCED`` (UNAVAILABLE: etcd's clients retry it),
  and the leader proposes no checkpoint or expiry (a lease then lives on
  until every member takes leases: later, never earlier).
- A member not heard from since this node started counts as one without
  the feature (0), as for packed batches: after a start, a leader needs one
  ack from every member, a follower one heartbeat of the leader.
"""

from __future__ import annotations

from typing import Any

from paxoskv.etcdpb import rpc_pb2
from paxoskv.kv import etcd
from paxoskv.paxos.types import FEATURE_LEASES

__all__ = ["ERR_LEASES_NOT_ANNOUNCED", "LEASE_FIELDS", "lease_refusal", "leases_allowed", "uses_leases"]

LEASE_FIELDS = frozenset({"lease_grant", "lease_revoke", "lease_checkpoint", "lease_expire"})
ERR_LEASES_NOT_ANNOUNCED = etcd.EtcdError(
    "UNAVAILABLE",
    "etcdserver: leases are not served yet: not every member is known to take them "
    "(a member of an older version, or one not heard from since this member started)",
)
_LEASE_TARGET = rpc_pb2.Compare.LEASE


def leases_allowed(core: Any) -> bool:  # noqa: ANN401
    """Every member of the cluster is known to take lease commands."""
    return bool(core.cluster_features & FEATURE_LEASES)


def uses_leases(field: str, request: Any) -> bool:  # noqa: ANN401
    """Whether the etcd command ``field`` holding ``request`` needs leases."""
    if field in LEASE_FIELDS:
        return True
    if field == "put":
        return bool(request.lease or request.ignore_lease)
    if field == "txn":
        return _txn_uses_leases(request)
    return False


def _txn_uses_leases(txn: rpc_pb2.TxnRequest) -> bool:
    if any(c.target == _LEASE_TARGET for c in txn.compare):
        return True
    for op in (*txn.success, *txn.failure):
        kind = op.WhichOneof("request")
        if kind == "request_put" and (op.request_put.lease or op.request_put.ignore_lease):
            return True
        if kind == "request_txn" and _txn_uses_leases(op.request_txn):
            return True
    return False


def lease_refusal(core: Any, field: str, request: Any) -> etcd.EtcdError | None:  # noqa: ANN401
    """``ERR_LEASES_NOT_ANNOUNCED`` when the command needs leases and not
    every member is known to take them; else None."""
    if uses_leases(field, request) and not leases_allowed(core):
        return ERR_LEASES_NOT_ANNOUNCED
    return None
