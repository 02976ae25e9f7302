"""An in-memory network of cores for unit tests (after etcd-io/raft's
``network``): deliver messages in FIFO order, with drop/isolate/cut filters.
Persistence is modelled by keeping what each Ready asked to persist."""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from paxoskv.paxos.core import Core
from paxoskv.paxos.types import Config, Entry, Message, ReadState, Role, Value, ZERO_BALLOT, Ballot


@dataclass
class Disk:
    promised: Ballot = ZERO_BALLOT
    accepted: dict[int, Entry] = field(default_factory=dict)
    chosen: dict[int, Value] = field(default_factory=dict)
    applied: list[tuple[int, Value]] = field(default_factory=list)


class Net:
    def __init__(self, n: int = 3, seed: int = 1, node_cfg: dict[int, dict] | None = None, **cfg) -> None:
        self.ids = list(range(1, n + 1))
        self.cfg = cfg
        self.node_cfg = node_cfg or {}  # per node: Config fields over ``cfg``
        self.disks = {i: Disk() for i in self.ids}
        self.cores: dict[int, Core] = {}
        self.rngs = {i: random.Random(seed * 100 + i) for i in self.ids}
        for i in self.ids:
            self.start(i)
        self.queue: deque[Message] = deque()
        self.cut_links: set[tuple[int, int]] = set()
        self.drop: Callable[[Message], bool] = lambda m: False  # messages lost on the way
        self.down: set[int] = set()
        self.reads: dict[int, list[ReadState]] = {i: [] for i in self.ids}
        self.sent: list[Message] = []

    def config(self, i: int) -> Config:
        return Config(node_id=i, peers=tuple(self.ids), **{**self.cfg, **self.node_cfg.get(i, {})})

    def start(self, i: int) -> None:
        d = self.disks[i]
        self.cores[i] = Core(
            self.config(i), self.rngs[i], promised=d.promised, accepted=d.accepted,
            chosen=d.chosen, applied_index=len(d.applied),
        )

    def crash(self, i: int) -> None:
        self.down.add(i)

    def restart(self, i: int) -> None:
        self.down.discard(i)
        self.start(i)

    def isolate(self, i: int) -> None:
        for j in self.ids:
            if j != i:
                self.cut_links |= {(i, j), (j, i)}

    def heal(self) -> None:
        self.cut_links.clear()

    def process(self, i: int) -> None:
        """Handle Readys as a runtime's pump does: until has_ready() is False."""
        self._process_one(i)
        while self.cores[i].has_ready():
            self._process_one(i)

    def _process_one(self, i: int) -> None:
        core = self.cores[i]
        rd = core.ready()
        for m in rd.messages_early:  # may leave before the write
            self.sent.append(m)
            self.queue.append(m)
        d = self.disks[i]
        if rd.promised is not None:
            d.promised = rd.promised
        for e in rd.accepted:
            d.accepted[e.slot] = e
        for s, v in rd.chosen:
            d.chosen[s] = v
        for m in rd.messages:
            self.sent.append(m)
            self.queue.append(m)
        d.applied.extend(rd.committed)
        self.reads[i].extend(rd.reads)
        core.advance(rd)

    def deliver_all(self, limit: int = 100_000) -> int:
        n = 0
        for i in self.ids:
            if i not in self.down:
                self.process(i)
        while self.queue and n < limit:
            m = self.queue.popleft()
            n += 1
            if m.to in self.down or m.frm in self.down or (m.frm, m.to) in self.cut_links or self.drop(m):
                continue
            self.cores[m.to].step(m)
            self.process(m.to)
        assert n < limit, "network did not quiesce"
        return n

    def tick(self, ticks: int = 1) -> None:
        for _ in range(ticks):
            for i in self.ids:
                if i not in self.down:
                    self.cores[i].tick()
            self.deliver_all()

    def leaders(self) -> list[int]:
        return [i for i in self.ids if i not in self.down and self.cores[i].role is Role.LEADER]

    def elect(self, max_ticks: int = 500) -> int:
        for _ in range(max_ticks):
            self.tick()
            ls = self.leaders()
            if len(ls) == 1 and all(self.cores[i].leader_id == ls[0] for i in self.ids if i not in self.down and (ls[0], i) not in self.cut_links):
                return ls[0]
        raise AssertionError(f"no leader after {max_ticks} ticks: {[self.cores[i].status() for i in self.ids]}")

    def applied_values(self, i: int) -> list[bytes]:
        return [c for _, v in self.disks[i].applied for c in v]
