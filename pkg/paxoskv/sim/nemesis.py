"""The nemesis: a seeded schedule of faults during the safety phase.

Rules:

- The nemesis has its own ``random.Random``. It acts at exponentially
  distributed intervals (the mean is drawn per run) and picks an action by
  weight among those its ``FaultProfile`` allows. Actions that need a target
  choose it from the cluster as it is at that moment (the current leader, an
  up node), which is still a function of the seed.
- Partition actions *replace* the current cut set; ``heal`` clears it. A
  flapping node toggles its own cut set (the network's second layer) on a
  period until its flap ends, independent of the other partitions.
- A crash is a power loss (the node's unsynced writes are lost: the storage's
  crash model) or a process kill (the OS keeps every write); either usually
  schedules the node's restart after a random downtime; at most ``down_max``
  nodes are down at once (drawn per run, may be all of them).
- A full disk makes every write of one node fail for a while: the node stops
  at its next write (as the real one must) and cannot start until the disk
  has room again; then a supervisor restarts it.
- A pause freezes a node (a GC pause, SIGSTOP): no ticks, and everything that
  reaches it waits in its inbox until it resumes. It keeps its memory.
- ``stop`` ends everything (the liveness phase): no more actions, flaps end.
  Healing the network and restarting nodes is the simulation's job.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from paxoskv.sim.network import Network
from paxoskv.sim.scheduler import Scheduler


@dataclass(frozen=True, slots=True)
class FaultProfile:
    name: str
    lossy: bool  # message loss and duplication (delay and reordering are always on)
    partitions: bool  # symmetric, asymmetric, leader isolation, splits, flapping
    crashes: bool  # power loss (losing unsynced writes), process kill, full disk, restart
    pauses: bool  # process pauses


FAULT_PROFILES: dict[str, FaultProfile] = {
    p.name: p
    for p in (
        FaultProfile("none", lossy=False, partitions=False, crashes=False, pauses=False),
        FaultProfile("lossy", lossy=True, partitions=False, crashes=False, pauses=False),
        FaultProfile("partition", lossy=False, partitions=True, crashes=False, pauses=False),
        FaultProfile("crash", lossy=False, partitions=False, crashes=True, pauses=True),
        FaultProfile("full", lossy=True, partitions=True, crashes=True, pauses=True),
    )
}


class Cluster(Protocol):
    """What the nemesis needs from the simulation."""

    scheduler: Scheduler
    network: Network
    node_ids: tuple[int, ...]

    def is_up(self, node_id: int) -> bool: ...

    def leader_id(self) -> int | None: ...

    def crash(self, node_id: int, power_loss: bool) -> None: ...

    def disk_full(self, node_id: int, duration_us: int) -> None: ...

    def restart(self, node_id: int) -> None: ...

    def pause(self, node_id: int, duration_us: int) -> None: ...

    def note(self, text: str) -> None: ...


class Nemesis:
    def __init__(self, cluster: Cluster, rng: random.Random, profile: FaultProfile) -> None:
        self.cluster = cluster
        self.rng = rng
        self.profile = profile
        self.active = False
        n = len(cluster.node_ids)
        self.interval_mean_us = rng.randint(20_000, 250_000)
        self.down_max = rng.randint(1, n)
        self.restart_probability = rng.choice((0.6, 0.9, 1.0))
        self.downtime_max_us = rng.choice((50_000, 300_000, 800_000))
        self._flapping: int | None = None
        self._flap_token = 0
        self.actions_run: dict[str, int] = {}
        # (name, weight, action): the action table, filtered by the profile.
        table: list[tuple[str, int, Callable[[], None]]] = []
        if profile.partitions:
            table += [
                ("split", 2, self._split),
                ("minority", 2, self._minority),
                ("isolate_leader", 3, self._isolate_leader),
                ("one_way", 2, self._one_way),
                ("flap", 1, self._flap),
                ("heal", 5, self._heal),
            ]
        if profile.crashes:
            table += [
                ("crash", 2, self._crash),
                ("crash_leader", 2, self._crash_leader),
                ("restart", 1, self._restart),
                ("disk_full", 1, self._disk_full),
            ]
        if profile.pauses:
            table += [("pause", 1, self._pause), ("pause_leader", 1, self._pause_leader)]
        self._actions = [(name, action) for name, weight, action in table for _ in range(weight)]

    def describe(self) -> str:
        return (
            f"faults={self.profile.name} interval_mean={self.interval_mean_us / 1000:.0f}ms "
            f"down_max={self.down_max} restart_p={self.restart_probability} "
            f"downtime_max={self.downtime_max_us / 1000:.0f}ms"
        )

    def start(self) -> None:
        if not self._actions:
            return
        self.active = True
        self._schedule_next()

    def stop(self) -> None:
        self.active = False
        if self._flapping is not None:
            self.cluster.network.set_flap_cuts(())
        self._flapping = None
        self._flap_token += 1

    def _schedule_next(self) -> None:
        delay = int(self.rng.expovariate(1.0 / self.interval_mean_us))
        self.cluster.scheduler.after(delay, self._act)

    def _act(self, _: object = None) -> None:
        if not self.active:
            return
        name, action = self.rng.choice(self._actions)
        action()
        self.actions_run[name] = self.actions_run.get(name, 0) + 1
        self._schedule_next()

    # ---- Helpers --------------------------------------------------------------

    def _others(self, group: set[int]) -> list[int]:
        return [n for n in self.cluster.node_ids if n not in group]

    def _cut_between(self, group: set[int]) -> list[tuple[int, int]]:
        rest = self._others(group)
        return [(a, b) for a in sorted(group) for b in rest] + [
            (b, a) for a in sorted(group) for b in rest
        ]

    def _target_leader(self) -> int:
        leader = self.cluster.leader_id()
        if leader is None:
            return self.rng.choice(self.cluster.node_ids)
        return leader

    def _up_nodes(self) -> list[int]:
        return [n for n in self.cluster.node_ids if self.cluster.is_up(n)]

    def _down_nodes(self) -> list[int]:
        return [n for n in self.cluster.node_ids if not self.cluster.is_up(n)]

    # ---- Partitions -----------------------------------------------------------

    def _split(self) -> None:
        ids = self.cluster.node_ids
        k = self.rng.randint(1, len(ids) - 1)
        group = set(self.rng.sample(ids, k))
        self.cluster.network.set_cuts(self._cut_between(group))
        self.cluster.note(f"partition split {sorted(group)} | {self._others(group)}")

    def _minority(self) -> None:
        ids = self.cluster.node_ids
        k = self.rng.randint(1, (len(ids) - 1) // 2)
        group = set(self.rng.sample(ids, k))
        self.cluster.network.set_cuts(self._cut_between(group))
        self.cluster.note(f"partition minority {sorted(group)} | majority {self._others(group)}")

    def _isolate_leader(self) -> None:
        leader = self._target_leader()
        self.cluster.network.set_cuts(self._cut_between({leader}))
        self.cluster.note(f"partition isolate leader {leader}")

    def _one_way(self) -> None:
        ids = self.cluster.node_ids
        a = self.rng.choice(ids)
        mode = self.rng.choice(("link", "deaf", "mute"))
        if mode == "link":
            b = self.rng.choice([n for n in ids if n != a])
            cuts = [(a, b)]
        elif mode == "deaf":  # a hears no one, everyone hears a
            cuts = [(b, a) for b in ids if b != a]
        else:  # mute: a hears everyone, no one hears a
            cuts = [(a, b) for b in ids if b != a]
        self.cluster.network.set_cuts(cuts)
        self.cluster.note(f"partition one-way {mode} {cuts}")

    def _heal(self) -> None:
        self.cluster.network.set_cuts(())
        self.cluster.note("heal partitions")

    def _flap(self) -> None:
        if self._flapping is not None:
            return
        node = self.rng.choice(self.cluster.node_ids)
        self._flapping = node
        self._flap_token += 1
        end_us = self.cluster.scheduler.now_us + self.rng.randint(100_000, 1_000_000)
        period_us = self.rng.randint(5_000, 80_000)
        self.cluster.note(f"flap node {node} every {period_us / 1000:.0f}ms")
        self._flap_toggle((self._flap_token, node, end_us, period_us, True))

    def _flap_toggle(self, arg: tuple[int, int, int, int, bool]) -> None:
        token, node, end_us, period_us, cut = arg
        if token != self._flap_token:
            return
        net = self.cluster.network
        if self.cluster.scheduler.now_us >= end_us:
            net.set_flap_cuts(())
            self._flapping = None
            self.cluster.note(f"flap node {node} ends")
            return
        net.set_flap_cuts(self._cut_between({node}) if cut else ())
        self.cluster.scheduler.after(
            period_us, self._flap_toggle, (token, node, end_us, period_us, not cut)
        )

    # ---- Crashes and pauses ----------------------------------------------------

    def _crash_node(self, node: int) -> None:
        if not self.cluster.is_up(node) or len(self._down_nodes()) >= self.down_max:
            return
        self.cluster.crash(node, power_loss=self.rng.random() < 0.7)
        if self.rng.random() < self.restart_probability:
            downtime = self.rng.randint(1_000, self.downtime_max_us)
            self.cluster.scheduler.after(downtime, self._restart_node, node)

    def _restart_node(self, node: int) -> None:
        if self.active and not self.cluster.is_up(node):
            self.cluster.restart(node)

    def _crash(self) -> None:
        up = self._up_nodes()
        if up:
            self._crash_node(self.rng.choice(up))

    def _crash_leader(self) -> None:
        self._crash_node(self._target_leader())

    def _restart(self) -> None:
        down = self._down_nodes()
        if down:
            self.cluster.restart(self.rng.choice(down))

    def _disk_full(self) -> None:
        self.cluster.disk_full(
            self.rng.choice(self.cluster.node_ids), self.rng.randint(1_000, 300_000)
        )

    def _pause_node(self, node: int) -> None:
        if self.cluster.is_up(node):
            self.cluster.pause(node, self.rng.randint(5_000, 400_000))

    def _pause(self) -> None:
        self._pause_node(self.rng.choice(self.cluster.node_ids))

    def _pause_leader(self) -> None:
        self._pause_node(self._target_leader())
