"""The nemesis: faults on real processes and real links, on a seeded schedule.

Rules
-----
* The schedule is a sequence of *episodes*: one fault, held for a while,
  then undone, then a quiet gap. Kinds are dealt from a shuffled *deck*
  holding every allowed kind (``EPISODES`` gives the copies of each), so
  every kind comes up once per deck even in a short run. Every random choice
  of an episode (its kind, whether it aims at the leader, the fallback
  target, hold time, gap) is drawn from the nemesis's own
  ``random.Random(seed)`` in a fixed order before anything is looked at, so
  a seed always gives the same schedule of choices. Which node *is* the
  leader at that moment depends on the run. Before each episode the nemesis
  waits (a few seconds at most) until some node leads again.
* Fault families (``--faults``) and the episodes they allow:

  ``kill``       ``kill``: SIGKILL a node (the leader with probability
                 ``p_leader``), restart it after a moment.
                 ``kill-fsync``: SIGKILL the leader (same coin) at the first
                 instant one of its threads is inside fsync/fdatasync, read
                 from ``/proc`` while clients write (the write path).
                 ``kill-election``: SIGKILL the leader (always), watch the others every
                 few ms, and SIGKILL the first that runs for leader or wins,
                 while the election is in progress; restart both.
                 And at the end of the run, a full-cluster SIGKILL and
                 restart (``kill_all``).
  ``pause``      ``pause``: SIGSTOP a node (leader with ``p_leader``), SIGCONT
                 after the hold: a stale leader coming back.
  ``partition``  ``isolate-leader``, ``split`` (a random majority and
                 minority), ``bridge`` (two sides that cannot talk, one node
                 that talks to both); each held, then healed. Only on a
                 network that supports partitions.

* Every fault is recorded as a ``FaultEvent`` with start and end times.
  After every change the nemesis records whether a majority of nodes was up
  (running, not paused) *and* connected to each other (``HealthPoint``);
  the availability figure is computed over those intervals.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from paxoskv.chaos.cluster import Cluster
from paxoskv.chaos.monitor import Monitor
from paxoskv.chaos.net import LoopbackNetwork, NamespaceNetwork

__all__ = [
    "EPISODES",
    "FAULT_FAMILIES",
    "FaultEvent",
    "HealthPoint",
    "Nemesis",
    "NemesisConfig",
    "majority_connected",
]

FAULT_FAMILIES = ("kill", "pause", "partition")
# family -> (episode, copies per deck)
EPISODES: dict[str, tuple[tuple[str, int], ...]] = {
    "kill": (("kill", 2), ("kill-fsync", 1), ("kill-election", 1)),
    "pause": (("pause", 2),),
    "partition": (("isolate-leader", 1), ("split", 1), ("bridge", 1)),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class NemesisConfig:
    faults: frozenset[str]
    p_leader: float = 0.7
    hold_s: tuple[float, float] = (0.5, 3.0)  # how long a fault is held
    down_s: tuple[float, float] = (0.1, 1.5)  # how long a killed node stays down
    gap_s: tuple[float, float] = (0.2, 1.5)  # quiet time between episodes
    fsync_watch_s: float = 1.0  # kill-fsync: how long to wait for an fsync before killing anyway
    election_watch_s: float = 3.0  # kill-election: how long to watch for a candidate
    leader_wait_s: float = 5.0  # before an episode: wait this long at most for a known leader

    def __post_init__(self) -> None:
        unknown = set(self.faults) - set(FAULT_FAMILIES)
        assert not unknown, f"unknown fault families {sorted(unknown)}"


@dataclass(slots=True)
class FaultEvent:
    kind: str
    targets: tuple[int, ...]
    start_s: float
    end_s: float | None = None
    detail: str = ""

    def to_json(self) -> dict:
        return {
            "kind": self.kind,
            "targets": list(self.targets),
            "start_s": round(self.start_s, 3),
            "end_s": None if self.end_s is None else round(self.end_s, 3),
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class HealthPoint:
    at_s: float
    majority_ok: bool


def majority_connected(ids: Iterable[int], up: Iterable[int], cut: Iterable[tuple[int, int]]) -> bool:
    """Whether some group of ``up`` nodes that can all reach each other (through
    each other) under the ``cut`` pairs is a majority of ``ids``."""
    ids = list(ids)
    up = set(up)
    cut = {(min(a, b), max(a, b)) for a, b in cut}
    need = len(ids) // 2 + 1
    seen: set[int] = set()
    for i in sorted(up):
        if i in seen:
            continue
        group = {i}
        frontier = [i]
        while frontier:
            a = frontier.pop()
            for b in up:
                if b not in group and (min(a, b), max(a, b)) not in cut:
                    group.add(b)
                    frontier.append(b)
        seen |= group
        if len(group) >= need:
            return True
    return False


@dataclass(slots=True)
class _Draw:
    """One episode's random choices, drawn before looking at the cluster."""

    kind: str
    aim_leader: bool
    pick: float  # a node chosen by this fraction when not aiming at the leader
    shuffle_seed: int
    hold_s: float
    down_s: float
    gap_s: float


class Nemesis:
    def __init__(
        self,
        cfg: NemesisConfig,
        cluster: Cluster,
        network: NamespaceNetwork | LoopbackNetwork,
        monitor: Monitor,
        *,
        seed: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self.cluster = cluster
        self.network = network
        self.monitor = monitor
        self.rng = random.Random(f"{seed}/nemesis")
        self.clock = clock
        self.events: list[FaultEvent] = []
        self.health: list[HealthPoint] = []
        self.cut: frozenset[tuple[int, int]] = frozenset()
        self.notes: list[str] = []
        families = set(cfg.faults)
        if "partition" in families and not network.partitions_supported:
            families.discard("partition")
            self.notes.append(f"partition faults skipped: {network.why_unsupported}")
        self.menu: list[tuple[str, int]] = [e for f in FAULT_FAMILIES if f in families for e in EPISODES[f]]
        self._write_seen = asyncio.Event()
        self._deck: list[str] = []

    # ---- Health bookkeeping -----------------------------------------------------------

    def majority_ok(self) -> bool:
        c = self.cluster
        return majority_connected(c.ids, {i for i in c.ids if c.up(i)}, self.cut)

    def note_health(self) -> None:
        ok = self.majority_ok()
        if not self.health or self.health[-1].majority_ok != ok:
            self.health.append(HealthPoint(self.clock(), ok))

    def on_write(self) -> None:
        """The workload calls this when it sends a put (kill-fsync waits for one)."""
        self._write_seen.set()

    # ---- The schedule ----------------------------------------------------------------

    def draw(self) -> _Draw:
        r = self.rng
        if not self._deck:
            self._deck = [k for k, copies in self.menu for _ in range(copies)]
            r.shuffle(self._deck)
        kind = self._deck.pop() if self._deck else "none"
        return _Draw(
            kind=kind,
            aim_leader=r.random() < self.cfg.p_leader,
            pick=r.random(),
            shuffle_seed=r.getrandbits(32),
            hold_s=r.uniform(*self.cfg.hold_s),
            down_s=r.uniform(*self.cfg.down_s),
            gap_s=r.uniform(*self.cfg.gap_s),
        )

    async def run(self, until_s: float) -> None:
        """Episodes until the campaign clock reaches ``until_s``."""
        self.note_health()
        if not self.menu:
            await asyncio.sleep(max(0.0, until_s - self.clock()))
            return
        while self.clock() < until_s:
            d = self.draw()
            await self._await_leader(until_s)
            if self.clock() >= until_s:
                break
            await self._episode(d, until_s)
            gap = min(d.gap_s, max(0.0, until_s - self.clock()))
            await asyncio.sleep(gap)

    async def _await_leader(self, until_s: float) -> None:
        """Start an episode once a leader is known again (at most ``leader_wait_s``),
        so that faults aimed at the leader find one and the run is not all outage."""
        deadline = min(until_s, self.clock() + self.cfg.leader_wait_s)
        while self.monitor.leader() is None and self.clock() < deadline:
            await asyncio.sleep(0.05)

    def _target(self, d: _Draw, among: Iterable[int] | None = None) -> int:
        ids = sorted(among) if among is not None else self.cluster.ids
        if d.aim_leader:
            lid = self.monitor.leader()
            if lid is not None and lid in ids:
                return lid
        return ids[min(int(d.pick * len(ids)), len(ids) - 1)]

    def _begin(self, kind: str, targets: Iterable[int], detail: str = "") -> FaultEvent:
        ev = FaultEvent(kind, tuple(targets), self.clock(), detail=detail)
        self.events.append(ev)
        return ev

    def _end(self, ev: FaultEvent) -> None:
        ev.end_s = self.clock()
        self.note_health()

    async def _hold(self, hold_s: float, until_s: float) -> None:
        await asyncio.sleep(max(0.0, min(hold_s, until_s - self.clock())))

    async def _episode(self, d: _Draw, until_s: float) -> None:
        c = self.cluster
        if d.kind == "kill":
            t = self._target(d)
            ev = self._begin("kill", [t], "leader" if t == self.monitor.leader() else "")
            await asyncio.to_thread(c.kill, t)
            self.note_health()
            await asyncio.sleep(d.down_s)
            c.start(t)
            self._end(ev)
        elif d.kind == "kill-fsync":
            t = self._target(d)
            was_leader = t == self.monitor.leader()
            self._write_seen.clear()
            try:
                await asyncio.wait_for(self._write_seen.wait(), 1.0)
            except asyncio.TimeoutError:
                pass
            ev = self._begin("kill-fsync", [t])
            caught = await asyncio.to_thread(self._kill_in_fsync, t, self.cfg.fsync_watch_s)
            ev.detail = ("leader, " if was_leader else "") + (
                "inside fsync" if caught else "no fsync seen: killed anyway"
            )
            self.note_health()
            await asyncio.sleep(d.down_s)
            c.start(t)
            self._end(ev)
        elif d.kind == "kill-election":
            first = self._target(_Draw("", True, d.pick, 0, 0, 0, 0))  # always the leader when known
            ev = self._begin("kill-election", [first], "leader" if first == self.monitor.leader() else "")
            await asyncio.to_thread(c.kill, first)
            self.note_health()
            second, how = await self._watch_election(exclude=first)
            if second is None:
                second = self._target(_Draw("", False, d.pick, 0, 0, 0, 0), [i for i in c.ids if i != first])
                how = "no candidate seen in time"
            await asyncio.to_thread(c.kill, second)
            ev.targets = (first, second)
            ev.detail += f"{', ' if ev.detail else ''}then node {second} ({how})"
            self.note_health()
            await asyncio.sleep(d.down_s)
            c.start(first)
            c.start(second)
            self._end(ev)
        elif d.kind == "pause":
            t = self._target(d)
            ev = self._begin("pause", [t], "leader" if t == self.monitor.leader() else "")
            c.pause(t)
            self.note_health()
            await self._hold(d.hold_s, until_s)
            c.resume(t)
            self._end(ev)
        elif d.kind in ("isolate-leader", "split", "bridge"):
            cut, detail, targets = self._partition_plan(d)
            ev = self._begin(d.kind, targets, detail)
            await asyncio.to_thread(self.network.partition, cut)
            self.cut = frozenset((min(a, b), max(a, b)) for a, b in cut)
            self.note_health()
            await self._hold(d.hold_s, until_s)
            await asyncio.to_thread(self.network.heal)
            self.cut = frozenset()
            self._end(ev)
        else:
            await self._hold(d.hold_s, until_s)

    def _partition_plan(self, d: _Draw) -> tuple[list[tuple[int, int]], str, list[int]]:
        ids = self.cluster.ids
        order = list(ids)
        random.Random(d.shuffle_seed).shuffle(order)
        if d.kind == "isolate-leader":
            t = self._target(_Draw("", True, d.pick, 0, 0, 0, 0))
            rest = [i for i in ids if i != t]
            return [(t, j) for j in rest], f"{{{t}}} | {set(rest)}", [t]
        if d.kind == "split":
            minority = sorted(order[: len(ids) // 2])
            majority = sorted(order[len(ids) // 2 :])
            return (
                [(a, b) for a in minority for b in majority],
                f"{set(minority)} | {set(majority)}",
                minority,
            )
        # bridge: two sides that cannot talk to each other, one node in both
        bridge = order[0]
        rest = order[1:]
        left, right = sorted(rest[: len(rest) // 2]), sorted(rest[len(rest) // 2 :])
        return [(a, b) for a in left for b in right], f"{set(left)} <-{bridge}-> {set(right)}", [bridge]

    def _kill_in_fsync(self, i: int, watch_s: float) -> bool:
        """(Worker thread) SIGKILL node ``i`` as soon as it is seen in fsync."""
        c = self.cluster
        deadline = time.monotonic() + watch_s
        caught = False
        while time.monotonic() < deadline:
            if c.in_fsync(i):
                caught = True
                break
        c.kill(i)
        return caught

    async def _watch_election(self, exclude: int) -> tuple[int | None, str]:
        """Poll the others closely; the first that runs for leader or wins."""
        others = [i for i in self.cluster.ids if i != exclude]
        deadline = self.clock() + self.cfg.election_watch_s
        old_ballot = max((st.ballot for st in self.monitor.status.values()), default=(0, 0))
        while self.clock() < deadline:
            seen = await self.monitor.poll_once(others)
            for i, st in sorted(seen.items()):
                if st.role in ("precandidate", "candidate"):
                    return i, f"{st.role}"
                if st.role == "leader" and st.ballot > old_ballot:
                    return i, "just elected"
            await asyncio.sleep(0.005)
        return None, ""

    # ---- The end -------------------------------------------------------------------------

    async def kill_all(self, down_s: float = 0.5) -> FaultEvent:
        """SIGKILL every node at once, restart them all."""
        c = self.cluster
        ev = self._begin("kill-all", c.ids)
        await asyncio.to_thread(c.kill_all)
        self.note_health()
        await asyncio.sleep(down_s)
        for i in c.ids:
            c.start(i)
        self._end(ev)
        return ev

    async def heal_all(self) -> None:
        """Undo everything: heal the network, resume paused nodes, start dead ones."""
        if self.cut:
            await asyncio.to_thread(self.network.heal)
            self.cut = frozenset()
        for i in self.cluster.ids:
            self.cluster.resume(i)
            if not self.cluster.nodes[i].running:
                self.cluster.start(i)
        self.note_health()
