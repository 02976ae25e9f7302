"""The MVCC store of the replicated state machine: revisions, versions,
generations, the history rows and their compaction.

Rules:

- The store's ``revision`` starts at 1. A write transaction (``begin`` ..
  ``end``) writes at main revision ``revision + 1``, its writes get the
  sub-revisions 0, 1, 2, ... in order, and ``end`` bumps ``revision`` by one
  only if the transaction wrote something (a delete of a missing key writes
  nothing).
- Per live key, a ``KeyRecord``: value, create revision (the first put of
  this generation), mod revision and sub-revision of the latest put, version
  (1 at creation, +1 per put) and lease. A delete ends the generation: the
  next put starts at version 1 with create = its own revision.
- The live keys of each lease (``lease_keys``) follow the records: a put
  with another lease (or none) moves its key, a delete drops it.
- Every write is one history row, keyed ``row_key(main, sub)`` (16 bytes,
  big-endian, so rows sort by revision): a ``storage.proto HistoryRecord``,
  the key as written, or for a delete (tombstone) the key and mod_revision.
  The rows since the last compaction (and each live key's version at it)
  are the history and the event log; the changed rows go to storage with
  the applied index (``take_changes``) and are read back through a
  ``HistoryReader``.
- ``compact(rev)``: for every key, the versions at or below ``rev`` go,
  except the latest one, which goes too if it is a tombstone; their rows are
  deleted. ``compact_revision`` is -1 until the first compaction.
- Deterministic: no clock, no randomness, no iteration over an unordered
  container decides anything (compaction walks its candidates in key order).

Theory of operation: live records in a dict (a current-value read is one
lookup); the key index maps every key with a retained version to the list
of its retained revisions, each encoded as one int ``main << 32 | sub << 1 |
tombstone`` (increasing, so a version at a revision is one bisect), and a
``SortedList`` of those keys serves ranges (``sortedcontainers``: ordered
inserts in O(log n), where a plain list with insort moves O(n) pointers per
new key). Compaction visits only the keys with more than one retained
version or a tombstone (``_messy``). Rows written since the last
``take_changes`` are read from the change set, older ones from the reader;
a version that is still a key's live one is served from its record.
"""

from __future__ import annotations

import struct
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Protocol

from google.protobuf.message import DecodeError
from sortedcontainers import SortedList

from paxoskv.etcdpb import kv_pb2 as mvccpb
from paxoskv.protowire import len_field, varint
from paxoskv.v1 import storage_pb2

__all__ = [
    "HistoryReader",
    "KeyRecord",
    "MVCCStore",
    "MemoryHistory",
    "decode_row",
    "encode_row",
    "legacy_rows",
    "row_key",
    "split_row_key",
]

_ROW = struct.Struct(">QQ")
ROW_KEY_BYTES = _ROW.size
_SUB_BITS = 31
SUB_MAX = (1 << _SUB_BITS) - 1
_LOW = (1 << 32) - 1  # every sub-revision and tombstone bit of one main revision
LEGACY_REVISION = 2  # what a store or snapshot from before MVCC migrates to


def row_key(main: int, sub: int) -> bytes:
    return _ROW.pack(main, sub)


def split_row_key(key: bytes) -> tuple[int, int]:
    main, sub = _ROW.unpack(key)
    return main, sub


def _enc(main: int, sub: int, tombstone: bool) -> int:
    return (main << 32) | (sub << 1) | tombstone


def _row_of(enc: int) -> bytes:
    return _ROW.pack(enc >> 32, (enc & _LOW) >> 1)


_SMALL = [bytes((i,)) for i in range(0x80)]


def _uvarint(n: int) -> bytes:
    """``varint(n)`` with the short cases unrolled (the hot path)."""
    if n < 0x80:
        return _SMALL[n]
    if n < 0x4000:
        return bytes(((n & 0x7F) | 0x80, n >> 7))
    if n < 0x200000:
        return bytes(((n & 0x7F) | 0x80, ((n >> 7) & 0x7F) | 0x80, n >> 14))
    return varint(n)


def _int64(n: int) -> bytes:
    """A protobuf int64's varint (negative numbers take ten bytes)."""
    return _uvarint(n) if n >= 0 else varint(n + (1 << 64))


def encode_kv(key: bytes, create: int, mod: int, version: int, value: bytes, lease: int) -> bytes:
    """``mvccpb.KeyValue(...).SerializeToString()``, byte for byte, by hand."""
    parts = [len_field(b"\x0a", key)] if key else []
    if create:
        parts.append(b"\x10" + _int64(create))
    if mod:
        parts.append(b"\x18" + _int64(mod))
    if version:
        parts.append(b"\x20" + _int64(version))
    if value:
        parts.append(len_field(b"\x2a", value))
    if lease:
        parts.append(b"\x30" + _int64(lease))
    return b"".join(parts)


def encode_row(key: bytes, create: int, mod: int, version: int, value: bytes, lease: int) -> bytes:
    """A put's ``HistoryRecord`` bytes (protobuf's deterministic encoding),
    built in one join: ``key`` is not empty, the revisions and version >= 1."""
    lk = _uvarint(len(key))
    c = _uvarint(create)
    m = c if mod == create else _uvarint(mod)
    v = _uvarint(version)
    parts = [b"\x0a", b"", b"\x0a", lk, key, b"\x10", c, b"\x18", m, b"\x20", v]
    body = 4 + len(lk) + len(key) + len(c) + len(m) + len(v)
    if value:
        lv = _uvarint(len(value))
        parts += (b"\x2a", lv, value)
        body += 1 + len(lv) + len(value)
    if lease:
        ll = _int64(lease)
        parts += (b"\x30", ll)
        body += 1 + len(ll)
    parts[1] = _uvarint(body)
    return b"".join(parts)


def encode_tombstone(key: bytes, mod: int) -> bytes:
    return len_field(b"\x0a", encode_kv(key, 0, mod, 0, b"", 0)) + b"\x10\x01"


def decode_row(row: bytes) -> storage_pb2.HistoryRecord:
    """Parse a stored row (raises ``google.protobuf.message.DecodeError``)."""
    return storage_pb2.HistoryRecord.FromString(row)


def legacy_rows(items: Iterable[tuple[bytes, bytes]]) -> Iterator[tuple[bytes, bytes]]:
    """The history rows of a key-value map from before MVCC, in key order:
    every key a version 1 created at revision ``LEGACY_REVISION`` (as if one
    transaction had written them all), sub-revisions in key order."""
    for sub, (key, value) in enumerate(items):
        yield row_key(LEGACY_REVISION, sub), encode_row(key, LEGACY_REVISION, LEGACY_REVISION, 1, value, 0)


class HistoryReader(Protocol):
    """Read-only access to the stored history rows (the storage backends
    implement it; see ``paxoskv.storage.base``)."""

    def history_row(self, row: bytes) -> bytes | None:
        """The row stored under the 16-byte key ``row``, or None."""
        ...

    def history_rows(self, start: bytes, stop: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        """Every stored (row key, row) with ``start <= key < stop`` (None: to
        the end), in revision order."""
        ...


class MemoryHistory:
    """A ``HistoryReader`` over a dict, kept by a store without storage."""

    def __init__(self, rows: dict[bytes, bytes] | None = None) -> None:
        self.rows: dict[bytes, bytes] = dict(rows or {})

    def history_row(self, row: bytes) -> bytes | None:
        return self.rows.get(row)

    def history_rows(self, start: bytes, stop: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        for key in sorted(k for k in self.rows if k >= start and (stop is None or k < stop)):
            yield key, self.rows[key]

    def update(self, changes: dict[bytes, bytes | None]) -> None:
        for key, row in changes.items():
            if row is None:
                self.rows.pop(key, None)
            else:
                self.rows[key] = row


class KeyRecord:
    """A live key's latest version."""

    __slots__ = ("value", "create", "mod", "sub", "version", "lease")

    def __init__(self, value: bytes, create: int, mod: int, sub: int, version: int, lease: int) -> None:
        self.value = value
        self.create = create
        self.mod = mod
        self.sub = sub
        self.version = version
        self.lease = lease

    def to_kv(self, key: bytes, keys_only: bool = False) -> mvccpb.KeyValue:
        return mvccpb.KeyValue(
            key=key,
            create_revision=self.create,
            mod_revision=self.mod,
            version=self.version,
            value=b"" if keys_only else self.value,
            lease=self.lease,
        )

    def __repr__(self) -> str:
        return (
            f"KeyRecord(value={self.value[:20]!r}, create={self.create}, mod={self.mod}.{self.sub}, "
            f"version={self.version}, lease={self.lease})"
        )


class MVCCStore:
    """See the module docstring. ``rows``: the stored history rows, in any
    order; ``reader``: where rows not changed since the last ``take_changes``
    are read (None: the store keeps them itself, in a ``MemoryHistory``)."""

    def __init__(
        self,
        rows: Mapping[bytes, bytes] | Iterable[tuple[bytes, bytes]] = (),
        *,
        revision: int = 1,
        compact_revision: int = -1,
        reader: HistoryReader | None = None,
    ) -> None:
        if revision < 1:
            raise ValueError(f"revision must be >= 1, not {revision}")
        self.revision = revision
        self.compact_revision = compact_revision
        self._live: dict[bytes, KeyRecord] = {}
        self._values: dict[bytes, bytes] = {}  # the live values again: get is one dict lookup
        self.get = self._values.get
        self._index: dict[bytes, list[int]] = {}
        self._messy: set[bytes] = set()
        self._pending: dict[bytes, bytes | None] = {}
        self._main = 0  # the main revision being written (0: no transaction open)
        self._sub = 0
        own = reader is None
        self._own: MemoryHistory | None = MemoryHistory() if own else None
        self._reader: HistoryReader = self._own if own else reader  # type: ignore[assignment]
        for key, row in sorted(rows.items() if isinstance(rows, Mapping) else rows):
            self._load_row(key, row)
        self._keys = SortedList(self._index)
        self._new_keys: list[bytes] = []  # new keys not in _keys yet: sorted in when a range needs them
        self._leased: dict[int, set[bytes]] = {}  # lease id -> its live keys
        for key, rec in self._live.items():
            if rec.lease:
                self._leased.setdefault(rec.lease, set()).add(key)

    def _load_row(self, key: bytes, row: bytes) -> None:
        main, sub = split_row_key(key)
        if main > self.revision:
            raise ValueError(f"row {main}.{sub} is after the store's revision {self.revision}")
        try:
            rec = decode_row(row)
        except DecodeError as exc:
            raise ValueError(f"row {main}.{sub} does not parse: {exc}") from None
        kv = rec.kv
        if not kv.key:
            raise ValueError(f"row {main}.{sub} has no key")
        if kv.mod_revision != main:
            raise ValueError(f"row {main}.{sub} holds mod_revision {kv.mod_revision}")
        lst = self._index.setdefault(kv.key, [])
        enc = _enc(main, sub, rec.tombstone)
        if lst and lst[-1] >= enc:
            raise ValueError(f"rows of key {kv.key[:40]!r} out of order at {main}.{sub}")
        lst.append(enc)
        if rec.tombstone:
            self._live.pop(kv.key, None)
            self._values.pop(kv.key, None)
        else:
            self._live[kv.key] = KeyRecord(kv.value, kv.create_revision, main, sub, kv.version, kv.lease)
            self._values[kv.key] = kv.value
        if len(lst) > 1 or rec.tombstone:
            self._messy.add(kv.key)
        if self._own is not None:
            self._own.rows[key] = row

    # ---- current state -----------------------------------------------------------

    def get(self, key: bytes) -> bytes | None:  # replaced by the dict's own get in __init__
        return self._values.get(key)

    def record(self, key: bytes) -> KeyRecord | None:
        return self._live.get(key)

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, key: object) -> bool:
        return key in self._live

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """Every live (key, value), in no particular order."""
        return ((k, r.value) for k, r in self._live.items())

    def lease_keys(self, lease_id: int) -> set[bytes]:
        """The live keys attached to ``lease_id`` (a copy)."""
        return set(self._leased.get(lease_id, ()))

    def _move_lease(self, key: bytes, old: int, new: int) -> None:
        if old:
            keys = self._leased.get(old)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._leased[old]
        if new:
            self._leased.setdefault(new, set()).add(key)

    @property
    def rows_retained(self) -> int:
        return sum(len(lst) for lst in self._index.values())

    # ---- writing -----------------------------------------------------------------

    @property
    def in_txn(self) -> bool:
        return self._main != 0

    @property
    def changed(self) -> bool:
        """The open transaction wrote something."""
        return self._sub > 0

    @property
    def read_revision(self) -> int:
        """The revision the open transaction's reads see (its own writes
        included), or the store's."""
        return self.revision + 1 if self._sub else self.revision

    def begin(self) -> None:
        assert not self._main, "a transaction is open already"
        self._main = self.revision + 1
        self._sub = 0

    def end(self) -> bool:
        """Close the transaction; whether it wrote (and bumped the revision)."""
        assert self._main, "no transaction is open"
        changed = self._sub > 0
        if changed:
            self.revision = self._main
        self._main = 0
        self._sub = 0
        return changed

    def put(self, key: bytes, value: bytes, lease: int = 0) -> KeyRecord | None:
        """Write a new version of ``key``; the previous live record, if any."""
        main = self._main
        assert main, "put outside a transaction"
        sub = self._sub
        self._sub = sub + 1
        prev = self._live.get(key)
        enc = (main << 32) | (sub << 1)
        lst = self._index.get(key)
        if lst is None:
            self._index[key] = [enc]
            self._new_keys.append(key)
        else:
            lst.append(enc)
            self._messy.add(key)
        if prev is None:
            create, version = main, 1
            if lease:
                self._move_lease(key, 0, lease)
        else:
            create, version = prev.create, prev.version + 1
            if prev.lease != lease:
                self._move_lease(key, prev.lease, lease)
        self._live[key] = KeyRecord(value, create, main, sub, version, lease)
        self._values[key] = value
        self._pending[_ROW.pack(main, sub)] = encode_row(key, create, main, version, value, lease)
        return prev

    def put_many(self, keys: Sequence[bytes], values: Sequence[bytes]) -> bytearray:
        """``put(keys[i], values[i])`` for each i in order (no lease), in the
        open transaction: exactly what those puts do, in one loop with the
        batch's shared parts (main revision, its varint) computed once.
        Whether each key had a live record before, 0 or 1 per put."""
        main = self._main
        assert main, "put outside a transaction"
        sub = self._sub
        live = self._live
        live_get = live.get
        current = self._values
        index = self._index
        index_get = index.get
        new_keys = self._new_keys
        messy_add = self._messy.add
        pending = self._pending
        pack = _ROW.pack
        uvarint = _uvarint
        small = _SMALL
        m = uvarint(main)
        base = main << 32
        existed = bytearray(len(keys))
        for i, key in enumerate(keys):
            value = values[i]
            prev = live_get(key)
            enc = base | (sub << 1)
            lst = index_get(key)
            if lst is None:
                index[key] = [enc]
                new_keys.append(key)
            else:
                lst.append(enc)
                messy_add(key)
            if prev is None:
                create, version, c = main, 1, m
            else:
                existed[i] = 1
                create, version = prev.create, prev.version + 1
                c = m if create == main else uvarint(create)
                if prev.lease:
                    self._move_lease(key, prev.lease, 0)
            live[key] = KeyRecord(value, create, main, sub, version, 0)
            current[key] = value
            # encode_row(key, create, main, version, value, 0), inlined.
            nk = len(key)
            v = small[version] if version < 0x80 else uvarint(version)
            body = 4 + (1 if nk < 0x80 else len(uvarint(nk))) + nk + len(c) + len(m) + len(v)
            if value:
                nv = len(value)
                lv = small[nv] if nv < 0x80 else uvarint(nv)
                body += 1 + len(lv) + nv
                row = b"".join((b"\x0a", uvarint(body), b"\x0a", small[nk] if nk < 0x80 else uvarint(nk), key,
                                b"\x10", c, b"\x18", m, b"\x20", v, b"\x2a", lv, value))
            else:
                row = b"".join((b"\x0a", uvarint(body), b"\x0a", small[nk] if nk < 0x80 else uvarint(nk), key,
                                b"\x10", c, b"\x18", m, b"\x20", v))
            pending[pack(main, sub)] = row
            sub += 1
        self._sub = sub
        return existed

    def put_alone(self, key: bytes, value: bytes) -> KeyRecord | None:
        """``begin(); put(key, value); end()``: a command of one put."""
        self._main = self.revision + 1
        self._sub = 0
        prev = self.put(key, value)
        self.revision = self._main
        self._main = self._sub = 0
        return prev

    def delete(self, key: bytes) -> KeyRecord | None:
        """End the generation of ``key``; its last record (None: it had none,
        nothing is written)."""
        main = self._main
        assert main, "delete outside a transaction"
        prev = self._live.pop(key, None)
        if prev is None:
            return None
        del self._values[key]
        if prev.lease:
            self._move_lease(key, prev.lease, 0)
        sub = self._sub
        self._sub = sub + 1
        self._index[key].append((main << 32) | (sub << 1) | 1)
        self._messy.add(key)
        self._pending[_ROW.pack(main, sub)] = encode_tombstone(key, main)
        return prev

    # ---- reading at a revision ---------------------------------------------------

    def keys_in(self, key: bytes, end: bytes | None) -> Iterator[bytes]:
        """The indexed keys of a range in key order: ``end`` None: ``key``
        alone; ``b""``: every key >= ``key``; else ``key <= k < end``."""
        if end is None:
            if key in self._index:
                yield key
            return
        if end and end <= key:
            return
        yield from self._sorted_keys().irange(key, end or None, inclusive=(True, False))

    def _sorted_keys(self) -> SortedList:
        """Every indexed key in order (new ones sorted in now, in one go)."""
        if self._new_keys:
            self._keys.update(self._new_keys)
            self._new_keys = []
        return self._keys

    def live_in(self, key: bytes, end: bytes | None) -> Iterator[tuple[bytes, KeyRecord]]:
        """The live keys of a range (as ``keys_in``), with their records."""
        live = self._live
        for k in self.keys_in(key, end):
            rec = live.get(k)
            if rec is not None:
                yield k, rec

    def version_at(self, key: bytes, rev: int) -> int | None:
        """The encoded revision of ``key``'s version at ``rev`` (None: it had
        none then, or that version was compacted)."""
        lst = self._index.get(key)
        if lst is None:
            return None
        i = bisect_right(lst, (rev << 32) | _LOW) - 1
        if i < 0 or lst[i] & 1:
            return None
        return lst[i]

    def kv_of(self, key: bytes, enc: int, keys_only: bool = False) -> mvccpb.KeyValue:
        """The KeyValue of ``key``'s version ``enc`` (from ``version_at``)."""
        rec = self._live.get(key)
        main = enc >> 32
        sub = (enc & _LOW) >> 1
        if rec is not None and rec.mod == main and rec.sub == sub:
            return rec.to_kv(key, keys_only)
        row = self._row(_ROW.pack(main, sub))
        kv = decode_row(row).kv
        if keys_only:
            kv.value = b""
        return kv

    def _row(self, key: bytes) -> bytes:
        if key in self._pending:
            row = self._pending[key]
        else:
            row = self._reader.history_row(key)
        if row is None:
            main, sub = split_row_key(key)
            raise AssertionError(f"history row {main}.{sub} is missing")
        return row

    # ---- compaction --------------------------------------------------------------

    def compact(self, rev: int) -> int:
        """Drop the versions at or below ``rev`` except each key's latest
        (unless a tombstone); the rows dropped."""
        assert not self._main, "compact inside a transaction"
        assert rev > self.compact_revision and rev <= self.revision, (rev, self.compact_revision, self.revision)
        self.compact_revision = rev
        bound = (rev << 32) | _LOW
        pending = self._pending
        index = self._index
        keys = self._sorted_keys()
        dropped = 0
        settled: list[bytes] = []
        for key in sorted(self._messy):
            lst = index[key]
            i = bisect_right(lst, bound) - 1
            if i < 0:
                continue
            cut = i + 1 if lst[i] & 1 else i
            if cut:
                for enc in lst[:cut]:
                    pending[_row_of(enc)] = None
                del lst[:cut]
                dropped += cut
            if not lst:
                del index[key]
                keys.remove(key)
                settled.append(key)
            elif len(lst) == 1 and not lst[0] & 1:
                settled.append(key)
        self._messy.difference_update(settled)
        return dropped

    # ---- persistence -------------------------------------------------------------

    def take_changes(self) -> dict[bytes, bytes | None]:
        """The rows written (bytes) and dropped (None) since the last call."""
        changes, self._pending = self._pending, {}
        if self._own is not None:
            self._own.update(changes)
        return changes

    def history_rows(self, start: bytes = b"", stop: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        """The retained rows in revision order, taken changes only (tests)."""
        return self._reader.history_rows(start, stop)
