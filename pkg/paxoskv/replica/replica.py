"""One node's consensus core, state machine and storage, glued in the order
the core demands.

Rules:

- A runtime calls, for every batch of inputs: ``prepare()`` (a ``Batch``, or
  None when there is nothing to do), ``write(batch)`` (one storage write,
  synced when the batch must be durable; it touches only the storage, so it
  may run in a worker thread), and ``apply(batch)`` (the state machine's
  changes and the applied index in one atomic write, then the core's
  ``advance``). Messages in ``batch.messages_early`` may leave before the
  write, those in ``batch.messages`` only after it (``ReplicaNode`` sends
  them; a runtime never does).
- ``apply`` releases a read once the local state machine has applied its
  read index; a restart never applies an entry twice.
- Compaction keeps at most ``retain_entries`` applied entries and
  ``retain_bytes_max`` bytes of their commands (it runs once either is a
  step over); a snapshot arriving while a batch is between ``prepare`` and
  ``apply`` is installed after that ``apply``.

The replica owns no clock, socket or thread. Why the rules are what they are:
docs/design.md and docs/snapshots.md.
"""

from __future__ import annotations

import heapq
import logging
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError

from paxoskv.kv.commands import Limits
from paxoskv.kv.state_machine import Applied, KVStateMachine
from paxoskv.paxos import bounds
from paxoskv.paxos.core import Core
from paxoskv.paxos.types import Config, Message, Ready, SnapshotAck, SnapshotChunk
from paxoskv.replica.transfer import SnapshotTransfer
from paxoskv.storage.base import Corrupt, LoadedState, Storage

log = logging.getLogger("paxoskv.replica")

__all__ = ["Batch", "Done", "Replica"]


@dataclass(slots=True)
class Batch:
    """One Ready on its way through prepare -> write -> apply."""

    ready: Ready
    written: bool = False

    @property
    def messages(self) -> list[Message]:
        """Messages that may leave only after ``write``."""
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
    history: dict[bytes, bytes | None] | None = None  # the history rows written (dropped: None), for watches


class Replica:
    def __init__(
        self,
        config: Config,
        storage: Storage,
        rng: random.Random,
        *,
        limits: Limits | None = None,
        sessions_max: int = 100_000,
        node_sessions_max: int = 65_536,
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
        self._node_sessions_max = node_sessions_max
        self.sm = self._state_machine(state)
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
        self._outbox: list[Message] = []
        self.transfer = SnapshotTransfer(
            config.node_id,
            storage,
            self._outbox.append,
            self._install,
            chunk_bytes=snapshot_chunk_bytes,
            timeout_ticks=snapshot_timeout_ticks,
        )
        self.snapshots_installed = 0
        self.compactions = 0
        self._last_installed_index = 0
        # A batch between prepare() and apply(): a snapshot finishing meanwhile
        # waits, so the state machine is not replaced under its entries.
        self._batch_outstanding = False
        self._install_waiting: Callable[[], int] | None = None

    # ---- Inputs ----------------------------------------------------------------

    def tick(self) -> None:
        self.core.tick()
        self.transfer.tick()

    def step(self, msg: Message) -> None:
        if isinstance(msg, (SnapshotChunk, SnapshotAck)):
            # The core's rules for a message it does not see: a member's, in range.
            core = self.core
            if msg.to != core.id or msg.frm == core.id or msg.frm not in core.config.peers:
                return
            if bounds.check(msg) is not None:
                core.refused[bounds.Refusal.OUT_OF_RANGE] += 1
                return
            if isinstance(msg, SnapshotChunk):
                self.transfer.on_chunk(msg)
            else:
                self.transfer.on_ack(msg)
        else:
            self.core.step(msg)

    def propose(self, command: bytes) -> bool:
        return self.core.propose(command)

    def read(self, read_id: int) -> None:
        self.core.read(read_id)

    # ---- The loop --------------------------------------------------------------

    def has_work(self) -> bool:
        return self.core.has_ready() or bool(self._outbox)

    def prepare(self) -> Batch | None:
        """Collect the core's Ready (None when there is nothing to do)."""
        if not (self.core.has_ready() or self._outbox):
            return None
        rd = self.core.ready()
        self._batch_outstanding = True
        if rd.snapshot_from is not None:
            self.transfer.want(rd.snapshot_from)
        if self._outbox:
            rd.messages.extend(self._outbox)
            self._outbox.clear()
        return Batch(rd)

    def write(self, batch: Batch) -> None:
        """One storage write, synced when the Ready must be durable. Safe to
        run in a worker thread: it touches only the storage."""
        rd = batch.ready
        if rd.must_sync or rd.chosen:
            self.storage.persist(rd.promised, rd.accepted, rd.chosen, sync=rd.must_sync)
        batch.written = True

    def apply(self, batch: Batch) -> Done:
        """After the write (and the messages): apply and say what to answer."""
        assert batch.written, "a batch is applied only after its write"
        rd = batch.ready
        done = Done()
        if rd.committed:
            sm = self.sm
            compacted = sm.compact_revision
            for slot, value in rd.committed:
                done.results.extend(sm.apply(slot, value))
            changes = sm.take_changes()
            self.storage.apply(changes, drop_accepted_through=rd.committed[-1][0])
            done.history = changes.history
            if sm.compact_revision != compacted:
                self.compactions += 1  # history rows were deleted: the driver reclaims their space
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
            finish, self._install_waiting = self._install_waiting, None
            self._install_now(finish)
        return done

    def _state_machine(self, state: LoadedState) -> KVStateMachine:
        """The state machine of a loaded state; its history is read from the storage."""
        try:
            return KVStateMachine(
                state.history,
                state.sessions,
                state.applied_index,
                self._limits,
                self._sessions_max,
                revision=state.revision,
                compact_revision=state.compact_revision,
                alarms=state.alarms,
                leases=state.leases.items(),
                reader=self.storage,
                node_sessions_max=self._node_sessions_max,
            )
        except (ValueError, DecodeError) as exc:
            raise Corrupt(getattr(self.storage, "path", "the node's storage"), f"history rows: {exc}") from None

    # ---- Snapshots ---------------------------------------------------------------

    @property
    def last_snapshot_index(self) -> int:
        """Of the last snapshot installed here or served to a peer."""
        return max(self._last_installed_index, self.transfer.last_sent_index)

    @property
    def snapshots_sent(self) -> int:
        return self.transfer.sent

    def _install(self, finish: Callable[[], int]) -> None:
        if self._batch_outstanding:
            self._install_waiting = finish  # after the batch in flight is applied
        else:
            self._install_now(finish)

    def _install_now(self, finish: Callable[[], int]) -> None:
        index = finish()
        if index < 0:
            return
        state = self.storage.load()
        assert state.applied_index == index, f"installed snapshot at {index}, storage says {state.applied_index}"
        self.sm = self._state_machine(state)
        self.core.install_snapshot(index)
        while self._kept and self._kept[0][0] <= index:
            self._kept_bytes -= self._kept.popleft()[1]
        self.snapshots_installed += 1
        self._last_installed_index = index
        log.info("node %d: installed a snapshot at index %d", self.core.id, index)

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
        self.transfer.close()
