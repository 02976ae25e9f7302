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
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field

from paxoskv.kv.commands import Limits
from paxoskv.kv.state_machine import Applied, KVStateMachine
from paxoskv.paxos.core import Core
from paxoskv.paxos.types import Config, Message, Ready
from paxoskv.storage.base import Storage


@dataclass(slots=True)
class Batch:
    """A Ready whose durable part is on disk; its messages may now be sent."""

    ready: Ready

    @property
    def messages(self) -> list[Message]:
        return self.ready.messages


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
    ) -> None:
        state = storage.load()
        self.storage = storage
        self.sm = KVStateMachine(
            state.kv, state.sessions, state.applied_index, limits or Limits(), sessions_max
        )
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

    # ---- Inputs ----------------------------------------------------------------

    def tick(self) -> None:
        self.core.tick()

    def step(self, msg: Message) -> None:
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
        if not self.core.has_ready():
            return None
        return Batch(self.core.ready())

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
        return done

    def run_once(self, send) -> Done | None:
        """persist -> send -> apply, for callers that send synchronously."""
        batch = self.persist()
        if batch is None:
            return None
        if batch.messages:
            send(batch.messages)
        return self.apply(batch)
