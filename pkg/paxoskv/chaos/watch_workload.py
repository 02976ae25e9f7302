"""The watch workload of a campaign, and its check after the run.

Rules
-----
* Watchers speak etcd's ``Watch.Watch`` to the real nodes while the other
  workloads write and the nemesis kills, pauses and partitions. Each member
  is home to ``streams_per_member`` streams, each multiplexing two or three
  watchers (``_specs``): the whole key space with ``prev_kv``, a single
  key, the paxoskv.v1 keys' prefix ``k`` (``nodelete``), the etcd
  workload's prefix ``e/`` with ``progress_notify``, a single key with
  ``noput``. Even streams choose their watch ids and send a
  ``WatchProgressRequest`` every ``progress_s``; odd ones let the server
  choose and ask for progress only when silent.
* Every response is recorded, as ``paxoskv.check.watch.WatchRecord``: one
  record per watch the server confirmed (``created``), named
  ``<watcher>#<attempt>``; its responses' events (fragments joined) and,
  between them, the progress revisions (a stream's progress answer counts
  for every watch of the stream, a ``progress_notify`` for its own).
* A stream that breaks (the member was killed, the connection reset), that
  stays silent ``stall_s`` after a progress request (a paused or cut-off
  member), or whose time on its member is up (``migrate_s`` on average: a
  move without a fault) reconnects to the next member, each watcher from
  its last seen revision + 1 (its last event's or progress revision,
  whichever is later; the checker's convention) as a new record.
  ``hasleader`` is not sent: a member that lost the leader keeps serving
  what it applied.
* Memory: ``events_max`` events recorded by all watchers together; once
  there, every stream ends and the records stay as they are (the summary
  says so). A watch cancelled for compaction records its
  ``canceled_compact_revision`` and ends (the campaign does not compact:
  serve's auto-compaction is off unless asked for).
* After the run (``check``): every stream is asked for progress until it
  reports the members' final revision (so every record runs to the end),
  then stops; the reference log is read with a Watch of the whole key
  space from revision 1 on the first member, the same from a second
  member, and the two must be equal; ``check_watches`` judges every
  record against it. Any violation fails the campaign.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field

import grpc

from paxoskv.chaos.workload import dial
from paxoskv.check.watch import WatchEvent, WatchRecord, check_watches, logical_name
from paxoskv.client.etcd_watch import prefix_end
from paxoskv.etcdpb import kv_pb2 as mvccpb
from paxoskv.etcdpb import rpc_pb2, rpc_pb2_grpc
from paxoskv.tls import ClientTLS

__all__ = ["WatchOutcome", "WatchWorkload", "WatchWorkloadConfig", "read_log", "summary_lines"]

_C = rpc_pb2.WatchCreateRequest
_FILTERS = {"noput": _C.NOPUT, "nodelete": _C.NODELETE}
_ALL = (b"\x00", b"\x00")  # etcd's whole key space: key "\0", range_end "\0"


@dataclass(frozen=True, slots=True, kw_only=True)
class WatchWorkloadConfig:
    streams_per_member: int = 2
    single_keys: tuple[bytes, ...] = (b"k0", b"e/k0", b"k1", b"e/k1")  # the other workloads' keys
    progress_s: float = 2.0  # even streams ask for progress this often (check.watch costs O(progress x revisions))
    stall_s: float = 3.0  # a stream silent this long after asking for progress moves on
    migrate_s: float | None = 12.0  # mean time a stream stays on one member (None: only faults move it)
    backoff_s: float = 0.1  # between two connection attempts
    events_max: int = 300_000  # recorded by all watchers together
    final_timeout_s: float = 20.0  # to reach the final revision after the run
    log_timeout_s: float = 60.0  # to read the reference log from one member

    def __post_init__(self) -> None:
        assert self.streams_per_member >= 1 and self.single_keys
        assert 0 < self.progress_s < self.stall_s and self.events_max >= 1


@dataclass(frozen=True, slots=True)
class _Spec:
    key: bytes
    range_end: bytes
    prev_kv: bool = False
    filters: frozenset[str] = frozenset()
    progress_notify: bool = False


def _specs(cfg: WatchWorkloadConfig, s: int) -> list[_Spec]:
    """The watchers of stream ``s`` (numbered over every member)."""
    keys = cfg.single_keys
    if s % 2 == 0:
        return [_Spec(*_ALL, prev_kv=True), _Spec(keys[s // 2 % len(keys)], b"", prev_kv=s % 4 == 0)]
    return [
        _Spec(b"k", prefix_end(b"k"), prev_kv=s % 4 == 1, filters=frozenset({"nodelete"})),
        _Spec(b"e/", prefix_end(b"e/"), progress_notify=True),
        _Spec(keys[(s // 2 + 1) % len(keys)], b"", filters=frozenset({"noput"})),
    ]


class _Watcher:
    """One logical watcher: its records, one per watch the server created."""

    def __init__(self, name: str, spec: _Spec, start: int) -> None:
        self.name = name
        self.spec = spec
        self.start = start  # of the next watch (0: now)
        self.records: list[WatchRecord] = []
        self.done = ""  # why it ended, if it did

    def create(self, wid: int) -> rpc_pb2.WatchRequest:
        sp = self.spec
        return rpc_pb2.WatchRequest(create_request=_C(
            key=sp.key, range_end=sp.range_end, start_revision=self.start, prev_kv=sp.prev_kv,
            progress_notify=sp.progress_notify, filters=[_FILTERS[f] for f in sorted(sp.filters)],
            watch_id=wid, fragment=True))

    def created(self, header_revision: int) -> WatchRecord:
        sp = self.spec
        start = self.start or header_revision + 1  # "now": the member's revision at the create, + 1
        rec = WatchRecord(name=f"{self.name}#{len(self.records)}", key=sp.key, range_end=sp.range_end,
                          start_revision=start, prev_kv=sp.prev_kv, filters=sp.filters)
        self.records.append(rec)
        self.start = start
        return rec

    def seen(self, revision: int) -> None:
        """The current watch has seen up to ``revision``: the next one starts after it."""
        self.start = max(self.start, revision + 1)


def _event(e: mvccpb.Event, prev_kv: bool) -> WatchEvent:
    kv = e.kv
    prev = e.prev_kv.value if prev_kv and e.HasField("prev_kv") and e.prev_kv.key else None
    return WatchEvent(kv.mod_revision, kv.key, "delete" if e.type == mvccpb.Event.DELETE else "put",
                      kv.value, prev)


class _Stream:
    """One Watch stream at a time, carrying its watchers from member to member."""

    def __init__(self, wl: WatchWorkload, index: int, home: int, rng: random.Random) -> None:
        self.wl = wl
        self.index = index
        self.ids = wl.ids
        self.node = home
        self.rng = rng
        self.own_ids = index % 2 == 0  # client-chosen watch ids, periodic progress requests
        self.watchers = [
            _Watcher(f"w{index}.{j}", sp, 1 if (index + j) % 2 == 0 else 0)
            for j, sp in enumerate(_specs(wl.cfg, index))
        ]
        self.reached = 0  # the last progress revision of the current session
        self.target = 0  # ask for progress until ``reached`` is at least this

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set() and any(not w.done for w in self.watchers):
            if self.wl.full():
                for w in self.watchers:
                    w.done = w.done or "events_max reached"
                return
            why = await self._session(stop)
            self.wl.moves[why] += 1
            if stop.is_set():
                return
            self.node = self.ids[(self.ids.index(self.node) + 1) % len(self.ids)]
            await _wait(stop, self.wl.cfg.backoff_s)

    async def _session(self, stop: asyncio.Event) -> str:
        """One stream on ``self.node``; returns why it ended."""
        wl, cfg = self.wl, self.wl.cfg
        self.reached = 0
        call = rpc_pb2_grpc.WatchStub(wl.channels[self.node]).Watch()
        live = {}  # watch id -> (watcher, its record)
        pending = []  # server-chosen ids: watchers in the order of their creates
        last_rx = [time.monotonic()]
        ended: list[str] = []
        try:
            for j, w in enumerate(self.watchers):
                if not w.done:
                    pending.append(w)
                    await asyncio.wait_for(call.write(w.create(j + 1 if self.own_ids else 0)), cfg.stall_s)
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            call.cancel()
            return "unreachable"
        except asyncio.TimeoutError:
            call.cancel()
            return "stalled"
        reader = asyncio.create_task(self._read(call, live, pending, last_rx, ended))
        lifetime = self.rng.expovariate(1 / cfg.migrate_s) if cfg.migrate_s else None
        began = time.monotonic()
        asked = 0.0
        try:
            while not reader.done():
                now = time.monotonic()
                if stop.is_set():
                    ended.append("stopped")
                    break
                if wl.full():
                    ended.append("events_max reached")
                    break
                if all(w.done for w in self.watchers):
                    ended.append("done")  # every watch was cancelled or refused
                    break
                if lifetime is not None and now - began > lifetime and self.target == 0:
                    ended.append("migrated")
                    break
                want = self.own_ids and now - asked >= cfg.progress_s
                want = want or (self.target > self.reached and now - asked >= 0.2)
                silent = now - last_rx[0]
                if want or (silent >= cfg.stall_s / 2 and now - asked >= cfg.stall_s / 2):
                    asked = now
                    try:
                        await asyncio.wait_for(call.write(rpc_pb2.WatchRequest(
                            progress_request=rpc_pb2.WatchProgressRequest())), cfg.stall_s)
                    except (grpc.aio.AioRpcError, asyncio.TimeoutError, asyncio.InvalidStateError):
                        pass  # the reader sees the stream end
                if silent >= cfg.stall_s and asked > last_rx[0]:
                    ended.append("stalled")
                    break
                await asyncio.wait({reader}, timeout=0.1)
        finally:
            call.cancel()
            await asyncio.wait({reader})
        if not reader.cancelled() and reader.exception() is not None:
            raise reader.exception()
        if ended[0] == "broken" and not live:
            return "unreachable"  # nothing created: a member down or still starting
        return ended[0]

    async def _read(self, call, live: dict, pending: list, last_rx: list[float], ended: list[str]) -> None:  # noqa: ANN001
        wl = self.wl
        parts: dict[int, list] = {}
        try:
            async for resp in call:
                last_rx[0] = time.monotonic()
                rev = resp.header.revision
                wid = resp.watch_id
                if resp.created:
                    if self.own_ids:
                        w = self.watchers[wid - 1] if 0 < wid <= len(self.watchers) else None
                    else:
                        w = pending[0] if pending else None
                    if w in pending:
                        pending.remove(w)
                    if w is None or resp.canceled:
                        wl.notes[f"watch create refused: {resp.cancel_reason or wid}"] += 1
                        if w is not None:
                            w.done = f"refused: {resp.cancel_reason}"
                        continue
                    live[wid] = (w, w.created(rev))
                    continue
                if wid == -1:  # the stream's progress answer: every watch of the stream
                    for w, rec in live.values():
                        rec.progress.append((len(rec.responses), rev))
                        w.seen(rev)
                    self.reached = max(self.reached, rev)
                    wl.progress += 1
                    continue
                if wid not in live:
                    wl.notes["a response for an unknown watch id"] += 1
                    continue
                w, rec = live[wid]
                if resp.canceled:
                    del live[wid]
                    if resp.compact_revision:
                        rec.canceled_compact_revision = resp.compact_revision
                        w.done = f"cancelled at compaction {resp.compact_revision}"
                    else:
                        wl.notes[f"watch cancelled by the server: {resp.cancel_reason}"] += 1
                        w.done = f"cancelled: {resp.cancel_reason}"
                    continue
                if resp.fragment:
                    parts.setdefault(wid, []).extend(resp.events)
                    continue
                events = [*parts.pop(wid, ()), *resp.events]
                if not events:  # progress_notify
                    rec.progress.append((len(rec.responses), rev))
                    w.seen(rev)
                    wl.progress += 1
                    continue
                got = [_event(e, rec.prev_kv) for e in events]
                rec.responses.append(got)
                wl.events += len(got)
                w.seen(max(e.revision for e in got))
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                wl.errors[exc.code().name] += 1
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    wl.notes[f"a stream ended {exc.code().name}: {exc.details()}"[:160]] += 1
        finally:
            ended.append("broken")


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except asyncio.TimeoutError:
        pass


class WatchWorkload:
    """The campaign's watchers against ``targets`` (node id -> host:port)."""

    def __init__(self, cfg: WatchWorkloadConfig, targets: dict[int, str], *, seed: int,
                 tls: ClientTLS | None = None) -> None:
        self.cfg = cfg
        self.targets = targets
        self.tls = tls
        self.ids = sorted(targets)
        self.channels = {i: dial(t, f"watch-n{i}", tls) for i, t in targets.items()}
        self.events = 0  # recorded, every watcher together
        self.progress = 0  # progress answers and notifications received
        self.moves: Counter = Counter()  # why streams ended: broken, stalled, migrated, ...
        self.errors: Counter = Counter()  # gRPC codes that ended streams
        self.notes: Counter = Counter()
        n = cfg.streams_per_member
        self.streams = [_Stream(self, s, self.ids[s // n % len(self.ids)], random.Random(f"{seed}/watch/{s}"))
                        for s in range(n * len(self.ids))]
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._closed = False

    def full(self) -> bool:
        return self.events >= self.cfg.events_max

    def start(self) -> None:
        self._tasks = [asyncio.create_task(s.run(self._stop), name=f"watch-{s.index}") for s in self.streams]

    async def reach(self, revision: int, timeout_s: float) -> list[str]:
        """Ask every stream for progress until it reports ``revision``; the
        streams that did not within ``timeout_s`` (a full workload: none)."""
        for s in self.streams:
            s.target = revision
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not self.full():
            late = [s for s in self.streams if s.reached < revision and not all(w.done for w in s.watchers)]
            if not late:
                return []
            await asyncio.sleep(0.1)
        if self.full():
            return []
        return [f"stream {s.index} (on node {s.node}) at {s.reached}" for s in self.streams
                if s.reached < revision and not all(w.done for w in s.watchers)]

    async def stop(self) -> None:
        """Stop every stream (idempotent) and close the connections."""
        self._stop.set()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=10.0)
            for t in self._tasks:
                t.cancel()
            for t in self._tasks:
                if t.done() and not t.cancelled() and t.exception() is not None:
                    raise t.exception()
            self._tasks = []
        if not self._closed:
            self._closed = True
            for ch in self.channels.values():
                await ch.close(grace=None)

    def records(self) -> list[WatchRecord]:
        return [rec for s in self.streams for w in s.watchers for rec in w.records]

    def watchers(self) -> int:
        return sum(len(s.watchers) for s in self.streams)


async def read_log(target: str, tls: ClientTLS | None, revision: int, timeout_s: float,
                   start: int = 1) -> list[WatchEvent]:
    """Every event of the whole key space from ``start`` up to ``revision``,
    by a Watch on ``target`` (asking for progress until it reports
    ``revision``), tried again while the member is unavailable."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await _read_log(target, tls, revision, max(1.0, deadline - time.monotonic()), start)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.2)


async def _read_log(target: str, tls: ClientTLS | None, revision: int, timeout_s: float,
                    start: int) -> list[WatchEvent]:
    out: list[WatchEvent] = []
    async with dial(target, "watch-log", tls) as ch:
        call = rpc_pb2_grpc.WatchStub(ch).Watch()
        progress = rpc_pb2.WatchRequest(progress_request=rpc_pb2.WatchProgressRequest())
        try:
            await call.write(rpc_pb2.WatchRequest(create_request=_C(
                key=_ALL[0], range_end=_ALL[1], start_revision=start, fragment=True)))
            await call.write(progress)
            parts: list = []
            async with asyncio.timeout(timeout_s):
                async for resp in call:
                    if resp.created or resp.canceled:
                        if resp.canceled:
                            raise RuntimeError(f"the log watch on {target} was cancelled: "
                                               f"{resp.cancel_reason or resp.compact_revision}")
                        continue
                    if resp.watch_id == -1:
                        if resp.header.revision >= revision:
                            return out
                        await asyncio.sleep(0.1)
                        await call.write(progress)
                        continue
                    if resp.fragment:
                        parts.extend(resp.events)
                        continue
                    out.extend(_event(e, False) for e in [*parts, *resp.events])
                    parts = []
            raise RuntimeError(f"the log watch on {target} ended at {len(out)} events")
        finally:
            call.cancel()


@dataclass(slots=True)
class WatchOutcome:
    """What the watchers saw and what the check found."""

    records: list[WatchRecord] = field(default_factory=list)
    log: list[WatchEvent] = field(default_factory=list)
    watchers: int = 0
    revision: int = 0  # the members' revision after the run
    compact_revision: int = 0
    log_members: tuple[int, ...] = ()  # the members whose logs were read and compared
    violations: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # the check could not be done as it should
    progress: int = 0  # progress revisions in the records (a stream's answer counts for each of its watches)
    moves: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    notes: Counter = field(default_factory=Counter)
    capped: bool = False
    checked: bool = False
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def events(self) -> int:
        return sum(len(r) for rec in self.records for r in rec.responses)

    @property
    def reconnects(self) -> int:
        """Records beyond each watcher's first."""
        return len(self.records) - len({logical_name(rec.name)[0] for rec in self.records})

    def to_json(self) -> dict:
        return {
            "watchers": self.watchers, "watches": len(self.records), "reconnects": self.reconnects,
            "events_checked": self.events, "progress_checked": self.progress, "log_events": len(self.log),
            "log_members": list(self.log_members), "revision": self.revision,
            "compact_revision": self.compact_revision, "checked": self.checked,
            "violations": self.violations[:200], "violations_total": len(self.violations),
            "problems": self.problems, "streams_ended": dict(self.moves), "stream_errors": dict(self.errors),
            "notes": dict(self.notes), "events_max_reached": self.capped,
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
        }

    def judge(self) -> None:
        """``check_watches`` on the records against the log."""
        self.violations = check_watches(self.log, self.records, self.compact_revision, self.revision or None)
        self.checked = True

    def failures(self) -> list[str]:
        """What fails the campaign."""
        out = list(self.problems)
        if not self.checked:
            out.append("watch: the records were not checked")
        out += [f"watch: {v}" for v in self.violations[:50]]
        if len(self.violations) > 50:
            out.append(f"watch: ... and {len(self.violations) - 50} more violations")
        return out


async def check(wl: WatchWorkload) -> WatchOutcome:
    """After the run (the cluster converged, the writers stopped): bring every
    stream to the final revision, stop them, read and compare the reference
    logs, judge the records."""
    out = WatchOutcome(watchers=wl.watchers())
    t = time.monotonic()
    try:
        status = {}
        for i in wl.ids:
            async with dial(wl.targets[i], f"watch-status-n{i}", wl.tls) as ch:
                mt = rpc_pb2_grpc.MaintenanceStub(ch)
                status[i] = (await mt.Status(rpc_pb2.StatusRequest(), timeout=5.0)).header.revision
                compact = (await mt.HashKV(rpc_pb2.HashKVRequest(), timeout=10.0)).compact_revision
                out.compact_revision = max(out.compact_revision, compact)  # -1: never compacted (etcd's)
        out.revision = max(status.values())
        if len(set(status.values())) != 1:
            out.problems.append(f"watch: members at different revisions after convergence: {status}")
        late = await wl.reach(out.revision, wl.cfg.final_timeout_s)
        if late:
            out.problems.append(f"watch: streams did not report revision {out.revision} within "
                                f"{wl.cfg.final_timeout_s:g}s after the run: {', '.join(late)}")
    except grpc.aio.AioRpcError as exc:
        out.problems.append(f"watch: reading the final revision failed: {exc.code().name} {exc.details()}")
    finally:
        await wl.stop()
    out.timings["final_s"] = time.monotonic() - t
    out.records = wl.records()
    out.progress = sum(len(rec.progress) for rec in out.records)
    out.moves, out.errors, out.notes = wl.moves, wl.errors, wl.notes
    out.capped = wl.full()
    if out.problems:
        return out
    t = time.monotonic()
    start = max(1, out.compact_revision)
    logs = {}
    for i in wl.ids[:2]:
        try:
            logs[i] = await read_log(wl.targets[i], wl.tls, out.revision, wl.cfg.log_timeout_s, start)
        except (grpc.aio.AioRpcError, RuntimeError, TimeoutError) as exc:
            what = f"{exc.code().name} {exc.details()}" if isinstance(exc, grpc.aio.AioRpcError) else repr(exc)
            out.problems.append(f"watch: reading the event log from node {i} failed: {what:.300}")
            return out
    out.log_members = tuple(logs)
    out.log = logs[wl.ids[0]]
    for i, other in logs.items():
        if other != out.log:
            k = next((k for k, (a, b) in enumerate(zip(out.log, other)) if a != b), min(len(out.log), len(other)))
            out.problems.append(f"watch: the event logs of nodes {wl.ids[0]} and {i} differ at event {k} "
                                f"({len(out.log)} and {len(other)} events)")
    out.timings["log_s"] = time.monotonic() - t
    if out.compact_revision:
        out.problems.append(f"watch: the store was compacted at {out.compact_revision}; the check needs the "
                            f"whole log (the campaign runs without auto-compaction)")
        return out
    t = time.monotonic()
    await asyncio.to_thread(out.judge)
    out.timings["check_s"] = time.monotonic() - t
    return out


def summary_lines(out: WatchOutcome) -> list[str]:
    """The watch part of a campaign's summary.txt."""
    moves = ", ".join(f"{k} {n}" for k, n in sorted(out.moves.items())) or "none"
    lines = [
        f"watch workload: {out.watchers} watchers, {len(out.records)} watches ({out.reconnects} reconnects; "
        f"streams ended: {moves}), {out.events} events and {out.progress} progress revisions checked against "
        f"a log of {len(out.log)} events (nodes {', '.join(map(str, out.log_members)) or '-'}, identical), "
        f"revision {out.revision}",
        f"  violations: {len(out.violations) if out.checked else 'not checked'}"
        + (" (events_max reached: the records end early)" if out.capped else ""),
    ]
    lines += [f"    {v}" for v in out.violations[:20]]
    if out.notes:
        lines.append("  notes: " + ", ".join(f"{k} x{n}" for k, n in out.notes.most_common(5)))
    if out.timings:
        lines.append("  timings: " + ", ".join(f"{k.removesuffix('_s')} {v:.1f}s" for k, v in out.timings.items()))
    return lines
