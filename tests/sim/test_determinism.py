"""One seed, one run: the same seed replays the exact same events.

Within a process (two runs, full traces compared line by line) and across
processes with different hash seeds (``PYTHONHASHSEED`` changes the order
of sets and dicts of strings and bytes; nothing may depend on it).
"""

from __future__ import annotations

import os
import subprocess
import sys

from paxoskv.sim import SimConfig, Simulation, run_seed

DIGEST_SCRIPT = (
    "import sys\n"
    "from paxoskv.sim import run_seed\n"
    "for seed in (11, 12):\n"
    "    r = run_seed(seed, nodes=int(sys.argv[1]))\n"
    "    print(seed, r.digest, r.ops, r.events)\n"
)


def test_same_seed_gives_the_identical_trace(tally) -> None:
    for seed, nodes in ((5, 3), (6, 5)):
        a = Simulation(SimConfig(seed=seed, nodes=nodes, trace=True)).run()
        b = Simulation(SimConfig(seed=seed, nodes=nodes, trace=True)).run()
        tally(a)
        assert a.trace is not None and b.trace is not None
        assert len(a.trace) > 1000  # a real run: messages, faults, clients
        assert a.trace == b.trace
        assert a.digest == b.digest
        assert [op.describe() for op in a.history] == [op.describe() for op in b.history]
        assert a.violations == b.violations


def test_trace_does_not_change_the_run(tally) -> None:
    """Tracing only records: with or without it, the same run."""
    traced = Simulation(SimConfig(seed=21, trace=True)).run()
    plain = run_seed(21)
    tally(plain)
    assert traced.digest == plain.digest


def test_different_seeds_give_different_runs() -> None:
    digests = {run_seed(seed, ops=30).digest for seed in range(5)}
    assert len(digests) == 5


def test_same_seed_same_run_across_processes_and_hash_seeds() -> None:
    outputs = []
    for hash_seed in ("1", "4242"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        proc = subprocess.run(
            [sys.executable, "-c", DIGEST_SCRIPT, "3"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        outputs.append(proc.stdout)
    assert outputs[0].count("\n") == 2
    assert outputs[0] == outputs[1]
    # And the same as in this process.
    here = "".join(
        f"{seed} {r.digest} {r.ops} {r.events}\n" for seed in (11, 12) for r in [run_seed(seed)]
    )
    assert here == outputs[0]
