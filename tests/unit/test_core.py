"""Claims of Multi-Paxos, each checked on an in-memory network of cores."""

from __future__ import annotations

import pytest

from paxoskv.paxos.bounds import Refusal
from paxoskv.paxos.types import (
    FEATURES,
    ZERO_BALLOT,
    Accept,
    Accepted,
    Ballot,
    CatchupReply,
    CatchupRequest,
    Entry,
    Heartbeat,
    Promise,
    ReadIndexReply,
    ReadIndexRequest,
    Role,
)

from core_net import Net


def propose(net: Net, node: int, *cmds: bytes) -> None:
    for c in cmds:
        assert net.cores[node].propose(c)
    net.deliver_all()


@pytest.mark.parametrize("n", [3, 5])
def test_one_leader_is_elected_and_every_node_follows_it(n):
    net = Net(n)
    leader = net.elect()
    assert net.leaders() == [leader]
    assert {net.cores[i].leader_id for i in net.ids} == {leader}


@pytest.mark.parametrize("n", [3, 5])
def test_a_proposed_command_is_applied_once_on_every_node_in_the_same_slot(n):
    net = Net(n)
    leader = net.elect()
    propose(net, leader, b"a", b"b")
    net.tick(3)
    for i in net.ids:
        assert net.applied_values(i) == [b"a", b"b"]
    assert len({tuple(net.disks[i].applied) for i in net.ids}) == 1


def test_a_follower_forwards_proposals_to_the_leader():
    net = Net(3)
    leader = net.elect()
    follower = next(i for i in net.ids if i != leader)
    propose(net, follower, b"x")
    net.tick(3)
    assert all(net.applied_values(i) == [b"x"] for i in net.ids)


def test_without_a_known_leader_a_proposal_is_refused_at_once():
    net = Net(3)
    assert net.cores[1].propose(b"x") is False


def test_batches_pipeline_several_slots_in_flight():
    net = Net(3, inflight_slots_max=4, batch_commands_max=10)
    leader = net.elect()
    for k in range(100):
        assert net.cores[leader].propose(b"c%d" % k)
    rd_before = len(net.sent)
    net.process(leader)
    accepts = [m for m in net.sent[rd_before:] if isinstance(m, Accept)]
    slots = {s for m in accepts for s, _ in m.entries}
    assert len(slots) == 4, "the pipeline fills to inflight_slots_max in one go"
    assert all(len(v) == 10 for m in accepts for _, v in m.entries)
    net.deliver_all()
    net.tick(5)
    assert net.applied_values(leader) == [b"c%d" % k for k in range(100)]


def test_nothing_leaves_before_the_state_it_depends_on_is_in_the_same_ready():
    """Durable before visible: every Promise and Accepted is released in a
    Ready that persists (or already persisted) what it vouches for."""
    net = Net(3)
    orig = net.process
    violations = []

    def checked(i):
        core = net.cores[i]
        rd = core.ready()
        disk = net.disks[i]
        promised = rd.promised or disk.promised
        acc = dict(disk.accepted)
        acc.update({e.slot: e for e in rd.accepted})
        for m in rd.messages:
            if isinstance(m, Promise) and promised < m.ballot:
                violations.append(m)
            if isinstance(m, Accepted):
                for s in m.slots:
                    e = acc.get(s)
                    if not ((e and e.ballot == m.ballot) or s in core.chosen):
                        violations.append(m)
        # hand the ready back to the normal path
        core._out_messages[:0] = rd.messages
        core._out_early[:0] = rd.messages_early
        core._out_accepted[:0] = rd.accepted
        core._out_chosen[:0] = rd.chosen
        core._out_reads[:0] = rd.reads
        if rd.promised is not None and core._out_promised is None:
            core._out_promised = rd.promised
        core._emitted_index -= len(rd.committed)
        orig(i)

    net.process = checked
    leader = net.elect()
    propose(net, leader, *[b"v%d" % i for i in range(20)])
    net.tick(5)
    assert not violations
    assert net.applied_values(1) == [b"v%d" % i for i in range(20)]


def test_new_leader_reproposes_the_value_a_minority_accepted():
    net = Net(3)
    leader = net.elect()
    others = [i for i in net.ids if i != leader]
    # Only others[0] hears the Accept; the leader then dies.
    net.cut_links |= {(leader, others[1])}
    propose(net, leader, b"precious")
    assert any(e.value == (b"precious",) for e in net.disks[others[0]].accepted.values())
    net.crash(leader)
    net.heal()
    new = net.elect()
    assert new in others
    net.tick(5)
    for i in others:
        assert net.applied_values(i) == [b"precious"]


def test_holes_are_filled_with_noops_before_new_commands():
    net = Net(3)
    leader = net.elect()
    a, b = [i for i in net.ids if i != leader]
    net.isolate(leader)
    propose(net, leader, b"lost")          # slot 1: only the leader has it
    net.cut_links -= {(leader, a)}
    propose(net, leader, b"kept")          # slot 2: the leader and a
    net.crash(leader)
    net.heal()
    new = net.elect()
    assert new in (a, b)
    propose(net, new, b"after")
    net.tick(5)
    for i in (a, b):
        assert [v for _, v in net.disks[i].applied] == [(), (b"kept",), (b"after",)]


def test_a_leader_cut_off_from_the_quorum_steps_down_and_the_rest_elect_another():
    net = Net(3, election_ticks_min=10)
    old = net.elect()
    net.isolate(old)
    net.tick(40)
    assert net.cores[old].role is not Role.LEADER
    others = [i for i in net.ids if i != old]
    new = [i for i in others if net.cores[i].role is Role.LEADER]
    assert len(new) == 1


def test_a_rejoining_node_with_a_high_ballot_does_not_unseat_a_healthy_leader():
    net = Net(3, election_ticks_min=10)
    leader = net.elect()
    loner = next(i for i in net.ids if i != leader)
    net.isolate(loner)
    net.tick(200)  # the loner times out again and again
    net.heal()
    net.tick(30)
    assert net.leaders() == [leader]
    assert net.cores[loner].leader_id == leader
    propose(net, leader, b"ok")
    net.tick(3)
    assert net.applied_values(loner) == [b"ok"]


def test_a_lagging_node_catches_up_from_peers():
    net = Net(3, catchup_entries_max=7)
    leader = net.elect()
    lag = next(i for i in net.ids if i != leader)
    net.crash(lag)
    for k in range(50):
        net.cores[leader].propose(b"w%d" % k)
        net.deliver_all()
    net.restart(lag)
    net.tick(20)
    assert net.applied_values(lag) == [b"w%d" % k for k in range(50)]


def test_a_restarted_node_keeps_its_promise_and_accepted_entries():
    net = Net(3)
    leader = net.elect()
    propose(net, leader, b"a")
    f = next(i for i in net.ids if i != leader)
    promised = net.cores[f].promised
    net.crash(f)
    net.restart(f)
    assert net.cores[f].promised == promised
    net.tick(5)
    assert net.applied_values(f) == [b"a"]


def test_in_three_nodes_followers_learn_a_slot_from_the_leaders_accepted():
    """A follower that accepted a slot and hears the leader's own Accepted
    knows a quorum accepted it: it applies the slot though the leader never
    heard a follower's Accepted (nor sent a commit point)."""
    net = Net(3)
    leader = net.elect()
    net.drop = lambda m: isinstance(m, Accepted) and m.to == leader
    propose(net, leader, b"a")
    followers = [i for i in net.ids if i != leader]
    for f in followers:
        assert net.applied_values(f) == [b"a"]
    assert net.applied_values(leader) == [] and net.cores[leader].commit_index < net.cores[followers[0]].commit_index
    # A read at the leader now must cover the slot a follower may have answered
    # a client for: its read index is past its own commit point.
    net.cores[leader].read(5)
    net.deliver_all()
    (rs,) = net.reads[leader]
    assert rs.ok and rs.index >= net.cores[followers[0]].commit_index > net.cores[leader].commit_index


def test_a_follower_learns_nothing_from_an_accepted_at_another_ballot_or_for_another_value():
    """Accepted counts only at the ballot the follower promised, for a slot it
    accepted at that ballot."""
    net = Net(3)
    leader = net.elect()
    f = next(i for i in net.ids if i != leader)
    core = net.cores[f]
    b = core.promised
    slot = core.commit_index + 1
    core.step(Accepted(frm=leader, to=f, ballot=b, slots=(slot,)))  # nothing accepted here: no value known
    net.process(f)
    assert core.commit_index == slot - 1
    core.step(Accept(frm=leader, to=f, ballot=b, entries=((slot, (b"v",)),), commit=slot - 1))
    net.process(f)  # accepted and durable: own ack
    other = next(i for i in net.ids if i not in (leader, f))
    core.step(Accepted(frm=other, to=f, ballot=Ballot(b.round + 1, other), slots=(slot,)))
    net.process(f)
    assert core.commit_index == slot - 1, "an Accepted at another ballot does not count"
    core.step(Accepted(frm=leader, to=f, ballot=b, slots=(slot,)))
    net.process(f)
    assert core.commit_index == slot and core.chosen[slot] == (b"v",)


@pytest.mark.parametrize("n", [5])
def test_in_larger_clusters_the_leader_sends_the_commit_point_and_no_accepted(n):
    net = Net(n)
    leader = net.elect()
    net.sent.clear()
    propose(net, leader, b"a")
    assert not any(isinstance(m, Accepted) and m.frm == leader for m in net.sent)
    assert all(net.applied_values(i) == [b"a"] for i in net.ids)


def test_a_linearizable_read_is_confirmed_by_a_quorum_round():
    net = Net(3)
    leader = net.elect()
    propose(net, leader, b"a")
    net.tick(2)
    net.cores[leader].read(7)
    net.process(leader)
    assert net.reads[leader] == [], "not before a quorum answered"
    net.deliver_all()
    (rs,) = net.reads[leader]
    assert rs.read_id == 7 and rs.ok and rs.index >= 1


def test_a_read_on_a_follower_gets_its_index_from_the_leader():
    net = Net(3)
    leader = net.elect()
    propose(net, leader, b"a")
    f = next(i for i in net.ids if i != leader)
    net.cores[f].read(9)
    net.deliver_all()
    (rs,) = net.reads[f]
    assert rs.ok and rs.read_id == 9 and rs.index == net.cores[leader].commit_index


def test_in_three_nodes_a_followers_read_request_is_the_confirming_round():
    """Where a quorum is two, a follower's request at the leader's ballot and
    the leader itself are a quorum: the leader answers it at once, and sends
    no heartbeat round for it."""
    net = Net(3)
    leader = net.elect()
    propose(net, leader, b"a")
    f = next(i for i in net.ids if i != leader)
    net.sent.clear()
    net.cores[f].read(9)
    net.deliver_all()
    (rs,) = net.reads[f]
    assert rs.ok and rs.read_id == 9 and rs.index == net.cores[leader].commit_index
    (req,) = [m for m in net.sent if isinstance(m, ReadIndexRequest)]
    assert req.ballot == net.cores[leader].ballot
    assert [type(m) for m in net.sent if m.frm == leader] == [ReadIndexReply]


def test_a_read_request_at_another_ballot_waits_for_a_quorum_round():
    """From an older node (no ballot) or from a follower of another leader:
    not a confirmation, so the leader runs a round first."""
    for ballot in (ZERO_BALLOT, Ballot(10**6, 9)):
        net = Net(3)
        leader = net.elect()
        f = next(i for i in net.ids if i != leader)
        net.sent.clear()
        net.cores[leader].step(ReadIndexRequest(frm=f, to=leader, read_ids=(3,), ballot=ballot))
        net.process(leader)
        out = [m for m in net.sent if m.frm == leader]
        assert out and all(isinstance(m, Heartbeat) for m in out), out
        net.deliver_all()
        (reply,) = [m for m in net.sent if isinstance(m, ReadIndexReply)]
        assert reply.ok and reply.read_ids == (3,)


def test_in_five_nodes_a_leader_and_one_follower_cannot_confirm_a_read():
    """{leader, follower} is no quorum of five: cut off from the other three,
    the follower's read is refused, never served from the leader's word."""
    net = Net(5, election_ticks_min=10)
    leader = net.elect()
    propose(net, leader, b"a")
    f = next(i for i in net.ids if i != leader)
    for a in (leader, f):
        for b in net.ids:
            if b not in (leader, f):
                net.cut_links |= {(a, b), (b, a)}
    net.cores[f].read(4)
    net.tick(60)
    assert [(r.read_id, r.ok) for r in net.reads[f]] == [(4, False)]


@pytest.mark.parametrize("n", [3, 5])
def test_a_read_round_asks_only_as_many_followers_as_a_quorum_needs(n):
    net = Net(n)
    leader = net.elect()
    propose(net, leader, b"a")
    net.sent.clear()
    net.cores[leader].read(7)
    net.process(leader)
    asked = [m.to for m in net.sent if isinstance(m, Heartbeat) and m.frm == leader]
    assert len(asked) == n // 2 == len(set(asked))
    net.deliver_all()
    assert [(r.read_id, r.ok) for r in net.reads[leader]] == [(7, True)]


@pytest.mark.parametrize("n", [3, 5])
def test_a_read_round_asked_of_a_follower_gone_quiet_asks_every_follower_two_ticks_later(n):
    net = Net(n, heartbeat_ticks=5, election_ticks_min=50)
    leader = net.elect()
    propose(net, leader, b"a")
    net.sent.clear()
    net.cores[leader].read(1)
    net.process(leader)
    asked = {m.to for m in net.sent if isinstance(m, Heartbeat)}
    for f in asked:
        net.crash(f)  # the leader does not know yet
    net.deliver_all()
    net.tick(1)
    assert net.reads[leader] == []
    net.tick(1)  # not the periodic heartbeat (every 5 ticks): the round widens
    assert [(r.read_id, r.ok) for r in net.reads[leader]] == [(1, True)]
    # From then on the next round asks the followers that answered.
    net.sent.clear()
    net.cores[leader].read(2)
    net.process(leader)
    assert {m.to for m in net.sent if isinstance(m, Heartbeat)}.isdisjoint(asked)
    net.deliver_all()
    assert [(r.read_id, r.ok) for r in net.reads[leader]][-1] == (2, True)


@pytest.mark.parametrize("n", [3, 5])
def test_reads_at_every_tick_do_not_hold_back_resending_a_lost_accept(n):
    """A minority down and the one Accept a quorum needed lost: read rounds
    all the time must not put off the periodic heartbeat that resends it."""
    net = Net(n, heartbeat_ticks=5, election_ticks_min=50)
    leader = net.elect()
    others = [i for i in net.ids if i != leader]
    for f in others[: n // 2]:
        net.crash(f)
    live = set(others[n // 2 :])
    lost: list[Accept] = []

    def drop(m):
        if isinstance(m, Accept) and m.to in live and m.entries and not lost:
            lost.append(m)
            return True
        return False

    net.drop = drop
    propose(net, leader, b"x")
    assert lost and net.applied_values(leader) == []
    for rid in range(1, 31):
        net.cores[leader].read(rid)
        net.tick()
    assert net.applied_values(leader) == [b"x"]
    assert all(r.ok for r in net.reads[leader]) and len(net.reads[leader]) == 30


def test_an_isolated_leader_cannot_confirm_a_read():
    net = Net(3, election_ticks_min=10)
    leader = net.elect()
    net.isolate(leader)
    net.cores[leader].read(1)
    net.tick(40)
    assert [(r.read_id, r.ok) for r in net.reads[leader]] == [(1, False)]


def test_agreement_is_asserted_when_the_leaders_own_quorum_contradicts_a_chosen_value():
    net = Net(3)
    net.elect()
    core = net.cores[1]
    core.chosen[99] = (b"x",)
    with pytest.raises(AssertionError, match="agreement"):
        core._choose(99, (b"y",))


def test_a_peers_word_against_a_chosen_value_is_counted_not_believed():
    """A catch-up reply (or a promise) naming another value for a slot known
    chosen is a lie or a bit flip: the known value stays, nothing raises."""
    net = Net(3)
    leader = net.elect()
    f = next(i for i in net.ids if i != leader)
    core = net.cores[f]
    slot = core.commit_index + 3  # learned ahead of the commit point (rule (e))
    core.chosen[slot] = (b"x",)
    core._catchup_sent_tick = core._now  # catching up, so a reply is wanted
    core.step(CatchupReply(frm=leader, to=f, chosen=((slot, (b"forged",)),), commit=slot, log_start=1))
    assert core.chosen[slot] == (b"x",)
    assert core.refused[Refusal.CONFLICT] == 1


def test_a_node_behind_a_compacted_log_asks_for_a_snapshot_and_continues_after_it():
    net = Net(3)
    leader = net.elect()
    lag = next(i for i in net.ids if i != leader)
    net.crash(lag)
    for k in range(30):
        net.cores[leader].propose(b"w%d" % k)
        net.deliver_all()
    for i in net.ids:
        if i != lag:
            net.cores[i].compact(20)
            assert net.cores[i].log_start == 21
    asked = []
    orig = net.process

    def watching(i):
        core = net.cores[i]
        if i == lag:
            rd = core.ready()
            if rd.snapshot_from is not None:
                asked.append(rd.snapshot_from)
            core._out_messages[:0] = rd.messages
            core._out_early[:0] = rd.messages_early
            core._out_accepted[:0] = rd.accepted
            core._out_chosen[:0] = rd.chosen
            core._emitted_index -= len(rd.committed)
            if rd.promised is not None:
                core._out_promised = rd.promised
        orig(i)

    net.process = watching
    net.restart(lag)
    net.tick(10)
    assert asked and asked[0] != lag
    # The runtime installs the state at index 25 (say) from a peer snapshot.
    net.disks[lag].applied = list(net.disks[leader].applied[:25])
    net.cores[lag].install_snapshot(25)
    net.tick(10)
    assert net.applied_values(lag) == [b"w%d" % k for k in range(30)]


def test_has_ready_is_false_after_ready_even_when_commands_wait_for_a_full_pipeline():
    """A runtime loops `while has_ready(): ready()`; a full pipeline must not
    make that loop spin (it did: the node then starved its own heartbeats)."""
    net = Net(3, inflight_slots_max=2, batch_commands_max=1)
    leader = net.elect()
    core = net.cores[leader]
    for k in range(10):
        core.propose(b"c%d" % k)
    rounds = 0
    while core.has_ready():
        net.process(leader)
        rounds += 1
        assert rounds < 5, "has_ready() stays true with nothing to do"
    assert len(core._queue) == 8
    net.deliver_all()
    net.tick(5)
    assert net.applied_values(leader) == [b"c%d" % k for k in range(10)]


def test_ready_with_pending_forwards_and_reads_always_drains():
    net = Net(3)
    leader = net.elect()
    f = next(i for i in net.ids if i != leader)
    for k in range(5):
        net.cores[f].propose(b"f%d" % k)
        net.cores[f].read(k)
    net.process(f)
    assert not net.cores[f].has_ready()


def test_a_single_node_cluster_commits_past_its_pipeline_depth():
    net = Net(1, inflight_slots_max=4)
    leader = net.elect()
    for k in range(20):
        net.cores[leader].propose(b"s%d" % k)
        net.deliver_all()
    assert net.applied_values(leader) == [b"s%d" % k for k in range(20)]


def test_a_follower_answers_accepts_for_compacted_slots_with_its_log_start():
    net = Net(3)
    leader = net.elect()
    f = next(i for i in net.ids if i != leader)
    for k in range(10):
        net.cores[leader].propose(b"w%d" % k)
        net.deliver_all()
    net.tick(3)
    net.cores[f].compact(net.cores[f].applied_index)
    sent = len(net.sent)
    net.cores[f].step(Accept(frm=leader, to=f, ballot=net.cores[leader].ballot, entries=((5, (b"w4",)),), commit=5))
    net.process(f)
    replies = [m for m in net.sent[sent:] if isinstance(m, CatchupReply)]
    assert replies and replies[0].to == leader and replies[0].log_start == net.cores[f].log_start


def test_a_leader_behind_a_peers_compacted_log_steps_down_and_catches_up():
    net = Net(3)
    leader = net.elect()
    f = next(i for i in net.ids if i != leader)
    core = net.cores[leader]
    assert core.commit_index < 50
    sent = len(net.sent)
    core.step(CatchupReply(frm=f, to=leader, chosen=(), commit=60, log_start=50))
    net.process(leader)
    assert core.role is not Role.LEADER
    assert any(isinstance(m, CatchupRequest) and m.to == f for m in net.sent[sent:])


# ---- cluster features (what a packed batch needs from every member) ---------------


def test_cluster_features_are_known_once_every_member_has_said_so():
    fresh = Net(3)
    assert all(fresh.cores[i].cluster_features == 0 for i in fresh.ids)  # nobody heard of yet
    net = Net(3)
    net.elect()
    net.tick(3)  # heartbeats and their acks
    assert {i: net.cores[i].cluster_features for i in net.ids} == dict.fromkeys(net.ids, FEATURES)


@pytest.mark.parametrize("n", [3, 5])
def test_one_member_of_an_older_version_closes_the_gate_on_every_node(n):
    net = Net(n, node_cfg={n: {"features": 0}})
    net.elect()
    net.tick(3)
    assert [net.cores[i].cluster_features for i in net.ids] == [0] * n


def _a_follower_down(net: Net) -> tuple[int, int]:
    """Elect, let heartbeats go round, crash a follower: (leader, follower)."""
    leader = net.elect()
    net.tick(3)
    follower = next(i for i in net.ids if i != leader)
    net.crash(follower)
    return leader, follower


def test_a_member_down_keeps_the_gate_open_and_a_new_leader_inherits_it():
    net = Net(3)
    leader, follower = _a_follower_down(net)
    net.tick(5)
    assert net.cores[leader].cluster_features == FEATURES  # what it said before still holds
    net.restart(follower)
    assert net.cores[follower].cluster_features == 0  # restarted: knows nothing yet
    net.tick(3)  # it hears the leader's heartbeat: every member has the bits
    assert net.cores[follower].cluster_features == FEATURES
    net.crash(leader)  # the other two elect a leader without an ack from the old one
    new = net.elect()
    assert new != leader
    net.tick(3)
    assert net.cores[new].cluster_features == FEATURES


def test_a_member_restarted_as_an_older_version_closes_the_gate_at_its_next_ack():
    net = Net(3)
    _, follower = _a_follower_down(net)
    net.node_cfg[follower] = {"features": 0}
    net.restart(follower)
    assert net.cores[follower].cluster_features == 0  # a fresh start knows nothing
    net.tick(3)
    assert [net.cores[i].cluster_features for i in net.ids] == [0, 0, 0]
    net.crash(follower)
    net.node_cfg[follower] = {}
    net.restart(follower)  # upgraded again
    net.tick(3)
    assert [net.cores[i].cluster_features for i in net.ids] == [FEATURES] * 3
