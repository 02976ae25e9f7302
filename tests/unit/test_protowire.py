"""paxoskv.protowire against protobuf's own varint encoding, and the reader on hostile bytes."""

from __future__ import annotations

from google.protobuf.internal import decoder, encoder

from paxoskv.protowire import VARINT_BYTES_MAX, read_varint, varint

VALUES = [0, 1, 127, 128, 300, 16383, 16384, 2**21, 2**32 - 1, 2**35 + 7, 2**63 - 1, 2**64 - 1]


def test_varint_is_protobufs_encoding_and_reads_back() -> None:
    for n in VALUES:
        raw = varint(n)
        assert raw == encoder._VarintBytes(n)
        assert decoder._DecodeVarint(raw, 0) == (n, len(raw))
        assert read_varint(b"\x01" + raw + b"\x02", 1) == (n, 1 + len(raw))


def test_read_varint_stops_at_the_end_and_at_ten_bytes() -> None:
    raw = varint(2**40)
    for cut in range(len(raw)):
        assert read_varint(raw, 0, cut)[0] == -1  # truncated: never a value
    assert read_varint(raw[:-1], 0) == (-1, len(raw) - 1)
    endless = b"\xff" * 32
    assert read_varint(endless, 0) == (-1, VARINT_BYTES_MAX)
    assert read_varint(memoryview(bytearray(varint(300))), 0) == (300, 2)
