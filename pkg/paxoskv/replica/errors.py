"""What the node layer answers a client call with when it cannot give a
result: one class per cause, each mapped to one gRPC status code by the
facade (``paxoskv.api``). ``str(e)`` is one line for a person."""

from __future__ import annotations

__all__ = [
    "DeadlineExceeded",
    "EtcdFailure",
    "FailedPrecondition",
    "InvalidArgument",
    "NodeError",
    "ResourceExhausted",
    "Unavailable",
    "Unimplemented",
]


class NodeError(Exception):
    """Base of the errors below."""


class Unavailable(NodeError):
    """No leader can serve the request now (UNAVAILABLE). ``leader_id`` and
    ``leader_addr`` ("host:port" of its public gRPC port) hint where to retry.
    A write may or may not have been applied -- unless ``proposed`` is False
    (it was refused before it reached any log): retry it with the same
    (client_id, sequence)."""

    NO_LEADER = "no-leader"
    LEADER_CHANGED = "leader-changed"
    UNCONFIRMED = "unconfirmed"
    STOPPED = "stopped"

    def __init__(
        self,
        message: str,
        *,
        leader_id: int | None = None,
        leader_addr: str | None = None,
        proposed: bool = True,
        reason: str = "",
    ) -> None:
        super().__init__(message)
        self.leader_id = leader_id
        self.leader_addr = leader_addr
        self.proposed = proposed
        self.reason = reason  # one of the constants above, "" when not known


class DeadlineExceeded(NodeError):
    """The deadline passed before the answer was known (DEADLINE_EXCEEDED).
    The request may still be applied later."""


class InvalidArgument(NodeError):
    """The request is malformed or over a limit (INVALID_ARGUMENT); nothing was written."""


class FailedPrecondition(NodeError):
    """The request's sequence is older than its client's last applied one
    (FAILED_PRECONDITION); nothing was written."""


class Unimplemented(NodeError):
    """This request needs something the cluster cannot do (yet) (UNIMPLEMENTED):
    nothing was written. A packed batch before every member is known to take
    them: send the per-op form."""


class ResourceExhausted(NodeError):
    """The space quota is exhausted (the NOSPACE alarm is raised): a put is
    refused (RESOURCE_EXHAUSTED) until it is disarmed; nothing was written."""


class EtcdFailure(NodeError):
    """An etcd API call failed: etcd's gRPC status code name (``code``, a
    ``grpc.StatusCode`` member name) and message, byte for byte as etcd's."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
