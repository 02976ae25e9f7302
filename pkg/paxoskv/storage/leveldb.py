"""LevelDB storage (plyvel): one database per node, every write one batch.

Rules: those of :mod:`paxoskv.storage.base`. LevelDB gives them for free
where it can: a write batch is atomic, and a batch written with ``sync=True``
fsyncs the write-ahead log, which makes it and every earlier batch durable.

Key layout (prefixes keep kinds apart; slots are 8-byte big-endian so a
range of slots is a range of keys)::

    meta                      storage_pb2.NodeMeta      identity, written once
    acceptor                  storage_pb2.AcceptorState the promised ballot
    accepted/<slot u64be>     peer_pb2.Entry            accepted, maybe not chosen
    chosen/<slot u64be>       peer_pb2.Value, or the    chosen value
                              marker b"\x00": the value
                              is the accepted entry's
    rev/<main u64be><sub u64be>  storage_pb2.HistoryRecord  the MVCC history: one
                              row per version of a key since the compaction
                              (format 4; formats 1-3 had kv/<key> -> value)
    session/<client_id utf8>  storage_pb2.Session       exactly-once sessions
    lease/<id i64be>          storage_pb2.StoredLease   the leases (their keys are
                                                        the rows that name them)
    applied                   storage_pb2.AppliedState  the applied index, the
                                                        revision, compaction
                                                        revision and alarms
    log_start                 storage_pb2.AppliedState  first slot kept (its
                                                        applied_index field;
                                                        absent: 1)
    probe                     (transient)               open-time write probe

Every record is a protobuf message except the chosen marker.

Rules of this store beyond base's (why and how each holds:
docs/design.md, "Storage on LevelDB"):

- A chosen value equal to the accepted one is a one-byte marker
  (``chosen/<slot>`` = ``b"\x00"``), written only when the accepted record
  holding the value is in the same batch or an earlier one; a record whose
  value a marker relies on never goes while its slot stays.
- An older format (1-3) is migrated on open in ONE synced batch written
  before anything else (format 4: MVCC history rows); a crash leaves the old
  store or the new one.
- Open refuses, changing nothing: ``Locked``, ``NotWritable`` (a probe
  write fails), ``Corrupt`` (``paranoid_checks``).
- After a failed write every later write raises ``NotWritable``: the node
  must stop (recovery drops the torn batch whole).
- A handle may be used from several threads; its calls are serialised by a
  lock, except ``reclaim`` and snapshot reads, which never block writers.
- ``close`` waits for a running ``reclaim`` or source batch to end.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import re
import struct
import tempfile
import threading
from collections.abc import Iterator, Sequence
from typing import Any, BinaryIO

import plyvel
from google.protobuf.message import DecodeError

from paxoskv.kv.lease import Lease, check_stored, lease_row_key
from paxoskv.kv.mvcc import ROW_KEY_BYTES, legacy_rows, row_key
from paxoskv.kv.state_machine import Changes, Session
from paxoskv.paxos.types import ZERO_BALLOT, Ballot, Entry, Value
from paxoskv.storage.base import (
    FORMAT_VERSION,
    READABLE_FORMAT_VERSIONS,
    Corrupt,
    Locked,
    LoadedState,
    NotFound,
    NotWritable,
    StorageError,
    WrongCluster,
    WrongFormat,
    WrongNode,
    check_identity,
    check_loaded,
)
from paxoskv.storage.snapshot_base import InstallerBase, SourceBase
from paxoskv.storage.snapshot import (
    Items,
    SnapshotReader,
    SnapshotRefused,
)
from paxoskv.storage.snapshot_files import read_file
from paxoskv.v1 import peer_pb2, storage_pb2

__all__ = ["COMPRESSIONS", "LevelDBStorage", "data_dir_bytes"]

K_META = b"meta"
K_ACCEPTOR = b"acceptor"
K_APPLIED = b"applied"
K_PROBE = b"probe"
K_LOG_START = b"log_start"
P_ACCEPTED = b"accepted/"
CHOSEN_MARKER = b"\x00"  # chosen/<slot>: the value is that of accepted/<slot>
P_CHOSEN = b"chosen/"
P_KV = b"kv/"  # formats 1-3 only: migrated on open
P_REV = b"rev/"
P_SESSION = b"session/"
P_LEASE = b"lease/"
SLOT_MAX = (1 << 64) - 1
STAGING_PREFIX = "snapshot-incoming-"
STAGING_SUFFIX = ".tmp"
SOURCE_BATCH_RECORDS = 1024
# An apply that drops fewer accepted slots than this finds the records in
# the handle's index of them; a wider range (a catch-up, the first apply
# after open) reads them with an iterator.
DROP_PROBE_SLOTS_MAX = 256

_SLOT = struct.Struct(">Q")
# LevelDB's lock failures read "IO error: lock <path>/LOCK: <why>".
_LOCK_ERROR = re.compile(r"(^|: )lock ")
_NOT_WRITABLE_MARKERS = (
    "read-only file system",
    "no space left",
    "permission denied",
    "quota exceeded",
    "operation not permitted",
)


def slot_key(prefix: bytes, slot: int) -> bytes:
    return prefix + _SLOT.pack(slot)


def _message(exc: BaseException) -> str:
    arg = exc.args[0] if exc.args else exc
    return arg.decode("utf-8", "replace") if isinstance(arg, bytes) else str(arg)


def _storage_error(path: str, exc: plyvel.Error) -> StorageError:
    """Map a plyvel exception to the storage error that says what to do."""
    text = _message(exc)
    lowered = text.lower()
    if isinstance(exc, plyvel.CorruptionError):
        return Corrupt(path, text)
    if any(marker in lowered for marker in _NOT_WRITABLE_MARKERS):
        return NotWritable(path, text)
    if isinstance(exc, plyvel.IOError) and _LOCK_ERROR.search(text):
        return Locked(path, text)
    return StorageError(f"data directory {path}: {text}: check the path and the disk", path=path)


# LevelDB block compression. None is the default, as etcd's bbolt does not
# compress either: with the machine saturated by batch writes (3 nodes on 2
# cores, batches of 1000), 5 of 6 alternating runs were faster without snappy
# (about 83k against 73k writes/s, 3-6 us less node CPU per write); unary and
# 100-op batches showed no difference within noise. It costs disk space for
# compressible values.
COMPRESSIONS = (None, "snappy")


class LevelDBStorage:
    """The storage protocol on one plyvel database. Use :meth:`open`."""

    def __init__(self, db: plyvel.DB, path: str, node_id: int, cluster_id: str) -> None:
        self._db: plyvel.DB | None = db
        self._lock = threading.Lock()
        self.path = path
        self.node_id = node_id
        self.cluster_id = cluster_id
        self._applied_index = self._read_applied_index()
        self._log_start = self._read_log_start()
        # Every accepted record present is of a slot >= _accepted_scan_from,
        # or a marked one (in _marked) >= log_start.
        self._accepted_scan_from = 0
        # The value of each accepted record present, and the slots whose
        # chosen record is a marker (their accepted record is the value's
        # copy). None until the first load (or the first call that needs
        # them); from then on its keys are exactly the accepted records in the
        # store (every write of one goes through this handle: LevelDB's lock
        # keeps any other out), which lets an apply find the records it drops
        # without an iterator.
        self._values: dict[int, Value] | None = None
        self._marked: set[int] | None = None
        self._failed: str | None = None  # why a write failed; no write after that
        # Calls that run without the lock (reclaim, source reads) count
        # themselves in _active; close waits for them.
        self._cond = threading.Condition()
        self._active = 0
        self._closing = False
        self._sources: set[_LevelDBSource] = set()
        self._reclaim_state = False  # an install replaced kv/ and session/
        # MVCC compaction deleted the rows below this revision: reclaim rev/ up to it
        self._rev_reclaim_through = 0
        self._rev_reclaimed = 0

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        node_id: int,
        cluster_id: str,
        create: bool = True,
        *,
        compression: str | None = None,
    ) -> LevelDBStorage:
        """Open (and with ``create``, initialise) the node's data directory.
        ``compression``: how LevelDB compresses the blocks it writes from now
        on (``None`` or ``"snappy"``); blocks already written are read either
        way, so a store may switch between the two."""
        if compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {COMPRESSIONS}, not {compression!r}")
        check_identity(node_id, cluster_id)
        path = os.fspath(path)
        if not create and not os.path.exists(os.path.join(path, "CURRENT")):
            raise NotFound(path)
        if os.path.exists(path) and not os.path.isdir(path):
            raise StorageError(
                f"data directory {path} is not a directory: pass a directory", path=path
            )
        if create:
            try:  # LevelDB ignores a failed mkdir and then reports a missing LOCK file
                os.makedirs(path, exist_ok=True)
            except OSError as exc:
                detail = f"cannot create {path}: {exc.strerror}"
                if exc.errno in (
                    errno.EROFS,
                    errno.EACCES,
                    errno.EPERM,
                    errno.ENOSPC,
                    errno.EDQUOT,
                ):
                    raise NotWritable(path, detail) from None
                raise StorageError(f"data directory {detail}: check the path", path=path) from None
        try:
            db = plyvel.DB(path, create_if_missing=create, paranoid_checks=True, compression=compression)
        except plyvel.Error as exc:
            raise _storage_error(path, exc) from None
        try:
            _check_or_write_meta(db, path, node_id, cluster_id, create)
            batch = db.write_batch(sync=True)
            batch.put(K_PROBE, b"")
            batch.delete(K_PROBE)
            batch.write()
            _remove_staging_files(path)  # the lock is ours: no one else stages here
            return cls(db, path, node_id, cluster_id)
        except plyvel.Error as exc:
            db.close()
            raise _storage_error(path, exc) from None
        except BaseException:
            db.close()
            raise

    # ---- the protocol ------------------------------------------------------------

    def load(self) -> LoadedState:
        with self._lock:
            return self._load()

    def persist(
        self,
        promised: Ballot | None,
        accepted: Sequence[Entry],
        chosen: Sequence[tuple[int, Value]],
        sync: bool,
    ) -> None:
        with self._lock:
            self._persist(promised, accepted, chosen, sync)

    def apply(self, changes: Changes, drop_accepted_through: int) -> None:
        with self._lock:
            self._apply(changes, drop_accepted_through)

    def _load(self) -> LoadedState:
        db = self._live()
        try:
            with db.snapshot() as snap:
                promised = ZERO_BALLOT
                raw = snap.get(K_ACCEPTOR)
                if raw is not None:
                    state = self._parse(storage_pb2.AcceptorState, K_ACCEPTOR, raw)
                    promised = self._ballot(state.promised, K_ACCEPTOR)
                accepted, chosen, marked, log_start = self._read_log(snap)
                cut = len(P_REV)
                history = {key[cut:]: value for key, value in snap.iterator(prefix=P_REV)}
                bad = next((k for k in history if len(k) != ROW_KEY_BYTES), None)
                if bad is not None:
                    raise Corrupt(self.path, f"history row key {P_REV + bad!r} is not 16 bytes")
                sessions: dict[str, Session] = {}
                for key, raw in snap.iterator(prefix=P_SESSION):
                    try:
                        client_id = key[len(P_SESSION) :].decode("utf-8")
                    except UnicodeDecodeError:
                        raise Corrupt(self.path, f"session key {key!r} is not UTF-8") from None
                    pb = self._parse(storage_pb2.Session, key, raw)
                    sessions[client_id] = Session.from_proto(pb)
                raw = snap.get(K_APPLIED)
                applied = storage_pb2.AppliedState() if raw is None else self._parse(storage_pb2.AppliedState, K_APPLIED, raw)
                leases = _read_leases(self.path, snap)
        except plyvel.Error as exc:
            raise _storage_error(self.path, exc) from None
        applied_index = applied.applied_index
        revision, compact_revision, alarms = _mvcc_of(applied)
        self._values = {slot: e.value for slot, e in accepted.items()}
        self._marked = marked
        loaded = LoadedState(
            promised=promised,
            # The entry of a chosen, applied slot is no acceptance still in
            # play (a marked one is the chosen value's copy).
            accepted={
                slot: e for slot, e in accepted.items() if not (slot <= applied_index and slot in chosen)
            },
            chosen=chosen,
            log_start=log_start,
            applied_index=applied_index,
            history=history,
            sessions=sessions,
            revision=revision,
            compact_revision=compact_revision,
            alarms=alarms,
            leases=leases,
        )
        return check_loaded(self.path, loaded)

    def _read_log(self, snap: Any) -> tuple[dict[int, Entry], dict[int, Value], set[int], int]:  # noqa: ANN401 - a plyvel DB or snapshot
        """The accepted entries, the chosen values from ``log_start`` on, the
        slots whose chosen record is a marker, and ``log_start``."""
        accepted: dict[int, Entry] = {}
        for key, raw in snap.iterator(prefix=P_ACCEPTED):
            slot = self._slot_of(key, P_ACCEPTED)
            pb = self._parse(peer_pb2.Entry, key, raw)
            if pb.slot != slot:
                raise Corrupt(self.path, f"record {key!r} holds slot {pb.slot}")
            accepted[slot] = Entry(slot, self._ballot(pb.ballot, key), tuple(pb.value.commands))
        raw = snap.get(K_LOG_START)
        log_start = 1 if raw is None else self._parse(storage_pb2.AppliedState, K_LOG_START, raw).applied_index
        chosen: dict[int, Value] = {}
        marked: set[int] = set()
        for key, raw in snap.iterator(start=slot_key(P_CHOSEN, log_start), stop=_prefix_end(P_CHOSEN)):
            slot = self._slot_of(key, P_CHOSEN)
            if raw == CHOSEN_MARKER:
                entry = accepted.get(slot)
                if entry is None:
                    raise Corrupt(self.path, f"record {key!r} is a chosen marker but slot {slot} has no accepted entry")
                chosen[slot] = entry.value
                marked.add(slot)
            else:
                chosen[slot] = tuple(self._parse(peer_pb2.Value, key, raw).commands)
        return accepted, chosen, marked, log_start

    def _index(self) -> tuple[dict[int, Value], set[int]]:
        """The accepted values and marked slots, read from the store on first use."""
        if self._values is None or self._marked is None:
            try:
                accepted, _, marked, _ = self._read_log(self._live())
            except plyvel.Error as exc:
                raise _storage_error(self.path, exc) from None
            self._values = {slot: e.value for slot, e in accepted.items()}
            self._marked = marked
        return self._values, self._marked

    def _persist(
        self,
        promised: Ballot | None,
        accepted: Sequence[Entry],
        chosen: Sequence[tuple[int, Value]],
        sync: bool,
    ) -> None:
        db = self._live()
        batch = db.write_batch(sync=sync)
        if promised is not None:
            state = storage_pb2.AcceptorState(
                promised=peer_pb2.Ballot(round=promised.round, node=promised.node)
            )
            batch.put(K_ACCEPTOR, state.SerializeToString())
        values, marked = self._index()
        scan_from = self._accepted_scan_from
        written: dict[int, Value] = {}
        unmarked: list[int] = []
        for entry in accepted:
            slot = entry.slot
            assert 1 <= slot <= SLOT_MAX, entry
            if slot in marked and values[slot] != entry.value:
                # This record is the chosen value's only copy (Paxos accepts
                # no other value there; the storage protocol allows it): the
                # chosen record gets the value itself first.
                _put_chosen(batch, slot, values[slot])
                unmarked.append(slot)
            pb = peer_pb2.Entry(
                slot=slot,
                ballot=peer_pb2.Ballot(round=entry.ballot.round, node=entry.ballot.node),
                value=peer_pb2.Value(commands=entry.value),
            )
            batch.put(slot_key(P_ACCEPTED, slot), pb.SerializeToString())
            written[slot] = entry.value
            scan_from = min(scan_from, slot)
        new_marks: list[int] = []
        for slot, value in chosen:
            assert 1 <= slot <= SLOT_MAX, slot
            if slot < self._log_start:
                continue  # applied and compacted already
            held = written.get(slot)
            if held is None:
                held = values.get(slot)
            if held is not None and (held is value or held == value):
                batch.put(slot_key(P_CHOSEN, slot), CHOSEN_MARKER)
                new_marks.append(slot)
            else:
                _put_chosen(batch, slot, value)
                unmarked.append(slot)
        self._write(batch)
        values.update(written)
        marked.difference_update(unmarked)
        marked.update(new_marks)
        self._accepted_scan_from = scan_from

    def _apply(self, changes: Changes, drop_accepted_through: int) -> None:
        db = self._live()
        assert changes.applied_index >= self._applied_index, (
            changes.applied_index,
            self._applied_index,
        )
        batch = db.write_batch(sync=False)
        for key, row in changes.history.items():
            if row is None:
                batch.delete(P_REV + key)
            else:
                batch.put(P_REV + key, row)
        encoded: dict[int, bytes] = {}  # results shared by the sessions of a batch
        for client_id, session in changes.sessions.items():
            key = P_SESSION + client_id.encode("utf-8")
            if session is None:
                batch.delete(key)
            else:
                batch.put(key, session.encode(encoded))
        for lease_id, lease in changes.leases.items():
            if lease is None:
                batch.delete(P_LEASE + lease_row_key(lease_id))
            else:
                batch.put(P_LEASE + lease_row_key(lease_id), lease)
        batch.put(
            K_APPLIED,
            _applied_record(changes.applied_index, changes.revision, changes.compact_revision, changes.alarms),
        )
        through = min(drop_accepted_through, SLOT_MAX)
        dropped: list[int] = []
        unmarked: list[int] = []
        values, marked = self._index()
        drops = through >= self._accepted_scan_from
        if drops:
            first = self._accepted_scan_from
            if through - first < DROP_PROBE_SLOTS_MAX:
                # The usual apply drops the few slots of one drain: ``values``
                # holds every accepted record present, so probing it finds
                # them without a LevelDB iterator per apply.
                present = [slot for slot in range(first, through + 1) if slot in values]
            else:
                stop = slot_key(P_ACCEPTED, through + 1) if through < SLOT_MAX else b"accepted0"
                try:
                    present = [
                        self._slot_of(key, P_ACCEPTED)
                        for key in db.iterator(start=slot_key(P_ACCEPTED, first), stop=stop, include_value=False)
                    ]
                except plyvel.Error as exc:
                    raise _storage_error(self.path, exc) from None
            for slot in present:
                if slot in marked:
                    if slot <= changes.applied_index:
                        continue  # the chosen value's copy: kept until compaction
                    # Not applied yet (only a caller that drops ahead does
                    # this): the chosen record gets the value itself.
                    _put_chosen(batch, slot, values[slot])
                    unmarked.append(slot)
                batch.delete(slot_key(P_ACCEPTED, slot))
                dropped.append(slot)
        self._write(batch)
        self._applied_index = changes.applied_index
        self._rev_reclaim_through = max(self._rev_reclaim_through, changes.compact_revision)
        if drops:
            self._accepted_scan_from = through + 1
            for slot in dropped:
                values.pop(slot, None)
            marked.difference_update(unmarked)

    def history_row(self, row: bytes) -> bytes | None:
        """A history row (no lock: LevelDB reads are thread-safe, and a read
        must not wait for an fsync in the worker thread)."""
        with self._using() as db:
            try:
                return db.get(P_REV + row)
            except plyvel.Error as exc:
                raise _storage_error(self.path, exc) from None

    def history_rows(self, start: bytes, stop: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        with self._using() as db:
            try:
                it = db.iterator(start=P_REV + start, stop=P_REV + stop if stop is not None else _prefix_end(P_REV))
                rows = [(k[len(P_REV) :], v) for k, v in it]
            except plyvel.Error as exc:
                raise _storage_error(self.path, exc) from None
        return iter(rows)

    def defragment(self) -> None:
        """Rewrite the whole database without its deleted records (long: a
        worker thread; the node's writes go on meanwhile)."""
        with self._using() as db:
            try:
                db.compact_range()
            except plyvel.Error as exc:
                raise _storage_error(self.path, exc) from None

    def compact(self, through_slot: int) -> None:
        with self._lock:
            self._compact(through_slot)

    def _compact(self, through_slot: int) -> None:
        db = self._live()
        assert 0 <= through_slot <= self._applied_index, (through_slot, self._applied_index)
        assert through_slot < SLOT_MAX, through_slot
        if through_slot < self._log_start:
            return
        batch = db.write_batch(sync=False)
        self._delete_log_through(db, batch, through_slot)
        self._write(batch)
        self._log_start = through_slot + 1
        self._accepted_scan_from = max(self._accepted_scan_from, through_slot + 1)
        self._forget_through(through_slot)

    def _forget_through(self, through: int) -> None:
        """The accepted and chosen records of slots <= ``through`` are deleted."""
        if self._values is not None:
            for slot in [s for s in self._values if s <= through]:
                del self._values[slot]
        if self._marked is not None:
            self._marked.difference_update([s for s in self._marked if s <= through])

    def _delete_log_through(self, db: plyvel.DB, batch: plyvel.WriteBatch, through: int) -> None:
        """Add to ``batch``: delete chosen and accepted entries <= ``through``,
        and set log_start to ``through + 1``."""
        try:
            if through >= self._log_start:
                for key in db.iterator(
                    start=slot_key(P_CHOSEN, self._log_start),
                    stop=slot_key(P_CHOSEN, through + 1),
                    include_value=False,
                ):
                    batch.delete(key)
            # From log_start: the marked records of applied slots lie below
            # _accepted_scan_from.
            first = min(self._log_start, self._accepted_scan_from)
            if through >= first:
                for key in db.iterator(
                    start=slot_key(P_ACCEPTED, first),
                    stop=slot_key(P_ACCEPTED, through + 1),
                    include_value=False,
                ):
                    batch.delete(key)
        except plyvel.Error as exc:
            raise _storage_error(self.path, exc) from None
        batch.put(
            K_LOG_START,
            storage_pb2.AppliedState(applied_index=through + 1).SerializeToString(),
        )

    def reclaim(self) -> None:
        with self._lock:  # an instant: what was deleted
            ranges = [
                (P_CHOSEN, slot_key(P_CHOSEN, self._log_start)),
                (P_ACCEPTED, slot_key(P_ACCEPTED, self._log_start)),
            ]
            reclaim_state, self._reclaim_state = self._reclaim_state, False
            rev_through = self._rev_reclaim_through
            if rev_through > self._rev_reclaimed:  # the rows an MVCC compaction deleted
                ranges.append((P_REV, P_REV + row_key(rev_through + 1, 0)))
                self._rev_reclaimed = rev_through
        if reclaim_state:
            ranges += [(P_KV, _prefix_end(P_KV)), (P_REV, _prefix_end(P_REV)), (P_SESSION, _prefix_end(P_SESSION)), (P_LEASE, _prefix_end(P_LEASE))]
        with self._using() as db:  # the long part, without the lock
            try:
                for start, stop in ranges:
                    db.compact_range(start=start, stop=stop)
            except plyvel.Error as exc:
                with self._lock:
                    self._reclaim_state = self._reclaim_state or reclaim_state
                raise _storage_error(self.path, exc) from None

    def open_snapshot(self) -> _LevelDBSource:
        with self._lock:
            db = self._live()
            snap = db.snapshot()
            try:
                raw = snap.get(K_APPLIED)
                applied = storage_pb2.AppliedState() if raw is None else self._parse(storage_pb2.AppliedState, K_APPLIED, raw)
            except BaseException:
                snap.close()
                raise
            source = _LevelDBSource(self, snap, applied)
            with self._cond:
                self._sources.add(source)
            return source

    def begin_install(self, *, foreign_cluster_ok: bool = False) -> _LevelDBInstaller:
        with self._lock:
            self._live()
            return _LevelDBInstaller(self, foreign_cluster_ok, self._applied_index)

    def _install(self, staged: str, cluster_id: str | None, legacy_ok: bool) -> int:
        """Switch to the verified snapshot in the file ``staged``: one synced batch."""
        with self._lock:
            db = self._live()
            reader = SnapshotReader(cluster_id, min_applied_index=self._applied_index, legacy_ok=legacy_ok)
            batch = db.write_batch(sync=True)
            try:
                with contextlib.ExitStack() as stack:
                    old_rows = stack.enter_context(db.iterator(prefix=P_REV))
                    old_sessions = stack.enter_context(db.iterator(prefix=P_SESSION))
                    row_merge = _Merge(batch, P_REV, old_rows)
                    session_merge = _Merge(batch, P_SESSION, old_sessions)
                    for rows, sessions in read_file(staged, reader):
                        for key, row in rows:
                            row_merge.put(key, row)
                        for client_id, session in sessions:
                            session_merge.put(
                                client_id.encode("utf-8"),
                                session.to_proto().SerializeToString(),
                            )
                    row_merge.end()
                    session_merge.end()
                info = reader.info
                assert info is not None
                with db.iterator(prefix=P_LEASE) as old_leases:
                    lease_merge = _Merge(batch, P_LEASE, old_leases)
                    for lease_id, lease in info.leases:
                        lease_merge.put(lease_row_key(lease_id), lease.to_proto(lease_id).SerializeToString())
                    lease_merge.end()
                index = info.applied_index
                batch.put(
                    K_APPLIED, _applied_record(index, info.revision, info.compact_revision, info.alarms)
                )
                self._delete_log_through(db, batch, index)
            except plyvel.Error as exc:
                raise _storage_error(self.path, exc) from None
            self._write(batch)
            self._applied_index = index
            self._log_start = index + 1
            self._accepted_scan_from = max(self._accepted_scan_from, index + 1)
            self._forget_through(index)
            self._reclaim_state = True
            return index

    def close(self) -> None:
        with self._cond:
            self._closing = True
            while self._active:
                self._cond.wait()
            sources = list(self._sources)
        for source in sources:
            source.close()
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    @contextlib.contextmanager
    def _using(self) -> Iterator[plyvel.DB]:
        """The open database, for a call made without the lock; ``close``
        waits until it ends."""
        with self._cond:
            if self._closing or self._db is None:
                raise StorageError(
                    f"data directory {self.path} was closed: retry against the running node",
                    path=self.path,
                )
            self._active += 1
            db = self._db
        try:
            yield db
        finally:
            with self._cond:
                self._active -= 1
                self._cond.notify_all()

    def __enter__(self) -> LevelDBStorage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- helpers -----------------------------------------------------------------

    def _live(self) -> plyvel.DB:
        assert self._db is not None, "storage is closed"
        return self._db

    def _write(self, batch: plyvel.WriteBatch) -> None:
        if self._failed is not None:
            raise NotWritable(self.path, f"an earlier write failed: {self._failed}")
        try:
            batch.write()
        except plyvel.Error as exc:
            self._failed = _message(exc)
            error = _storage_error(self.path, exc)
            if type(error) is StorageError:  # a write that fails is a disk that cannot write
                error = NotWritable(self.path, self._failed)
            raise error from None

    def _read_applied_index(self) -> int:
        raw = self._live().get(K_APPLIED)
        if raw is None:
            return 0
        return self._parse(storage_pb2.AppliedState, K_APPLIED, raw).applied_index

    def _read_log_start(self) -> int:
        raw = self._live().get(K_LOG_START)
        if raw is None:
            return 1
        return self._parse(storage_pb2.AppliedState, K_LOG_START, raw).applied_index

    def _parse(self, cls: type, key: bytes, raw: bytes):  # type: ignore[no-untyped-def]
        return _parse(self.path, cls, key, raw)

    def _slot_of(self, key: bytes, prefix: bytes) -> int:
        suffix = key[len(prefix) :]
        if len(suffix) != _SLOT.size:
            raise Corrupt(self.path, f"record key {key!r} has no 8-byte slot")
        return int(_SLOT.unpack(suffix)[0])

    def _ballot(self, pb: peer_pb2.Ballot, key: bytes) -> Ballot:
        try:
            return Ballot(pb.round, pb.node)
        except ValueError as exc:
            raise Corrupt(self.path, f"record {key!r}: {exc}") from None


def _put_chosen(batch: plyvel.WriteBatch, slot: int, value: Value) -> None:
    """Add to ``batch``: the chosen value of ``slot`` in full (not a marker)."""
    batch.put(slot_key(P_CHOSEN, slot), peer_pb2.Value(commands=value).SerializeToString())


def _parse(path: str, cls: type, key: bytes, raw: bytes):  # type: ignore[no-untyped-def]
    msg = cls()
    try:
        msg.ParseFromString(raw)
    except (DecodeError, ValueError) as exc:
        raise Corrupt(path, f"record {key!r} is not a {cls.__name__}: {exc}") from None
    return msg


def _check_or_write_meta(
    db: plyvel.DB, path: str, node_id: int, cluster_id: str, create: bool
) -> None:
    """Refuse a store of another identity; record ours in a fresh one."""
    raw = db.get(K_META)
    if raw is not None:
        meta = _parse(path, storage_pb2.NodeMeta, K_META, raw)
        if meta.format_version not in READABLE_FORMAT_VERSIONS:
            raise WrongFormat(path, meta.format_version)
        if meta.node_id != node_id:
            raise WrongNode(path, meta.node_id, node_id)
        if meta.cluster_id != cluster_id:
            raise WrongCluster(path, meta.cluster_id, cluster_id)
        if meta.format_version != FORMAT_VERSION:
            # Versions 1 and 2 have no chosen markers (1) and no packed
            # batches (1, 2): readable as is; 1-3 hold kv/ values, which
            # become history rows. Marked as the current version in the same
            # batch, before anything else is written, so an older paxoskv
            # refuses this store once it may hold them.
            _migrate_to_mvcc(db, path, meta)
        return
    with db.iterator(include_value=False) as it:
        first = next(it, None)
    if first is not None:
        raise Corrupt(path, f"records (first {first!r}) but no meta record")
    if not create:
        raise NotFound(path)
    meta = storage_pb2.NodeMeta(
        format_version=FORMAT_VERSION, node_id=node_id, cluster_id=cluster_id
    )
    db.put(K_META, meta.SerializeToString(), sync=True)


def _mvcc_of(applied: storage_pb2.AppliedState) -> tuple[int, int, tuple[tuple[int, int], ...]]:
    """The revision, compaction revision and alarms of an applied record (a
    record of a fresh store has none: revision 1, no compaction)."""
    if applied.revision < 1:
        return 1, -1, ()
    return applied.revision, applied.compact_revision, tuple((a.member_id, a.alarm) for a in applied.alarms)


def _applied_record(index: int, revision: int, compact_revision: int, alarms: Sequence[tuple[int, int]]) -> bytes:
    return storage_pb2.AppliedState(
        applied_index=index,
        revision=revision,
        compact_revision=compact_revision,
        alarms=[storage_pb2.StoredAlarm(member_id=m, alarm=a) for m, a in alarms],
    ).SerializeToString()


def _migrate_to_mvcc(db: plyvel.DB, path: str, meta: storage_pb2.NodeMeta) -> None:
    """Format 1-3 -> 4 in one synced batch (see the module docstring)."""
    batch = db.write_batch(sync=True)
    raw = db.get(K_APPLIED)
    applied = storage_pb2.AppliedState() if raw is None else _parse(path, storage_pb2.AppliedState, K_APPLIED, raw)
    cut = len(P_KV)
    with db.iterator(prefix=P_KV) as it:
        items = [(key[cut:], value) for key, value in it]
    for key, _ in items:
        batch.delete(P_KV + key)
    for row_key, row in legacy_rows(items):
        batch.put(P_REV + row_key, row)
    batch.put(K_APPLIED, _applied_record(applied.applied_index, 2 if items else 1, -1, ()))
    meta.format_version = FORMAT_VERSION
    batch.put(K_META, meta.SerializeToString())
    batch.write()


def _read_leases(path: str, snap: Any) -> dict[int, Lease]:  # noqa: ANN401 - a plyvel DB or snapshot
    leases: dict[int, Lease] = {}
    for key, raw in snap.iterator(prefix=P_LEASE):
        pb = _parse(path, storage_pb2.StoredLease, key, raw)
        bad = check_stored(pb)
        if bad is not None or key != P_LEASE + lease_row_key(pb.ID):
            raise Corrupt(path, f"lease record {key!r}: {bad or 'its key is not its id'}")
        leases[pb.ID] = Lease.from_proto(pb)
    return leases


def _prefix_end(prefix: bytes) -> bytes:
    """The first key after every key that starts with ``prefix`` (which ends in '/')."""
    assert prefix.endswith(b"/"), prefix
    return prefix[:-1] + b"0"  # '0' follows '/'


def _remove_staging_files(path: str) -> None:
    for name in os.listdir(path):
        if name.startswith(STAGING_PREFIX) and name.endswith(STAGING_SUFFIX):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(path, name))


def data_dir_bytes(path: str | os.PathLike[str]) -> int:
    """The bytes of every file under ``path`` (a data directory's size on disk)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(FileNotFoundError):  # LevelDB deletes files as it goes
                total += os.lstat(os.path.join(root, name)).st_size
    return total


class _Merge:
    """Merges the snapshot's records of one prefix (given in key order) with
    the stored ones (an iterator in key order) into a write batch."""

    def __init__(
        self, batch: plyvel.WriteBatch, prefix: bytes, old: Iterator[tuple[bytes, bytes]]
    ) -> None:
        self._batch = batch
        self._prefix = prefix
        self._old = old
        self._cur: tuple[bytes, bytes] | None = next(old, None)

    def put(self, key: bytes, value: bytes) -> None:
        full = self._prefix + key
        batch, old, cur = self._batch, self._old, self._cur
        while cur is not None and cur[0] < full:
            batch.delete(cur[0])
            cur = next(old, None)
        if cur is not None and cur[0] == full:
            if cur[1] != value:
                batch.put(full, value)
            cur = next(old, None)
        else:
            batch.put(full, value)
        self._cur = cur

    def end(self) -> None:
        batch, old, cur = self._batch, self._old, self._cur
        while cur is not None:
            batch.delete(cur[0])
            cur = next(old, None)
        self._cur = None


class _LevelDBSource(SourceBase):
    def __init__(self, storage: LevelDBStorage, snap: plyvel.Snapshot, applied: storage_pb2.AppliedState) -> None:
        super().__init__(storage.cluster_id, applied.applied_index, *_mvcc_of(applied))
        self._storage = storage
        self._snap = snap

    def _batches(
        self, prefix: bytes, include_value: bool, start: bytes = b"", stop: bytes | None = None
    ) -> Iterator[list[Any]]:
        """The snapshot's records under ``prefix`` (from ``prefix + start``
        to ``prefix + stop``), in batches read under the storage's use count
        (never under its lock)."""
        storage = self._storage
        it = None
        try:
            while True:
                with storage._using():
                    assert not self._closed, "snapshot source is closed"
                    try:
                        if it is None:
                            it = self._snap.iterator(
                                start=prefix + start,
                                stop=prefix + stop if stop is not None else _prefix_end(prefix),
                                include_value=include_value,
                            )
                        batch = list(itertools.islice(it, SOURCE_BATCH_RECORDS))
                    except plyvel.Error as exc:
                        raise _storage_error(storage.path, exc) from None
                if not batch:
                    return
                yield batch
        finally:
            if it is not None:
                with contextlib.suppress(StorageError), storage._using():
                    it.close()

    def _counts(self) -> tuple[int, int]:
        rows = sum(len(b) for b in self._batches(P_REV, include_value=False))
        sessions = sum(len(b) for b in self._batches(P_SESSION, include_value=False))
        return rows, sessions

    def _rows(self, start: bytes, stop: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        cut = len(P_REV)
        for batch in self._batches(P_REV, True, start, stop):
            for key, row in batch:
                yield key[cut:], row

    def _session_items(self) -> Iterator[tuple[str, Session]]:
        path = self._storage.path
        cut = len(P_SESSION)
        for batch in self._batches(P_SESSION, include_value=True):
            for key, raw in batch:
                try:
                    client_id = key[cut:].decode("utf-8")
                except UnicodeDecodeError:
                    raise Corrupt(path, f"session key {key!r} is not UTF-8") from None
                yield client_id, Session.from_proto(_parse(path, storage_pb2.Session, key, raw))

    def _lease_items(self) -> list[tuple[int, Lease]]:
        with self._storage._using():
            try:
                return sorted(_read_leases(self._storage.path, self._snap).items())
            except plyvel.Error as exc:
                raise _storage_error(self._storage.path, exc) from None

    def _release(self) -> None:
        storage = self._storage
        with storage._cond:
            storage._sources.discard(self)
        with contextlib.suppress(StorageError), storage._using():
            self._snap.close()


class _LevelDBInstaller(InstallerBase):
    def __init__(self, storage: LevelDBStorage, foreign_cluster_ok: bool, applied: int) -> None:
        self._cluster_id = None if foreign_cluster_ok else storage.cluster_id
        self._legacy_ok = foreign_cluster_ok
        # Only the header is checked as the bytes come (a wrong cluster or an
        # old snapshot is refused at once); finish() verifies everything in
        # the one pass that builds the switch batch.
        super().__init__(
            SnapshotReader(
                self._cluster_id, min_applied_index=applied, keep_items=False, legacy_ok=foreign_cluster_ok
            ),
            check_on_write=False,
        )
        self._storage = storage
        try:
            fd, self._staged = tempfile.mkstemp(
                prefix=STAGING_PREFIX, suffix=STAGING_SUFFIX, dir=storage.path
            )
        except OSError as exc:
            raise NotWritable(storage.path, f"cannot stage a snapshot: {exc.strerror}") from None
        self._file: BinaryIO | None = os.fdopen(fd, "wb")

    def _stage(self, chunk: bytes, items: Items) -> None:
        file = self._file
        assert file is not None
        try:
            file.write(chunk)
        except OSError as exc:
            raise NotWritable(
                self._storage.path, f"cannot stage a snapshot: {exc.strerror}"
            ) from None

    def _commit(self) -> int:
        file = self._file
        assert file is not None
        self._file = None
        try:
            file.close()
        except OSError as exc:
            raise NotWritable(
                self._storage.path, f"cannot stage a snapshot: {exc.strerror}"
            ) from None
        return self._storage._install(self._staged, self._cluster_id, self._legacy_ok)

    def _discard(self) -> None:
        file = self._file
        self._file = None
        if file is not None:
            with contextlib.suppress(OSError):
                file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._staged)
