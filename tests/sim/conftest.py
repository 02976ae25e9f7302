"""Shared by the simulator tests: seed counts, and a tally printed at the end.

``PAXOSKV_LONG=1`` turns the CI campaign (2,000 seeds of a few hundred
operations) into a long one: more seeds, more operations per seed, and a
first seed drawn at random (printed, so a failure still replays).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from paxoskv.sim import SimResult


@dataclass
class Tally:
    seeds: int = 0
    ops: int = 0
    real_time_s: float = 0.0
    cpu_time_s: float = 0.0
    by_test: dict[str, tuple[int, int, float]] = field(default_factory=dict)

    def add(self, test: str, result: SimResult) -> None:
        self.seeds += 1
        self.ops += result.ops
        self.real_time_s += result.real_time_s
        self.cpu_time_s += result.cpu_time_s
        seeds, ops, real = self.by_test.get(test, (0, 0, 0.0))
        self.by_test[test] = (seeds + 1, ops + result.ops, real + result.real_time_s)


TALLY = Tally()


@pytest.fixture
def tally(request: pytest.FixtureRequest):
    """``tally(result)`` counts a simulated run for the end-of-session summary."""
    name = request.node.name

    def add(result: SimResult) -> None:
        TALLY.add(name, result)

    return add


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ARG001
    if not TALLY.seeds:
        return
    tr = terminalreporter
    tr.section("paxoskv simulator")
    for name, (seeds, ops, real) in TALLY.by_test.items():
        rate = ops / real if real > 0 else 0.0
        tr.write_line(f"{name}: {seeds} seeds, {ops} simulated ops, {real:.1f}s, {rate:.0f} ops/s")
    rate = TALLY.ops / TALLY.real_time_s if TALLY.real_time_s > 0 else 0.0
    cpu_rate = TALLY.ops / TALLY.cpu_time_s if TALLY.cpu_time_s > 0 else 0.0
    tr.write_line(
        f"total: {TALLY.seeds} seeds, {TALLY.ops} simulated ops in {TALLY.real_time_s:.1f}s "
        f"of real time: {rate:.0f} simulated ops/s ({cpu_rate:.0f} per CPU second)"
    )
