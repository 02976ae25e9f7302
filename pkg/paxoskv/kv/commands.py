"""Encoding, decoding and validation of the replicated log's kv commands.

Rules:

- A command is a ``paxoskv.v1.Command`` protobuf; in a slot's value it travels
  as its encoded bytes. ``encode_*`` serialize deterministically, so the same
  command always has the same bytes.
- ``decode`` turns bytes into a ``Command`` or raises ``DecodeError`` (a
  ``ValueError``); it never lets a protobuf exception escape.
- ``validate`` answers ``None`` for a command the state machine will apply and
  a one-line, human-readable reason otherwise. It looks at the command and the
  ``Limits`` only, never at state: the gRPC facade calls it to answer
  INVALID_ARGUMENT before proposing, and the state machine calls it again on
  every command it reads from the log (the log is replicated; a bad command
  must be answered INVALID on every node alike, never crash them).
- ``Limits`` are part of the replicated state machine's definition: every node
  of a cluster must use the same ones, or the replicas could diverge.

Exactly-once identity: ``client_id`` empty means "no session" and then
``sequence`` must be 0. A non-empty ``client_id`` needs ``sequence >= 1``
(sequences of one client start at 1 and grow by one per new request). A
packed batch (``BatchOp.request`` set) has one identity for all its ops: op
k has sequence ``request.sequence + k`` and no header of its own. A
``client_id`` starting with ``NODE_ASSIGNED_PREFIX`` is one a node made up
for a write that came without one (the state machine keeps such sessions in
a pool of their own). An etcd command (``Command.etcd``) always carries one.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import DecodeError as _ProtobufDecodeError

from paxoskv.v1 import kv_pb2

__all__ = [
    "NODE_ASSIGNED_PREFIX",
    "DecodeError",
    "Limits",
    "SEQUENCE_MAX",
    "decode",
    "encode",
    "encode_delete",
    "encode_put",
    "validate",
    "validate_identity",
    "validate_op",
    "validate_packed",
    "validate_packed_op",
]


NODE_ASSIGNED_PREFIX = "anon-"


def node_assigned_id(bits: int) -> str:
    """The client id a node gives a write that came without one (``bits``:
    128 random bits)."""
    return "%s%032x" % (NODE_ASSIGNED_PREFIX, bits)


class DecodeError(ValueError):
    """The bytes are not an encoded ``paxoskv.v1.Command``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Size limits of commands. Identical on every node of a cluster."""

    key_bytes_max: int = 4096
    value_bytes_max: int = 1 << 20
    client_id_bytes_max: int = 256

    def __post_init__(self) -> None:
        if self.key_bytes_max < 1 or self.value_bytes_max < 0 or self.client_id_bytes_max < 1:
            raise ValueError(f"limits must be positive: {self}")


def encode(cmd: kv_pb2.Command) -> bytes:
    """The deterministic encoding of ``cmd``."""
    return cmd.SerializeToString(deterministic=True)


def encode_put(client_id: str, sequence: int, key: bytes, value: bytes) -> bytes:
    return encode(
        kv_pb2.Command(
            client_id=client_id, sequence=sequence, put=kv_pb2.PutOp(key=key, value=value)
        )
    )


def encode_delete(client_id: str, sequence: int, key: bytes) -> bytes:
    return encode(
        kv_pb2.Command(client_id=client_id, sequence=sequence, delete=kv_pb2.DeleteOp(key=key))
    )


def decode(data: bytes) -> kv_pb2.Command:
    """Parse ``data`` as a ``Command``; raise ``DecodeError`` if it is not one."""
    cmd = kv_pb2.Command()
    try:
        cmd.ParseFromString(data)
    except (_ProtobufDecodeError, ValueError, TypeError) as exc:
        raise DecodeError(f"not an encoded Command ({len(data)} bytes): {exc}") from None
    return cmd


SEQUENCE_MAX = (1 << 64) - 1


def validate(cmd: kv_pb2.Command, limits: Limits) -> str | None:
    """``None`` if the state machine will apply ``cmd``, else why not (one line).
    A batch is valid as a whole when it has ops and no identity of its own
    (a packed batch: the identity of its ``request``); its ops are checked
    one by one when applied (``validate_op``, ``validate_packed_op``)."""
    op = cmd.WhichOneof("op")
    if op == "batch":
        if cmd.client_id or cmd.sequence:
            return "a batch command has no client_id or sequence of its own (its ops have)"
        batch = cmd.batch
        if not batch.ops:
            return "a batch command has no ops"
        if batch.HasField("request"):
            return validate_packed(batch.request.client_id, batch.request.sequence, len(batch.ops), limits)
        return None
    if op is None:
        err = validate_identity(cmd.client_id, cmd.sequence, limits)
        return err if err is not None else "command has no operation (put or delete)"
    if op == "etcd":
        err = validate_identity(cmd.client_id, cmd.sequence, limits)
        if err is not None:
            return err
        return None if cmd.etcd.WhichOneof("request") else "an etcd command has no request"
    if op == "put":
        return validate_op(cmd.client_id, cmd.sequence, cmd.put.key, cmd.put.value, limits)
    return validate_op(cmd.client_id, cmd.sequence, cmd.delete.key, b"", limits)


def validate_identity(client_id: str, sequence: int, limits: Limits) -> str | None:
    if not client_id:
        return f"sequence {sequence} given without a client_id" if sequence else None
    if sequence == 0:
        return "client_id given without a sequence (sequences start at 1)"
    if len(client_id) * 4 > limits.client_id_bytes_max:  # maybe over: count the bytes
        client_id_bytes = len(client_id.encode("utf-8"))
        if client_id_bytes > limits.client_id_bytes_max:
            return (
                f"client_id is {client_id_bytes} bytes, more than the limit of "
                f"{limits.client_id_bytes_max}"
            )
    return None


def validate_packed(client_id: str, sequence: int, writes: int, limits: Limits) -> str | None:
    """``None`` if ``(client_id, sequence)`` can be the identity of a packed
    batch of ``writes`` writes (sequences ``sequence .. sequence+writes-1``)."""
    if not client_id or not sequence:
        return "a packed batch (request set) needs a client_id and a sequence >= 1"
    err = validate_identity(client_id, sequence, limits)
    if err is not None:
        return err
    if sequence + writes - 1 > SEQUENCE_MAX:
        return f"the {writes} sequences from {sequence} do not fit in 64 bits"
    return None


def validate_packed_op(has_header: bool, key: bytes, value: bytes, limits: Limits) -> str | None:
    """``None`` if an op of a packed batch is applicable, else why not."""
    if has_header:
        return "an op of a packed batch carries no request header of its own (the batch's request is its identity)"
    return validate_op("", 0, key, value, limits)


def validate_op(client_id: str, sequence: int, key: bytes, value: bytes, limits: Limits) -> str | None:
    """``None`` if a put of ``value`` (a delete: ``b""``) to ``key`` with this
    identity is applicable, else why not (one line)."""
    err = validate_identity(client_id, sequence, limits)
    if err is not None:
        return err
    if not key:
        return "key is empty"
    if len(key) > limits.key_bytes_max:
        return f"key is {len(key)} bytes, more than the limit of {limits.key_bytes_max}"
    if len(value) > limits.value_bytes_max:
        return f"value is {len(value)} bytes, more than the limit of {limits.value_bytes_max}"
    return None
