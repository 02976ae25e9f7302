"""The ZeroMQ peer bus, against real sockets on 127.0.0.1 (ports chosen free at run time).

Every scenario is an ``async def`` run by ``asyncio.run`` inside a plain test;
waiting is always "poll a condition until a deadline", never a bare sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AsyncExitStack

import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from paxoskv.paxos.codec import encode
from paxoskv.paxos.types import Accept, Accepted, Ballot, CatchupReply, Forward, Heartbeat, Message, Promise
from paxoskv.transport import BusClosed, BusKeys, DropReason, DuplicateNode, PeerBus
from paxoskv.transport.bus import RECV_QUEUE_MESSAGES_MAX
from paxoskv.util.ports import free_ports
from paxoskv.util.wait import wait_until_async

CLUSTER = "test-cluster"
DEADLINE_S = 15.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def addresses(ids: list[int]) -> dict[int, tuple[str, int]]:
    return {i: ("127.0.0.1", p) for i, p in zip(ids, free_ports(len(ids)), strict=True)}


def make_bus(node_id: int, addrs: dict[int, tuple[str, int]], **kw: object) -> PeerBus:
    kw.setdefault("probe_timeout_s", 0.3)  # peers that are not up yet cost this much at start
    return PeerBus(node_id, CLUSTER, "127.0.0.1", addrs[node_id][1], addrs, **kw)  # type: ignore[arg-type]


async def started(stack: AsyncExitStack, bus: PeerBus) -> PeerBus:
    await bus.start()
    stack.push_async_callback(bus.close)
    return bus


async def connected(*buses: PeerBus) -> None:
    for bus in buses:
        await wait_until_async(f"node {bus.node_id} connected to its peers",
                               lambda b=bus: all(s.writable for s in b.peer_status().values()), DEADLINE_S)


async def recv_within(bus: PeerBus, deadline_s: float = DEADLINE_S) -> list[Message]:
    return await asyncio.wait_for(bus.recv_batch(), deadline_s)


async def recv_n(bus: PeerBus, n: int, deadline_s: float = DEADLINE_S) -> tuple[list[Message], int]:
    """Receive exactly n messages; also return how many recv_batch calls it took."""
    got: list[Message] = []
    calls = 0
    end = time.monotonic() + deadline_s
    while len(got) < n:
        got.extend(await asyncio.wait_for(bus.recv_batch(), max(0.01, end - time.monotonic())))
        calls += 1
    assert len(got) == n, f"got {len(got)} messages, expected {n}"
    return got, calls


def hb(frm: int, to: int, seq: int = 0) -> Heartbeat:
    return Heartbeat(frm=frm, to=to, ballot=Ballot(1, frm), commit=seq, read_seq=seq)


def run(coro_fn: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(coro_fn(), 120))


# ---- the happy path -------------------------------------------------------------


def test_three_buses_exchange_messages() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        addrs = addresses([1, 2, 3])
        async with AsyncExitStack() as stack:
            buses = {i: await started(stack, make_bus(i, addrs, clock=clock)) for i in addrs}
            await connected(*buses.values())
            for i, bus in buses.items():
                for j in buses:
                    if j != i:
                        assert bus.send(hb(i, j, seq=10 * i + j))
            clock.now = 1234.5
            for j, bus in buses.items():
                got, _ = await recv_n(bus, 2)
                assert sorted((m.frm, m.to, m.commit) for m in got) == sorted(
                    (i, j, 10 * i + j) for i in buses if i != j
                )
                status = bus.peer_status()
                assert set(status) == set(buses) - {j}
                assert all(s.last_recv_s == 1234.5 and s.received == 1 for s in status.values())
                assert all(s.sent == 1 and s.send_dropped == 0 for s in status.values())
                assert bus.stats.sent == 2 and bus.stats.received == 2
                assert not any(bus.stats.dropped.values())

    run(scenario)


def test_never_heard_peer_has_no_last_recv_and_own_entry_is_ignored() -> None:
    async def scenario() -> None:
        addrs = addresses([1, 2])
        async with AsyncExitStack() as stack:
            bus = await started(stack, make_bus(1, addrs))  # addrs includes node 1 itself
            status = bus.peer_status()
            assert list(status) == [2]
            assert status[2].last_recv_s is None and status[2].address == addrs[2]
            assert bus.port == addrs[1][1]

    run(scenario)


def test_burst_of_10k_drains_in_few_batches(capsys: pytest.CaptureFixture[str]) -> None:
    async def scenario() -> None:
        addrs = addresses([1, 2])
        async with AsyncExitStack() as stack:
            a = await started(stack, make_bus(1, addrs, send_queue_max=20_000))
            b = await started(stack, make_bus(2, addrs, send_queue_max=20_000))
            await connected(a)
            n = 10_000
            sent = a.send_many(Accepted(frm=1, to=2, ballot=Ballot(3, 1), slots=(k,)) for k in range(1, n + 1))
            assert sent == n and a.stats.sent == n
            got, calls = await recv_n(b, n)
            assert [m.slots[0] for m in got] == list(range(1, n + 1))  # one pipe: FIFO
            with capsys.disabled():
                print(f"\nbus: 10k burst drained in {calls} recv_batch calls")
            # The ROUTER queues RCVHWM messages per connection (the rest waits in the
            # kernel): a drain reads at least about that many.
            assert calls <= n // RECV_QUEUE_MESSAGES_MAX, f"{calls} recv_batch calls for {n} messages"

            # max_messages caps one drain.
            assert a.send_many(hb(1, 2, k) for k in range(50)) == 50
            small = await asyncio.wait_for(b.recv_batch(max_messages=7), DEADLINE_S)
            assert 1 <= len(small) <= 7
            more, _ = await recv_n(b, 50 - len(small))
            assert [m.commit for m in small + more] == list(range(50))

    run(scenario)


def test_throughput_figure(capsys: pytest.CaptureFixture[str]) -> None:
    """Messages per second and round trips over loopback, with CURVE and
    without (printed, not asserted: ``python -m paxoskv.bench.bus_curve``
    measures them properly)."""
    from paxoskv.bench.bus_curve import measure

    for secure in (False, True):
        m = asyncio.run(asyncio.wait_for(measure(secure, 20_000, 2_000, 500), 120))
        with capsys.disabled():
            print(f"\nbus {'CURVE' if secure else 'insecure'}: loopback Heartbeat {m['hb']:,.0f} msgs/s; "
                  f"Accept(100 x 100 B) {m['accept']:,.0f} msgs/s ({m['accept'] * 10_232 / 1e6:,.0f} MB/s); "
                  f"round trip p50 {m['p50']:.0f} us, p99 {m['p99']:.0f} us")


# ---- bad frames: counted, logged, dropped; the bus goes on ----------------------


def raw_dealer(ctx: zmq.Context, identity: bytes, port: int) -> zmq.Socket:
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.ROUTING_ID, identity)
    s.connect(f"tcp://127.0.0.1:{port}")
    return s


def test_each_kind_of_bad_frame_is_dropped_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    frame_bytes_max = 4096

    async def scenario() -> None:
        addrs = addresses([1, 2, 3])  # node 3 is played by raw sockets
        ctx = zmq.Context()
        try:
            async with AsyncExitStack() as stack:
                a = await started(stack, make_bus(1, addrs))
                b = await started(stack, make_bus(2, addrs, frame_bytes_max=frame_bytes_max))
                port = addrs[2][1]
                as3 = raw_dealer(ctx, b"3", port)
                as9 = raw_dealer(ctx, b"9", port)
                good = encode(hb(3, 2, 77), CLUSTER)

                async def expect_dropped(sock: zmq.Socket, frames: list[bytes], reason: DropReason) -> None:
                    before = dict(b.stats.dropped)
                    sock.send_multipart(frames)
                    as3.send(good)  # a good message after the bad one
                    got = await recv_within(b)
                    assert [(m.frm, m.commit) for m in got] == [(3, 77)]
                    after = dict(b.stats.dropped)
                    assert after[reason] == before[reason] + 1, reason
                    assert {r: after[r] - before[r] for r in DropReason if r != reason} == dict.fromkeys(
                        set(DropReason) - {reason}, 0
                    )

                await expect_dropped(as3, [b"\xff\x00garbage"], DropReason.MALFORMED)
                await expect_dropped(as3, [good, good], DropReason.MALFORMED)  # two frames
                await expect_dropped(as3, [encode(hb(3, 2), "other-cluster")], DropReason.FOREIGN_CLUSTER)
                await expect_dropped(as9, [encode(hb(9, 2), CLUSTER)], DropReason.UNKNOWN_SENDER)
                await expect_dropped(as3, [encode(hb(2, 2), CLUSTER)], DropReason.UNKNOWN_SENDER)  # "from" us
                await expect_dropped(as3, [encode(hb(3, 1), CLUSTER)], DropReason.WRONG_DESTINATION)
                await expect_dropped(as3, [encode(hb(1, 2), CLUSTER)], DropReason.IDENTITY_MISMATCH)
                await expect_dropped(as9, [encode(hb(3, 2), CLUSTER)], DropReason.IDENTITY_MISMATCH)
                # A frame of exactly frame_bytes_max is read (and found to be junk) ...
                await expect_dropped(as3, [b"\xff" * frame_bytes_max], DropReason.MALFORMED)

                # ... one byte more (MAXMSGSIZE is the limit itself) makes libzmq cut
                # that connection without our reading it; the sender reconnects and
                # gets through.
                before = dict(b.stats.dropped)
                as3.send(b"y" * (frame_bytes_max + 1))
                sent = 0

                async def retransmit() -> list[Message]:  # as Paxos would, until one gets through
                    nonlocal sent
                    as3.send(encode(hb(3, 2, 1000 + sent), CLUSTER))
                    sent += 1
                    try:
                        return await asyncio.wait_for(b.recv_batch(), 0.1)
                    except TimeoutError:
                        return []

                got = await wait_until_async(
                    "node 3 to get through after its monstrous frame", retransmit, DEADLINE_S, interval_s=0
                )
                assert all(m.frm == 3 and m.commit >= 1000 for m in got)
                assert b.stats.dropped == before

                # Real traffic from a real bus still flows (node 3's last
                # retransmissions may still trickle in around it).
                await wait_until_async("node 1 connected to node 2", lambda: a.peer_status()[2].writable, DEADLINE_S)
                assert a.send(hb(1, 2, 5))
                from_1: list[Message] = []
                while not from_1:
                    got = await recv_within(b)
                    from_1 = [m for m in got if m.frm == 1]
                    assert all(m.frm == 3 and m.commit >= 1000 for m in got if m.frm != 1)
                assert [m.commit for m in from_1] == [5]
                stats = b.stats.as_dict()
                assert stats["dropped_malformed"] == 3 and stats["dropped_identity_mismatch"] == 2
                assert stats["dropped_foreign_cluster"] == 1 and stats["dropped_key_mismatch"] == 0
                assert stats["dropped_unknown_sender"] == 2 and stats["dropped_wrong_destination"] == 1
                assert b.peer_status()[1].received == 1
        finally:
            ctx.destroy(linger=0)

    with caplog.at_level(logging.WARNING, logger="paxoskv.transport.bus"):
        run(scenario)
    drops = [r.getMessage() for r in caplog.records if "dropped a frame" in r.getMessage()]
    # One report per sender identity per minute: node 3 and the unknown identity "9".
    assert len(drops) == 2, drops
    assert any("from node 3: malformed" in d for d in drops)
    assert any("unknown identity b'9'" in d and "unknown_sender" in d for d in drops)


def test_drop_log_is_rate_limited_per_peer_by_the_injected_clock(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        addrs = addresses([1, 2, 3])
        ctx = zmq.Context()
        try:
            async with AsyncExitStack() as stack:
                b = await started(stack, make_bus(2, addrs, clock=clock))
                as3 = raw_dealer(ctx, b"3", addrs[2][1])
                as1 = raw_dealer(ctx, b"1", addrs[2][1])

                async def garbage_then_good(sock: zmq.Socket, frm: int, n: int) -> None:
                    for _ in range(n):
                        sock.send(b"\xffjunk")
                    sock.send(encode(hb(frm, 2), CLUSTER))
                    got = await recv_within(b)
                    assert [m.frm for m in got] == [frm]

                def reports() -> list[str]:
                    return [r.getMessage() for r in caplog.records if "dropped a frame" in r.getMessage()]

                await garbage_then_good(as3, 3, 5)
                assert len(reports()) == 1
                await garbage_then_good(as1, 1, 3)  # another peer has its own budget
                assert len(reports()) == 2
                clock.now += 59.0
                await garbage_then_good(as3, 3, 2)
                assert len(reports()) == 2
                clock.now += 1.0
                await garbage_then_good(as3, 3, 1)
                assert len(reports()) == 3
                assert "node 3" in reports()[-1] and "(6 more like it" in reports()[-1]
                assert b.stats.dropped[DropReason.MALFORMED] == 11
        finally:
            ctx.destroy(linger=0)

    with caplog.at_level(logging.WARNING, logger="paxoskv.transport.bus"):
        run(scenario)


# ---- failures: restarts, dead and slow peers --------------------------------------


def test_restarted_peer_is_reached_again() -> None:
    async def scenario() -> None:
        addrs = addresses([1, 2])
        async with AsyncExitStack() as stack:
            a = await started(stack, make_bus(1, addrs))
            b = await started(stack, make_bus(2, addrs))
            await connected(a, b)
            assert a.send(hb(1, 2, 1))
            assert [m.commit for m in await recv_within(b)] == [1]

            await b.close()
            await b.close()  # idempotent
            await wait_until_async("node 1 to notice node 2 is gone", lambda: not a.peer_status()[2].writable, DEADLINE_S)
            dropped = a.stats.send_dropped
            assert not a.send(hb(1, 2, 2))
            assert a.stats.send_dropped == dropped + 1

            b2 = await started(stack, make_bus(2, addrs))  # same port
            await connected(a, b2)
            assert a.send(hb(1, 2, 3)) and b2.send(hb(2, 1, 4))
            assert [m.commit for m in await recv_within(b2)] == [3]
            assert [m.commit for m in await recv_within(a)] == [4]

    run(scenario)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_dead_peer_costs_counted_drops_not_memory() -> None:
    async def scenario() -> None:
        addrs = addresses([1, 2])  # nobody ever listens on node 2's port
        async with AsyncExitStack() as stack:
            a = await started(stack, make_bus(1, addrs))
            msg = Forward(frm=1, to=2, commands=(b"z" * 1000,))
            rss_before = rss_bytes()
            n = 100_000
            queued = sum(a.send(msg) for _ in range(n))
            assert queued == 0
            assert a.stats.send_dropped == n and a.stats.sent == 0
            status = a.peer_status()[2]
            assert status.send_dropped == n and not status.writable
            assert rss_bytes() - rss_before < 50 << 20  # 100k x 1 kB queued would be 100 MB

    run(scenario)


def test_black_hole_peer_gets_nothing_queued() -> None:
    """A port whose kernel accepts TCP but where nothing speaks ZMTP (a hung
    process): the connection never completes, so nothing is queued for it."""

    async def scenario() -> None:
        addrs = addresses([1, 2])
        hole = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            hole.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            hole.bind(addrs[2])
            hole.listen(16)
            hole.setblocking(False)
            accepted: list[socket.socket] = []

            def accept() -> bool:
                try:
                    accepted.append(hole.accept()[0])  # and then never answer
                except BlockingIOError:
                    return False
                return True

            async with AsyncExitStack() as stack:
                a = await started(stack, make_bus(1, addrs))
                await wait_until_async("node 1 to open a TCP connection to the black hole", accept, DEADLINE_S)
                msg = hb(1, 2)
                n = 10_000
                for k in range(n):
                    assert not a.send(msg)
                    if k % 1000 == 0:
                        await asyncio.sleep(0)  # let libzmq try its connection
                assert a.stats.send_dropped == n and not a.peer_status()[2].writable
        finally:
            for conn in accepted:
                conn.close()
            hole.close()

    run(scenario)


def test_slow_peer_fills_its_queue_then_sends_are_dropped() -> None:
    """A peer that never reads: the high-water marks bound what is queued."""

    async def scenario() -> None:
        addrs = addresses([1, 2])
        async with AsyncExitStack() as stack:
            a = await started(stack, make_bus(1, addrs, send_queue_max=200))
            b = await started(stack, make_bus(2, addrs, send_queue_max=200))  # never calls recv_batch
            await connected(a)
            msg = Forward(frm=1, to=2, commands=(b"s" * 10_000,))
            rss_before = rss_bytes()
            n = 20_000
            queued = 0
            for k in range(n):
                queued += a.send(msg)
                if k % 1000 == 999:
                    await asyncio.sleep(0)  # give libzmq's I/O thread a chance to move bytes
            assert a.stats.sent == queued and a.stats.send_dropped == n - queued
            # 200 out + 200 in + what the kernel buffers; unbounded would be all 20k (200 MB).
            assert 200 <= queued < 5_000, queued
            assert rss_bytes() - rss_before < 100 << 20
            # When the peer finally reads, it gets what was queued, in order, and nothing else.
            got, _ = await recv_n(b, queued)
            assert all(isinstance(m, Forward) for m in got)

    run(scenario)


# ---- lifecycle and misuse -------------------------------------------------------


def test_close_wakes_a_waiting_receiver_and_later_calls_are_safe() -> None:
    async def scenario() -> None:
        addrs = addresses([1, 2])
        bus = make_bus(1, addrs)
        with pytest.raises(RuntimeError):
            bus.send(hb(1, 2))
        await bus.start()
        with pytest.raises(RuntimeError):
            await bus.start()
        waiter = asyncio.ensure_future(bus.recv_batch())
        await wait_until_async("recv_batch to wait", lambda: bus._receiving, DEADLINE_S)
        with pytest.raises(RuntimeError):
            await bus.recv_batch()  # one receiver at a time
        await bus.close()
        with pytest.raises(BusClosed):
            await asyncio.wait_for(waiter, DEADLINE_S)
        await bus.close()
        assert bus.closed
        assert not bus.send(hb(1, 2))
        assert bus.stats.send_dropped == 1
        with pytest.raises(BusClosed):
            await bus.recv_batch()
        assert not bus.peer_status()[2].writable

    run(scenario)


def test_cancelling_a_receiver_is_plain_cancellation() -> None:
    async def scenario() -> None:
        addrs = addresses([1, 2])
        async with AsyncExitStack() as stack:
            a = await started(stack, make_bus(1, addrs))
            b = await started(stack, make_bus(2, addrs))
            waiter = asyncio.ensure_future(b.recv_batch())
            await wait_until_async("recv_batch to wait", lambda: b._receiving, DEADLINE_S)
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
            assert not b._receiving
            await connected(a)
            assert a.send(hb(1, 2, 9))
            assert [m.commit for m in await recv_within(b)] == [9]

    run(scenario)


def test_misuse_is_refused() -> None:
    async def scenario() -> None:
        addrs = addresses([1, 2])
        async with AsyncExitStack() as stack:
            a = await started(stack, make_bus(1, addrs, frame_bytes_max=1000))
            with pytest.raises(ValueError):
                a.send(hb(1, 7))  # not a peer
            with pytest.raises(ValueError):
                a.send(hb(2, 1))  # not from this node
            with pytest.raises(ValueError):
                await a.recv_batch(max_messages=0)
            assert not a.send(Forward(frm=1, to=2, commands=(b"q" * 2000,)))
            assert a.stats.send_oversized == 1 and a.stats.sent == 0
        with pytest.raises(ValueError):
            PeerBus(0, CLUSTER, "127.0.0.1", 1, {})
        with pytest.raises(ValueError):
            PeerBus(1, CLUSTER, "127.0.0.1", 1, {0: ("127.0.0.1", 2)})

    run(scenario)


def test_start_fails_cleanly_when_the_port_is_taken() -> None:
    async def scenario() -> None:
        addrs = addresses([1, 2])
        async with AsyncExitStack() as stack:
            await started(stack, make_bus(1, addrs))
            clash = make_bus(1, addrs)
            with pytest.raises(zmq.ZMQError):
                await clash.start()
            assert clash.closed

    run(scenario)


# What the two libzmq-abort reproductions below wait on, in their child
# processes: the kernel's view of a TCP connection (/proc/net/tcp) and of a
# process (/proc/PID/stat), polled with a deadline -- never a fixed pause.
_KERNEL_WAITS = r"""
import os, time

def _tcp():
    rows = []
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(name).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            tx, rx = (int(x, 16) for x in f[4].split(":"))
            rows.append((int(f[1].rsplit(":", 1)[1], 16), int(f[2].rsplit(":", 1)[1], 16), int(f[3], 16), tx, rx))
    return rows  # (local port, remote port, state, tx queue, rx queue)

ESTABLISHED = 1

def wait_for(what, ok, deadline_s=15.0):
    end = time.monotonic() + deadline_s
    while not ok():
        if time.monotonic() > end:
            raise SystemExit("timed out waiting for " + what)
        time.sleep(0.001)

def unread_at(port):
    # bytes the kernel holds for connections accepted on `port`, not yet read
    return sum(rx for lp, _, st, _, rx in _tcp() if lp == port and st == ESTABLISHED)

def unsent_to(port):
    # bytes not yet acknowledged on connections to `port` (None: no connection)
    rows = [tx for _, rp, st, tx, _ in _tcp() if rp == port and st == ESTABLISHED]
    return sum(rows) if rows else None

def established_at(port):
    return any(lp == port and st == ESTABLISHED for lp, _, st, _, _ in _tcp())

def stopped(pid):
    return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "T"
"""

_STALLED_ROUTER_SCRIPT = _KERNEL_WAITS + r"""
import asyncio, sys, zmq
from zmq.utils.monitor import recv_monitor_message
from paxoskv.transport.bus import PeerBus

async def main():
    bus = PeerBus(1, "c", "127.0.0.1", 0, {2: ("127.0.0.1", 1)}, recv_queue_max=10, probe_timeout_s=0.1)
    await bus.start()
    ctx = zmq.Context()
    d = ctx.socket(zmq.DEALER)
    d.setsockopt(zmq.ROUTING_ID, b"2")
    events = d.get_monitor_socket()
    d.connect(f"tcp://127.0.0.1:{bus.port}")
    seen = []
    def handshaken():
        while events.poll(0):
            seen.append(recv_monitor_message(events)["event"])
        return zmq.EVENT_HANDSHAKE_SUCCEEDED in seen
    wait_for("the handshake", handshaken)
    sent = 0
    for _ in range(5000):  # nobody drains the bus: its ROUTER input stops at RCVHWM
        try:
            d.send(b"x" * 1000, zmq.NOBLOCK)
            sent += 1
        except zmq.Again:
            break
    assert sent < 5000, "the DEALER never reached its high-water mark"
    # the ROUTER has stopped reading: the kernel holds what it does not take
    wait_for("unread bytes at the bus", lambda: unread_at(bus.port) > 0)
    d.disable_monitor()
    events.close(linger=0)
    d.close(linger=0)  # the peer goes away while the input is stopped
    # Not a synchronisation: the property is "the process is still alive
    # after libzmq's ZMTP heartbeat interval and timeout (1 s, 3 s) have
    # passed with the peer gone", so the window is a length of time.
    time.sleep(4.0)
    print("survived", flush=True)
    await bus.close()

asyncio.run(main())
"""


def test_a_peer_leaving_while_nobody_drains_the_bus_does_not_abort_the_process():
    """libzmq 4.3.5 aborts (stream_engine_base.cpp:310) when a ROUTER with ZMTP
    heartbeats loses a peer while its input is stopped at RCVHWM; the bus keeps
    heartbeats off its ROUTER. Found by the chaos campaign (5 nodes, seed 77)."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", _STALLED_ROUTER_SCRIPT], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "survived" in r.stdout, (r.returncode, r.stderr[-500:])


_DYING_PEER_SCRIPT = _KERNEL_WAITS + r"""
import asyncio, signal, subprocess, sys
from paxoskv.transport.bus import PeerBus

PEER = '''
import asyncio, sys, time
from paxoskv.paxos.types import Ballot, Heartbeat
from paxoskv.transport.bus import PeerBus

async def main():
    bus = PeerBus(2, "c", "127.0.0.1", 0, {1: ("127.0.0.1", int(sys.argv[1]))}, probe_timeout_s=0.1)
    await bus.start()
    while not bus.peer_status()[1].writable:
        await asyncio.sleep(0.01)
    for k in range(40):  # slowly: whatever ZMTP commands the DEALER sends go between them
        bus.send(Heartbeat(frm=2, to=1, ballot=Ballot(1, 2), commit=k, read_seq=0))
        time.sleep(0.002)
    print("sent", flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
'''

async def main():
    bus = PeerBus(1, "c", "127.0.0.1", 0, {2: ("127.0.0.1", 1)}, recv_queue_max=4, probe_timeout_s=0.1)
    await bus.start()  # and nobody drains it: its input stops at RCVHWM
    peer = subprocess.Popen([sys.executable, "-c", PEER, str(bus.port)], stdout=subprocess.PIPE)
    peer.stdout.readline()
    # all the peer sent is at our end, some of it unread by the stopped ROUTER
    wait_for("the peer's bytes delivered", lambda: unsent_to(bus.port) == 0)
    wait_for("unread bytes at the bus", lambda: unread_at(bus.port) > 0)
    os.kill(peer.pid, signal.SIGSTOP)  # unread data in its socket: the kernel resets the connection
    wait_for("the peer stopped", lambda: stopped(peer.pid))
    os.kill(peer.pid, signal.SIGKILL)
    peer.wait()
    wait_for("the connection gone", lambda: not established_at(bus.port))
    n = 0
    while n < 40:
        try:
            n += len(await asyncio.wait_for(bus.recv_batch(), 2.0))
        except TimeoutError:
            break
    print("survived", n, flush=True)
    await bus.close()

asyncio.run(main())
"""


def test_a_peer_dying_while_our_router_input_is_stopped_does_not_abort_the_process():
    """libzmq 4.3.5 aborts (stream_engine_base.cpp:310) when a ROUTER's input is
    stopped at RCVHWM with a ZMTP PING buffered from a peer that then dies (the
    PONG goes to a dead engine): a DEALER with HEARTBEAT_IVL=1 in place of the
    peer below reproduces it. Found by the chaos campaign (5 nodes, seed 5150).
    The bus's DEALERs send no heartbeats, so a real peer cannot do it."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", _DYING_PEER_SCRIPT], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "survived" in r.stdout, (r.returncode, r.stderr[-500:])


def test_the_bus_sends_no_zmtp_heartbeats() -> None:
    async def scenario() -> None:
        addrs = addresses([1, 2])
        async with AsyncExitStack() as stack:
            bus = await started(stack, make_bus(1, addrs))
            sock = bus._peers[2].sock
            assert sock.getsockopt(zmq.HEARTBEAT_IVL) == 0 and sock.getsockopt(zmq.TCP_MAXRT) > 0

    run(scenario)


# ---- CURVE: the ZAP allow-list, keys bound to member ids ----------------------------


@pytest.fixture
def zctx() -> Iterator[zmq.Context]:
    """A context for a test's raw sockets, destroyed after it (after its buses)."""
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


def curve_keys(ids: list[int]) -> dict[int, BusKeys]:
    """In-memory key pairs of a cluster: each node's BusKeys."""
    pairs = {i: zmq.curve_keypair() for i in ids}
    members = {i: pub for i, (pub, _) in pairs.items()}
    return {i: BusKeys(i, pub, sec, members) for i, (pub, sec) in pairs.items()}


class Dealer:
    """A raw DEALER at a bus (CURVE with ``pair`` if given), with a monitor of its handshakes."""

    def __init__(
        self,
        ctx: zmq.Context,
        port: int,
        *,
        pair: tuple[bytes, bytes] | None = None,
        server_key: bytes | None = None,
        routing_id: bytes | None = None,
    ) -> None:
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDTIMEO, int(DEADLINE_S * 1000))
        if routing_id is not None:
            self.sock.setsockopt(zmq.ROUTING_ID, routing_id)
        if pair is not None:
            self.sock.curve_publickey, self.sock.curve_secretkey = pair
            self.sock.curve_serverkey = server_key
        self.events = self.sock.get_monitor_socket()
        self.sock.connect(f"tcp://127.0.0.1:{port}")
        self.seen: list[int] = []

    async def handshake(self) -> int:
        """The first handshake event: HANDSHAKE_SUCCEEDED or one of the failures."""
        done = (zmq.EVENT_HANDSHAKE_SUCCEEDED, zmq.EVENT_HANDSHAKE_FAILED_AUTH,
                zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
        await wait_until_async("a handshake event", lambda: self._poll() and any(e in done for e in self.seen), DEADLINE_S)
        return next(e for e in self.seen if e in done)

    def _poll(self) -> bool:
        while self.events.poll(0):
            self.seen.append(recv_monitor_message(self.events)["event"])
        return True

    def close(self) -> None:
        self.sock.disable_monitor()
        self.events.close(linger=0)
        self.sock.close(linger=0)


def monitor_disconnects(stack: AsyncExitStack, sock: zmq.Socket) -> Callable[[], int]:
    """How many times ``sock`` lost a connection since this call. (The monitor
    lives in the bus's context: it is closed before the bus, or term() waits.)"""
    owner = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)  # an asyncio socket, in that context
    mon = zmq.Socket.shadow(owner.underlying)

    def stop() -> None:
        sock.disable_monitor()
        owner.close(linger=0)

    stack.callback(stop)
    count = 0

    def disconnects() -> int:
        nonlocal count
        while mon.poll(0):
            recv_monitor_message(mon)
            count += 1
        return count

    return disconnects


def test_curve_buses_exchange_messages() -> None:
    async def scenario() -> None:
        addrs = addresses([1, 2, 3])
        keys = curve_keys([1, 2, 3])
        async with AsyncExitStack() as stack:
            buses = {i: await started(stack, make_bus(i, addrs, keys=keys[i])) for i in addrs}
            await connected(*buses.values())
            assert all(b.secure for b in buses.values())
            for i, bus in buses.items():
                assert bus.send_many(hb(i, j, 10 * i + j) for j in buses if j != i) == 2
            for j, bus in buses.items():
                got, _ = await recv_n(bus, 2)
                assert sorted((m.frm, m.commit) for m in got) == sorted((i, 10 * i + j) for i in buses if i != j)
                assert not any(bus.stats.dropped.values()) and bus.stats.refused_handshakes == 0

    run(scenario)


def test_zap_admits_exactly_the_member_keys(caplog: pytest.LogCaptureFixture, zctx: zmq.Context) -> None:
    """No key, or a valid CURVE key that is not a member's: refused in the
    handshake, nothing it sends reaches the node; a member's key gets in."""

    async def scenario() -> None:
        addrs = addresses([1, 2, 3])
        keys = curve_keys([1, 2, 3])
        async with AsyncExitStack() as stack:
            bus = await started(stack, make_bus(1, addrs, keys=keys[1]))
            port, server = addrs[1][1], keys[1].public
            stranger = Dealer(zctx, port, pair=zmq.curve_keypair(), server_key=server, routing_id=b"3")
            plain = Dealer(zctx, port, routing_id=b"3")
            member = Dealer(zctx, port, pair=(keys[3].public, keys[3].secret), server_key=server)
            assert await stranger.handshake() == zmq.EVENT_HANDSHAKE_FAILED_AUTH
            assert await plain.handshake() != zmq.EVENT_HANDSHAKE_SUCCEEDED
            assert await member.handshake() == zmq.EVENT_HANDSHAKE_SUCCEEDED
            assert bus.stats.refused_handshakes >= 1
            for d in (stranger, plain):  # queued at best, on a connection that will never be
                with contextlib.suppress(zmq.Again):
                    d.sock.send(encode(hb(3, 1, 666), CLUSTER), zmq.NOBLOCK)
            member.sock.send(encode(hb(3, 1, 7), CLUSTER))
            got = await recv_within(bus)
            assert [(m.frm, m.commit) for m in got] == [(3, 7)]
            assert not any(bus.stats.dropped.values())  # not one frame of theirs was even read
            for d in (stranger, plain, member):
                d.close()

    with caplog.at_level(logging.WARNING, logger="paxoskv.transport.bus"):
        run(scenario)
    refused = [r.getMessage() for r in caplog.records if "refused a connection from 127.0.0.1" in r.getMessage()]
    assert refused and "is not a member's" in refused[0], refused


def test_a_bus_whose_zap_handler_is_gone_admits_nobody(zctx: zmq.Context) -> None:
    """libzmq admits every CURVE client when no ZAP handler answers; the bus
    sets ZAP_ENFORCE_DOMAIN, so losing the handler shuts the door instead."""

    async def scenario() -> None:
        addrs = addresses([1, 2])
        keys = curve_keys([1, 2])
        async with AsyncExitStack() as stack:
            bus = await started(stack, make_bus(1, addrs, keys=keys[1]))
            assert bus._auth is not None
            bus._auth.stop()
            member = Dealer(zctx, addrs[1][1], pair=(keys[2].public, keys[2].secret), server_key=keys[1].public)
            assert await member.handshake() != zmq.EVENT_HANDSHAKE_SUCCEEDED
            member.close()

    run(scenario)


def test_a_member_key_cannot_speak_for_another_member_nor_take_its_link(
    caplog: pytest.LogCaptureFixture, zctx: zmq.Context
) -> None:
    async def scenario() -> None:
        addrs = addresses([1, 2, 3])
        keys = curve_keys([1, 2, 3])
        async with AsyncExitStack() as stack:
            b1 = await started(stack, make_bus(1, addrs, keys=keys[1]))
            b2 = await started(stack, make_bus(2, addrs, keys=keys[2]))
            await wait_until_async("node 2 connected to node 1", lambda: b2.peer_status()[1].writable, DEADLINE_S)
            link_lost = monitor_disconnects(stack, b2._peers[1].sock)
            # Node 3's key, claiming node 2 in the Envelope and in its routing id.
            liar = Dealer(zctx, addrs[1][1], pair=(keys[3].public, keys[3].secret),
                          server_key=keys[1].public, routing_id=b"2")
            assert await liar.handshake() == zmq.EVENT_HANDSHAKE_SUCCEEDED
            liar.sock.send(encode(hb(2, 1, 666), CLUSTER))
            liar.sock.send(encode(hb(3, 1, 3), CLUSTER))  # as itself: fine
            assert b2.send(hb(2, 1, 2))  # the real node 2, on its own link
            got, _ = await recv_n(b1, 2)
            assert sorted((m.frm, m.commit) for m in got) == [(2, 2), (3, 3)]
            assert b1.stats.dropped[DropReason.KEY_MISMATCH] == 1
            assert sum(b1.stats.dropped.values()) == 1
            assert link_lost() == 0, "node 2's link was taken over"
            assert b1.peer_status()[2].received == 1 and b1.peer_status()[3].received == 1
            liar.close()

    with caplog.at_level(logging.WARNING, logger="paxoskv.transport.bus"):
        run(scenario)
    drops = [r.getMessage() for r in caplog.records if "dropped a frame" in r.getMessage()]
    assert drops == ["peer bus: dropped a frame from node 3: key_mismatch: claims to be node 2"], drops


def test_insecure_bus_lets_anyone_speak_for_a_member_and_take_its_link_over(zctx: zmq.Context) -> None:
    """What the insecure bus allows (documented, not wanted): a DEALER with
    node 2's routing id is believed to be node 2, and takes node 2's link
    over (ROUTER_HANDOVER): node 2's frames go nowhere until its unread data
    fills the buffers and stays unacknowledged for TCP_MAXRT, and node 2
    reconnects, taking the link back in turn."""

    async def scenario() -> None:
        addrs = addresses([1, 2])
        async with AsyncExitStack() as stack:
            b1 = await started(stack, make_bus(1, addrs))
            b2 = await started(stack, make_bus(2, addrs))
            await connected(b2)
            link_lost = monitor_disconnects(stack, b2._peers[1].sock)
            thief = Dealer(zctx, addrs[1][1], routing_id=b"2")
            assert await thief.handshake() == zmq.EVENT_HANDSHAKE_SUCCEEDED
            thief.sock.send(encode(hb(2, 1, 666), CLUSTER))
            assert [(m.frm, m.commit) for m in await recv_within(b1)] == [(2, 666)]  # forged, believed
            receiving(stack, b1)
            bulk = Forward(frm=2, to=1, commands=(b"z" * 60_000,))
            await wait_until_async("node 2 to find its link dead and reconnect", lambda: b2.send(bulk) is None or link_lost() >= 1, 60)
            await wait_until_async("node 2 heard again", lambda: b2.send(hb(2, 1, 7)) and b1.peer_status()[2].received > 1, 30)
            thief.close()

    run(scenario)


# ---- bounds: bytes, not only messages -------------------------------------------------


def test_a_peer_that_does_not_read_costs_at_most_send_bytes_max_of_large_messages() -> None:
    async def scenario() -> None:
        addrs = addresses([1, 2])
        async with AsyncExitStack() as stack:
            a = await started(stack, make_bus(1, addrs, send_bytes_max=8 << 20, frame_bytes_max=1 << 20))
            b = await started(stack, make_bus(2, addrs))  # never calls recv_batch
            await connected(a)
            msg = Forward(frm=1, to=2, commands=(os.urandom(256 << 10),))
            rss_before = rss_bytes()
            n = 2000  # 500 MiB if all were queued
            queued = 0
            for k in range(n):
                queued += a.send(msg)
                assert a.peer_status()[2].send_bytes_queued <= 8 << 20
                if k % 50 == 49:
                    await asyncio.sleep(0)
            # What the bus holds, plus what libzmq and the kernel moved to node 2 (which
            # holds RECV_QUEUE_MESSAGES_MAX + 2 at most): far from 500 MiB.
            assert queued < 400, queued
            assert a.stats.send_dropped == n - queued
            assert rss_bytes() - rss_before < 80 << 20
            got, _ = await recv_n(b, queued)  # all of it arrives once node 2 reads
            assert all(m == msg for m in got)
            await wait_until_async("libzmq to let go of them", lambda: a.peer_status()[2].send_bytes_queued == 0, DEADLINE_S)

    run(scenario)


_FLOODER_SCRIPT = r"""
import sys, zmq
ctx = zmq.Context()
d = ctx.socket(zmq.DEALER)
d.setsockopt(zmq.ROUTING_ID, b"2")
d.setsockopt(zmq.SNDHWM, 2)
d.setsockopt(zmq.SNDTIMEO, 3000)
d.connect(f"tcp://127.0.0.1:{sys.argv[1]}")
frame = b"\xff" * int(sys.argv[2])
sent = 0
try:
    while sent < int(sys.argv[3]):
        d.send(frame, copy=False)
        sent += 1
except zmq.Again:
    pass  # the receiver stopped taking them
print(sent, flush=True)
"""


def test_a_flood_of_max_size_frames_is_held_to_the_receive_queue() -> None:
    """A bus that does not drain holds at most RCVHWM whole frames (+2) per
    connection; the rest waits in the kernel and at the sender."""
    import subprocess
    import sys

    frame, rcvhwm = 1 << 20, 4

    async def scenario() -> None:
        addrs = addresses([1, 2])
        async with AsyncExitStack() as stack:
            await started(stack, make_bus(1, addrs, frame_bytes_max=frame, recv_queue_max=rcvhwm))
            rss_before = rss_bytes()
            r = await asyncio.to_thread(
                subprocess.run, [sys.executable, "-c", _FLOODER_SCRIPT, str(addrs[1][1]), str(frame), "300"],
                capture_output=True, text=True, timeout=120,
            )
            sent = int(r.stdout)
            assert sent < 300, "the flood was never held back"
            grown = rss_bytes() - rss_before
            assert grown < (rcvhwm + 2) * frame + (8 << 20), (grown, sent)

    run(scenario)


def test_too_large_messages_are_split_when_their_kind_allows() -> None:
    limit = 64 << 10

    async def scenario() -> None:
        addrs = addresses([1, 2])
        async with AsyncExitStack() as stack:
            a = await started(stack, make_bus(1, addrs, frame_bytes_max=limit))
            b = await started(stack, make_bus(2, addrs, frame_bytes_max=limit))
            await connected(a)
            blob = [os.urandom(20 << 10) for _ in range(10)]  # 200 KiB in all
            entries = tuple((s + 1, (blob[s],)) for s in range(10))  # slot 0 does not exist
            accept = Accept(frm=1, to=2, ballot=Ballot(4, 1), entries=entries, commit=3)
            assert a.send(accept)
            got, _ = await recv_n(b, 4)  # 10 entries of 20 KiB: parts of 2 or 3 under 64 KiB
            assert all(isinstance(m, Accept) and (m.ballot, m.commit) == (accept.ballot, 3) for m in got)
            assert tuple(e for m in got for e in m.entries) == entries  # all of them, in order
            assert a.send(Forward(frm=1, to=2, commands=tuple(blob)))
            got, _ = await recv_n(b, 4)
            assert tuple(c for m in got for c in m.commands) == tuple(blob)
            assert a.send(CatchupReply(frm=1, to=2, chosen=entries, commit=9, log_start=0))
            (reply,) = await recv_within(b)  # the longest prefix that fits: the receiver asks again
            assert isinstance(reply, CatchupReply) and reply.chosen == entries[: len(reply.chosen)]
            assert 1 <= len(reply.chosen) < 10 and reply.commit == 9
            assert a.stats.send_split == 3 and a.stats.send_oversized == 0
            # A Promise cannot be split, nor can one entry that alone is too large.
            promise = Promise(frm=1, to=2, ballot=Ballot(4, 1), accepted=(), chosen=entries, commit=9, log_start=0)
            assert not a.send(promise)
            assert not a.send(Accept(frm=1, to=2, ballot=Ballot(4, 1), entries=((1, (b"x" * limit,)),), commit=0))
            assert a.stats.send_oversized == 2
            assert a.send(hb(1, 2, 5))
            assert [m.commit for m in await recv_within(b)] == [5]  # nothing else came

    run(scenario)


# ---- identity: one live node per id ---------------------------------------------------


def receiving(stack: AsyncExitStack, bus: PeerBus) -> list[Message]:
    """Run a receiver on ``bus``, as a node does (it answers probes while it
    drains); what it received."""
    got: list[Message] = []

    async def loop() -> None:
        with contextlib.suppress(BusClosed):
            while True:
                got.extend(await bus.recv_batch())

    task = asyncio.ensure_future(loop())
    stack.callback(task.cancel)
    return got


@pytest.mark.parametrize("secure", [True, False], ids=["curve", "insecure"])
def test_a_second_node_with_the_same_id_is_refused_naming_the_address(secure: bool) -> None:
    async def scenario() -> None:
        addrs = addresses([1, 2, 3])
        keys = curve_keys([1, 2, 3]) if secure else {}
        async with AsyncExitStack() as stack:
            b1 = await started(stack, make_bus(1, addrs, keys=keys.get(1)))
            b2 = await started(stack, make_bus(2, addrs, keys=keys.get(2)))
            receiving(stack, b1)
            receiving(stack, b2)
            # Node 1 again, elsewhere: node 2 has node 1's first address.
            (other,) = free_ports(1)
            dup = PeerBus(1, CLUSTER, "127.0.0.1", other, {2: addrs[2], 3: addrs[3]}, keys=keys.get(1))
            with pytest.raises(DuplicateNode) as ei:
                await dup.start()
            assert f"answers on the bus at 127.0.0.1:{addrs[1][1]}" in str(ei.value)
            assert "node 1 of cluster 'test-cluster' is already running" in str(ei.value)
            assert dup.closed and b1.stats.probes_answered >= 1 and b2.stats.probes_answered >= 1
            free = socket.socket()
            free.bind(("127.0.0.1", other))  # the refused bus let go of its port
            free.close()
            # Once the first is gone, node 1 starts again (where it was).
            await b1.close()
            again = await started(stack, make_bus(1, addrs, keys=keys.get(1), probe_timeout_s=DEADLINE_S))
            assert again.stats.probes_answered == 1  # its own probe of its own address
            await wait_until_async("node 1 connected to node 2 again", lambda: again.peer_status()[2].writable, DEADLINE_S)

    run(scenario)


def test_messages_that_arrive_while_the_bus_probes_are_kept_for_the_first_batch() -> None:
    async def scenario() -> None:
        addrs = addresses([1, 2, 3])  # node 3 never runs
        async with AsyncExitStack() as stack:
            b2 = await started(stack, make_bus(2, addrs))
            b1 = make_bus(1, addrs, probe_timeout_s=30.0)
            starting = asyncio.ensure_future(b1.start())
            stack.push_async_callback(b1.close)
            await wait_until_async("node 1's ROUTER", lambda: b1._port is not None and b2.peer_status()[1].writable, DEADLINE_S)
            assert b2.send(hb(2, 1, 42))
            await wait_until_async("node 1 to keep the message while it probes", lambda: bool(b1._early), DEADLINE_S)
            assert not starting.done()  # node 2 does not drain its bus yet: no answer
            receiving(stack, b2)  # now node 2 answers, and node 1's start completes
            await asyncio.wait_for(starting, DEADLINE_S)
            assert b2.send(hb(2, 1, 43))
            got, _ = await recv_n(b1, 2)
            assert [m.commit for m in got] == [42, 43]

    run(scenario)
