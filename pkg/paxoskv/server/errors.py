"""Errors a node reports to its client facade, each mapping to one gRPC code."""

from __future__ import annotations


class NodeError(Exception):
    """Base of the errors below; ``str(e)`` is a one-line message for a person."""


class Unavailable(NodeError):
    """No leader can serve the request now (UNAVAILABLE). ``leader_id`` and
    ``leader_addr`` ("host:port" of its public gRPC port) hint where to retry.
    The request may or may not have been applied: retry it with the same
    (client_id, sequence)."""

    def __init__(self, message: str, *, leader_id: int | None = None, leader_addr: str | None = None) -> None:
        super().__init__(message)
        self.leader_id = leader_id
        self.leader_addr = leader_addr


class DeadlineExceeded(NodeError):
    """The deadline passed before the answer was known (DEADLINE_EXCEEDED).
    The request may still be applied later."""


class InvalidArgument(NodeError):
    """The request is malformed or over a limit (INVALID_ARGUMENT); nothing was written."""


class Unimplemented(NodeError):
    """This request needs something the cluster cannot do (yet) (UNIMPLEMENTED):
    nothing was written. A packed batch before every member is known to take
    them: send the per-op form."""
