"""Hostile members under the full fault mix: before some deliveries, a
member also sends the node a hostile message (paxoskv.paxos.hostile.inject:
each one breaks a rule the node enforces, half of them through the codec).
Every check of the simulator must still hold, and nothing forged is ever
applied.

The hook is patched in here (around ``Simulation._step_now``) until the
simulator has it of its own (a ``SimConfig.hostile_rate``)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from paxoskv.paxos import hostile
from paxoskv.sim.simulation import SimConfig, Simulation

SEEDS = 150
RATE = 0.05  # hostile messages per delivered message


@pytest.mark.timeout(900)
@pytest.mark.parametrize("nodes", [3, 5])
def test_every_seed_is_safe_and_live_with_hostile_members(monkeypatch: pytest.MonkeyPatch, nodes: int, tally) -> None:
    outcomes: Counter[str] = Counter()
    step_now = Simulation._step_now
    rngs: dict[int, random.Random] = {}

    def step_with_hostile_peers(self: Simulation, arg) -> None:  # noqa: ANN001
        node, _ = arg
        rng = rngs.setdefault(id(self), random.Random(f"hostile-{self.config.seed}"))
        if rng.random() < RATE:
            outcomes[hostile.inject(rng, node.replica.core, node.layer.step)] += 1
        step_now(self, arg)

    monkeypatch.setattr(Simulation, "_step_now", step_with_hostile_peers)
    failures = []
    for seed in range(8_000_000 + 1000 * nodes, 8_000_000 + 1000 * nodes + SEEDS):
        sim = Simulation(SimConfig(seed=seed, nodes=nodes))
        r = sim.run()
        tally(r)
        forged = [s for s, v in sim.applied.chosen.items() if any(b"forged" in c for c in v)]
        if not r.ok or forged:
            failures.append(f"{r.summary()}: {r.violations[:2]} forged slots {forged[:3]}: {r.config.replay_command()}")
    assert not failures, "\n".join(failures[:5])
    assert outcomes["stepped"] > 100 and outcomes["codec"] > 100, outcomes
