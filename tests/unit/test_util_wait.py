"""``paxoskv.util.wait``: the deadline poll returns the probe's answer, gives
up naming what it waited for, and lets the probe's own errors through."""

from __future__ import annotations

import asyncio
import time

import pytest

from paxoskv.util.wait import WaitTimeout, wait_until, wait_until_async


def counting(answers: list):
    calls = []

    def probe():
        calls.append(time.monotonic())
        return answers[min(len(calls), len(answers)) - 1]

    return probe, calls


def test_returns_the_first_truthy_answer():
    probe, calls = counting([None, 0, [], "ready", "later"])
    assert wait_until("the probe", probe, 5, interval_s=0.001) == "ready"
    assert len(calls) == 4


def test_gives_up_after_the_timeout_naming_what_it_waited_for():
    probe, calls = counting([False])
    t0 = time.monotonic()
    with pytest.raises(WaitTimeout, match=r"timed out after 0.2s waiting for the moon to rise$"):
        wait_until("the moon to rise", probe, 0.2, interval_s=0.05)
    assert time.monotonic() - t0 >= 0.2
    assert calls[-1] >= t0 + 0.2  # probed once more at the deadline
    assert isinstance(WaitTimeout("x"), RuntimeError)


def test_what_may_be_computed_when_giving_up():
    seen = []

    def probe():
        seen.append(len(seen))
        return None

    with pytest.raises(WaitTimeout, match=r"waiting for a leader \(probed 2 times\)"):
        wait_until(lambda: f"a leader (probed {len(seen)} times)", probe, 0.05, interval_s=1)


def test_a_zero_or_negative_timeout_still_probes_once():
    assert wait_until("it", lambda: 7, 0) == 7
    assert wait_until("it", lambda: 7, -3) == 7
    with pytest.raises(WaitTimeout, match="after 0s"):
        wait_until("it", lambda: None, -3)


def test_an_error_of_the_probe_ends_the_wait_at_once():
    probe_calls = []

    def probe():
        probe_calls.append(1)
        raise ProcessLookupError("node 2 died")

    with pytest.raises(ProcessLookupError, match="node 2 died"):
        wait_until("node 2", probe, 30)
    assert probe_calls == [1]


def test_the_async_form_takes_plain_and_coroutine_probes_and_lets_the_loop_run():
    async def main() -> None:
        flag = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, flag.set)  # only runs if the wait yields to the loop
        assert await wait_until_async("the flag", flag.is_set, 5, interval_s=0.001) is True

        answers = iter([None, None, "ok"])

        async def probe() -> str | None:
            await asyncio.sleep(0)
            return next(answers)

        assert await wait_until_async("the coroutine", probe, 5, interval_s=0.001) == "ok"
        with pytest.raises(WaitTimeout, match="waiting for nothing"):
            await wait_until_async("nothing", lambda: None, 0.05, interval_s=0.01)

    asyncio.run(main())
