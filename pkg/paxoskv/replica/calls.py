"""The table of client calls waiting on one node.

Rules:

- A ``Call`` has ``n`` answer slots; each is filled once (a result, or a
  ``NodeError``), and ``on_done(call)`` runs exactly once: when the last slot
  is filled, or when ``fail`` ends the call as a whole (``call.error``).
- A call is registered under what will answer it: a write under its
  ``(client_id, sequence)`` (several calls may wait on one), a batch under
  its waiter handle, a read under its read id. An answer removes the
  registration it fires; ``expire`` removes the call's remaining ones and
  fills every empty slot with the call's ``late`` error.
- Nothing here knows a clock or a loop: the driver calls ``expire`` when the
  call's deadline passes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from paxoskv.replica.errors import NodeError

__all__ = ["Call", "CallTable"]

_UNSET = object()


class Call:
    """One client call and its answers."""

    __slots__ = ("results", "pending", "error", "late", "_on_done", "_regs", "_table")

    def __init__(self, n: int, on_done: Callable[[Call], None], late: NodeError) -> None:
        self.results: list[Any] = [_UNSET] * n
        self.pending = n
        self.error: NodeError | None = None  # the call failed as a whole
        self.late = late
        self._on_done = on_done
        self._regs: list[tuple[str, Any]] = []
        self._table: CallTable | None = None

    @property
    def done(self) -> bool:
        return self._on_done is None

    def set(self, i: int, value: object) -> None:
        if self.results[i] is _UNSET and self._on_done is not None:
            self.results[i] = value
            self.pending -= 1
            if self.pending == 0:
                self._finish()

    def is_set(self, i: int) -> bool:
        return self.results[i] is not _UNSET

    def fail(self, error: NodeError) -> None:
        """End the call as a whole (nothing of it was proposed)."""
        if self._on_done is not None:
            self.error = error
            self._finish()

    def _finish(self) -> None:
        on_done, self._on_done = self._on_done, None
        table = self._table
        if table is not None:
            table._forget(self)
        assert on_done is not None
        on_done(self)


class CallTable:
    """Every call waiting on a node, by what will answer it."""

    def __init__(self) -> None:
        self._writes: dict[tuple[str, int], list[tuple[Call, int]]] = {}
        self._batches: dict[bytes, tuple[Call, Callable[[Any], None]]] = {}
        self._reads: dict[int, tuple[Call, int, Callable[[], Any]]] = {}
        self._open: set[Call] = set()

    @property
    def pending(self) -> int:
        """Calls registered here and not done."""
        return len(self._open)

    @property
    def writes_waiting(self) -> bool:
        return bool(self._writes or self._batches)

    def _track(self, call: Call) -> None:
        if call._table is None:
            call._table = self
            self._open.add(call)

    def _forget(self, call: Call) -> None:
        self._open.discard(call)
        for kind, key in call._regs:
            if kind == "w":
                lst = self._writes.get(key)
                if lst is not None:
                    lst[:] = [w for w in lst if w[0] is not call]
                    if not lst:
                        del self._writes[key]
            elif kind == "b":
                entry = self._batches.get(key)
                if entry is not None and entry[0] is call:
                    del self._batches[key]
            else:
                entry = self._reads.get(key)
                if entry is not None and entry[0] is call:
                    del self._reads[key]
        call._regs.clear()

    # ---- registering -------------------------------------------------------------

    def add_write(self, identity: tuple[str, int], call: Call, i: int) -> None:
        self._track(call)
        self._writes.setdefault(identity, []).append((call, i))
        call._regs.append(("w", identity))

    def add_batch(self, waiter: bytes, call: Call, on_results: Callable[[Any], None]) -> None:
        """``on_results`` gets the batch's result tuple, or a NodeError."""
        self._track(call)
        self._batches[waiter] = (call, on_results)
        call._regs.append(("b", waiter))

    def add_read(self, read_id: int, call: Call, i: int, serve: Callable[[], Any]) -> None:
        """``serve()`` gives the read's answer once its read index is applied."""
        self._track(call)
        self._reads[read_id] = (call, i, serve)
        call._regs.append(("r", read_id))

    # ---- answering ---------------------------------------------------------------

    def write_applied(self, identity: tuple[str, int], value: object) -> None:
        ws = self._writes.pop(identity, None)
        if ws:
            for call, i in ws:
                call.set(i, value)

    def batch_applied(self, waiter: bytes, results: object) -> None:
        entry = self._batches.pop(waiter, None)
        if entry is not None:
            entry[1](results)

    def read_released(self, read_id: int, ok: bool, refused: Callable[[], NodeError]) -> None:
        entry = self._reads.pop(read_id, None)
        if entry is not None:
            call, i, serve = entry
            call.set(i, serve() if ok else refused())

    def fail_writes(self, error: NodeError) -> None:
        """Every write and batch waiting here (their commands may be lost)."""
        writes, self._writes = self._writes, {}
        batches, self._batches = self._batches, {}
        for ws in writes.values():
            for call, i in ws:
                call.set(i, error)
        for _, on_results in batches.values():
            on_results(error)

    def fail_all(self, error: NodeError) -> None:
        self.fail_writes(error)
        reads, self._reads = self._reads, {}
        for call, i, _ in reads.values():
            call.set(i, error)
        for call in list(self._open):
            for i in range(len(call.results)):
                call.set(i, error)

    def expire(self, call: Call) -> None:
        """The call's deadline passed: fill what is missing with ``late``."""
        if call.done:
            return
        self._forget(call)
        for i in range(len(call.results)):
            call.set(i, call.late)

    def open_calls(self) -> Iterable[Call]:
        return tuple(self._open)
