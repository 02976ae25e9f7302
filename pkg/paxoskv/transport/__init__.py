"""The ZeroMQ peer bus: core messages between nodes (see bus.py), CURVE keys (keys.py)."""

from paxoskv.transport.bus import (
    FRAME_BYTES_MAX,
    BusClosed,
    BusStats,
    DropReason,
    DuplicateNode,
    PeerBus,
    PeerStatus,
)
from paxoskv.transport.keys import BusKeys, KeyFileError, create_key_pair, load_bus_keys

__all__ = [
    "FRAME_BYTES_MAX",
    "BusClosed",
    "BusKeys",
    "BusStats",
    "DropReason",
    "DuplicateNode",
    "KeyFileError",
    "PeerBus",
    "PeerStatus",
    "create_key_pair",
    "load_bus_keys",
]
