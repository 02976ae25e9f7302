"""etcd's ``WatchResponse`` built by hand on the wire: a revision's events
are encoded once and the same bytes go to every watch that selects them.

Rules:

- Protobuf's wire format: a repeated message field is the concatenation of
  its entries (tag, length, bytes), and fields are written in field number
  order; so a response is ``header, watch_id, fragment, events`` joined,
  byte for byte what ``WatchResponse.SerializeToString()`` gives (the tests
  check it for every shape the hub builds).
- ``event_entry`` is one ``events`` entry (field 11) of an encoded
  ``mvccpb.Event``; ``with_prev_kv`` appends prev_kv (field 3, after type
  and kv) to an encoded Event.
- The header's bytes are the caller's (a ``ResponseHeader`` serialized once
  per revision); an int64 below zero takes ten bytes.
"""

from __future__ import annotations

from paxoskv.protowire import len_field, varint

__all__ = ["event_entry", "response_size", "watch_response", "with_prev_kv"]

_EVENTS = b"\x5a"  # WatchResponse field 11 (events), length-delimited
_HEADER = b"\x0a"  # field 1 (header)
_WATCH_ID = b"\x10"  # field 2, varint
_FRAGMENT = b"\x38\x01"  # field 7 = true
_PREV_KV = b"\x1a"  # mvccpb.Event field 3 (prev_kv)


_SMALL = [varint(i) for i in range(0x4000)]  # the watch ids and sizes of nearly every response


def _int64(n: int) -> bytes:
    if 0 <= n < 0x4000:
        return _SMALL[n]
    return varint(n if n >= 0 else n + (1 << 64))


def _int64_len(n: int) -> int:
    return (n.bit_length() + 6) // 7 or 1 if n >= 0 else 10


def event_entry(event: bytes) -> bytes:
    return _EVENTS + _int64(len(event)) + event


def with_prev_kv(event: bytes, prev_kv: bytes) -> bytes:
    return event + len_field(_PREV_KV, prev_kv)


def watch_response(head: bytes | None, watch_id: int, events: bytes, fragment: bool = False) -> bytes:
    """A ``WatchResponse`` of ``events`` (``event_entry`` pieces joined);
    ``head``: the header's bytes (None: no header)."""
    parts = [] if head is None else [_HEADER, _int64(len(head)), head]
    if watch_id:
        parts += (_WATCH_ID, _int64(watch_id))
    if fragment:
        parts.append(_FRAGMENT)
    parts.append(events)
    return b"".join(parts)


def response_size(revision: int, watch_id: int, events_bytes: int, fragment: bool = False) -> int:
    """``len(watch_response(head, ...))`` without building it, for a
    header holding ``revision`` alone (no header when it is 0)."""
    size = events_bytes
    if revision:
        size += 3 + _int64_len(revision)
    if watch_id:
        size += 1 + _int64_len(watch_id)
    if fragment:
        size += 2
    return size
