"""Node storage: one protocol (base), LevelDB for real nodes, memory for tests."""

from paxoskv.storage.base import (
    FORMAT_VERSION,
    Corrupt,
    LoadedState,
    Locked,
    NotFound,
    NotWritable,
    Storage,
    StorageError,
    WrongCluster,
    WrongFormat,
    WrongNode,
)
from paxoskv.storage.leveldb import LevelDBStorage
from paxoskv.storage.memory import MemoryDisk, MemoryStorage

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
    "Storage",
    "StorageError",
    "WrongCluster",
    "WrongFormat",
    "WrongNode",
]
