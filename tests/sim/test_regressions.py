"""Seeds that once found a bug, replayed forever (each names the bug it found)."""

from __future__ import annotations

import pytest

from paxoskv.sim import run_seed

REGRESSIONS = [
    # A snapshot finished while a batch was between write and apply: the state
    # machine was replaced under the batch's entries (replica defers the install).
    (1000870, 5),
    # A leader elected behind its followers' compacted logs could never commit
    # (followers now tell it their log start; it steps down and catches up).
    (2873, 3),
]


@pytest.mark.parametrize(("seed", "nodes"), REGRESSIONS, ids=[f"seed{s}-{n}nodes" for s, n in REGRESSIONS])
def test_seed_that_once_failed_now_passes(seed: int, nodes: int) -> None:
    r = run_seed(seed, nodes=nodes, etcd=False)  # the run as it was when it failed
    assert r.ok, f"{r.summary()}\n{r.violations[:3]}\nreplay: {r.config.replay_command()}"
