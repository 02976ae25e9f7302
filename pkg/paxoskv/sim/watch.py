"""Simulated etcd watchers: Watch streams on the members' real watch hubs,
recorded and checked by ``paxoskv.check.watch``.

Rules:

- A watcher is one etcd client's watch loop. It opens a stream on a random
  member, creates one watch (a key, a prefix, every key or every key from
  one; start revision 0 = now or a past one, possibly below the compaction;
  prev_kv, NOPUT or NODELETE, progress_notify, hasleader drawn), asks for
  progress now and then, and records every response (``WatchRecord``). A
  broken stream (its member crashed or stopped, or, with hasleader, lost
  its leader) is resumed from the last seen revision + 1 on a random member
  (maybe the same one) after a backoff: the next record of the same
  logical watcher (``"<name>#<attempt>"``). A watch cancelled below the
  compaction ends its logical watcher (etcd's client reports ErrCompacted);
  the watcher then starts afresh under a new name.
- The hub is driven as ``paxoskv.server.etcd_watch`` drives it, through the
  member's ``ReplicaNode.watches`` (the hub the node layer feeds from
  ``finish`` and ``tick``): ``open``, ``request``, ``take`` one response at
  a time (a slow reader takes the next one only after the previous one
  arrived, plus a read time), no request handed over while the stream has
  no room, ``close``. A stream's responses arrive in order (one HTTP/2
  stream), each after a drawn link delay; a crash ends the stream after
  what was already sent.
- Deterministic: the hub says "output" through ``on_output`` from inside
  the node (its iteration order over streams is by object identity), so
  that only marks the stream; one event later the marked streams are
  drained in the order they were opened. Every draw is from the watchers'
  own generators, seeded apart from the seed's main stream: a run's other
  components replay as they did without watchers.
- Liveness: after the cluster converged, every watcher asks for progress
  until it has seen (an event or a progress revision) the final revision;
  the run is done only then (``settled``).
- Checked at the end (``check``): ``check_watches`` on every record against
  the event log of the agreed log's reference replay
  (``paxoskv.sim.etcd.reference_mvcc``), with its compaction and revision.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Protocol

from paxoskv.check.watch import WatchEvent, WatchRecord, check_watches
from paxoskv.etcdpb import kv_pb2 as mvccpb
from paxoskv.etcdpb import rpc_pb2
from paxoskv.paxos.types import Value
from paxoskv.replica.watch import WatchLimits, WatchStream
from paxoskv.sim.scheduler import Scheduler

__all__ = ["SimWatchers", "WatchStats"]

LINK_US_MIN = 100
LINK_US_MEAN = 600
BACKOFF_US_MAX = 100_000  # a broken stream is resumed within this much time
PROGRESS_EVERY_US_MAX = 200_000  # a watcher asking for progress asks this often, at most
RESTART_EVERY_US_MAX = 1_000_000  # a watcher that restarts its watch does so this often, at most
SETTLE_ASK_US = 20_000  # while settling, a progress request is repeated after this long
_WATCH_CREATE = rpc_pb2.WatchCreateRequest


class WatchEnv(Protocol):
    """What the watchers need of the simulator."""

    scheduler: Scheduler
    node_ids: tuple[int, ...]
    nodes: dict[int, Any]
    phase: str

    def note(self, text: str) -> None: ...

    def violation(self, kind: str, detail: str) -> None: ...

    def watch_guard(self, node: Any, fn: Any, arg: Any) -> None: ...  # noqa: ANN401


@dataclass
class WatchStats:
    watchers: int = 0
    records: int = 0
    events: int = 0  # events received (each one checked)
    responses: int = 0
    progress: int = 0
    compacted: int = 0  # watches cancelled below the compaction
    broken: int = 0  # streams a crash, stop or lost leader ended
    violations: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class _Conn:
    """One Watch stream: the client's end and the member's."""

    id: int
    watcher: _Watcher
    record: WatchRecord
    node_id: int
    life: int = 0
    stream: WatchStream | None = None
    hub: Any = None
    dead: bool = False  # the member's end is gone (crash, failure, closed)
    done: bool = False  # the client's end is gone
    created: bool = False
    arrive_us: int = 0  # when the last response sent on it arrives
    next_take_us: int = 0  # a slow reader takes the next response no sooner
    take_scheduled: bool = False
    waiting: list[rpc_pb2.WatchRequest] = field(default_factory=list)  # not read yet: no room
    progress_asked_us: int = -1


class _Watcher:
    """One client's watch loop (see the module rules)."""

    def __init__(self, plane: SimWatchers, name: str, rng: random.Random) -> None:
        self.plane = plane
        self.name = name
        self.rng = rng
        self.generation = 0  # a new logical watcher after a compaction cancel
        self.attempt = 0
        self.conn: _Conn | None = None
        self.chain: list[WatchRecord] = []
        self.progress_every_us = rng.choice((0, 0, 50_000, PROGRESS_EVERY_US_MAX))
        self.restart_every_us = rng.choice((0, RESTART_EVERY_US_MAX // 4, RESTART_EVERY_US_MAX))
        self._pick()

    def _pick(self) -> None:
        """Draw what this logical watcher watches."""
        rng = self.rng
        keys = self.plane.keys
        r = rng.random()
        if r < 0.4:
            self.key, self.range_end = rng.choice(keys), b""
        elif r < 0.7:
            p = rng.choice(keys)[:1]
            self.key, self.range_end = p, p[:-1] + bytes([p[-1] + 1])
        elif r < 0.85:
            self.key, self.range_end = b"\x00", b"\x00"
        else:
            self.key, self.range_end = rng.choice(keys), b"\x00"
        self.prev_kv = rng.random() < 0.5
        f = rng.random()
        self.filters = frozenset({"noput"} if f < 0.1 else {"nodelete"} if f < 0.2 else ())
        self.progress_notify = rng.random() < 0.5
        self.require_leader = rng.random() < 0.3

    def start(self) -> None:
        self.plane.scheduler.after(self.rng.randint(0, 200_000), self._connect)
        if self.restart_every_us:
            self.plane.scheduler.after(self.rng.randint(1, self.restart_every_us), self._restart)

    def _restart(self, _: Any = None) -> None:  # noqa: ANN401
        """The client drops its stream: it resumes (a reconnect) or, as a new
        logical watcher, starts from a past revision (a catch-up)."""
        plane = self.plane
        if plane.phase != "safety":
            return
        conn = self.conn
        if conn is not None and conn.created and not conn.done:
            plane.close_client_side(conn)
            fresh = self.rng.random() < 0.5
            self.ended(conn, "restart, from the past" if fresh else "restart")
        plane.scheduler.after(self.rng.randint(1, self.restart_every_us), self._restart)

    def link_us(self) -> int:
        return LINK_US_MIN + int(self.rng.expovariate(1.0 / LINK_US_MEAN))

    def last_seen(self) -> int:
        return max((r.last_seen() for r in self.chain), default=0)

    def _connect(self, _: Any = None) -> None:  # noqa: ANN401
        plane = self.plane
        if plane.phase == "done":
            return
        rng = self.rng
        if self.chain and (self.chain[-1].start_revision or self.last_seen()):
            start = self.last_seen() + 1 if self.last_seen() else self.chain[-1].start_revision
        else:
            if self.chain:  # nothing known of where the last one started: a new logical watcher
                self._new_generation()
            top = plane.revision_hint()
            r = rng.random()
            start = 0 if r < 0.3 else rng.randint(1, top + 1) if r < 0.6 else rng.randint(max(1, top - 30), top + 1)
        rec = WatchRecord(name=f"{self.name}.{self.generation}#{self.attempt}", key=self.key,
                          range_end=self.range_end, start_revision=start, prev_kv=self.prev_kv,
                          filters=self.filters)
        self.attempt += 1
        self.chain.append(rec)
        plane.records.append(rec)
        node_id = rng.choice(plane.node_ids)
        conn = plane.connection(self, rec, node_id)
        self.conn = conn
        req = rpc_pb2.WatchRequest(create_request=_WATCH_CREATE(
            key=self.key, range_end=self.range_end, start_revision=start, prev_kv=self.prev_kv,
            progress_notify=self.progress_notify,
            filters=[_WATCH_CREATE.NOPUT if f == "noput" else _WATCH_CREATE.NODELETE for f in sorted(self.filters)]))
        plane.note(f"watch {rec.name} -> n{node_id} from {start} [{self.key!r}, {self.range_end!r})")
        plane.scheduler.after(self.link_us(), plane.open, (conn, req))
        if self.progress_every_us:
            plane.scheduler.after(rng.randint(1, self.progress_every_us), self._progress_tick, conn)

    def _new_generation(self) -> None:
        self.generation += 1
        self.attempt = 0
        self.chain = []
        self._pick()

    def _progress_tick(self, conn: _Conn) -> None:
        if conn.done or self.plane.phase == "done":
            return
        if conn.created:
            self.plane.send(conn, rpc_pb2.WatchRequest(progress_request=rpc_pb2.WatchProgressRequest()))
        self.plane.scheduler.after(self.rng.randint(1, self.progress_every_us), self._progress_tick, conn)

    def ended(self, conn: _Conn, why: str) -> None:
        """The stream ended (it arrived at the client): resume after a backoff."""
        if conn.done:
            return
        conn.done = True
        self.plane.note(f"watch {conn.record.name} ended: {why}")
        if self.conn is conn:
            self.conn = None
            if why in ("compacted", "restart, from the past"):
                self._new_generation()
            self.plane.scheduler.after(self.rng.randint(1, BACKOFF_US_MAX), self._connect)

    def receive(self, arg: tuple[_Conn, rpc_pb2.WatchResponse]) -> None:
        conn, resp = arg
        if conn.done:
            return
        plane = self.plane
        rec = conn.record
        plane.stats.responses += 1
        if resp.created:
            if resp.canceled:
                plane.violation(f"{rec.name} refused: {resp.cancel_reason!r}")
                conn.done = True
                return
            conn.created = True
            if rec.start_revision == 0:
                rec.start_revision = resp.header.revision + 1  # "now": after the created header's revision
            elif rec.start_revision <= resp.header.revision and self.rng.random() < 0.5:
                # from the past: ask at once, while the member may still be catching it up
                plane.send(conn, rpc_pb2.WatchRequest(progress_request=rpc_pb2.WatchProgressRequest()))
            return
        if resp.canceled:
            if resp.compact_revision:
                rec.canceled_compact_revision = resp.compact_revision
                plane.stats.compacted += 1
                plane.close_client_side(conn)
                self.ended(conn, "compacted")
                return
            plane.violation(f"{rec.name} cancelled unasked: {resp.cancel_reason!r}")
            conn.done = True
            return
        if resp.events:
            rec.responses.append([_event(e) for e in resp.events])
            plane.stats.events += len(resp.events)
            return
        rec.progress.append((len(rec.responses), resp.header.revision))
        plane.stats.progress += 1


def _event(e: mvccpb.Event) -> WatchEvent:
    kind = "delete" if e.type == mvccpb.Event.DELETE else "put"
    prev = e.prev_kv.value if e.HasField("prev_kv") else None
    return WatchEvent(e.kv.mod_revision, e.kv.key, kind, e.kv.value, prev)


class SimWatchers:
    """Every simulated watcher of one run, and the streams they hold."""

    def __init__(self, env: WatchEnv, seed: int, keys: tuple[bytes, ...], election_ticks_min: int) -> None:
        self.env = env
        self.scheduler = env.scheduler
        self.node_ids = env.node_ids
        rng = random.Random(f"watch-{seed}")
        self.keys = keys
        small = rng.random() < 0.7  # bounds small enough that outboxes fill and catch-up is chunked
        self.limits = WatchLimits(
            stream_bytes_max=rng.choice((300, 2_000)) if small else 4 << 20,
            catchup_rows_max=rng.choice((1, 3)) if small else 1_000,
            catchup_bytes_max=rng.choice((64, 1 << 20)),
            response_bytes_max=rng.choice((1, 200, 1 << 20)),
            progress_interval_ticks=rng.choice((20, 200)),
            no_leader_ticks_max=3 * election_ticks_min,
        )
        self.read_us_max = rng.choice((0, 100, 1_000, 5_000))  # a reader's time per response (0: takes all at once)
        self.watchers = [_Watcher(self, f"w{i}", random.Random(rng.getrandbits(64)))
                         for i in range(rng.randint(1, 6))]
        self.records: list[WatchRecord] = []
        self.stats = WatchStats(watchers=len(self.watchers))
        self._conns: dict[int, _Conn] = {}  # open ones, by id
        self._marked: set[int] = set()
        self._drain_scheduled = False
        self._conn_ids = 0
        self._final_revision = 0

    def describe(self) -> str:
        lim = self.limits
        return (f"watchers={len(self.watchers)} watch_stream_max={lim.stream_bytes_max} "
                f"catchup_rows={lim.catchup_rows_max} watch_resp_max={lim.response_bytes_max} "
                f"progress_ticks={lim.progress_interval_ticks} watch_read_max={self.read_us_max}us")

    @property
    def phase(self) -> str:
        return self.env.phase

    def note(self, text: str) -> None:
        self.env.note(text)

    def violation(self, detail: str) -> None:
        self.stats.violations += 1
        self.env.violation("watch", detail)

    def connection(self, watcher: _Watcher, rec: WatchRecord, node_id: int) -> _Conn:
        """A new stream to ``node_id``, open from now: a crash of the member
        breaks it even before its first request arrived there."""
        self._conn_ids += 1
        conn = _Conn(self._conn_ids, watcher, rec, node_id)
        self._conns[conn.id] = conn
        return conn

    def revision_hint(self) -> int:
        """The highest revision any member has applied (a client learns it
        from any response header)."""
        return max((n.layer.replica.sm.revision for n in self.env.nodes.values() if n.layer is not None), default=1)

    def start(self) -> None:
        for w in self.watchers:
            w.start()

    # ---- the member's end -----------------------------------------------------------

    def _at_member(self, conn: _Conn, again: Any, fn: Any, arg: Any) -> bool:  # noqa: ANN401
        """Run ``fn(arg)`` at the stream's member now (True); when it is
        paused, ``again(arg)`` once it resumes (its inbox); never when the
        stream is gone."""
        node = self.env.nodes[conn.node_id]
        if conn.dead or node.layer is None or node.life != conn.life:
            return False
        if node.paused:
            node.inbox.append((again, arg))
            return False
        self.env.watch_guard(node, fn, arg)
        return True

    def open(self, arg: tuple[_Conn, rpc_pb2.WatchRequest]) -> None:
        conn, req = arg
        if conn.dead:
            return
        node = self.env.nodes[conn.node_id]
        if node.layer is None:
            self._kill(conn)
            self._end(conn, "member down")
            return
        if node.paused:
            node.inbox.append((self.open, arg))
            return
        self.env.watch_guard(node, self._open_now, (conn, req))

    def _open_now(self, arg: tuple[_Conn, rpc_pb2.WatchRequest]) -> None:
        conn, req = arg
        node = self.env.nodes[conn.node_id]
        layer = node.layer
        if conn.watcher.require_leader and layer.etcd.require_leader() is not None:
            self._kill(conn)
            self._end(conn, "no leader")
            return
        conn.life = node.life
        conn.hub = layer.watches
        conn.stream = conn.hub.open(require_leader=conn.watcher.require_leader)
        cid = conn.id
        conn.stream.on_output = lambda: self._mark(cid)
        self._request_now((conn, req))
        self._mark(cid)

    def send(self, conn: _Conn, req: rpc_pb2.WatchRequest) -> None:
        """A request from the client, after a link delay."""
        self.scheduler.after(conn.watcher.link_us(), self._request, (conn, req))

    def _request(self, arg: tuple[_Conn, rpc_pb2.WatchRequest]) -> None:
        self._at_member(arg[0], self._request, self._request_now, arg)

    def _request_now(self, arg: tuple[_Conn, rpc_pb2.WatchRequest]) -> None:
        conn, req = arg
        if conn.dead or conn.stream is None:
            return
        if conn.waiting or not conn.stream.has_room:
            conn.waiting.append(req)  # the driver reads no request while its stream has no room
            return
        conn.hub.request(conn.stream, req)

    def _mark(self, cid: int) -> None:
        self._marked.add(cid)
        if not self._drain_scheduled:
            self._drain_scheduled = True
            self.scheduler.after(0, self._drain_marked)

    def _drain_marked(self, _: Any = None) -> None:  # noqa: ANN401
        self._drain_scheduled = False
        marked, self._marked = sorted(self._marked), set()
        for cid in marked:
            conn = self._conns.get(cid)
            if conn is not None:
                self._take(conn)

    def _take(self, conn: _Conn) -> None:
        if conn.take_scheduled:
            return
        now = self.scheduler.now_us
        if now < conn.next_take_us:
            conn.take_scheduled = True
            self.scheduler.at(conn.next_take_us, self._take_later, conn)
            return
        self._at_member(conn, self._take, self._take_now, conn)

    def _take_later(self, conn: _Conn) -> None:
        conn.take_scheduled = False
        self._take(conn)

    def _take_now(self, conn: _Conn) -> None:
        """The driver's writer: take the next response and send it; a slow
        reader's next one waits until this one was read."""
        while not conn.dead:
            stream = conn.stream
            resp = conn.hub.take(stream)
            if resp is None:
                if stream.failed is not None or stream.closed:
                    why = "no leader" if stream.failed is not None else "closed"
                    self._kill(conn)
                    self._end(conn, why)
                return
            w = conn.watcher
            arrive = max(self.scheduler.now_us + w.link_us(), conn.arrive_us)
            conn.arrive_us = arrive
            self.scheduler.at(arrive, w.receive, (conn, resp))
            while conn.waiting and stream.has_room:
                conn.hub.request(stream, conn.waiting.pop(0))
            if self.read_us_max:
                conn.next_take_us = arrive + w.rng.randint(0, self.read_us_max)
                self._take(conn)
                return

    def _kill(self, conn: _Conn) -> None:
        conn.dead = True
        self._conns.pop(conn.id, None)

    def _end(self, conn: _Conn, why: str) -> None:
        """The member's end is gone: the client learns it after what was sent."""
        self.stats.broken += 1
        arrive = max(self.scheduler.now_us + conn.watcher.link_us(), conn.arrive_us)
        self.scheduler.at(arrive, self._ended, (conn, why))

    def _ended(self, arg: tuple[_Conn, str]) -> None:
        conn, why = arg
        conn.watcher.ended(conn, why)

    def close_client_side(self, conn: _Conn) -> None:
        """The client closes the stream (its watch was cancelled): the
        member's handler ends and closes it in the hub."""
        self.scheduler.after(conn.watcher.link_us(), self._close, conn)

    def _close(self, conn: _Conn) -> None:
        if not self._at_member(conn, self._close, self._close_now, conn) and not self.env.nodes[conn.node_id].paused:
            self._kill(conn)

    def _close_now(self, conn: _Conn) -> None:
        if not conn.dead:
            conn.hub.close(conn.stream)
            self._kill(conn)

    def node_down(self, node_id: int) -> None:
        """The member's process ended: every stream on it breaks."""
        for cid in sorted(self._conns):
            conn = self._conns[cid]
            if conn.node_id == node_id:
                self._kill(conn)
                self._end(conn, "member down")

    # ---- the end --------------------------------------------------------------------

    def settled(self, final_revision: int) -> bool:
        """Every watcher has an open watch that has seen ``final_revision``
        (by an event or a progress answer); those that have not ask."""
        self._final_revision = final_revision
        ok = True
        now = self.scheduler.now_us
        for w in self.watchers:
            conn = w.conn
            if conn is None or not conn.created or conn.done:
                ok = False
                continue
            if conn.record.last_seen() >= final_revision:
                continue
            ok = False
            if conn.progress_asked_us < 0 or now - conn.progress_asked_us >= SETTLE_ASK_US:
                conn.progress_asked_us = now
                self.send(conn, rpc_pb2.WatchRequest(progress_request=rpc_pb2.WatchProgressRequest()))
        return ok

    def status(self) -> str:
        parts = []
        for w in self.watchers:
            c = w.conn
            state = "reconnecting" if c is None else (
                f"{c.record.name} on n{c.node_id} created={int(c.created)} seen={c.record.last_seen()}")
            parts.append(f"{w.name}: {state}")
        return f"watchers (final revision {self._final_revision}): " + "; ".join(parts)

    def check(self, log: list[WatchEvent], compact_revision: int, last_revision: int) -> list[str]:
        self.stats.records = len(self.records)
        return check_watches(log, self.records, compact_revision, last_revision)

    def fingerprint(self) -> tuple[Any, ...]:
        return (tuple(sorted(self.stats.as_dict().items())),
                tuple((r.name, r.start_revision, len(r.responses), tuple(r.progress), r.canceled_compact_revision)
                      for r in self.records))


def contiguous_through(chosen: dict[int, Value]) -> int:
    """The last slot of the run of chosen slots from 1."""
    n = 0
    while n + 1 in chosen:
        n += 1
    return n
