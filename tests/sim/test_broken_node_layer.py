"""The simulator drives the node layer the server ships: a deliberately broken
node layer is caught.

Each test breaks one rule of ``paxoskv.replica.node`` (only inside the test,
with ``monkeypatch``), runs seeds from 0 until the simulator reports a
violation, and asserts it did so within a stated number of seeds.

Figures when written (3 nodes): a packed batch answered before it is applied,
first caught at seed 2; a batch's results answered in reverse order, seed 0;
anonymous writes all given the same client id, seed 0; linearizable gets
served from the local state without a read index, seed 0. The bounds leave
room for the run's draws to change.

Not here, on purpose: a node that does not fail its waiting writes when the
leader changes. That rule saves a client the wait until its deadline (the
command may be lost with the old leader); without it the call expires and
the client retries, so no history can show it: it is tested in
tests/unit/test_node_layer.py instead.
"""

from __future__ import annotations

import random

from paxoskv.replica.node import ReplicaNode
from paxoskv.sim import SimResult, run_seed
from paxoskv.v1 import kv_pb2


def first_violation(seeds_max: int, tally) -> SimResult:
    for seed in range(seeds_max):
        r = run_seed(seed)
        tally(r)
        if not r.ok:
            return r
    raise AssertionError(f"no violation found in {seeds_max} seeds: the simulator missed the bug")


def kinds(r: SimResult) -> set[str]:
    return {v.kind for v in r.violations}


def test_a_packed_batch_answered_before_it_is_applied_is_caught_within_50_seeds(monkeypatch, tally) -> None:
    propose = ReplicaNode._propose_batch

    def answer_at_once(self, cmd, call, on_results):
        if not cmd.batch.HasField("request"):
            return propose(self, cmd, call, on_results)
        refused = propose(self, cmd, call, lambda results: None)
        if refused is None:
            on_results(tuple(kv_pb2.CommandResult(code=0, index=0, existed=False) for _ in cmd.batch.ops))
        return refused

    monkeypatch.setattr(ReplicaNode, "_propose_batch", answer_at_once)
    r = first_violation(50, tally)
    assert kinds(r) & {"linearizability", "acknowledged-write"}, r.violations


def test_batch_results_answered_in_the_wrong_order_are_caught_within_50_seeds(monkeypatch, tally) -> None:
    propose = ReplicaNode._propose_batch

    def reversed_results(self, cmd, call, on_results):
        def deliver(results):
            on_results(tuple(reversed(results)) if isinstance(results, tuple) else results)

        return propose(self, cmd, call, deliver)

    monkeypatch.setattr(ReplicaNode, "_propose_batch", reversed_results)
    r = first_violation(50, tally)
    assert kinds(r) & {"linearizability", "invalid", "acknowledged-write"}, r.violations


def test_anonymous_writes_sharing_one_client_id_are_caught_within_50_seeds(monkeypatch, tally) -> None:
    """The sessions then take a new anonymous write for a retry of the first
    one and answer it without applying it."""
    init = ReplicaNode.__init__

    class Constant(random.Random):
        def getrandbits(self, k: int) -> int:
            return 0

    def same_ids(self, *args, **kwargs) -> None:
        init(self, *args, **kwargs)
        self._ids = Constant()

    monkeypatch.setattr(ReplicaNode, "__init__", same_ids)
    r = first_violation(50, tally)
    assert kinds(r) & {"linearizability", "acknowledged-write"}, r.violations


def test_gets_served_without_a_read_index_are_caught_within_20_seeds(monkeypatch, tally) -> None:
    read = ReplicaNode._read

    def local(self, call, keys, serializable):
        return read(self, call, keys, True)

    monkeypatch.setattr(ReplicaNode, "_read", local)
    r = first_violation(20, tally)
    assert "linearizability" in kinds(r), r.violations
