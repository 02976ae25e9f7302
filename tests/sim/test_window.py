"""The acceptance window (paxoskv.paxos.bounds.ACCEPT_WINDOW_SLOTS) under the
full fault mix: shrunk until it binds (a few slots, where the real one is
65,536), every seed must stay safe and live. Nodes that crashed or were cut
off fall more than a window behind; they refuse the leader's new slots
until they have caught up by the log or a snapshot, and a new leader
recovers only within its window: legitimate operation never needs more."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from paxoskv.paxos import bounds
from paxoskv.paxos.bounds import Refusal
from paxoskv.sim.simulation import SimConfig, Simulation

SEEDS = 150


@contextlib.contextmanager
def window_slots(slots: int) -> Iterator[None]:
    """The window every core uses while the block runs (the configs were
    validated against the real one, as the simulator draws pipelines of up
    to 16 slots)."""
    real = bounds.ACCEPT_WINDOW_SLOTS
    bounds.ACCEPT_WINDOW_SLOTS = slots
    try:
        yield
    finally:
        bounds.ACCEPT_WINDOW_SLOTS = real


@pytest.mark.timeout(900)
@pytest.mark.parametrize(("nodes", "slots"), [(3, 4), (3, 16), (5, 8)])
def test_every_seed_is_safe_and_live_with_a_window_that_binds(nodes: int, slots: int, tally) -> None:
    failures = []
    refused = 0
    for seed in range(7_000_000 + 1000 * slots, 7_000_000 + 1000 * slots + SEEDS):
        sim = Simulation(SimConfig(seed=seed, nodes=nodes))
        with window_slots(slots):
            r = sim.run()
        tally(r)
        if not r.ok:
            failures.append(
                f"{r.summary()}: {r.violations[:2]} replay with the window at {slots}: " f"{r.config.replay_command()}"
            )
        refused += sum(n.replica.core.refused[Refusal.BEYOND_WINDOW] for n in sim.nodes.values() if n.replica)
    assert not failures, "\n".join(failures[:5])
    assert refused > 0, "the window never bound: the test proves nothing"
