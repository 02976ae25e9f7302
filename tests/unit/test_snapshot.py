"""paxoskv.storage.snapshot: the file format, its writer and its verifier.

Round trips (any state, any chunking on either side), the exact bytes of the
hand-encoded hot path, and damage: every byte of a small snapshot flipped
(with several masks) and every cut is detected; the structural checks are
also hit one by one with snapshots whose checksum is right, so the checksum
is not the only thing that catches them. Format 1 (before revisions) is read
only when asked to (restore), and the etcd envelope (padding + SHA-256) is
read as the snapshot it holds.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paxoskv.etcdpb import kv_pb2 as mvccpb
from paxoskv.kv import Session
from paxoskv.kv.mvcc import encode_row, row_key
from paxoskv.storage.snapshot import (
    RECORD_BYTES_MAX,
    SNAPSHOT_FORMAT_VERSION,
    SnapshotCorrupt,
    SnapshotError,
    SnapshotInfo,
    SnapshotReader,
    SnapshotRefused,
    _frame,
    _row_frame,
    etcd_envelope,
    iter_snapshot,
    snapshot_bytes,
)
from paxoskv.storage.snapshot_files import envelope_body, verify_file, write_file
from paxoskv.protowire import varint as _varint
from paxoskv.v1 import kv_pb2, storage_pb2

from kv_rows import kv_of, rows_of

DATA = pathlib.Path(__file__).resolve().parent / "data"


def session(sequence: int, index: int, error: str = "") -> Session:
    return Session(sequence, kv_pb2.CommandResult(index=index, existed=True, error=error), index)


KV = {
    b"a": b"1",
    b"empty-value": b"",
    b"\x00\xff": b"\xff" * 5000,
    b"k" * 300: b"v" * 200,  # lengths over 127: two-byte varints
}
ROWS: dict[bytes, bytes] = rows_of(KV)  # type: ignore[assignment]
SESSIONS = {
    "client-1": session(3, 7),
    "ünïcode ✓": session(1, 2, "key is empty"),
    "z": session(9, 9),
}


def snap(cluster_id: str, index: int, rows: dict[bytes, bytes], sessions: dict[str, Session]) -> bytes:
    return snapshot_bytes(cluster_id, index, rows, sessions, revision=2)


def read_all(
    data: bytes, splits: list[int] | None = None, **kwargs: object
) -> tuple[dict[bytes, bytes], dict[str, Session], SnapshotInfo]:
    """Feed ``data`` to a reader in pieces cut at ``splits``; collect the items."""
    reader = SnapshotReader(**kwargs)  # type: ignore[arg-type]
    rows: dict[bytes, bytes] = {}
    sessions: dict[str, Session] = {}
    cuts = [0, *(splits or []), len(data)]
    for start, stop in zip(cuts, cuts[1:]):
        got_rows, sess = reader.feed(data[start:stop])
        rows.update(got_rows)
        sessions.update(sess)
    return rows, sessions, reader.finish()


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
    rows: int = 0, sessions: int = 0, index: int = 10, **kw: object
) -> storage_pb2.SnapshotRecord:
    fields = dict(
        format_version=SNAPSHOT_FORMAT_VERSION,
        cluster_id="c1",
        applied_index=index,
        rows=rows,
        sessions=sessions,
        revision=5,
        compact_revision=-1,
    )
    fields.update(kw)
    return storage_pb2.SnapshotRecord(header=storage_pb2.SnapshotHeader(**fields))  # type: ignore[arg-type]


def row_record(main: int, sub: int = 0, key: bytes = b"k", mod: int | None = None) -> storage_pb2.SnapshotRecord:
    kv = mvccpb.KeyValue(key=key, create_revision=main, mod_revision=main if mod is None else mod, version=1)
    return storage_pb2.SnapshotRecord(
        row=storage_pb2.HistoryRow(revision=row_key(main, sub), record=storage_pb2.HistoryRecord(kv=kv))
    )


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
    ("rows", "sessions"),
    [({}, {}), (ROWS, {}), ({}, SESSIONS), (ROWS, SESSIONS)],
    ids=["empty", "rows", "sessions", "both"],
)
def test_round_trip(rows: dict[bytes, bytes], sessions: dict[str, Session]) -> None:
    data = snapshot_bytes("c1", 42, rows, sessions, revision=7, compact_revision=2, alarms=[(5, 1)])
    got_rows, got_sessions, info = read_all(data, cluster_id="c1", min_applied_index=42)
    assert got_rows == rows and got_sessions == sessions
    assert info == SnapshotInfo(
        format_version=SNAPSHOT_FORMAT_VERSION,
        cluster_id="c1",
        applied_index=42,
        rows=len(rows),
        sessions=len(sessions),
        revision=7,
        compact_revision=2,
        alarms=((5, 1),),
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
    data = snap("c1", 9, ROWS, SESSIONS)
    reader = SnapshotReader()
    rows: list[tuple[bytes, bytes]] = []
    sessions: list[tuple[str, Session]] = []
    for i in range(len(data)):
        got_rows, got_sessions = reader.feed(data[i : i + 1])
        rows.extend(got_rows)
        sessions.extend(got_sessions)
        if i < len(data) - 1:
            assert reader.info is None
    assert rows == sorted(ROWS.items()) and sessions == sorted(SESSIONS.items())
    assert kv_of(rows) == KV
    assert reader.finish().rows == len(KV)
    assert reader.finish() is reader.info  # finish is idempotent


@settings(max_examples=80, deadline=None)
@given(
    kv=st.dictionaries(st.binary(min_size=1, max_size=200), st.binary(max_size=300), max_size=20),
    client_ids=st.lists(st.text(max_size=20), max_size=5, unique=True),
    chunk_bytes=st.integers(1, 3000),
    seed=st.integers(0, 2**32),
)
def test_round_trip_any_state_any_chunking(
    kv: dict[bytes, bytes], client_ids: list[str], chunk_bytes: int, seed: int
) -> None:
    sessions = {cid: session(i + 1, i + 1) for i, cid in enumerate(client_ids)}
    rows: dict[bytes, bytes] = rows_of(kv)  # type: ignore[assignment]
    hdr = header(rows=len(rows), sessions=len(sessions), index=100, revision=2).header
    chunks = list(iter_snapshot(hdr, sorted(rows.items()), sorted(sessions.items()), chunk_bytes))
    data = b"".join(chunks)
    rng = random.Random(seed)
    splits = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randrange(6))))
    got_rows, got_sessions, info = read_all(data, splits)
    assert got_rows == rows and got_sessions == sessions and info.total_bytes == len(data)
    # Every chunk but the last reaches chunk_bytes; none is much larger.
    for chunk in chunks[:-1]:
        assert chunk_bytes <= len(chunk) < chunk_bytes + 1000


@settings(max_examples=300, deadline=None)
@given(key=st.binary(min_size=1, max_size=400), value=st.binary(max_size=400), main=st.integers(1, 2**40),
       sub=st.integers(0, 2**31 - 1))
def test_the_hand_encoded_row_record_is_what_protobuf_writes(key: bytes, value: bytes, main: int, sub: int) -> None:
    row = encode_row(key, main, main, 1, value, 0)
    record = storage_pb2.SnapshotRecord(
        row=storage_pb2.HistoryRow(revision=row_key(main, sub), record=storage_pb2.HistoryRecord.FromString(row))
    )
    assert _row_frame(row_key(main, sub), row) == _frame(record)


def test_varint() -> None:
    for n in [0, 1, 127, 128, 300, 16383, 16384, 2**63]:
        encoded = _varint(n)
        assert encoded[-1] < 0x80 and all(b >= 0x80 for b in encoded[:-1])
        assert sum((b & 0x7F) << (7 * i) for i, b in enumerate(encoded)) == n


def test_a_non_canonical_but_valid_row_record_is_read_by_the_parser() -> None:
    # Fields in reverse order: valid protobuf, not the writer's shape; the
    # slow path must read it right.
    row = encode_row(b"k", 3, 3, 1, b"v", 0)
    inner = b"\x12" + bytes((len(row),)) + row + b"\x0a\x10" + row_key(3, 0)
    record = b"\x2a" + bytes((len(inner),)) + inner
    body = frames(header(rows=1)) + bytes((len(record),)) + record
    rows, _, _ = read_all(sealed(body))
    assert rows == {row_key(3, 0): row}


def test_the_writer_asserts_order_and_counts() -> None:
    hdr = header(rows=2).header
    with pytest.raises(AssertionError):
        b"".join(iter_snapshot(hdr, [(row_key(3, 0), b""), (row_key(2, 0), b"")], []))
    with pytest.raises(AssertionError):
        b"".join(iter_snapshot(hdr, [(row_key(2, 0), b"")], []))
    with pytest.raises(AssertionError):  # a session applied after the snapshot
        b"".join(iter_snapshot(header(sessions=1, index=5).header, [], [("c", session(1, 6))]))


# ---- damage -------------------------------------------------------------------------


def test_every_flipped_byte_is_detected() -> None:
    data = snap("c1", 10, rows_of({b"a": b"1", b"b": b"", b"c" * 130: b"x" * 140}), SESSIONS)  # type: ignore[arg-type]
    masks = [1 << bit for bit in range(8)] + [0xFF]
    for i in range(len(data)):
        for mask in masks:
            damaged = bytearray(data)
            damaged[i] ^= mask
            error = check_fails(bytes(damaged))
            assert isinstance(error, SnapshotCorrupt), (i, mask, error)


def test_every_cut_is_detected() -> None:
    data = snap("c1", 10, ROWS, SESSIONS)
    for cut in range(len(data)):
        error = check_fails(data[:cut])
        assert isinstance(error, SnapshotCorrupt) and "ends" in str(error), cut


def test_random_damage_in_a_large_snapshot_is_detected() -> None:
    kv = {b"key%06d" % i: os.urandom(50) for i in range(1000)}
    data = snap("c1", 10, rows_of(kv), {"c": session(1, 1)})  # type: ignore[arg-type]
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
        (frames(row_record(2)), "expected a header record, found row"),
        (frames(header(format_version=3)), "format version 3, this paxoskv reads 4 and 2 (and 1 when restoring)"),
        (frames(header(cluster_id="")), "names no cluster"),
        (frames(header(revision=0)), "revision 0 is not >= 1"),
        (frames(header(compact_revision=6)), "compaction 6 is not in -1..5"),
        (frames(header(rows=2), row_record(3), row_record(2)), "is out of order"),
        (frames(header(rows=2), row_record(2), row_record(2)), "is out of order"),
        (frames(header(rows=1), row_record(6)), "does not fit the snapshot's revision 5"),
        (frames(header(rows=1), row_record(3, mod=2)), "mod revision 2"),
        (frames(header(rows=1), row_record(3, key=b"")), "does not fit"),
        (frames(header(rows=2), row_record(2)) + _frame(header()), "expected a row record"),
        (
            frames(header(rows=1, sessions=1), row_record(2)) + _frame(row_record(3)),
            "expected a session record, found row",
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
        (frames(header(rows=1), row_record(2), row_record(3)), "expected a trailer record"),
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
    data = snap("c1", 10, ROWS, {})
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
    data = snap("prod", 10, ROWS, {})
    error = check_fails(data, cluster_id="staging")
    assert isinstance(error, SnapshotRefused)
    assert "'prod'" in str(error) and "'staging'" in str(error)
    error = check_fails(data, min_applied_index=11)
    assert isinstance(error, SnapshotRefused) and "index 10 is older than" in str(error)
    read_all(data, cluster_id="prod", min_applied_index=10)  # the same index is fine


def test_refusal_comes_at_the_header_before_the_rest_arrives() -> None:
    data = snap("prod", 10, ROWS, {})
    reader = SnapshotReader("other")
    with pytest.raises(SnapshotRefused):
        reader.feed(data[:40])


def test_a_failure_is_sticky() -> None:
    data = bytearray(snap("c1", 10, ROWS, {}))
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
    reader.feed(snap("c1", 1, {}, {}))
    reader.finish()
    with pytest.raises(AssertionError):
        reader.feed(b"x")


# ---- files ----------------------------------------------------------------------------


def test_write_file_then_verify_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "snap.db"
    data = snap("c1", 10, ROWS, SESSIONS)
    info = write_file(path, [data[:100], data[100:]])
    assert path.read_bytes() == data and not (tmp_path / "snap.db.tmp").exists()
    assert verify_file(path, chunk_bytes=7) == info
    assert verify_file(path, cluster_id="c1").applied_index == 10
    with pytest.raises(SnapshotRefused):
        verify_file(path, cluster_id="c2")


def test_write_file_keeps_the_old_file_when_the_new_one_is_bad(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "snap.db"
    good = snap("c1", 10, ROWS, {})
    write_file(path, [good])
    with pytest.raises(SnapshotCorrupt):
        write_file(path, [good[:-5]])
    assert path.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["snap.db"]


# ---- format 1 and the etcd envelope -----------------------------------------------------


def test_a_format_1_snapshot_is_refused_unless_restoring_and_then_its_keys_are_revision_2() -> None:
    data = (DATA / "snapshot-format1.snap").read_bytes()
    error = check_fails(data)
    assert isinstance(error, SnapshotRefused) and "snapshot format 1" in str(error)
    rows, sessions, info = read_all(data, [17, 400], legacy_ok=True)
    assert kv_of(rows) == {b"a": b"1", b"b": b"2", b"\x00bin": b"\xff" * 3, b"big": b"x" * 5000}
    assert sorted(rows) == [row_key(2, sub) for sub in range(4)]
    assert (info.format_version, info.rows, info.revision, info.compact_revision) == (1, 4, 2, -1)
    assert (info.cluster_id, info.applied_index, list(sessions)) == ("old", 9, ["c1"])
    # format 1's checks still hold: every flipped byte of it is caught too
    for i in range(0, len(data), 97):
        damaged = bytearray(data)
        damaged[i] ^= 0x10
        assert isinstance(check_fails(bytes(damaged), legacy_ok=True), SnapshotCorrupt), i


@pytest.mark.parametrize("rows", [{}, ROWS], ids=["empty", "rows"])
def test_the_etcd_envelope_is_512_k_plus_32_bytes_and_reads_as_its_snapshot(tmp_path: pathlib.Path, rows) -> None:  # noqa: ANN001
    data = snap("c1", 10, rows, SESSIONS)
    wrapped = b"".join(etcd_envelope([data[:7], data[7:]]))
    assert len(wrapped) % 512 == 32 and wrapped.startswith(data)
    assert wrapped[-32:] == hashlib.sha256(wrapped[:-32]).digest()
    assert set(wrapped[len(data) : -32]) <= {0}
    path = tmp_path / "snap.db"
    path.write_bytes(wrapped)
    assert envelope_body(path) == len(wrapped) - 32
    info = verify_file(path, chunk_bytes=100)
    assert (info.applied_index, info.rows, info.total_bytes) == (10, len(rows), len(data))
    plain = tmp_path / "plain.db"
    plain.write_bytes(data)
    assert envelope_body(plain) is None and verify_file(plain).total_bytes == len(data)


def test_a_damaged_envelope_is_not_read_as_one(tmp_path: pathlib.Path) -> None:
    wrapped = bytearray(b"".join(etcd_envelope([snap("c1", 10, ROWS, {})])))
    wrapped[-40] ^= 0x01  # in the padding: the digest no longer matches
    path = tmp_path / "snap.db"
    path.write_bytes(bytes(wrapped))
    assert envelope_body(path) is None
    with pytest.raises(SnapshotCorrupt):
        verify_file(path)
    wrapped[-40] ^= 0x01
    wrapped[-1] ^= 0x01  # the digest itself
    path.write_bytes(bytes(wrapped))
    with pytest.raises(SnapshotCorrupt):
        verify_file(path)
