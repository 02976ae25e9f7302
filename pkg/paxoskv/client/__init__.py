"""paxoskv's Python client: any node, leader discovery, retries, exactly-once.

``Client`` is the asyncio client (see :mod:`paxoskv.client.client` for its
rules); ``SyncClient`` wraps it for blocking code.
"""

from __future__ import annotations

from paxoskv.client.client import (
    Client,
    ClientError,
    DeadlineExceeded,
    GetResult,
    InvalidArgument,
    NodeStatus,
    StaleSequence,
    Unavailable,
    Unreachable,
    WriteResult,
)
from paxoskv.client.sync import SyncClient

__all__ = [
    "Client",
    "ClientError",
    "DeadlineExceeded",
    "GetResult",
    "InvalidArgument",
    "NodeStatus",
    "StaleSequence",
    "SyncClient",
    "Unavailable",
    "Unreachable",
    "WriteResult",
]
