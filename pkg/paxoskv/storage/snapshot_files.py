"""Snapshot files: read one through a verifier, verify one, write one
durably and only whole (the format is :mod:`paxoskv.storage.snapshot`).

A file is either a snapshot as it is, or one in the etcd envelope
(``etcdctl snapshot save`` of a paxoskv node: the snapshot, zero padding to
a multiple of 512 bytes, then the SHA-256 of everything before): a file
whose size is ``512 * k + 32`` and whose last 32 bytes are the SHA-256 of
the rest is read as an envelope (a plain snapshot ends in its trailer,
whose digest covers fewer bytes, so it is never taken for one)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator

from paxoskv.storage.snapshot import (
    CHUNK_BYTES,
    ETCD_PAD_BYTES,
    Items,
    SnapshotInfo,
    SnapshotReader,
)

__all__ = ["envelope_body", "fsync_dir", "read_file", "verify_file", "write_file"]

_SHA256_BYTES = 32


def envelope_body(path: str | os.PathLike[str], chunk_bytes: int = CHUNK_BYTES) -> int | None:
    """The size of the padded body if the file is in the etcd envelope and
    its digest is right, else None."""
    size = os.path.getsize(path)
    if size < _SHA256_BYTES + ETCD_PAD_BYTES or size % ETCD_PAD_BYTES != _SHA256_BYTES:
        return None
    body = size - _SHA256_BYTES
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        left = body
        while left:
            chunk = file.read(min(chunk_bytes, left))
            if not chunk:
                return None
            digest.update(chunk)
            left -= len(chunk)
        if file.read() != digest.digest():
            return None
    return body


def read_file(
    path: str | os.PathLike[str], reader: SnapshotReader, chunk_bytes: int = CHUNK_BYTES, *, limit: int | None = None
) -> Iterator[Items]:
    """Feed the file at ``path`` (its first ``limit`` bytes) to ``reader``,
    yielding the items of each chunk; at the end ``reader.finish()`` runs,
    so a loop that completes without an exception has read a whole,
    verified snapshot."""
    with open(path, "rb") as file:
        left = limit
        while left is None or left > 0:
            chunk = file.read(chunk_bytes if left is None else min(chunk_bytes, left))
            if not chunk:
                break
            if left is not None:
                left -= len(chunk)
            yield reader.feed(chunk)
    reader.finish()


def verify_file(
    path: str | os.PathLike[str], cluster_id: str | None = None, chunk_bytes: int = CHUNK_BYTES
) -> SnapshotInfo:
    """Verify the snapshot file at ``path`` (plain, or in the etcd envelope;
    of any format this paxoskv restores); return what it holds."""
    body = envelope_body(path, chunk_bytes)
    reader = SnapshotReader(cluster_id, keep_items=False, legacy_ok=True, padded=body is not None)
    for _ in read_file(path, reader, chunk_bytes, limit=body):
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
    reader = SnapshotReader(keep_items=False, legacy_ok=True)
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
