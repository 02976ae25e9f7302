"""The client history of a simulated run: one record per operation.

Rules:

- Every operation a client invokes is recorded at invocation, and is never
  dropped: it ends ``ok`` (the client got the answer), ``fail`` (it certainly
  had no effect: every attempt was refused before reaching a log) or
  ``unknown`` (the client gave up, or the run ended, without an answer; it may
  or may not have taken effect, at any time after its call).
- Times are simulated microseconds. ``return_us`` is None unless ``ok`` or
  ``fail``.
- Values written are unique per run (``<client>.<n>``), so a value read
  names the write that produced it.
- A serializable get may be stale: it is not part of the linearizable
  history, only checked to read a value some write had already sent.
"""

from __future__ import annotations

from dataclasses import dataclass

PUT = "put"
GET = "get"
DELETE = "delete"

PENDING = "pending"
OK = "ok"
FAIL = "fail"
UNKNOWN = "unknown"


@dataclass(slots=True)
class Operation:
    """One client operation; mutable only while in flight."""

    op_id: int
    client_id: str
    kind: str  # PUT, GET or DELETE
    key: bytes
    value: bytes | None  # PUT: the value written; GET: the value read (None = absent)
    sequence: int  # (client_id, sequence) of a write; 0 for a GET
    call_us: int
    return_us: int | None = None
    outcome: str = PENDING
    existed: bool | None = None  # PUT/DELETE ok: the key had a value before
    attempts: int = 0
    maybe_applied: bool = False  # some attempt may have entered the log
    serializable: bool = False  # GET: served from one node's state, no quorum (may be stale)

    def finish(self, outcome: str, now_us: int) -> None:
        assert self.outcome == PENDING, self
        assert outcome in (OK, FAIL, UNKNOWN), outcome
        self.outcome = outcome
        if outcome != UNKNOWN:
            self.return_us = now_us

    def describe(self) -> str:
        end = "…" if self.return_us is None else f"{self.return_us / 1000:.3f}"
        what = {
            PUT: f"put({self.key!r}, {self.value!r})",
            DELETE: f"delete({self.key!r})",
            GET: f"get({self.key!r}{', serializable' if self.serializable else ''})",
        }[self.kind]
        if self.outcome == OK:
            res = repr(self.value) if self.kind == GET else f"existed={self.existed}"
        else:
            res = self.outcome
        return (
            f"#{self.op_id} {self.client_id}:{self.sequence} {what} -> {res} "
            f"[{self.call_us / 1000:.3f}, {end}] ms"
        )
