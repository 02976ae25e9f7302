"""The runtime-free node layer: ``ReplicaNode`` (a ``Replica`` -- core, state
machine and storage -- plus the table of waiting client calls), driven by
the asyncio server and by the simulator alike."""

from paxoskv.replica.calls import Call, CallTable
from paxoskv.replica.errors import (
    DeadlineExceeded,
    EtcdFailure,
    FailedPrecondition,
    InvalidArgument,
    NodeError,
    ResourceExhausted,
    Unavailable,
    Unimplemented,
)
from paxoskv.replica.node import CallLimits, NodeStatus, ReplicaNode, result_or_error
from paxoskv.replica.replica import Batch, Done, Replica

__all__ = [
    "Batch",
    "Call",
    "CallLimits",
    "CallTable",
    "DeadlineExceeded",
    "Done",
    "EtcdFailure",
    "FailedPrecondition",
    "InvalidArgument",
    "NodeError",
    "NodeStatus",
    "Replica",
    "ReplicaNode",
    "ResourceExhausted",
    "Unavailable",
    "Unimplemented",
    "result_or_error",
]
