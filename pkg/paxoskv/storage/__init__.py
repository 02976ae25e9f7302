"""Node storage: one protocol (base), LevelDB for real nodes, memory for tests,
and the snapshot file format (snapshot)."""

from paxoskv.storage.base import (
    FORMAT_VERSION,
    Corrupt,
    LoadedState,
    Locked,
    NotFound,
    NotWritable,
    SnapshotInstaller,
    SnapshotSource,
    Storage,
    StorageError,
    WrongCluster,
    WrongFormat,
    WrongNode,
)
from paxoskv.storage.leveldb import LevelDBStorage, data_dir_bytes
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
    "LevelDBStorage",
    "LoadedState",
    "Locked",
    "MemoryDisk",
    "MemoryStorage",
    "NotFound",
    "NotWritable",
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
    "data_dir_bytes",
    "iter_snapshot",
]
