"""Watch guarantees, checked against the store's event log (etcd's
tests/robustness/validate/watch.go, on paxoskv's records).

Rules
-----
- ``log`` is the reference: every event the state machine applied, in
  revision order (within a revision, in the order it applied them), with
  values, complete from the store's first revision (a ``prev_kv`` is the
  key's value before the event's revision, as the log replays it; a key
  written twice in one revision, which paxoskv.v1 batches may do and etcd
  refuses, has the prev_kv of its second event unchecked). Revisions with
  no event (a delete that deleted nothing) are simply absent.
- A ``WatchRecord`` is one watch as one client saw it: the range and
  options it asked for, every ``WatchResponse``'s events in order, and
  where the progress notifications came between them. A watch cancelled
  at a compaction has ``canceled_compact_revision`` > 0, which must be
  above its next revision (its start, or the last it saw + 1: etcd cancels
  a watch that fell below the compaction); what it received before is
  checked as any watch's.
- Per record (``check_record``):

  * **ordered**: revisions never go down, and the events of one revision
    come in the log's order;
  * **unique**: no event (revision, key) is received twice;
  * **atomic**: the events of one revision arrive in one response, all of
    them (those the range and filters select);
  * **reliable**: every log event the range and filters select, from the
    start revision (the first received revision when the watch asked for
    ``0`` = now) up to the last revision it received or was promised by a
    progress notification, was received; but a delete at a start revision
    at or below the store's compaction may be missing (etcd's compaction at
    C drops a tombstone at C, and a watch may start at C);
  * **exact**: every received event is in the log at its revision with the
    same kind, value and (``prev_kv``) previous value (which may be absent
    when the revision before the event is below the compaction: etcd reads
    it at that revision), inside the range, not filtered out, not below
    the start revision;
  * **progress never lies**: a progress revision ``P`` is at most the
    store's last revision, no event received after it has revision <= ``P``,
    and every selected log event from the start up to ``P`` came before it.

- **Resumable** (``check_resumed``): a watcher that loses its stream (the
  member crashed, the connection broke) opens a new watch from its last
  seen revision + 1 (the last event's or, when later, the last progress
  revision's). Its records, in order, must read as one watch: their
  events concatenated are ordered, unique and reliable from the first
  record's start to the last record's last revision; a record starting
  above last seen + 1 leaves a gap, one starting at or below it sees
  duplicates. ``check_watches`` groups records into logical watchers by
  name: ``"<watcher>#<attempt>"`` (the part before the last ``#``; records
  whose name has no ``#`` stand alone), ordered by the integer attempt.

Pure: no clock, socket or I/O; the same inputs give the same violations.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = [
    "FILTERS",
    "KINDS",
    "WatchEvent",
    "WatchRecord",
    "check_record",
    "check_resumed",
    "check_watches",
    "in_range",
    "logical_name",
]

KINDS = ("put", "delete")
FILTERS = frozenset({"noput", "nodelete"})
_VIOLATIONS_PER_CHECK_MAX = 5  # per record and property: the first few say enough


@dataclass(frozen=True)
class WatchEvent:
    revision: int
    key: bytes
    kind: str  # "put" | "delete"
    value: bytes = b""
    prev_value: bytes | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"WatchEvent kind {self.kind!r} is not one of {KINDS}")

    def show(self) -> str:
        return f"{self.kind} {self.key!r}@{self.revision}"


@dataclass
class WatchRecord:
    name: str
    key: bytes
    range_end: bytes
    start_revision: int
    prev_kv: bool = False
    filters: frozenset[str] = frozenset()  # {"noput", "nodelete"}
    # each inner list: the events of one WatchResponse, in order
    responses: list[list[WatchEvent]] = field(default_factory=list)
    # (number of responses received before it, progress revision)
    progress: list[tuple[int, int]] = field(default_factory=list)
    canceled_compact_revision: int = 0

    def __post_init__(self) -> None:
        unknown = set(self.filters) - FILTERS
        if unknown:
            raise ValueError(f"WatchRecord filters {sorted(unknown)} are not among {sorted(FILTERS)}")

    def selects(self, ev: WatchEvent) -> bool:
        """The range and filters let ``ev`` through."""
        if ev.kind == "put" and "noput" in self.filters:
            return False
        if ev.kind == "delete" and "nodelete" in self.filters:
            return False
        return in_range(ev.key, self.key, self.range_end)

    def events(self) -> list[tuple[int, WatchEvent]]:
        """Every received event with the index of its response."""
        return [(i, ev) for i, resp in enumerate(self.responses) for ev in resp]

    def last_seen(self) -> int:
        """The revision a resuming watcher has seen up to: the last event's
        or the last progress revision, whichever is later (0: nothing)."""
        last = max((ev.revision for resp in self.responses for ev in resp), default=0)
        return max([last, *(rev for _, rev in self.progress)])


def in_range(key: bytes, start: bytes, range_end: bytes) -> bool:
    """etcd's range forms: ``range_end`` empty is the one key ``start``;
    ``b"\\x00"`` every key >= ``start``; else ``start <= key < range_end``."""
    if range_end == b"":
        return key == start
    if range_end == b"\x00":
        return key >= start
    return start <= key < range_end


def logical_name(name: str) -> tuple[str, int]:
    """``"w3#2"`` -> ``("w3", 2)``; a name without ``#`` is its own watcher."""
    base, sep, attempt = name.rpartition("#")
    if sep and attempt.isdigit():
        return base, int(attempt)
    return name, 0


class _Log:
    """The reference log, indexed: events by revision, the previous value
    of each event's key."""

    def __init__(self, log: Iterable[WatchEvent]) -> None:
        self.by_rev: dict[int, list[WatchEvent]] = defaultdict(list)
        self.prev: dict[tuple[int, bytes], bytes | None] = {}  # the key's value before the revision
        self.rewritten: set[tuple[int, bytes]] = set()  # keys written twice in one revision
        self.last: dict[tuple[int, bytes], WatchEvent] = {}  # a key's last event in a revision
        self.revisions: list[int] = []
        self.problems: list[str] = []
        state: dict[bytes, bytes] = {}
        last = 0
        for ev in log:
            if ev.revision < last:
                self.problems.append(f"log: {ev.show()} comes after revision {last}")
            if ev.revision != last:
                self.revisions.append(ev.revision)
            last = ev.revision
            self.by_rev[ev.revision].append(ev)
            ident = (ev.revision, ev.key)
            self.last[ident] = ev
            if ident in self.prev:
                self.rewritten.add(ident)
            else:
                self.prev[ident] = state.get(ev.key)
            if ev.kind == "put":
                state[ev.key] = ev.value
            else:
                state.pop(ev.key, None)
        self.last_revision = last

    def selected(self, rec: WatchRecord, lo: int, hi: int) -> list[WatchEvent]:
        """The log events ``rec`` selects with ``lo <= revision <= hi``."""
        out: list[WatchEvent] = []
        revisions = self.revisions
        for k in range(bisect_left(revisions, lo), len(revisions)):
            rev = revisions[k]
            if rev > hi:
                break
            out.extend(ev for ev in self.by_rev[rev] if rec.selects(ev))
        return out


class _Report:
    def __init__(self, name: str) -> None:
        self.name = name
        self.lines: list[str] = []
        self._counts: Counter[str] = Counter()

    def add(self, prop: str, text: str) -> None:
        self._counts[prop] += 1
        n = self._counts[prop]
        if n <= _VIOLATIONS_PER_CHECK_MAX:
            self.lines.append(f"{self.name}: {prop}: {text}")

    def done(self) -> list[str]:
        for prop, n in sorted(self._counts.items()):
            if n > _VIOLATIONS_PER_CHECK_MAX:
                self.lines.append(f"{self.name}: {prop}: ... and {n - _VIOLATIONS_PER_CHECK_MAX} more")
        return self.lines


def _start_of(rec: WatchRecord, events: list[tuple[int, WatchEvent]]) -> int | None:
    """The first revision the watch must deliver from: its start revision,
    or for ``0`` (now) the first revision it received (None: unknown)."""
    if rec.start_revision > 0:
        return rec.start_revision
    return events[0][1].revision if events else None


def _compacted_starts(records: Iterable[WatchRecord], compact_revision: int) -> set[int]:
    """Start revisions at or below the compaction: there, only the events a
    compaction keeps are required (see ``_required``)."""
    return {r.start_revision for r in records if 0 < r.start_revision <= compact_revision}


def _required(ref: _Log, ev: WatchEvent, exempt: set[int]) -> bool:
    """An event a watch from its revision must get. At a compacted start
    revision C only a key's last write in C, if a put: a compaction at C
    keeps each key's last version <= C unless it is a tombstone (etcd),
    and a key written twice in C (paxoskv.v1 batches) keeps the last."""
    return ev.revision not in exempt or (ev.kind == "put" and ref.last[(ev.revision, ev.key)] is ev)


def _check_sequence(rep: _Report, ref: _Log, rec: WatchRecord, events: list[tuple[int, WatchEvent]],
                    start: int | None, upto: int, exempt: set[int]) -> None:
    """ordered, unique and reliable over ``events`` (``start``..``upto``)."""
    last_rev = 0
    for _, ev in events:
        if ev.revision < last_rev:
            rep.add("ordered", f"{ev.show()} received after revision {last_rev}")
        last_rev = max(last_rev, ev.revision)
    seen = Counter((ev.revision, ev.key) for _, ev in events)
    in_log = Counter((lv.revision, lv.key) for rev in {r for r, _ in seen} for lv in ref.by_rev.get(rev, ()))
    for (rev, key), n in sorted(seen.items()):
        if n > max(in_log[(rev, key)], 1):
            rep.add("unique", f"{key!r}@{rev} received {n} times")
    if start is None:
        return
    for ev in _missing(ref, rec, [ev for _, ev in events], start, upto, exempt):
        rep.add("reliable", f"{ev.show()} missing (watching from {start}, saw up to {upto})")


def _missing(ref: _Log, rec: WatchRecord, received: list[WatchEvent], lo: int, hi: int,
             exempt: set[int]) -> Iterable[WatchEvent]:
    """The log events ``rec`` selects in ``lo..hi`` that ``received`` lacks."""
    got = Counter((ev.revision, ev.key, ev.kind, ev.value) for ev in received)
    for ev in ref.selected(rec, lo, hi):
        ident = (ev.revision, ev.key, ev.kind, ev.value)
        if got[ident] > 0:
            got[ident] -= 1
        elif _required(ref, ev, exempt):
            yield ev


def _in_order(have: list[tuple[bytes, str, bytes]], want: list[tuple[bytes, str, bytes]]) -> bool:
    """``have`` is ``want`` with some left out (those a compaction may take), in order."""
    it = iter(want)
    return all(any(h == w for w in it) for h in have)


def check_record(rec: WatchRecord, ref: _Log | list[WatchEvent], last_revision: int | None = None,
                 compact_revision: int = 0) -> list[str]:
    """The per-record guarantees of one watch (see the module's rules)."""
    ref = ref if isinstance(ref, _Log) else _Log(ref)
    last_revision = ref.last_revision if last_revision is None else last_revision
    rep = _Report(rec.name)
    events = rec.events()
    if rec.canceled_compact_revision:
        # etcd cancels a watch whose next revision is below the compaction
        nxt = rec.last_seen() + 1 if rec.last_seen() else rec.start_revision
        if nxt <= 0 or nxt >= rec.canceled_compact_revision:
            rep.add("canceled", f"next revision {nxt} is not below the compaction "
                    f"{rec.canceled_compact_revision} it was cancelled for")
    # exact: each event is the log's, selected, not below the start
    for _, ev in events:
        if not in_range(ev.key, rec.key, rec.range_end):
            rep.add("exact", f"{ev.show()} outside the range [{rec.key!r}, {rec.range_end!r})")
        elif not rec.selects(ev):
            rep.add("exact", f"{ev.show()} passed the filters {sorted(rec.filters)}")
        if 0 < ev.revision < rec.start_revision:
            rep.add("exact", f"{ev.show()} is below the start revision {rec.start_revision}")
        match = [lv for lv in ref.by_rev.get(ev.revision, ()) if lv.key == ev.key and lv.kind == ev.kind]
        if not match:
            rep.add("exact", f"{ev.show()} is not in the log")
            continue
        if all(ev.value != lv.value for lv in match):
            rep.add("exact", f"{ev.show()} value {ev.value!r}, log has {match[0].value!r}")
        if rec.prev_kv and (ev.revision, ev.key) in ref.rewritten:
            continue  # which write a second one's prev_kv shows is not defined (etcd refuses such a Txn)
        want_prev = ref.prev.get((ev.revision, ev.key)) if rec.prev_kv else None
        if ev.prev_value is None and ev.revision - 1 < compact_revision:
            continue  # the revision before it is compacted: etcd then sends no prev_kv
        if ev.prev_value != want_prev:
            what = "prev_kv" if rec.prev_kv else "prev_kv not asked for"
            rep.add("exact", f"{ev.show()} {what}: got {ev.prev_value!r}, log has {want_prev!r}")
    # atomic: one revision, one response, all its selected events
    resp_of: dict[int, set[int]] = defaultdict(set)
    for i, ev in events:
        resp_of[ev.revision].add(i)
    for rev, where in sorted(resp_of.items()):
        if len(where) > 1:
            rep.add("atomic", f"revision {rev} split across responses {sorted(where)}")
    exempt = _compacted_starts([rec], compact_revision)
    for i, resp in enumerate(rec.responses):
        for rev in sorted({ev.revision for ev in resp}):
            want = [lv for lv in ref.by_rev.get(rev, ()) if rec.selects(lv)]
            want_ids = [(lv.key, lv.kind) for lv in want]
            # events outside the selection or the log are reported as inexact above
            mine = [ev for ev in resp if ev.revision == rev and rec.selects(ev) and (ev.key, ev.kind) in want_ids]
            have_ids = [(ev.key, ev.kind) for ev in mine]
            needed = Counter((lv.key, lv.kind) for lv in want if _required(ref, lv, exempt))
            if Counter(have_ids) - Counter(want_ids) or needed - Counter(have_ids):
                if len(resp_of[rev]) == 1:  # a split is reported above
                    rep.add("atomic", f"response {i} has {len(have_ids)} of revision {rev}'s "
                            f"{len(want)} selected events")
                continue
            have_values = [(ev.key, ev.kind, ev.value) for ev in mine]
            want_values = [(lv.key, lv.kind, lv.value) for lv in want]
            if Counter(have_values) - Counter(want_values):
                rep.add("exact", f"revision {rev}'s values in response {i} are {have_values}, the log's {want_values}")
            elif not _in_order(have_values, want_values):
                rep.add("ordered", f"revision {rev}'s events in response {i} are not in the log's order")
    # ordered, unique, reliable
    start = _start_of(rec, events)
    upto = rec.last_seen()
    _check_sequence(rep, ref, rec, events, start, upto, exempt)
    _check_progress(rep, ref, rec, events, start, last_revision, exempt)
    return rep.done()


def _check_progress(rep: _Report, ref: _Log, rec: WatchRecord, events: list[tuple[int, WatchEvent]],
                    start: int | None, last_revision: int, exempt: set[int]) -> None:
    """Progress never lies. Each notification ``(before, P)`` is answered in
    O(log) when it holds: no event after it has a revision <= P (a suffix
    minimum of revisions), and every selected, required log event in
    ``start..P`` was matched by an event received before it. An event
    identity (revision, key, kind, value) occurring k times in the log in
    ``start..P`` is matched by the first c received; it is satisfied from
    the event position after its last required occurrence's match
    (``_missing``'s rule, occurrence by occurrence), so "something is
    missing before P" is a prefix maximum over the identities in revision
    order. A notification that fails is enumerated as ``_missing`` does."""
    if not rec.progress:
        return
    n = len(events)
    where = [i for i, _ in events]  # response index per event: non-decreasing
    suffix_min = [0] * (n + 1)
    low = last_revision + 1
    suffix_min[n] = low
    for j in range(n - 1, -1, -1):
        low = min(low, events[j][1].revision)
        suffix_min[j] = low
    top = max(prog for _, prog in rec.progress)
    idents: list[tuple[int, bytes, str, bytes]] = []  # in log order, first occurrence of each
    occurrences: dict[tuple[int, bytes, str, bytes], list[WatchEvent]] = {}
    if start is not None:
        for lv in ref.selected(rec, start, top):
            ident = (lv.revision, lv.key, lv.kind, lv.value)
            if ident not in occurrences:
                occurrences[ident] = []
                idents.append(ident)
            occurrences[ident].append(lv)
    positions: dict[tuple[int, bytes, str, bytes], list[int]] = defaultdict(list)
    for j, (_, ev) in enumerate(events):
        ident = (ev.revision, ev.key, ev.kind, ev.value)
        if ident in occurrences:
            positions[ident].append(j)
    never = n + 1
    ident_revs: list[int] = []
    prefix_max: list[int] = [0]  # prefix_max[k]: the latest "satisfied from" of the first k identities
    for ident in idents:
        occ = occurrences[ident]
        need = max((k + 1 for k, lv in enumerate(occ) if _required(ref, lv, exempt)), default=0)
        got = positions.get(ident, [])
        sat = 0 if need == 0 else (got[need - 1] + 1 if len(got) >= need else never)
        ident_revs.append(ident[0])
        prefix_max.append(max(prefix_max[-1], sat))
    for before, prog in rec.progress:
        if prog > last_revision:
            rep.add("progress", f"progress revision {prog} above the store's last revision {last_revision}")
        pos = bisect_left(where, before)  # events[:pos] came before the notification
        if suffix_min[pos] <= prog:
            for _, ev in events[pos:]:
                if ev.revision <= prog:
                    rep.add("progress", f"{ev.show()} received after progress revision {prog}")
        if start is None:
            continue
        upto = bisect_right(ident_revs, prog)
        if prefix_max[upto] <= pos:
            continue
        for ident in idents[:upto]:
            c = bisect_left(positions.get(ident, []), pos)
            for lv in occurrences[ident][c:]:
                if _required(ref, lv, exempt):
                    rep.add("progress", f"progress revision {prog} but {lv.show()} not received before it")


def check_resumed(records: list[WatchRecord], ref: _Log | list[WatchEvent], compact_revision: int = 0) -> list[str]:
    """Resumable: the records of one logical watcher, in order, read as one
    watch (no gap, no duplicate, in order) from the first record's start to
    the last one's last seen revision. Each record is checked on its own by
    ``check_record``; this checks the seams."""
    ref = ref if isinstance(ref, _Log) else _Log(ref)
    if len(records) < 2:
        return []
    name = logical_name(records[0].name)[0]
    rep = _Report(name)
    seen = 0
    for prev, rec in zip(records, records[1:], strict=False):
        seen = max(seen, prev.last_seen())
        if prev.canceled_compact_revision:
            rep.add("resumable", f"{rec.name} follows {prev.name}, which was cancelled at compaction")
        if seen and rec.start_revision > seen + 1:
            rep.add("resumable", f"{rec.name} starts at {rec.start_revision}, after last seen {seen}: "
                    f"revisions {seen + 1}..{rec.start_revision - 1} skipped")
    events: list[tuple[int, WatchEvent]] = []
    for n, rec in enumerate(records):
        events.extend((n, ev) for _, ev in rec.events())
        if rec.canceled_compact_revision:
            break  # the logical watcher ends there (reported above if a record follows)
    first = records[0]
    start = _start_of(first, events)
    upto = max(rec.last_seen() for rec in records)
    before = len(rep.lines)
    _check_sequence(rep, ref, first, events, start, upto, _compacted_starts(records, compact_revision))
    # the sequence checks name the property as resumability across the seams
    rep.lines[before:] = [line.replace(f"{name}: ", f"{name}: resumable/", 1) for line in rep.lines[before:]]
    return rep.done()


def check_watches(log: list[WatchEvent], records: list[WatchRecord], compact_revision: int = 0,
                  last_revision: int | None = None) -> list[str]:
    """Every guarantee for every record, and resumability for each logical
    watcher (records named ``"<watcher>#<attempt>"``). ``compact_revision``
    is the store's final compaction: no watch can have been cancelled at a
    compaction above it. ``last_revision`` is the store's last revision
    (default: the log's last). Returns violations, empty when all hold."""
    ref = _Log(log)
    out = list(ref.problems)
    for rec in records:
        if rec.canceled_compact_revision > compact_revision:
            out.append(f"{rec.name}: canceled: at compaction {rec.canceled_compact_revision}, "
                       f"above the store's compaction {compact_revision}")
        out.extend(check_record(rec, ref, last_revision, compact_revision))
    groups: dict[str, list[tuple[int, WatchRecord]]] = defaultdict(list)
    for rec in records:
        base, attempt = logical_name(rec.name)
        groups[base].append((attempt, rec))
    for base in sorted(groups):
        chain = [rec for _, rec in sorted(groups[base], key=lambda p: p[0])]
        out.extend(check_resumed(chain, ref, compact_revision))
    return out
