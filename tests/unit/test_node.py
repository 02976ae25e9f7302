"""Three Node objects in one process over the real ZeroMQ bus on 127.0.0.1,
with in-memory storage: the event loop, group commit and forwarding."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import pathlib

import pytest

from paxoskv.paxos.types import FEATURES, Role
from paxoskv.replica.errors import InvalidArgument, Unavailable, Unimplemented
from paxoskv.server.node import Node, NodeConfig, PeerAddr
from paxoskv.storage.memory import MemoryDisk, MemoryStorage
from paxoskv.util.ports import free_ports
from paxoskv.util.wait import wait_until_async
from paxoskv.v1 import kv_pb2


class Cluster:
    def __init__(self, n: int = 3, **extra) -> None:
        self.extra = extra
        self.ids = list(range(1, n + 1))
        ports = free_ports(2 * n)
        self.addrs = {i: PeerAddr("127.0.0.1", ports[2 * (i - 1)], ports[2 * (i - 1) + 1]) for i in self.ids}
        self.disks = {i: MemoryDisk(f"node{i}") for i in self.ids}
        self.nodes: dict[int, Node] = {}

    def config(self, i: int) -> NodeConfig:
        a = self.addrs[i]
        return NodeConfig(
            node_id=i, cluster_id="t", listen_host="127.0.0.1", port=a.port, bus_port=a.bus_port,
            peers={j: self.addrs[j] for j in self.ids if j != i}, data_dir=pathlib.Path("/nonexistent"),
            tick_ms=5, heartbeat_ms=20, election_ms=150, **self.extra,
        )

    async def start(self, i: int) -> None:
        node = Node(self.config(i), storage=MemoryStorage(self.disks[i], node_id=i, cluster_id="t"))
        await node.start()
        self.nodes[i] = node

    async def stop(self, i: int) -> None:
        await self.nodes.pop(i).stop()

    async def leader(self, timeout_s: float = 5.0) -> int:
        def one_leader() -> int | None:
            leaders = [i for i, n in self.nodes.items() if n.role is Role.LEADER]
            if len(leaders) == 1 and all(n.leader_id == leaders[0] for n in self.nodes.values()):
                return leaders[0]
            return None

        return await wait_until_async("one leader that every node follows", one_leader, timeout_s)


@contextlib.asynccontextmanager
async def running(n: int = 3, **extra):
    """A started cluster of ``n`` nodes, every node stopped at the end."""
    c = Cluster(n, **extra)
    try:
        for i in c.ids:
            await c.start(i)
        yield c
    finally:
        for i in list(c.nodes):
            await c.stop(i)


def put(client: str, seq: int, key: bytes, value: bytes) -> kv_pb2.PutRequest:
    return kv_pb2.PutRequest(request=kv_pb2.RequestHeader(client_id=client, sequence=seq), key=key, value=value)


def get(key: bytes) -> kv_pb2.GetRequest:
    return kv_pb2.GetRequest(key=key)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_writes_through_any_node_are_read_linearizably_from_every_node():
    async def main():
        async with running() as c:
            leader = await c.leader()
            follower = next(i for i in c.ids if i != leader)
            r = await c.nodes[follower].put(put("c1", 1, b"k", b"v1"), timeout_s=5)
            assert r.code == 0 and not r.existed
            r = await c.nodes[leader].put(put("c1", 2, b"k", b"v2"), timeout_s=5)
            assert r.existed
            for i in c.ids:
                value, index, revision = await c.nodes[i].get(get(b"k"), timeout_s=5)
                assert value == b"v2" and index >= 2 and revision >= r.revision  # read at the second put's or later

    run(main())


def test_a_retried_command_is_applied_once_and_answered_with_its_first_result():
    async def main():
        async with running() as c:
            await c.leader()
            n = c.nodes[1]
            first = await n.put(put("cx", 1, b"a", b"1"), timeout_s=5)
            again = await c.nodes[2].put(put("cx", 1, b"a", b"1"), timeout_s=5)
            assert first.index == again.index and not again.existed
            r = await n.put(put("cx", 2, b"a", b"2"), timeout_s=5)
            assert r.existed and r.index > first.index

    run(main())


def test_many_concurrent_writes_share_synced_batches_and_survive_a_full_restart():
    async def main():
        async with running() as c:
            await c.leader()
            writes = [
                c.nodes[1 + k % 3].put(put(f"w{k}", 1, b"k%d" % k, b"v%d" % k), timeout_s=20)
                for k in range(2000)
            ]
            results = await asyncio.gather(*writes)
            assert [r.code for r in results] == [0] * 2000
            assert len({r.index for r in results}) < 2000 / 4, "commands share slots (batching)"
        for i in c.ids:
            await c.start(i)
        try:
            await c.leader()
            for k in range(0, 2000, 97):
                value, _, _ = await c.nodes[2].get(get(b"k%d" % k), timeout_s=5)
                assert value == b"v%d" % k
        finally:
            for i in list(c.nodes):
                await c.stop(i)

    run(main())


def test_bad_input_is_refused_and_no_leader_means_unavailable():
    async def main():
        c = Cluster()
        await c.start(1)
        try:
            with pytest.raises(InvalidArgument):
                await c.nodes[1].put(put("c", 1, b"", b"x"), timeout_s=1)
            with pytest.raises(Unavailable, match="no leader"):
                await c.nodes[1].put(put("c", 1, b"k", b"x"), timeout_s=1)
        finally:
            await c.stop(1)

    run(main())


def test_status_reports_role_indexes_and_the_peers_heard_from():
    async def main():
        async with running() as c:
            leader = await c.leader()
            await c.nodes[leader].put(put("s", 1, b"k", b"v"), timeout_s=5)
            await wait_until_async(
                "the write applied and every peer heard from",
                lambda: (s := c.nodes[leader].status()).applied_index >= 1 and all(p.connected for p in s.peers),
                5,
            )
            st = c.nodes[leader].status()
            assert st.role == "leader" and st.leader_id == leader and st.keys == 1
            assert sorted(p.node_id for p in st.peers) == [i for i in c.ids if i != leader]
            assert all(p.connected and 0 <= p.last_heard_seconds < 1 for p in st.peers)

    run(main())


def test_a_node_behind_the_compacted_log_catches_up_by_snapshot_while_writes_continue():
    async def main():
        async with running(retain_entries=20, compact_step_entries=10, snapshot_chunk_bytes=512) as c:
            leader = await c.leader()
            lag = next(i for i in c.ids if i != leader)
            await c.stop(lag)
            for k in range(300):  # one at a time: one slot each
                await c.nodes[leader].put(put(f"a{k}", 1, b"k%d" % (k % 40), b"v%d" % k), timeout_s=5)
            assert c.nodes[leader].layer.replica.core.log_start > 200, "the leader compacted its log"
            await c.start(lag)
            writer = asyncio.ensure_future(
                asyncio.gather(*[
                    c.nodes[leader].put(put(f"b{k}", 1, b"k%d" % (k % 40), b"w%d" % k), timeout_s=10)
                    for k in range(200)
                ])
            )
            node = c.nodes[lag]
            await wait_until_async("a snapshot installed", lambda: node.layer.replica.snapshots_installed >= 1, 20)
            await writer
            want = c.nodes[leader].layer.replica.sm.applied_index
            await wait_until_async("caught up", lambda: node.layer.replica.sm.applied_index >= want, 20)
            assert dict(node.layer.replica.sm.items()) == dict(c.nodes[leader].layer.replica.sm.items())
            assert node.status().snapshot_index > 0

    run(main())


def test_the_kept_log_is_bounded_in_bytes_as_well_as_in_entries():
    async def main():
        async with running(retain_entries=100_000, retain_bytes_max=20_000) as c:
            leader = await c.leader()
            node = c.nodes[leader]
            for k in range(300):  # one slot each, ~1 KiB of command per slot
                await node.put(put(f"r{k}", 1, b"k%d" % (k % 10), b"x" * 1000), timeout_s=5)
            r = node.layer.replica
            kept = r.core.applied_index - r.core.log_start + 1
            assert r.compactions > 0 and kept < 300
            assert r._kept_bytes <= 20_000 * 1.1 + 1200
            assert len(r._kept) == kept

    run(main())


def test_small_writes_run_on_the_loop_and_large_ones_in_the_worker_thread() -> None:
    from paxoskv.paxos.types import Ballot, Entry, Ready
    from paxoskv.server import node as node_mod

    b = Ballot(1, 1)
    small = Ready(accepted=[Entry(1, b, (b"x" * 100,) * 10)])
    assert node_mod._runs_inline(small)
    assert node_mod._runs_inline(Ready(promised=b))  # a promise alone: tiny
    big = Ready(accepted=[Entry(s, b, (b"x" * 1000,) * 5) for s in range(1, 2)])
    assert not node_mod._runs_inline(big)  # 5 KB of commands: the thread
    catchup = Ready(chosen=[(s, (b"c",)) for s in range(1, node_mod.INLINE_CHOSEN_MAX + 2)])
    assert not node_mod._runs_inline(catchup)
    assert node_mod._runs_inline(Ready(chosen=[(1, (b"c",))]))
    # A busy node: its synced writes leave the loop, so gRPC calls keep arriving.
    calls = node_mod.INLINE_CALLS_MAX
    assert node_mod._runs_inline(small, calls)
    assert not node_mod._runs_inline(small, calls + 1)
    assert node_mod._runs_inline(Ready(chosen=[(1, (b"c",))]), calls + 1)  # unsynced: a memtable append


def test_a_node_with_several_calls_waiting_writes_in_the_worker_thread() -> None:
    """One call at a time: the leader's synced writes run on the loop. Eight
    calls at once: the write leaves the loop (where grpc.aio takes one new
    call per iteration), and the calls share a slot."""
    import threading

    async def main():
        async with running() as c:
            leader = c.nodes[await c.leader()]
            replica = leader.layer.replica
            write = replica.write
            synced_on_loop: list[bool] = []

            def recording_write(batch):
                if batch.ready.must_sync:
                    synced_on_loop.append(threading.current_thread() is threading.main_thread())
                return write(batch)

            replica.write = recording_write
            for seq in range(1, 6):
                r = await leader.put(put("one", seq, b"k", b"v%d" % seq), timeout_s=5)
                assert r.code == 0
            assert synced_on_loop and all(synced_on_loop), synced_on_loop
            assert leader.layer.calls.pending == 0
            synced_on_loop.clear()
            results = await asyncio.gather(
                *(leader.put(put(f"many{k}", 1, b"k%d" % k, b"v"), timeout_s=5) for k in range(8))
            )
            assert [r.code for r in results] == [0] * 8
            assert synced_on_loop and not synced_on_loop[0], synced_on_loop
            assert len({r.index for r in results}) < 8, "the waiting calls share slots"
            assert leader.layer.calls.pending == 0

    run(main())


def test_a_write_that_fails_in_the_writer_thread_stops_the_node_and_stop_ends_the_thread() -> None:
    """The off-loop write runs in the node's own writer thread: its failure
    reaches the pump (the node stops taking calls and ``fatal`` holds the
    error), and ``stop`` ends the thread."""
    import threading

    from paxoskv.storage.base import NotWritable

    async def main():
        async with running() as c:
            lid = await c.leader()
            leader = c.nodes[lid]
            replica = leader.layer.replica
            write = replica.write
            threads: list[threading.Thread] = []

            def failing_write(batch):
                if threading.current_thread() is not threading.main_thread():
                    threads.append(threading.current_thread())
                    raise NotWritable("/nonexistent", "disk gone")
                return write(batch)

            replica.write = failing_write
            results = await asyncio.gather(
                *(leader.put(put(f"w{k}", 1, b"k%d" % k, b"v"), timeout_s=5) for k in range(8)),
                return_exceptions=True,
            )
            assert threads, "no write ran off the loop"
            assert all(isinstance(r, Unavailable) for r in results), results
            error = await asyncio.wait_for(leader.fatal, 5)
            assert isinstance(error, NotWritable)
            with pytest.raises(Unavailable):
                await leader.put(put("after", 1, b"k", b"v"), timeout_s=1)
            assert threads[0].is_alive()
            await c.stop(lid)
            assert not threads[0].is_alive()

    run(main())


def _packed(node: Node, client: str, first: int, *keys: bytes):
    ops = [kv_pb2.RequestOp(put=kv_pb2.PutRequest(key=k, value=b"v")) for k in keys]
    return node.ops(ops, request=kv_pb2.RequestHeader(client_id=client, sequence=first), timeout_s=5)


def test_a_packed_batch_is_refused_until_every_member_is_known_to_take_them():
    """A member of an older version (features 0) would apply a packed batch's
    writes without their session: every node refuses them, having proposed
    nothing, until that member runs this version."""

    async def main():
        async with running() as c:
            old_config = c.config
            c.config = lambda i: dataclasses.replace(old_config(i), features=0) if i == 3 else old_config(i)
            await c.stop(3)
            await c.start(3)  # node 3 "downgraded"
            leader = await c.leader()
            await wait_until_async("the leader to hear node 3", lambda: c.nodes[leader].layer.replica.core.cluster_features == 0, 5)
            await wait_until_async(
                "every node to know", lambda: all(n.layer.replica.core.cluster_features == 0 for n in c.nodes.values()), 5
            )
            for i in c.ids:
                with pytest.raises(Unimplemented, match="packed batches"):
                    await _packed(c.nodes[i], "pk", 1, b"a", b"b")
            value, _, _ = await c.nodes[1].get(get(b"a"), timeout_s=5)
            assert value is None  # nothing was proposed
            c.config = old_config
            await c.stop(3)
            await c.start(3)  # upgraded
            await wait_until_async(
                "the gate to open", lambda: all(n.layer.replica.core.cluster_features == FEATURES for n in c.nodes.values()), 5
            )
            results = await _packed(c.nodes[3], "pk", 1, b"a", b"b")
            assert [r.code for r in results] == [0, 0]

    run(main())
