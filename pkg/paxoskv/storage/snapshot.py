"""The snapshot file format: a streaming writer and a streaming verifier.

A snapshot is a consistent copy of one node's APPLIED state (the key-value
map, the exactly-once sessions and the applied index). The same bytes are a
file on disk (``paxoskv snapshot save``), a gRPC stream
(``Maintenance.Snapshot``) and the payload of the peer-to-peer transfer.

Format (``proto/paxoskv/v1/storage.proto``, ``SnapshotRecord``): a sequence
of records, each preceded by its length as a protobuf varint::

    header    SnapshotHeader   format_version, cluster_id, applied_index,
                               keys, sessions (the counts that follow)
    kv * keys                  KeyValue, in strictly increasing key order
    session * sessions         SessionEntry, in strictly increasing client id
    trailer   SnapshotTrailer  SHA-256 of every byte before the trailer's
                               length prefix

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

from paxoskv.kv.state_machine import Session
from paxoskv.protowire import varint
from paxoskv.v1 import storage_pb2

__all__ = [
    "CHUNK_BYTES",
    "RECORD_BYTES_MAX",
    "SNAPSHOT_FORMAT_VERSION",
    "Items",
    "SnapshotCorrupt",
    "SnapshotError",
    "SnapshotInfo",
    "SnapshotReader",
    "SnapshotRefused",
    "iter_snapshot",
    "snapshot_bytes",
]

SNAPSHOT_FORMAT_VERSION = 1
CHUNK_BYTES = 1 << 20  # default chunk size of the writer and the file readers
RECORD_BYTES_MAX = 64 << 20  # a record longer than this is a damaged length
_VARINT_BYTES_MAX = 10
_SHA256_BYTES = 32

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
    keys: int
    sessions: int
    total_bytes: int  # the whole stream, trailer included
    sha256: bytes  # the trailer's: of every byte before the trailer
    stream_sha256: bytes  # of every byte of the stream (SnapshotResponse.sha256)


# ---- writing ------------------------------------------------------------------------


def _frame(record: storage_pb2.SnapshotRecord) -> bytes:
    data = record.SerializeToString(deterministic=True)
    return varint(len(data)) + data


def _kv_frame(key: bytes, value: bytes) -> bytes:
    """``_frame(SnapshotRecord(kv=KeyValue(key=key, value=value)))``, encoded by
    hand (the hot path; the tests check it is byte for byte the same)."""
    inner = (b"\x0a" + varint(len(key)) + key if key else b"") + (
        b"\x12" + varint(len(value)) + value if value else b""
    )
    record = b"\x12" + varint(len(inner)) + inner
    return varint(len(record)) + record


def iter_snapshot(
    header: storage_pb2.SnapshotHeader,
    kv_items: Iterable[tuple[bytes, bytes]],
    session_items: Iterable[tuple[str, Session]],
    chunk_bytes: int = CHUNK_BYTES,
) -> Iterator[bytes]:
    """The snapshot's bytes, lazily, in chunks of about ``chunk_bytes`` (the
    last one holds the trailer). ``kv_items`` must be in strictly increasing
    key order, ``session_items`` in strictly increasing client id order, and
    their counts must be the header's."""
    assert chunk_bytes >= 1, chunk_bytes
    assert header.format_version == SNAPSHOT_FORMAT_VERSION, header.format_version
    assert header.cluster_id, "a snapshot names its cluster"
    digest = hashlib.sha256()
    parts: list[bytes] = []
    size = 0
    first = _frame(storage_pb2.SnapshotRecord(header=header))
    parts.append(first)
    size += len(first)
    keys = 0
    last_key: bytes | None = None
    for key, value in kv_items:
        assert last_key is None or key > last_key, (last_key, key)
        last_key = key
        keys += 1
        frame = _kv_frame(key, value)
        parts.append(frame)
        size += len(frame)
        if size >= chunk_bytes:
            chunk = b"".join(parts)
            digest.update(chunk)
            yield chunk
            parts.clear()
            size = 0
    assert keys == header.keys, (keys, header.keys)
    sessions = 0
    last_client: str | None = None
    for client_id, session in session_items:
        assert last_client is None or client_id > last_client, (last_client, client_id)
        assert session.last_index <= header.applied_index, (session, header.applied_index)
        last_client = client_id
        sessions += 1
        frame = _frame(
            storage_pb2.SnapshotRecord(
                session=storage_pb2.SessionEntry(client_id=client_id, session=session.to_proto())
            )
        )
        parts.append(frame)
        size += len(frame)
        if size >= chunk_bytes:
            chunk = b"".join(parts)
            digest.update(chunk)
            yield chunk
            parts.clear()
            size = 0
    assert sessions == header.sessions, (sessions, header.sessions)
    body = b"".join(parts)
    digest.update(body)
    trailer = _frame(
        storage_pb2.SnapshotRecord(trailer=storage_pb2.SnapshotTrailer(sha256=digest.digest()))
    )
    yield body + trailer


def snapshot_bytes(
    cluster_id: str,
    applied_index: int,
    kv: dict[bytes, bytes],
    sessions: dict[str, Session],
) -> bytes:
    """A whole snapshot of the given state in one bytes object (tests, tools)."""
    header = storage_pb2.SnapshotHeader(
        format_version=SNAPSHOT_FORMAT_VERSION,
        cluster_id=cluster_id,
        applied_index=applied_index,
        keys=len(kv),
        sessions=len(sessions),
    )
    return b"".join(iter_snapshot(header, sorted(kv.items()), sorted(sessions.items())))


# ---- reading ------------------------------------------------------------------------


def _read_varint(buf: bytearray, pos: int, end: int) -> tuple[int, int]:
    """(value, position after it), or (-1, position reached) if ``buf`` ends
    first or the varint is longer than 10 bytes."""
    value = 0
    shift = 0
    i = pos
    while i < end and i - pos < _VARINT_BYTES_MAX:
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7
    return -1, i


def _kv_fast(buf: bytearray, body: int, stop: int) -> tuple[bytes, bytes] | None:
    """The (key, value) of ``buf[body:stop]`` if it is a kv record in the
    canonical shape ``_kv_frame`` writes (as protobuf would parse it); None
    for anything else, which then goes through the protobuf parser."""
    if stop - body < 2 or buf[body] != 0x12:
        return None
    length = buf[body + 1]
    p = body + 2
    if length >= 0x80:
        length, p = _read_varint(buf, body + 1, stop)
    if p + length != stop:
        return None
    key = value = b""
    if p < stop and buf[p] == 0x0A:
        length = buf[p + 1] if p + 1 < stop else 0x80
        p += 2
        if length >= 0x80:
            length, p = _read_varint(buf, p - 1, stop)
        if length < 0 or p + length > stop:
            return None
        key = bytes(buf[p : p + length])
        p += length
    if p < stop and buf[p] == 0x12:
        length = buf[p + 1] if p + 1 < stop else 0x80
        p += 2
        if length >= 0x80:
            length, p = _read_varint(buf, p - 1, stop)
        if length < 0 or p + length > stop:
            return None
        value = bytes(buf[p : p + length])
        p += length
    if p != stop:
        return None
    return key, value


_HEADER, _KV, _SESSION, _TRAILER, _DONE = range(5)
_EXPECTED = {_HEADER: "header", _KV: "kv", _SESSION: "session", _TRAILER: "trailer"}


class SnapshotReader:
    """Verifies a snapshot fed in chunks; see the module's rules.

    ``cluster_id``: refuse a snapshot of another cluster (None: any).
    ``min_applied_index``: refuse a snapshot older than this.
    ``keep_items``: ``feed`` returns the items it completed (False: it returns
    empty lists, for a reader that only verifies).
    """

    def __init__(
        self,
        cluster_id: str | None = None,
        *,
        min_applied_index: int = 0,
        keep_items: bool = True,
    ) -> None:
        self._cluster_id = cluster_id
        self._min_applied_index = min_applied_index
        self._keep_items = keep_items
        self._buf = bytearray()
        self._offset = 0  # stream offset of self._buf[0]
        self._state = _HEADER
        self._digest = hashlib.sha256()
        self._stream_digest = hashlib.sha256()
        self._header: storage_pb2.SnapshotHeader | None = None
        self._keys = 0
        self._keys_expected = -1  # the header's count, once read
        self._hashed = 0
        self._sessions = 0
        self._last_key: bytes | None = None
        self._last_client: str | None = None
        self._sha256 = b""
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
        kvs: list[tuple[bytes, bytes]] = []
        sessions: list[tuple[str, Session]] = []
        if not data:
            return kvs, sessions
        self._stream_digest.update(data)
        buf = self._buf
        buf += data
        pos = 0  # the next record starts here
        self._hashed = 0  # buf[:_hashed] is in the content digest (or is the trailer)
        end = len(buf)
        keep = self._keep_items
        try:
            while pos < end:
                if self._state == _DONE:
                    self._corrupt(self._offset + pos, f"{end - pos}+ bytes follow the trailer")
                length, body = _read_varint(buf, pos, end)
                if length < 0:
                    if body - pos >= _VARINT_BYTES_MAX:
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
                if self._state == _KV:
                    item = _kv_fast(buf, body, stop)
                    if item is not None:  # the common case, decoded by hand
                        key = item[0]
                        if self._last_key is not None and key <= self._last_key:
                            self._corrupt(self._offset + pos, f"key {key[:40]!r} is out of order")
                        self._last_key = key
                        self._keys += 1
                        if keep:
                            kvs.append(item)
                        if self._keys == self._keys_expected:
                            self._advance()
                        pos = stop
                        continue
                self._record(pos, body, stop, kvs, sessions)
                pos = stop
        finally:
            if self._state != _DONE and self._hashed < pos:
                self._digest.update(memoryview(buf)[self._hashed : pos])
            if pos:
                del buf[:pos]
                self._offset += pos
        return kvs, sessions

    def finish(self) -> SnapshotInfo:
        """The stream ended: verify it was whole; return what it holds."""
        self._raise_if_failed()
        if self._info is not None:
            return self._info
        if self._state != _DONE:
            where = self._offset + len(self._buf)
            what = _EXPECTED[self._state]
            if self._buf:
                self._corrupt(where, f"ends inside a record (expected a {what} record)")
            self._corrupt(where, f"ends before the {what} record")
        header = self._header
        assert header is not None
        self._info = SnapshotInfo(
            format_version=header.format_version,
            cluster_id=header.cluster_id,
            applied_index=header.applied_index,
            keys=header.keys,
            sessions=header.sessions,
            total_bytes=self._offset,
            sha256=self._sha256,
            stream_sha256=self._stream_digest.digest(),
        )
        return self._info

    # ---- one record ----------------------------------------------------------

    def _record(
        self,
        start: int,
        body: int,
        stop: int,
        kvs: list[tuple[bytes, bytes]],
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
        if kind != _EXPECTED[state]:
            self._corrupt(where, f"expected a {_EXPECTED[state]} record, found {kind}")
        if state == _KV:
            key = record.kv.key
            if self._last_key is not None and key <= self._last_key:
                self._corrupt(where, f"key {key[:40]!r} is out of order")
            self._last_key = key
            self._keys += 1
            if self._keep_items:
                kvs.append((key, record.kv.value))
            if self._keys == self._keys_expected:
                self._advance()
        elif state == _SESSION:
            self._session(where, record.session, sessions)
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

    def _accept_header(self, where: int, header: storage_pb2.SnapshotHeader) -> None:
        if header.format_version != SNAPSHOT_FORMAT_VERSION:
            self._corrupt(
                where,
                f"format version {header.format_version}, this paxoskv reads "
                f"{SNAPSHOT_FORMAT_VERSION}",
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
        self._keys_expected = header.keys

    def _advance(self) -> None:
        header = self._header
        assert header is not None
        if self._state == _HEADER or self._state == _KV:
            self._state = _KV if self._keys < header.keys else _SESSION
        if self._state == _SESSION and self._sessions >= header.sessions:
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
