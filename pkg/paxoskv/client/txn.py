"""Transactions for ``Client.txn``: compares, operations and a small builder.

Rules:

- A compare is ``TARGET(key) OP operand``: ``version(k) == 0`` (the key
  does not exist), ``mod_revision(k) == 17``, ``create_revision(k) > 5``,
  ``value(k) != b"old"``; OP is one of ``==``, ``!=``, ``<``, ``>``. A
  missing key has version, create and mod revision 0 (etcd's rule).
- Operations: ``put(key, value)``, ``delete(key)``, ``get(key)``;
  ``delete`` and ``get`` take ``prefix=True`` or a ``range_end``.
- ``Txn().when(*compares).then(*ops).otherwise(*ops)``: if every compare
  holds the ``then`` ops run, else the ``otherwise`` ops, all at one
  revision. Each method returns the builder; ``Client.txn`` sends it once,
  exactly once (a retry is applied once).
- Keys and values are bytes, or str (UTF-8).

The messages are etcd's (``etcdserverpb.Compare``, ``RequestOp``), which
``paxoskv.v1.KV/Txn`` carries with a client identity.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from paxoskv.etcdpb import rpc_pb2
from paxoskv.kv.etcd import prefix_end

__all__ = [
    "Compare",
    "KeyValue",
    "Txn",
    "create_revision",
    "delete",
    "get",
    "mod_revision",
    "put",
    "value",
    "version",
]


def as_bytes(data: bytes | str, what: str) -> bytes:
    if isinstance(data, str):
        return data.encode("utf-8")
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise TypeError(f"{what} must be bytes or str, not {type(data).__name__}")


@dataclass(frozen=True, slots=True)
class KeyValue:
    """A key's value and revisions: created at ``create_revision``, last
    changed at ``mod_revision``, ``version`` changes since its creation."""

    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int

    @classmethod
    def from_proto(cls, kv) -> KeyValue:  # noqa: ANN001 - an mvccpb.KeyValue
        return cls(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version)


_C = rpc_pb2.Compare
_RESULTS = {"==": _C.EQUAL, "!=": _C.NOT_EQUAL, "<": _C.LESS, ">": _C.GREATER}


@dataclass(frozen=True, slots=True)
class Compare:
    """One condition of a transaction (see the module rules)."""

    proto: rpc_pb2.Compare


class _Target:
    """``version(key)`` and the like: compared with ``==``, ``!=``, ``<``, ``>``."""

    __slots__ = ("_key", "_target", "_field")

    def __init__(self, key: bytes | str, target: int, field_name: str) -> None:
        self._key = as_bytes(key, "key")
        self._target = target
        self._field = field_name

    def _cmp(self, op: str, operand: object) -> Compare:
        if self._field == "value":
            operand = as_bytes(operand, "value")  # type: ignore[arg-type]
        elif isinstance(operand, bool) or not isinstance(operand, int):
            raise TypeError(f"{self._field} is compared with an int, not {type(operand).__name__}")
        c = rpc_pb2.Compare(result=_RESULTS[op], target=self._target, key=self._key)
        setattr(c, self._field, operand)
        return Compare(c)

    def __eq__(self, operand: object) -> Compare:  # type: ignore[override]
        return self._cmp("==", operand)

    def __ne__(self, operand: object) -> Compare:  # type: ignore[override]
        return self._cmp("!=", operand)

    def __lt__(self, operand: object) -> Compare:
        return self._cmp("<", operand)

    def __gt__(self, operand: object) -> Compare:
        return self._cmp(">", operand)

    __hash__ = None  # type: ignore[assignment]


def version(key: bytes | str) -> _Target:
    return _Target(key, _C.VERSION, "version")


def create_revision(key: bytes | str) -> _Target:
    return _Target(key, _C.CREATE, "create_revision")


def mod_revision(key: bytes | str) -> _Target:
    return _Target(key, _C.MOD, "mod_revision")


def value(key: bytes | str) -> _Target:
    return _Target(key, _C.VALUE, "value")


def _range_end(key: bytes, range_end: bytes | str | None, prefix: bool) -> bytes:
    if prefix:
        if range_end:
            raise ValueError("give range_end or prefix, not both")
        return prefix_end(key) if key else b"\x00"
    return as_bytes(range_end, "range_end") if range_end else b""


def _start(key: bytes, prefix: bool) -> bytes:
    """An empty prefix is every key (etcd's "\\0"); an empty key alone is left for the server to refuse."""
    return b"\x00" if prefix and not key else key


def put(key: bytes | str, val: bytes | str) -> rpc_pb2.RequestOp:
    return rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=as_bytes(key, "key"), value=as_bytes(val, "value")))


def delete(key: bytes | str, *, range_end: bytes | str | None = None, prefix: bool = False) -> rpc_pb2.RequestOp:
    k = as_bytes(key, "key")
    end = _range_end(k, range_end, prefix)
    return rpc_pb2.RequestOp(request_delete_range=rpc_pb2.DeleteRangeRequest(key=_start(k, prefix), range_end=end))


def get(key: bytes | str, *, range_end: bytes | str | None = None, prefix: bool = False) -> rpc_pb2.RequestOp:
    k = as_bytes(key, "key")
    end = _range_end(k, range_end, prefix)
    return rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=_start(k, prefix), range_end=end))


@dataclass(slots=True)
class Txn:
    """The builder (see the module rules)."""

    compares: list[Compare] = field(default_factory=list)
    success: list[rpc_pb2.RequestOp] = field(default_factory=list)
    failure: list[rpc_pb2.RequestOp] = field(default_factory=list)

    def when(self, *compares: Compare) -> Txn:
        for c in compares:
            if not isinstance(c, Compare):
                raise TypeError(f"when() takes compares such as version(key) == 0, not {type(c).__name__}")
        self.compares.extend(compares)
        return self

    def then(self, *ops: rpc_pb2.RequestOp) -> Txn:
        self.success.extend(_ops(ops))
        return self

    def otherwise(self, *ops: rpc_pb2.RequestOp) -> Txn:
        self.failure.extend(_ops(ops))
        return self


def _ops(ops: tuple[rpc_pb2.RequestOp, ...]) -> tuple[rpc_pb2.RequestOp, ...]:
    for op in ops:
        if not isinstance(op, rpc_pb2.RequestOp):
            raise TypeError(f"a txn op is put(), delete() or get(), not {type(op).__name__}")
    return ops
