"""The deadline poll: call a probe until it answers, or give up saying what for.

Rules:

- ``wait_until(what, probe, timeout_s)`` calls ``probe()`` until it returns
  something truthy and returns that value. The probe runs at least once, and
  once more after the deadline has passed, so a condition met during the last
  pause is not missed.
- Past ``timeout_s`` it raises ``WaitTimeout`` whose message names ``what``
  (a string, or a callable giving one then: it can carry the last error seen).
- An exception from the probe ends the wait at once (a node that died is not
  worth waiting for): the probe decides what is final.
- The pause between probes (``interval_s``) is a polling interval, never a
  synchronisation: nothing here waits for a fixed time and hopes.
- ``wait_until_async`` is the same for a coroutine: the probe may return a
  value or an awaitable of one, and the pauses let the event loop run.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

__all__ = ["WaitTimeout", "wait_until", "wait_until_async"]

T = TypeVar("T")


class WaitTimeout(RuntimeError):
    """A deadline poll gave up; ``str(err)`` says what it waited for."""


def _give_up(what: str | Callable[[], str], timeout_s: float) -> WaitTimeout:
    text = what() if callable(what) else what
    return WaitTimeout(f"timed out after {timeout_s:g}s waiting for {text}")


def wait_until(
    what: str | Callable[[], str],
    probe: Callable[[], T | None],
    timeout_s: float,
    *,
    interval_s: float = 0.02,
) -> T:
    """Poll ``probe`` until it returns something truthy (returned); see the module rules."""
    timeout_s = max(0.0, timeout_s)
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value:
            return value
        left = deadline - time.monotonic()
        if left <= 0:
            raise _give_up(what, timeout_s)
        time.sleep(min(interval_s, left))


async def wait_until_async(
    what: str | Callable[[], str],
    probe: Callable[[], T | None | Awaitable[T | None]],
    timeout_s: float,
    *,
    interval_s: float = 0.02,
) -> T:
    """``wait_until`` for asyncio: the probe may be a coroutine function."""
    timeout_s = max(0.0, timeout_s)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        value = probe()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        left = deadline - loop.time()
        if left <= 0:
            raise _give_up(what, timeout_s)
        await asyncio.sleep(min(interval_s, left))
