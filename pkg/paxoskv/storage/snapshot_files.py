"""Snapshot files: read one through a verifier, verify one, write one
durably and only whole (the format is :mod:`paxoskv.storage.snapshot`)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

from paxoskv.storage.snapshot import CHUNK_BYTES, Items, SnapshotInfo, SnapshotReader

__all__ = ["fsync_dir", "read_file", "verify_file", "write_file"]


def read_file(
    path: str | os.PathLike[str], reader: SnapshotReader, chunk_bytes: int = CHUNK_BYTES
) -> Iterator[Items]:
    """Feed the file at ``path`` to ``reader``, yielding the items of each
    chunk; at the end ``reader.finish()`` runs, so a loop that completes
    without an exception has read a whole, verified snapshot."""
    with open(path, "rb") as file:
        while chunk := file.read(chunk_bytes):
            yield reader.feed(chunk)
    reader.finish()


def verify_file(
    path: str | os.PathLike[str], cluster_id: str | None = None, chunk_bytes: int = CHUNK_BYTES
) -> SnapshotInfo:
    """Verify the snapshot file at ``path``; return what it holds."""
    reader = SnapshotReader(cluster_id, keep_items=False)
    for _ in read_file(path, reader, chunk_bytes):
        pass
    info = reader.info
    assert info is not None
    return info


def write_file(path: str | os.PathLike[str], chunks: Iterable[bytes]) -> SnapshotInfo:
    """Write ``chunks`` to ``path`` durably and only whole: to ``path.tmp``,
    verified, fsync'ed, renamed over ``path``, directory fsync'ed. On any
    failure the temporary file is removed and ``path`` is untouched."""
    path = os.fspath(path)
    tmp = path + ".tmp"
    reader = SnapshotReader(keep_items=False)
    try:
        with open(tmp, "wb") as file:
            for chunk in chunks:
                reader.feed(chunk)
                file.write(chunk)
            info = reader.finish()
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(os.path.dirname(os.path.abspath(path)))
    return info


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
