"""In-memory storage with a LevelDB-like crash model, for tests and the simulator.

Rules (the same protocol and errors as :mod:`paxoskv.storage.leveldb`):

- A ``MemoryDisk`` is what survives a process: the node identity, the durable
  image and the batches written since the last sync. A ``MemoryStorage`` is
  one process's open handle on a disk; a second handle on a disk that is
  still open fails with ``Locked``.
- Every ``persist``/``apply`` (and the identity record and the open-time
  probe) is one batch appended to the disk's log. The handle sees every batch
  at once. A batch written with ``sync=True`` makes itself and every earlier
  batch durable, as one fsync of LevelDB's log does.
- ``crash(rng)`` models a power loss of the machine: of the batches not yet
  durable, a random-length prefix survives (a torn tail; each batch is
  all-or-nothing) and the rest is lost. The handle then shows exactly the
  surviving image and stays open, standing for the restarted process.
- ``fault_full_disk = True`` makes every write raise ``NotWritable`` without
  changing anything, as a full disk would; ``False`` heals it.
- Compaction is one unsynced batch; ``reclaim()`` has nothing to give back.
  A snapshot source is a copy of the applied state (taken in O(rows), no
  sort: the items are sorted when the chunks are made). An installer stages
  the verified items in its own memory (the process's, which a crash
  loses, as LevelDB's staging file is dropped at the next open) and
  ``finish()`` writes ONE synced batch: reset, every row and session, the
  applied state and a compaction through it. So the crash model covers the
  install: before that batch, the old state; after it, the new one. A
  ``crash`` invalidates the installers that were open (they belonged to the
  dead process): their ``finish()`` fails an assertion.

Theory of operation: a batch is a tuple of immutable operations. The disk
keeps two images, ``current`` (every batch applied) and ``durable`` (only the
synced ones); a sync replays the pending batches onto ``durable``, and a
crash replays a prefix of them and then copies ``durable`` into ``current``.
Replaying on the durable image gives the same result as on the current one
because both see the same batches in the same order.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from paxoskv.kv.lease import Lease
from paxoskv.kv.state_machine import Changes, Session
from paxoskv.paxos.types import ZERO_BALLOT, Ballot, Entry, Value
from paxoskv.storage.base import (
    FORMAT_VERSION,
    Locked,
    LoadedState,
    NotFound,
    NotWritable,
    WrongCluster,
    WrongNode,
    check_identity,
    check_loaded,
)
from paxoskv.storage.snapshot_base import InstallerBase, SourceBase
from paxoskv.v1 import storage_pb2
from paxoskv.storage.snapshot import (
    Items,
    SnapshotReader,
    SnapshotRefused,
)

__all__ = ["MemoryDisk", "MemoryStorage"]

# One operation of a batch: (kind, *arguments). Kinds:
#   ("meta", node_id, cluster_id)        ("promised", ballot)
#   ("accepted", entry)                  ("chosen", slot, value)
#   ("row", row key, row | None)         ("session", client_id, session | None)
#   ("applied", index, revision, compact revision, alarms)
#   ("lease", id, StoredLease bytes | None)
#   ("drop_accepted", through)
#   ("reset",)                           drop every history row, session and lease
#   ("compact", through)                 drop chosen and accepted <= through,
#                                        log_start = through + 1
_Op = tuple[object, ...]
_Batch = tuple[_Op, ...]


@dataclass(slots=True)
class _Image:
    meta: tuple[int, str] | None = None
    promised: Ballot = ZERO_BALLOT
    accepted: dict[int, Entry] = field(default_factory=dict)
    chosen: dict[int, Value] = field(default_factory=dict)
    history: dict[bytes, bytes] = field(default_factory=dict)
    sessions: dict[str, Session] = field(default_factory=dict)
    applied_index: int = 0
    log_start: int = 1
    revision: int = 1
    compact_revision: int = -1
    alarms: tuple[tuple[int, int], ...] = ()
    leases: dict[int, bytes] = field(default_factory=dict)  # id -> StoredLease bytes

    def copy(self) -> _Image:
        return _Image(
            self.meta,
            self.promised,
            dict(self.accepted),
            dict(self.chosen),
            dict(self.history),
            dict(self.sessions),
            self.applied_index,
            self.log_start,
            self.revision,
            self.compact_revision,
            self.alarms,
            dict(self.leases),
        )

    def replay(self, batch: _Batch) -> None:
        for op in batch:
            kind = op[0]
            if kind == "accepted":
                entry = op[1]
                assert isinstance(entry, Entry)
                self.accepted[entry.slot] = entry
            elif kind == "chosen":
                self.chosen[op[1]] = op[2]  # type: ignore[index]
            elif kind == "row":
                if op[2] is None:
                    self.history.pop(op[1], None)  # type: ignore[arg-type]
                else:
                    self.history[op[1]] = op[2]  # type: ignore[index]
            elif kind == "session":
                if op[2] is None:
                    self.sessions.pop(op[1], None)  # type: ignore[arg-type]
                else:
                    self.sessions[op[1]] = op[2]  # type: ignore[index]
            elif kind == "lease":
                if op[2] is None:
                    self.leases.pop(op[1], None)  # type: ignore[arg-type]
                else:
                    self.leases[op[1]] = op[2]  # type: ignore[index]
            elif kind == "applied":
                self.applied_index, self.revision, self.compact_revision, self.alarms = op[1:]  # type: ignore[assignment]
            elif kind == "drop_accepted":
                through = op[1]
                for slot in [s for s in self.accepted if s <= through]:  # type: ignore[operator]
                    del self.accepted[slot]
            elif kind == "reset":
                self.history.clear()
                self.sessions.clear()
                self.leases.clear()
            elif kind == "compact":
                through = op[1]
                assert isinstance(through, int)
                for slot in [s for s in self.chosen if s <= through]:
                    del self.chosen[slot]
                for slot in [s for s in self.accepted if s <= through]:
                    del self.accepted[slot]
                self.log_start = max(self.log_start, through + 1)
            elif kind == "promised":
                self.promised = op[1]  # type: ignore[assignment]
            elif kind == "meta":
                self.meta = (op[1], op[2])  # type: ignore[assignment]
            else:
                raise AssertionError(f"unknown batch operation {kind!r}")


class MemoryDisk:
    """What outlives a process: identity, durable image, unsynced batches."""

    def __init__(self, name: str = "memory") -> None:
        self.name = name
        self.full = False
        self.batches_written = 0
        self.syncs = 0
        self.crashes = 0
        self._durable = _Image()
        self._current = _Image()
        self._pending: list[_Batch] = []
        self._holder: MemoryStorage | None = None

    @property
    def pending_batches(self) -> int:
        """Batches written but not yet durable."""
        return len(self._pending)

    def write(self, batch: _Batch, sync: bool) -> None:
        if self.full:
            raise NotWritable(self.name, "no space left on device")
        self.batches_written += 1
        self._current.replay(batch)
        self._pending.append(batch)
        if sync:
            self.syncs += 1
            for pending in self._pending:
                self._durable.replay(pending)
            self._pending.clear()

    def crash(self, rng: random.Random) -> int:
        """Lose a random suffix of the unsynced batches; return how many were lost."""
        kept = rng.randint(0, len(self._pending))
        for batch in self._pending[:kept]:
            self._durable.replay(batch)
        lost = len(self._pending) - kept
        self._pending.clear()
        self._current = self._durable.copy()
        self.crashes += 1
        return lost


class MemoryStorage:
    """The storage protocol on a ``MemoryDisk`` (a fresh one if none is given)."""

    def __init__(
        self,
        disk: MemoryDisk | None = None,
        *,
        node_id: int = 1,
        cluster_id: str = "test",
        create: bool = True,
    ) -> None:
        check_identity(node_id, cluster_id)
        disk = MemoryDisk() if disk is None else disk
        if disk._holder is not None:
            raise Locked(disk.name, "another MemoryStorage holds this disk")
        meta = disk._current.meta
        if meta is None:
            if not create:
                raise NotFound(disk.name)
            disk.write((("meta", node_id, cluster_id),), sync=True)
        else:
            if meta[0] != node_id:
                raise WrongNode(disk.name, meta[0], node_id)
            if meta[1] != cluster_id:
                raise WrongCluster(disk.name, meta[1], cluster_id)
        disk.write((), sync=True)  # the probe: can we write and sync?
        disk._holder = self
        self.disk = disk
        self.node_id = node_id
        self.cluster_id = cluster_id
        self.format_version = FORMAT_VERSION
        self._closed = False

    @classmethod
    def open(
        cls,
        disk: MemoryDisk | None = None,
        node_id: int = 1,
        cluster_id: str = "test",
        create: bool = True,
    ) -> MemoryStorage:
        return cls(disk, node_id=node_id, cluster_id=cluster_id, create=create)

    # ---- faults ------------------------------------------------------------------

    @property
    def fault_full_disk(self) -> bool:
        return self.disk.full

    @fault_full_disk.setter
    def fault_full_disk(self, full: bool) -> None:
        self.disk.full = full

    def crash(self, rng: random.Random) -> int:
        """Power loss: keep a random prefix of the unsynced batches; return how many were lost."""
        assert not self._closed, "storage is closed"
        return self.disk.crash(rng)

    # ---- the protocol ------------------------------------------------------------

    def load(self) -> LoadedState:
        assert not self._closed, "storage is closed"
        image = self.disk._current
        applied = image.applied_index
        chosen = image.chosen
        loaded = LoadedState(
            promised=image.promised,
            # As in every store: an accepted entry of a chosen, applied slot
            # is not an acceptance still in play (LevelDB keeps it as the
            # chosen value's copy).
            accepted={s: e for s, e in image.accepted.items() if not (s <= applied and s in chosen)},
            chosen=dict(image.chosen),
            log_start=image.log_start,
            applied_index=image.applied_index,
            history=dict(image.history),
            sessions=dict(image.sessions),
            revision=image.revision,
            compact_revision=image.compact_revision,
            alarms=image.alarms,
            leases=_leases(image.leases),
        )
        return check_loaded(self.disk.name, loaded)

    def persist(
        self,
        promised: Ballot | None,
        accepted: Sequence[Entry],
        chosen: Sequence[tuple[int, Value]],
        sync: bool,
    ) -> None:
        assert not self._closed, "storage is closed"
        batch: list[_Op] = []
        if promised is not None:
            assert isinstance(promised, Ballot), promised
            batch.append(("promised", promised))
        for entry in accepted:
            assert isinstance(entry, Entry) and entry.slot >= 1, entry
            assert _is_value(entry.value), entry
            batch.append(("accepted", entry))
        log_start = self.disk._current.log_start
        for slot, value in chosen:
            assert slot >= 1 and _is_value(value), (slot, value)
            if slot >= log_start:
                batch.append(("chosen", slot, value))
        self.disk.write(tuple(batch), sync)

    def apply(self, changes: Changes, drop_accepted_through: int) -> None:
        assert not self._closed, "storage is closed"
        current = self.disk._current.applied_index
        assert changes.applied_index >= current, (changes.applied_index, current)
        batch: list[_Op] = []
        for key, row in changes.history.items():
            assert isinstance(key, bytes) and len(key) == 16 and (row is None or isinstance(row, bytes))
            batch.append(("row", key, row))
        for client_id, session in changes.sessions.items():
            assert session is None or isinstance(session, Session), session
            batch.append(("session", client_id, session))
        for lease_id, lease in changes.leases.items():
            batch.append(("lease", lease_id, lease))
        assert changes.revision >= 1, changes
        batch.append(("applied", changes.applied_index, changes.revision, changes.compact_revision, tuple(changes.alarms)))
        if drop_accepted_through > 0:
            batch.append(("drop_accepted", drop_accepted_through))
        self.disk.write(tuple(batch), sync=False)

    def history_row(self, row: bytes) -> bytes | None:
        assert not self._closed, "storage is closed"
        return self.disk._current.history.get(row)

    def history_rows(self, start: bytes, stop: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        assert not self._closed, "storage is closed"
        history = self.disk._current.history
        keys = sorted(k for k in history if k >= start and (stop is None or k < stop))
        return iter([(k, history[k]) for k in keys])

    def compact(self, through_slot: int) -> None:
        assert not self._closed, "storage is closed"
        image = self.disk._current
        assert 0 <= through_slot <= image.applied_index, (through_slot, image.applied_index)
        if through_slot < image.log_start:
            return
        self.disk.write((("compact", through_slot),), sync=False)

    def reclaim(self) -> None:
        assert not self._closed, "storage is closed"

    def defragment(self) -> None:
        assert not self._closed, "storage is closed"

    def open_snapshot(self) -> _MemorySource:
        assert not self._closed, "storage is closed"
        image = self.disk._current
        return _MemorySource(self.cluster_id, image, dict(image.history), dict(image.sessions), _leases(image.leases))

    def begin_install(self, *, foreign_cluster_ok: bool = False) -> _MemoryInstaller:
        assert not self._closed, "storage is closed"
        return _MemoryInstaller(self, foreign_cluster_ok)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.disk._holder = None

    def __enter__(self) -> MemoryStorage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _leases(stored: dict[int, bytes]) -> dict[int, Lease]:
    return {lease_id: Lease.from_proto(storage_pb2.StoredLease.FromString(raw)) for lease_id, raw in stored.items()}


def _is_value(value: object) -> bool:
    return isinstance(value, tuple) and all(isinstance(c, bytes) for c in value)


class _MemorySource(SourceBase):
    def __init__(
        self,
        cluster_id: str,
        image: _Image,
        history: dict[bytes, bytes],
        sessions: dict[str, Session],
        leases: dict[int, Lease],
    ) -> None:
        super().__init__(cluster_id, image.applied_index, image.revision, image.compact_revision, image.alarms)
        self._history = history
        self._sessions = sessions
        self._leases = leases

    def _lease_items(self) -> list[tuple[int, Lease]]:
        return sorted(self._leases.items())

    def _counts(self) -> tuple[int, int]:
        return len(self._history), len(self._sessions)

    def _rows(self, start: bytes, stop: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        history = self._history
        keys = sorted(k for k in history if k >= start and (stop is None or k < stop))
        return iter([(k, history[k]) for k in keys])

    def _session_items(self) -> Iterator[tuple[str, Session]]:
        return iter(sorted(self._sessions.items()))

    def _release(self) -> None:
        self._history = {}
        self._sessions = {}


class _MemoryInstaller(InstallerBase):
    def __init__(self, storage: MemoryStorage, foreign_cluster_ok: bool) -> None:
        super().__init__(
            SnapshotReader(
                None if foreign_cluster_ok else storage.cluster_id,
                min_applied_index=storage.disk._current.applied_index,
                legacy_ok=foreign_cluster_ok,
            ),
            check_on_write=True,
        )
        self._storage = storage
        self._crashes = storage.disk.crashes
        self._ops: list[_Op] = [("reset",)]

    def _check_alive(self) -> None:
        assert not self._storage._closed, "storage is closed"
        assert (
            self._storage.disk.crashes == self._crashes
        ), "the installer did not survive the crash"

    def _stage(self, chunk: bytes, items: Items) -> None:
        self._check_alive()
        rows, sessions = items
        ops = self._ops
        for key, row in rows:
            ops.append(("row", key, row))
        for client_id, session in sessions:
            ops.append(("session", client_id, session))

    def _commit(self) -> int:
        self._check_alive()
        info = self._reader.finish()
        disk = self._storage.disk
        index = info.applied_index
        current = disk._current.applied_index
        if index < current:
            raise SnapshotRefused(
                f"snapshot at index {index} is older than the applied index {current}"
            )
        for lease_id, lease in info.leases:
            self._ops.append(("lease", lease_id, lease.to_proto(lease_id).SerializeToString()))
        self._ops.append(("applied", index, info.revision, info.compact_revision, info.alarms))
        self._ops.append(("compact", index))
        disk.write(tuple(self._ops), sync=True)
        return index

    def _discard(self) -> None:
        self._ops = []
