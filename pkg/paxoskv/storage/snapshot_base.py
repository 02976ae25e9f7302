"""Base classes of the storage backends' ``SnapshotSource`` and
``SnapshotInstaller`` (the protocols are in :mod:`paxoskv.storage.base`):
each backend fills in a few hooks, the rules live here once."""

from __future__ import annotations

import abc
from collections.abc import Iterator

from paxoskv.kv.lease import Lease
from paxoskv.kv.state_machine import Session
from paxoskv.storage.snapshot import (
    CHUNK_BYTES,
    Items,
    SnapshotReader,
    iter_snapshot,
    snapshot_header,
)

__all__ = ["InstallerBase", "SourceBase"]


class SourceBase(abc.ABC):
    """A ``SnapshotSource`` made of hooks: the counts, the history rows in
    revision order (all, or a span: ``_rows``), the sessions in client id
    order."""

    def __init__(
        self,
        cluster_id: str,
        applied_index: int,
        revision: int = 1,
        compact_revision: int = -1,
        alarms: tuple[tuple[int, int], ...] = (),
    ) -> None:
        self._cluster_id = cluster_id
        self._applied_index = applied_index
        self._revision = revision
        self._compact_revision = compact_revision
        self._alarms = alarms
        self._closed = False

    @property
    def applied_index(self) -> int:
        return self._applied_index

    @property
    def cluster_id(self) -> str:
        return self._cluster_id

    @property
    def revision(self) -> int:
        return self._revision

    @property
    def compact_revision(self) -> int:
        return self._compact_revision

    def history_rows(self, start: bytes = b"", stop: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        """The view's history rows with ``start <= key < stop``, in revision order."""
        assert not self._closed, "snapshot source is closed"
        return self._rows(start, stop)

    def chunks(self, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
        assert not self._closed, "snapshot source is closed"
        rows, sessions = self._counts()
        leases = self._lease_items()
        header = snapshot_header(
            self._cluster_id,
            self._applied_index,
            rows,
            sessions,
            self._revision,
            self._compact_revision,
            self._alarms,
            len(leases),
        )
        return iter_snapshot(header, self._rows(b"", None), self._session_items(), chunk_bytes, leases)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._release()

    def __enter__(self) -> SourceBase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # hooks
    @abc.abstractmethod
    def _counts(self) -> tuple[int, int]:
        """Implemented by each store."""

    @abc.abstractmethod
    def _rows(self, start: bytes, stop: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        """Implemented by each store."""

    @abc.abstractmethod
    def _session_items(self) -> Iterator[tuple[str, Session]]:
        """Implemented by each store."""

    @abc.abstractmethod
    def _lease_items(self) -> list[tuple[int, Lease]]:
        """Implemented by each store: every lease, in id order."""

    @abc.abstractmethod
    def _release(self) -> None:
        """Implemented by each store."""


class InstallerBase(abc.ABC):
    """A ``SnapshotInstaller`` made of hooks: ``_stage`` keeps each chunk,
    ``_commit`` verifies the whole snapshot and does the one atomic switch,
    ``_discard`` drops what was staged. ``reader`` verifies the chunks as
    they come when ``check_on_write`` (else only up to the header, and
    ``_commit`` verifies everything). A failure of any step aborts."""

    _OPEN, _FINISHED, _ABORTED = "open", "finished", "aborted"

    def __init__(self, reader: SnapshotReader, *, check_on_write: bool) -> None:
        self._reader = reader
        self._check_on_write = check_on_write
        self._bytes = 0
        self._state = self._OPEN

    @property
    def applied_index(self) -> int | None:
        header = self._reader.header
        return None if header is None else header.applied_index

    @property
    def bytes_written(self) -> int:
        return self._bytes

    def write(self, chunk: bytes) -> None:
        assert self._state == self._OPEN, f"write to an installer that is {self._state}"
        try:
            if self._check_on_write or self._reader.header is None:
                items = self._reader.feed(chunk)
            else:
                items = ([], [])
            self._stage(chunk, items)
            self._bytes += len(chunk)
        except BaseException:
            self.abort()
            raise

    def finish(self) -> int:
        assert self._state == self._OPEN, f"finish of an installer that is {self._state}"
        try:
            index = self._commit()
        except BaseException:
            self.abort()
            raise
        self._state = self._FINISHED
        self._discard()
        return index

    def abort(self) -> None:
        if self._state == self._OPEN:
            self._state = self._ABORTED
            self._discard()

    def __enter__(self) -> InstallerBase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()

    # hooks
    @abc.abstractmethod
    def _stage(self, chunk: bytes, items: Items) -> None:
        """Implemented by each store."""

    @abc.abstractmethod
    def _commit(self) -> int:
        """Implemented by each store."""

    @abc.abstractmethod
    def _discard(self) -> None:
        """Implemented by each store."""
