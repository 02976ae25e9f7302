"""paxoskv.kv.commands: encoding round trips, decode errors, validation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from paxoskv.kv import DecodeError, Limits, decode, encode_delete, encode_put, validate
from paxoskv.v1 import kv_pb2

LIMITS = Limits()


@given(
    client_id=st.text(max_size=20),
    sequence=st.integers(min_value=0, max_value=2**64 - 1),
    key=st.binary(max_size=50),
    value=st.binary(max_size=200),
)
def test_put_round_trip(client_id: str, sequence: int, key: bytes, value: bytes) -> None:
    data = encode_put(client_id, sequence, key, value)
    cmd = decode(data)
    assert (cmd.client_id, cmd.sequence, cmd.WhichOneof("op")) == (client_id, sequence, "put")
    assert (cmd.put.key, cmd.put.value) == (key, value)
    assert encode_put(client_id, sequence, key, value) == data  # deterministic


@given(client_id=st.text(max_size=20), sequence=st.integers(0, 2**64 - 1), key=st.binary())
def test_delete_round_trip(client_id: str, sequence: int, key: bytes) -> None:
    cmd = decode(encode_delete(client_id, sequence, key))
    assert (cmd.client_id, cmd.sequence, cmd.WhichOneof("op")) == (client_id, sequence, "delete")
    assert cmd.delete.key == key


@pytest.mark.parametrize(
    "data",
    [b"\xff\xff", b"\x0a\x02\xff\xfe", b"\x12", b"\x52\x05ab"],
    ids=["garbage", "bad-utf8-client-id", "truncated", "truncated-put"],
)
def test_decode_rejects_garbage(data: bytes) -> None:
    with pytest.raises(DecodeError, match="not an encoded Command"):
        decode(data)


@given(st.binary(max_size=64))
def test_decode_never_raises_anything_but_decode_error(data: bytes) -> None:
    try:
        decode(data)
    except DecodeError:
        pass


def test_valid_commands() -> None:
    assert validate(decode(encode_put("c", 1, b"k", b"v")), LIMITS) is None
    assert validate(decode(encode_put("", 0, b"k", b"")), LIMITS) is None
    assert validate(decode(encode_delete("c", 7, b"k")), LIMITS) is None
    big = Limits(key_bytes_max=3, value_bytes_max=5)
    assert validate(decode(encode_put("c", 1, b"kkk", b"vvvvv")), big) is None


@pytest.mark.parametrize(
    ("cmd", "limits", "message"),
    [
        (kv_pb2.Command(client_id="c", sequence=1), LIMITS, "no operation"),
        (kv_pb2.Command(put=kv_pb2.PutOp(key=b"", value=b"v")), LIMITS, "key is empty"),
        (kv_pb2.Command(delete=kv_pb2.DeleteOp(key=b"")), LIMITS, "key is empty"),
        (
            kv_pb2.Command(put=kv_pb2.PutOp(key=b"abcd", value=b"")),
            Limits(key_bytes_max=3),
            "key is 4 bytes, more than the limit of 3",
        ),
        (
            kv_pb2.Command(delete=kv_pb2.DeleteOp(key=b"x" * 4097)),
            LIMITS,
            "key is 4097 bytes, more than the limit of 4096",
        ),
        (
            kv_pb2.Command(put=kv_pb2.PutOp(key=b"k", value=b"x" * ((1 << 20) + 1))),
            LIMITS,
            "value is 1048577 bytes, more than the limit of 1048576",
        ),
        (
            kv_pb2.Command(sequence=3, put=kv_pb2.PutOp(key=b"k")),
            LIMITS,
            "sequence 3 given without a client_id",
        ),
        (
            kv_pb2.Command(client_id="c", put=kv_pb2.PutOp(key=b"k")),
            LIMITS,
            "client_id given without a sequence",
        ),
        (
            kv_pb2.Command(client_id="é" * 200, sequence=1, put=kv_pb2.PutOp(key=b"k")),
            LIMITS,
            "client_id is 400 bytes, more than the limit of 256",
        ),
    ],
    ids=[
        "no-op",
        "empty-key-put",
        "empty-key-delete",
        "key-too-long",
        "delete-key-too-long",
        "value-too-long",
        "sequence-without-client",
        "client-without-sequence",
        "client-id-too-long",
    ],
)
def test_invalid_commands(cmd: kv_pb2.Command, limits: Limits, message: str) -> None:
    error = validate(cmd, limits)
    assert error is not None and message in error
    assert "\n" not in error


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Limits(key_bytes_max=0)
