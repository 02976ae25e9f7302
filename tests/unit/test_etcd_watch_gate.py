"""The watch write gate (paxoskv.server.etcd_watch.WriteGate): a bound on
the writes in flight across a node's streams, granted in the order asked,
and a slot that is never given back is taken back."""

from __future__ import annotations

import asyncio

import pytest

from paxoskv.server.etcd_watch import WriteGate


async def _settle() -> None:
    """Let every ready callback and task run (no timer is involved)."""
    for _ in range(10):
        await asyncio.sleep(0)


def test_at_most_in_flight_max_slots_are_held_and_they_go_in_the_order_asked() -> None:
    async def main() -> None:
        gate = WriteGate(in_flight_max=2, hold_s_max=60)
        order: list[int] = []
        holding: set[int] = set()
        most = 0
        release: dict[int, asyncio.Event] = {i: asyncio.Event() for i in range(6)}

        async def writer(i: int) -> None:
            nonlocal most
            ticket = await gate.acquire()
            order.append(i)
            holding.add(i)
            most = max(most, len(holding))
            await release[i].wait()
            holding.discard(i)
            gate.release(ticket)
            gate.release(ticket)  # twice: nothing more

        tasks = [asyncio.create_task(writer(i)) for i in range(6)]
        await _settle()
        assert order == [0, 1] and gate.waiting == 4
        for i in (1, 0, 3, 2, 5, 4):  # given back out of order: still granted oldest first
            release[i].set()
            await _settle()
        await asyncio.gather(*tasks)
        assert order == [0, 1, 2, 3, 4, 5] and most == 2
        assert gate.in_flight == 0 and gate.waiting == 0 and gate.expired == 0

    asyncio.run(main())


def test_a_cancelled_waiter_loses_no_slot() -> None:
    async def main() -> None:
        gate = WriteGate(in_flight_max=1, hold_s_max=60)
        first = await gate.acquire()
        waiter = asyncio.create_task(gate.acquire())
        granted_then_cancelled = asyncio.create_task(gate.acquire())
        await _settle()
        waiter.cancel()
        await _settle()
        gate.release(first)  # to the cancelled waiter? no: to the next one
        granted_then_cancelled.cancel()  # granted, not yet resumed: the slot must go on
        await _settle()
        assert waiter.cancelled() and granted_then_cancelled.cancelled()
        assert gate.in_flight == 0
        ticket = await asyncio.wait_for(gate.acquire(), 5)
        assert gate.in_flight == 1
        gate.release(ticket)
        assert gate.in_flight == 0

    asyncio.run(main())


def test_a_slot_never_given_back_is_taken_back_by_the_watchdog() -> None:
    async def main() -> None:
        gate = WriteGate(in_flight_max=1, hold_s_max=0.02)
        stuck = await gate.acquire()  # a write whose reader stopped reading
        t0 = asyncio.get_running_loop().time()
        ticket = await asyncio.wait_for(gate.acquire(), 5)
        assert asyncio.get_running_loop().time() - t0 >= 0.02
        assert gate.expired == 1 and gate.in_flight == 1
        gate.release(stuck)  # the stuck write ends at last: its slot is not given twice
        assert gate.in_flight == 1
        gate.release(ticket)
        assert gate.in_flight == 0

    asyncio.run(main())


def test_bounds_are_checked() -> None:
    with pytest.raises(ValueError):
        WriteGate(in_flight_max=0)
    with pytest.raises(ValueError):
        WriteGate(hold_s_max=0)
