"""The asyncio driver of a node: the ZeroMQ bus, LevelDB, a worker thread for
fsync and the timers around one runtime-free ``ReplicaNode``.

Rules:

- Nothing here decides what happens to a client call: that is the node
  layer's (``paxoskv.replica.node``). This file owns the sockets, the clock
  and the threads.
- Three tasks share the loop: the *receiver* drains the bus and steps each
  message, the *ticker* ticks every ``tick_ms`` (a loop timer; it wakes
  the pump only when the tick left work), the *pump* runs
  ``prepare -> write -> finish`` while there is work. A write runs in a worker
  thread unless it is small (``_runs_inline``); meanwhile inputs keep
  reaching the node, so the next batch carries all of them in one synced
  write (group commit).
- A client call waits on one future; its deadline is an entry in one heap
  behind one loop timer (``_Deadlines``); at the deadline the node layer is
  told (``expire``).
- A failed write leaves the node unable to promise anything it said before:
  the pump stops the node (``fatal`` is set) instead of carrying on.
- A fourth task, the *sizer*, measures the data directory every
  ``SIZE_EVERY_S`` in a worker thread and tells the node layer (etcd's
  space quota; ``Maintenance.Status`` reports it).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import pathlib
import queue
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from paxoskv import __version__
from paxoskv.kv.commands import Limits
from paxoskv.kv.etcd import EtcdLimits
from paxoskv.paxos.core import Core
from paxoskv.paxos.types import FEATURES, Config, Role
from paxoskv.replica.calls import Call
from paxoskv.replica.errors import EtcdFailure, NodeError, Unavailable
from paxoskv.replica.etcd import AutoCompaction, as_etcd
from paxoskv.replica.node import CallLimits, ReplicaNode
from paxoskv.transport.bus import BusClosed, PeerBus
from paxoskv.transport.keys import BusKeys
from paxoskv.v1 import kv_pb2

log = logging.getLogger("paxoskv.node")

# Where the pump runs a write. A worker thread lets the loop go on feeding
# the node while the disk works (group commit), but the hop costs two thread
# switches and a self-pipe wake-up: more than a small fsync'ed LevelDB write
# itself (0.15-0.3 ms here). So a write runs on the loop when it is small --
# at most INLINE_CHOSEN_MAX chosen slots and at most INLINE_SYNC_BYTES_MAX
# bytes of accepted commands (light load, single-request latency) -- and in
# the thread otherwise (batches under load, catch-up). Unsynced writes are
# memtable appends.
#
# A synced write also goes to the thread while more than INLINE_CALLS_MAX
# client calls wait on this node: grpc.aio's server takes one new call per
# loop iteration, so an fsync on the loop caps a busy node's intake at about
# one call per fsync (and its slots at a few commands).
SIZE_EVERY_S = 1.0
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


class _Writer:
    """One long-lived thread that runs the pump's off-loop writes, one at a
    time. ``asyncio.to_thread`` per write paid for a context copy, an
    executor work item, a ``concurrent.futures.Future`` with its condition,
    a chained asyncio future and two done-callbacks on each side (the
    "thread hand-off" row of the 17:01 profile, ~100 us of CPU per put over
    the three nodes); here a write is one ``SimpleQueue.put`` (a C call that
    wakes the thread) and one ``call_soon_threadsafe`` back (the loop's
    self-pipe wake), the least a hop can cost.

    The pump awaits each write before it prepares the next batch, so at most
    one write is outstanding and the order of writes is the pump's. A write
    that raises fails its future with that exception, as ``to_thread`` did.
    ``close`` lets the running write end and stops the thread."""

    _STOP = object()

    def __init__(self, loop: asyncio.AbstractEventLoop, name: str) -> None:
        self._loop = loop
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def run(self, fn: Callable[[object], None], arg: object) -> asyncio.Future[None]:
        """``fn(arg)`` in the thread; the future ends when it has returned."""
        fut = self._loop.create_future()
        self._jobs.put((fn, arg, fut))
        return fut

    def _run(self) -> None:
        jobs = self._jobs
        call_soon = self._loop.call_soon_threadsafe
        while True:
            job = jobs.get()
            if job is self._STOP:
                return
            fn, arg, fut = job
            try:
                fn(arg)
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting pump
                outcome: BaseException | None = exc
            else:
                outcome = None
            try:
                call_soon(_settle, fut, outcome)
            except RuntimeError:  # the loop is closed: no one awaits this write any more
                return

    def close(self) -> None:
        """Stop the thread once the write it runs (if any) has ended."""
        self._jobs.put(self._STOP)
        if self._thread is not threading.current_thread():
            self._thread.join()


def _settle(fut: asyncio.Future[None], outcome: BaseException | None) -> None:
    if fut.done():  # the pump was cancelled meanwhile
        return
    if outcome is None:
        fut.set_result(None)
    else:
        fut.set_exception(outcome)


class _Deadlines:
    """Every waiting call's deadline on ONE loop timer, armed for the
    earliest. A loop timer per call costs a ``TimerHandle`` pushed into the
    loop's heap (ordered by Python-level comparisons) and a cancel when the
    call ends first, as nearly all do; here a call is a tuple in a heap
    compared in C, left there when it ends. Ended entries are pruned when
    the heap has doubled since the last pruning (and holds over
    ``PRUNE_MIN``): amortised O(1) per call, and the heap stays within
    twice the calls waiting at the last pruning, plus ``PRUNE_MIN``."""

    PRUNE_MIN = 1024

    def __init__(self, loop: asyncio.AbstractEventLoop, expire: Callable[[Call], None]) -> None:
        self._loop = loop
        self._expire = expire
        self._prune_at = self.PRUNE_MIN
        self._heap: list[tuple[float, int, Call]] = []
        self._seq = 0
        self._timer: asyncio.TimerHandle | None = None
        self._armed_at = float("inf")
        self._closed = False

    def add(self, timeout_s: float, call: Call) -> None:
        at = self._loop.time() + timeout_s
        self._seq += 1
        heap = self._heap
        heapq.heappush(heap, (at, self._seq, call))
        if len(heap) > self._prune_at:
            self._heap = heap = [e for e in heap if not e[2].done]
            heapq.heapify(heap)
            self._prune_at = max(self.PRUNE_MIN, 2 * len(heap))
        if at < self._armed_at:
            self._arm(at)

    def _arm(self, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._armed_at = at
        self._timer = None if self._closed else self._loop.call_at(at, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._armed_at = float("inf")
        heap = self._heap
        now = self._loop.time()
        while heap and (heap[0][2].done or heap[0][0] <= now):
            call = heapq.heappop(heap)[2]
            if not call.done:
                self._expire(call)
        if heap:
            self._arm(heap[0][0])

    def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


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
    tick_ms: int = 50  # config.default_tick_ms(heartbeat_ms)
    heartbeat_ms: int = 100  # etcd's defaults
    election_ms: int = 1000
    limits: Limits = field(default_factory=Limits)
    call_limits: CallLimits = field(default_factory=CallLimits)
    inflight_slots_max: int = 16
    batch_commands_max: int = 1024
    sessions_max: int = 100_000
    retain_entries: int = 10_000  # chosen entries kept after compaction
    retain_bytes_max: int = 64 << 20  # and at most this many bytes of their commands
    compact_step_entries: int = 1_000
    snapshot_chunk_bytes: int = 256 << 10
    leveldb_compression: str | None = None  # storage.leveldb.COMPRESSIONS
    features: int = FEATURES  # announced to the peers; tests lower it to act as an older node
    node_sessions_max: int = 65_536  # node-assigned identities (anonymous and etcd writes)
    etcd_limits: EtcdLimits = field(default_factory=EtcdLimits)
    quota_bytes: int | None = 2 << 30  # None: no space quota
    auto_compaction: AutoCompaction | None = None
    advertise_host: str = ""  # how clients reach this node (member lists); "": listen_host
    bus_keys: BusKeys | None = None  # CURVE keys of the peer bus; None: the insecure bus
    watch_progress_interval_ms: int = 600_000  # --experimental-watch-progress-notify-interval

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

    def client_addrs(self) -> dict[int, str]:
        """Each node's public gRPC address (leader hints name them)."""
        addrs = {pid: f"{p.host}:{p.port}" for pid, p in self.peers.items()}
        addrs[self.node_id] = f"{self.advertise_host or self.listen_host}:{self.port}"
        return addrs

    def members(self) -> dict[int, PeerAddr]:
        """Every node's addresses, this one's as advertised."""
        return {**self.peers, self.node_id: PeerAddr(self.advertise_host or self.listen_host, self.port, self.bus_port)}


class Node:
    """A node on asyncio. ``start()``, the client calls, ``stop()``."""

    def __init__(self, cfg: NodeConfig, *, storage=None, core_factory: type[Core] = Core) -> None:
        self.cfg = cfg
        self._storage = storage
        self._core_factory = core_factory
        self.layer: ReplicaNode | None = None
        self.bus: PeerBus | None = None
        self.fatal: asyncio.Future[BaseException] | None = None
        self._tasks: list[asyncio.Task] = []
        self._wake = asyncio.Event()
        self._started_at = time.monotonic()
        self._stopping = False
        self._reclaimed = 0
        self._reclaim_task: asyncio.Task | None = None
        self.db_bytes = 0  # the data directory's size, as last measured
        self._deadlines: _Deadlines | None = None
        self._writer: _Writer | None = None

    # ---- Lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.cfg
        if self._storage is None:
            from paxoskv.storage.leveldb import LevelDBStorage

            self._storage = LevelDBStorage.open(
                str(cfg.data_dir), cfg.node_id, cfg.cluster_id, create=True, compression=cfg.leveldb_compression
            )
        self.bus = PeerBus(
            cfg.node_id,
            cfg.cluster_id,
            cfg.listen_host,
            cfg.bus_port,
            {pid: (p.host, p.bus_port) for pid, p in cfg.peers.items()},
            keys=cfg.bus_keys,
        )
        self.layer = ReplicaNode(
            cfg.core_config(),
            self._storage,
            random.Random(),
            send=self.bus.send_many,
            client_addrs=cfg.client_addrs(),
            limits=cfg.limits,
            call_limits=cfg.call_limits,
            core_factory=self._core_factory,
            cluster_id=cfg.cluster_id,
            etcd_limits=cfg.etcd_limits,
            quota_bytes=cfg.quota_bytes,
            auto_compaction=cfg.auto_compaction,
            tick_ms=cfg.tick_ms,
            watch_progress_interval_ms=cfg.watch_progress_interval_ms,
            sessions_max=cfg.sessions_max,
            node_sessions_max=cfg.node_sessions_max,
            retain_entries=cfg.retain_entries,
            compact_step_entries=cfg.compact_step_entries,
            retain_bytes_max=cfg.retain_bytes_max,
            snapshot_chunk_bytes=cfg.snapshot_chunk_bytes,
            snapshot_timeout_ticks=max(50, round(4 * cfg.election_ms / cfg.tick_ms)),
        )
        self._deadlines = _Deadlines(asyncio.get_running_loop(), self.layer.expire)
        try:
            await self.bus.start()
        except BaseException:
            self._storage.close()
            raise
        loop = asyncio.get_running_loop()
        self.fatal = loop.create_future()
        self._writer = _Writer(loop, f"paxoskv-writer-{cfg.node_id}")
        self._tasks = [
            asyncio.create_task(self._receiver(), name="paxoskv-receiver"),
            asyncio.create_task(self._ticker(), name="paxoskv-ticker"),
            asyncio.create_task(self._pump(), name="paxoskv-pump"),
            asyncio.create_task(self._sizer(), name="paxoskv-sizer"),
        ]
        log.info(
            "node %d of cluster %r: bus on %s:%d, applied index %d",
            cfg.node_id, cfg.cluster_id, cfg.listen_host, self.bus.port, self.layer.status().applied_index,
        )

    async def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        for t in self._tasks:
            t.cancel()
        if self._deadlines is not None:
            self._deadlines.close()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, BusClosed, Exception):
                await t
        if self._reclaim_task is not None:
            with contextlib.suppress(Exception):
                await self._reclaim_task
        if self._writer is not None:
            self._writer.close()  # after the pump: a write it started ends first
        if self.layer is not None:
            self.layer.stop("node is shutting down")
        if self.bus is not None:
            await self.bus.close()
        if self._storage is not None:
            self._storage.close()

    def refuse_calls(self, reason: str) -> None:
        """Fail every waiting call, and every later one, UNAVAILABLE (before a stop)."""
        if self.layer is not None:
            self.layer.stop(reason)

    # ---- Client calls ------------------------------------------------------------

    def _running(self) -> ReplicaNode:
        if self.layer is None or self._stopping:
            raise Unavailable("node is not running")
        if self.fatal is not None and self.fatal.done():
            raise Unavailable("node has failed; see its log")
        return self.layer

    async def _call(self, start: Callable[[ReplicaNode, float, Callable[[Call], None]], Call], timeout_s: float) -> Call:
        """Start a node-layer call, wake the pump, await its end (or its deadline)."""
        layer = self._running()
        fut = asyncio.get_running_loop().create_future()

        def on_done(_: Call) -> None:
            if not fut.done():
                fut.set_result(None)

        call = start(layer, timeout_s, on_done)
        if not call.done:
            self._wake.set()
            self._deadlines.add(timeout_s, call)
            try:
                await fut
            finally:
                if not call.done:
                    layer.expire(call)  # a cancelled wait leaves nothing registered
        if call.error is not None:
            raise call.error
        return call

    @staticmethod
    def _one(call: Call) -> object:
        (result,) = call.results
        if isinstance(result, NodeError):
            raise result
        return result

    async def put(self, req: kv_pb2.PutRequest, *, timeout_s: float) -> kv_pb2.CommandResult:
        return self._one(await self._call(lambda n, t, d: n.put(req, t, d), timeout_s))

    async def delete(self, req: kv_pb2.DeleteRequest, *, timeout_s: float) -> kv_pb2.CommandResult:
        return self._one(await self._call(lambda n, t, d: n.delete(req, t, d), timeout_s))

    async def get(self, req: kv_pb2.GetRequest, *, timeout_s: float) -> tuple[bytes | None, int, int]:
        return self._one(await self._call(lambda n, t, d: n.get(req, t, d), timeout_s))

    async def scan(self, req: kv_pb2.RangeRequest, *, timeout_s: float) -> tuple[object, int]:
        return self._one(await self._call(lambda n, t, d: n.scan(req, t, d), timeout_s))  # type: ignore[return-value]

    async def txn(self, req: kv_pb2.TxnRequest, *, timeout_s: float) -> tuple[object, int]:
        return self._one(await self._call(lambda n, t, d: n.txn(req, t, d), timeout_s))  # type: ignore[return-value]

    async def submit(self, cmds: Sequence[kv_pb2.Command], *, timeout_s: float) -> list:
        """Each command's result or NodeError (the node layer's ``submit``)."""
        return (await self._call(lambda n, t, d: n.submit(cmds, t, d), timeout_s)).results

    async def ops(
        self,
        ops: Sequence[kv_pb2.RequestOp],
        *,
        timeout_s: float,
        request: kv_pb2.RequestHeader | None = None,
        raw: bytes | None = None,
    ) -> list:
        """Each op's result or NodeError; raises a NodeError when the call
        failed as a whole (see ``ReplicaNode.ops``)."""
        call = await self._call(lambda n, t, d: n.ops(ops, t, d, request=request, raw=raw), timeout_s)
        return call.results

    def open_snapshot(self):  # noqa: ANN201 - a storage SnapshotSource; any thread
        return self._running().open_snapshot()

    # ---- The etcd API ------------------------------------------------------------

    def etcd_layer(self) -> ReplicaNode:
        """The running node layer (``EtcdFailure`` when there is none)."""
        try:
            return self._running()
        except Unavailable as exc:
            raise as_etcd(exc) from None

    async def _etcd(self, start: Callable[[ReplicaNode, float, Callable[[Call], None]], Call], timeout_s: float) -> object:
        self.etcd_layer()
        call = await self._call(start, timeout_s)
        result = call.results[0]
        if isinstance(result, EtcdFailure):
            raise result
        return result

    async def etcd_write(self, request: object, *, timeout_s: float) -> object:
        """etcd's response to a Put/DeleteRange/Txn/Compaction/Alarm request;
        raises ``EtcdFailure``."""
        return await self._etcd(lambda n, t, d: n.etcd_write(request, t, d), timeout_s)

    async def etcd_range(self, request: object, *, timeout_s: float) -> object:
        return await self._etcd(lambda n, t, d: n.range(request, t, d), timeout_s)

    async def etcd_range_one(self, request: object, *, timeout_s: float) -> tuple[object, int]:
        """``(KeyRecord or None, revision)`` of a one-key Range at the current
        revision (``EtcdCalls.range_one``); raises a ``NodeError``."""
        return self._one(await self._call(lambda n, t, d: n.etcd.range_one(request, t, d), timeout_s))  # type: ignore[return-value]

    async def etcd_lease(self, method: str, request: object, *, timeout_s: float) -> object:
        """etcd's response to a lease call (``ReplicaNode.etcd_lease``); raises ``EtcdFailure``."""
        return await self._etcd(lambda n, t, d: n.etcd_lease(method, request, t, d), timeout_s)

    async def etcd_in_thread(self, method: str, *args: object) -> object:
        """``layer.etcd.<method>(*args)`` in a worker thread (HashKV, Defragment)."""
        layer = self.etcd_layer()
        return await asyncio.to_thread(getattr(layer.etcd, method), *args)

    # ---- Status ----------------------------------------------------------------

    def status(self) -> kv_pb2.StatusResponse:
        layer = self._running()
        assert self.bus is not None
        s = layer.status()
        st = kv_pb2.StatusResponse(
            node_id=s.node_id,
            cluster_id=self.cfg.cluster_id,
            role=s.role,
            leader_id=s.leader_id or 0,
            ballot_round=s.ballot_round,
            ballot_node=s.ballot_node,
            commit_index=s.commit_index,
            applied_index=s.applied_index,
            log_start=s.log_start,
            snapshot_index=s.snapshot_index,
            keys=s.keys,
            version=__version__,
        )
        for name, n in self.bus.stats.as_dict().items():
            st.counters[f"bus_{name}"] = n
        for refusal, n in layer.replica.core.refused.items():
            st.counters[f"refused_{refusal.value}"] = n
        now = time.monotonic()
        peer_status = self.bus.peer_status()
        election_s = self.cfg.election_ms / 1000
        for pid, addr in sorted(self.cfg.peers.items()):
            ps = peer_status.get(pid)
            last = ps.last_recv_s if ps is not None else None
            peer = st.peers.add(node_id=pid, address=f"{addr.host}:{addr.port}")
            if last is not None:  # never heard from: the field stays absent
                peer.last_heard_seconds = now - last
                peer.connected = peer.last_heard_seconds <= election_s
        return st

    @property
    def leader_id(self) -> int | None:
        return self.layer.leader_id if self.layer else None

    @property
    def role(self) -> Role:
        return self.layer.role if self.layer else Role.FOLLOWER

    # ---- Tasks -----------------------------------------------------------------

    async def _receiver(self) -> None:
        bus = self.bus
        layer = self.layer
        assert bus is not None and layer is not None
        step = layer.step
        while True:
            for m in await bus.recv_batch():
                step(m)
            self._wake.set()

    async def _ticker(self) -> None:
        """Tick every ``tick_ms`` from a loop timer (no task switch, no future
        per tick); the pump is woken only when the tick left it work (an idle
        tick is one timer callback)."""
        layer = self.layer
        assert layer is not None
        interval_s = self.cfg.tick_ms / 1000
        loop = asyncio.get_running_loop()
        stopped = loop.create_future()
        wake = self._wake
        next_at = loop.time()
        handle: asyncio.TimerHandle | None = None

        def tick() -> None:
            nonlocal next_at, handle
            try:
                layer.tick()
            except BaseException as exc:  # noqa: BLE001 - ends the task as an exception in it would
                if not stopped.done():
                    stopped.set_exception(exc)
                return
            if layer.has_work():
                wake.set()
            # The next tick a whole interval after this one ran, never sooner: a
            # late tick is not made up by a burst, so N ticks always span at least
            # N intervals and no timeout measured in ticks (a lease's TTL, an
            # election) ends early; under load they end a little late.
            next_at = loop.time() + interval_s
            handle = loop.call_at(next_at, tick)

        next_at += interval_s
        handle = loop.call_at(next_at, tick)
        try:
            await stopped
        finally:
            handle.cancel()

    async def _pump(self) -> None:
        layer = self.layer
        writer = self._writer
        assert layer is not None and writer is not None
        write = layer.write
        calls = layer.calls
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                unyielded = 0
                while True:
                    batch = layer.prepare()
                    if batch is None:
                        break
                    if not _runs_inline(batch.ready, calls.pending):
                        await writer.run(write, batch)
                        unyielded = 0
                    else:
                        layer.write(batch)  # small: cheaper here than a thread hop
                        unyielded += 1
                        if unyielded >= 64:  # never starve the receiver and the ticker
                            await asyncio.sleep(0)
                            unyielded = 0
                    layer.finish(batch)
                if layer.compactions > self._reclaimed and self._reclaim_task is None:
                    self._reclaimed = layer.compactions
                    self._reclaim_task = asyncio.create_task(self._reclaim())
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # a failed write: stop rather than lie
            log.critical("node %d stopping: %s", self.cfg.node_id, exc)
            layer.stop(f"node failed: {exc}")
            if self.fatal is not None and not self.fatal.done():
                self.fatal.set_result(exc)
            raise

    async def _sizer(self) -> None:
        from paxoskv.storage.leveldb import data_dir_bytes

        layer = self.layer
        assert layer is not None
        while True:
            try:
                self.db_bytes = await asyncio.to_thread(data_dir_bytes, self.cfg.data_dir)
            except OSError as exc:  # noqa: PERF203 - measured again next time
                log.warning("node %d: cannot measure the data directory: %s", self.cfg.node_id, exc)
            else:
                layer.etcd.set_backend_bytes(self.db_bytes)
                self._wake.set()
            await asyncio.sleep(SIZE_EVERY_S)

    async def _reclaim(self) -> None:
        """Give the disk space of compacted entries back, off the loop."""
        try:
            await asyncio.to_thread(self.layer.reclaim)
        except Exception as exc:  # noqa: BLE001 - space is reclaimed next time
            log.warning("node %d: reclaiming disk space failed: %s", self.cfg.node_id, exc)
        finally:
            self._reclaim_task = None
