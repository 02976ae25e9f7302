"""Protobuf wire pieces built by hand, for the few hot paths that encode a
message per write (the tests check each against protobuf's own encoding).

Rules: ``varint`` is the base-128 encoding of a non-negative int;
``len_field(tag, payload)`` is one length-delimited field whose tag byte is
``tag`` (field number << 3 | 2, numbers below 16 only); ``read_varint``
decodes one from hostile bytes: never past ``end``, never over 10 bytes.
"""

from __future__ import annotations

__all__ = ["VARINT_BYTES_MAX", "len_field", "read_varint", "varint"]

VARINT_BYTES_MAX = 10  # a 64-bit value


def varint(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def len_field(tag: bytes, payload: bytes) -> bytes:
    return tag + varint(len(payload)) + payload


def read_varint(buf: bytes | bytearray | memoryview, pos: int, end: int | None = None) -> tuple[int, int]:
    """(value, position after it), or (-1, position reached) if ``buf`` ends
    (at ``end``, default its length) first or the varint is longer than
    :data:`VARINT_BYTES_MAX` bytes."""
    if end is None:
        end = len(buf)
    value = 0
    shift = 0
    i = pos
    while i < end and i - pos < VARINT_BYTES_MAX:
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7
    return -1, i
