"""The storage protocol of a node, what it loads, and its errors.

Rules (each method's own are on it, in ``Storage`` below):

- One storage per node, opened for one ``(node_id, cluster_id)``. The first
  open of an empty store records that identity; every later open must name
  the same one, or it fails with ``WrongNode`` / ``WrongCluster`` and changes
  nothing. A store held by another process fails with ``Locked``; one that
  cannot be written (read-only, full disk) fails with ``NotWritable`` at
  open, found by writing and syncing a probe.
- ``persist``, ``apply``, ``compact`` and an install's ``finish`` are each
  ONE atomic write batch. After a crash only a prefix of the batches
  survives, each batch whole.
- Errors are ``StorageError`` subclasses; each message is one line that says
  what is wrong and what to do. ``NotWritable`` is also raised by a write
  that fails at run time (disk full): the node must stop, not go on.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from paxoskv.kv.lease import Lease
from paxoskv.kv.state_machine import Changes, Session
from paxoskv.paxos.bounds import BALLOT_ROUND_MAX, NODE_ID_MAX, SLOT_MAX
from paxoskv.paxos.types import Ballot, Entry, Value

__all__ = [
    "FORMAT_VERSION",
    "READABLE_FORMAT_VERSIONS",
    "Corrupt",
    "Locked",
    "LoadedState",
    "NotFound",
    "NotWritable",
    "OutOfRange",
    "SnapshotInstaller",
    "SnapshotSource",
    "Storage",
    "StorageError",
    "WrongCluster",
    "WrongFormat",
    "WrongNode",
    "check_identity",
    "check_loaded",
]

FORMAT_VERSION = 4
# Versions this paxoskv opens (an older one is migrated to FORMAT_VERSION on
# open). 2: LevelDB chosen records may be markers (see paxoskv.storage.leveldb).
# 3: sessions and log entries may hold packed batches (kv.proto BatchOp.request),
# which a paxoskv before version 3 would apply without their exactly-once identity.
# 4: the applied state is an MVCC history (rev/ rows, revisions in the applied
# record); a store of 1-3 holds plain kv/ values, which become revision-2 rows.
READABLE_FORMAT_VERSIONS = (1, 2, 3, 4)


@dataclass(frozen=True, slots=True)
class LoadedState:
    """Everything a node reads from its storage at start."""

    promised: Ballot  # ZERO_BALLOT on a fresh store
    accepted: dict[int, Entry]  # slot -> accepted entry
    chosen: dict[int, Value]  # slot -> chosen value, slots >= log_start
    log_start: int  # first slot whose chosen value is kept
    applied_index: int
    history: dict[bytes, bytes]  # row key -> HistoryRecord bytes
    sessions: dict[str, Session]
    revision: int = 1
    compact_revision: int = -1
    alarms: tuple[tuple[int, int], ...] = ()
    leases: dict[int, Lease] = field(default_factory=dict)


class SnapshotSource(Protocol):
    """A consistent view of the applied state; see ``Storage.open_snapshot``."""

    @property
    def applied_index(self) -> int: ...

    @property
    def cluster_id(self) -> str: ...

    @property
    def revision(self) -> int: ...

    @property
    def compact_revision(self) -> int: ...

    def history_rows(self, start: bytes = ..., stop: bytes | None = ...) -> Iterator[tuple[bytes, bytes]]: ...

    def chunks(self, chunk_bytes: int = ...) -> Iterator[bytes]: ...

    def close(self) -> None: ...

    def __enter__(self) -> SnapshotSource: ...

    def __exit__(self, *exc: object) -> None: ...


class SnapshotInstaller(Protocol):
    """An install in progress; see ``Storage.begin_install``. As a context
    manager it aborts unless ``finish()`` returned."""

    @property
    def applied_index(self) -> int | None:
        """The snapshot's index, once its header was written (else None)."""
        ...

    @property
    def bytes_written(self) -> int: ...

    def write(self, chunk: bytes) -> None: ...

    def finish(self) -> int: ...

    def abort(self) -> None: ...

    def __enter__(self) -> SnapshotInstaller: ...

    def __exit__(self, *exc: object) -> None: ...


@runtime_checkable
class Storage(Protocol):
    def load(self) -> LoadedState:
        """Everything written through this handle (synced or not), except
        accepted entries of slots chosen and applied (``<=`` the applied
        index): no acceptance still in play (a store may keep one as the
        chosen value's only copy, as LevelDB does). Refuses, with
        ``OutOfRange``, a store holding a value past the maxima of
        :mod:`paxoskv.paxos.bounds` (a ballot round over ``BALLOT_ROUND_MAX``,
        a slot or index over ``SLOT_MAX``: taken from a peer by a paxoskv
        from before those checks); the node does not start, and the message
        says how to recover (``check_loaded``)."""
        ...

    def persist(
        self,
        promised: Ballot | None,
        accepted: Sequence[Entry],
        chosen: Sequence[tuple[int, Value]],
        sync: bool,
    ) -> None:
        """ONE batch: the promise (if not None), accepted entries (replacing
        an earlier entry of the same slot) and chosen values (those of slots
        below ``log_start`` are ignored: applied and compacted). With
        ``sync=True`` it and every batch before it are durable when it
        returns. The caller groups one event-loop iteration into one call."""
        ...

    def apply(self, changes: Changes, drop_accepted_through: int) -> None:
        """ONE batch, never synced on its own (the next synced batch makes it
        durable): the state machine's history rows (written and dropped),
        session and lease changes, the applied index with the revision,
        compaction revision and alarms, and the deletion of accepted entries
        of slots ``<= drop_accepted_through``. The applied state and index
        change together, so a restart never applies a slot twice."""
        ...

    def history_row(self, row: bytes) -> bytes | None:
        """One history row (``paxoskv.kv.mvcc.HistoryReader``): sees every
        row written through this handle, even while a ``persist`` runs in
        another thread."""
        ...

    def history_rows(self, start: bytes, stop: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        """The rows in ``[start, stop)``, as ``history_row`` sees them."""
        ...

    def compact(self, through_slot: int) -> None:
        """ONE batch, not synced on its own: deletes the chosen and accepted
        entries of slots ``<= through_slot``, sets ``log_start =
        through_slot + 1``. Only applied slots (asserted); ``log_start``
        never goes back (a lower ``through_slot`` does nothing)."""
        ...

    def reclaim(self) -> None:
        """Gives the space of deleted records back to the file system
        (LevelDB: ``compact_range`` over them), changing no record. It may
        take long and blocks no other call: run it in a worker thread after
        ``compact`` or an install's ``finish()``."""
        ...

    def defragment(self) -> None:
        """``reclaim`` for the whole store (etcd's Defragment)."""
        ...

    def open_snapshot(self) -> SnapshotSource:
        """A consistent view of the applied state (history rows, revision
        counters, alarms, sessions, leases, applied index) at the moment of
        the call, taken without blocking writers. ``chunks(chunk_bytes)``
        yields it in the snapshot file format (:mod:`paxoskv.storage.snapshot`),
        lazily, and may be called again; ``close()`` releases the view (so
        does the storage's ``close``)."""
        ...

    def begin_install(self, *, foreign_cluster_ok: bool = False) -> SnapshotInstaller:
        """An installer: ``write(chunk)`` takes the snapshot's bytes in order,
        verifying as they come (another cluster's, or one older than the
        applied index, is refused at its header); ``finish()`` verifies the
        end, then in ONE synced batch replaces history, sessions, leases and
        applied state by the snapshot's, sets ``log_start = index + 1`` and
        deletes the chosen and accepted entries ``<= index`` (the promise and
        entries ``> index`` stay), and returns the index; ``abort()`` drops
        what was staged. Until ``finish()`` returns nothing is visible and a
        crash leaves the old state; after, the new state is durable.
        ``foreign_cluster_ok`` (only ``paxoskv snapshot restore``, seeding a
        new cluster from a backup) takes any cluster id and format 1. Errors
        in the snapshot are ``SnapshotError`` (``SnapshotCorrupt`` /
        ``SnapshotRefused``), not ``StorageError``: the transfer is retried,
        the node goes on."""
        ...

    def close(self) -> None: ...


# ---- errors -------------------------------------------------------------------


class StorageError(Exception):
    """A storage failure; ``str(err)`` is one line saying what to do."""

    def __init__(self, message: str, *, path: str = "") -> None:
        assert "\n" not in message, message
        super().__init__(message)
        self.path = path


class WrongNode(StorageError):
    def __init__(self, path: str, stored: int, wanted: int) -> None:
        super().__init__(
            f"data directory {path} belongs to node {stored}, not node {wanted}: start node "
            f"{stored} on it, or give node {wanted} a data directory of its own",
            path=path,
        )
        self.stored_node_id = stored
        self.node_id = wanted


class WrongCluster(StorageError):
    def __init__(self, path: str, stored: str, wanted: str) -> None:
        super().__init__(
            f"data directory {path} belongs to cluster {stored!r}, not {wanted!r}: check "
            f"--cluster-id, or use an empty data directory for a new cluster",
            path=path,
        )
        self.stored_cluster_id = stored
        self.cluster_id = wanted


class WrongFormat(StorageError):
    def __init__(self, path: str, stored: int) -> None:
        super().__init__(
            f"data directory {path} has format version {stored}, this paxoskv reads "
            f"{', '.join(map(str, READABLE_FORMAT_VERSIONS))}: run a paxoskv that supports it",
            path=path,
        )
        self.format_version = stored


class Locked(StorageError):
    def __init__(self, path: str, detail: str = "") -> None:
        more = f" ({detail})" if detail else ""
        super().__init__(
            f"data directory {path} is open in another process{more}: stop that node "
            f"first, or use another data directory",
            path=path,
        )


class NotWritable(StorageError):
    def __init__(self, path: str, detail: str) -> None:
        super().__init__(
            f"data directory {path} is not writable ({detail}): free disk space, or fix "
            f"the permissions or read-only mount",
            path=path,
        )


class Corrupt(StorageError):
    def __init__(self, path: str, detail: str) -> None:
        super().__init__(
            f"data directory {path} is corrupt ({detail}): move it away and restart the "
            f"node with an empty one so it catches up from its peers",
            path=path,
        )


class OutOfRange(StorageError):
    """The store holds a value no correct peer sends (see ``check_loaded``)."""

    def __init__(self, path: str, what: str) -> None:
        super().__init__(
            f"data directory {path} holds {what}, a value no correct peer sends (a paxoskv "
            f"from before input checks accepted it): move the directory away and restart the "
            f"node with an empty one so it catches up from its peers; if every node holds "
            f"such a value, restore each node from a snapshot backup (paxoskv snapshot restore)",
            path=path,
        )
        self.what = what


class NotFound(StorageError):
    def __init__(self, path: str) -> None:
        super().__init__(
            f"data directory {path} holds no paxoskv data: initialise it (open with "
            f"create) or pass the right --data-dir",
            path=path,
        )


def check_identity(node_id: int, cluster_id: str) -> None:
    """Reject a node id or cluster id no store can be opened for (caller bug)."""
    if not 1 <= node_id <= NODE_ID_MAX:
        raise ValueError(f"node_id must be in [1, {NODE_ID_MAX}], not {node_id}")
    if not cluster_id:
        raise ValueError("cluster_id must not be empty")


def check_loaded(path: str, state: LoadedState) -> LoadedState:
    """``state``, or ``OutOfRange`` when it holds a value past the maxima of
    :mod:`paxoskv.paxos.bounds`. Every store's ``load()`` ends with it."""
    if state.promised.round > BALLOT_ROUND_MAX:
        raise OutOfRange(path, f"a promise at ballot {state.promised} (round > BALLOT_ROUND_MAX = {BALLOT_ROUND_MAX})")
    for slot, entry in state.accepted.items():
        if slot > SLOT_MAX:
            raise OutOfRange(path, f"an entry accepted at slot {slot} (> SLOT_MAX = {SLOT_MAX})")
        if entry.ballot.round > BALLOT_ROUND_MAX:
            raise OutOfRange(
                path,
                f"an entry of slot {slot} accepted at ballot {entry.ballot} "
                f"(round > BALLOT_ROUND_MAX = {BALLOT_ROUND_MAX})",
            )
    top = max(state.chosen, default=0)
    if top > SLOT_MAX:
        raise OutOfRange(path, f"a value chosen at slot {top} (> SLOT_MAX = {SLOT_MAX})")
    if state.applied_index > SLOT_MAX:
        raise OutOfRange(path, f"applied index {state.applied_index} (> SLOT_MAX = {SLOT_MAX})")
    if state.log_start > SLOT_MAX + 1:
        raise OutOfRange(path, f"log start {state.log_start} (> SLOT_MAX + 1 = {SLOT_MAX + 1})")
    return state
