"""Multi-Paxos as a pure state machine.

Rules
-----
* No I/O. The core never touches a socket, a clock, a disk, a thread or the
  global random module. It is driven by four inputs -- ``tick()``,
  ``step(message)``, ``propose(command)``, ``read(read_id)`` -- and answers with
  a :class:`~paxoskv.paxos.types.Ready` that the runtime handles in order:
  persist (synced), then send, then apply, then ``advance(ready)``.
* Durable before visible: a message that depends on a promise or an
  acceptance not yet durable is only ever in ``Ready.messages``, which the
  runtime sends after persisting that Ready's ``promised`` and ``accepted``.
  ``Ready.messages_early`` (sent before the write) holds only what vouches
  for nothing this write makes durable: the leader's Accepts, and its own
  Accepted for acceptances an earlier Ready made durable.
* Randomness (election jitter) comes from the injected ``random.Random``.
* Peers are hostile until checked, members too: ``step`` drops a message
  outside the maxima of :mod:`paxoskv.paxos.bounds`, the handlers drop what
  contradicts this node's state (a ballot not its sender's, a slot past
  ``commit_index + ACCEPT_WINDOW_SLOTS``, a commit point of a ballot not
  promised, ...), each counted in ``refused``; no peer message raises.

How the roles work (acceptor, learner and its rules (a)-(e), proposer,
reads): docs/design.md, "The core".
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

from paxoskv.paxos import bounds
from paxoskv.paxos.bounds import BALLOT_ROUND_MAX, CHECKS, READ_IDS_PENDING_PER_PEER_MAX, Refusal
from paxoskv.paxos.types import (
    NOOP,
    ZERO_BALLOT,
    Accept,
    Accepted,
    Ballot,
    CatchupReply,
    CatchupRequest,
    Config,
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
    ReadState,
    Ready,
    Role,
    Value,
)


@dataclass(slots=True)
class _Proposal:
    value: Value
    acks: set[int]
    sent_tick: int


@dataclass(slots=True)
class _ReadRound:
    index: int
    local: list[int] = field(default_factory=list)
    remote: dict[int, list[int]] = field(default_factory=dict)  # origin node -> read ids


class Core:
    """One node's Multi-Paxos state. See the module docstring."""

    def __init__(
        self,
        config: Config,
        rng: random.Random,
        *,
        promised: Ballot = ZERO_BALLOT,
        accepted: Mapping[int, Entry] | None = None,
        chosen: Mapping[int, Value] | None = None,
        log_start: int = 1,
        applied_index: int = 0,
    ) -> None:
        if promised.round > BALLOT_ROUND_MAX:
            raise ValueError(f"promised ballot {promised} is past BALLOT_ROUND_MAX ({BALLOT_ROUND_MAX})")
        self.config = config
        self.id = config.node_id
        self.others: tuple[int, ...] = tuple(p for p in config.peers if p != config.node_id)
        self._members = frozenset(config.peers)
        # What was dropped from peers' messages, and why (see paxos/bounds.py).
        self.refused: dict[Refusal, int] = dict.fromkeys(Refusal, 0)
        self.quorum = config.quorum
        # A follower learns from the leader's Accepted (rule (e) above) when
        # its own acceptance and the leader's make a quorum.
        self._notify_learners = self.quorum == 2 and len(config.peers) > 1
        self._retransmit_ticks = 2 * config.heartbeat_ticks
        self._rng = rng

        # Acceptor.
        self.promised = promised
        self.accepted: dict[int, Entry] = {
            s: e for s, e in (accepted or {}).items() if s > applied_index
        }
        # Learner.
        self.log_start = log_start
        self.chosen: dict[int, Value] = dict(chosen or {})
        self.applied_index = applied_index
        self.commit_index = max(applied_index, log_start - 1)
        self._advance_commit()
        self._emitted_index = applied_index

        # Proposer / roles.
        self.role = Role.FOLLOWER
        self.leader_id: int | None = None
        self.ballot = promised  # the ballot we lead or compete with
        self.max_round_seen = promised.round
        self.recovery_end = 0
        self._now = 0  # ticks since start
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._timeout = self._random_timeout()
        self._prevote_ballot = ZERO_BALLOT
        self._prevotes: set[int] = set()
        self._promises: dict[int, Promise] = {}
        self._from_slot = 0
        self._next_slot = 0
        self._inflight: dict[int, _Proposal] = {}
        self._queue: list[bytes] = []
        self._queue_bytes = 0
        self._forward_queue: list[bytes] = []
        self._forward_queue_bytes = 0
        # Leader recovery (phase 1's outcome), proposed through the pipeline:
        # slots _recovery_next..recovery_end not yet proposed, and the value
        # a promise reported for each (a hole gets a no-op).
        self._recovery_next = 1
        self._recovery_values: dict[int, Value] = {}
        self._last_heard: dict[int, int] = {}
        self._quorum_check_tick = 0
        self._commit_sent = 0
        # Learner acks (rule (e)): slot -> the nodes known to have accepted it
        # durably at ``promised``, for slots accepted here at that ballot.
        self._learner_acks: dict[int, set[int]] = {}
        # Leader: the highest slot it sent its own Accepted for. A follower
        # may answer a client for such a slot before this leader knows it is
        # chosen, so a read index is never below it.
        self._notified_through = 0
        # The feature bits of each other member, as far as this node knows:
        # from its own HeartbeatAck (at a leader, the member's word), else from
        # the leader's Heartbeat (the bits every member has). Kept across
        # terms, memory only: a member's bits change only when it restarts,
        # and then its next ack says so.
        self._member_features: dict[int, int] = {}
        # Catch-up (follower).
        self._known_commit = self.commit_index
        self._catchup_peer: int | None = None
        self._catchup_sent_tick: int | None = None
        # Reads.
        self._read_seq = 0
        self._reads_new_local: list[int] = []
        self._reads_new_remote: dict[int, list[int]] = {}
        self._read_rounds: dict[int, _ReadRound] = {}
        self._read_acks: dict[int, int] = {}
        self._reads_forward: list[int] = []
        self._reads_remote_pending: dict[int, int] = {}  # read id -> tick forwarded
        # tick our outstanding ReadIndexRequest was sent (None: none is): one at a time
        self._read_request_at: int | None = None
        self._read_round_tick: int | None = None  # when a round asked only some followers
        # Output buffers.
        self._out_promised: Ballot | None = None
        self._out_accepted: list[Entry] = []
        self._out_chosen: list[tuple[int, Value]] = []
        self._out_messages: list[Message] = []
        self._out_early: list[Message] = []
        self._out_reads: list[ReadState] = []
        self._out_snapshot_from: int | None = None

        handlers: dict[type, Callable[[Message], None]] = {
            PreVote: self._on_pre_vote,
            PreVoteReply: self._on_pre_vote_reply,
            Prepare: self._on_prepare,
            Promise: self._on_promise,
            Nack: self._on_nack,
            Accept: self._on_accept,
            Accepted: self._on_accepted,
            Heartbeat: self._on_heartbeat,
            HeartbeatAck: self._on_heartbeat_ack,
            CatchupRequest: self._on_catchup_request,
            CatchupReply: self._on_catchup_reply,
            Forward: self._on_forward,
            ReadIndexRequest: self._on_read_index_request,
            ReadIndexReply: self._on_read_index_reply,
        }
        # Each handler with the range check of its message type (bounds.py).
        self._steps = {t: (CHECKS[t], handler) for t, handler in handlers.items()}
        self._tick_by_role: dict[Role, Callable[[], None]] = {
            Role.FOLLOWER: self._tick_follower,
            Role.PRECANDIDATE: self._tick_follower,
            Role.CANDIDATE: self._tick_candidate,
            Role.LEADER: self._tick_leader,
        }

    # ---- Inputs ----------------------------------------------------------------

    def tick(self) -> None:
        """Logical time passes by one tick."""
        self._now += 1
        self._tick_by_role[self.role]()
        self._expire_remote_reads()
        self._retry_read_request()
        self._retry_catchup()

    def step(self, msg: Message) -> None:
        """A peer message arrived. Messages for another node are a bug of the runtime."""
        assert msg.to == self.id, f"message for {msg.to} stepped into node {self.id}"
        if msg.frm == self.id or msg.frm not in self._members:
            return
        step = self._steps.get(type(msg))
        if step is not None:
            out_of_range, handler = step
            if out_of_range(msg) is not None:
                self.refused[Refusal.OUT_OF_RANGE] += 1
                return
            handler(msg)

    def propose(self, command: bytes) -> bool:
        """Queue a client command for the log. False: no leader is known (or
        the queue is full), so the caller should answer UNAVAILABLE now."""
        cfg = self.config
        if self.role in (Role.LEADER, Role.CANDIDATE):
            size = self._queue_bytes + len(command)
            if len(self._queue) >= cfg.queue_commands_max or size > cfg.queue_bytes_max:
                return False
            self._queue.append(command)
            self._queue_bytes = size
            return True
        if self.leader_id is not None:
            size = self._forward_queue_bytes + len(command)
            if len(self._forward_queue) >= cfg.queue_commands_max or size > cfg.queue_bytes_max:
                return False
            self._forward_queue.append(command)
            self._forward_queue_bytes = size
            return True
        return False

    def read(self, read_id: int) -> None:
        """Ask for a linearizable read point; answered by a ReadState later."""
        if self.role is Role.LEADER:
            self._reads_new_local.append(read_id)
        elif self.leader_id is not None:
            self._reads_forward.append(read_id)
        else:
            self._out_reads.append(ReadState(read_id, 0, False))

    # ---- Output ----------------------------------------------------------------

    def ready(self) -> Ready:
        """Collect everything the runtime must do since the last call."""
        if self.role is Role.LEADER:
            self._flush_proposals()
            self._start_read_round()
            if self.commit_index > self._commit_sent and not self._notify_learners:
                self._broadcast_heartbeat()
        elif self.leader_id is not None:
            self._flush_forwards()
        committed: list[tuple[int, Value]] = []
        if self.commit_index > self._emitted_index:
            chosen = self.chosen
            committed = [(s, chosen[s]) for s in range(self._emitted_index + 1, self.commit_index + 1)]
            self._emitted_index = self.commit_index
        rd = Ready(
            promised=self._out_promised,
            accepted=self._out_accepted,
            chosen=self._out_chosen,
            messages=self._out_messages,
            messages_early=self._out_early,
            committed=committed,
            reads=self._out_reads,
            snapshot_from=self._out_snapshot_from,
        )
        self._out_snapshot_from = None
        self._out_promised = None
        self._out_accepted = []
        self._out_chosen = []
        self._out_messages = []
        self._out_early = []
        self._out_reads = []
        return rd

    def advance(self, ready: Ready) -> None:
        """The runtime has persisted, sent and applied ``ready``."""
        if ready.accepted:
            if self.role is Role.LEADER:
                # Our own acceptances are durable now: they count toward quorums.
                b = self.ballot
                notify: list[int] = []
                for e in ready.accepted:
                    if e.ballot != b:
                        continue
                    notify.append(e.slot)
                    p = self._inflight.get(e.slot)
                    if p is not None:
                        p.acks.add(self.id)
                        if len(p.acks) >= self.quorum:
                            del self._inflight[e.slot]
                            self._choose(e.slot, p.value)
                if notify and self._notify_learners:
                    slots = tuple(notify)
                    self._notified_through = max(self._notified_through, *slots)
                    # About durable state only: they may leave before the
                    # next Ready's write.
                    for peer in self.others:
                        self._out_early.append(Accepted(frm=self.id, to=peer, ballot=b, slots=slots))
            elif self.role is Role.FOLLOWER:
                for e in ready.accepted:
                    self._learner_ack(e.slot, e.ballot, self.id)
                self._advance_commit()
        if ready.committed:
            last = ready.committed[-1][0]
            assert last == self.applied_index + len(ready.committed), "applied out of order"
            for slot, _ in ready.committed:
                self.accepted.pop(slot, None)
                self._learner_acks.pop(slot, None)
            self.applied_index = last

    def has_ready(self) -> bool:
        """Whether ``ready()`` would return something. After ``ready()`` this is
        False until a new input arrives: commands waiting for room in a full
        pipeline do not count, so a runtime looping ``while has_ready()`` ends."""
        return bool(
            self._out_promised is not None
            or self._out_accepted
            or self._out_chosen
            or self._out_messages
            or self._out_early
            or self._out_reads
            or self._out_snapshot_from is not None
            or self.commit_index > self._emitted_index
            or (
                self.role is Role.LEADER
                and (
                    ((self._queue or self._recovery_next <= self.recovery_end) and self._pipeline_room())
                    or ((self._reads_new_local or self._reads_new_remote) and not self._read_rounds)
                )
            )
            or (
                self.leader_id is not None
                and (self._forward_queue or (self._reads_forward and self._read_request_at is None))
            )
        )

    def install_snapshot(self, index: int) -> None:
        """The runtime installed a snapshot of the applied state at ``index``
        (state machine and storage): continue the log after it."""
        if index <= self.applied_index:
            return
        for s in [s for s in self.chosen if s <= index]:
            del self.chosen[s]
        for s in [s for s in self.accepted if s <= index]:
            del self.accepted[s]
        for s in [s for s in self._learner_acks if s <= index]:
            del self._learner_acks[s]
        self.applied_index = index
        self._emitted_index = max(self._emitted_index, index)
        self.commit_index = max(self.commit_index, index)
        self.log_start = max(self.log_start, index + 1)
        self._advance_commit()
        self._emitted_index = max(self._emitted_index, min(self.commit_index, index))
        if self.commit_index >= self._known_commit:
            self._catchup_sent_tick = None

    def compact(self, through_slot: int) -> None:
        """Forget chosen values up to ``through_slot`` (already applied and
        captured in a snapshot). Catch-up below ``log_start`` needs a snapshot."""
        through_slot = min(through_slot, self.applied_index)
        for s in range(self.log_start, through_slot + 1):
            self.chosen.pop(s, None)
        self.log_start = max(self.log_start, through_slot + 1)

    # ---- Status ----------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        return self.role is Role.LEADER

    @property
    def cluster_features(self) -> int:
        """The feature bits every member of the cluster is known to have (this
        node's own included). 0 for a member not heard of yet: after a start,
        a leader needs one ack from every member (a follower one heartbeat)."""
        features = self.config.features
        known = self._member_features
        for peer in self.others:
            features &= known.get(peer, 0)
        return features

    def status(self) -> dict[str, object]:
        return {
            "node_id": self.id,
            "role": self.role.value,
            "leader_id": self.leader_id or 0,
            "ballot": self.ballot,
            "promised": self.promised,
            "commit_index": self.commit_index,
            "applied_index": self.applied_index,
            "log_start": self.log_start,
        }

    # ---- Ticks -----------------------------------------------------------------

    def _random_timeout(self) -> int:
        e = self.config.election_ticks_min
        return e + self._rng.randrange(e)

    def _tick_follower(self) -> None:
        self._election_elapsed += 1
        if self._election_elapsed >= self._timeout:
            self._start_prevote()

    def _tick_candidate(self) -> None:
        self._election_elapsed += 1
        if self._election_elapsed >= self._timeout:
            self._start_prevote()
            return
        if self._election_elapsed % self._retransmit_ticks == 0:
            for peer in self.others:
                if peer not in self._promises:
                    self._send(Prepare(frm=self.id, to=peer, ballot=self.ballot, from_slot=self._from_slot))

    def _tick_leader(self) -> None:
        cfg = self.config
        self._heartbeat_elapsed += 1
        if self._heartbeat_elapsed >= cfg.heartbeat_ticks:
            # On its own clock: read rounds and commit broadcasts do not put it
            # off, so a lost Accept is resent however busy reads keep us.
            self._heartbeat_elapsed = 0
            self._broadcast_heartbeat()
            self._retransmit_accepts()
        asked_at = self._read_round_tick
        if asked_at is not None and self._now - asked_at >= 2:
            self._read_round_tick = None
            if self._read_rounds:  # those asked went quiet: ask everyone
                self._send_heartbeats(self.others)
        if self._now - self._quorum_check_tick >= cfg.election_ticks_min:
            since = self._now - cfg.election_ticks_min
            live = sum(1 for p in self.others if self._last_heard.get(p, -1) >= since)
            self._quorum_check_tick = self._now
            if live + 1 < self.quorum:
                self._step_down(None)

    # ---- Elections -------------------------------------------------------------

    def _start_prevote(self) -> None:
        round_ = max(self.max_round_seen, self.promised.round) + 1
        self._election_elapsed = 0
        self._timeout = self._random_timeout()
        if round_ > BALLOT_ROUND_MAX:
            # Only a peer that sent the maximum itself gets us here: a ballot
            # past it would be refused by every node (and is not encodable
            # near 2**64). Stay a follower; a leader at lower rounds is none.
            self.refused[Refusal.ROUNDS_EXHAUSTED] += 1
            return
        self._fail_reads()
        self.role = Role.PRECANDIDATE
        self.leader_id = None
        self._clear_queues()
        self._prevote_ballot = Ballot(round_, self.id)
        self._prevotes = {self.id}
        if len(self._prevotes) >= self.quorum:
            self._start_candidacy()
            return
        for peer in self.others:
            self._send(PreVote(frm=self.id, to=peer, ballot=self._prevote_ballot, commit=self.commit_index))

    def _leader_recently_heard(self) -> bool:
        if self.role is Role.LEADER:
            return True
        return self.leader_id is not None and self._election_elapsed < self.config.election_ticks_min

    def _on_pre_vote(self, msg: PreVote) -> None:
        if msg.ballot.node != msg.frm:
            self.refused[Refusal.FOREIGN_BALLOT] += 1
            return
        self._see_round(msg.ballot.round)
        granted = (
            msg.ballot > self.promised
            and not self._leader_recently_heard()
            and msg.commit >= self.commit_index
        )
        self._send(
            PreVoteReply(frm=self.id, to=msg.frm, ballot=msg.ballot, granted=granted, promised=self.promised)
        )

    def _on_pre_vote_reply(self, msg: PreVoteReply) -> None:
        if not self._names_member(msg.promised):
            return
        self._see_round(msg.promised.round)
        if self.role is not Role.PRECANDIDATE or msg.ballot != self._prevote_ballot:
            return
        if msg.granted:
            self._prevotes.add(msg.frm)
            if len(self._prevotes) >= self.quorum:
                self._start_candidacy()

    def _start_candidacy(self) -> None:
        round_ = max(self.max_round_seen, self.promised.round) + 1
        if round_ > BALLOT_ROUND_MAX:
            self.refused[Refusal.ROUNDS_EXHAUSTED] += 1
            self._step_down(None)
            return
        self.role = Role.CANDIDATE
        self.leader_id = None
        self.ballot = Ballot(round_, self.id)
        self.max_round_seen = round_
        self._set_promised(self.ballot)
        self._election_elapsed = 0
        self._timeout = self._random_timeout()
        self._from_slot = self.commit_index + 1
        self._promises = {}
        self._on_promise(self._make_promise(self.ballot, self._from_slot, self.id))
        if self.role is not Role.CANDIDATE:
            return  # a quorum of one: already leading
        for peer in self.others:
            self._send(Prepare(frm=self.id, to=peer, ballot=self.ballot, from_slot=self._from_slot))

    def _make_promise(self, ballot: Ballot, from_slot: int, to: int) -> Promise:
        accepted = tuple(
            e for s, e in sorted(self.accepted.items()) if s >= from_slot and s not in self.chosen
        )
        chosen = tuple((s, v) for s, v in sorted(self.chosen.items()) if s >= from_slot)
        return Promise(
            frm=self.id,
            to=to,
            ballot=ballot,
            accepted=accepted,
            chosen=chosen,
            commit=self.commit_index,
            log_start=self.log_start,
        )

    def _on_prepare(self, msg: Prepare) -> None:
        if msg.ballot.node != msg.frm:
            self.refused[Refusal.FOREIGN_BALLOT] += 1
            return
        self._see_round(msg.ballot.round)
        if msg.ballot < self.promised:
            self._send(Nack(frm=self.id, to=msg.frm, ballot=msg.ballot, promised=self.promised))
            return
        if msg.ballot > self.promised:
            if self._leader_recently_heard() and self.leader_id != msg.frm:
                return  # stickiness: a live leader is known; do not help a challenger
            self._set_promised(msg.ballot)
            if self.role is not Role.FOLLOWER:
                self._step_down(None)
            self.leader_id = None
            self._election_elapsed = 0
        self._send(self._make_promise(msg.ballot, msg.from_slot, msg.frm))

    def _on_promise(self, msg: Promise) -> None:
        if self.role is not Role.CANDIDATE or msg.ballot != self.ballot:
            return
        self._last_heard[msg.frm] = self._now
        self._promises[msg.frm] = msg
        self._known_commit = max(self._known_commit, msg.commit)
        if len(self._promises) >= self.quorum:
            self._become_leader()

    def _become_leader(self) -> None:
        promises = self._promises.values()
        # Chosen values first, in slot order, so that the window moves with
        # the commit point they extend: every value a correct promiser knows
        # chosen lies within it (docs/design.md, "Hostile input").
        reported = sorted((pair for p in promises for pair in p.chosen), key=lambda pair: pair[0])
        max_slot = self.commit_index
        window = bounds.ACCEPT_WINDOW_SLOTS
        beyond = 0
        for slot, value in reported:
            if slot > self.commit_index + window:
                beyond += 1
                continue
            self._learn_chosen(slot, value)
            self._advance_commit()
            max_slot = max(max_slot, slot)
        self._advance_commit()
        # Then the highest-ballot accepted value of every other slot, within
        # the window of the commit point now known: past it nothing can have
        # been chosen, as no correct acceptor accepts there.
        window_end = self.commit_index + window
        members = self._members
        best: dict[int, Entry] = {}
        for promise in promises:
            for e in promise.accepted:
                if e.slot > window_end:
                    beyond += 1
                    continue
                if e.ballot > promise.ballot:
                    self.refused[Refusal.INCONSISTENT] += 1
                    continue
                if e.ballot.node not in members:
                    self.refused[Refusal.NOT_A_MEMBER] += 1
                    continue
                cur = best.get(e.slot)
                if cur is None or e.ballot > cur.ballot:
                    best[e.slot] = e
                max_slot = max(max_slot, e.slot)
        if beyond:
            self.refused[Refusal.BEYOND_WINDOW] += beyond
        behind = [p for p in promises if p.log_start > self.commit_index + 1]
        if behind:
            # A promiser compacted chosen slots we do not know: leading now could
            # fill them with no-ops. Catch up (log or snapshot) first.
            self._step_down(None)
            self._request_catchup(behind[0].frm)
            return
        self.role = Role.LEADER
        self.leader_id = self.id
        self._promises = {}
        self._inflight = {}
        self._next_slot = max_slot + 1
        self.recovery_end = max_slot
        # Every slot up to max_slot is re-proposed (or filled with a no-op)
        # through the pipeline, before any new command: at most
        # inflight_slots_max at a time, never one object per missing slot
        # up front.
        self._recovery_next = self.commit_index + 1
        self._recovery_values = {slot: e.value for slot, e in best.items() if slot not in self.chosen}
        self._heartbeat_elapsed = 0
        self._quorum_check_tick = self._now
        self._read_acks = {}
        self._commit_sent = 0
        self._notified_through = 0  # recovery_end covers what earlier leaders sent
        self._propose_recovery()
        self._broadcast_heartbeat()

    def _step_down(self, leader: int | None) -> None:
        self._fail_reads()
        self.role = Role.FOLLOWER
        self.leader_id = leader
        self._inflight = {}
        self._queue.clear()
        self._queue_bytes = 0
        self._recovery_next = self.recovery_end + 1
        self._recovery_values = {}
        self._promises = {}
        self._election_elapsed = 0
        self._timeout = self._random_timeout()

    def _follow(self, msg_ballot: Ballot, leader: int) -> None:
        """A message from a leader at ``msg_ballot >= promised`` arrived."""
        if self.role is not Role.FOLLOWER:
            # A candidate's or leader's own ballot is <= promised <= msg_ballot,
            # and equal only for messages from itself: this leader is newer.
            self._step_down(leader)
        if self.leader_id != leader:
            self._fail_remote_reads()
        self.leader_id = leader
        self.ballot = msg_ballot
        self._election_elapsed = 0
        self._last_heard[leader] = self._now

    def _on_nack(self, msg: Nack) -> None:
        if not self._names_member(msg.promised):
            return
        self._see_round(msg.promised.round)
        if self.role in (Role.CANDIDATE, Role.LEADER) and msg.promised > self.ballot:
            self._step_down(None)

    # ---- Phase 2 ---------------------------------------------------------------

    def _pipeline_room(self) -> int:
        """Slots the leader may propose now: the pipeline's room, and never a
        slot past its own window (the bound every acceptor holds to)."""
        room = self.config.inflight_slots_max - len(self._inflight)
        if self._recovery_next > self.recovery_end:
            window_room = self.commit_index + bounds.ACCEPT_WINDOW_SLOTS - self._next_slot + 1
            if window_room < room:
                room = window_room
        return room if room > 0 else 0

    def _propose_recovery(self) -> None:
        """Propose the next recovery slots the pipeline has room for."""
        room = self._pipeline_room()
        slot = self._recovery_next
        end = self.recovery_end
        chosen = self.chosen
        values = self._recovery_values
        entries: list[tuple[int, Value]] = []
        while slot <= end and len(entries) < room:
            if slot not in chosen:
                entries.append((slot, values.pop(slot, NOOP)))
            slot += 1
        self._recovery_next = slot
        self._propose_entries(entries)

    def _flush_proposals(self) -> None:
        if self._recovery_next <= self.recovery_end:
            self._propose_recovery()
            if self._recovery_next <= self.recovery_end:
                return  # new commands go after every recovered slot
        cfg = self.config
        entries: list[tuple[int, Value]] = []
        queue = self._queue
        start = 0
        taken = 0
        room = self._pipeline_room()
        while start < len(queue) and len(entries) < room:
            end = start
            size = 0
            while end < len(queue) and end - start < cfg.batch_commands_max:
                n = len(queue[end])
                if size + n > cfg.batch_bytes_max and end > start:
                    break
                size += n
                end += 1
            entries.append((self._next_slot, tuple(queue[start:end])))
            self._next_slot += 1
            start = end
            taken += size
        if start:
            del queue[:start]
            self._queue_bytes -= taken
        if entries:
            self._propose_entries(entries)

    def _propose_entries(self, entries: list[tuple[int, Value]]) -> None:
        """Accept ``entries`` locally at our ballot and send them to every peer."""
        if not entries:
            return
        b = self.ballot
        for slot, value in entries:
            e = Entry(slot, b, value)
            self.accepted[slot] = e
            self._out_accepted.append(e)
            # Our own acceptance counts once it is durable (advance()); the
            # Accepts go out at once, in parallel with our own write.
            self._inflight[slot] = _Proposal(value, set(), self._now)
            self._next_slot = max(self._next_slot, slot + 1)
        batch = tuple(entries)
        for peer in self.others:
            self._out_early.append(Accept(frm=self.id, to=peer, ballot=b, entries=batch, commit=self.commit_index))
        self._commit_sent = self.commit_index

    def _retransmit_accepts(self) -> None:
        due = self._now - self._retransmit_ticks
        stale = [(s, p) for s, p in self._inflight.items() if p.sent_tick <= due]
        if not stale:
            return
        for peer in self.others:
            entries = tuple((s, p.value) for s, p in stale if peer not in p.acks)
            if entries:
                self._out_early.append(
                    Accept(frm=self.id, to=peer, ballot=self.ballot, entries=entries, commit=self.commit_index)
                )
        for _, p in stale:
            p.sent_tick = self._now

    def _heed_leader(self, msg: Accept | Heartbeat) -> bool:
        """An Accept or Heartbeat: from a leader at its own ballot, at or
        above the promise? Then promise it (a Heartbeat above the promise
        is an Accept without entries: a leader at that ballot had a quorum
        promise it; only the promised ballot's commit point counts) and
        follow it. Else Nack it, or drop it (counted), and say False."""
        ballot = msg.ballot
        if ballot.node != msg.frm:
            self.refused[Refusal.FOREIGN_BALLOT] += 1
            return False
        self._see_round(ballot.round)
        if ballot < self.promised:
            self._send(Nack(frm=self.id, to=msg.frm, ballot=ballot, promised=self.promised))
            return False
        if ballot > self.promised:
            self._set_promised(ballot)
        self._follow(ballot, msg.frm)
        return True

    def _on_accept(self, msg: Accept) -> None:
        if not self._heed_leader(msg):
            return
        ballot = msg.ballot
        acked: list[int] = []
        compacted = False
        window_end = self.commit_index + bounds.ACCEPT_WINDOW_SLOTS
        beyond = 0
        for slot, value in msg.entries:
            if slot < self.log_start:
                compacted = True  # chosen, applied and dropped here: cannot vouch for a value
                continue
            if slot > window_end:
                beyond += 1  # refused until this node has caught up (docs/design.md)
                continue
            known = self.chosen.get(slot)
            if known is not None:
                if known == value:
                    acked.append(slot)
                continue
            e = Entry(slot, ballot, value)
            self.accepted[slot] = e
            self._out_accepted.append(e)
            acked.append(slot)
        if beyond:
            self.refused[Refusal.BEYOND_WINDOW] += beyond
        if acked:
            self._send(Accepted(frm=self.id, to=msg.frm, ballot=ballot, slots=tuple(acked)))
        if compacted:
            # Tell the leader it is behind our compacted log (it cannot get our
            # votes for those slots); it steps down and catches up.
            self._send(
                CatchupReply(frm=self.id, to=msg.frm, chosen=(), commit=self.commit_index, log_start=self.log_start)
            )
        self._learn_commit(ballot, msg.commit, msg.frm)

    def _on_accepted(self, msg: Accepted) -> None:
        if self.role is Role.FOLLOWER:
            for slot in msg.slots:
                self._learner_ack(slot, msg.ballot, msg.frm)
            self._advance_commit()
            return
        if self.role is not Role.LEADER or msg.ballot != self.ballot:
            return
        self._last_heard[msg.frm] = self._now
        for slot in msg.slots:
            p = self._inflight.get(slot)
            if p is None:
                continue
            p.acks.add(msg.frm)
            if len(p.acks) >= self.quorum:
                del self._inflight[slot]
                self._choose(slot, p.value)
        self._advance_commit()

    def _learner_ack(self, slot: int, ballot: Ballot, node: int) -> None:
        """``node`` has durably accepted ``slot`` at ``ballot`` (rule (e)).
        Counted only at the ballot this node has promised and for a slot it
        accepted at that ballot: then the value is that of its own entry."""
        if ballot != self.promised or slot <= self.commit_index or slot in self.chosen:
            return
        e = self.accepted.get(slot)
        if e is None or e.ballot != ballot:
            return
        acks = self._learner_acks.get(slot)
        if acks is None:
            acks = self._learner_acks[slot] = set()
        acks.add(node)
        if len(acks) >= self.quorum:
            del self._learner_acks[slot]
            self._learn_chosen(slot, e.value)

    def _choose(self, slot: int, value: Value) -> None:
        """This leader's own quorum chose ``value``: a different value known
        chosen here is a bug of this node (no peer's word is involved), and
        agreement is asserted, in production too."""
        known = self.chosen.get(slot)
        assert known is None or known == value, f"agreement violated at slot {slot}: {known!r} != {value!r}"
        self._learn_chosen(slot, value)
        self._advance_commit()

    # ---- Learning --------------------------------------------------------------

    def _learn_chosen(self, slot: int, value: Value) -> None:
        if slot < self.log_start or slot <= self.applied_index:
            return
        if slot > self.commit_index + bounds.ACCEPT_WINDOW_SLOTS:
            self.refused[Refusal.BEYOND_WINDOW] += 1
            return
        known = self.chosen.get(slot)
        if known is not None:
            if known != value:
                # Two values chosen for one slot: a peer's word against what
                # this node knows. Counted, never believed, never a crash.
                self.refused[Refusal.CONFLICT] += 1
            return
        p = self._inflight.get(slot)
        assert p is None or p.value == value, f"slot {slot} chosen with a value this leader did not propose"
        self.chosen[slot] = value
        self._out_chosen.append((slot, value))

    def _advance_commit(self) -> None:
        c = self.commit_index
        chosen = self.chosen
        while c + 1 in chosen:
            c += 1
        self.commit_index = c

    def _learn_commit(self, ballot: Ballot, commit: int, frm: int) -> None:
        """The leader at ``ballot``, the ballot this node has promised (the
        callers, Accept and Heartbeat, heeded it: ``_heed_leader``), says
        every slot up to ``commit`` is chosen. Its word replaces any hint of
        a higher commit point from elsewhere (a catch-up reply, a promise),
        so a false one drives catch-up at most until the leader speaks."""
        self._known_commit = commit
        if commit <= self.commit_index:
            return
        lo = self.commit_index + 1
        if commit - lo + 1 <= len(self.accepted):
            slots: Iterable[int] = range(lo, commit + 1)
        else:
            slots = [s for s in self.accepted if lo <= s <= commit]
        for slot in slots:
            e = self.accepted.get(slot)
            if e is not None and e.ballot == ballot and slot not in self.chosen:
                self._learn_chosen(slot, e.value)
        self._advance_commit()
        if self.commit_index < commit and self._catchup_sent_tick is None:
            self._request_catchup(frm)

    def _request_catchup(self, peer: int) -> None:
        self._catchup_peer = peer
        self._catchup_sent_tick = self._now
        self._send(
            CatchupRequest(frm=self.id, to=peer, from_slot=self.commit_index + 1, to_slot=self._known_commit)
        )

    def _retry_catchup(self) -> None:
        if self._catchup_sent_tick is None:
            return
        if self.commit_index >= self._known_commit or self.role is Role.LEADER:
            self._catchup_sent_tick = None
            return
        if self._now - self._catchup_sent_tick >= 2 * self.config.heartbeat_ticks + 2:
            others = self.others
            idx = others.index(self._catchup_peer) if self._catchup_peer in others else -1
            self._request_catchup(others[(idx + 1) % len(others)])

    def _on_catchup_request(self, msg: CatchupRequest) -> None:
        lo = max(msg.from_slot, self.log_start)
        hi = min(max(msg.to_slot, msg.from_slot), self.commit_index, lo + self.config.catchup_entries_max - 1)
        chosen: list[tuple[int, Value]] = []
        if msg.from_slot >= self.log_start:
            for s in range(lo, hi + 1):
                v = self.chosen.get(s)
                if v is None:
                    break
                chosen.append((s, v))
        self._send(
            CatchupReply(
                frm=self.id, to=msg.frm, chosen=tuple(chosen), commit=self.commit_index, log_start=self.log_start
            )
        )

    def _on_catchup_reply(self, msg: CatchupReply) -> None:
        if self.role is Role.LEADER:
            # A leader learns chosen values only from its own quorum (see the
            # module docstring). But a peer whose log was compacted past our
            # commit point cannot accept the slots we recover: step down and
            # catch up (by snapshot), as phase 1 does for such a promise.
            if msg.log_start > self.commit_index + 1:
                self._known_commit = max(self._known_commit, msg.commit)
                self._step_down(None)
                self._request_catchup(msg.frm)
            return
        if self._catchup_sent_tick is None:
            # Not catching up: nothing was asked (or it was answered already).
            self.refused[Refusal.UNSOLICITED] += 1
            return
        if not msg.chosen and msg.log_start > self.commit_index + 1:
            self._out_snapshot_from = msg.frm  # the peer compacted what we miss
            return
        before = self.commit_index
        for slot, value in msg.chosen:
            self._learn_chosen(slot, value)
        self._advance_commit()
        if msg.commit > self._known_commit:
            self._known_commit = msg.commit
        if self.commit_index >= self._known_commit:
            self._catchup_sent_tick = None
        elif self.commit_index > before:
            self._request_catchup(msg.frm)  # progress: ask for the next part at once

    # ---- Heartbeats and reads --------------------------------------------------

    def _broadcast_heartbeat(self) -> None:
        self._commit_sent = self.commit_index
        self._read_round_tick = None  # every follower now has the current round
        self._send_heartbeats(self.others)

    def _send_heartbeats(self, peers: Iterable[int]) -> None:
        features = self.cluster_features
        for peer in peers:
            self._send(
                Heartbeat(
                    frm=self.id,
                    to=peer,
                    ballot=self.ballot,
                    commit=self.commit_index,
                    read_seq=self._read_seq,
                    features=features,
                )
            )

    def _send_read_round(self) -> None:
        """Ask only as many followers as a quorum needs besides us: those that
        acknowledged the latest round first (then the last heard from). A
        round still unconfirmed two ticks later asks every follower
        (``_tick_leader``), so one asked of a follower that went quiet is
        confirmed by the others, and they are asked first from then on."""
        need = self.quorum - 1
        if need <= 0:
            return
        acks = self._read_acks
        heard = self._last_heard
        ranked = sorted(self.others, key=lambda p: (acks.get(p, 0), heard.get(p, -1), -p), reverse=True)
        self._send_heartbeats(ranked[:need])
        self._read_round_tick = self._now

    def _on_heartbeat(self, msg: Heartbeat) -> None:
        if not self._heed_leader(msg):
            return
        # The leader's word for every member; its own acks are direct.
        self._member_features = dict.fromkeys(self.others, msg.features)
        self._send(
            HeartbeatAck(
                frm=self.id, to=msg.frm, ballot=msg.ballot, read_seq=msg.read_seq, features=self.config.features
            )
        )
        self._learn_commit(msg.ballot, msg.commit, msg.frm)

    def _on_heartbeat_ack(self, msg: HeartbeatAck) -> None:
        if msg.frm in self.others:
            self._member_features[msg.frm] = msg.features  # the member's own word, whatever the ballot
        if self.role is not Role.LEADER or msg.ballot != self.ballot:
            return
        if msg.read_seq > self._read_seq:
            # It would confirm read rounds not started yet, forever after.
            self.refused[Refusal.READ_SEQ_AHEAD] += 1
            return
        self._last_heard[msg.frm] = self._now
        if msg.read_seq > self._read_acks.get(msg.frm, 0):
            self._read_acks[msg.frm] = msg.read_seq
            self._release_reads()

    def _start_read_round(self) -> None:
        # One round at a time: reads arriving meanwhile wait for the next one
        # (started when this one is confirmed), so under load a round serves
        # many reads instead of every loop turn sending one.
        if self._read_rounds or not (self._reads_new_local or self._reads_new_remote):
            return
        self._read_seq += 1
        rnd = _ReadRound(self._read_index(), self._reads_new_local, self._reads_new_remote)
        self._reads_new_local = []
        self._reads_new_remote = {}
        self._read_rounds[self._read_seq] = rnd
        self._send_read_round()
        self._release_reads()

    def _read_index(self) -> int:
        """Every write a client may have been answered for: the commit point,
        what a follower may have learned from our own Accepted (rule (e)),
        and what an earlier leader may have had chosen."""
        return max(self.commit_index, self.recovery_end, self._notified_through)

    def _release_reads(self) -> None:
        if not self._read_rounds:
            return
        acks = sorted((self._read_acks.get(p, 0) for p in self.others), reverse=True)
        need = self.quorum - 1  # plus ourselves
        confirmed = acks[need - 1] if need > 0 else self._read_seq
        for seq in [s for s in self._read_rounds if s <= confirmed]:
            rnd = self._read_rounds.pop(seq)
            self._finish_round(rnd, True)

    def _finish_round(self, rnd: _ReadRound, ok: bool) -> None:
        for rid in rnd.local:
            self._out_reads.append(ReadState(rid, rnd.index, ok))
        for origin, ids in rnd.remote.items():
            self._send(ReadIndexReply(frm=self.id, to=origin, read_ids=tuple(ids), index=rnd.index, ok=ok))

    def _fail_reads(self) -> None:
        """Leadership is lost or changing: no pending read can be confirmed."""
        for rnd in self._read_rounds.values():
            self._finish_round(rnd, False)
        self._read_rounds = {}
        pending = _ReadRound(0, self._reads_new_local, self._reads_new_remote)
        self._finish_round(pending, False)
        self._reads_new_local = []
        self._reads_new_remote = {}
        self._fail_remote_reads()

    def _fail_remote_reads(self) -> None:
        for rid in self._reads_forward:
            self._out_reads.append(ReadState(rid, 0, False))
        for rid in self._reads_remote_pending:
            self._out_reads.append(ReadState(rid, 0, False))
        self._reads_forward = []
        self._reads_remote_pending = {}
        self._read_request_at = None

    def _expire_remote_reads(self) -> None:
        if not self._reads_remote_pending:
            return
        limit = self._now - 4 * self.config.election_ticks_min
        expired = [rid for rid, t in self._reads_remote_pending.items() if t <= limit]
        for rid in expired:
            del self._reads_remote_pending[rid]
            self._out_reads.append(ReadState(rid, 0, False))

    def _on_read_index_request(self, msg: ReadIndexRequest) -> None:
        if self.role is not Role.LEADER:
            self._send(ReadIndexReply(frm=self.id, to=msg.frm, read_ids=msg.read_ids, index=0, ok=False))
            return
        if self.quorum == 2 and msg.ballot == self.ballot:
            # The request is the round: the sender had promised no higher
            # ballot when it sent it, after its reads arrived, and neither have
            # we now; every quorum of two holds one of us, so no other leader
            # can have had a write chosen before those reads that we miss.
            self._last_heard[msg.frm] = self._now
            self._send(
                ReadIndexReply(frm=self.id, to=msg.frm, read_ids=msg.read_ids, index=self._read_index(), ok=True)
            )
            return
        waiting = self._reads_new_remote.setdefault(msg.frm, [])
        if len(waiting) + len(msg.read_ids) > READ_IDS_PENDING_PER_PEER_MAX:
            self.refused[Refusal.READS_OVER_LIMIT] += len(msg.read_ids)
            self._send(ReadIndexReply(frm=self.id, to=msg.frm, read_ids=msg.read_ids, index=0, ok=False))
            return
        waiting.extend(msg.read_ids)

    def _on_read_index_reply(self, msg: ReadIndexReply) -> None:
        if msg.frm != self.leader_id:
            # Every read waiting here was asked of the leader (a new leader
            # fails them): an answer from anyone else would serve stale data.
            self.refused[Refusal.UNSOLICITED] += 1
            return
        self._read_request_at = None
        for rid in msg.read_ids:
            if self._reads_remote_pending.pop(rid, None) is not None:
                self._out_reads.append(ReadState(rid, msg.index, msg.ok))

    def _on_forward(self, msg: Forward) -> None:
        if self.role not in (Role.LEADER, Role.CANDIDATE):
            return
        cfg = self.config
        commands = msg.commands
        size = sum(map(len, commands))
        fits = len(self._queue) + len(commands) <= cfg.queue_commands_max
        if fits and self._queue_bytes + size <= cfg.queue_bytes_max:
            self._queue.extend(commands)
            self._queue_bytes += size
            return
        taken = 0
        for command in commands:  # the queue is full: as many as fit, in order
            n = len(command)
            if len(self._queue) >= cfg.queue_commands_max or self._queue_bytes + n > cfg.queue_bytes_max:
                break
            self._queue.append(command)
            self._queue_bytes += n
            taken += 1
        self.refused[Refusal.QUEUE_FULL] += len(commands) - taken

    def _flush_forwards(self) -> None:
        leader = self.leader_id
        assert leader is not None
        step = self.config.forward_commands_max
        q = self._forward_queue
        for i in range(0, len(q), step):
            self._send(Forward(frm=self.id, to=leader, commands=tuple(q[i : i + step])))
        self._forward_queue = []
        self._forward_queue_bytes = 0
        if self._reads_forward and self._read_request_at is None:
            # One request at a time: reads arriving meanwhile go in the next.
            self._send(
                ReadIndexRequest(frm=self.id, to=leader, read_ids=tuple(self._reads_forward), ballot=self.promised)
            )
            for rid in self._reads_forward:
                self._reads_remote_pending[rid] = self._now
            self._reads_forward = []
            self._read_request_at = self._now

    def _retry_read_request(self) -> None:
        """The request or its reply was lost (or is slow): ask again for every
        read still waiting. A reply to either serves them (a later round is
        still a round started after each read arrived)."""
        at = self._read_request_at
        if at is None or self._now - at < 2 * self.config.heartbeat_ticks:
            return
        leader = self.leader_id
        if leader is None or self.role is not Role.FOLLOWER:
            self._read_request_at = None
            return
        ids = [*self._reads_remote_pending, *self._reads_forward]
        for rid in self._reads_forward:
            self._reads_remote_pending[rid] = self._now
        self._reads_forward = []
        self._read_request_at = self._now
        if ids:
            self._send(ReadIndexRequest(frm=self.id, to=leader, read_ids=tuple(ids), ballot=self.promised))

    # ---- Helpers ---------------------------------------------------------------

    def _send(self, msg: Message) -> None:
        self._out_messages.append(msg)

    def _set_promised(self, ballot: Ballot) -> None:
        assert ballot >= self.promised, "a promise never goes back"
        self.promised = ballot
        self._learner_acks.clear()  # they count at the promised ballot only
        self._out_promised = ballot

    def _see_round(self, round_: int) -> None:
        if round_ > self.max_round_seen:
            self.max_round_seen = round_

    def _names_member(self, ballot: Ballot) -> bool:
        """Whether a ballot a peer reports as promised is the zero ballot or
        a member's; otherwise it is counted and the message dropped."""
        if ballot.node in self._members or ballot == ZERO_BALLOT:
            return True
        self.refused[Refusal.NOT_A_MEMBER] += 1
        return False

    def _clear_queues(self) -> None:
        self._queue.clear()
        self._queue_bytes = 0
        self._forward_queue.clear()
        self._forward_queue_bytes = 0
