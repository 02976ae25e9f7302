"""Recorded key-value histories: the ``Operation`` value, JSON Lines I/O, a recorder.

Rules
-----
A history is a list of ``Operation``: one client operation on one key, from its
invocation (``call``) to its completion (``ret``), with an ``outcome``:

- ``"ok"``: it took effect and its output is real. ``ret`` is required.
- ``"fail"``: it definitely did not take effect. The checker drops it.
- ``"unknown"``: a timeout or a lost connection: it may or may not have taken
  effect, at any time after ``call``. Its ``ret`` (if any) is informational only:
  the checker treats it as +infinity, and its output as unconstrained.

Outputs, all only meaningful for ``ok`` operations (they are cleared otherwise):

- get: ``output_value`` is the value read, ``None`` meaning "key absent".
- put/delete: ``output_existed`` says whether the key existed before; ``None``
  means the history does not say (unconstrained).

Times are floats in any unit (simulated ticks or seconds); only their order
matters. Two events at the same time are taken as concurrent (the permissive
reading: a checker must never report a violation the history does not prove).
The initial state of every key is "absent".

File format: JSON Lines, one operation per line::

    {"id": 17, "client": "c3", "op": "put", "key": "k1", "value": "v9",
     "call": 12.5, "return": 13.1, "outcome": "ok", "output": {"existed": false}}

Blank lines are ignored. Every other defect raises ``HistoryError`` naming the
source and line.

``Recorder`` is the in-memory way to build a history: ``invoke`` when a client
starts an operation, ``complete`` when it ends; ``history()`` turns operations
still in flight into ``unknown`` ones. It is thread-safe.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TextIO

__all__ = [
    "OPS",
    "OUTCOMES",
    "HistoryError",
    "Operation",
    "Recorder",
    "dump_history",
    "dumps_history",
    "load_history",
    "parse_history",
]

OPS = ("put", "get", "delete")
OUTCOMES = ("ok", "fail", "unknown")


class HistoryError(ValueError):
    """A history (file or in-memory) is malformed; the message names where."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Operation:
    """One client operation on one key, as recorded. Validated on construction."""

    id: int
    client: str
    op: str
    key: str
    call: float
    ret: float | None
    outcome: str
    value: str | None = None  # the argument of a put; None for get/delete
    output_value: str | None = None  # what an ok get read; None = key absent
    output_existed: bool | None = None  # ok put/delete: key existed before? None = unsaid

    def __post_init__(self) -> None:
        if isinstance(self.id, bool) or not isinstance(self.id, int):
            raise HistoryError(f"id must be an int, not {self.id!r}")
        if not isinstance(self.client, str):
            raise HistoryError(f"op {self.id}: client must be a string, not {self.client!r}")
        if self.op not in OPS:
            raise HistoryError(f"op {self.id}: op must be one of {OPS}, not {self.op!r}")
        if not isinstance(self.key, str):
            raise HistoryError(f"op {self.id}: key must be a string, not {self.key!r}")
        if self.outcome not in OUTCOMES:
            raise HistoryError(f"op {self.id}: outcome must be one of {OUTCOMES}, not {self.outcome!r}")
        if not _is_time(self.call) or not math.isfinite(self.call):
            raise HistoryError(f"op {self.id}: call must be a finite number, not {self.call!r}")
        if self.ret is None:
            if self.outcome == "ok":
                raise HistoryError(f"op {self.id}: an ok operation needs a return time")
        elif not _is_time(self.ret) or not math.isfinite(self.ret):
            raise HistoryError(f"op {self.id}: return must be a finite number or null, not {self.ret!r}")
        elif self.ret < self.call:
            raise HistoryError(f"op {self.id}: return {self.ret} is before call {self.call}")
        if self.op == "put":
            if not isinstance(self.value, str):
                raise HistoryError(f"op {self.id}: a put needs a string value, not {self.value!r}")
        elif self.value is not None:
            raise HistoryError(f"op {self.id}: a {self.op} takes no value")
        if self.output_value is not None:
            if self.op != "get":
                raise HistoryError(f"op {self.id}: only a get has an output value")
            if not isinstance(self.output_value, str):
                raise HistoryError(f"op {self.id}: output value must be a string or null")
        if self.output_existed is not None:
            if self.op == "get":
                raise HistoryError(f"op {self.id}: a get has no output 'existed'")
            if not isinstance(self.output_existed, bool):
                raise HistoryError(f"op {self.id}: output 'existed' must be a bool or null")
        if self.outcome != "ok":
            # The output of an operation that did not complete means nothing.
            object.__setattr__(self, "output_value", None)
            object.__setattr__(self, "output_existed", None)

    # ---- JSON ---------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The JSON object of this operation (one line of a history file)."""
        output: dict[str, Any] = {}
        if self.outcome == "ok":
            if self.op == "get":
                output["value"] = self.output_value
            elif self.output_existed is not None:
                output["existed"] = self.output_existed
        obj: dict[str, Any] = {"id": self.id, "client": self.client, "op": self.op, "key": self.key}
        if self.op == "put":
            obj["value"] = self.value
        obj.update({"call": self.call, "return": self.ret, "outcome": self.outcome, "output": output})
        return obj

    @classmethod
    def from_json(cls, obj: Any) -> Operation:
        """Build an operation from one decoded JSON line; raises ``HistoryError``."""
        if not isinstance(obj, dict):
            raise HistoryError(f"expected a JSON object, got {type(obj).__name__}")
        for name in ("id", "client", "op", "key", "call", "outcome"):
            if name not in obj:
                raise HistoryError(f"missing field {name!r}")
        unknown = set(obj) - {"id", "client", "op", "key", "value", "call", "return", "outcome", "output"}
        if unknown:
            raise HistoryError(f"unexpected field(s) {sorted(unknown)}")
        op, outcome = obj["op"], obj["outcome"]
        output = obj.get("output")
        if output is None:
            output = {}
        if not isinstance(output, dict):
            raise HistoryError(f"op {obj['id']!r}: output must be an object or null")
        output_value: str | None = None
        output_existed: bool | None = None
        if outcome == "ok":
            if op == "get":
                if "value" not in output:
                    raise HistoryError(f"op {obj['id']!r}: an ok get needs output.value (null = absent)")
                output_value = output["value"]
                extra = set(output) - {"value"}
            else:
                output_existed = output.get("existed")
                extra = set(output) - {"existed"}
            if extra:
                raise HistoryError(f"op {obj['id']!r}: unexpected output field(s) {sorted(extra)}")
        return cls(
            id=obj["id"],
            client=obj["client"],
            op=op,
            key=obj["key"],
            value=obj.get("value"),
            call=obj["call"],
            ret=obj.get("return"),
            outcome=outcome,
            output_value=output_value,
            output_existed=output_existed,
        )

    def describe(self) -> str:
        """One human-readable line: ``#17 c3 put k1='v9' [12.5, 13.1] ok existed=false``."""
        if self.op == "put":
            what = f"put {self.key}={self.value!r}"
        else:
            what = f"{self.op} {self.key}"
        ret = "?" if self.ret is None or self.outcome == "unknown" else _fmt_time(self.ret)
        text = f"#{self.id} {self.client} {what} [{_fmt_time(self.call)}, {ret}] {self.outcome}"
        if self.outcome == "ok":
            if self.op == "get":
                text += " -> " + ("absent" if self.output_value is None else repr(self.output_value))
            elif self.output_existed is not None:
                text += f" existed={str(self.output_existed).lower()}"
        return text


def distinct_ops(ops: Iterable[Any], cls: type, what: str) -> list[Any]:
    """``ops`` as a list, each a ``cls`` (``what`` names it) with an id of
    its own; raises ``HistoryError``."""
    out = list(ops)
    seen: set[int] = set()
    for o in out:
        if not isinstance(o, cls):
            raise HistoryError(f"not {what}: {o!r}")
        if o.id in seen:
            raise HistoryError(f"duplicate operation id {o.id}")
        seen.add(o.id)
    return out


def _fmt_time(t: float) -> str:
    """A time to microseconds without noise: 12.5, 14, 1732420000.123456."""
    return f"{t:.6f}".rstrip("0").rstrip(".")


def _is_time(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


# ---- JSON Lines ---------------------------------------------------------------


def parse_history(lines: Iterable[str], *, source: str = "<history>") -> list[Operation]:
    """Parse JSON Lines text (an iterable of lines) into operations.

    Raises ``HistoryError`` with ``"<source>:<line>: <what is wrong>"``; ids must
    be unique.
    """
    ops: list[Operation] = []
    seen: dict[int, int] = {}
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise HistoryError(f"{source}:{lineno}: invalid JSON: {exc.msg} (column {exc.colno})") from None
        try:
            operation = Operation.from_json(obj)
        except HistoryError as exc:
            raise HistoryError(f"{source}:{lineno}: {exc}") from None
        if operation.id in seen:
            raise HistoryError(
                f"{source}:{lineno}: duplicate id {operation.id} (first on line {seen[operation.id]})"
            )
        seen[operation.id] = lineno
        ops.append(operation)
    return ops


def load_history(path: str | os.PathLike[str]) -> list[Operation]:
    """Read a JSON Lines history file. Raises ``HistoryError`` (also for I/O errors)."""
    try:
        with open(path, encoding="utf-8") as f:
            return parse_history(f, source=os.fspath(path))
    except OSError as exc:
        raise HistoryError(f"{os.fspath(path)}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise HistoryError(f"{os.fspath(path)}: not UTF-8 text: {exc.reason}") from None


def _write(ops: Iterable[Operation], f: TextIO) -> None:
    for operation in ops:
        f.write(json.dumps(operation.to_json(), separators=(", ", ": ")))
        f.write("\n")


def dump_history(ops: Iterable[Operation], path: str | os.PathLike[str]) -> None:
    """Write operations as a JSON Lines history file (atomically: temp file, rename)."""
    tmp = f"{os.fspath(path)}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        _write(ops, f)
    os.replace(tmp, path)


def dumps_history(ops: Iterable[Operation]) -> str:
    """The JSON Lines text of operations."""
    lines = [json.dumps(operation.to_json(), separators=(", ", ": ")) for operation in ops]
    return "".join(line + "\n" for line in lines)


# ---- Recording ----------------------------------------------------------------


@dataclass(slots=True)
class _Pending:
    client: str
    op: str
    key: str
    value: str | None
    call: float


class Recorder:
    """Builds a history as clients run: ``invoke`` then ``complete``; thread-safe.

    ``clock`` gives the time when a call does not pass one (default
    ``time.monotonic``; the simulator passes its own simulated time).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._next_id = 0
        self._pending: dict[int, _Pending] = {}
        self._done: list[Operation] = []

    def invoke(
        self, client: str, op: str, key: str, value: str | None = None, *, at: float | None = None
    ) -> int:
        """Record an invocation; returns the operation id to pass to ``complete``."""
        if op not in OPS:
            raise HistoryError(f"op must be one of {OPS}, not {op!r}")
        call = self._clock() if at is None else at
        with self._lock:
            op_id = self._next_id
            self._next_id += 1
            self._pending[op_id] = _Pending(client, op, key, value, call)
        return op_id

    def complete(
        self,
        op_id: int,
        outcome: str,
        *,
        output_value: str | None = None,
        output_existed: bool | None = None,
        at: float | None = None,
    ) -> Operation:
        """Record the completion of ``op_id``; returns the finished ``Operation``."""
        ret = self._clock() if at is None else at
        with self._lock:
            p = self._pending.pop(op_id)
            operation = Operation(
                id=op_id,
                client=p.client,
                op=p.op,
                key=p.key,
                value=p.value,
                call=p.call,
                ret=max(ret, p.call),
                outcome=outcome,
                output_value=output_value,
                output_existed=output_existed,
            )
            self._done.append(operation)
        return operation

    def history(self) -> list[Operation]:
        """All operations so far, by id; those still in flight are ``unknown``."""
        with self._lock:
            ops = list(self._done)
            ops.extend(
                Operation(
                    id=op_id, client=p.client, op=p.op, key=p.key, value=p.value,
                    call=p.call, ret=None, outcome="unknown",
                )
                for op_id, p in self._pending.items()
            )
        ops.sort(key=lambda o: o.id)
        return ops
