"""LevelDB storage (plyvel): one database per node, every write one batch.

Rules: those of :mod:`paxoskv.storage.base`. LevelDB gives them for free
where it can: a write batch is atomic, and a batch written with ``sync=True``
fsyncs the write-ahead log, which makes it and every earlier batch durable.

Key layout (prefixes keep kinds apart; slots are 8-byte big-endian so a
range of slots is a range of keys)::

    meta                      storage_pb2.NodeMeta      identity, written once
    acceptor                  storage_pb2.AcceptorState the promised ballot
    accepted/<slot u64be>     peer_pb2.Entry            accepted, maybe not chosen
    chosen/<slot u64be>       peer_pb2.Value            chosen value
    kv/<key>                  the value's bytes         the state machine's map
    session/<client_id utf8>  storage_pb2.Session       exactly-once sessions
    applied                   storage_pb2.AppliedState  the applied index
    probe                     (transient)               open-time write probe

Every record is a protobuf message except a key's value in ``kv/``, which is
stored as is (the user's opaque bytes; a wrapper would copy up to a MiB per
put for nothing).

Opening: plyvel's "lock ... already held" IOError becomes ``Locked``; an
IOError for a read-only file system, missing permission or full disk becomes
``NotWritable``; a corruption becomes ``Corrupt``. The identity is checked
before anything is written, so a refused open changes no record. Then a probe
key is written and deleted in one synced batch: a store that cannot really
write is refused at open, not at the first client's put.

A write that fails later raises ``NotWritable`` (or ``Corrupt``), and every
later write through this handle raises ``NotWritable`` too: the failed write
may have left a torn record at the end of LevelDB's log, and a record
appended after it could be skipped by recovery. The node must stop; on
reopen, recovery drops the torn tail, so the failed batch is absent, whole.

A handle may be used from several threads (the node fsyncs in a worker
thread); its calls are serialised by a lock.

The database runs with ``paranoid_checks``: a damaged record stops it with
``Corrupt`` instead of being skipped in silence (a torn tail of the log, from
a crash during a write, is still dropped quietly: that batch never returned).

Dropping accepted entries scans ``accepted/`` from the lowest slot that may
still be present (tracked in memory) up to ``drop_accepted_through``, so it
does not walk the tombstones of earlier drops again.
"""

from __future__ import annotations

import errno
import os
import re
import struct
import threading
from collections.abc import Sequence

import plyvel
from google.protobuf.message import DecodeError

from paxoskv.kv.state_machine import Changes, Session
from paxoskv.paxos.types import ZERO_BALLOT, Ballot, Entry, Value
from paxoskv.storage.base import (
    FORMAT_VERSION,
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
)
from paxoskv.v1 import peer_pb2, storage_pb2

__all__ = ["LevelDBStorage"]

K_META = b"meta"
K_ACCEPTOR = b"acceptor"
K_APPLIED = b"applied"
K_PROBE = b"probe"
P_ACCEPTED = b"accepted/"
P_CHOSEN = b"chosen/"
P_KV = b"kv/"
P_SESSION = b"session/"
SLOT_MAX = (1 << 64) - 1

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


class LevelDBStorage:
    """The storage protocol on one plyvel database. Use :meth:`open`."""

    def __init__(self, db: plyvel.DB, path: str, node_id: int, cluster_id: str) -> None:
        self._db: plyvel.DB | None = db
        self._lock = threading.Lock()
        self.path = path
        self.node_id = node_id
        self.cluster_id = cluster_id
        self._applied_index = self._read_applied_index()
        self._accepted_scan_from = 0  # every accepted slot present is >= this
        self._failed: str | None = None  # why a write failed; no write after that

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], node_id: int, cluster_id: str, create: bool = True
    ) -> LevelDBStorage:
        """Open (and with ``create``, initialise) the node's data directory."""
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
            db = plyvel.DB(path, create_if_missing=create, paranoid_checks=True)
        except plyvel.Error as exc:
            raise _storage_error(path, exc) from None
        try:
            _check_or_write_meta(db, path, node_id, cluster_id, create)
            batch = db.write_batch(sync=True)
            batch.put(K_PROBE, b"")
            batch.delete(K_PROBE)
            batch.write()
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
                accepted: dict[int, Entry] = {}
                for key, raw in snap.iterator(prefix=P_ACCEPTED):
                    slot = self._slot_of(key, P_ACCEPTED)
                    pb = self._parse(peer_pb2.Entry, key, raw)
                    if pb.slot != slot:
                        raise Corrupt(self.path, f"record {key!r} holds slot {pb.slot}")
                    accepted[slot] = Entry(
                        slot, self._ballot(pb.ballot, key), tuple(pb.value.commands)
                    )
                chosen: dict[int, Value] = {}
                for key, raw in snap.iterator(prefix=P_CHOSEN):
                    chosen[self._slot_of(key, P_CHOSEN)] = tuple(
                        self._parse(peer_pb2.Value, key, raw).commands
                    )
                kv = {key[len(P_KV) :]: value for key, value in snap.iterator(prefix=P_KV)}
                sessions: dict[str, Session] = {}
                for key, raw in snap.iterator(prefix=P_SESSION):
                    try:
                        client_id = key[len(P_SESSION) :].decode("utf-8")
                    except UnicodeDecodeError:
                        raise Corrupt(self.path, f"session key {key!r} is not UTF-8") from None
                    pb = self._parse(storage_pb2.Session, key, raw)
                    sessions[client_id] = Session.from_proto(pb)
                raw = snap.get(K_APPLIED)
                applied_index = (
                    0
                    if raw is None
                    else self._parse(storage_pb2.AppliedState, K_APPLIED, raw).applied_index
                )
        except plyvel.Error as exc:
            raise _storage_error(self.path, exc) from None
        return LoadedState(
            promised=promised,
            accepted=accepted,
            chosen=chosen,
            log_start=1,
            applied_index=applied_index,
            kv=kv,
            sessions=sessions,
        )

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
        scan_from = self._accepted_scan_from
        for entry in accepted:
            assert 1 <= entry.slot <= SLOT_MAX, entry
            pb = peer_pb2.Entry(
                slot=entry.slot,
                ballot=peer_pb2.Ballot(round=entry.ballot.round, node=entry.ballot.node),
                value=peer_pb2.Value(commands=entry.value),
            )
            batch.put(slot_key(P_ACCEPTED, entry.slot), pb.SerializeToString())
            scan_from = min(scan_from, entry.slot)
        for slot, value in chosen:
            assert 1 <= slot <= SLOT_MAX, slot
            batch.put(slot_key(P_CHOSEN, slot), peer_pb2.Value(commands=value).SerializeToString())
        self._write(batch)
        self._accepted_scan_from = scan_from

    def _apply(self, changes: Changes, drop_accepted_through: int) -> None:
        db = self._live()
        assert changes.applied_index >= self._applied_index, (
            changes.applied_index,
            self._applied_index,
        )
        batch = db.write_batch(sync=False)
        if changes.reset:  # a snapshot replaces the whole applied state
            try:
                for prefix in (P_KV, P_SESSION):
                    for key in db.iterator(prefix=prefix, include_value=False):
                        batch.delete(key)
            except plyvel.Error as exc:
                raise _storage_error(self.path, exc) from None
        for key, value in changes.kv.items():
            if value is None:
                batch.delete(P_KV + key)
            else:
                batch.put(P_KV + key, value)
        for client_id, session in changes.sessions.items():
            key = P_SESSION + client_id.encode("utf-8")
            if session is None:
                batch.delete(key)
            else:
                batch.put(key, session.to_proto().SerializeToString())
        batch.put(
            K_APPLIED,
            storage_pb2.AppliedState(applied_index=changes.applied_index).SerializeToString(),
        )
        through = min(drop_accepted_through, SLOT_MAX)
        if through >= self._accepted_scan_from:
            stop = slot_key(P_ACCEPTED, through + 1) if through < SLOT_MAX else b"accepted0"
            start = slot_key(P_ACCEPTED, self._accepted_scan_from)
            try:
                for key in db.iterator(start=start, stop=stop, include_value=False):
                    batch.delete(key)
            except plyvel.Error as exc:
                raise _storage_error(self.path, exc) from None
        self._write(batch)
        self._applied_index = changes.applied_index
        if through >= self._accepted_scan_from:
            self._accepted_scan_from = through + 1

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

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
        if meta.format_version != FORMAT_VERSION:
            raise WrongFormat(path, meta.format_version)
        if meta.node_id != node_id:
            raise WrongNode(path, meta.node_id, node_id)
        if meta.cluster_id != cluster_id:
            raise WrongCluster(path, meta.cluster_id, cluster_id)
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
