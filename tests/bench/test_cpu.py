"""``paxoskv.bench.cpu``: CPU of a process tree, and over a window only.

The tree test runs a helper process that burns a known amount of CPU
(measured by the burners themselves: ``time.thread_time`` /
``process_time``, so a busy machine stretches the wall time, not the
amount) in two threads of its own, in a child that is still alive at the
second sample, and in a child it has reaped by then; the sampler must count
all four, once each. The window test runs ``CpuWindow`` on simulated time.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from paxoskv.bench import cpu
from paxoskv.bench.runner import BenchConfig, BenchResult, OpStats

BURN_S = 0.3

HELPER = textwrap.dedent(
    f"""
    import os, sys, threading, time

    def burn(clock):
        end = clock() + {BURN_S}
        while clock() < end:
            pass

    sys.stdin.readline()                      # "go"
    hold_r, hold_w = os.pipe()
    done_r, done_w = os.pipe()
    alive = os.fork()
    if alive == 0:                            # child 1: burns, then stays alive
        burn(time.process_time)
        os.write(done_w, b"x")
        os.read(hold_r, 1)
        os._exit(0)
    reaped = os.fork()
    if reaped == 0:                           # child 2: burns, exits, is reaped
        burn(time.process_time)
        os._exit(0)
    os.waitpid(reaped, 0)
    threads = [threading.Thread(target=burn, args=(time.thread_time,)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    os.read(done_r, 1)
    print(alive, flush=True)                  # burnt: the alive child's pid
    sys.stdin.readline()                      # "end"
    os.write(hold_w, b"x")
    os.waitpid(alive, 0)
    """
)


def test_tree_cpu_counts_threads_a_live_child_and_a_reaped_one():
    proc = subprocess.Popen([sys.executable, "-c", HELPER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        before = cpu.tree_cpu_s([proc.pid])
        own_before = cpu.process_cpu_s(proc.pid)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        alive = int(proc.stdout.readline())
        assert alive in cpu.descendants([proc.pid])
        after = cpu.tree_cpu_s([proc.pid])
        own = cpu.process_cpu_s(proc.pid) - own_before  # its threads + the reaped child, not the live one
        child = cpu.process_cpu_s(alive)
        proc.stdin.write("end\n")
        proc.stdin.flush()
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
        proc.wait()
    used = after - before
    # 4 burns of BURN_S; a little for forks, thread starts and pipes; ticks are 10 ms
    assert 4 * BURN_S - 0.05 <= used <= 4 * BURN_S + 0.3, used
    assert BURN_S - 0.02 <= child <= BURN_S + 0.1
    assert 3 * BURN_S - 0.05 <= own <= 3 * BURN_S + 0.25, own
    assert cpu.process_cpu_s(proc.pid) == 0.0  # gone: counts nothing


def test_a_gone_process_counts_nothing_and_descendants_exclude_the_roots():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert cpu.tree_cpu_s([proc.pid]) == 0.0
    assert cpu.descendants([proc.pid]) == set()


class _SimTime:
    """A clock that only moves when the sampler sleeps."""

    def __init__(self) -> None:
        self.now = 100.0

    def clock(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s


def _cumulative(t: float) -> float:
    """CPU seconds used by time t: 5 cores before 110 (warmup), 1 core in
    [110, 120) (the window), 7 cores after (drain)."""
    if t < 110.0:
        return 5.0 * (t - 100.0)
    if t < 120.0:
        return 50.0 + (t - 110.0)
    return 60.0 + 7.0 * (t - 120.0)


def test_cpu_window_counts_the_window_only():
    sim = _SimTime()
    samples: list[float] = []

    def sampler(pids):
        assert list(pids) == [42]
        samples.append(sim.now)
        return _cumulative(sim.now)

    window = cpu.CpuWindow({"server": lambda: [42]}, 110.0, 120.0, clock=sim.clock, sleep=sim.sleep, sampler=sampler)
    window.run()
    got = window.result()
    assert len(samples) == 2
    assert 110.0 <= samples[0] < 110.0 + 1e-9 and 120.0 <= samples[1] < 120.0 + 1e-9
    assert got == {"server": pytest.approx(10.0)}


def test_a_cancelled_window_has_no_result():
    window = cpu.CpuWindow({"x": lambda: [1]}, 1e12, 1e12 + 1, sampler=lambda _p: 0.0).start()
    window.cancel()
    assert window.result() is None


def test_per_op_divides_by_the_operations_of_the_window():
    stats = OpStats(count=2_000, throughput_ops_s=1_000.0, mean_ms=1.0, p50_ms=1.0, p95_ms=1.0, p99_ms=1.0, max_ms=1.0)
    cfg = BenchConfig(target="paxoskv", endpoints=("127.0.0.1:1",), duration_s=2.0, server_pids=(1,))
    result = BenchResult(config=cfg, total=stats, by_op={"put": stats}, errors={}, errors_by_op={}, error_samples={},
                         client_cpu_s=0.5, started_unix_s=0.0, server_cpu_s=3.0)
    assert result.server_cpu_us_per_op == pytest.approx(1_500.0)
    assert result.client_cpu_us_per_op == pytest.approx(250.0)
    assert result.server_cpu_cores == pytest.approx(1.5)
    assert cpu.per_op_us(1.0, 0) is None and cpu.per_op_us(None, 5) is None
