"""The deterministic cluster simulator: one seed, one run, every invariant checked.

Rules:

- One integer seed drives everything. ``random.Random(seed)`` draws the run's
  parameters and then one 64-bit seed per component (network, nemesis, each
  node's core and crash model, each client), always in the same order, so a
  seed replays the exact same run, and a change in one component's use of
  randomness does not reshuffle the others.
- No wall clock, thread or socket: simulated microseconds and an event queue
  (:mod:`paxoskv.sim.scheduler`). Nothing iterates an unordered container of
  strings or bytes where the order could change what happens (hash seeds
  differ between processes; the determinism test runs two processes).
- Each node is the node layer the server ships, a
  :class:`paxoskv.replica.ReplicaNode` over a
  :class:`paxoskv.storage.memory.MemoryStorage`, driven as the real server
  (``paxoskv.server.node``) drives it: inputs (tick, message, client call)
  reach it at once; they wake the *pump*, which loops ``prepare``, write
  (awaiting the disk for a drawn fsync latency, during which further inputs
  keep reaching it, as the server's event loop lets them), ``finish``; until
  ``prepare`` has nothing. A woken pump may run a moment later, so several
  inputs are coalesced into one batch, as the server's batched receive does.
  Client calls are the facade's (``paxoskv.sim.clients``); each expires at
  its deadline, as the server's timer makes it.
- Snapshots and compaction run with small retained logs in most runs; every
  installed snapshot is checked against the agreed log.
- A crashed node loses its process (core, state machine, waiting clients,
  inbox) and, on a power loss, by the storage's crash model, a random suffix
  of its unsynced writes (a killed process loses none: the OS has them); it
  sends and receives nothing until it restarts as a new ReplicaNode on what
  survived. A write to a full disk raises ``NotWritable``: the node stops
  there, as the real one must, and starts again once the disk has room. A
  paused node keeps its memory but runs nothing; messages and requests that
  reach it wait in its inbox until it resumes.
- A run is a *safety phase* (clients run, the nemesis injects the faults its
  profile allows) and then a *liveness phase*: heal every partition, stop
  loss and duplication, resume and restart every node, stop the nemesis, and
  demand that every pending client operation completes and every node
  converges to the same applied index and state within ``LIVENESS_BOUND_US``.
  In a share of the runs (``READ_STORM_SHARE``) the leader also gets a read
  every half tick throughout the liveness phase, answered to nobody: reads
  must not starve what the leader does on a timer.
- Checked continuously: agreement and in-order application of every slot on
  every node, across crashes; messages survive the wire codec (in the runs
  drawn to use it); a Ready is never empty when ``has_ready()`` said yes;
  every answer a client gets fits what it asked (an invalid request is
  refused, a valid one never; no stale sequence). Checked at the end:
  prefixes, acknowledged writes against the final state, the final state
  against an independent model replaying the agreed log, linearizability of
  the client history (``paxoskv.check``), serializable reads, convergence,
  liveness.
- A run never raises for a bug it finds in the system under test: an
  exception escaping the core, replica or state machine is a violation too,
  reported with the seed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from paxoskv.check import Operation as CheckOp
from paxoskv.check import check_history
from paxoskv.paxos import hostile
from paxoskv.paxos.core import Core
from paxoskv.paxos.types import Config, Message, Role
from paxoskv.v1 import kv_pb2
from paxoskv.replica import Batch, Replica, ReplicaNode
from paxoskv.replica.calls import Call
from paxoskv.sim.checks import (
    AppliedLog,
    Violation,
    check_acknowledged_writes,
    check_convergence,
    check_prefixes,
    check_serializable_reads,
    reference_state,
)
from paxoskv.sim.clients import SIM_LIMITS, Client, ClientParams, Request
from paxoskv.sim.etcd import RANGE as ETCD_RANGE
from paxoskv.sim.etcd import WRITE as ETCD_WRITE
from paxoskv.sim.etcd import EtcdClient, check_etcd_history, compare_reference, reference_mvcc
from paxoskv.sim.history import GET, OK, PENDING, PUT, UNKNOWN, Operation
from paxoskv.sim.nemesis import FAULT_PROFILES, Nemesis
from paxoskv.sim.network import DELAY_PROFILES, Network
from paxoskv.sim.scheduler import Scheduler
from paxoskv.sim.watch import SimWatchers, contiguous_through
from paxoskv.storage.base import NotWritable
from paxoskv.storage.memory import MemoryStorage

__all__ = [
    "FAULTS_DEFAULT",
    "LIVENESS_BOUND_US",
    "OPS_DEFAULT",
    "SimConfig",
    "SimResult",
    "Simulation",
    "WATCH_SHARE_DEFAULT",
    "run_seed",
    "watching",
]

TICK_US = 10_000  # nominal tick period of a node (each node's clock drifts +-10%)
# The liveness promise: once the nemesis stops, the network heals and every
# node is up, every pending client operation completes and all nodes converge
# within this much simulated time. (Election timeouts are at most
# 2 * election_ticks_min ticks = 0.4 s; client timeouts at most 0.4 s.)
LIVENESS_BOUND_US = 5_000_000
SAFETY_PHASE_US_MIN = 1_000_000  # the safety phase's length is drawn in this range (times
SAFETY_PHASE_US_MAX = 3_000_000  # SimConfig.scale), and ends earlier once every op was invoked
CONVERGENCE_POLL_US = 5_000
# In a share of the runs (drawn apart from the seed's main stream, so other
# runs replay as before), the leader gets a linearizable read every half tick
# from the start of the liveness phase until the run is done: work that must
# not starve anything the leader does on a timer (resending lost Accepts).
READ_STORM_SHARE = 0.5
READ_STORM_EVERY_US = TICK_US // 2
COALESCE_US_MAX = 300  # a woken pump runs within this much time when inputs are coalesced
DEADLINE_MARGIN_US_MAX = 50_000  # the facade answers this much before a call's deadline (5%, capped)
CLUSTER_ID = "sim"
OPS_DEFAULT = 200
FAULTS_DEFAULT = "full"
LINEARIZABILITY_STEPS_MAX = 2_000_000  # search budget per run (deterministic, unlike seconds)
# Watchers cost about a third more time per seed: one seed in three has them
# (the CI campaign's 2,000 seeds check ~670 seeds of watches).
WATCH_SHARE_DEFAULT = 1 / 3


@dataclass(frozen=True, slots=True)
class SimConfig:
    """What the caller chooses; the seed chooses everything else."""

    seed: int
    nodes: int = 3
    ops: int = OPS_DEFAULT  # client operations invoked in the safety phase (at most)
    faults: str = FAULTS_DEFAULT
    scale: int = 1  # the safety phase may last this many times longer (long campaigns)
    trace: bool = False  # keep a human-readable trace of every event
    check_linearizability: bool = True
    core_factory: type[Core] = Core  # the tests swap in a deliberately broken core
    # Hostile members: before this share of deliveries a member also sends the
    # node a message breaking a rule it enforces (paxoskv.paxos.hostile).
    hostile_rate: float = 0.0
    # etcd-API clients (sim/etcd.py) beside the v1 ones, their number drawn
    # apart from the seed's main stream; False: none, the run as before them.
    etcd: bool = True
    # Simulated watchers (sim/watch.py) on the members' watch hubs, in this
    # share of the seeds (drawn apart from the seed's main stream); 0: none.
    watch_share: float = WATCH_SHARE_DEFAULT

    def __post_init__(self) -> None:
        if self.nodes < 1:
            raise ValueError(f"nodes must be >= 1, not {self.nodes}")
        if self.ops < 0:
            raise ValueError(f"ops must be >= 0, not {self.ops}")
        if self.scale < 1:
            raise ValueError(f"scale must be >= 1, not {self.scale}")
        if not 0.0 <= self.watch_share <= 1.0:
            raise ValueError(f"watch_share must be in [0, 1], not {self.watch_share}")
        if not 0.0 <= self.hostile_rate <= 1.0:
            raise ValueError(f"hostile_rate must be in [0, 1], not {self.hostile_rate}")
        if self.faults not in FAULT_PROFILES:
            raise ValueError(f"faults must be one of {sorted(FAULT_PROFILES)}, not {self.faults!r}")

    def replay_command(self) -> str:
        cmd = f"paxoskv sim --seed {self.seed} --nodes {self.nodes}"
        if self.ops != OPS_DEFAULT:
            cmd += f" --ops {self.ops}"
        if self.faults != FAULTS_DEFAULT:
            cmd += f" --faults {self.faults}"
        if self.scale != 1:
            cmd += f" --scale {self.scale}"
        if self.hostile_rate:
            cmd += f" --hostile {self.hostile_rate:g}"
        if not self.etcd:
            cmd += " --no-etcd"
        if self.watch_share == 0:
            cmd += " --no-watch"
        elif self.watch_share != WATCH_SHARE_DEFAULT:
            cmd += f" --watch-share {self.watch_share:g}"
        return cmd


@dataclass(slots=True)
class SimResult:
    config: SimConfig
    params: str  # the parameters the seed drew, one line
    violations: list[Violation]
    history: list[Operation]
    ops_ok: int
    ops_fail: int
    ops_unknown: int
    sim_time_us: int
    safety_end_us: int
    liveness_us: int | None  # time from heal to all done and converged
    events: int
    messages_sent: int
    applied_slots: int  # the highest slot applied anywhere
    nemesis_actions: dict[str, int]
    snapshots_installed: int
    empty_ready_batches: int  # Replica.prepare() gave a batch with nothing in it
    hostile: dict[str, int]  # hostile messages sent: refused by the codec, stepped
    pending_at_heal: int  # client operations in flight when the liveness phase began
    network: dict[str, int]  # sent, delivered, lost, cut, duplicated
    linearizability: str  # the checker's verdict: ok, violation, unknown, unchecked
    digest: str  # fingerprint of the whole run (history, logs, counters)
    trace: list[str] | None
    real_time_s: float = 0.0
    cpu_time_s: float = 0.0  # this process's CPU time (what a shared machine does not inflate)
    etcd_history: list = field(default_factory=list)  # paxoskv.check.txn.TxnOp of the etcd clients
    etcd_linearizability: str = "unchecked"
    watch: dict[str, int] = field(default_factory=dict)  # sim.watch.WatchStats (empty: no watchers)

    @property
    def ok(self) -> bool:
        return not self.violations

    @property
    def ops(self) -> int:
        return len(self.history)

    def summary(self) -> str:
        live = "-" if self.liveness_us is None else f"{self.liveness_us / 1000:.0f}ms"
        return (
            f"seed {self.config.seed}: {'OK' if self.ok else 'VIOLATION'} ops={self.ops} "
            f"(ok {self.ops_ok}, fail {self.ops_fail}, unknown {self.ops_unknown}) "
            f"slots={self.applied_slots} snapshots={self.snapshots_installed} sim={self.sim_time_us / 1e6:.2f}s "
            f"safety={self.safety_end_us / 1e6:.2f}s liveness={live} events={self.events} "
            f"msgs={self.messages_sent} lin={self.linearizability} real={self.real_time_s:.2f}s "
            f"cpu={self.cpu_time_s:.2f}s"
            + (f" empty_ready={self.empty_ready_batches}" if self.empty_ready_batches else "")
        )


class SimNode:
    """One simulated process and the disk that outlives it."""

    __slots__ = (
        "node_id",
        "config",
        "storage",
        "rng",
        "crash_rng",
        "tick_us",
        "layer",
        "life",
        "paused",
        "inbox",
        "applied_index",
        "crashes",
        "disk_token",
        "stopped_by_disk",
        "installs_seen",
        "snapshot_floor",
        "writing",
        "wake_pending",
    )

    def __init__(self, node_id: int, config: Config, rng: random.Random, tick_us: int) -> None:
        self.node_id = node_id
        self.config = config
        self.storage = MemoryStorage(node_id=node_id, cluster_id=CLUSTER_ID)
        self.rng = rng  # seeds each life's core rng
        self.crash_rng = random.Random(rng.getrandbits(64))
        self.tick_us = tick_us
        self.layer: ReplicaNode | None = None
        self.life = 0
        self.paused = False
        self.inbox: list[tuple[Any, Any]] = []
        self.applied_index = 0
        self.crashes = 0
        self.disk_token = 0  # the latest disk-full fault; older heal events are stale
        self.stopped_by_disk = False
        self.installs_seen = 0  # the replica's snapshots_installed we have checked
        self.snapshot_floor = 0  # highest snapshot index ever installed here
        self.writing = False  # the pump awaits a storage write (inputs still reach the core)
        self.wake_pending = False  # the pump will run a moment later (coalesced inputs)

    @property
    def up(self) -> bool:
        return self.layer is not None

    @property
    def replica(self) -> Replica | None:
        """The layer's replica (what the checks look at)."""
        return None if self.layer is None else self.layer.replica


def _ignore(_: Call) -> None:
    pass


def _derive(rng: random.Random) -> random.Random:
    return random.Random(rng.getrandbits(64))


class Simulation:
    """One run of one seed. ``run()`` once; read the ``SimResult``."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        root = random.Random(config.seed)
        self.scheduler = Scheduler()
        self.violations: list[Violation] = []
        self.trace: list[str] | None = [] if config.trace else None
        profile = FAULT_PROFILES[config.faults]

        # ---- Parameters drawn from the seed (order matters: it is the replay).
        n = config.nodes
        self.node_ids: tuple[int, ...] = tuple(range(1, n + 1))
        delay = root.choice(DELAY_PROFILES)
        loss = root.choice((0.0, 0.02, 0.1, root.uniform(0.0, 0.3))) if profile.lossy else 0.0
        duplicate = root.choice((0.0, 0.01, 0.05, 0.1)) if profile.lossy else 0.0
        heartbeat_ticks, election_ticks_min = root.choice(((1, 10), (2, 10), (3, 12)))
        inflight_slots_max = root.choice((1, 4, 16))
        batch_commands_max = root.choice((1, 4, 64))
        wire = root.random() < 0.25
        # The node's runtime: how long a storage write takes (the pump awaits
        # it while inputs keep reaching the core), and how often inputs are
        # coalesced before the pump runs.
        self.fsync_us_max = root.choice((0, 300, 3_000, 12_000))
        self.coalesce_probability = root.choice((0.0, 0.5, 0.9))
        # Compaction and snapshots: small logs in most runs, so they happen.
        retain_entries = root.choice((4, 16, 10_000))
        self.replica_options = dict(
            retain_entries=retain_entries,
            compact_step_entries=root.choice((2, 8)),
            snapshot_chunk_bytes=root.choice((64, 1024, 256 << 10)),
            snapshot_timeout_ticks=root.choice((20, 60)),
        )
        n_clients = root.randint(3, 12)
        n_keys = root.randint(1, 5)
        self.keys: tuple[bytes, ...] = tuple(f"k{i}".encode() for i in range(n_keys))
        client_params = ClientParams(
            think_min_us=0,
            think_max_us=root.choice((1_000, 10_000, 40_000)),
            timeout_us=root.choice((100_000, 200_000, 400_000)),
            backoff_base_us=root.choice((2_000, 10_000)),
            backoff_max_us=100_000,
            give_up_attempts=root.choice((0, 3, 6)),
            put_weight=root.randint(2, 5),
            get_weight=root.randint(1, 4),
            delete_weight=root.randint(0, 2),
            ops_weight=root.choice((0, 1, 2)),
            packed_weight=root.choice((0, 1, 2)),
            ops_max=root.choice((2, 4)),
            serializable_share=root.choice((0.0, 0.2)),
            invalid_share=root.choice((0.0, 0.03)),
            anonymous_share=root.choice((0.0, 0.25)),
            # paxoskv.v1 Txn CASes, from a generator of their own: the root's draws stay as they were
            cas_weight=random.Random(f"v1-cas-{config.seed}").choice((0, 1, 2)),
        )
        self.client_loss = loss / 3
        self.safety_us_max = root.randint(SAFETY_PHASE_US_MIN, SAFETY_PHASE_US_MAX) * config.scale
        self.params = (
            f"nodes={n} net={delay.name} loss={loss:.3f} dup={duplicate:.2f} "
            f"wire={int(wire)} fsync_max={self.fsync_us_max}us "
            f"coalesce={self.coalesce_probability} retain={retain_entries} "
            f"chunk={self.replica_options['snapshot_chunk_bytes']} hb={heartbeat_ticks} election_min={election_ticks_min} "
            f"inflight={inflight_slots_max} batch={batch_commands_max} clients={n_clients} "
            f"keys={n_keys} think_max={client_params.think_max_us // 1000}ms "
            f"timeout={client_params.timeout_us // 1000}ms give_up={client_params.give_up_attempts} "
            f"forms=ops{client_params.ops_weight}/packed{client_params.packed_weight}/cas{client_params.cas_weight} "
            f"serializable={client_params.serializable_share} invalid={client_params.invalid_share} "
            f"anonymous={client_params.anonymous_share} "
            f"safety_max={self.safety_us_max / 1e6:.2f}s"
        )

        # ---- Components, each with its own random stream.
        self.net_rng = _derive(root)
        self.runtime_rng = _derive(root)
        self.network = Network(
            self.scheduler,
            self.net_rng,
            delay,
            loss=loss,
            duplicate=duplicate,
            deliver=self._deliver,
            wire=wire,
            on_wire_error=lambda text: self.violation("wire", text),
        )
        self.nemesis = Nemesis(self, _derive(root), profile)
        self.params += " " + self.nemesis.describe()
        self.nodes: dict[int, SimNode] = {}
        for i in self.node_ids:
            cfg = Config(
                node_id=i,
                peers=self.node_ids,
                heartbeat_ticks=heartbeat_ticks,
                election_ticks_min=election_ticks_min,
                inflight_slots_max=inflight_slots_max,
                batch_commands_max=batch_commands_max,
            )
            node_rng = _derive(root)
            tick_us = int(TICK_US * node_rng.uniform(0.9, 1.1))
            self.nodes[i] = SimNode(i, cfg, node_rng, tick_us)
        self.clients = [
            Client(self, f"c{i}", _derive(root), client_params) for i in range(1, n_clients + 1)
        ]

        self.history: list[Operation] = []
        self.applied = AppliedLog(self.node_ids)
        self.phase = "safety"
        self.ops_left = config.ops
        self.read_storm = random.Random(f"read-storm-{config.seed}").random() < READ_STORM_SHARE
        self.params += f" read_storm={int(self.read_storm)}"
        self._safety_end_us = 0
        self._pending_at_heal = 0
        self._liveness_done_us: int | None = None
        self._stop_reason = ""
        self.snapshots_installed = 0
        self.empty_ready_batches = 0
        # Drawn apart from the seed's main stream: other runs replay as before.
        self._hostile_rng = random.Random(f"hostile-{config.seed}")
        self.hostile_outcomes: dict[str, int] = {"codec": 0, "stepped": 0}
        self.linearizability = "unchecked"  # ok, violation, unknown (budget spent), unchecked
        # etcd clients: drawn from their own stream, so the draws above stay the seed's.
        etcd_rng = random.Random(f"etcd-{config.seed}")
        n_etcd = etcd_rng.choice((0, 1, 2, 3)) if config.etcd else 0
        etcd_keys = etcd_rng.randint(2, 4)
        self.etcd_ops_left = max(1, config.ops // 4) if n_etcd else 0
        self.etcd_clients = [
            EtcdClient(self, f"e{i}", _derive(etcd_rng), keys=etcd_keys, timeout_us=client_params.timeout_us,
                       think_max_us=client_params.think_max_us)
            for i in range(1, n_etcd + 1)
        ]
        self.etcd_keys = frozenset(f"e{i}".encode() for i in range(etcd_keys)) if n_etcd else frozenset()
        self.etcd_linearizability = "unchecked"
        self.params += f" etcd_clients={n_etcd} etcd_keys={etcd_keys}"
        self.watch: SimWatchers | None = None
        if watching(config):
            watch_keys = self.keys + tuple(f"e{i}".encode() for i in range(etcd_keys))
            self.watch = SimWatchers(self, config.seed, watch_keys, election_ticks_min)
            self.params += " " + self.watch.describe()

    # ---- Tracing ----------------------------------------------------------------

    def note(self, text: str) -> None:
        if self.trace is not None:
            self.trace.append(f"{self.scheduler.now_us / 1000:10.3f} {text}")

    def violation(self, kind: str, detail: str) -> None:
        v = Violation(kind, detail, self.scheduler.now_us)
        self.violations.append(v)
        self.note(f"VIOLATION {v}")

    # ---- Cluster view (for the nemesis) -----------------------------------------

    def is_up(self, node_id: int) -> bool:
        return self.nodes[node_id].up

    def leader_id(self) -> int | None:
        best = None
        for node in self.nodes.values():
            r = node.replica
            if r is not None and r.core.role is Role.LEADER:
                if best is None or r.core.ballot > best[0]:
                    best = (r.core.ballot, node.node_id)
        return None if best is None else best[1]

    # ---- Node lifecycle -----------------------------------------------------------

    def _start_node(self, node: SimNode) -> None:
        if node.storage.fault_full_disk:
            self.note(f"n{node.node_id} cannot start: disk full")
            node.stopped_by_disk = True
            return
        node.stopped_by_disk = False
        node.life += 1
        node.layer = ReplicaNode(
            node.config,
            node.storage,
            _derive(node.rng),
            send=self._send_all,
            client_addrs={i: f"n{i}" for i in self.node_ids},
            limits=SIM_LIMITS,
            core_factory=self.config.core_factory,
            watch_limits=None if self.watch is None else self.watch.limits,
            **self.replica_options,
        )
        node.installs_seen = 0
        node.applied_index = node.replica.sm.applied_index
        node.paused = False
        self.note(
            f"n{node.node_id} start life {node.life} applied={node.applied_index} "
            f"promised={node.replica.core.promised}"  # type: ignore[union-attr]
        )
        self._wake(node)

    def crash(self, node_id: int, power_loss: bool = True) -> None:
        node = self.nodes[node_id]
        if node.layer is None:
            return
        self._stop_process(node)
        if power_loss:
            lost = node.storage.crash(node.crash_rng)
            self.note(f"n{node_id} CRASH power loss (lost {lost} unsynced batches)")
        else:
            self.note(f"n{node_id} CRASH process killed")

    def _stop_process(self, node: SimNode) -> None:
        """The process dies with everything in its memory: its waiting calls
        are never answered (their clients time out)."""
        node.layer = None
        node.writing = False
        node.wake_pending = False
        node.crashes += 1
        node.paused = False
        node.inbox.clear()
        if self.watch is not None:
            self.watch.node_down(node.node_id)

    def disk_full(self, node_id: int, duration_us: int) -> None:
        node = self.nodes[node_id]
        node.storage.fault_full_disk = True
        node.disk_token += 1
        self.note(f"n{node_id} DISK FULL for {duration_us / 1000:.1f}ms")
        self.scheduler.after(duration_us, self._disk_heal, (node_id, node.disk_token))

    def _disk_heal(self, arg: tuple[int, int]) -> None:
        node_id, token = arg
        node = self.nodes[node_id]
        if token != node.disk_token or not node.storage.fault_full_disk:
            return
        node.storage.fault_full_disk = False
        self.note(f"n{node_id} disk has room again")
        if node.layer is None and node.stopped_by_disk:
            self.restart(node_id)  # the supervisor starts it again

    def restart(self, node_id: int) -> None:
        node = self.nodes[node_id]
        if node.layer is None:
            self._guard(node, self._start_node, node)

    def pause(self, node_id: int, duration_us: int) -> None:
        node = self.nodes[node_id]
        if node.layer is None or node.paused:
            return
        node.paused = True
        self.note(f"n{node_id} PAUSE {duration_us / 1000:.1f}ms")
        self.scheduler.after(duration_us, self._resume, (node_id, node.life))

    def _resume(self, arg: tuple[int, int]) -> None:
        node_id, life = arg
        node = self.nodes[node_id]
        if node.life != life or not node.paused:
            return
        node.paused = False
        self.note(f"n{node_id} resume, {len(node.inbox)} waiting")
        inbox, node.inbox = node.inbox, []
        for fn, a in inbox:
            if node.layer is None or node.paused:
                break
            fn(a)

    def _tick(self, node: SimNode) -> None:
        self.scheduler.after(node.tick_us, self._tick, node)
        if node.layer is None or node.paused:
            return
        self._guard(node, self._tick_now, node)

    def _tick_now(self, node: SimNode) -> None:
        node.layer.tick()  # type: ignore[union-attr]
        self._wake(node)

    # ---- Inputs -----------------------------------------------------------------

    def _send_all(self, msgs: list[Message]) -> None:
        send = self.network.send
        for m in msgs:
            send(m)

    def _deliver(self, msg: Message) -> None:
        node = self.nodes[msg.to]
        if node.layer is None:
            return
        if node.paused:
            node.inbox.append((self._deliver, msg))
            return
        if self.trace is not None:
            self.note(f"n{msg.to} <- {msg}")
        self._guard(node, self._step_now, (node, msg))

    def _step_now(self, arg: tuple[SimNode, Message]) -> None:
        node, msg = arg
        layer = node.layer
        assert layer is not None
        rate = self.config.hostile_rate
        if rate and self._hostile_rng.random() < rate:
            self.hostile_outcomes[hostile.inject(self._hostile_rng, layer.replica.core, layer.step)] += 1
        layer.step(msg)
        self._wake(node)

    def _guard(self, node: SimNode, fn: Any, arg: Any) -> None:
        """Run ``fn(arg)``; an exception from the system under test is a violation
        and takes the node down (it would crash the real process)."""
        try:
            fn(arg)
        except NotWritable as exc:
            if not node.storage.fault_full_disk:
                self.violation(
                    "exception", f"node {node.node_id}: NotWritable on a healthy disk: {exc}"
                )
            if node.layer is not None:
                self._stop_process(node)
            node.stopped_by_disk = True
            self.note(f"n{node.node_id} stops: {exc}")
        except Exception as exc:  # noqa: BLE001 - the run must report, not raise
            self.violation("exception", f"node {node.node_id}: {type(exc).__name__}: {exc}")
            if node.layer is not None:
                self.crash(node.node_id)

    def watch_guard(self, node: SimNode, fn: Any, arg: Any) -> None:
        """A watch stream's work at its member (sim/watch.py), guarded as every
        input. It proposes nothing, so the pump is not woken (nor the runtime's
        draws used: the cluster runs as it would without watchers)."""
        self._guard(node, fn, arg)

    def _wake(self, node: SimNode) -> None:
        """An input reached the node (tick, message, call): note a snapshot it
        installed, and wake the pump (now, or a moment later to coalesce
        inputs, as the server's event loop does)."""
        r = node.replica
        assert r is not None
        if r.snapshots_installed != node.installs_seen:
            self._installed(node)
        if node.writing or node.wake_pending:
            return  # the pump is busy (awaiting a write) or already woken
        rng = self.runtime_rng
        if self.coalesce_probability and rng.random() < self.coalesce_probability:
            node.wake_pending = True
            self.scheduler.after(
                rng.randint(0, COALESCE_US_MAX), self._pump_later, (node, node.life)
            )
        else:
            self._pump(node)

    def _pump_later(self, arg: tuple[SimNode, int]) -> None:
        node, life = arg
        if node.life != life or node.layer is None:
            return
        if node.paused:
            node.inbox.append((self._pump_later, arg))
            return
        node.wake_pending = False
        if not node.writing:
            self._guard(node, self._pump, node)

    def _pump(self, node: SimNode) -> None:
        """The server's pump: prepare a batch, write it (awaiting the disk,
        while inputs keep reaching the node), finish it; until None."""
        layer = node.layer
        assert layer is not None and not node.writing
        while True:
            batch = layer.prepare()
            if batch is None:
                return
            rd = batch.ready
            if rd.empty():
                # core.has_ready() said yes and ready() had nothing: a pump
                # that drains until None would spin (and starve the node).
                self.empty_ready_batches += 1
                if self.empty_ready_batches == 1:
                    self.violation(
                        "ready-contract",
                        f"node {node.node_id}: has_ready() was true, ready() was empty "
                        f"({layer.replica.core.status()})",
                    )
                layer.write(batch)
                layer.finish(batch)
                return
            if (rd.must_sync or rd.chosen) and self.fsync_us_max:
                # The write runs off the event loop; the pump awaits it.
                rng = self.runtime_rng
                delay = rng.randint(self.fsync_us_max // 10, self.fsync_us_max)
                if not rd.must_sync:
                    delay //= 10  # no fsync: only the write
                node.writing = True
                self.scheduler.after(delay, self._write_done, (node, node.life, batch))
                return
            layer.write(batch)
            self._finish_batch(node, batch)

    def _write_done(self, arg: tuple[SimNode, int, Batch]) -> None:
        node, life, batch = arg
        if node.life != life or node.layer is None:
            return  # the process died while writing: the write never happened
        if node.paused:
            node.inbox.append((self._write_done, arg))
            return
        self._guard(node, self._write_done_now, (node, batch))

    def _write_done_now(self, arg: tuple[SimNode, Batch]) -> None:
        node, batch = arg
        layer = node.layer
        assert layer is not None and node.writing
        layer.write(batch)
        node.writing = False
        self._finish_batch(node, batch)
        self._pump(node)

    def _finish_batch(self, node: SimNode, batch: Batch) -> None:
        """The batch is durable: check what it applies, then the node layer
        sends, applies and answers."""
        layer = node.layer
        assert layer is not None
        rd = batch.ready
        if rd.committed:
            nid = node.node_id
            record = self.applied.record
            expected = node.applied_index
            for slot, value in rd.committed:
                expected += 1
                if slot != expected:
                    self.violation("order", f"node {nid} applied slot {slot}, expected {expected}")
                    expected = slot
                problem = record(nid, slot, value)
                if problem is not None:
                    self.violation("agreement", problem)
            node.applied_index = expected
            if self.trace is not None:
                self.note(f"n{nid} apply {rd.committed[0][0]}..{rd.committed[-1][0]}")
        layer.finish(batch)
        if layer.replica.snapshots_installed != node.installs_seen:
            self._installed(node)  # a snapshot that waited for this batch was installed

    def _installed(self, node: SimNode) -> None:
        """The node installed a snapshot: its applied index jumps; check the state."""
        r = node.replica
        assert r is not None
        self.snapshots_installed += r.snapshots_installed - node.installs_seen
        node.installs_seen = r.snapshots_installed
        index = r.sm.applied_index
        self.note(
            f"n{node.node_id} installed a snapshot at {index} (applied was {node.applied_index})"
        )
        if index < node.applied_index:
            self.violation(
                "snapshot",
                f"node {node.node_id} installed a snapshot at {index}, "
                f"behind its applied index {node.applied_index}",
            )
        node.applied_index = index
        node.snapshot_floor = max(node.snapshot_floor, index)
        chosen = self.applied.chosen
        if all(s in chosen for s in range(1, index + 1)):
            expected = reference_state(chosen, index, SIM_LIMITS)
            state = self._v1_view(dict(r.sm.items()))
            if self.etcd_clients:
                model, _, _ = reference_mvcc(chosen, index, SIM_LIMITS)
                for problem in compare_reference(model, r.sm):
                    self.violation("snapshot", f"node {node.node_id} installed a snapshot at {index} whose MVCC "
                                               f"store differs from the reference replay: {problem}")
            if state != expected:
                diff = sorted(
                    k for k in set(expected) | set(state) if expected.get(k) != state.get(k)
                )
                self.violation(
                    "snapshot",
                    f"node {node.node_id} installed a snapshot at {index} "
                    f"that differs from the agreed log on keys {diff[:5]}",
                )

    def _v1_view(self, state: dict[bytes, bytes]) -> dict[bytes, bytes]:
        """A state without the etcd clients' keys (the v1 checks know only v1 writes)."""
        return {k: v for k, v in state.items() if k not in self.etcd_keys}

    # ---- Clients ----------------------------------------------------------------

    def take_op(self) -> bool:
        if self.phase != "safety" or self.ops_left <= 0:
            return False
        self.ops_left -= 1
        if self.ops_left == 0:
            # Every operation is invoked: end the safety phase a little later,
            # so that faults still hit the operations in flight.
            self.scheduler.after(self.net_rng.randint(0, 300_000), self._end_safety)
        return True

    def may_give_up(self) -> bool:
        return self.phase == "safety"

    def etcd_take_op(self) -> bool:
        if self.phase != "safety" or self.etcd_ops_left <= 0:
            return False
        self.etcd_ops_left -= 1
        return True

    def client_idle(self, client: Client) -> None:
        pass

    def _client_link_us(self) -> int:
        return self.network.delay_us()

    def send_request(self, req: Request) -> None:
        if self.trace is not None:
            self.note(f"{req.describe()} -> n{req.node_id}")
        if self.client_loss and self.net_rng.random() < self.client_loss:
            return
        self.scheduler.after(self._client_link_us(), self._on_request, req)

    def _answer(self, req: Request, call: Call) -> None:
        if self.trace is not None:
            what = f"error {call.error!r}" if call.error is not None else repr(call.results)[:300]
            self.note(f"-> {req.describe()}: {what}")
        if self.client_loss and self.net_rng.random() < self.client_loss:
            return
        self.scheduler.after(self._client_link_us(), req.client.on_answer, (req.call_id, req.token, call))

    def _on_request(self, req: Request) -> None:
        node = self.nodes[req.node_id]
        if node.layer is None:
            return  # nobody listens: the client times out
        if node.paused:
            node.inbox.append((self._on_request, req))
            return
        self._guard(node, self._request_now, req)

    def _request_now(self, req: Request) -> None:
        """The facade's part: hand the call to the node layer with the
        deadline the server would give it (the client's, less a margin)."""
        node = self.nodes[req.node_id]
        layer = node.layer
        assert layer is not None
        timeout_us = req.timeout_us - min(DEADLINE_MARGIN_US_MAX, req.timeout_us // 20)
        timeout_s = timeout_us / 1e6

        def on_done(call: Call) -> None:
            self._answer(req, call)

        form, payload = req.form, req.payload
        if form == "put":
            call = layer.put(payload, timeout_s, on_done)
        elif form == "delete":
            call = layer.delete(payload, timeout_s, on_done)
        elif form == "get":
            call = layer.get(payload, timeout_s, on_done)
        elif form == "txn":
            call = layer.txn(payload, timeout_s, on_done)
        elif form == ETCD_WRITE:
            call = layer.etcd_write(payload, timeout_s, on_done)
        elif form == ETCD_RANGE:
            call = layer.range(payload, timeout_s, on_done)
        else:
            ops, request = payload
            call = layer.ops(ops, timeout_s, on_done, request=request)
        if not call.done:
            self.scheduler.after(timeout_us, self._expire, (node, node.life, call))
        self._wake(node)

    def _expire(self, arg: tuple[SimNode, int, Call]) -> None:
        node, life, call = arg
        if node.life != life or node.layer is None:
            return  # the process died: nobody answers
        if node.paused:
            node.inbox.append((self._expire, arg))
            return
        self._guard(node, node.layer.expire, call)

    # ---- Phases -----------------------------------------------------------------

    def _end_safety(self, _: Any = None) -> None:
        if self.phase != "safety":
            return
        self.phase = "liveness"
        now = self.scheduler.now_us
        self._safety_end_us = now
        self._pending_at_heal = len(self._pending_ops())
        self.note("=== liveness phase: heal, restart, no more faults ===")
        self.nemesis.stop()
        self.network.heal()
        self.network.calm()
        self.client_loss = 0.0
        for node in self.nodes.values():
            if node.storage.fault_full_disk:
                node.disk_token += 1
                node.storage.fault_full_disk = False
        for node in self.nodes.values():
            if node.replica is None:
                self.restart(node.node_id)
            elif node.paused:
                self._resume((node.node_id, node.life))
        self.scheduler.after(LIVENESS_BOUND_US, self._liveness_deadline)
        self.scheduler.after(CONVERGENCE_POLL_US, self._poll_done)
        if self.read_storm:
            self.scheduler.after(READ_STORM_EVERY_US, self._read_storm)

    def _read_storm(self, _: Any = None) -> None:
        """A read at every running leader (answered to nobody), and again."""
        if self.phase != "liveness":
            return
        for node in self.nodes.values():
            layer = node.layer
            if layer is not None and not node.paused and layer.role is Role.LEADER:
                self._guard(node, self._storm_read, layer)
                self._wake(node)
        self.scheduler.after(READ_STORM_EVERY_US, self._read_storm)

    def _storm_read(self, layer: ReplicaNode) -> None:
        layer.get(kv_pb2.GetRequest(key=self.keys[0]), LIVENESS_BOUND_US / 1e6, _ignore)

    def _pending_ops(self) -> list[Operation]:
        return [op for c in self.clients for op in c.pending_ops()]

    def _converged(self) -> bool:
        target = None
        for node in self.nodes.values():
            r = node.replica
            if r is None or node.paused:
                return False
            core = r.core
            a = r.sm.applied_index
            if a != core.commit_index:
                return False
            if target is None:
                target = a
            elif a != target:
                return False
        return True

    def _poll_done(self, _: Any = None) -> None:
        if self.phase != "liveness":
            return
        if not self._pending_ops() and self._converged() and self._watchers_settled():
            self._liveness_done_us = self.scheduler.now_us
            self.phase = "done"
            self._stop_reason = "converged"
            self.scheduler.stopped = True
            return
        self.scheduler.after(CONVERGENCE_POLL_US, self._poll_done)

    def _watchers_settled(self) -> bool:
        if self.watch is None:
            return True
        revision = max(n.layer.replica.sm.revision for n in self.nodes.values() if n.layer is not None)
        return self.watch.settled(revision)

    def _liveness_deadline(self, _: Any = None) -> None:
        if self.phase != "liveness":
            return
        pending = self._pending_ops()
        status = {
            n.node_id: (n.replica.core.status() if n.replica else "down")
            for n in self.nodes.values()
        }
        self.violation(
            "liveness",
            f"{LIVENESS_BOUND_US / 1e6:.1f}s after healing: {len(pending)} operations pending "
            f"({[op.describe() for op in pending[:3]]}), converged={self._converged()}, "
            f"nodes {status}" + ("" if self.watch is None else f"; {self.watch.status()}"),
        )
        self.phase = "done"
        self._stop_reason = "deadline"
        self.scheduler.stopped = True

    # ---- The run ----------------------------------------------------------------

    def run(self) -> SimResult:
        started = time.perf_counter()
        cpu_started = time.process_time()
        sched = self.scheduler
        for node in self.nodes.values():
            self._guard(node, self._start_node, node)
            sched.after(node.rng.randint(0, node.tick_us), self._tick, node)
        for client in self.clients:
            client.start()
        for etcd_client in self.etcd_clients:
            etcd_client.start()
        self.nemesis.start()
        if self.watch is not None:
            self.watch.start()
        sched.after(self.safety_us_max, self._end_safety)
        with self._logs_to_trace():
            sched.run()
        if self.phase != "done":
            self.violation("liveness", "the event queue ran dry")
        self._final_checks()
        result = self._result(time.perf_counter() - started)
        result.cpu_time_s = time.process_time() - cpu_started
        return result

    @contextlib.contextmanager
    def _logs_to_trace(self) -> Iterator[None]:
        """The system under test logs (a refused snapshot, ...): into the trace,
        not onto the terminal of whoever runs a thousand seeds."""
        logger = logging.getLogger("paxoskv")
        sim = self

        class _ToTrace(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                sim.note(f"log {record.levelname.lower()} {record.name}: {record.getMessage()}")

        handler = _ToTrace()
        saved = logger.propagate
        logger.addHandler(handler)
        logger.propagate = False
        try:
            yield
        finally:
            logger.removeHandler(handler)
            logger.propagate = saved

    def _final_checks(self) -> None:
        for op in self.history:
            if op.outcome == PENDING:
                op.finish(UNKNOWN, self.scheduler.now_us)
        for etcd_client in self.etcd_clients:
            etcd_client.finish()
        floors = {n.node_id: n.snapshot_floor for n in self.nodes.values()}
        for problem in check_prefixes(self.applied.by_node, floors):
            self.violation("prefix", problem)
        up = [n for n in self.nodes.values() if n.replica is not None]
        v1_revisions: list[int] | None = None
        if self._stop_reason == "converged" and up:
            states = {n.node_id: dict(n.replica.sm.items()) for n in up}  # type: ignore[union-attr]
            applied = {n.node_id: n.replica.sm.applied_index for n in up}  # type: ignore[union-attr]
            for problem in check_convergence(applied, states):
                self.violation("convergence", problem)
            final = self._v1_view(states[up[0].node_id])
            for problem in check_acknowledged_writes(self.history, final):
                self.violation("acknowledged-write", problem)
            through = applied[up[0].node_id]
            if all(s in self.applied.chosen for s in range(1, through + 1)):
                model, skipped, v1_revisions = reference_mvcc(self.applied.chosen, through, SIM_LIMITS)
                if skipped:
                    self.violation("etcd-reference", f"etcd commands the reference cannot replay: {skipped[:3]}")
                for problem in compare_reference(model, up[0].replica.sm):  # type: ignore[union-attr]
                    self.violation("etcd-reference", f"the MVCC store differs from the reference replay: {problem}")
                expected = reference_state(self.applied.chosen, through, SIM_LIMITS)
                if expected != final:
                    diff = sorted(
                        k for k in set(expected) | set(final) if expected.get(k) != final.get(k)
                    )
                    self.violation(
                        "state-machine",
                        f"final state differs from the reference "
                        f"model of the agreed log on keys {diff[:5]}",
                    )
            for node in up:
                for slot in range(node.snapshot_floor + 1, applied[node.node_id] + 1):
                    if slot not in self.applied.by_node[node.node_id]:
                        self.violation(
                            "prefix",
                            f"node {node.node_id} at {applied[node.node_id]} "
                            f"never applied slot {slot}",
                        )
                        break
        if self.watch is not None:
            self._check_watches()
        for problem in check_serializable_reads(self.history):
            self.violation("serializable-read", problem)
        forged = sorted(s for s, value in self.applied.chosen.items() if any(hostile.FORGED in c for c in value))
        if forged:
            self.violation("forged", f"a hostile member's command was applied at slots {forged[:5]}")
        if self.config.check_linearizability:
            self.linearizability, explanation = check_linearizable(self.history)
            if self.linearizability == "violation":
                self.violation("linearizability", explanation)
            if self.etcd_clients:
                etcd_history = [op for c in self.etcd_clients for op in c.history]
                res = check_etcd_history(_renumbered(etcd_history), self.history, LINEARIZABILITY_STEPS_MAX,
                                         v1_revisions)
                self.etcd_linearizability = res.verdict
                if res.verdict == "violation":
                    self.violation("etcd-linearizability", res.explanation)

    def _check_watches(self) -> None:
        """Every watch record against the event log of the agreed log's reference replay."""
        assert self.watch is not None
        through = contiguous_through(self.applied.chosen)
        log: list[Any] = []
        model, skipped, _ = reference_mvcc(self.applied.chosen, through, SIM_LIMITS, log)
        if skipped:
            return  # the reference cannot replay the log: reported as etcd-reference above
        for problem in self.watch.check(log, model.compact_revision, model.revision):
            self.violation("watch", problem)

    def _result(self, real_time_s: float) -> SimResult:
        h = hashlib.sha256()
        for op in self.history:
            h.update(
                repr(
                    (
                        op.op_id,
                        op.client_id,
                        op.kind,
                        op.key,
                        op.value,
                        op.sequence,
                        op.call_us,
                        op.return_us,
                        op.outcome,
                        op.existed,
                        op.attempts,
                    )
                ).encode()
            )
        for nid in self.node_ids:
            h.update(repr(sorted(self.applied.by_node[nid].items())).encode())
        stats = self.network.stats
        h.update(
            repr(
                (
                    self.scheduler.now_us,
                    self.scheduler.events_run,
                    stats.sent,
                    stats.delivered,
                    stats.lost,
                    stats.cut,
                    stats.duplicated,
                    [str(v) for v in self.violations],
                )
            ).encode()
        )
        if self.watch is not None:
            h.update(repr(self.watch.fingerprint()).encode())
        return SimResult(
            config=self.config,
            params=self.params,
            violations=list(self.violations),
            history=self.history,
            ops_ok=sum(1 for op in self.history if op.outcome == OK),
            ops_fail=sum(1 for op in self.history if op.outcome == "fail"),
            ops_unknown=sum(1 for op in self.history if op.outcome == UNKNOWN),
            sim_time_us=self.scheduler.now_us,
            safety_end_us=self._safety_end_us,
            liveness_us=(
                None
                if self._liveness_done_us is None
                else self._liveness_done_us - self._safety_end_us
            ),
            events=self.scheduler.events_run,
            messages_sent=stats.sent,
            applied_slots=max(self.applied.chosen, default=0),
            nemesis_actions=dict(self.nemesis.actions_run),
            snapshots_installed=self.snapshots_installed,
            empty_ready_batches=self.empty_ready_batches,
            hostile=dict(self.hostile_outcomes),
            pending_at_heal=self._pending_at_heal,
            network={
                "sent": stats.sent,
                "delivered": stats.delivered,
                "lost": stats.lost,
                "cut": stats.cut,
                "duplicated": stats.duplicated,
            },
            linearizability=self.linearizability,
            digest=h.hexdigest(),
            trace=self.trace,
            real_time_s=real_time_s,
            etcd_history=[op for c in self.etcd_clients for op in c.history],
            etcd_linearizability=self.etcd_linearizability,
            watch={} if self.watch is None else self.watch.stats.as_dict(),
        )


def check_linearizable(history: list[Operation]) -> tuple[str, str]:
    """Run ``paxoskv.check`` on the history: (verdict, explanation).

    The budget is in search steps, not seconds, so the verdict is the same on
    a fast and a slow machine; ``unknown`` (budget spent) is not a violation
    but is counted and reported.
    """
    result = check_history(
        to_check_operations(history), time_budget_s=None, step_budget=LINEARIZABILITY_STEPS_MAX
    )
    return result.verdict, result.explanation


def to_check_operations(history: list[Operation]) -> list[Any]:
    """The history in ``paxoskv.check``'s format (simulated milliseconds)."""
    out = []
    for op in history:
        if op.serializable:
            continue  # may be stale by definition: check_serializable_reads
        ok = op.outcome == OK
        out.append(
            CheckOp(
                id=op.op_id,
                client=op.client_id,
                op=op.kind,
                key=op.key.decode(),
                value=op.value.decode() if op.kind == PUT and op.value is not None else None,
                call=op.call_us / 1000,
                ret=None if op.return_us is None else op.return_us / 1000,
                outcome=op.outcome,
                output_value=(
                    op.value.decode() if ok and op.kind == GET and op.value is not None else None
                ),
                output_existed=op.existed if ok and op.kind != GET else None,
            )
        )
    return out


def _renumbered(ops: list[Any]) -> list[Any]:
    """Every client numbers its own calls: one id space for the checker."""
    return [dataclasses.replace(op, id=i) for i, op in enumerate(ops)]


def watching(config: SimConfig) -> bool:
    """Whether the seed's run has watchers (``watch_share`` of the seeds,
    drawn from a generator of their own)."""
    share = config.watch_share
    return share >= 1.0 or (share > 0.0 and random.Random(f"watch-share-{config.seed}").random() < share)


def run_seed(seed: int, **kwargs: Any) -> SimResult:
    return Simulation(SimConfig(seed=seed, **kwargs)).run()
