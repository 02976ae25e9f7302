"""The simulator is proven: deliberately broken systems are caught.

Each test breaks one thing, only inside the test (``monkeypatch``), runs seeds
from 0 until the simulator reports a violation, and asserts that it did so
within a stated number of seeds and with the expected kind of violation. A
checker that never caught a bug proves nothing.

Figures when written (3 nodes, first 100 seeds): quorum of one caught in 88
of them (first: seed 0); a leader that skips phase 1 in 6 (first: 14); a
leader that ignores the values promises report in 15 (first: 3); no fsync in
10 (first: 10); reads without a quorum check in 71 (first: 2); no
exactly-once sessions in 34 (first: 1); with the liveness phase's read storm
(added later), read rounds that put off the leader's heartbeat in 3 of 200
(first: 113). The stated bounds leave room for the core to change (which
reshuffles every run) without the test going stale.
"""

from __future__ import annotations

import pytest

from paxoskv.kv.state_machine import KVStateMachine
from paxoskv.paxos.core import Core
from paxoskv.paxos.types import Config, ReadState
from paxoskv.replica import Batch, Replica
from paxoskv.sim import SimResult, run_seed

SAFETY_KINDS = {
    "agreement",
    "prefix",
    "exception",
    "snapshot",
    "state-machine",
    "acknowledged-write",
    "linearizability",
    "convergence",
}


def first_violation(seeds_max: int, tally, nodes: int = 3, of_kinds: set[str] | None = None) -> SimResult:
    """The first seed that violates an invariant (of ``of_kinds``, if given)."""
    for seed in range(seeds_max):
        r = run_seed(seed, nodes=nodes)
        tally(r)
        if not r.ok and (of_kinds is None or kinds(r) & of_kinds):
            return r
    raise AssertionError(f"no violation found in {seeds_max} seeds: the simulator missed the bug")


def kinds(r: SimResult) -> set[str]:
    return {v.kind for v in r.violations}


def test_quorum_of_one_is_caught_within_5_seeds(monkeypatch, tally) -> None:
    monkeypatch.setattr(Config, "quorum", property(lambda self: 1))
    r = first_violation(5, tally)
    assert "agreement" in kinds(r), r.violations
    assert f"paxoskv sim --seed {r.config.seed} --nodes 3" == r.config.replay_command()


def test_quorum_of_one_is_caught_on_five_nodes_within_5_seeds(monkeypatch, tally) -> None:
    monkeypatch.setattr(Config, "quorum", property(lambda self: 1))
    r = first_violation(5, tally, nodes=5)
    assert "agreement" in kinds(r), r.violations


def test_leader_skipping_phase_1_is_caught_within_200_seeds(monkeypatch, tally) -> None:
    """After winning the pre-vote, the candidate leads at once: it counts its
    own promise as a quorum, sends no Prepare and learns nothing from peers."""
    start = Core._start_candidacy

    def lead_without_phase_1(self: Core) -> None:
        quorum, self.quorum = self.quorum, 1
        try:
            start(self)
        finally:
            self.quorum = quorum

    monkeypatch.setattr(Core, "_start_candidacy", lead_without_phase_1)
    # Such a leader can also just stall (a liveness violation); what matters is
    # that the simulator finds the unsafe runs within the bound.
    r = first_violation(200, tally, of_kinds={"agreement", "exception", "linearizability"})
    assert kinds(r) & {"agreement", "exception", "linearizability"}, r.violations


def test_leader_ignoring_promised_values_is_caught_within_200_seeds(monkeypatch, tally) -> None:
    """Phase 1 runs, but the new leader drops the accepted values the promises
    report, so it fills those slots with no-ops or new commands."""
    become = Core._become_leader

    def forget_accepted(self: Core) -> None:
        self._promises = {
            frm: type(p)(
                frm=p.frm,
                to=p.to,
                ballot=p.ballot,
                accepted=(),
                chosen=p.chosen,
                commit=p.commit,
                log_start=p.log_start,
            )
            for frm, p in self._promises.items()
        }
        become(self)

    monkeypatch.setattr(Core, "_become_leader", forget_accepted)
    r = first_violation(200, tally)
    assert kinds(r) & {"agreement", "exception"}, r.violations


def test_missing_fsync_is_caught_within_200_seeds(monkeypatch, tally) -> None:
    """Promises and acceptances written without sync: a power loss forgets them."""

    def write_without_sync(self: Replica, batch: Batch) -> None:
        rd = batch.ready
        if rd.must_sync or rd.chosen:
            self.storage.persist(rd.promised, rd.accepted, rd.chosen, sync=False)
        batch.written = True

    monkeypatch.setattr(Replica, "write", write_without_sync)
    r = first_violation(200, tally)
    assert kinds(r) & SAFETY_KINDS, r.violations


def test_reads_without_quorum_check_are_caught_within_20_seeds(monkeypatch, tally) -> None:
    """Every node serves reads at its own commit index, right away."""

    def local_read(self: Core, read_id: int) -> None:
        self._out_reads.append(ReadState(read_id, self.commit_index, True))

    monkeypatch.setattr(Core, "read", local_read)
    r = first_violation(20, tally)
    assert "linearizability" in kinds(r), r.violations
    lin = next(v for v in r.violations if v.kind == "linearizability")
    assert "cannot linearize" in lin.detail


def test_reads_that_put_off_the_leaders_heartbeat_are_caught_within_400_seeds(monkeypatch, tally) -> None:
    """Each new read round restarts the periodic heartbeat's count (as before
    894bc29): under the liveness phase's read storm the heartbeat, and the
    resending of lost Accepts with it, never comes, so a follower that a read
    round does not ask, or an Accept that was lost, is never caught up."""
    start = Core._start_read_round

    def round_puts_off_heartbeat(self: Core) -> None:
        had = bool(self._read_rounds)
        start(self)
        if self._read_rounds and not had:
            self._heartbeat_elapsed = 0

    monkeypatch.setattr(Core, "_start_read_round", round_puts_off_heartbeat)
    r = first_violation(400, tally)
    assert "liveness" in kinds(r), r.violations
    assert "read_storm=1" in r.params


def test_state_machine_without_sessions_is_caught_within_20_seeds(monkeypatch, tally) -> None:
    """Retried commands are applied again (no exactly-once)."""
    apply_one = KVStateMachine._apply_one

    def forgetful(self: KVStateMachine, index: int, data: bytes):
        self._sessions.clear()
        return apply_one(self, index, data)

    monkeypatch.setattr(KVStateMachine, "_apply_one", forgetful)
    r = first_violation(20, tally)
    assert kinds(r) & {"state-machine", "snapshot", "linearizability"}, r.violations


def test_core_that_loses_proposals_fails_liveness_within_3_seeds(monkeypatch, tally) -> None:
    """The liveness checker works too: a core that accepts writes and drops
    them leaves clients waiting past the bound."""
    monkeypatch.setattr(Core, "propose", lambda self, command: True)
    r = first_violation(3, tally)
    assert "liveness" in kinds(r), r.violations
    assert not kinds(r) & {"agreement", "prefix"}, r.violations


@pytest.mark.parametrize("seed", [0, 1])
def test_a_correct_system_passes_the_same_seeds(seed: int, tally) -> None:
    """The control: without the breakage, the same seeds are clean."""
    r = run_seed(seed)
    tally(r)
    assert r.ok, r.violations
