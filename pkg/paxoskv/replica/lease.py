"""The node layer's leases: the lessor (deadlines on this node's ticks), the
leader's duties (expiry, checkpoints) and the rules of every lease call.

Rules:

- Time is this node's tick count (the driver ticks every ``tick_ms``);
  nothing here or in the state machine reads a clock. A lease's TTL is
  ``ceil(ttl * 1000 / tick_ms) + 1`` ticks (the driver never makes up a late
  tick, so N ticks span at least N - 1 intervals from any moment inside the
  first: a lease never ends before its TTL).
- The proposer decides what goes into the log: a grant's TTL is raised to
  ``min_ttl`` (etcd's ``ceil(1.5 x election timeout)`` seconds; a TTL over
  ``MAX_LEASE_TTL`` is ``too large lease TTL``, proposing nothing), and a
  grant of id 0 gets an id chosen here, before proposing (etcd's member-id
  prefixed id: the member id's low 15 bits above 48 bits of this node's
  seeded generator); one that collides at apply is proposed again with
  another id.
- Every member keeps, from the lease changes it applies, when each lease
  would end by the last word of the log, on ITS OWN ticks: a grant or a
  renewal through the log (a "clean" lease) says nothing about keep-alives
  answered since, a checkpoint says ``remaining_ms`` from the moment this
  member applied it.
- The leader (once it applied everything up to its recovery end) serves
  keep-alives from memory: a renewal sets the deadline to now + TTL and is
  answered at once, unless a checkpoint of the lease is in the log (or on
  its way there): then the renewal goes through the log (a checkpoint
  entry with ``remaining_ms = 0``) and is answered once applied here. So
  every member's view is never earlier than a deadline a client was told.
  Such renewals wait for the end of the node layer's turn (``flush``, from
  ``ReplicaNode.prepare``, never a timer): all of that turn's go into one
  checkpoint command (``CHECKPOINT_BATCH_MAX`` leases and the request byte
  limit per command), not one command per lease.
- On becoming that leader: a clean lease ends at now + TTL; a checkpointed
  one at its checkpoint's moment here + its remaining (now + remaining if
  this node restarted since). Then, at once, the leader puts the remaining
  time of every lease into the log, and every ``checkpoint_ticks``
  (default: the election timeout) that of every lease whose remaining time
  fell by at least ``checkpoint_ticks`` since its grant, its last renewal
  or its last checkpoint here (``CHECKPOINT_BATCH_MAX`` per command). A
  lease renewed within every interval is never checkpointed, so all its
  renewals are answered from memory; one not renewed is checkpointed at
  every run, so a checkpoint in the log is never older than one interval.
  A lease whose holder stopped is clean in the log for at most two
  intervals after its last keep-alive (the first run a whole interval
  after it may come up to one interval later), so it ends within TTL + 2
  x checkpoint_ticks + the election time after its last keep-alive,
  however often the leader changes: each new leader continues from a
  checkpoint its own clock timed.
- Expiry: the leader proposes ``LeaseExpire(id, epoch)`` (at most
  ``EXPIRE_PER_TICK`` a tick), which revokes the lease where it applies
  unless a renewal went through the log since (another epoch).
- Followers forward keep-alives and TimeToLive to the leader (``LeaseAsk``
  over the peer bus, handled here, not by the core) and relay its
  ``LeaseAnswer``; both leave at the start of the next turn
  (``take_messages``), never behind the turn's write; the leader answers
  once it applied as much of the log as the asker had (a grant or revoke
  the asker answered is in its view), and
  a call about a lease it does not know waits while it has chosen entries
  to apply; at most ``ASKS_MAX`` wait on a node, and an ask from a
  non-member is dropped. ``LeaseLeases`` is served by any member from its
  own state, as etcd's.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from typing import Any

from paxoskv.etcdpb import rpc_pb2
from paxoskv.kv import etcd, lease
from paxoskv.kv.lease import CHECKPOINT, GRANT, MAX_LEASE_TTL, RENEW, REVOKE, LeaseEvent
from paxoskv.paxos.types import LeaseAnswer, LeaseAsk, Message
from paxoskv.replica.etcd import failure
from paxoskv.v1 import kv_pb2

__all__ = ["CHECKPOINT_BATCH_MAX", "EXPIRE_PER_TICK", "LeaseCalls", "Lessor", "check_grant", "chosen_id", "min_ttl_s"]

CHECKPOINT_BATCH_MAX = 1000  # leases per checkpoint command
_CHECKPOINT_BYTES_MAX = 24  # one LeaseCheckpoint in a LeaseCheckpoints: two int64 varints, tags, its length
_COMMAND_OVERHEAD_BYTES = 512  # the Command around a LeaseCheckpoints (ids, waiter), generously
EXPIRE_PER_TICK = 100  # expiries proposed per tick at most
ASKS_MAX = 65_536  # forwarded lease calls waiting on this node (either end)
_RETRY_TICKS = 500  # an expiry unanswered this long is proposed again
_ID_BITS = 48


def min_ttl_s(election_ticks: int, tick_ms: int) -> int:
    """etcd's minimum lease TTL: ceil(1.5 x the election timeout), in seconds."""
    return max(1, math.ceil(1.5 * election_ticks * tick_ms / 1000))


class Lessor:
    """The leases of one ``ReplicaNode`` (its ``lease`` attribute)."""

    def __init__(self, node: Any, tick_ms: int, *, checkpoint_ticks: int | None = None) -> None:  # noqa: ANN401
        self._node = node
        self.tick_ms = tick_ms
        election = node.replica.core.config.election_ticks_min
        self.min_ttl = min_ttl_s(election, tick_ms)
        self.checkpoint_ticks = checkpoint_ticks or election
        self.now = 0  # ticks
        self._ckpt_at: dict[int, int] = {}  # lease id -> the deadline its last applied checkpoint says, here
        # Leader state (empty while not the ready leader):
        self._leading = False
        self._deadline: dict[int, int] = {}
        self._by_deadline: list[tuple[int, int]] = []  # heap of (deadline, lease id); stale entries skipped
        self._next_checkpoint = 0
        self._ckpt_inflight: dict[int, int] = {}  # lease id -> checkpoints proposed, not applied yet
        self._touched: dict[int, int] = {}  # lease id -> tick of its last grant, renewal or checkpoint here
        self._expiring: dict[int, int] = {}  # lease id -> tick its expiry was proposed
        self._renewals: dict[int, list[Callable[[int], None]]] = {}  # lease id -> waiting keep-alives
        self._renewals_waiting = 0
        self._clean_pending: list[int] = []  # leases whose renewals wait for this turn's clean checkpoint
        # Calls about a lease this leader does not know while it has chosen entries to apply.
        self._deferred: list[Callable[[], None]] = []
        # Follower state: forwarded asks waiting for the leader's answer (and the tick they left).
        self._asks: dict[int, tuple[Callable[[LeaseAnswer | None], None], int]] = {}
        self._ask_seq = 0
        self._ask_leases: dict[int, int] = {}  # ask id -> the lease it asked about
        self._out: list[Message] = []  # LeaseAsk / LeaseAnswer for the next turn (they leave before its write)
        self._installed = node.replica.snapshots_installed

    # ---- reading ------------------------------------------------------------------

    @property
    def _sm(self):  # noqa: ANN202
        return self._node.replica.sm

    @property
    def leading(self) -> bool:
        return self._leading

    def ticks(self, seconds: int) -> int:
        """Ticks that span at least ``seconds`` from now: one more than the
        quotient, as the tick now running began before this moment."""
        return math.ceil(seconds * 1000 / self.tick_ms) + 1

    def remaining_ms(self, lease_id: int) -> int:
        """At the leader: the time the lease has left (-1: no such lease)."""
        if self._sm.leases.get(lease_id) is None:
            return -1
        deadline = self._deadline.get(lease_id)
        if deadline is None:
            return -1
        return max(0, (deadline - self.now) * self.tick_ms)

    # ---- inputs -------------------------------------------------------------------

    def tick(self) -> None:
        self.now += 1
        if self._asks and self.now % self.checkpoint_ticks == 0:
            self._drop_old_asks()
        if not self.refresh():
            return
        if self.now >= self._next_checkpoint:
            self._next_checkpoint = self.now + self.checkpoint_ticks
            self._checkpoint()
        self._expire()

    def refresh(self) -> bool:
        """Take up or drop the leader's duties as the core's role says; whether this node has them."""
        node = self._node
        core = node.replica.core
        ready = core.is_leader and node._stopped is None and self._sm.applied_index >= core.recovery_end
        if ready and not self._leading:
            self._promote()
        elif not ready and self._leading:
            self._demote()
        return self._leading

    def applied(self) -> None:
        """After an apply: the lease changes the state machine made, on this node's clock."""
        replica = self._node.replica
        if replica.snapshots_installed != self._installed:
            self._installed = replica.snapshots_installed
            self._ckpt_at.clear()  # the new state's leases: timed from now (later, never earlier)
            if self._leading:
                self._demote()  # promoted again at the next tick, from the installed state
        for ev in self._sm.take_lease_events():
            self._on_event(ev)
        if self._deferred:
            deferred, self._deferred = self._deferred, []
            for again in deferred:
                again()

    def _on_event(self, ev: LeaseEvent) -> None:
        lid = ev.lease_id
        if ev.kind == CHECKPOINT:
            self._ckpt_at[lid] = self.now + math.ceil(ev.remaining_ms / self.tick_ms) + 1
            self._settle(lid)
            return
        self._ckpt_at.pop(lid, None)
        if ev.kind == GRANT:
            if self._leading:
                self._set_deadline(lid, self.now + self.ticks(ev.ttl))
                self._touched[lid] = self.now
        elif ev.kind == RENEW:
            self._settle(lid)
            waiters = self._renewals.pop(lid, None)
            if waiters:
                self._renewals_waiting -= len(waiters)
                for answer in waiters:
                    answer(ev.ttl)
        elif ev.kind == REVOKE:
            self._deadline.pop(lid, None)
            self._touched.pop(lid, None)
            self._expiring.pop(lid, None)
            self._ckpt_inflight.pop(lid, None)
            waiters = self._renewals.pop(lid, None)
            if waiters:
                self._renewals_waiting -= len(waiters)
                for answer in waiters:
                    answer(0)

    def _settle(self, lid: int) -> None:
        n = self._ckpt_inflight.get(lid)
        if n is not None:
            if n <= 1:
                del self._ckpt_inflight[lid]
            else:
                self._ckpt_inflight[lid] = n - 1

    # ---- leadership ---------------------------------------------------------------

    def _promote(self) -> None:
        self._leading = True
        now = self.now
        deadlines = {}
        for lid, ls in self._sm.leases.items():
            if ls.remaining_ms == 0:
                deadlines[lid] = now + self.ticks(ls.ttl)
            else:
                deadlines[lid] = self._ckpt_at.get(lid, now + math.ceil(ls.remaining_ms / self.tick_ms) + 1)
        self._deadline = deadlines
        self._by_deadline = [(d, lid) for lid, d in deadlines.items()]
        heapq.heapify(self._by_deadline)
        self._next_checkpoint = now  # at once: the next leader continues from this leader's clock
        self._ckpt_inflight = {}
        self._touched = {}  # the first checkpoint has every lease
        self._expiring = {}

    def _demote(self) -> None:
        self._leading = False
        self._deadline = {}
        self._by_deadline = []
        self._ckpt_inflight = {}
        self._touched = {}
        self._expiring = {}
        renewals, self._renewals = self._renewals, {}
        self._renewals_waiting = 0
        self._clean_pending = []
        deferred, self._deferred = self._deferred, []
        for again in deferred:
            again()  # not leading now: answered as a renewal of an unknown lease
        for waiters in renewals.values():
            for answer in waiters:
                answer(-1)

    # ---- the leader's duties --------------------------------------------------------

    def _checkpoint(self) -> None:
        """Put into the log the remaining time of every lease whose remaining
        time fell by a whole checkpoint interval since its grant, last renewal
        or last checkpoint here (every lease, on the first run after promotion)."""
        sm = self._sm
        now = self.now
        since = now - self.checkpoint_ticks
        touched = self._touched
        batch: list[kv_pb2.LeaseCheckpoint] = []
        for lid, _ in sm.leases.items():
            deadline = self._deadline.get(lid)
            if deadline is None or lid in self._expiring:
                continue
            left_ms = (deadline - now) * self.tick_ms
            if left_ms <= 0 or touched.get(lid, since) > since:
                continue  # expiring, or renewed (or checkpointed) within the interval
            touched[lid] = now
            batch.append(kv_pb2.LeaseCheckpoint(ID=lid, remaining_ms=left_ms))
            self._ckpt_inflight[lid] = self._ckpt_inflight.get(lid, 0) + 1
        self._propose_checkpoints(batch)

    def _propose_checkpoints(self, checkpoints: list[kv_pb2.LeaseCheckpoint]) -> None:
        """Propose ``checkpoints`` in as few commands as the limits allow:
        ``CHECKPOINT_BATCH_MAX`` leases and the request byte limit each."""
        calls = self._node.etcd
        fit = (calls.limits.request_bytes_max - _COMMAND_OVERHEAD_BYTES) // _CHECKPOINT_BYTES_MAX
        per = max(1, min(CHECKPOINT_BATCH_MAX, fit))
        for i in range(0, len(checkpoints), per):
            chunk = kv_pb2.LeaseCheckpoints(checkpoints=checkpoints[i : i + per])
            calls._propose("lease_checkpoint", chunk, calls._internal_call(_ignore))

    @property
    def pending(self) -> bool:
        """Renewals wait for ``flush`` to propose their clean checkpoint, or
        lease messages wait to leave (``take_messages``)."""
        return bool(self._clean_pending or self._out)

    def take_messages(self) -> list[Message]:
        """The ``LeaseAsk`` / ``LeaseAnswer`` messages made since the last
        call: ``ReplicaNode.prepare`` sends them at once, before the turn's
        write. None of them depends on it: an ask carries what this node
        applied (written already), an answer what the leader applied or a
        renewal of a lease the log says is clean."""
        out, self._out = self._out, []
        return out

    def flush(self) -> None:
        """The end of the node layer's turn: propose the clean checkpoints the
        turn's renewals need, together (their answers come when applied)."""
        if not self._clean_pending:
            return
        pending, self._clean_pending = self._clean_pending, []
        if not self._leading:
            return  # demoted since: every waiter was answered -1
        renewals = self._renewals
        self._propose_checkpoints(
            [kv_pb2.LeaseCheckpoint(ID=lid, remaining_ms=0) for lid in dict.fromkeys(pending) if lid in renewals]
        )

    def _set_deadline(self, lid: int, deadline: int) -> None:
        self._deadline[lid] = deadline
        heap = self._by_deadline
        heapq.heappush(heap, (deadline, lid))
        if len(heap) > 2 * len(self._deadline) + 1024:  # renewals left many stale entries
            self._by_deadline = [(d, i) for i, d in self._deadline.items()]
            heapq.heapify(self._by_deadline)

    def _expire(self) -> None:
        """Propose the expiry of the leases whose deadline passed (the
        earliest first, ``EXPIRE_PER_TICK`` at most); one proposed and not
        applied after ``_RETRY_TICKS`` is proposed again."""
        now = self.now
        sm = self._sm
        heap = self._by_deadline
        calls = self._node.etcd
        retry: list[tuple[int, int]] = []
        n = 0
        while heap and heap[0][0] <= now and n < EXPIRE_PER_TICK:
            deadline, lid = heapq.heappop(heap)
            if self._deadline.get(lid) != deadline:
                continue  # renewed (or revoked) since
            ls = sm.leases.get(lid)
            if ls is None:
                self._deadline.pop(lid, None)
                continue
            asked = self._expiring.get(lid)
            retry.append((deadline, lid))  # until the revoke is applied (REVOKE forgets it)
            if asked is not None and now - asked < _RETRY_TICKS:
                continue
            self._expiring[lid] = now
            n += 1
            calls._propose("lease_expire", kv_pb2.LeaseExpire(ID=lid, epoch=ls.epoch), calls._internal_call(_ignore))
        for entry in retry:
            heapq.heappush(heap, entry)

    # ---- keep-alive and time-to-live ------------------------------------------------

    def renew(self, lease_id: int, answer: Callable[[int], None]) -> None:
        """At the leader: renew ``lease_id``; ``answer(ttl)`` with its TTL in
        seconds (0: no such lease, or it expired; -1: leadership was lost
        before the renewal was in the log; -2: too many renewals waiting)."""
        if not self._leading:
            answer(-1)  # deferred, and leadership was lost meanwhile
            return
        ls = self._sm.leases.get(lease_id)
        if ls is None and self._behind():
            self._deferred.append(lambda: self.renew(lease_id, answer))  # its grant may be chosen, not applied yet
            return
        deadline = self._deadline.get(lease_id)
        if ls is None or deadline is None or deadline <= self.now or lease_id in self._expiring:
            answer(0)
            return
        self._set_deadline(lease_id, self.now + self.ticks(ls.ttl))
        self._touched[lease_id] = self.now
        if ls.remaining_ms == 0 and lease_id not in self._ckpt_inflight:
            answer(ls.ttl)  # the log says "clean": a new leader would give it the whole TTL
            return
        if self._renewals_waiting >= ASKS_MAX:
            answer(-2)
            return
        waiters = self._renewals.get(lease_id)
        if waiters is None:
            waiters = self._renewals[lease_id] = []
            self._ckpt_inflight[lease_id] = self._ckpt_inflight.get(lease_id, 0) + 1
            self._clean_pending.append(lease_id)  # proposed with the turn's others (flush)
        waiters.append(answer)
        self._renewals_waiting += 1

    def _behind(self) -> bool:
        """This leader has chosen entries it has not applied (and room to wait for them)."""
        core = self._node.replica.core
        return core.commit_index > self._sm.applied_index and len(self._deferred) < ASKS_MAX

    def when_known(self, lease_id: int, fn: Callable[[], None]) -> None:
        """``fn()`` now, or once applied, if ``lease_id`` is unknown here while chosen entries wait."""
        if self._sm.leases.get(lease_id) is None and self._behind():
            self._deferred.append(lambda: self.when_known(lease_id, fn))
        else:
            fn()

    # ---- forwarding -------------------------------------------------------------------

    def ask_leader(self, lease_id: int, renew: bool, on_answer: Callable[[LeaseAnswer | None], None]) -> bool:
        """At a follower: send the call to the leader; ``on_answer`` gets its
        answer (None: leadership changed, ask again). False: no leader known,
        or too many asks waiting."""
        leader = self._node.leader_id
        if leader is None or leader == self._node.node_id or len(self._asks) >= ASKS_MAX:
            return False
        self._ask_seq += 1
        self._asks[self._ask_seq] = (on_answer, self.now)
        self._ask_leases[self._ask_seq] = lease_id
        self._send(
            LeaseAsk(
                frm=self._node.node_id,
                to=leader,
                ask_id=self._ask_seq,
                lease_id=lease_id,
                renew=renew,
                applied=self._sm.applied_index,
            )
        )
        return True

    def _drop_old_asks(self) -> None:
        """Asks unanswered for 10 checkpoint intervals: their calls expired long ago."""
        old = self.now - 10 * self.checkpoint_ticks
        for ask_id, (cb, at) in list(self._asks.items()):
            if at < old:
                del self._asks[ask_id]
                self._ask_leases.pop(ask_id, None)
                cb(None)

    def step(self, msg: Message) -> None:
        """A ``LeaseAsk`` or ``LeaseAnswer`` from a member (range-checked already)."""
        if isinstance(msg, LeaseAnswer):
            entry = self._asks.get(msg.ask_id)
            if entry is not None and self._ask_leases.get(msg.ask_id) == msg.lease_id:
                del self._asks[msg.ask_id]
                del self._ask_leases[msg.ask_id]
                entry[0](msg)
            return
        assert isinstance(msg, LeaseAsk)
        frm, ask_id, lid = msg.frm, msg.ask_id, msg.lease_id

        def reply(ttl_ms: int, granted: int) -> None:
            self._send(
                LeaseAnswer(frm=self._node.node_id, to=frm, ask_id=ask_id, lease_id=lid, ttl_ms=ttl_ms, granted_ttl=granted)
            )

        if not self.refresh():
            return  # the asker times out or asks the new leader
        if self._sm.applied_index < msg.applied:
            # The asker may have answered a grant or revoke this leader has not applied yet.
            if len(self._deferred) < ASKS_MAX:
                self._deferred.append(lambda: self.step(msg))
            return
        if msg.renew:
            self.renew(lid, lambda ttl: reply(ttl * 1000, ttl) if ttl >= 0 else None)
        else:

            def ttl() -> None:
                ls = self._sm.leases.get(lid)
                reply(self.remaining_ms(lid), ls.ttl if ls is not None else 0)

            self.when_known(lid, ttl)

    def _send(self, msg: Message) -> None:
        self._out.append(msg)

    def leader_changed(self) -> None:
        """The leader changed: every ask waiting on the old one is answered None."""
        asks, self._asks = self._asks, {}
        self._ask_leases.clear()
        for cb, _ in asks.values():
            cb(None)


def _ignore(_: object) -> None:
    pass


# ---- the calls (EtcdCalls delegates here) ----------------------------------------------


def check_grant(req: rpc_pb2.LeaseGrantRequest) -> etcd.EtcdError | None:
    return lease.ERR_LEASE_TTL_TOO_LARGE if req.TTL > MAX_LEASE_TTL else None


def chosen_id(member_id: int, bits: int) -> int:
    """A lease id for a grant of id 0: the member id's low 15 bits above 48
    bits of the node's generator (``bits``); positive, never 0."""
    return (((member_id & 0x7FFF) << _ID_BITS) | (bits & ((1 << _ID_BITS) - 1))) or 1


ERR_TOO_MANY_REQUESTS = etcd.EtcdError("RESOURCE_EXHAUSTED", "etcdserver: too many requests")


class LeaseCalls:
    """The etcd Lease calls of one ``ReplicaNode`` (its ``lease``); answers are
    etcd's response messages (the facade fills the header) or ``EtcdFailure``."""

    def __init__(self, node: Any, tick_ms: int, *, checkpoint_ticks: int | None = None) -> None:  # noqa: ANN401
        self._node = node
        self.lessor = Lessor(node, tick_ms, checkpoint_ticks=checkpoint_ticks)

    # ---- driven by the node ----------------------------------------------------------

    def tick(self) -> None:
        self.lessor.tick()

    def applied(self) -> None:
        self.lessor.applied()

    @property
    def pending(self) -> bool:
        return self.lessor.pending

    def flush(self) -> None:
        self.lessor.flush()

    def take_messages(self) -> list[Message]:
        return self.lessor.take_messages()

    def leader_changed(self) -> None:
        self.lessor.leader_changed()

    def step(self, msg: Message) -> None:
        self.lessor.step(msg)

    # ---- calls -------------------------------------------------------------------------

    def _start(self, on_done: Callable, timeout_s: float):  # noqa: ANN202, ANN001
        calls = self._node.etcd
        call = calls._call(on_done, timeout_s)
        if self._node._stopped is not None:
            call.set(0, failure(etcd.ERR_STOPPED))
            return None, call
        return calls, call

    def grant(self, req: rpc_pb2.LeaseGrantRequest, timeout_s: float, on_done: Callable):  # noqa: ANN001, ANN201
        calls, call = self._start(on_done, timeout_s)
        if calls is None:
            return call
        err = check_grant(req)
        if err is not None:
            call.set(0, failure(err))
            return call
        r = rpc_pb2.LeaseGrantRequest(ID=req.ID, TTL=max(req.TTL, self.lessor.min_ttl))
        if r.ID == 0:
            r.ID = chosen_id(calls.member_id, self._node._ids.getrandbits(_ID_BITS))
        calls._propose("lease_grant", r, call)
        return call

    def revoke(self, req: rpc_pb2.LeaseRevokeRequest, timeout_s: float, on_done: Callable):  # noqa: ANN001, ANN201
        calls, call = self._start(on_done, timeout_s)
        if calls is not None:
            calls._propose("lease_revoke", rpc_pb2.LeaseRevokeRequest(ID=req.ID), call)
        return call

    def keep_alive(self, req: rpc_pb2.LeaseKeepAliveRequest, timeout_s: float, on_done: Callable):  # noqa: ANN001, ANN201
        """One keep-alive of a stream: ``{ID, TTL}`` (TTL 0: no such lease, as etcd)."""
        calls, call = self._start(on_done, timeout_s)
        if calls is None:
            return call
        lid = req.ID

        def answer(ttl: int) -> None:
            if ttl == -1:
                call.set(0, failure(etcd.ERR_LEADER_CHANGED))
            elif ttl < -1:
                call.set(0, failure(ERR_TOO_MANY_REQUESTS))
            else:
                call.set(0, rpc_pb2.LeaseKeepAliveResponse(ID=lid, TTL=ttl))

        def relayed(ans: LeaseAnswer | None) -> None:
            answer(-1 if ans is None else ans.granted_ttl if ans.ttl_ms > 0 else 0)

        self._at_leader(call, lambda: self.lessor.renew(lid, answer), lambda: self.lessor.ask_leader(lid, True, relayed))
        return call

    def time_to_live(self, req: rpc_pb2.LeaseTimeToLiveRequest, timeout_s: float, on_done: Callable):  # noqa: ANN001, ANN201
        calls, call = self._start(on_done, timeout_s)
        if calls is None:
            return call
        lid = req.ID

        def answer(ttl_ms: int, granted: int) -> None:
            resp = rpc_pb2.LeaseTimeToLiveResponse(ID=lid)
            if ttl_ms < 0:
                resp.TTL = -1
            else:
                resp.TTL = ttl_ms // 1000
                resp.grantedTTL = granted
                if req.keys:
                    resp.keys.extend(sorted(self._node.replica.sm.store.lease_keys(lid)))
            call.set(0, resp)

        def here() -> None:
            ls = self._node.replica.sm.leases.get(lid)
            answer(self.lessor.remaining_ms(lid), ls.ttl if ls is not None else 0)

        def relayed(ans: LeaseAnswer | None) -> None:
            if ans is None:
                call.set(0, failure(etcd.ERR_LEADER_CHANGED))
            else:
                answer(ans.ttl_ms, ans.granted_ttl)

        self._at_leader(call, lambda: self.lessor.when_known(lid, here), lambda: self.lessor.ask_leader(lid, False, relayed))
        return call

    def _at_leader(self, call: Any, here: Callable[[], None], forward: Callable[[], bool]) -> None:  # noqa: ANN401
        node = self._node
        if self.lessor.refresh():
            here()
        elif node.leader_id is None or node.leader_id == node.node_id:
            call.set(0, failure(etcd.ERR_NO_LEADER))  # none, or this one still recovering
        elif not forward():
            call.set(0, failure(ERR_TOO_MANY_REQUESTS))

    def leases(self) -> rpc_pb2.LeaseLeasesResponse:
        """Every lease this member applied, by id (etcd: any member, from its own lessor)."""
        resp = rpc_pb2.LeaseLeasesResponse()
        for lid, _ in self._node.replica.sm.leases.items():
            resp.leases.add(ID=lid)
        return resp
