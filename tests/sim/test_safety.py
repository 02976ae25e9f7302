"""The campaign: thousands of seeds under the full fault mix, zero violations.

Each seed is a whole run (see ``paxoskv.sim.simulation``): a safety phase with
message loss, duplication, reordering and delay, partitions of every shape,
power losses, process kills, full disks and pauses; then a liveness phase
that heals everything and demands that every pending client operation
completes and every node converges within ``LIVENESS_BOUND_US``. Every run is
checked for agreement, prefixes, acknowledged writes, the state machine
against a reference model, snapshots, convergence, liveness and
linearizability. CI runs 2 x 1,000 seeds (3 and 5 nodes); ``PAXOSKV_LONG=1``
runs 2 x 10,000 seeds with three times the operations and time.

A failure prints, for every failing seed, the command that replays it.
"""

from __future__ import annotations

from collections import Counter

import pytest

from paxoskv.sim import LIVENESS_BOUND_US, OPS_DEFAULT, SimResult, run_seed

from simtest_support import LONG, seed_base

SEEDS_PER_SIZE = 10_000 if LONG else 1_000
CHUNK_SEEDS = 500
OPS = 3 * OPS_DEFAULT if LONG else OPS_DEFAULT
SCALE = 3 if LONG else 1  # long runs: three times the operations and the time for them
BASE = seed_base(0)
# 3-node seeds start at BASE, 5-node seeds at BASE + 1,000,000 (disjoint draws).
CHUNKS = [
    (nodes, BASE + (0 if nodes == 3 else 1_000_000) + i * CHUNK_SEEDS)
    for nodes in (3, 5)
    for i in range(SEEDS_PER_SIZE // CHUNK_SEEDS)
]


def _describe_failures(failures: list[SimResult]) -> str:
    lines = [f"{len(failures)} seed(s) violated an invariant:"]
    for r in failures[:10]:
        lines.append(f"  {r.summary()}")
        lines.extend(f"    {str(v)[:800]}" for v in r.violations[:3])
        lines.append(f"    replay: {r.config.replay_command()}")
    return "\n".join(lines)


@pytest.mark.timeout(1800 if LONG else 900)
@pytest.mark.parametrize(("nodes", "first"), CHUNKS, ids=[f"{n}nodes-{s}" for n, s in CHUNKS])
def test_no_violation_under_faults(nodes: int, first: int, tally) -> None:
    failures: list[SimResult] = []
    faults_seen: Counter[str] = Counter()
    coverage: Counter[str] = Counter()
    liveness_max_us = 0
    for seed in range(first, first + CHUNK_SEEDS):
        r = run_seed(seed, nodes=nodes, ops=OPS, scale=SCALE)
        tally(r)
        if not r.ok:
            failures.append(r)
        faults_seen.update(r.nemesis_actions)
        coverage["ops unknown"] += r.ops_unknown
        coverage["ops fail"] += r.ops_fail
        coverage["ops ok"] += r.ops_ok
        coverage["snapshots installed"] += r.snapshots_installed
        coverage["messages lost"] += r.network["lost"]
        coverage["messages duplicated"] += r.network["duplicated"]
        coverage["messages cut"] += r.network["cut"]
        coverage["seeds with ops pending at heal"] += r.pending_at_heal > 0
        coverage["wire round trip seeds"] += "wire=1" in r.params
        if r.liveness_us is not None:
            liveness_max_us = max(liveness_max_us, r.liveness_us)
    assert not failures, _describe_failures(failures)

    # The liveness promise held in every seed (a miss is a violation above);
    # here, its figure.
    assert 0 < liveness_max_us <= LIVENESS_BOUND_US
    print(
        f"{nodes} nodes, seeds {first}..{first + CHUNK_SEEDS - 1}: slowest liveness phase "
        f"{liveness_max_us / 1000:.0f} ms (bound {LIVENESS_BOUND_US / 1000:.0f} ms)"
    )

    # The campaign exercised what it claims to: every fault of the mix, and
    # every outcome a client can see.
    for action in (
        "split",
        "minority",
        "isolate_leader",
        "one_way",
        "flap",
        "heal",
        "crash",
        "crash_leader",
        "restart",
        "disk_full",
        "pause",
        "pause_leader",
    ):
        assert faults_seen[action] > 0, f"the nemesis never ran {action}: {faults_seen}"
    for what, count in coverage.items():
        assert count > 0, f"no {what} in {CHUNK_SEEDS} seeds: {dict(coverage)}"
