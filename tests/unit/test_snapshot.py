"""paxoskv.storage.snapshot: the file format, its writer and its verifier.

Round trips (any state, any chunking on either side), the exact bytes of the
hand-encoded hot path, and damage: every byte of a small snapshot flipped
(with several masks) and every cut is detected; the structural checks are
also hit one by one with snapshots whose checksum is right, so the checksum
is not the only thing that catches them.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paxoskv.kv import Session
from paxoskv.storage.snapshot import (
    RECORD_BYTES_MAX,
    SNAPSHOT_FORMAT_VERSION,
    SnapshotCorrupt,
    SnapshotError,
    SnapshotInfo,
    SnapshotReader,
    SnapshotRefused,
    _frame,
    _kv_frame,
    iter_snapshot,
    snapshot_bytes,
)
from paxoskv.storage.snapshot_files import verify_file, write_file
from paxoskv.protowire import varint as _varint
from paxoskv.v1 import kv_pb2, storage_pb2


def session(sequence: int, index: int, error: str = "") -> Session:
    return Session(sequence, kv_pb2.CommandResult(index=index, existed=True, error=error), index)


KV = {
    b"a": b"1",
    b"empty-value": b"",
    b"\x00\xff": b"\xff" * 5000,
    b"k" * 300: b"v" * 200,  # lengths over 127: two-byte varints
}
SESSIONS = {
    "client-1": session(3, 7),
    "ünïcode ✓": session(1, 2, "key is empty"),
    "z": session(9, 9),
}


def read_all(
    data: bytes, splits: list[int] | None = None, **kwargs: object
) -> tuple[dict[bytes, bytes], dict[str, Session], SnapshotInfo]:
    """Feed ``data`` to a reader in pieces cut at ``splits``; collect the items."""
    reader = SnapshotReader(**kwargs)  # type: ignore[arg-type]
    kv: dict[bytes, bytes] = {}
    sessions: dict[str, Session] = {}
    cuts = [0, *(splits or []), len(data)]
    for start, stop in zip(cuts, cuts[1:]):
        kvs, sess = reader.feed(data[start:stop])
        kv.update(kvs)
        sessions.update(sess)
    return kv, sessions, reader.finish()


def check_fails(data: bytes, **kwargs: object) -> SnapshotError:
    reader = SnapshotReader(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(SnapshotError) as error:
        reader.feed(data)
        reader.finish()
    assert "\n" not in str(error.value)
    return error.value


def frames(*records: storage_pb2.SnapshotRecord) -> bytes:
    return b"".join(_frame(r) for r in records)


def header(
    keys: int = 0, sessions: int = 0, index: int = 10, **kw: object
) -> storage_pb2.SnapshotRecord:
    fields = dict(
        format_version=SNAPSHOT_FORMAT_VERSION,
        cluster_id="c1",
        applied_index=index,
        keys=keys,
        sessions=sessions,
    )
    fields.update(kw)
    return storage_pb2.SnapshotRecord(header=storage_pb2.SnapshotHeader(**fields))  # type: ignore[arg-type]


def kv_record(key: bytes, value: bytes = b"v") -> storage_pb2.SnapshotRecord:
    return storage_pb2.SnapshotRecord(kv=storage_pb2.KeyValue(key=key, value=value))


def session_record(client_id: str, last_index: int = 1) -> storage_pb2.SnapshotRecord:
    return storage_pb2.SnapshotRecord(
        session=storage_pb2.SessionEntry(
            client_id=client_id, session=session(1, last_index).to_proto()
        )
    )


def sealed(body: bytes) -> bytes:
    """``body`` followed by a trailer with its right checksum."""
    trailer = storage_pb2.SnapshotRecord(
        trailer=storage_pb2.SnapshotTrailer(sha256=hashlib.sha256(body).digest())
    )
    return body + _frame(trailer)


# ---- round trips ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kv", "sessions"),
    [({}, {}), (KV, {}), ({}, SESSIONS), (KV, SESSIONS)],
    ids=["empty", "keys", "sessions", "both"],
)
def test_round_trip(kv: dict[bytes, bytes], sessions: dict[str, Session]) -> None:
    data = snapshot_bytes("c1", 42, kv, sessions)
    got_kv, got_sessions, info = read_all(data, cluster_id="c1", min_applied_index=42)
    assert got_kv == kv and got_sessions == sessions
    assert info == SnapshotInfo(
        format_version=SNAPSHOT_FORMAT_VERSION,
        cluster_id="c1",
        applied_index=42,
        keys=len(kv),
        sessions=len(sessions),
        total_bytes=len(data),
        sha256=info.sha256,
        stream_sha256=hashlib.sha256(data).digest(),
    )
    # The trailer's checksum is over everything before the trailer record.
    trailer_bytes = len(
        _frame(storage_pb2.SnapshotRecord(trailer=storage_pb2.SnapshotTrailer(sha256=b"\0" * 32)))
    )
    assert info.sha256 == hashlib.sha256(data[:-trailer_bytes]).digest()


def test_items_come_in_file_order_and_byte_by_byte_feeding_works() -> None:
    data = snapshot_bytes("c1", 9, KV, SESSIONS)
    reader = SnapshotReader()
    kvs: list[tuple[bytes, bytes]] = []
    sessions: list[tuple[str, Session]] = []
    for i in range(len(data)):
        got_kv, got_sessions = reader.feed(data[i : i + 1])
        kvs.extend(got_kv)
        sessions.extend(got_sessions)
        if i < len(data) - 1:
            assert reader.info is None
    assert kvs == sorted(KV.items()) and sessions == sorted(SESSIONS.items())
    assert reader.finish().keys == len(KV)
    assert reader.finish() is reader.info  # finish is idempotent


@settings(max_examples=80, deadline=None)
@given(
    kv=st.dictionaries(st.binary(max_size=200), st.binary(max_size=300), max_size=20),
    client_ids=st.lists(st.text(max_size=20), max_size=5, unique=True),
    chunk_bytes=st.integers(1, 3000),
    seed=st.integers(0, 2**32),
)
def test_round_trip_any_state_any_chunking(
    kv: dict[bytes, bytes], client_ids: list[str], chunk_bytes: int, seed: int
) -> None:
    sessions = {cid: session(i + 1, i + 1) for i, cid in enumerate(client_ids)}
    hdr = header(keys=len(kv), sessions=len(sessions), index=100).header
    chunks = list(iter_snapshot(hdr, sorted(kv.items()), sorted(sessions.items()), chunk_bytes))
    data = b"".join(chunks)
    rng = random.Random(seed)
    splits = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randrange(6))))
    got_kv, got_sessions, info = read_all(data, splits)
    assert got_kv == kv and got_sessions == sessions and info.total_bytes == len(data)
    # Every chunk but the last reaches chunk_bytes; none is much larger.
    for chunk in chunks[:-1]:
        assert chunk_bytes <= len(chunk) < chunk_bytes + 1000


@settings(max_examples=300, deadline=None)
@given(key=st.binary(max_size=400), value=st.binary(max_size=400))
def test_the_hand_encoded_kv_record_is_what_protobuf_writes(key: bytes, value: bytes) -> None:
    assert _kv_frame(key, value) == _frame(kv_record(key, value))


def test_varint() -> None:
    for n in [0, 1, 127, 128, 300, 16383, 16384, 2**63]:
        encoded = _varint(n)
        assert encoded[-1] < 0x80 and all(b >= 0x80 for b in encoded[:-1])
        assert sum((b & 0x7F) << (7 * i) for i, b in enumerate(encoded)) == n


def test_a_non_canonical_but_valid_kv_record_is_read_by_the_parser() -> None:
    # Fields in reverse order and an explicitly empty value: valid protobuf,
    # not the writer's shape; the slow path must read it right.
    inner = b"\x12\x00" + b"\x0a\x01k"
    record = b"\x12" + bytes((len(inner),)) + inner
    body = frames(header(keys=1)) + bytes((len(record),)) + record
    kv, _, _ = read_all(sealed(body))
    assert kv == {b"k": b""}


def test_the_writer_asserts_order_and_counts() -> None:
    hdr = header(keys=2).header
    with pytest.raises(AssertionError):
        b"".join(iter_snapshot(hdr, [(b"b", b""), (b"a", b"")], []))
    with pytest.raises(AssertionError):
        b"".join(iter_snapshot(hdr, [(b"a", b"")], []))
    with pytest.raises(AssertionError):  # a session applied after the snapshot
        b"".join(iter_snapshot(header(sessions=1, index=5).header, [], [("c", session(1, 6))]))


# ---- damage -------------------------------------------------------------------------


def test_every_flipped_byte_is_detected() -> None:
    data = snapshot_bytes("c1", 10, {b"a": b"1", b"b": b"", b"c" * 130: b"x" * 140}, SESSIONS)
    masks = [1 << bit for bit in range(8)] + [0xFF]
    for i in range(len(data)):
        for mask in masks:
            damaged = bytearray(data)
            damaged[i] ^= mask
            error = check_fails(bytes(damaged))
            assert isinstance(error, SnapshotCorrupt), (i, mask, error)


def test_every_cut_is_detected() -> None:
    data = snapshot_bytes("c1", 10, KV, SESSIONS)
    for cut in range(len(data)):
        error = check_fails(data[:cut])
        assert isinstance(error, SnapshotCorrupt) and "ends" in str(error), cut


def test_random_damage_in_a_large_snapshot_is_detected() -> None:
    kv = {b"key%06d" % i: os.urandom(50) for i in range(1000)}
    data = snapshot_bytes("c1", 10, kv, {"c": session(1, 1)})
    rng = random.Random(7)
    for _ in range(60):
        damaged = bytearray(data)
        damaged[rng.randrange(len(data))] ^= rng.randrange(1, 256)
        reader = SnapshotReader()
        with pytest.raises(SnapshotCorrupt):
            for start in range(0, len(data), 4096):
                reader.feed(bytes(damaged[start : start + 4096]))
            reader.finish()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (frames(kv_record(b"a")), "expected a header record, found kv"),
        (frames(header(format_version=2)), "format version 2, this paxoskv reads 1"),
        (frames(header(cluster_id="")), "names no cluster"),
        (frames(header(keys=2), kv_record(b"b"), kv_record(b"a")), "key b'a' is out of order"),
        (frames(header(keys=2), kv_record(b"a"), kv_record(b"a")), "key b'a' is out of order"),
        (frames(header(keys=2), kv_record(b"a")) + _frame(header()), "expected a kv record"),
        (
            frames(header(keys=1, sessions=1), kv_record(b"a")) + _frame(kv_record(b"b")),
            "expected a session record, found kv",
        ),
        (frames(header(sessions=2), session_record("b"), session_record("a")), "out of order"),
        (
            frames(header(sessions=1, index=5), session_record("c", last_index=6)),
            "applied at 6, after the snapshot's index 5",
        ),
        (
            frames(
                header(sessions=1),
                storage_pb2.SnapshotRecord(session=storage_pb2.SessionEntry(client_id="c")),
            ),
            "has no content",
        ),
        (frames(header(keys=1), kv_record(b"a"), kv_record(b"b")), "expected a trailer record"),
        (b"\x05\xff\xff\xff\xff\xff", "record does not parse"),
        (b"\x00", "expected a header record, found None"),
        (b"\xff" * 11, "record length is not a varint"),
        (_varint(RECORD_BYTES_MAX + 1), f"over the limit of {RECORD_BYTES_MAX}"),
    ],
)
def test_structural_damage_is_named(data: bytes, message: str) -> None:
    error = check_fails(sealed(data))
    assert isinstance(error, SnapshotCorrupt)
    assert message in str(error), str(error)
    assert str(error).startswith("snapshot is corrupt at byte ")


def test_bytes_after_the_trailer_and_a_wrong_checksum() -> None:
    data = snapshot_bytes("c1", 10, KV, {})
    assert "follow the trailer" in str(check_fails(data + b"\x00"))
    body = data[
        : -len(
            _frame(
                storage_pb2.SnapshotRecord(trailer=storage_pb2.SnapshotTrailer(sha256=b"\0" * 32))
            )
        )
    ]
    wrong = body + _frame(
        storage_pb2.SnapshotRecord(trailer=storage_pb2.SnapshotTrailer(sha256=b"\1" * 32))
    )
    assert "checksum mismatch" in str(check_fails(wrong))


def test_another_cluster_or_an_older_index_is_refused() -> None:
    data = snapshot_bytes("prod", 10, KV, {})
    error = check_fails(data, cluster_id="staging")
    assert isinstance(error, SnapshotRefused)
    assert "'prod'" in str(error) and "'staging'" in str(error)
    error = check_fails(data, min_applied_index=11)
    assert isinstance(error, SnapshotRefused) and "index 10 is older than" in str(error)
    read_all(data, cluster_id="prod", min_applied_index=10)  # the same index is fine


def test_refusal_comes_at_the_header_before_the_rest_arrives() -> None:
    data = snapshot_bytes("prod", 10, KV, {})
    reader = SnapshotReader("other")
    with pytest.raises(SnapshotRefused):
        reader.feed(data[:40])


def test_a_failure_is_sticky() -> None:
    data = bytearray(snapshot_bytes("c1", 10, KV, {}))
    data[5] ^= 0xFF
    reader = SnapshotReader()
    with pytest.raises(SnapshotCorrupt) as first:
        reader.feed(bytes(data))
    with pytest.raises(SnapshotCorrupt) as again:
        reader.feed(b"")
    assert str(again.value) == str(first.value)
    with pytest.raises(SnapshotCorrupt):
        reader.finish()


def test_feed_after_finish_is_a_caller_error() -> None:
    reader = SnapshotReader()
    reader.feed(snapshot_bytes("c1", 1, {}, {}))
    reader.finish()
    with pytest.raises(AssertionError):
        reader.feed(b"x")


# ---- files ----------------------------------------------------------------------------


def test_write_file_then_verify_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "snap.db"
    data = snapshot_bytes("c1", 10, KV, SESSIONS)
    info = write_file(path, [data[:100], data[100:]])
    assert path.read_bytes() == data and not (tmp_path / "snap.db.tmp").exists()
    assert verify_file(path, chunk_bytes=7) == info
    assert verify_file(path, cluster_id="c1").applied_index == 10
    with pytest.raises(SnapshotRefused):
        verify_file(path, cluster_id="c2")


def test_write_file_keeps_the_old_file_when_the_new_one_is_bad(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "snap.db"
    good = snapshot_bytes("c1", 10, KV, {})
    write_file(path, [good])
    with pytest.raises(SnapshotCorrupt):
        write_file(path, [good[:-5]])
    assert path.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["snap.db"]
