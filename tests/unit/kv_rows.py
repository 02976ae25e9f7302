"""Test helpers: a plain key-value map as MVCC history rows, and back.

Each key gets one row at revision 2 (its sub-revision fixed per key, the
same in every test), so a change of a map is a change of rows, and a store's
or snapshot's rows read back as the map (``kv_of``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from paxoskv.kv import Changes, Session
from paxoskv.kv.mvcc import decode_row, encode_row, row_key
from paxoskv.storage.snapshot import snapshot_bytes

REVISION = 2
_SUBS: dict[bytes, int] = {}


def row_of(key: bytes) -> bytes:
    """The row key a map's key is stored under."""
    return row_key(REVISION, _SUBS.setdefault(key, len(_SUBS)))


def rows_of(kv: Mapping[bytes, bytes | None]) -> dict[bytes, bytes | None]:
    """A map change as history rows (None: the key's row goes)."""
    return {
        row_of(k): None if v is None else encode_row(k, REVISION, REVISION, 1, v, 0) for k, v in kv.items()
    }


def kv_of(history: Mapping[bytes, bytes] | Iterable[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    """The live map of history rows (the last version of each key that is not a delete)."""
    items = history.items() if isinstance(history, Mapping) else history
    out: dict[bytes, bytes] = {}
    for _, row in sorted(items):
        rec = decode_row(row)
        if rec.tombstone:
            out.pop(rec.kv.key, None)
        else:
            out[rec.kv.key] = rec.kv.value
    return out


def changes(
    applied_index: int,
    kv: Mapping[bytes, bytes | None] | None = None,
    sessions: Mapping[str, Session | None] | None = None,
) -> Changes:
    return Changes(
        history=rows_of(kv or {}), sessions=dict(sessions or {}), applied_index=applied_index, revision=REVISION
    )


def snapshot_of(cluster_id: str, applied_index: int, kv: Mapping[bytes, bytes], sessions: Mapping[str, Session]) -> bytes:
    rows = {k: v for k, v in rows_of(kv).items() if v is not None}
    return snapshot_bytes(cluster_id, applied_index, rows, dict(sessions), revision=REVISION)  # type: ignore[arg-type]


def kv_changes(
    kv: Mapping[bytes, bytes | None],
    sessions: Mapping[str, Session | None],
    applied_index: int,
) -> Changes:
    """``changes`` with the argument order of the change sets of a plain map."""
    return changes(applied_index, kv, sessions)
