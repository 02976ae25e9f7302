"""paxoskv's Python client: any node, leader discovery, retries, exactly-once.

``Client`` is the asyncio client (see :mod:`paxoskv.client.client` for its
rules); ``SyncClient`` wraps it for blocking code. ``paxoskv.client.txn``
builds transactions (``Txn``, ``version(key) == 0``, ``put``, ``get`` ...). ``ClientTLS`` (from
:mod:`paxoskv.tls`) is what ``tls=`` takes to speak TLS.
"""

from __future__ import annotations

from paxoskv.client.client import (
    Client,
    ClientError,
    DeadlineExceeded,
    GetResult,
    InvalidArgument,
    KeyValue,
    NodeStatus,
    OutOfRange,
    RangeResult,
    StaleSequence,
    TxnResult,
    Unavailable,
    Unreachable,
    WriteResult,
)
from paxoskv.client.txn import Txn
from paxoskv.client.sync import SyncClient
from paxoskv.tls import ClientTLS

__all__ = [
    "Client",
    "ClientError",
    "ClientTLS",
    "DeadlineExceeded",
    "GetResult",
    "InvalidArgument",
    "KeyValue",
    "NodeStatus",
    "OutOfRange",
    "RangeResult",
    "StaleSequence",
    "SyncClient",
    "Txn",
    "TxnResult",
    "Unavailable",
    "Unreachable",
    "WriteResult",
]
