"""A paxoskv node: one asyncio event loop driving a Replica over LevelDB and
the ZeroMQ peer bus.

Theory of operation
-------------------
Three tasks share the loop:

* the *receiver* drains the bus (``recv_batch``: every queued message, one
  await) and steps each message into the core;
* the *ticker* calls ``tick()`` every ``tick_ms``;
* the *pump* turns the core's output into effects, strictly in order:
  ``prepare`` (collect a Ready), ``write`` (one LevelDB batch, fsync'ed when
  it holds a promise or accepted entries; run in a worker thread unless it
  is small, see ``INLINE_SYNC_BYTES_MAX``), send the
  messages, ``apply`` (the state machine's changes and applied index in one
  atomic batch), then answer clients.

Client calls (``submit``, ``get``) propose or read and wake the pump. While
one write is being fsync'ed, the receiver and the clients keep feeding the
core, so the next Ready carries everything that arrived meanwhile in one
synced write: group commit, with no timer.

A failed write leaves the node unable to promise anything it said before,
so the pump stops the node (``fatal`` is set) instead of carrying on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pathlib
import random
import time
import uuid
from dataclasses import dataclass, field

from paxoskv import __version__
from paxoskv.kv import commands
from paxoskv.kv.commands import Limits
from paxoskv.kv.state_machine import BATCH_WAITER_PREFIX
from paxoskv.paxos.types import FEATURE_PACKED_BATCHES, FEATURES, Config, Role
from paxoskv.replica import Done, Replica
from paxoskv.server.errors import DeadlineExceeded, InvalidArgument, NodeError, Unavailable, Unimplemented
from paxoskv.transport.bus import BusClosed, PeerBus
from paxoskv.transport.keys import BusKeys
from paxoskv.v1 import kv_pb2

log = logging.getLogger("paxoskv.node")

# Where the pump runs a Ready's write. A worker thread lets the loop go on
# feeding the core while the disk works (group commit), but the hop costs two
# thread switches and a self-pipe wake-up: more than a small fsync'ed LevelDB
# write itself (0.15-0.3 ms here). So a write runs on the loop when it is
# small -- at most INLINE_CHOSEN_MAX chosen slots and at most
# INLINE_SYNC_BYTES_MAX bytes of accepted commands (what light load and
# single-request latency produce) -- and in the thread otherwise (batches
# under load, catch-up). Unsynced writes are memtable appends.
#
# A synced write also goes to the thread while more than INLINE_CALLS_MAX
# client calls are in flight on this node: grpc.aio's server takes one new
# call per loop iteration, so an fsync on the loop caps a busy node's intake
# at about one call per fsync (and its slots at a few commands); off the
# loop, calls keep arriving while the disk works and the next slot carries
# all of them. One call alone keeps the cheaper write on the loop.
INLINE_CHOSEN_MAX = 64
INLINE_SYNC_BYTES_MAX = 4 << 10
INLINE_CALLS_MAX = 1


def _runs_inline(rd, calls_active: int = 0) -> bool:  # noqa: ANN001 - a Ready
    if len(rd.chosen) > INLINE_CHOSEN_MAX:
        return False
    if not rd.must_sync:
        return True
    if calls_active > INLINE_CALLS_MAX:
        return False
    size = 0
    for entry in rd.accepted:
        for command in entry.value:
            size += len(command)
        if size > INLINE_SYNC_BYTES_MAX:
            return False
    return True


@dataclass(frozen=True)
class PeerAddr:
    host: str
    port: int
    bus_port: int


@dataclass(frozen=True)
class NodeConfig:
    node_id: int
    cluster_id: str
    listen_host: str
    port: int
    bus_port: int
    peers: dict[int, PeerAddr]  # the other nodes
    data_dir: pathlib.Path
    tick_ms: int = 10
    heartbeat_ms: int = 50
    election_ms: int = 500
    limits: Limits = field(default_factory=Limits)
    inflight_slots_max: int = 16
    batch_commands_max: int = 1024
    sessions_max: int = 100_000
    retain_entries: int = 10_000  # chosen entries kept after compaction
    retain_bytes_max: int = 64 << 20  # and at most this many bytes of their commands
    compact_step_entries: int = 1_000
    snapshot_chunk_bytes: int = 256 << 10
    leveldb_compression: str | None = None  # storage.leveldb.COMPRESSIONS
    features: int = FEATURES  # announced to the peers; tests lower it to act as an older node
    bus_keys: BusKeys | None = None  # CURVE keys of the peer bus; None: the insecure bus

    def core_config(self) -> Config:
        hb = max(1, round(self.heartbeat_ms / self.tick_ms))
        election = max(2 * hb + 1, round(self.election_ms / self.tick_ms))
        return Config(
            node_id=self.node_id,
            peers=tuple(sorted({self.node_id, *self.peers})),
            heartbeat_ticks=hb,
            election_ticks_min=election,
            inflight_slots_max=self.inflight_slots_max,
            batch_commands_max=self.batch_commands_max,
            features=self.features,
        )


class _Wait:
    """The answers one client call is waiting for: slot ``i`` of ``results``
    is filled by ``set(i, value)`` (a result, or a NodeError to raise); the
    future completes when every slot is filled. One future and one deadline
    per call, however many operations it carries."""

    __slots__ = ("results", "pending", "future")

    def __init__(self, n: int, future: asyncio.Future) -> None:
        self.results: list = [None] * n
        self.pending = n
        self.future = future

    def set(self, i: int, value: object) -> None:
        if self.results[i] is None and not self.future.done():
            self.results[i] = value
            self.pending -= 1
            if self.pending == 0:
                self.future.set_result(None)

    def _expire(self, late: NodeError) -> None:
        for i in range(len(self.results)):
            self.set(i, late)

    async def wait(self, timeout_s: float, late: NodeError) -> list:
        """The results once all are in, or ``late`` for those missing at the
        deadline. One timer on the loop, no extra task (this is every call's
        path: ``wait_for`` + ``shield`` cost a task and two futures more)."""
        if self.pending:
            timer = self.future.get_loop().call_later(timeout_s, self._expire, late)
            try:
                await self.future
            finally:
                timer.cancel()
        return self.results


class Node:
    def __init__(self, cfg: NodeConfig, *, storage=None) -> None:
        self.cfg = cfg
        self._storage = storage
        self.replica: Replica | None = None
        self.bus: PeerBus | None = None
        self.fatal: asyncio.Future[BaseException] | None = None
        self._tasks: list[asyncio.Task] = []
        self._wake = asyncio.Event()
        # (client_id, sequence) -> the calls waiting for that command, with the op index
        self._waiters: dict[tuple[str, int], list[tuple[_Wait, int]]] = {}
        # read id -> (key, call, op index)
        self._reads: dict[int, tuple[bytes, _Wait, int]] = {}
        self._read_ids = 0
        self._batch_prefix = os.urandom(8)  # batch waiter handles: this prefix + a counter
        self._batch_seq = 0
        self._leader_seen: int | None = None
        self._started_at = time.monotonic()
        self._stopping = False
        self._reclaimed = 0
        self._reclaim_task: asyncio.Task | None = None
        self._calls_active = 0  # client calls waiting on this node (where the pump writes)

    # ---- Lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.cfg
        if self._storage is None:
            from paxoskv.storage.leveldb import LevelDBStorage

            self._storage = LevelDBStorage.open(
                str(cfg.data_dir), cfg.node_id, cfg.cluster_id, create=True, compression=cfg.leveldb_compression
            )
        self.replica = Replica(
            cfg.core_config(),
            self._storage,
            random.Random(),
            limits=cfg.limits,
            sessions_max=cfg.sessions_max,
            retain_entries=cfg.retain_entries,
            compact_step_entries=cfg.compact_step_entries,
            retain_bytes_max=cfg.retain_bytes_max,
            snapshot_chunk_bytes=cfg.snapshot_chunk_bytes,
            snapshot_timeout_ticks=max(50, round(4 * cfg.election_ms / cfg.tick_ms)),
        )
        self.bus = PeerBus(
            cfg.node_id,
            cfg.cluster_id,
            cfg.listen_host,
            cfg.bus_port,
            {pid: (p.host, p.bus_port) for pid, p in cfg.peers.items()},
            keys=cfg.bus_keys,
        )
        try:
            await self.bus.start()
        except BaseException:
            self._storage.close()
            raise
        loop = asyncio.get_running_loop()
        self.fatal = loop.create_future()
        self._tasks = [
            asyncio.create_task(self._receiver(), name="paxoskv-receiver"),
            asyncio.create_task(self._ticker(), name="paxoskv-ticker"),
            asyncio.create_task(self._pump(), name="paxoskv-pump"),
        ]
        log.info(
            "node %d of cluster %r: bus on %s:%d, applied index %d",
            cfg.node_id, cfg.cluster_id, cfg.listen_host, self.bus.port, self.replica.sm.applied_index,
        )

    async def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, BusClosed, Exception):
                await t
        if self._reclaim_task is not None:
            with contextlib.suppress(Exception):
                await self._reclaim_task
        self._fail_all(Unavailable("node is shutting down"))
        if self.bus is not None:
            await self.bus.close()
        if self.replica is not None:
            self.replica.close()
        if self._storage is not None:
            self._storage.close()

    # ---- Client API ------------------------------------------------------------

    async def submit(self, cmd: kv_pb2.Command, *, timeout_s: float) -> kv_pb2.CommandResult:
        """Propose ``cmd`` and return its result once applied on this node."""
        (result,) = await self.submit_many([cmd], timeout_s=timeout_s)
        if isinstance(result, Exception):
            raise result
        return result

    async def submit_many(
        self, cmds: list[kv_pb2.Command], *, timeout_s: float
    ) -> list[kv_pb2.CommandResult | NodeError]:
        """Propose every command; return, in order, each one's result once
        applied on this node, or the error for it (InvalidArgument,
        Unavailable, DeadlineExceeded). Nothing raises for a single command."""
        replica = self._ready_replica()
        call = _Wait(len(cmds), asyncio.get_running_loop().create_future())
        limits = self.cfg.limits
        waiters = self._waiters
        registered: list[tuple[str, int]] = []
        for i, cmd in enumerate(cmds):
            if not cmd.client_id:
                if cmd.sequence:
                    call.set(i, InvalidArgument("a sequence number needs a client_id"))
                    continue
                cmd.client_id = "anon-" + uuid.uuid4().hex
                cmd.sequence = 1
            err = commands.validate(cmd, limits)
            if err is not None:
                call.set(i, InvalidArgument(err))
                continue
            if not replica.propose(commands.encode(cmd)):
                call.set(i, self._unavailable("no leader is known"))
                continue
            key = (cmd.client_id, cmd.sequence)
            waiters.setdefault(key, []).append((call, i))
            registered.append(key)
        if registered:
            self._wake.set()
        late = DeadlineExceeded(f"no answer within {timeout_s:.3f}s; the command may still be applied")
        self._calls_active += 1
        try:
            return await call.wait(timeout_s, late)
        finally:
            self._calls_active -= 1
            for key in registered:
                lst = waiters.get(key)
                if lst is not None:
                    lst[:] = [w for w in lst if w[0] is not call]
                    if not lst:
                        del waiters[key]

    async def submit_batch(
        self, cmd: kv_pb2.Command, *, timeout_s: float
    ) -> tuple[kv_pb2.CommandResult, ...] | NodeError:
        """Propose a batch command (``cmd.batch``: many writes as one log
        command) and return each op's result, in order, once applied on this
        node; or one error for the whole call (InvalidArgument, Unavailable,
        DeadlineExceeded), in which case any op may or may not be applied."""
        replica = self._ready_replica()
        self._batch_seq += 1
        waiter = self._batch_prefix + self._batch_seq.to_bytes(8, "big")
        cmd.batch.waiter = waiter
        err = commands.validate(cmd, self.cfg.limits)
        if err is not None:
            return InvalidArgument(err)
        if cmd.batch.HasField("request") and not replica.core.cluster_features & FEATURE_PACKED_BATCHES:
            # A member of an older version would apply its writes without their
            # session (or one not heard from since this node started).
            return Unimplemented(
                "not every node of the cluster is known to take packed batches (yet): send KV.Batch"
            )
        if not replica.propose(commands.encode(cmd)):
            return self._unavailable("no leader is known")
        call = _Wait(1, asyncio.get_running_loop().create_future())
        key = (BATCH_WAITER_PREFIX + waiter.hex(), 0)
        self._waiters[key] = [(call, 0)]
        self._wake.set()
        self._calls_active += 1
        try:
            (result,) = await call.wait(
                timeout_s, DeadlineExceeded(f"no answer within {timeout_s:.3f}s; the writes may still be applied")
            )
        finally:
            self._calls_active -= 1
            self._waiters.pop(key, None)
        return result

    async def get(self, key: bytes, *, serializable: bool = False, timeout_s: float) -> tuple[bytes | None, int]:
        """Read ``key``: linearizable (read index) unless ``serializable``."""
        (result,) = await self.get_many([key], serializable=serializable, timeout_s=timeout_s)
        if isinstance(result, Exception):
            raise result
        return result

    async def get_many(
        self, keys: list[bytes], *, serializable: bool = False, timeout_s: float
    ) -> list[tuple[bytes | None, int] | NodeError]:
        """Read every key, linearizably (one read index round serves them all)
        unless ``serializable``; per key a (value, index) or an error."""
        replica = self._ready_replica()
        call = _Wait(len(keys), asyncio.get_running_loop().create_future())
        key_max = self.cfg.limits.key_bytes_max
        rids: list[int] = []
        for i, key in enumerate(keys):
            if not key:
                call.set(i, InvalidArgument("key must not be empty"))
            elif len(key) > key_max:
                call.set(i, InvalidArgument(f"key is {len(key)} bytes, over the limit of {key_max}"))
            elif serializable:
                call.set(i, (replica.sm.get(key), replica.sm.applied_index))
            else:
                self._read_ids += 1
                rid = self._read_ids
                self._reads[rid] = (key, call, i)
                replica.read(rid)
                rids.append(rid)
        if rids:
            self._wake.set()
        self._calls_active += 1
        try:
            return await call.wait(timeout_s, DeadlineExceeded(f"read not confirmed within {timeout_s:.3f}s"))
        finally:
            self._calls_active -= 1
            for rid in rids:
                self._reads.pop(rid, None)

    def status(self) -> kv_pb2.StatusResponse:
        replica = self.replica
        assert replica is not None and self.bus is not None
        core = replica.core
        st = kv_pb2.StatusResponse(
            node_id=self.cfg.node_id,
            cluster_id=self.cfg.cluster_id,
            role=core.role.value,
            leader_id=core.leader_id or 0,
            ballot_round=core.ballot.round,
            ballot_node=core.ballot.node,
            commit_index=core.commit_index,
            applied_index=replica.sm.applied_index,
            log_start=core.log_start,
            snapshot_index=replica.last_snapshot_index,
            keys=len(replica.sm),
            version=__version__,
        )
        now = time.monotonic()
        peer_status = self.bus.peer_status()
        election_s = self.cfg.election_ms / 1000
        for pid, addr in sorted(self.cfg.peers.items()):
            ps = peer_status.get(pid)
            last = ps.last_recv_s if ps is not None else None
            ago = (now - last) if last is not None else -1.0
            st.peers.add(
                node_id=pid,
                address=f"{addr.host}:{addr.port}",
                connected=last is not None and ago <= election_s,
                last_heard_seconds=ago,
            )
        return st

    @property
    def leader_id(self) -> int | None:
        return self.replica.core.leader_id if self.replica else None

    def leader_addr(self) -> str | None:
        lid = self.leader_id
        if lid is None:
            return None
        if lid == self.cfg.node_id:
            return f"{self.cfg.listen_host}:{self.cfg.port}"
        p = self.cfg.peers.get(lid)
        return f"{p.host}:{p.port}" if p else None

    # ---- Tasks -----------------------------------------------------------------

    async def _receiver(self) -> None:
        bus = self.bus
        replica = self.replica
        assert bus is not None and replica is not None
        step = replica.step
        while True:
            msgs = await bus.recv_batch()
            for m in msgs:
                step(m)
            self._wake.set()

    async def _ticker(self) -> None:
        replica = self.replica
        assert replica is not None
        interval_s = self.cfg.tick_ms / 1000
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            next_at += interval_s
            delay = next_at - loop.time()
            if delay < -10 * interval_s:
                next_at = loop.time()  # we fell far behind (a pause): do not burst
                delay = 0
            await asyncio.sleep(max(delay, 0))
            replica.tick()
            self._wake.set()

    async def _pump(self) -> None:
        replica = self.replica
        bus = self.bus
        assert replica is not None and bus is not None
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                unyielded = 0
                while True:
                    batch = replica.prepare()
                    if batch is None:
                        break
                    rd = batch.ready
                    if rd.messages_early:
                        bus.send_many(rd.messages_early)  # the leader's Accepts: in parallel with its fsync
                    if not _runs_inline(rd, self._calls_active):
                        await asyncio.to_thread(replica.write, batch)
                        unyielded = 0
                    else:
                        if rd.must_sync or rd.chosen:
                            replica.write(batch)  # small: cheaper here than a thread hop
                        unyielded += 1
                        if unyielded >= 64:  # never starve the receiver and the ticker
                            await asyncio.sleep(0)
                            unyielded = 0
                    if rd.messages:
                        bus.send_many(rd.messages)
                    done = replica.apply(batch)
                    self._complete(done)
                self._watch_leader()
                if replica.compactions > self._reclaimed and self._reclaim_task is None:
                    self._reclaimed = replica.compactions
                    self._reclaim_task = asyncio.create_task(self._reclaim())
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # a failed write: stop rather than lie
            log.critical("node %d stopping: %s", self.cfg.node_id, exc)
            self._fail_all(Unavailable(f"node failed: {exc}"))
            if self.fatal is not None and not self.fatal.done():
                self.fatal.set_result(exc)
            raise

    async def _reclaim(self) -> None:
        """Give the disk space of compacted entries back (LevelDB compact_range),
        off the loop; writers are not blocked."""
        try:
            await asyncio.to_thread(self.replica.storage.reclaim)
        except Exception as exc:  # noqa: BLE001 - space is reclaimed next time
            log.warning("node %d: reclaiming disk space failed: %s", self.cfg.node_id, exc)
        finally:
            self._reclaim_task = None

    # ---- Helpers ---------------------------------------------------------------

    def _complete(self, done: Done) -> None:
        waiters = self._waiters
        if waiters:
            for a in done.results:
                ws = waiters.pop((a.client_id, a.sequence), None)
                if ws:
                    for call, i in ws:
                        call.set(i, a.result)
        if done.reads:
            sm = self.replica.sm
            index = sm.applied_index
            reads = self._reads
            for rid, ok in done.reads:
                entry = reads.pop(rid, None)
                if entry is None:
                    continue
                key, call, i = entry
                if ok:
                    call.set(i, (sm.get(key), index))
                else:
                    call.set(i, self._unavailable("read could not be confirmed by a quorum"))

    def _watch_leader(self) -> None:
        leader = self.replica.core.leader_id
        if leader != self._leader_seen:
            if self._leader_seen is not None and self._waiters:
                # Commands handed to the old leader may be lost; let clients retry
                # (with the same sequence, so nothing is applied twice).
                self._fail_all(self._unavailable("leader changed"), reads=False)
            self._leader_seen = leader

    def _fail_all(self, exc: NodeError, *, reads: bool = True) -> None:
        for ws in self._waiters.values():
            for call, i in ws:
                call.set(i, exc)
        self._waiters.clear()
        if reads:
            for _, call, i in self._reads.values():
                call.set(i, exc)
            self._reads.clear()

    def _unavailable(self, why: str) -> Unavailable:
        lid = self.leader_id
        addr = self.leader_addr()
        hint = f"; leader is node {lid} at {addr}" if lid is not None else "; no leader known"
        return Unavailable(why + hint, leader_id=lid, leader_addr=addr)

    def _ready_replica(self) -> Replica:
        if self.replica is None or self._stopping:
            raise Unavailable("node is not running")
        if self.fatal is not None and self.fatal.done():
            raise Unavailable("node has failed; see its log")
        return self.replica

    @property
    def role(self) -> Role:
        return self.replica.core.role if self.replica else Role.FOLLOWER
