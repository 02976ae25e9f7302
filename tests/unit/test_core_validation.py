"""The core against hostile peer messages (issue 17, item 2): every value is
checked as if hostile, even from a member. Each attack found is a test
named after it; then every field of every message, and a property test
that random hostile messages never break agreement, raise, or grow state."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from paxoskv.paxos import bounds, codec, hostile
from paxoskv.paxos.bounds import BALLOT_ROUND_MAX, SLOT_MAX, Refusal
from paxoskv.paxos.types import (
    MESSAGE_TYPES,
    REPLICA_MESSAGES,
    Accept,
    Accepted,
    Ballot,
    CatchupReply,
    CatchupRequest,
    Entry,
    Forward,
    Heartbeat,
    HeartbeatAck,
    Message,
    Nack,
    PreVote,
    PreVoteReply,
    Prepare,
    Promise,
    ReadIndexReply,
    ReadIndexRequest,
    Role,
    SnapshotAck,
    SnapshotChunk,
)

from core_net import Net

U64_MAX = (1 << 64) - 1


def propose(net: Net, node: int, *cmds: bytes) -> None:
    for c in cmds:
        assert net.cores[node].propose(c)
    net.deliver_all()


def others(net: Net, *not_these: int) -> list[int]:
    return [i for i in net.ids if i not in not_these]


def state(core) -> tuple:  # noqa: ANN001
    """Everything a dropped message must leave alone."""
    return (
        core.promised,
        core.max_round_seen,
        dict(core.accepted),
        dict(core.chosen),
        core.commit_index,
        core._known_commit,
        core.leader_id,
        core.role,
    )


def assert_agreement(net: Net) -> None:
    """No slot applied with two values on two nodes."""
    seen: dict[int, tuple] = {}
    for i in net.ids:
        for slot, value in net.disks[i].applied:
            assert seen.setdefault(slot, value) == value, f"slot {slot} differs on node {i}"


def commits_again(net: Net, cmd: bytes = b"after") -> None:
    """The cluster elects a leader and commits ``cmd`` on every node."""
    net.heal()
    net.drop = lambda m: False
    leader = net.elect(max_ticks=2000)
    propose(net, leader, cmd)
    net.tick(5)
    for i in net.ids:
        if i not in net.down:
            assert cmd in net.applied_values(i), (i, net.cores[i].status())
    assert_agreement(net)


# ---- the attacks of issue 17 --------------------------------------------------------


def test_a_huge_round_accept_then_an_election_works():
    """Accept at round 2**64-1 to every node: refused by the codec (and by the
    core if stepped directly), never promised or saved; then an election at
    the next round works."""
    net = Net(3)
    leader = net.elect()
    attacker = others(net, leader)[0]
    for victim in others(net, attacker):
        core = net.cores[victim]
        before = state(core)
        forged = Accept(
            frm=attacker,
            to=victim,
            ballot=Ballot(U64_MAX, attacker),
            entries=((core.commit_index + 1, (b"forged",)),),
            commit=core.commit_index + 1,
        )
        with pytest.raises(codec.CodecError, match="BALLOT_ROUND_MAX"):
            codec.decode(codec.encode(forged, "c"))
        core.step(forged)
        net.process(victim)
        assert state(core) == before
        assert core.refused[Refusal.OUT_OF_RANGE] == 1
        assert net.disks[victim].promised.round <= BALLOT_ROUND_MAX
    net.crash(leader)
    commits_again(net)
    assert all(net.cores[i].promised.round < 100 for i in others(net, leader))


def test_a_prepare_at_a_huge_round_then_an_election_works():
    """A Prepare at a huge round used to be remembered (max_round_seen) and
    crash the node at its next election, which needed round 2**64."""
    net = Net(3)
    leader = net.elect()
    attacker = others(net, leader)[0]
    victim = others(net, leader, attacker)[0]
    for round_ in (BALLOT_ROUND_MAX + 1, U64_MAX, 1 << 70):
        net.cores[victim].step(Prepare(frm=attacker, to=victim, ballot=Ballot(round_, attacker), from_slot=1))
        net.cores[victim].step(PreVote(frm=attacker, to=victim, ballot=Ballot(round_, attacker), commit=0))
    assert net.cores[victim].max_round_seen < 100
    assert net.cores[victim].refused[Refusal.OUT_OF_RANGE] == 6
    net.crash(leader)
    commits_again(net)
    assert all(net.cores[i].promised.round < 100 for i in net.ids)


def test_a_round_at_the_maximum_stops_elections_but_never_a_node():
    """The documented limit: a member that sends exactly BALLOT_ROUND_MAX on
    purpose (a lie Paxos cannot survive) stops elections past it; the node
    never builds a ballot past the maximum and never raises."""
    net = Net(3)
    leader = net.elect()
    attacker = others(net, leader)[0]
    victim = others(net, leader, attacker)[0]
    net.cores[victim].step(
        Nack(frm=attacker, to=victim, ballot=net.cores[victim].ballot, promised=Ballot(BALLOT_ROUND_MAX, attacker))
    )
    assert net.cores[victim].max_round_seen == BALLOT_ROUND_MAX
    net.isolate(victim)
    net.tick(100)
    core = net.cores[victim]
    assert core.refused[Refusal.ROUNDS_EXHAUSTED] >= 1
    assert core.role is Role.FOLLOWER
    for m in net.sent:
        for name in ("ballot", "promised"):
            b = getattr(m, name, None)
            assert b is None or b.round <= BALLOT_ROUND_MAX, m


def test_a_slot_10_12_accept_then_leader_change_is_bounded_and_the_cluster_keeps_committing():
    """One Accept for slot 10**12 used to make the next leader build 10**12
    no-op entries. Now: the acceptor refuses it (past its window), and a
    promise that still reports one (from a store of before this change)
    makes a new leader recover only within its window."""
    net = Net(3)
    leader = net.elect()
    propose(net, leader, b"a", b"b")
    net.tick(3)
    attacker = others(net, leader)[0]
    victim = others(net, leader, attacker)[0]
    core = net.cores[victim]
    forged = Accept(
        frm=attacker,
        to=victim,
        ballot=Ballot(core.promised.round + 1, attacker),
        entries=((10**12, (b"forged",)),),
        commit=10**12,
    )
    codec.decode(codec.encode(forged, "c"))  # in range: the window is the core's (its state)
    core.step(forged)
    net.process(victim)
    assert 10**12 not in core.accepted and 10**12 not in net.disks[victim].accepted
    assert core.refused[Refusal.BEYOND_WINDOW] == 1
    # As if accepted by a paxoskv before this change, and found on its disk:
    planted = Entry(10**12, core.promised, (b"forged",))
    net.disks[victim].accepted[10**12] = planted
    net.crash(victim)
    net.restart(victim)
    assert net.cores[victim].accepted[10**12] == planted
    net.crash(leader)
    net.sent.clear()
    new = net.elect()
    assert new != leader
    assert net.cores[new].recovery_end < 100
    proposed = {s for m in net.sent if isinstance(m, Accept) for s, _ in m.entries}
    assert max(proposed, default=0) < 100 and len(proposed) <= net.cores[new].config.inflight_slots_max
    assert sum(net.cores[i].refused[Refusal.BEYOND_WINDOW] for i in net.ids) >= 1
    commits_again(net)
    assert all(len(net.cores[i].accepted) < 10 for i in net.ids if i not in net.down)


def test_a_commit_point_from_a_ballot_not_promised_teaches_nothing():
    """A follower holds an accepted, not yet chosen entry at its leader's
    ballot. A commit point covering it from any other ballot (a higher one
    of another node, or the leader's ballot in a message not from the
    leader) must not make it chosen: its value may never be."""
    net = Net(3)
    leader = net.elect()
    attacker = others(net, leader)[0]
    victim = others(net, leader, attacker)[0]
    core = net.cores[victim]
    b = core.promised
    slot = core.commit_index + 1
    net.drop = lambda m: isinstance(m, Accepted) or (isinstance(m, Accept) and m.to == attacker)
    assert net.cores[leader].propose(b"pending")
    net.deliver_all()
    assert core.accepted[slot].ballot == b and slot not in core.chosen
    # The leader's ballot, from another member: refused outright.
    for forged in (
        Heartbeat(frm=attacker, to=victim, ballot=b, commit=slot, read_seq=0),
        Accept(frm=attacker, to=victim, ballot=b, entries=((slot + 1, (b"forged",)),), commit=slot + 1),
    ):
        core.step(forged)
        net.process(victim)
    assert core.refused[Refusal.FOREIGN_BALLOT] == 2
    assert slot not in core.chosen and slot + 1 not in core.accepted
    # A higher ballot of the sender's own: promised (as an empty Accept), but
    # its commit point covers no entry accepted at it.
    core.step(Heartbeat(frm=attacker, to=victim, ballot=Ballot(b.round + 1, attacker), commit=slot, read_seq=0))
    net.process(victim)
    assert core.promised == Ballot(b.round + 1, attacker) == net.disks[victim].promised
    assert slot not in core.chosen and core.commit_index == slot - 1
    commits_again(net)


def test_a_false_commit_point_drives_catch_up_only_until_the_leader_speaks():
    """A catch-up reply naming a commit point far ahead must not make a
    follower ask for catch-up forever: the leader's next word replaces it."""
    net = Net(3)
    leader = net.elect()
    propose(net, leader, b"a")
    net.tick(3)
    f = others(net, leader)[0]
    other = others(net, leader, f)[0]
    core = net.cores[f]
    core._request_catchup(leader)
    core.step(CatchupReply(frm=other, to=f, chosen=(), commit=SLOT_MAX, log_start=1))
    assert core._known_commit == SLOT_MAX
    net.tick(2)  # heartbeats
    assert core._known_commit == net.cores[leader].commit_index
    net.sent.clear()
    net.tick(20)
    assert not [m for m in net.sent if isinstance(m, CatchupRequest)]
    assert core._catchup_sent_tick is None


def test_a_catch_up_reply_not_asked_for_is_dropped():
    net = Net(3)
    leader = net.elect()
    f = others(net, leader)[0]
    core = net.cores[f]
    slot = core.commit_index + 1
    core.step(CatchupReply(frm=leader, to=f, chosen=((slot, (b"x",)),), commit=slot, log_start=1))
    assert slot not in core.chosen and core.refused[Refusal.UNSOLICITED] == 1
    core.step(CatchupReply(frm=leader, to=f, chosen=(), commit=9, log_start=9))
    assert core.ready().snapshot_from is None


def test_an_ack_of_a_read_round_never_started_confirms_nothing():
    """A HeartbeatAck whose read_seq is ahead of the leader's would confirm
    this and every later read round, with no quorum behind them."""
    net = Net(3)
    leader = net.elect()
    lcore = net.cores[leader]
    for f in others(net, leader):
        net.isolate(f)
    lcore.read(7)
    net.process(leader)
    f = others(net, leader)[0]
    lcore.step(HeartbeatAck(frm=f, to=leader, ballot=lcore.ballot, read_seq=lcore._read_seq + 1))
    lcore.step(HeartbeatAck(frm=f, to=leader, ballot=lcore.ballot, read_seq=bounds.READ_SEQ_MAX))
    net.process(leader)
    assert net.reads[leader] == [] and lcore.refused[Refusal.READ_SEQ_AHEAD] == 2
    assert lcore._read_acks.get(f, 0) == 0


def test_a_read_index_from_a_member_that_is_not_the_leader_is_not_served():
    net = Net(3)
    leader = net.elect()
    f, other = others(net, leader)
    net.isolate(leader)  # the real answer does not come
    net.cores[f].read(11)
    net.process(f)
    assert 11 in net.cores[f]._reads_remote_pending
    net.cores[f].step(ReadIndexReply(frm=other, to=f, read_ids=(11,), index=0, ok=True))
    net.process(f)
    assert net.reads[f] == [] and net.cores[f].refused[Refusal.UNSOLICITED] == 1


def test_read_ids_a_peer_can_leave_at_the_leader_are_bounded():
    net = Net(5)  # a quorum of three: requests wait for a round
    leader = net.elect()
    f = others(net, leader)[0]
    lcore = net.cores[leader]
    ids = tuple(range(100_000))
    for k in range(3):
        lcore.step(ReadIndexRequest(frm=f, to=leader, read_ids=tuple(i + k * 100_000 for i in ids)))
    assert len(lcore._reads_new_remote[f]) <= bounds.READ_IDS_PENDING_PER_PEER_MAX
    assert lcore.refused[Refusal.READS_OVER_LIMIT] == 200_000
    refusals = [m for m in lcore.ready().messages if isinstance(m, ReadIndexReply) and not m.ok]
    assert sum(len(m.read_ids) for m in refusals) == 200_000


def test_the_leaders_queue_is_bounded_in_bytes_against_forwards():
    net = Net(3, queue_bytes_max=1000)
    leader = net.elect()
    f = others(net, leader)[0]
    lcore = net.cores[leader]
    # No ready() in between: nothing leaves the queue for a slot.
    lcore.step(Forward(frm=f, to=leader, commands=(b"x" * 400,) * 5))
    assert lcore._queue_bytes == 800 and len(lcore._queue) == 2
    assert lcore.refused[Refusal.QUEUE_FULL] == 3
    assert not lcore.propose(b"y" * 300) and lcore.propose(b"y" * 200)
    assert lcore._queue_bytes == 1000


def test_a_promised_ballot_naming_a_non_member_is_dropped():
    net = Net(3)
    leader = net.elect()
    attacker, victim = others(net, leader)
    core = net.cores[victim]
    before = state(core)
    outsider = Ballot(10**9, 77)
    core.step(Nack(frm=attacker, to=victim, ballot=core.ballot, promised=outsider))
    core.step(PreVoteReply(frm=attacker, to=victim, ballot=core.ballot, granted=True, promised=outsider))
    assert state(core) == before and core.refused[Refusal.NOT_A_MEMBER] == 2


def test_a_promise_reporting_impossible_entries_is_not_recovered():
    """Entries accepted above the ballot promised, or at a non-member's
    ballot, are no acceptances: the new leader does not re-propose them."""
    net = Net(3)
    leader = net.elect()
    propose(net, leader, b"a")
    net.tick(3)
    net.crash(leader)
    liar, honest = others(net, leader)
    net.cores[liar]._timeout = 10**9  # the honest one campaigns and hears the lie

    told: set[int] = set()

    def lie(m: Message) -> bool:
        if isinstance(m, Promise) and m.frm == liar and id(m) not in told:
            s = m.commit + 1
            bad = (Entry(s, Ballot(m.ballot.round + 5, liar), (b"above",)), Entry(s + 1, Ballot(1, 99), (b"outsider",)))
            lied = Promise(
                frm=m.frm,
                to=m.to,
                ballot=m.ballot,
                accepted=m.accepted + bad,
                chosen=m.chosen,
                commit=m.commit,
                log_start=m.log_start,
            )
            told.add(id(lied))
            net.queue.append(lied)
            return True
        return False

    net.drop = lie
    assert net.elect() == honest
    core = net.cores[honest]
    assert core.refused[Refusal.INCONSISTENT] == 1 and core.refused[Refusal.NOT_A_MEMBER] == 1
    net.tick(5)
    values = {c for i in net.ids if i not in net.down for c in net.applied_values(i)}
    assert not values & {b"above", b"outsider"}
    commits_again(net)


# ---- legitimate operation under the window --------------------------------------------


@pytest.fixture
def small_window(monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(bounds, "ACCEPT_WINDOW_SLOTS", 32)
    return 32


def test_a_follower_far_behind_catches_up_first_then_accepts_and_is_a_quorum_again(small_window):
    """The window is on the distance from a node's own commit point: a
    follower 300 slots behind (ten windows) refuses the leader's new slots
    until it has caught up by the log, and then makes the quorum that the
    leader needs with the other follower down."""
    net = Net(3, catchup_entries_max=100, inflight_slots_max=4)
    leader = net.elect()
    lag, up = others(net, leader)
    net.crash(lag)
    for k in range(300):
        net.cores[leader].propose(b"w%d" % k)
        net.deliver_all()
    net.restart(lag)
    net.crash(up)
    assert net.cores[leader].propose(b"needs-lag")
    net.tick(60)
    assert net.applied_values(lag) == [b"w%d" % k for k in range(300)] + [b"needs-lag"]
    assert net.applied_values(leader)[-1] == b"needs-lag"
    assert net.cores[lag].refused[Refusal.BEYOND_WINDOW] > 0  # it did refuse, at first


def test_a_leader_never_proposes_past_its_own_window(small_window):
    net = Net(3, inflight_slots_max=8)
    leader = net.elect()
    core = net.cores[leader]
    # Slot commit+1 never gets a quorum; later ones do (and are chosen), so
    # only the window stops the leader.
    first = core.commit_index + 1
    net.drop = lambda m: isinstance(m, Accept) and any(s == first for s, _ in m.entries)
    for k in range(200):
        core.propose(b"c%d" % k)
        net.deliver_all()
    assert core.commit_index == first - 1
    assert core._next_slot - 1 <= core.commit_index + small_window
    assert max(core.accepted) <= core.commit_index + small_window
    for i in others(net, leader):
        assert max(net.cores[i].accepted) <= net.cores[i].commit_index + small_window
    net.drop = lambda m: False
    net.tick(30)
    assert net.applied_values(leader) == [b"c%d" % k for k in range(200)]
    assert_agreement(net)


def test_a_new_leader_recovers_many_holes_through_the_pipeline():
    """Recovery is bounded work per Ready: with 40 slots to recover, no
    Accept carries more than the pipeline, and every slot is recovered."""
    net = Net(3, inflight_slots_max=4)
    leader = net.elect()
    net.drop = lambda m: isinstance(m, (Accepted, Heartbeat))  # nothing gets chosen
    for k in range(40):
        net.cores[leader].propose(b"r%d" % k)
        net.deliver_all()
        net.cores[leader]._inflight.clear()  # keep proposing (as if acks came)
    net.drop = lambda m: False
    net.crash(leader)
    net.sent.clear()
    new = net.elect()
    accepts = [m for m in net.sent if isinstance(m, Accept) and m.frm == new]
    assert accepts and max(len(m.entries) for m in accepts) <= 4
    net.tick(20)
    assert net.applied_values(new) == [b"r%d" % k for k in range(40)]


# ---- every field of every message -----------------------------------------------------

CORE_TYPES = tuple(t for t in MESSAGE_TYPES if t not in REPLICA_MESSAGES)  # snapshot and lease messages are the replica's
PAST_THE_WIRE: list[tuple[str, Message]] = [
    ("ballot node past uint32", Heartbeat(frm=2, to=1, ballot=Ballot(3, 1 << 32), commit=0, read_seq=0)),
    ("commit past uint64", Heartbeat(frm=2, to=1, ballot=Ballot(3, 2), commit=1 << 64, read_seq=0)),
    ("negative commit", Accept(frm=2, to=1, ballot=Ballot(3, 2), entries=(), commit=-1)),
    ("negative slot", Accepted(frm=2, to=1, ballot=Ballot(3, 2), slots=(-5,))),
    ("read id past uint64", ReadIndexRequest(frm=2, to=1, read_ids=(1 << 64,))),
    ("negative read id", ReadIndexReply(frm=2, to=1, read_ids=(-1,), index=0, ok=True)),
    ("features past uint32", HeartbeatAck(frm=2, to=1, ballot=Ballot(3, 2), read_seq=0, features=1 << 32)),
    ("negative read_seq", HeartbeatAck(frm=2, to=1, ballot=Ballot(3, 2), read_seq=-1)),
    ("round 2**70", Prepare(frm=2, to=1, ballot=Ballot(1 << 70, 2), from_slot=1)),
    ("forward.commands", Forward(frm=2, to=1, commands=(b"",) * (bounds.COMMANDS_PER_MESSAGE_MAX + 1))),
]
CASES = [(f, m) for f, m in hostile.past_the_maxima() if isinstance(m, CORE_TYPES)] + PAST_THE_WIRE


@pytest.mark.parametrize(("field", "msg"), CASES, ids=[f for f, _ in CASES])
def test_a_field_past_its_maximum_is_dropped_and_counted_by_a_direct_step(field: str, msg: Message):
    for role in ("leader", "follower"):
        net = Net(3)
        leader = net.elect()
        me = leader if role == "leader" else 1 if leader != 1 else 3
        frm = 2 if me != 2 else 3
        core = net.cores[me]
        before = state(core)
        core.step(type(msg)(**{**{f: getattr(msg, f) for f in msg.__dataclass_fields__}, "frm": frm, "to": me}))
        assert core.refused[Refusal.OUT_OF_RANGE] == 1, (role, field)
        assert state(core) == before
        rd = core.ready()
        assert not rd.messages and not rd.accepted and rd.promised is None


def test_snapshot_and_lease_messages_past_their_maxima_are_the_codecs_to_refuse():
    """The core does not handle them (the replica does, after the codec)."""
    for field, msg in hostile.past_the_maxima():
        if isinstance(msg, REPLICA_MESSAGES):
            with pytest.raises(codec.CodecError):
                codec.decode(codec.encode(msg, "c"))


def test_a_proposers_message_at_another_nodes_ballot_is_dropped():
    net = Net(3)
    leader = net.elect()
    attacker, victim = others(net, leader)
    core = net.cores[victim]
    b = core.promised
    before = state(core)
    for m in (
        PreVote(frm=attacker, to=victim, ballot=Ballot(b.round + 1, leader), commit=10**6),
        Prepare(frm=attacker, to=victim, ballot=Ballot(b.round + 1, leader), from_slot=1),
        Accept(frm=attacker, to=victim, ballot=b, entries=((core.commit_index + 1, (b"x",)),), commit=0),
        Heartbeat(frm=attacker, to=victim, ballot=Ballot(b.round + 9, victim), commit=10**6, read_seq=0),
    ):
        core.step(m)
    assert state(core) == before and core.refused[Refusal.FOREIGN_BALLOT] == 4
    assert not core.ready().messages


# ---- property: random hostile messages ----------------------------------------------------


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1))
def test_random_hostile_messages_never_break_agreement_raise_or_grow_state(seed: int):
    """A 3-node network where, between client commands, reads, ticks,
    message deliveries and partitions, members send hostile messages (paxoskv.paxos.hostile: each
    breaks a rule the node enforces), half of them through the wire codec.
    Nothing raises, no slot is applied with two values, nothing the
    attackers send is applied, state stays bounded, and once they stop the
    cluster commits again."""
    rng = random.Random(seed)
    net = Net(3, seed=seed % 1000)
    net.elect()
    codec_dropped = 0
    applied_before: dict[int, int] = {}  # read id -> the highest slot any node applied when it came
    for step in range(300):
        r = rng.random()
        if r < 0.25:
            node = rng.choice(net.ids)
            net.cores[node].propose(b"c%d" % step)
            net.deliver_all()
        elif r < 0.3:
            applied_before[step] = max(len(net.disks[i].applied) for i in net.ids)
            net.cores[rng.choice(net.ids)].read(step)
            net.deliver_all()
        elif r < 0.58:
            net.tick()
        elif r < 0.6:  # partitions, so that reads and catch-up wait at times
            if net.cut_links or rng.random() < 0.5:
                net.heal()
            else:
                net.isolate(rng.choice(net.ids))
        else:
            victim = rng.choice(net.ids)
            if hostile.inject(rng, net.cores[victim], net.cores[victim].step) == "codec":
                codec_dropped += 1
                continue
            net.process(victim)
            net.deliver_all()
        for i in net.ids:
            core = net.cores[i]
            assert core.promised.round <= BALLOT_ROUND_MAX and core.max_round_seen <= BALLOT_ROUND_MAX
            assert len(core.accepted) <= 400 and len(core.chosen) <= 400
            assert all(s <= core.commit_index + bounds.ACCEPT_WINDOW_SLOTS for s in core.accepted)
            assert len(core._queue) + len(core._forward_queue) <= 400
    assert_agreement(net)
    for i in net.ids:  # a read is served at no index below a write already applied anywhere
        for rs in net.reads[i]:
            assert not rs.ok or rs.index >= applied_before[rs.read_id], (i, rs)
    applied = {c for i in net.ids for c in net.applied_values(i)}
    assert not any(b"forged" in c for c in applied)
    refused = sum(sum(net.cores[i].refused.values()) for i in net.ids)
    assert refused + codec_dropped > 0
    commits_again(net)
