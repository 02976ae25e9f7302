"""The driver's deadline heap (``paxoskv.server.node._Deadlines``): one loop
timer for every waiting call, expiring exactly the calls still waiting."""

from __future__ import annotations

import asyncio

from paxoskv.replica.calls import Call
from paxoskv.replica.errors import DeadlineExceeded
from paxoskv.server.node import _Deadlines


def _call(done: list[Call]) -> Call:
    return Call(1, done.append, DeadlineExceeded("late"))


def test_expires_the_waiting_calls_in_deadline_order_and_spares_the_answered() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        expired: list[Call] = []
        all_expired = asyncio.Event()
        finished: list[Call] = []

        def expire(call: Call) -> None:
            expired.append(call)
            call.set(0, call.late)
            if len(expired) == 2:
                all_expired.set()

        d = _Deadlines(loop, expire)
        late, answered, later = _call(finished), _call(finished), _call(finished)
        d.add(0.05, later)
        d.add(0.01, late)  # earlier than the armed timer: re-armed
        d.add(0.02, answered)
        answered.set(0, "ok")  # answered before its deadline
        await asyncio.wait_for(all_expired.wait(), 5)
        assert expired == [late, later]
        assert answered.results == ["ok"]
        assert isinstance(late.results[0], DeadlineExceeded)
        d.close()

    asyncio.run(main())


def test_answered_calls_are_pruned_so_the_heap_stays_bounded() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        d = _Deadlines(loop, lambda call: None)
        waiting = [_call([]) for _ in range(10)]
        for c in waiting:
            d.add(60.0, c)
        for _ in range(20_000):
            c = _call([])
            d.add(60.0, c)
            c.set(0, "ok")
            assert len(d._heap) <= _Deadlines.PRUNE_MIN + 1
        assert sum(1 for e in d._heap if not e[2].done) == 10
        d.close()

    asyncio.run(main())
