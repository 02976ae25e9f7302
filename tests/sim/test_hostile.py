"""Hostile members under the full fault mix: before some deliveries, a
member also sends the node a hostile message (paxoskv.paxos.hostile.inject:
each one breaks a rule the node enforces, half of them through the codec).
Every check of the simulator must still hold, and nothing forged is ever
applied.

(``SimConfig.hostile_rate``; ``paxoskv sim --hostile RATE``.)"""

from __future__ import annotations

from collections import Counter

import pytest

from paxoskv.sim.simulation import SimConfig, Simulation

SEEDS = 150
RATE = 0.05  # hostile messages per delivered message


@pytest.mark.timeout(900)
@pytest.mark.parametrize("nodes", [3, 5])
def test_every_seed_is_safe_and_live_with_hostile_members(nodes: int, tally) -> None:
    outcomes: Counter[str] = Counter()
    failures = []
    for seed in range(8_000_000 + 1000 * nodes, 8_000_000 + 1000 * nodes + SEEDS):
        r = Simulation(SimConfig(seed=seed, nodes=nodes, hostile_rate=RATE)).run()
        tally(r)
        outcomes.update(r.hostile)
        if not r.ok:
            failures.append(f"{r.summary()}: {r.violations[:2]}: {r.config.replay_command()}")
    assert not failures, "\n".join(failures[:5])
    assert outcomes["stepped"] > 100 and outcomes["codec"] > 100, outcomes
