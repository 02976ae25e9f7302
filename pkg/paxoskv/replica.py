"""One node's consensus core, state machine and storage, glued in the order
the core demands.

Rules
-----
The runtime (the deterministic simulator or the asyncio server) calls, for
every batch of inputs::

    batch = replica.persist()     # 1. one storage write, synced when needed
    send(batch.messages)          # 2. only now may messages leave
    done = replica.apply(batch)   # 3. apply chosen entries, answer clients

``persist`` is the only way to obtain messages, so nothing can be sent before
the state it vouches for is durable. ``apply`` writes the state machine's
changes and the applied index in one atomic batch, so a restart never applies
an entry twice. Reads are released once the local state machine has applied
their read index. The replica owns no clock, socket or thread.

Compaction and snapshots
------------------------
After applying, once more than ``retain_entries + compact_step_entries``
chosen entries, or more than ``retain_bytes_max`` (plus a tenth) of their
commands, are kept, the oldest are dropped (core and storage), keeping at
most ``retain_entries`` entries and ``retain_bytes_max`` bytes so that a
briefly lagging peer still catches up from the log while the disk stays
bounded by the data (a slot can hold a thousand commands). A peer that needs what was dropped is told so by its catch-up reply; its
core then asks (``Ready.snapshot_from``) and the replicas transfer a snapshot:

* receiver -> sender ``SnapshotAck(snapshot_index=0, offset=0)``: "send me one";
* sender opens a consistent snapshot of its applied state (taken without
  stopping the node) and sends it one ``SnapshotChunk`` at a time;
* receiver stages each chunk and acks the next offset it wants; the sender
  sends the next chunk, or resends the last one when the ack repeats it;
* on the last chunk the receiver verifies the checksum and installs the
  snapshot in one atomic storage switch, rebuilds its state machine, tells its
  core, and acks ``done``.

Either side restarts the transfer from scratch after a timeout; a crash at
any point leaves the receiver's store on its old state or the new one.
"""

from __future__ import annotations

import heapq
import logging
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Iterator

from paxoskv.kv.commands import Limits
from paxoskv.kv.state_machine import Applied, KVStateMachine
from paxoskv.paxos.core import Core
from paxoskv.paxos.types import Config, Message, Ready, SnapshotAck, SnapshotChunk
from paxoskv.storage.base import Storage

log = logging.getLogger("paxoskv.replica")


@dataclass(slots=True)
class _Sending:
    """A snapshot this node is streaming to one peer (stop-and-wait)."""

    source: object  # storage SnapshotSource
    chunks: Iterator[bytes]
    index: int
    offset: int  # offset of ``last``
    last: bytes  # the chunk in flight
    ahead: bytes | None  # the chunk after it (prefetched); None: ``last`` is the end
    activity_tick: int

    def advance(self) -> None:
        assert self.ahead is not None
        self.offset += len(self.last)
        self.last = self.ahead
        self.ahead = next(self.chunks, None)


@dataclass(slots=True)
class _Receiving:
    """A snapshot this node is receiving from one peer."""

    peer: int
    installer: object | None  # storage SnapshotInstaller, once the first chunk came
    index: int
    offset: int  # next offset wanted
    activity_tick: int
    started_tick: int


@dataclass(slots=True)
class Batch:
    """A Ready whose durable part is on disk; its messages may now be sent."""

    ready: Ready

    @property
    def messages(self) -> list[Message]:
        return self.ready.messages

    @property
    def messages_early(self) -> list[Message]:
        """Messages that may leave before the write (the leader's Accepts)."""
        return self.ready.messages_early


@dataclass(slots=True)
class Done:
    """What applying a batch produced for the clients."""

    results: list[Applied] = field(default_factory=list)
    reads: list[tuple[int, bool]] = field(default_factory=list)  # (read id, servable now)


class Replica:
    def __init__(
        self,
        config: Config,
        storage: Storage,
        rng: random.Random,
        *,
        limits: Limits | None = None,
        sessions_max: int = 100_000,
        core_factory: type[Core] = Core,
        retain_entries: int = 10_000,
        compact_step_entries: int = 1_000,
        retain_bytes_max: int = 64 << 20,
        snapshot_chunk_bytes: int = 256 << 10,
        snapshot_timeout_ticks: int = 200,
    ) -> None:
        state = storage.load()
        self.storage = storage
        self._limits = limits or Limits()
        self._sessions_max = sessions_max
        self.sm = KVStateMachine(state.kv, state.sessions, state.applied_index, self._limits, sessions_max)
        self.core = core_factory(
            config,
            rng,
            promised=state.promised,
            accepted=state.accepted,
            chosen=state.chosen,
            log_start=state.log_start,
            applied_index=state.applied_index,
        )
        self._reads_waiting: list[tuple[int, int]] = []  # heap of (read index, read id)
        self.retain_entries = retain_entries
        self.compact_step_entries = compact_step_entries
        self.retain_bytes_max = retain_bytes_max
        # (slot, command bytes) of every chosen entry still kept, oldest first.
        self._kept: deque[tuple[int, int]] = deque(
            (slot, sum(map(len, value)))
            for slot, value in sorted(self.core.chosen.items())
            if slot <= self.core.applied_index
        )
        self._kept_bytes = sum(size for _, size in self._kept)
        self.snapshot_chunk_bytes = snapshot_chunk_bytes
        self.snapshot_timeout_ticks = snapshot_timeout_ticks
        self._ticks = 0
        self._outbox: list[Message] = []
        self._sending: dict[int, _Sending] = {}
        self._receiving: _Receiving | None = None
        self.snapshots_installed = 0
        self.snapshots_sent = 0
        self.compactions = 0
        self.last_snapshot_index = 0  # of the last snapshot installed here or served to a peer
        # A batch between prepare() and apply(): a snapshot finishing meanwhile
        # waits, so the state machine is not replaced under its entries.
        self._batch_outstanding = False
        self._install_waiting: _Receiving | None = None

    # ---- Inputs ----------------------------------------------------------------

    def tick(self) -> None:
        self._ticks += 1
        self.core.tick()
        self._snapshot_timeouts()

    def step(self, msg: Message) -> None:
        if isinstance(msg, SnapshotChunk):
            self._on_snapshot_chunk(msg)
        elif isinstance(msg, SnapshotAck):
            self._on_snapshot_ack(msg)
        else:
            self.core.step(msg)

    def propose(self, command: bytes) -> bool:
        return self.core.propose(command)

    def read(self, read_id: int) -> None:
        self.core.read(read_id)

    # ---- The loop --------------------------------------------------------------

    def persist(self) -> Batch | None:
        """Step 1: collect the core's Ready and make its durable part durable."""
        batch = self.prepare()
        if batch is not None:
            self.write(batch)
        return batch

    def prepare(self) -> Batch | None:
        """Step 1a: collect the core's Ready (None when there is nothing to do)."""
        if not (self.core.has_ready() or self._outbox):
            return None
        rd = self.core.ready()
        self._batch_outstanding = True
        if rd.snapshot_from is not None:
            self._want_snapshot(rd.snapshot_from)
        if self._outbox:
            rd.messages.extend(self._outbox)
            self._outbox = []
        return Batch(rd)

    def write(self, batch: Batch) -> None:
        """Step 1b: one storage write, synced when the Ready must be durable.
        Safe to run in a worker thread: it touches only the storage."""
        rd = batch.ready
        if rd.must_sync or rd.chosen:
            self.storage.persist(rd.promised, rd.accepted, rd.chosen, sync=rd.must_sync)

    def apply(self, batch: Batch) -> Done:
        """Step 3 (after the messages were sent): apply and answer."""
        rd = batch.ready
        done = Done()
        if rd.committed:
            sm = self.sm
            for slot, value in rd.committed:
                done.results.extend(sm.apply(slot, value))
            self.storage.apply(sm.take_changes(), drop_accepted_through=rd.committed[-1][0])
        self.core.advance(rd)
        if rd.committed:
            kept = self._kept
            for slot, value in rd.committed:
                size = sum(map(len, value))
                kept.append((slot, size))
                self._kept_bytes += size
            self._maybe_compact()
        applied = self.sm.applied_index
        for rs in rd.reads:
            if not rs.ok:
                done.reads.append((rs.read_id, False))
            elif rs.index <= applied:
                done.reads.append((rs.read_id, True))
            else:
                heapq.heappush(self._reads_waiting, (rs.index, rs.read_id))
        waiting = self._reads_waiting
        while waiting and waiting[0][0] <= applied:
            done.reads.append((heapq.heappop(waiting)[1], True))
        self._batch_outstanding = False
        if self._install_waiting is not None:
            rx, self._install_waiting = self._install_waiting, None
            self._finish_install(rx)
        return done

    def run_once(self, send) -> Done | None:
        """persist -> send -> apply, for callers that send synchronously."""
        batch = self.prepare()
        if batch is None:
            return None
        if batch.messages_early:
            send(batch.messages_early)
        self.write(batch)
        if batch.messages:
            send(batch.messages)
        return self.apply(batch)

    # ---- Compaction ------------------------------------------------------------

    def _maybe_compact(self) -> None:
        core = self.core
        kept = core.applied_index - core.log_start + 1
        too_many = kept > self.retain_entries + self.compact_step_entries
        too_big = self._kept_bytes > self.retain_bytes_max + self.retain_bytes_max // 10
        if not (too_many or too_big):
            return
        through = core.applied_index - self.retain_entries
        queue = self._kept
        size = self._kept_bytes
        for slot, slot_bytes in queue:  # oldest first: drop until within the byte bound
            if size <= self.retain_bytes_max or slot > core.applied_index:
                break
            through = max(through, slot)
            size -= slot_bytes
        if through < core.log_start:
            return
        core.compact(through)
        self.storage.compact(through)
        while queue and queue[0][0] <= through:
            self._kept_bytes -= queue.popleft()[1]
        self.compactions += 1

    def close(self) -> None:
        """Abort a snapshot being received and release the ones being sent
        (before the storage is closed)."""
        self._abort_receiving()
        for peer in list(self._sending):
            self._close_sending(peer)

    # ---- Snapshot transfer: receiving ------------------------------------------

    def _want_snapshot(self, peer: int) -> None:
        rx = self._receiving
        if rx is not None:
            return  # one transfer at a time; its timeout restarts it
        self._receiving = _Receiving(peer, None, 0, 0, self._ticks, self._ticks)
        self._send(SnapshotAck(frm=self.core.id, to=peer, snapshot_index=0, offset=0, done=False))

    def _on_snapshot_chunk(self, msg: SnapshotChunk) -> None:
        rx = self._receiving
        me = self.core.id
        if rx is None or rx.peer != msg.frm:
            return  # not asked for (or from a transfer we gave up): ignore
        if msg.offset == 0 and (rx.installer is None or msg.snapshot_index != rx.index):
            self._abort_receiving(keep=True)
            rx.installer = self.storage.begin_install()
            rx.index = msg.snapshot_index
            rx.offset = 0
        if rx.installer is None or msg.snapshot_index != rx.index or msg.offset != rx.offset:
            # A duplicate or a stray: ask again for what we want.
            self._send(SnapshotAck(frm=me, to=msg.frm, snapshot_index=rx.index, offset=rx.offset, done=False))
            return
        rx.activity_tick = self._ticks
        try:
            rx.installer.write(msg.data)
            rx.offset += len(msg.data)
        except Exception as exc:  # a corrupt or refused snapshot: start over later
            log.warning("node %d: snapshot from node %d refused: %s", me, msg.frm, exc)
            self._abort_receiving()
            return
        if not msg.last:
            self._send(SnapshotAck(frm=me, to=msg.frm, snapshot_index=rx.index, offset=rx.offset, done=False))
        elif self._batch_outstanding:
            self._install_waiting = rx  # after the batch in flight is applied
        else:
            self._finish_install(rx)

    def _finish_install(self, rx: _Receiving) -> None:
        me = self.core.id
        if self._receiving is not rx or rx.installer is None:
            return  # aborted meanwhile (a timeout or a newer snapshot)
        try:
            index = rx.installer.finish()
        except Exception as exc:  # a corrupt or refused snapshot: start over later
            log.warning("node %d: snapshot from node %d refused: %s", me, rx.peer, exc)
            self._abort_receiving()
            return
        rx.installer = None
        self._receiving = None
        self._reload_after_install(index)
        self._send(SnapshotAck(frm=me, to=rx.peer, snapshot_index=index, offset=rx.offset, done=True))

    def _reload_after_install(self, index: int) -> None:
        state = self.storage.load()
        assert state.applied_index == index, f"installed snapshot at {index}, storage says {state.applied_index}"
        self.sm = KVStateMachine(state.kv, state.sessions, state.applied_index, self._limits, self._sessions_max)
        self.core.install_snapshot(index)
        while self._kept and self._kept[0][0] <= index:
            self._kept_bytes -= self._kept.popleft()[1]
        self.snapshots_installed += 1
        self.last_snapshot_index = index
        log.info("node %d: installed a snapshot at index %d", self.core.id, index)

    def _abort_receiving(self, keep: bool = False) -> None:
        rx = self._receiving
        if rx is None:
            return
        if rx.installer is not None:
            try:
                rx.installer.abort()
            except Exception as exc:  # noqa: BLE001 - aborting is best effort
                log.warning("node %d: aborting a snapshot install: %s", self.core.id, exc)
            rx.installer = None
        if not keep:
            self._receiving = None

    # ---- Snapshot transfer: sending ------------------------------------------

    def _on_snapshot_ack(self, msg: SnapshotAck) -> None:
        peer = msg.frm
        tx = self._sending.get(peer)
        if msg.snapshot_index == 0 and msg.offset == 0 and not msg.done:
            self._close_sending(peer)
            self._start_sending(peer)
            return
        if tx is None or msg.snapshot_index != tx.index:
            return
        tx.activity_tick = self._ticks
        if msg.done:
            self.snapshots_sent += 1
            self.last_snapshot_index = max(self.last_snapshot_index, tx.index)
            self._close_sending(peer)
        elif msg.offset == tx.offset:
            self._send_chunk(peer, tx)  # the last one was lost: again
        elif msg.offset == tx.offset + len(tx.last) and tx.ahead is not None:
            tx.advance()
            self._send_chunk(peer, tx)

    def _start_sending(self, peer: int) -> None:
        source = self.storage.open_snapshot()
        chunks = iter(source.chunks(self.snapshot_chunk_bytes))
        first = next(chunks, b"")
        tx = _Sending(source, chunks, source.applied_index, 0, first, next(chunks, None), self._ticks)
        self._sending[peer] = tx
        self._send_chunk(peer, tx)

    def _send_chunk(self, peer: int, tx: _Sending) -> None:
        self._send(
            SnapshotChunk(
                frm=self.core.id, to=peer, snapshot_index=tx.index, offset=tx.offset,
                data=tx.last, last=tx.ahead is None, total_size=0, sha256=b"",
            )
        )

    def _close_sending(self, peer: int) -> None:
        tx = self._sending.pop(peer, None)
        if tx is not None:
            tx.source.close()

    def _snapshot_timeouts(self) -> None:
        limit = self._ticks - self.snapshot_timeout_ticks
        for peer in [p for p, tx in self._sending.items() if tx.activity_tick <= limit]:
            self._close_sending(peer)
        rx = self._receiving
        if rx is not None and rx.activity_tick <= limit:
            self._abort_receiving()
            # The core asks again (its catch-up retry meets the compacted log).

    def _send(self, msg: Message) -> None:
        self._outbox.append(msg)
