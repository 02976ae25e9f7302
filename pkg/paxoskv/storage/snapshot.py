"""The snapshot file format: a streaming writer and a streaming verifier.

A snapshot is a consistent copy of one node's APPLIED state (the MVCC
store's history rows and revision counters, its alarms, the exactly-once
sessions, the leases and the applied index). The same bytes are a file on disk
(``paxoskv snapshot save``), a gRPC stream (``Maintenance.Snapshot``; the
etcd API's is these bytes padded, then a SHA-256: ``etcd_envelope``) and
the payload of the peer-to-peer transfer.

Format 4 (``proto/paxoskv/v1/storage.proto``, ``SnapshotRecord``): a
sequence of records, each preceded by its length as a protobuf varint::

    header    SnapshotHeader   format_version, cluster_id, applied_index,
                               rows, sessions, leases (the counts that
                               follow), revision, compact_revision, alarms
    row * rows                 HistoryRow, in strictly increasing revision
    session * sessions         SessionEntry, in strictly increasing client id
    lease * leases             StoredLease, in strictly increasing id
    trailer   SnapshotTrailer  SHA-256 of every byte before the trailer's
                               length prefix

Format 2 is the same without leases (read as a state without any); there
is no format 3.

Format 1 (before MVCC) has ``keys`` KeyValue records instead of the rows.
A reader made with ``legacy_ok`` reads it as a store from before MVCC is
migrated (``paxoskv.kv.mvcc.legacy_rows``: every key version 1 at revision
2); others refuse it (``SnapshotRefused``), as a node does a peer's.

Rules:

- The writer (``iter_snapshot``) is lazy: it pulls items as it produces
  chunks of about ``chunk_bytes``, so a snapshot of any size streams in
  bounded memory. Its caller vouches for the counts and the order; both are
  asserted.
- The reader (``SnapshotReader``) takes chunks of any size, in order, and
  checks everything as it goes: the framing (a varint of at most 10 bytes, a
  record of at most ``RECORD_BYTES_MAX``), that each record parses and is of
  the kind expected at its place, the header (format version, a cluster id,
  optionally the expected cluster id and a minimum applied index), the
  order of keys and client ids, that no session was applied after the
  snapshot's index, the counts, the checksum, and that nothing follows the
  trailer. ``finish()`` says the stream ended: a snapshot cut anywhere fails
  there. Any damage raises ``SnapshotCorrupt``; a valid snapshot that this
  store must not take raises ``SnapshotRefused``; both are
  ``SnapshotError``, whose message is one line. A failure is sticky: every
  later call raises it again.
- Items come out of ``feed`` before the checksum is known. A consumer may
  stage them, but must act on them only after ``finish()`` returned.

Every byte is covered: the records before the trailer by the checksum, and
the trailer by its own shape (a damaged trailer either fails to parse, is
not a trailer, holds another digest, or ends the stream early or late). The
tests flip every byte of a small snapshot and cut it at every offset.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError

from paxoskv.kv.lease import Lease, check_stored
from paxoskv.kv.mvcc import LEGACY_REVISION, ROW_KEY_BYTES, decode_row, legacy_rows, row_key, split_row_key
from paxoskv.kv.state_machine import Session
from paxoskv.protowire import VARINT_BYTES_MAX, read_varint, varint
from paxoskv.v1 import storage_pb2

__all__ = [
    "CHUNK_BYTES",
    "ETCD_PAD_BYTES",
    "RECORD_BYTES_MAX",
    "SNAPSHOT_FORMAT_VERSION",
    "Items",
    "SnapshotCorrupt",
    "SnapshotError",
    "SnapshotInfo",
    "SnapshotReader",
    "SnapshotRefused",
    "etcd_envelope",
    "iter_snapshot",
    "snapshot_bytes",
]

# 4, not 3: 3 is one flipped bit from 1, which a reader refuses at the header
# (before the checksum could call it damage); 4 is two bits from 1 and 2.
SNAPSHOT_FORMAT_VERSION = 4
NO_LEASES_FORMAT_VERSION = 2  # before leases: read, never written
LEGACY_FORMAT_VERSION = 1
ETCD_PAD_BYTES = 512  # etcdctl snapshot save wants 512 * k + 32 bytes
CHUNK_BYTES = 1 << 20  # default chunk size of the writer and the file readers
RECORD_BYTES_MAX = 64 << 20  # a record longer than this is a damaged length
_SHA256_BYTES = 32

# (history rows as (row key, row), sessions as (client id, session))
Items = tuple[list[tuple[bytes, bytes]], list[tuple[str, Session]]]


class SnapshotError(Exception):
    """A snapshot cannot be used; ``str(err)`` is one line saying why."""

    def __init__(self, message: str) -> None:
        assert "\n" not in message, message
        super().__init__(message)


class SnapshotCorrupt(SnapshotError):
    """The bytes are not a whole, undamaged snapshot (corrupt or truncated)."""


class SnapshotRefused(SnapshotError):
    """A valid snapshot that this store must not install (another cluster,
    or older than what is already applied)."""


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    """What a verified snapshot holds."""

    format_version: int
    cluster_id: str
    applied_index: int
    rows: int  # history rows (format 1: its keys, one row each)
    sessions: int
    revision: int
    compact_revision: int
    alarms: tuple[tuple[int, int], ...]
    total_bytes: int  # the whole snapshot, trailer included (an envelope's padding not)
    sha256: bytes  # the trailer's: of every byte before the trailer
    stream_sha256: bytes  # of every byte of the stream (SnapshotResponse.sha256)
    leases: tuple[tuple[int, Lease], ...] = ()  # (id, lease), in id order


# ---- writing ------------------------------------------------------------------------


def _frame(record: storage_pb2.SnapshotRecord) -> bytes:
    data = record.SerializeToString(deterministic=True)
    return varint(len(data)) + data


def _row_frame(key: bytes, row: bytes) -> bytes:
    """``_frame(SnapshotRecord(row=HistoryRow(revision=key, record=<row>)))``,
    encoded by hand (the hot path; the tests check it is byte for byte the
    same). ``key`` is 16 bytes, ``row`` a HistoryRecord's encoding."""
    inner = b"\x0a\x10" + key + (b"\x12" + varint(len(row)) + row if row else b"")
    record = b"\x2a" + varint(len(inner)) + inner
    return varint(len(record)) + record


def iter_snapshot(
    header: storage_pb2.SnapshotHeader,
    row_items: Iterable[tuple[bytes, bytes]],
    session_items: Iterable[tuple[str, Session]],
    chunk_bytes: int = CHUNK_BYTES,
    lease_items: Iterable[tuple[int, Lease]] = (),
) -> Iterator[bytes]:
    """The snapshot's bytes, lazily, in chunks of about ``chunk_bytes`` (the
    last one holds the trailer). ``row_items`` must be in strictly increasing
    row key order, ``session_items`` in strictly increasing client id order,
    ``lease_items`` in strictly increasing id order, and their counts must
    be the header's."""
    assert chunk_bytes >= 1, chunk_bytes
    assert header.format_version == SNAPSHOT_FORMAT_VERSION, header.format_version
    assert header.cluster_id, "a snapshot names its cluster"
    digest = hashlib.sha256()
    parts: list[bytes] = []
    size = 0

    def add(frame: bytes) -> bytes | None:
        """Queue ``frame``; the chunk to yield once about ``chunk_bytes`` are queued."""
        nonlocal size
        parts.append(frame)
        size += len(frame)
        if size < chunk_bytes:
            return None
        chunk = b"".join(parts)
        digest.update(chunk)
        parts.clear()
        size = 0
        return chunk

    if (chunk := add(_frame(storage_pb2.SnapshotRecord(header=header)))) is not None:
        yield chunk
    rows = 0
    last_key: bytes | None = None
    for key, row in row_items:
        assert last_key is None or key > last_key, (last_key, key)
        assert len(key) == ROW_KEY_BYTES, key
        last_key = key
        rows += 1
        if (chunk := add(_row_frame(key, row))) is not None:
            yield chunk
    assert rows == header.rows, (rows, header.rows)
    sessions = 0
    last_client: str | None = None
    for client_id, session in session_items:
        assert last_client is None or client_id > last_client, (last_client, client_id)
        assert session.last_index <= header.applied_index, (session, header.applied_index)
        last_client = client_id
        sessions += 1
        record = storage_pb2.SnapshotRecord(session=storage_pb2.SessionEntry(client_id=client_id, session=session.to_proto()))
        if (chunk := add(_frame(record))) is not None:
            yield chunk
    assert sessions == header.sessions, (sessions, header.sessions)
    leases = 0
    last_lease: int | None = None
    for lease_id, lease in lease_items:
        assert last_lease is None or lease_id > last_lease, (last_lease, lease_id)
        last_lease = lease_id
        leases += 1
        if (chunk := add(_frame(storage_pb2.SnapshotRecord(lease=lease.to_proto(lease_id))))) is not None:
            yield chunk
    assert leases == header.leases, (leases, header.leases)
    body = b"".join(parts)
    digest.update(body)
    trailer = _frame(
        storage_pb2.SnapshotRecord(trailer=storage_pb2.SnapshotTrailer(sha256=digest.digest()))
    )
    yield body + trailer


def snapshot_header(
    cluster_id: str,
    applied_index: int,
    rows: int,
    sessions: int,
    revision: int,
    compact_revision: int,
    alarms: Iterable[tuple[int, int]] = (),
    leases: int = 0,
) -> storage_pb2.SnapshotHeader:
    return storage_pb2.SnapshotHeader(
        leases=leases,
        format_version=SNAPSHOT_FORMAT_VERSION,
        cluster_id=cluster_id,
        applied_index=applied_index,
        rows=rows,
        sessions=sessions,
        revision=revision,
        compact_revision=compact_revision,
        alarms=[storage_pb2.StoredAlarm(member_id=m, alarm=a) for m, a in alarms],
    )


def snapshot_bytes(
    cluster_id: str,
    applied_index: int,
    history: dict[bytes, bytes],
    sessions: dict[str, Session],
    revision: int = 1,
    compact_revision: int = -1,
    alarms: Iterable[tuple[int, int]] = (),
    leases: dict[int, Lease] | None = None,
) -> bytes:
    """A whole snapshot of the given state in one bytes object (tests, tools)."""
    leases = leases or {}
    header = snapshot_header(
        cluster_id, applied_index, len(history), len(sessions), revision, compact_revision, alarms, len(leases)
    )
    return b"".join(
        iter_snapshot(header, sorted(history.items()), sorted(sessions.items()), lease_items=sorted(leases.items()))
    )


def etcd_envelope(chunks: Iterable[bytes], pad_bytes: int = ETCD_PAD_BYTES) -> Iterator[bytes]:
    """A snapshot as the etcd API sends it: the snapshot's bytes, zeros up to
    a multiple of ``pad_bytes``, then the SHA-256 of all that (32 bytes), as
    the last chunk. ``etcdctl snapshot save`` checks the size is
    ``512 * k + 32``; ``read_envelope`` undoes it."""
    digest = hashlib.sha256()
    size = 0
    for chunk in chunks:
        digest.update(chunk)
        size += len(chunk)
        yield chunk
    pad = b"\x00" * (-size % pad_bytes)
    if pad:
        digest.update(pad)
        yield pad
    yield digest.digest()


# ---- reading ------------------------------------------------------------------------


def _row_fast(buf: bytearray, body: int, stop: int) -> tuple[bytes, bytes] | None:
    """The (row key, row) of ``buf[body:stop]`` if it is a row record in the
    canonical shape ``_row_frame`` writes (as protobuf would parse it); None
    for anything else, which then goes through the protobuf parser."""
    if stop - body < 2 or buf[body] != 0x2A:
        return None
    length, p = read_varint(buf, body + 1, stop)
    if length < 0 or p + length != stop:
        return None
    if stop - p < 2 + ROW_KEY_BYTES or buf[p] != 0x0A or buf[p + 1] != ROW_KEY_BYTES:
        return None
    key = bytes(buf[p + 2 : p + 2 + ROW_KEY_BYTES])
    p += 2 + ROW_KEY_BYTES
    row = b""
    if p < stop:
        if buf[p] != 0x12:
            return None
        length, q = read_varint(buf, p + 1, stop)
        if length < 0 or q + length != stop:
            return None
        row = bytes(buf[q:stop])
    return key, row


_HEADER, _BODY, _SESSION, _LEASE, _TRAILER, _DONE = range(6)


class SnapshotReader:
    """Verifies a snapshot fed in chunks; see the module's rules.

    ``cluster_id``: refuse a snapshot of another cluster (None: any).
    ``min_applied_index``: refuse a snapshot older than this.
    ``keep_items``: ``feed`` returns the items it completed (False: it returns
    empty lists, for a reader that only verifies).
    ``legacy_ok``: read a format 1 snapshot (its keys become rows) instead
    of refusing it.
    ``padded``: zero bytes may follow the trailer (the body of an etcd
    envelope, whose checksum the caller verified).
    """

    def __init__(
        self,
        cluster_id: str | None = None,
        *,
        min_applied_index: int = 0,
        keep_items: bool = True,
        legacy_ok: bool = False,
        padded: bool = False,
    ) -> None:
        self._padded = padded
        self._cluster_id = cluster_id
        self._min_applied_index = min_applied_index
        self._keep_items = keep_items
        self._legacy_ok = legacy_ok
        self._buf = bytearray()
        self._offset = 0  # stream offset of self._buf[0]
        self._state = _HEADER
        self._body_kind = "row"  # what the body's records are: "row", or "kv" (format 1)
        self._digest = hashlib.sha256()
        self._stream_digest = hashlib.sha256()
        self._header: storage_pb2.SnapshotHeader | None = None
        self._revision = 1
        self._compact_revision = -1
        self._items = 0
        self._items_expected = -1  # the header's count, once read
        self._hashed = 0
        self._sessions = 0
        self._last_key: bytes | None = None
        self._last_client: str | None = None
        self._leases: list[tuple[int, Lease]] = []
        self._sha256 = b""
        self._total = 0  # bytes through the trailer (padding not counted)
        self._failed: SnapshotError | None = None
        self._info: SnapshotInfo | None = None

    @property
    def header(self) -> storage_pb2.SnapshotHeader | None:
        """The header, once it has been read and accepted."""
        return self._header

    @property
    def bytes_fed(self) -> int:
        return self._offset + len(self._buf)

    @property
    def info(self) -> SnapshotInfo | None:
        """What the snapshot holds, once ``finish()`` verified it."""
        return self._info

    def feed(self, data: bytes | bytearray | memoryview) -> Items:
        """Take the next bytes of the stream; return the items they completed."""
        self._raise_if_failed()
        if self._info is not None:
            raise AssertionError("feed after finish")
        rows: list[tuple[bytes, bytes]] = []
        sessions: list[tuple[str, Session]] = []
        if not data:
            return rows, sessions
        self._stream_digest.update(data)
        buf = self._buf
        buf += data
        pos = 0  # the next record starts here
        self._hashed = 0  # buf[:_hashed] is in the content digest (or is the trailer)
        end = len(buf)
        try:
            while pos < end:
                if self._state == _DONE:
                    if self._padded and not buf[pos:end].strip(b"\x00"):
                        pos = end  # padding
                        break
                    self._corrupt(self._offset + pos, f"{end - pos}+ bytes follow the trailer")
                length, body = read_varint(buf, pos, end)
                if length < 0:
                    if body - pos >= VARINT_BYTES_MAX:
                        self._corrupt(self._offset + pos, "record length is not a varint")
                    break  # the length prefix is incomplete
                if length > RECORD_BYTES_MAX:
                    self._corrupt(
                        self._offset + pos,
                        f"record length {length} is over the limit of {RECORD_BYTES_MAX}",
                    )
                stop = body + length
                if stop > end:
                    break  # the record is incomplete
                if self._state == _BODY and self._body_kind == "row":
                    item = _row_fast(buf, body, stop)
                    if item is not None:  # the common case, decoded by hand
                        self._row(self._offset + pos, item[0], item[1], rows)
                        pos = stop
                        continue
                self._record(pos, body, stop, rows, sessions)
                pos = stop
        finally:
            if self._state != _DONE and self._hashed < pos:
                self._digest.update(memoryview(buf)[self._hashed : pos])
            if pos:
                del buf[:pos]
                self._offset += pos
        return rows, sessions

    def finish(self) -> SnapshotInfo:
        """The stream ended: verify it was whole; return what it holds."""
        self._raise_if_failed()
        if self._info is not None:
            return self._info
        if self._state != _DONE:
            where = self._offset + len(self._buf)
            what = self._expected()
            if self._buf:
                self._corrupt(where, f"ends inside a record (expected a {what} record)")
            self._corrupt(where, f"ends before the {what} record")
        header = self._header
        assert header is not None
        self._info = SnapshotInfo(
            format_version=header.format_version,
            cluster_id=header.cluster_id,
            applied_index=header.applied_index,
            rows=self._items,
            sessions=header.sessions,
            revision=self._revision,
            compact_revision=self._compact_revision,
            alarms=tuple((a.member_id, a.alarm) for a in header.alarms),
            total_bytes=self._total,
            sha256=self._sha256,
            stream_sha256=self._stream_digest.digest(),
            leases=tuple(self._leases),
        )
        return self._info

    def _expected(self) -> str:
        return {_HEADER: "header", _BODY: self._body_kind, _SESSION: "session", _LEASE: "lease", _TRAILER: "trailer"}[
            self._state
        ]

    # ---- one record ----------------------------------------------------------

    def _record(
        self,
        start: int,
        body: int,
        stop: int,
        rows: list[tuple[bytes, bytes]],
        sessions: list[tuple[str, Session]],
    ) -> None:
        where = self._offset + start
        record = storage_pb2.SnapshotRecord()
        try:
            record.ParseFromString(bytes(self._buf[body:stop]))
        except (DecodeError, ValueError) as exc:
            self._corrupt(where, f"record does not parse: {exc}")
        kind = record.WhichOneof("record")
        state = self._state
        expected = self._expected()
        if kind != expected:
            self._corrupt(where, f"expected a {expected} record, found {kind}")
        if state == _BODY and kind == "row":
            row = record.row
            self._row(where, row.revision, row.record.SerializeToString(deterministic=True), rows)
        elif state == _BODY:
            self._legacy_kv(where, record.kv.key, record.kv.value, rows)
        elif state == _SESSION:
            self._session(where, record.session, sessions)
            self._advance()
        elif state == _LEASE:
            self._lease(where, record.lease)
            self._advance()
        elif state == _HEADER:
            self._accept_header(where, record.header)
            self._advance()
        else:
            if self._hashed < start:
                self._digest.update(memoryview(self._buf)[self._hashed : start])
            self._hashed = stop
            digest = self._digest.digest()
            if record.trailer.sha256 != digest:
                self._corrupt(where, "checksum mismatch")
            self._sha256 = digest
            self._state = _DONE
            self._total = self._offset + stop

    def _row(self, where: int, key: bytes, row: bytes, rows: list[tuple[bytes, bytes]]) -> None:
        """A history row: its key in order, its record a version of a key
        written at the key's revision, not after the snapshot's revision."""
        if len(key) != ROW_KEY_BYTES:
            self._corrupt(where, f"row key is {len(key)} bytes, not {ROW_KEY_BYTES}")
        if self._last_key is not None and key <= self._last_key:
            self._corrupt(where, f"row {key.hex()} is out of order")
        main, sub = split_row_key(key)
        try:
            rec = decode_row(row)
        except (DecodeError, ValueError) as exc:
            self._corrupt(where, f"row {main}.{sub} does not parse: {exc}")
        if not rec.kv.key or rec.kv.mod_revision != main or main > self._revision or main < 1:
            self._corrupt(
                where,
                f"row {main}.{sub} (key {rec.kv.key[:40]!r}, mod revision {rec.kv.mod_revision}) "
                f"does not fit the snapshot's revision {self._revision}",
            )
        self._last_key = key
        self._items += 1
        if self._keep_items:
            rows.append((key, row))
        if self._items == self._items_expected:
            self._advance()

    def _legacy_kv(self, where: int, key: bytes, value: bytes, rows: list[tuple[bytes, bytes]]) -> None:
        """A format 1 key: in key order, it becomes its migrated row."""
        if self._last_key is not None and key <= self._last_key:
            self._corrupt(where, f"key {key[:40]!r} is out of order")
        if not key:
            self._corrupt(where, "a key is empty")
        ((row_k, row),) = legacy_rows([(key, value)])
        self._last_key = key
        if self._keep_items:
            rows.append((row_key(LEGACY_REVISION, self._items), row))
        self._items += 1
        if self._items == self._items_expected:
            self._advance()

    def _session(
        self, where: int, entry: storage_pb2.SessionEntry, sessions: list[tuple[str, Session]]
    ) -> None:
        client_id = entry.client_id
        if self._last_client is not None and client_id <= self._last_client:
            self._corrupt(where, f"session {client_id[:40]!r} is out of order")
        if not entry.HasField("session"):
            self._corrupt(where, f"session {client_id[:40]!r} has no content")
        assert self._header is not None
        if entry.session.last_index > self._header.applied_index:
            self._corrupt(
                where,
                f"session {client_id[:40]!r} was applied at {entry.session.last_index}, after "
                f"the snapshot's index {self._header.applied_index}",
            )
        self._last_client = client_id
        self._sessions += 1
        if self._keep_items:
            sessions.append((client_id, Session.from_proto(entry.session)))

    def _lease(self, where: int, pb: storage_pb2.StoredLease) -> None:
        if self._leases and pb.ID <= self._leases[-1][0]:
            self._corrupt(where, f"lease {pb.ID:x} is out of order")
        bad = check_stored(pb)
        if bad is not None:
            self._corrupt(where, bad)
        self._leases.append((pb.ID, Lease.from_proto(pb)))

    def _accept_header(self, where: int, header: storage_pb2.SnapshotHeader) -> None:
        version = header.format_version
        if version == LEGACY_FORMAT_VERSION:
            if not self._legacy_ok:
                self._fail(
                    SnapshotRefused(
                        f"snapshot format {version} (from a paxoskv before revisions) is not taken "
                        f"here: restore it with `paxoskv snapshot restore`, or upgrade the node that sent it"
                    )
                )
            self._body_kind = "kv"
            self._items_expected = header.keys
            self._revision = LEGACY_REVISION if header.keys else 1
            self._compact_revision = -1
        elif version in (SNAPSHOT_FORMAT_VERSION, NO_LEASES_FORMAT_VERSION):
            if version == NO_LEASES_FORMAT_VERSION and header.leases:
                self._corrupt(where, f"a format {version} snapshot with leases")
            if header.revision < 1:
                self._corrupt(where, f"the header's revision {header.revision} is not >= 1")
            if not -1 <= header.compact_revision <= header.revision:
                self._corrupt(where, f"the header's compaction {header.compact_revision} is not in -1..{header.revision}")
            self._items_expected = header.rows
            self._revision = header.revision
            self._compact_revision = header.compact_revision
        else:
            self._corrupt(
                where,
                f"format version {version}, this paxoskv reads {SNAPSHOT_FORMAT_VERSION} and "
                f"{NO_LEASES_FORMAT_VERSION} (and {LEGACY_FORMAT_VERSION} when restoring)",
            )
        if not header.cluster_id:
            self._corrupt(where, "the header names no cluster")
        if self._cluster_id is not None and header.cluster_id != self._cluster_id:
            self._fail(
                SnapshotRefused(
                    f"snapshot of cluster {header.cluster_id!r} cannot be installed in cluster "
                    f"{self._cluster_id!r}"
                )
            )
        if header.applied_index < self._min_applied_index:
            self._fail(
                SnapshotRefused(
                    f"snapshot at index {header.applied_index} is older than the applied index "
                    f"{self._min_applied_index}"
                )
            )
        self._header = header

    def _advance(self) -> None:
        header = self._header
        assert header is not None
        if self._state == _HEADER or self._state == _BODY:
            self._state = _BODY if self._items < self._items_expected else _SESSION
        if self._state == _SESSION and self._sessions >= header.sessions:
            self._state = _LEASE
        if self._state == _LEASE and len(self._leases) >= header.leases:
            self._state = _TRAILER

    # ---- failures ------------------------------------------------------------

    def _corrupt(self, where: int, why: str) -> Any:
        self._fail(SnapshotCorrupt(f"snapshot is corrupt at byte {where}: {why}"))

    def _fail(self, error: SnapshotError) -> Any:
        self._failed = error
        raise error

    def _raise_if_failed(self) -> None:
        if self._failed is not None:
            raise type(self._failed)(str(self._failed))


# ---- files --------------------------------------------------------------------------
