"""Protobuf wire pieces built by hand, for the few hot paths that encode a
message per write (the tests check each against protobuf's own encoding).

Rules: ``varint`` is the base-128 encoding of a non-negative int;
``len_field(tag, payload)`` is one length-delimited field whose tag byte is
``tag`` (field number << 3 | 2, numbers below 16 only).
"""

from __future__ import annotations

__all__ = ["len_field", "varint"]


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
