"""Watching the cluster from outside: who leads, and when that changes.

Rules
-----
* The monitor polls ``Maintenance.Status`` of every node that runs and is
  not paused, every ``interval_s``, over its own connections (not the
  workload's), each poll with a short deadline. A node that does not answer
  simply has no fresh status.
* *The leader* at a moment is the node with the highest ballot among those
  whose fresh status (younger than ``fresh_s``) says ``role == "leader"``.
  Every time that (ballot, node) changes, a ``LeaderChange`` is recorded;
  the first one is the first election, the rest are leader changes.
* The nemesis asks ``leader()`` to aim at the leader, and ``poll_once`` to
  watch an election closely (every few milliseconds) while one is running.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import grpc

from paxoskv.chaos.workload import dial
from paxoskv.tls import ClientTLS
from paxoskv.v1 import kv_pb2, kv_pb2_grpc

__all__ = ["LeaderChange", "Monitor", "NodeStatus"]


@dataclass(frozen=True, slots=True)
class NodeStatus:
    at_s: float
    role: str
    leader_id: int
    ballot: tuple[int, int]
    commit_index: int
    applied_index: int
    keys: int
    snapshot_index: int = 0  # of the last snapshot installed on or served by the node (0: none)


@dataclass(frozen=True, slots=True)
class LeaderChange:
    at_s: float
    leader: int
    ballot: tuple[int, int]


class Monitor:
    def __init__(
        self,
        targets: dict[int, str],
        is_up: Callable[[int], bool],
        *,
        clock: Callable[[], float] = time.monotonic,
        interval_s: float = 0.1,
        fresh_s: float = 1.0,
        poll_timeout_s: float = 0.3,
        tls: ClientTLS | None = None,
    ) -> None:
        self.clock = clock
        self.is_up = is_up
        self.interval_s = interval_s
        self.fresh_s = fresh_s
        self.poll_timeout_s = poll_timeout_s
        self.channels = {i: dial(t, f"monitor-n{i}", tls) for i, t in targets.items()}
        self.stubs = {i: kv_pb2_grpc.MaintenanceStub(ch) for i, ch in self.channels.items()}
        self.status: dict[int, NodeStatus] = {}
        self.changes: list[LeaderChange] = []
        self.polls = 0
        self.snapshot_max: dict[int, int] = {}  # node -> highest snapshot index seen
        self.snapshot_changes: dict[int, int] = {}  # node -> how often it rose (snapshots seen)

    async def close(self) -> None:
        for ch in self.channels.values():
            await ch.close(grace=None)

    async def status_of(self, i: int, timeout_s: float | None = None) -> NodeStatus | None:
        try:
            st: kv_pb2.StatusResponse = await self.stubs[i].Status(
                kv_pb2.StatusRequest(), timeout=timeout_s or self.poll_timeout_s
            )
        except grpc.aio.AioRpcError:
            return None
        ns = NodeStatus(
            at_s=self.clock(),
            role=st.role,
            leader_id=st.leader_id,
            ballot=(st.ballot_round, st.ballot_node),
            commit_index=st.commit_index,
            applied_index=st.applied_index,
            keys=st.keys,
            snapshot_index=st.snapshot_index,
        )
        self.status[i] = ns
        if ns.snapshot_index > self.snapshot_max.get(i, 0):
            self.snapshot_max[i] = ns.snapshot_index
            self.snapshot_changes[i] = self.snapshot_changes.get(i, 0) + 1
        return ns

    async def poll_once(self, ids: Iterable[int] | None = None) -> dict[int, NodeStatus]:
        ids = [i for i in (ids if ids is not None else self.stubs) if self.is_up(i)]
        results = await asyncio.gather(*(self.status_of(i) for i in ids))
        self.polls += 1
        self._note_leader()
        return {i: r for i, r in zip(ids, results) if r is not None}

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.poll_once()
            try:
                await asyncio.wait_for(stop.wait(), self.interval_s)
            except asyncio.TimeoutError:
                pass

    def leader(self) -> int | None:
        """The freshest view of the leader (None if no node claims it lately)."""
        now = self.clock()
        best: tuple[tuple[int, int], int] | None = None
        for i, st in self.status.items():
            if st.role == "leader" and now - st.at_s <= self.fresh_s and self.is_up(i):
                if best is None or st.ballot > best[0]:
                    best = (st.ballot, i)
        return best[1] if best else None

    def _note_leader(self) -> None:
        lid = self.leader()
        if lid is None:
            return
        ballot = self.status[lid].ballot
        if not self.changes or (self.changes[-1].ballot, self.changes[-1].leader) != (ballot, lid):
            if self.changes and ballot < self.changes[-1].ballot:
                return  # a deposed leader's late status: not a change
            self.changes.append(LeaderChange(self.clock(), lid, ballot))
