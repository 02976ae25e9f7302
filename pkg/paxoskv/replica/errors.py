"""What the node layer answers a client call with when it cannot give a
result: one class per cause, each mapped to one gRPC status code by the
facade (``paxoskv.api``). ``str(e)`` is one line for a person."""

from __future__ import annotations

__all__ = [
    "DeadlineExceeded",
    "FailedPrecondition",
    "InvalidArgument",
    "NodeError",
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

    def __init__(
        self,
        message: str,
        *,
        leader_id: int | None = None,
        leader_addr: str | None = None,
        proposed: bool = True,
    ) -> None:
        super().__init__(message)
        self.leader_id = leader_id
        self.leader_addr = leader_addr
        self.proposed = proposed


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
