"""The simulated clock and its event queue.

Rules:

- Time is an integer number of simulated microseconds (``now_us``). Nothing in
  the simulator reads a wall clock.
- An event is a callable and one argument, due at a time. Events due at the
  same time run in the order they were scheduled (a sequence number breaks
  ties), so a run is a pure function of the seed.
- Events are never cancelled; a callback that may have become stale carries a
  token and checks it when it runs (cheaper than deleting from a heap).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any


class Scheduler:
    """A discrete-event clock: ``at``/``after`` schedule, ``step`` runs one event."""

    __slots__ = ("now_us", "_heap", "_seq", "events_run", "stopped")

    def __init__(self) -> None:
        self.now_us = 0
        self._heap: list[tuple[int, int, Callable[[Any], None], Any]] = []
        self._seq = 0
        self.events_run = 0
        self.stopped = False  # set by an event to end ``run``

    def at(self, time_us: int, fn: Callable[[Any], None], arg: Any = None) -> None:
        assert time_us >= self.now_us, f"event in the past: {time_us} < {self.now_us}"
        self._seq += 1
        heapq.heappush(self._heap, (time_us, self._seq, fn, arg))

    def after(self, delay_us: int, fn: Callable[[Any], None], arg: Any = None) -> None:
        assert delay_us >= 0, delay_us
        self._seq += 1
        heapq.heappush(self._heap, (self.now_us + delay_us, self._seq, fn, arg))

    def step(self) -> bool:
        """Run the next event; False when the queue is empty."""
        if not self._heap:
            return False
        time_us, _, fn, arg = heapq.heappop(self._heap)
        self.now_us = time_us
        self.events_run += 1
        fn(arg)
        return True

    def run(self) -> None:
        """Run events until one sets ``stopped`` (then clear it) or none are left."""
        heap = self._heap
        pop = heapq.heappop
        count = 0
        while heap and not self.stopped:
            time_us, _, fn, arg = pop(heap)
            self.now_us = time_us
            count += 1
            fn(arg)
        self.events_run += count
        self.stopped = False

    def pending(self) -> int:
        return len(self._heap)
