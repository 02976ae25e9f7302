"""The node layer's watch hub: etcd's ``Watch`` streams served by any member
from its own applied history (etcd's mvcc/watchable_store.go and
v3rpc/watch.go, on paxoskv's history rows).

Rules:

- A ``WatchStream`` is one gRPC Watch call; it multiplexes watchers, each
  with a key range (etcd's forms: key ``""`` is ``"\\x00"``, range_end
  ``""`` one key, ``"\\x00"`` every key >= key), a next revision, filters
  (NOPUT, NODELETE), prev_kv, progress_notify and fragment. The driver
  feeds requests (``request``), takes responses in order (``take``) and
  fills the header's cluster id, member id and term; ``header.revision``
  is set here.
- Exactly once, in order, atomic: the hub knows ``revision``, the last
  applied revision it has handed out. A watcher is *synced* when every
  event it matches up to ``revision`` is in its stream's outbox; the
  revisions a batch applies (``applied``) then go to it at once, every
  event of one revision in the same response (responses are cut at
  revision boundaries once over ``response_bytes_max``: gRPC's send limit
  is 8 MiB). A watcher
  that starts at or below ``revision``, whose stream's outbox is full, or
  that was synced when a snapshot replaced the state, is *unsynced*: it
  catches up from the stored history rows, one chunk (``catchup_rows_max``
  rows or ``catchup_bytes_max`` bytes, completed to a revision boundary)
  per turn, only while its stream
  has room, and is synced again once its next revision passes
  ``revision``. Nothing is ever sent twice: a watcher's ``next_rev`` is the
  first revision it has not been given.
- Below the compaction (``next_rev < compact_revision``, etcd's rule): the
  watcher is cancelled with ``compact_revision`` set and header.revision 0;
  so is a synced one when a batch compacted rows it wrote itself (the hub
  never saw them: a gap is never left silently).
- Memory: a stream's outbox takes a response while it holds fewer than
  ``stream_bytes_max`` bytes and all outboxes fewer than ``node_bytes_max``
  (control responses always: the driver reads no request while its stream
  has no room, so a client cannot fill it with them). A full outbox never
  blocks an apply: its watchers turn unsynced and cost one int each.
- Encoded once: a batch's (or catch-up chunk's) events are encoded once,
  with and without prev_kv, and watches given the same events share those
  bytes (``EventsResponse``; ``take_wire`` hands it out encoded, ``take`` as
  a message). A stream counts each of its responses whole; the node counts
  a shared buffer once, while any outbox holds it.
- Progress never lies: a ``WatchProgressRequest`` is answered (watch_id -1,
  header.revision = ``revision``) once every watcher of the stream is
  synced (at once when they are; etcd 3.4 answers at once even when one is
  not, which can promise a revision an unsynced watcher has not reached).
  ``progress_notify`` watchers get ``{watch_id, revision}`` every
  ``progress_interval_ticks`` when synced and sent no events since the last
  one (etcd).
- A stream opened with ``require_leader`` (metadata hasleader=true) fails
  with etcd's ``no leader`` after ``no_leader_ticks_max`` ticks without a
  leader (etcd: 3 election timeouts).
- Pure: no clock, socket or thread; time is ``tick``.

Theory of operation: single-key watchers are indexed by key (a dict), range
watchers are scanned (a list per hub); a batch's rows are decoded once,
whatever the number of watchers. With no watcher, ``applied`` is not even
called (``ReplicaNode.finish`` checks ``watching``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from paxoskv.etcdpb import kv_pb2 as mvccpb
from paxoskv.etcdpb import rpc_pb2
from paxoskv.kv import etcd, watchwire
from paxoskv.kv.mvcc import decode_row, row_key, split_row_key
from paxoskv.replica.errors import EtcdFailure

__all__ = [
    "ERR_DUPLICATE_ID",
    "ERR_EMPTY_RANGE",
    "EventsResponse",
    "WatchHub",
    "WatchLimits",
    "WatchStream",
    "Watcher",
]

ERR_EMPTY_RANGE = "mvcc: watcher range is empty"
ERR_DUPLICATE_ID = "mvcc: duplicate watch ID provided on the WatchStream"
INVALID_WATCH_ID = -1
_PUT = mvccpb.Event.PUT
_DELETE = mvccpb.Event.DELETE
_NOPUT = rpc_pb2.WatchCreateRequest.NOPUT
_NODELETE = rpc_pb2.WatchCreateRequest.NODELETE


@dataclass(frozen=True, slots=True, kw_only=True)
class WatchLimits:
    """The hub's bounds (see the module rules)."""

    stream_bytes_max: int = 4 << 20
    node_bytes_max: int = 256 << 20
    watches_per_stream_max: int = 100_000
    catchup_rows_max: int = 1_000
    catchup_bytes_max: int = 1 << 20  # of history rows read in one turn (a revision is completed)
    response_bytes_max: int = 1 << 20  # a response is cut at a revision boundary above this
    progress_interval_ticks: int = 60_000  # etcd: 10 minutes (at 10 ms a tick)
    no_leader_ticks_max: int = 300  # etcd: 3 election timeouts
    fragment_bytes: int = 1536 << 10  # --max-request-bytes

    def __post_init__(self) -> None:
        for name in self.__slots__:  # type: ignore[attr-defined]
            if getattr(self, name) < 1:
                raise ValueError(f"watch limit {name} must be >= 1: {self}")


class HistorySource(Protocol):
    def history_rows(self, start: bytes, stop: bytes | None = None) -> Iterator[tuple[bytes, bytes]]: ...


class Watcher:
    __slots__ = (
        "id", "key", "end", "next_rev", "prev_kv", "progress_notify", "no_put", "no_delete",
        "fragment", "synced", "stream", "quiet",
    )

    def __init__(self, stream: WatchStream, wid: int, key: bytes, end: bytes | None, start: int,
                 req: rpc_pb2.WatchCreateRequest) -> None:
        self.stream = stream
        self.id = wid
        self.key = key
        self.end = end  # None: the key alone; b"": every key >= key
        self.next_rev = start  # the first revision not given to it
        self.prev_kv = req.prev_kv
        self.progress_notify = req.progress_notify
        self.no_put = _NOPUT in req.filters
        self.no_delete = _NODELETE in req.filters
        self.fragment = req.fragment
        self.synced = True  # until the hub says otherwise
        self.quiet = True  # no events since the last progress tick

    def matches(self, key: bytes) -> bool:
        end = self.end
        if end is None:
            return key == self.key
        return key >= self.key and (not end or key < end)

    def wants(self, ev: mvccpb.Event) -> bool:
        return not (self.no_delete if ev.type == _DELETE else self.no_put)


class WatchStream:
    """One Watch call's watchers and outbox (see the module rules)."""

    def __init__(self, hub: WatchHub, require_leader: bool) -> None:
        self._hub = hub
        self.require_leader = require_leader
        self.watchers: dict[int, Watcher] = {}
        self.late: set[Watcher] = set()  # its unsynced watchers
        self.next_id = 0
        self.outbox: deque[tuple[rpc_pb2.WatchResponse | EventsResponse, int]] = deque()
        self.bytes = 0
        self.failed: EtcdFailure | None = None  # the stream ends with this
        self.closed = False
        self.progress_wanted = False
        self.on_output: Callable[[], None] = _nothing

    @property
    def unsynced(self) -> int:
        return len(self.late)

    @property
    def has_room(self) -> bool:
        return self._hub.has_room(self)


def _nothing() -> None:
    pass


class _Shared:
    """Encoded events (``watchwire.event_entry`` pieces joined) that several
    outboxes may hold; ``refs``: how many do."""

    __slots__ = ("data", "refs")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.refs = 0


class EventsResponse:
    """An events response in an outbox: the bytes of its events are shared
    by every watch given the same events; ``encode(head)`` is the whole
    response with the header's bytes ``head`` (the driver's)."""

    __slots__ = ("events", "fragment", "revision", "size", "watch_id")

    def __init__(self, watch_id: int, revision: int, events: _Shared, fragment: bool = False) -> None:
        self.watch_id = watch_id
        self.revision = revision  # header.revision
        self.events = events
        self.fragment = fragment
        self.size = watchwire.response_size(revision, watch_id, len(events.data), fragment)

    def encode(self, head: bytes | None) -> bytes:
        return watchwire.watch_response(head, self.watch_id, self.events.data, self.fragment)

    def message(self) -> rpc_pb2.WatchResponse:
        """As ``take`` returns it: header.revision set, nothing else in the header."""
        head = rpc_pb2.ResponseHeader(revision=self.revision).SerializeToString() if self.revision else None
        return rpc_pb2.WatchResponse.FromString(self.encode(head))


class _Item:
    """One event of a batch (or catch-up chunk) and its ``events`` entry
    without and with prev_kv, each encoded once whatever the number of
    watches (when first asked for)."""

    __slots__ = ("_entry", "_prev_entry", "_prev_size", "_size", "ev", "main")

    def __init__(self, main: int, ev: mvccpb.Event) -> None:
        self.main = main
        self.ev = ev
        self._entry: bytes | None = None
        self._size = 0
        self._prev_entry: bytes | None = None
        self._prev_size = 0

    def entry(self, store: Any) -> bytes:  # noqa: ANN401 - an MVCCStore: with prev_kv; None: without
        """The entry (with prev_kv when ``store`` is given: the version
        before this revision, unless the event created the key)."""
        if self._entry is None:
            data = self.ev.SerializeToString()
            self._size = len(data)
            self._entry = watchwire.event_entry(data)
        if store is None:
            return self._entry
        if self._prev_entry is None:
            ev = self.ev
            entry = self._entry
            self._prev_size = self._size
            if not (ev.type == _PUT and ev.kv.create_revision == self.main):
                enc = store.version_at(ev.kv.key, self.main - 1)
                if enc is not None:
                    data = watchwire.with_prev_kv(entry[len(entry) - self._size:],
                                                  store.kv_of(ev.kv.key, enc).SerializeToString())
                    self._prev_size = len(data)
                    entry = watchwire.event_entry(data)
            self._prev_entry = entry
        return self._prev_entry

    def size(self, store: Any) -> int:  # noqa: ANN401
        """The Event's bytes (with prev_kv when ``store`` is given)."""
        self.entry(store)
        return self._size if store is None else self._prev_size


def _resp(revision: int, wid: int, **fields: Any) -> rpc_pb2.WatchResponse:  # noqa: ANN401
    r = rpc_pb2.WatchResponse(watch_id=wid, **fields)
    if revision:
        r.header.revision = revision
    return r


class WatchHub:
    """Every watch stream of one node. ``state()`` returns the current state
    machine (a snapshot install replaces it); ``history``: where its rows
    are stored."""

    def __init__(self, state: Callable[[], Any], history: HistorySource, limits: WatchLimits | None = None) -> None:
        self._state = state
        self._history = history
        self.limits = limits or WatchLimits()
        self._sm: Any = None
        self.revision = 0  # meaningful while anyone watches
        self.watching = 0  # watchers on every stream
        self.bytes = 0  # in every outbox
        self._streams: set[WatchStream] = set()
        self._catching_up: set[WatchStream] = set()
        self._by_key: dict[bytes, set[Watcher]] = {}
        self._ranges: set[Watcher] = set()
        self._ticks = 0
        self._no_leader_ticks = 0

    # ---- streams -------------------------------------------------------------------

    def open(self, require_leader: bool = False) -> WatchStream:
        s = WatchStream(self, require_leader)
        self._streams.add(s)
        return s

    def close(self, stream: WatchStream) -> None:
        """The call ended: drop its watchers and outbox."""
        if stream.closed:
            return
        stream.closed = True
        for w in list(stream.watchers.values()):
            self._remove(w)
        while stream.outbox:
            self._release(stream, *stream.outbox.popleft())
        self._streams.discard(stream)
        self._catching_up.discard(stream)

    def has_room(self, stream: WatchStream) -> bool:
        return stream.bytes < self.limits.stream_bytes_max and self.bytes < self.limits.node_bytes_max

    def take(self, stream: WatchStream) -> rpc_pb2.WatchResponse | None:
        """The next response of ``stream`` (None: none now); what leaves
        makes room for a catch-up turn."""
        resp = self.take_wire(stream)
        return resp.message() if isinstance(resp, EventsResponse) else resp

    def take_wire(self, stream: WatchStream) -> rpc_pb2.WatchResponse | EventsResponse | None:
        """``take``, an events response left encoded (``EventsResponse.encode``)."""
        if not stream.outbox:
            if stream.unsynced and not stream.closed:
                self._catch_up(stream)
            if not stream.outbox:
                return None
        resp, size = stream.outbox.popleft()
        self._release(stream, resp, size)
        if stream.unsynced and self.has_room(stream):
            self._catch_up(stream)
        return resp

    def _emit(self, stream: WatchStream, resp: rpc_pb2.WatchResponse | EventsResponse) -> None:
        """Into the outbox: a stream counts each response whole, the node
        counts shared events once (while any outbox holds them)."""
        if isinstance(resp, EventsResponse):
            size = resp.size
            shared = resp.events
            self.bytes += size - len(shared.data) if shared.refs else size
            shared.refs += 1
        else:
            size = resp.ByteSize()
            self.bytes += size
        stream.outbox.append((resp, size))
        stream.bytes += size
        stream.on_output()

    def _release(self, stream: WatchStream, resp: rpc_pb2.WatchResponse | EventsResponse, size: int) -> None:
        stream.bytes -= size
        if isinstance(resp, EventsResponse):
            shared = resp.events
            shared.refs -= 1
            self.bytes -= size if not shared.refs else size - len(shared.data)
        else:
            self.bytes -= size

    # ---- requests ------------------------------------------------------------------

    def request(self, stream: WatchStream, req: rpc_pb2.WatchRequest) -> None:
        """One request of the stream (a request with no known body is ignored, as etcd)."""
        if stream.closed:
            return
        self._sync_state()
        kind = req.WhichOneof("request_union")
        if kind == "create_request":
            self._create(stream, req.create_request)
        elif kind == "cancel_request":
            self._cancel(stream, req.cancel_request.watch_id)
        elif kind == "progress_request":
            if stream.unsynced:
                stream.progress_wanted = True
            else:
                self._emit(stream, _resp(self.revision, INVALID_WATCH_ID))

    def _create(self, stream: WatchStream, c: rpc_pb2.WatchCreateRequest) -> None:
        key = c.key or b"\x00"
        end: bytes | None = c.range_end or None
        if end == b"\x00":
            end = b""
        if end and key >= end:
            self._refuse(stream, ERR_EMPTY_RANGE)
            return
        wid = c.watch_id
        if wid == 0:
            while stream.next_id in stream.watchers:
                stream.next_id += 1
            wid = stream.next_id
            stream.next_id += 1
        elif wid in stream.watchers:
            self._refuse(stream, ERR_DUPLICATE_ID)
            return
        if len(stream.watchers) >= self.limits.watches_per_stream_max:
            self._refuse(stream, f"paxoskv: too many watches on one stream (at most {self.limits.watches_per_stream_max}): open another stream")
            return
        start = c.start_revision or self.revision + 1
        w = Watcher(stream, wid, key, end, start, c)
        stream.watchers[wid] = w
        self.watching += 1
        if end is None:
            self._by_key.setdefault(key, set()).add(w)
        else:
            self._ranges.add(w)
        self._emit(stream, _resp(self.revision, wid, created=True))
        if start <= self.revision:
            self._unsync(w)
            self._catch_up(stream)

    def _refuse(self, stream: WatchStream, reason: str) -> None:
        self._emit(stream, _resp(self.revision, INVALID_WATCH_ID, created=True, canceled=True, cancel_reason=reason))

    def _cancel(self, stream: WatchStream, wid: int) -> None:
        w = stream.watchers.get(wid)
        if w is None:
            return  # etcd answers nothing
        self._remove(w)
        self._emit(stream, _resp(self.revision, wid, canceled=True))

    def _remove(self, w: Watcher) -> None:
        s = w.stream
        del s.watchers[w.id]
        self.watching -= 1
        if not w.synced:
            s.late.discard(w)
            if not s.late:
                self._catching_up.discard(s)
        if w.end is None:
            group = self._by_key[w.key]
            group.discard(w)
            if not group:
                del self._by_key[w.key]
        else:
            self._ranges.discard(w)

    def _unsync(self, w: Watcher) -> None:
        if not w.synced:
            return
        w.synced = False
        s = w.stream
        s.late.add(w)
        self._catching_up.add(s)

    def _sync(self, w: Watcher) -> None:
        w.synced = True
        s = w.stream
        s.late.discard(w)
        if not s.late:
            self._catching_up.discard(s)
            if s.progress_wanted:
                s.progress_wanted = False
                self._emit(s, _resp(self.revision, INVALID_WATCH_ID))

    # ---- applied revisions -----------------------------------------------------------

    def _sync_state(self) -> None:
        """A snapshot install replaced the state machine: every synced
        watcher catches up from the installed history."""
        sm = self._state()
        if not self.watching:  # nobody was given anything: just follow the state
            self._sm = sm
            self.revision = sm.revision
            return
        if sm is self._sm:
            return
        for s in self._streams:
            for w in s.watchers.values():
                if w.synced:
                    w.next_rev = max(w.next_rev, self.revision + 1)
                    self._unsync(w)
        self._sm = sm
        self.revision = sm.revision

    def applied(self, rows: dict[bytes, bytes | None]) -> None:
        """A batch was applied; ``rows``: the history rows it wrote (bytes)
        and dropped (None), by row key."""
        old = self.revision
        sm = self._state()
        if sm is not self._sm:
            self._sync_state()
            return
        self.revision = sm.revision
        if not self.watching:
            return
        events: list[_Item] = []
        for rk in sorted(k for k, v in rows.items() if v is not None):
            main, _ = split_row_key(rk)
            if main > old:
                events.append(_Item(main, _event(rows[rk])))  # type: ignore[arg-type]
        if sm.compact_revision > old + 1 and any(v is None and split_row_key(rk)[0] > old for rk, v in rows.items()):
            # The batch compacted rows it wrote itself: a synced watcher below the
            # compaction cannot be given them, so it is cancelled as a lagging one is.
            for s in self._streams:
                for w in s.watchers.values():
                    if w.synced and w.next_rev < sm.compact_revision:
                        self._unsync(w)
        if not events:
            return
        by_key = self._by_key
        ranges = self._ranges
        given: dict[Watcher, list[_Item]] = {}
        for item in events:
            main = item.main
            ev = item.ev
            key = ev.kv.key
            group = by_key.get(key)
            for w in group or ():
                if w.synced and main >= w.next_rev and w.wants(ev):
                    given.setdefault(w, []).append(item)
            for w in ranges:
                if w.synced and main >= w.next_rev and w.matches(key) and w.wants(ev):
                    given.setdefault(w, []).append(item)
        shared: dict[tuple, _Shared] = {}
        for w, evs in given.items():
            left = self._deliver(w, evs, self.revision, shared)
            if left is not None:
                w.next_rev = max(w.next_rev, old + 1, left)
                self._unsync(w)
        for w in given:
            if w.synced:
                w.next_rev = max(w.next_rev, self.revision + 1)

    def _deliver(self, w: Watcher, evs: list[_Item], revision: int, shared: dict[tuple, _Shared]) -> int | None:
        """Give ``w`` its events, in responses of about ``response_bytes_max``
        cut at revision boundaries (a revision alone may be larger; with
        fragment it is split as etcd does), while its stream has room; the
        first revision left undelivered (None: all went). ``shared``: the
        events already encoded in this batch, by what they hold."""
        stream = w.stream
        store = self._sm.store if w.prev_kv else None
        limit = self.limits.response_bytes_max
        chunk: list[_Item] = []
        size = 0
        prev_main = 0
        for item in evs:
            main = item.main
            if main != prev_main:
                if chunk and size >= limit:
                    self._send(w, chunk, revision, store, shared)
                    chunk = []
                if not chunk:
                    if not self.has_room(stream):
                        return main
                    size = 0
                prev_main = main
            chunk.append(item)
            size += item.size(store) + 4
        if chunk:
            self._send(w, chunk, revision, store, shared)
        return None

    def _send(self, w: Watcher, chunk: list[_Item], revision: int, store: Any,  # noqa: ANN401
              shared: dict[tuple, _Shared]) -> None:
        w.quiet = False
        key = (store is not None, *chunk)
        events = shared.get(key)
        if events is None:
            events = shared[key] = _Shared(b"".join([item.entry(store) for item in chunk]))
        frag = self.limits.fragment_bytes
        if w.fragment and len(chunk) > 1 and watchwire.response_size(revision, w.id, len(events.data)) >= frag:
            for part, more in _fragments([item.entry(store) for item in chunk], revision, w.id, frag):
                self._emit(w.stream, EventsResponse(w.id, revision, _Shared(part), more))
        else:
            self._emit(w.stream, EventsResponse(w.id, revision, events))

    # ---- catch-up ------------------------------------------------------------------

    def _catch_up(self, stream: WatchStream) -> None:
        """One chunk of history for the unsynced watchers of ``stream``."""
        self._sync_state()
        late = sorted(stream.late, key=_watch_id)
        if not late:
            return
        compact = self._sm.compact_revision
        for w in late:
            if w.next_rev < compact:
                self._remove(w)
                self._emit(stream, _resp(0, w.id, canceled=True, compact_revision=compact))
        late = [w for w in late if w.id in stream.watchers]
        hi = self.revision
        lo = min((w.next_rev for w in late), default=hi + 1)
        events: list[_Item] = []
        last = hi
        if lo <= hi:
            n = 0
            size = 0
            for rk, row in self._history.history_rows(row_key(max(lo, 1), 0), row_key(hi + 1, 0)):
                main, _ = split_row_key(rk)
                if (n >= self.limits.catchup_rows_max or size >= self.limits.catchup_bytes_max) and main != events[-1].main:
                    last = events[-1].main
                    break
                events.append(_Item(main, _event(row)))
                n += 1
                size += len(row)
        shared: dict[tuple, _Shared] = {}
        for w in late:
            if w.next_rev > hi:
                self._sync(w)
                continue
            if w.next_rev > last:
                continue  # nothing of this chunk is its
            if not self.has_room(stream):
                break
            mine = [it for it in events if it.main >= w.next_rev and w.matches(it.ev.kv.key) and w.wants(it.ev)]
            left = self._deliver(w, mine, hi, shared) if mine else None
            if left is not None:
                w.next_rev = left
                break  # the stream is full
            w.next_rev = last + 1
            if last >= hi:
                self._sync(w)

    # ---- time ----------------------------------------------------------------------

    def tick(self, leader_known: bool) -> None:
        if not self._streams:
            self._no_leader_ticks = 0
            return
        self._sync_state()
        if leader_known:
            self._no_leader_ticks = 0
        else:
            self._no_leader_ticks += 1
            if self._no_leader_ticks >= self.limits.no_leader_ticks_max:
                self._no_leader_ticks = 0
                for s in [s for s in self._streams if s.require_leader]:
                    self.close(s)
                    s.failed = EtcdFailure(etcd.ERR_NO_LEADER.code, etcd.ERR_NO_LEADER.message)
                    s.on_output()
        self._ticks += 1
        if self._ticks % self.limits.progress_interval_ticks == 0:
            for s in self._streams:
                for w in s.watchers.values():
                    if w.progress_notify and w.synced and w.quiet and self.has_room(s):
                        self._emit(s, _resp(self.revision, w.id))
                    w.quiet = True
        for s in list(self._catching_up):
            if self.has_room(s):
                self._catch_up(s)


def _watch_id(w: Watcher) -> int:
    return w.id


_TOMBSTONE = b"\x10\x01"
_EVENT_KV = b"\x12"  # mvccpb.Event field 2 (kv), length-delimited
_EVENT_DELETE = b"\x08\x01"  # mvccpb.Event field 1 (type) = DELETE


def _event(row: bytes) -> mvccpb.Event:
    """The event of a history row. A row is ``HistoryRecord{kv = 1,
    tombstone = 2}`` and an Event ``{type = 1, kv = 2}``: the row's kv bytes
    are the event's, so it is parsed once (the general decode is kept for a
    row of another shape)."""
    if row[:1] == b"\x0a":
        n, pos, shift = 0, 1, 0
        while pos < len(row):
            b = row[pos]
            n |= (b & 0x7F) << shift
            pos += 1
            if b < 0x80:
                break
            shift += 7
        end = pos + n
        if end == len(row):
            return mvccpb.Event.FromString(_EVENT_KV + row[1:])
        if row[end:] == _TOMBSTONE:
            return mvccpb.Event.FromString(_EVENT_DELETE + _EVENT_KV + row[1:end])
    rec = decode_row(row)
    return mvccpb.Event(type=_DELETE if rec.tombstone else _PUT, kv=rec.kv)


def _fragments(entries: list[bytes], revision: int, wid: int, limit: int) -> Iterator[tuple[bytes, bool]]:
    """etcd's sendFragments on encoded events: parts whose response is below
    ``limit`` bytes (at least one event each), with whether more follow
    (fragment=true on all but the last)."""
    i = 0
    n = len(entries)
    while i < n:
        part: list[bytes] = []
        size = 0
        while i < n:
            e = entries[i]
            if part and watchwire.response_size(revision, wid, size + len(e), True) >= limit:
                break
            part.append(e)
            size += len(e)
            i += 1
        yield b"".join(part), i < n
