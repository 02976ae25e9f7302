"""Node storage: one protocol (base), LevelDB for real nodes
(``paxoskv.storage.leveldb``, imported by name only, so that the pure layers
above can name the protocol without loading plyvel), memory for tests, and
the snapshot file format (snapshot)."""

from paxoskv.storage.base import (
    FORMAT_VERSION,
    Corrupt,
    LoadedState,
    Locked,
    NotFound,
    NotWritable,
    OutOfRange,
    SnapshotInstaller,
    SnapshotSource,
    Storage,
    StorageError,
    WrongCluster,
    WrongFormat,
    WrongNode,
)
from paxoskv.storage.memory import MemoryDisk, MemoryStorage
from paxoskv.storage.snapshot import (
    SnapshotCorrupt,
    SnapshotError,
    SnapshotInfo,
    SnapshotReader,
    SnapshotRefused,
    iter_snapshot,
)

__all__ = [
    "FORMAT_VERSION",
    "Corrupt",
    "LoadedState",
    "Locked",
    "MemoryDisk",
    "MemoryStorage",
    "NotFound",
    "NotWritable",
    "OutOfRange",
    "SnapshotCorrupt",
    "SnapshotError",
    "SnapshotInfo",
    "SnapshotInstaller",
    "SnapshotReader",
    "SnapshotRefused",
    "SnapshotSource",
    "Storage",
    "StorageError",
    "WrongCluster",
    "WrongFormat",
    "WrongNode",
    "iter_snapshot",
]

