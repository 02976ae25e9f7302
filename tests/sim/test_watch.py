"""The simulator's watchers (paxoskv.sim.watch): every seed's watches hold
etcd's guarantees against the agreed log, under the full fault mix; the
watchers leave the cluster's run as it is; a seed replays with them.

CI: 16 seeds of 3 nodes and 6 of 5 nodes, watchers in every one (the
campaign, tests/sim/test_safety.py, has them in a third of its seeds).
``PAXOSKV_LONG=1``: 300 and 100, from a random first seed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter

import pytest

from paxoskv.sim import SimConfig, run_seed
from paxoskv.sim.simulation import WATCH_SHARE_DEFAULT, watching

from simtest_support import LONG, seed_base

SEEDS = {3: 300, 5: 100} if LONG else {3: 16, 5: 6}
BASE = seed_base(5_000)


@pytest.mark.timeout(3600 if LONG else 300)
@pytest.mark.parametrize("nodes", [3, 5])
def test_watch_guarantees_hold_in_every_seed(nodes: int, tally) -> None:
    first = BASE + (0 if nodes == 3 else 1_000_000)
    failures = []
    total: Counter[str] = Counter()
    for seed in range(first, first + SEEDS[nodes]):
        r = run_seed(seed, nodes=nodes, watch_share=1.0)
        tally(r)
        if not r.ok:
            failures.append(r)
        total.update(r.watch)
    assert not failures, "\n".join(
        f"{r.summary()}\n    " + "\n    ".join(str(v)[:600] for v in r.violations[:5])
        + f"\n    replay: {r.config.replay_command()}" for r in failures[:5])
    print(f"{nodes} nodes, {SEEDS[nodes]} seeds: {dict(total)}")
    # The runs exercised what the checks are about: many events, streams
    # broken by the nemesis and resumed, progress answers.
    assert total["watchers"] >= SEEDS[nodes]
    assert total["events"] >= 50 * SEEDS[nodes]
    assert total["broken"] > SEEDS[nodes]
    assert total["records"] > total["watchers"] + total["broken"] // 2
    assert total["progress"] > 0


def test_watch_cancellation_below_the_compaction_happens() -> None:
    """Some watcher starts (or falls) below an etcd client's compaction and is
    cancelled with its revision, as etcd does (seeds known to do it)."""
    compacted = sum(run_seed(seed, watch_share=1.0).watch["compacted"] for seed in (18, 19))
    assert compacted > 0


def test_watchers_do_not_change_the_cluster_run() -> None:
    for seed in (1, 4):
        a = run_seed(seed, watch_share=1.0)
        b = run_seed(seed, watch_share=0.0)
        assert a.watch["events"] > 0 and b.watch == {}
        assert [op.describe() for op in a.history] == [op.describe() for op in b.history]
        assert a.applied_slots == b.applied_slots


def test_the_share_of_seeds_with_watchers_and_the_replay_command() -> None:
    watched = sum(watching(SimConfig(seed=s)) for s in range(300))
    assert 70 <= watched <= 130  # a third
    assert not any(watching(SimConfig(seed=s, watch_share=0.0)) for s in range(50))
    assert all(watching(SimConfig(seed=s, watch_share=1.0)) for s in range(50))
    assert SimConfig(seed=3).replay_command() == "paxoskv sim --seed 3 --nodes 3"
    assert SimConfig(seed=3, watch_share=0.0).replay_command().endswith(" --no-watch")
    assert SimConfig(seed=3, watch_share=1.0).replay_command().endswith(" --watch-share 1")
    assert 0 < WATCH_SHARE_DEFAULT < 1


DIGESTS = (
    "import sys\n"
    "from paxoskv.sim import run_seed\n"
    "for seed in (2, 3):\n"
    "    r = run_seed(seed, watch_share=1.0)\n"
    "    print(seed, r.digest, r.watch)\n"
)


def test_a_seed_with_watchers_replays_across_processes_and_hash_seeds() -> None:
    """The hub iterates its streams and watchers in object-identity order;
    the watchers' streams are drained in their own order, so that never shows."""
    outputs = []
    for hash_seed in ("3", "777"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        proc = subprocess.run([sys.executable, "-c", DIGESTS], env=env, capture_output=True, text=True,
                              timeout=300, check=True)
        outputs.append(proc.stdout)
    assert outputs[0].count("\n") == 2 and "'events'" in outputs[0]
    assert outputs[0] == outputs[1]
