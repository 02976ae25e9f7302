"""The etcd-API workload of a campaign, and its checks after the run.

Rules
-----
* Clients speak etcd's v3 API (``etcdserverpb.KV``, ``Maintenance``) to
  the real nodes, on keys ``e/k0`` ... (apart from the paxoskv.v1 workload's
  keys, in the same MVCC store, so their writes take revisions too). Each
  client is sequential, with its own connection to every node; client ``c``
  starts at node ``1 + c % n``.
* Operations, each recorded as a ``paxoskv.check.txn.TxnOp``:

  - ``cas``: Txn ``mod_revision(k) == m`` then Put ``k`` a unique value,
    else Range ``k``; ``m`` is the mod revision this client last saw of
    ``k`` (0: absent), so it usually holds unless another client won;
  - ``multi``: Txn ``version(a) == ver`` then Put ``a`` and Put or Delete
    ``b``, else Range ``a`` and ``b`` (two keys, one revision);
  - ``range-at``: Range ``k`` at a revision this client has seen (the past);
  - ``read``: a read-only Txn of Range ``a`` and ``b``, or a plain Range.

* Lease clients (``lease_clients``, named ``l0`` ...) on keys ``e/lk0`` ...
  (shared by them, so a put with one lease moves a key another lease
  held), one lease at a time: grant (a client-chosen id, TTL from
  ``lease_ttls_s``), put one or two keys with it, then keep it alive a few
  times (each keep-alive recorded) and revoke it, or revoke it at once, or
  let it expire: poll LeaseTimeToLive until it answers TTL -1 (each poll
  recorded: the one that saw it gone is the observation the checker
  bounds the expiry by), then put with the dead lease (etcd's ``requested
  lease not found``). Between calls it ranges the lease keys. Each call is
  a ``TxnOp`` with a ``LeaseCall`` (or a ``Put`` with a lease); a lease
  answered gone (TTL -1, a keep-alive's TTL 0, NOT_FOUND ``requested lease
  not found``) is ``ok`` with error ``lease-not-found``.
* etcd's API carries no client sequence, so a write is never retried: one
  attempt, its outcome ``ok`` (answered), ``fail`` (INVALID_ARGUMENT,
  FAILED_PRECONDITION, OUT_OF_RANGE: etcd refused it before writing) or
  ``unknown``; after a failure the client's next operation goes to the next
  node.
* Checks after the run (``check_members``), on every member once the
  cluster converged, at its current revision ``R``: (1) HashKV at ``R`` and
  at a few earlier revisions is the same on every member; (2) a
  serializable Range of every key at every revision ``r`` from the first
  retained one to ``R`` answers the same on every member; (3) on every
  member revisions are gap-free and +1 per mutating command: the state at
  ``r`` differs from the state at ``r - 1``, and only by keys written at
  ``r`` (mod revision ``r``) or deleted, and no key has a mod revision
  above ``r``. A paxoskv.v1 batch may put and delete one key (one
  revision, no net change): such a revision must still hold history rows,
  i.e. its HashKV differs from the revision before (a skipped revision's
  would not).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import grpc

from paxoskv.chaos.workload import dial, stop_clients
from paxoskv.check.txn import (
    LEASE_NOT_FOUND,
    Compare,
    Delete,
    LeaseCall,
    Put,
    Range,
    Record,
    TxnCheckResult,
    TxnOp,
    check_txn_history,
)
from paxoskv.etcdpb import rpc_pb2, rpc_pb2_grpc
from paxoskv.tls import ClientTLS
from paxoskv.wire import unreachable_reason

__all__ = [
    "EtcdOutcome",
    "EtcdWorkload",
    "EtcdWorkloadConfig",
    "check_members",
    "foreign_writes",
    "key_counts",
    "lease_counts",
]

KEY_PREFIX = "e/"
_REFUSED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.OUT_OF_RANGE}
_C = rpc_pb2.Compare
_SCAN_OPS = 128  # Ranges per Txn of the per-revision scan (etcd's --max-txn-ops)
# etcd's answer to a call naming a lease that does not exist (rpctypes.ErrGRPCLeaseNotFound)
_LEASE_NOT_FOUND = (grpc.StatusCode.NOT_FOUND, "etcdserver: requested lease not found")
_LEASE_ID_BITS = 32  # a lease client's ids: (client index + 1) << 32 | its lease count


@dataclass(frozen=True, slots=True, kw_only=True)
class EtcdWorkloadConfig:
    clients: int = 4
    keys: int = 4
    p_cas: float = 0.4
    p_multi: float = 0.2
    p_range_at: float = 0.15  # the rest are current reads
    attempt_timeout_s: float = 1.0
    backoff_s: float = 0.1  # after a call that was not answered (a dead node costs few calls)
    past_revisions: int = 50  # a range-at reads at most this far back from the latest revision seen
    hash_revisions: int = 4  # HashKV compared at this many revisions (the current one among them)
    scan_revisions_max: int | None = None  # the per-revision scan covers at most the latest this many
    lease_clients: int = 2
    lease_keys: int = 4
    lease_ttls_s: tuple[int, ...] = (2, 3, 4)  # above the campaign's minimum TTL (1.5 election timeouts: 1 s)
    p_lease_keep: float = 0.35  # kept alive a few times, then revoked
    p_lease_revoke: float = 0.25  # revoked at once; the rest expire
    lease_poll_s: float = 0.3  # between TimeToLive polls of a lease left to expire
    lease_wait_s_max: float = 30.0  # a lease left to expire not seen gone this long after grant + TTL is left

    def __post_init__(self) -> None:
        assert self.clients >= 1 and self.keys >= 2
        assert 0 <= self.p_cas + self.p_multi + self.p_range_at <= 1
        assert self.lease_clients >= 0 and self.lease_keys >= 2 and all(t >= 1 for t in self.lease_ttls_s)
        assert 0 <= self.p_lease_keep + self.p_lease_revoke <= 1


@dataclass(slots=True)
class EtcdOutcome:
    """What the etcd workload and its checks found."""

    history: list[TxnOp] = field(default_factory=list)
    check: TxnCheckResult | None = None
    problems: list[str] = field(default_factory=list)
    revision: int = 0  # the members' revision after the run
    revisions_scanned: int = 0  # per member
    hashes_compared: int = 0  # revisions at which HashKV was compared
    unchanged_revisions: int = 0  # revisions with no net change (told apart from gaps by HashKV)
    # the revisions the members' scan shows changed no etcd-workload key (the
    # paxoskv.v1 workload's writes); None when the scan did not start at 1
    foreign_revisions: list[int] | None = None
    notes: Counter = field(default_factory=Counter)
    timings: dict[str, float] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        return dict(Counter(o.outcome for o in self.history))


def _record(kv) -> Record:  # noqa: ANN001 - mvccpb.KeyValue
    return (kv.value.decode(), kv.create_revision, kv.mod_revision, kv.version)


def _read_one(resp: rpc_pb2.RangeResponse) -> Record | None:
    return _record(resp.kvs[0]) if resp.kvs else None


def _request_op(o: Put | Delete | Range) -> rpc_pb2.RequestOp:
    if isinstance(o, Put):
        return rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=o.key.encode(), value=o.value.encode(),
                                                                lease=o.lease))
    if isinstance(o, Delete):
        return rpc_pb2.RequestOp(request_delete_range=rpc_pb2.DeleteRangeRequest(key=o.key.encode()))
    return rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=o.key.encode(), revision=o.revision))


def _compare(c: Compare) -> rpc_pb2.Compare:
    if c.target == "mod":
        return _C(key=c.key.encode(), target=_C.MOD, result=_C.EQUAL, mod_revision=int(c.operand))
    assert c.target == "version" and c.result == "="
    return _C(key=c.key.encode(), target=_C.VERSION, result=_C.EQUAL, version=int(c.operand))


class _Client:
    def __init__(self, wl: EtcdWorkload, index: int, targets: dict[int, str], rng: random.Random,
                 name: str = "") -> None:
        self.wl = wl
        self.name = name or f"e{index}"
        self.ids = sorted(targets)
        self.node = self.ids[index % len(self.ids)]
        self.rng = rng
        self.jitter = random.Random(rng.random())  # backoff: how often it fails must not shift the ops
        self.seq = 0
        self.seen: dict[str, Record | None] = {}  # what this client last read or wrote of each key
        self.last_rev = 1
        self.channels = {i: dial(t, f"{self.name}-n{i}", wl.tls) for i, t in targets.items()}
        self.kv = {i: rpc_pb2_grpc.KVStub(ch) for i, ch in self.channels.items()}

    async def close(self) -> None:
        for ch in self.channels.values():
            await ch.close(grace=None)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if not await self.one():
                self.node = self.ids[(self.ids.index(self.node) + 1) % len(self.ids)]
                await asyncio.sleep(self.wl.cfg.backoff_s * (1 + self.jitter.random()))

    def _key(self) -> str:
        return f"{KEY_PREFIX}k{self.rng.randrange(self.wl.cfg.keys)}"

    def _two(self) -> tuple[str, str]:
        a, b = self.rng.sample(range(self.wl.cfg.keys), 2)
        return f"{KEY_PREFIX}k{a}", f"{KEY_PREFIX}k{b}"

    def _value(self) -> str:
        self.seq += 1
        return f"{self.name}-{self.seq}"

    async def one(self) -> bool:
        """One operation; False when it was not answered."""
        cfg = self.wl.cfg
        r = self.rng.random()
        if r < cfg.p_cas:
            k = self._key()
            rec = self.seen.get(k)
            mod = rec[2] if rec is not None else 0
            return await self._txn((Compare(k, "mod", "=", mod),), (Put(k, self._value()),), (Range(k),))
        r -= cfg.p_cas
        if r < cfg.p_multi:
            a, b = self._two()
            rec = self.seen.get(a)
            second: Put | Delete = Put(b, self._value()) if self.rng.random() < 0.7 else Delete(b)
            return await self._txn(
                (Compare(a, "version", "=", rec[3] if rec else 0),),
                (Put(a, self._value()), second),
                (Range(a), Range(b)),
            )
        r -= cfg.p_multi
        if r < cfg.p_range_at:
            rev = self.rng.randint(max(1, self.last_rev - cfg.past_revisions), self.last_rev)
            return await self._range(self._key(), rev)
        if self.rng.random() < 0.5:
            return await self._range(self._key(), 0)
        a, b = self._two()
        return await self._txn((), (Range(a), Range(b)), ())

    async def _call(self, spec: dict, send: Callable) -> bool:  # noqa: ANN001
        wl = self.wl
        op_id = wl._invoke(self.name, spec)
        try:
            succeeded, revision, reads, *error = await send(self.node)
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            wl.stats[code.name] += 1
            if (code, exc.details()) == _LEASE_NOT_FOUND:  # a put or revoke naming a lease gone
                wl._complete(op_id, "ok", succeeded=True, revision=None, reads=(), error=LEASE_NOT_FOUND)
                return True
            if code in _REFUSED:
                wl.notes[f"refused {code.name}: {exc.details()}"] += 1
                wl._complete(op_id, "fail")
                return True
            if _surely_not_sent(exc):
                wl._complete(op_id, "fail")
                return False
            wl._complete(op_id, "unknown")
            return False
        except _NoAnswer:
            wl.stats["no answer"] += 1
            wl._complete(op_id, "unknown")
            return False
        wl.stats["OK"] += 1
        wl._complete(op_id, "ok", succeeded=succeeded, revision=revision, reads=reads, error=error[0] if error else None)
        if revision is not None:
            self.last_rev = max(self.last_rev, revision)
        ops = spec.get("success", ()) if succeeded else spec.get("failure", ())
        it = iter(reads)
        for o in ops:  # what this client now knows of the keys
            if isinstance(o, Range):
                rec = next(it)
                if not o.revision:
                    self.seen[o.key] = rec
            elif isinstance(o, Put):
                if o.key in self.seen:  # a hint only: the checker judges what was true
                    old = self.seen[o.key]
                    self.seen[o.key] = (o.value, revision, revision, 1) if old is None else (
                        o.value, old[1], revision, old[3] + 1)
            else:
                self.seen[o.key] = None
        return True

    async def _txn(self, compares, success, failure) -> bool:  # noqa: ANN001
        req = rpc_pb2.TxnRequest(
            compare=[_compare(c) for c in compares],
            success=[_request_op(o) for o in success],
            failure=[_request_op(o) for o in failure],
        )
        timeout = self.wl.cfg.attempt_timeout_s

        async def send(node):  # noqa: ANN001, ANN202
            resp = await self.kv[node].Txn(req, timeout=timeout)
            reads = tuple(_read_one(r.response_range) for r in resp.responses if r.WhichOneof("response") == "response_range")
            return resp.succeeded, resp.header.revision, reads

        return await self._call(dict(compares=compares, success=success, failure=failure), send)

    async def _range(self, key: str, revision: int) -> bool:
        req = rpc_pb2.RangeRequest(key=key.encode(), revision=revision)
        timeout = self.wl.cfg.attempt_timeout_s

        async def send(node):  # noqa: ANN001, ANN202
            resp = await self.kv[node].Range(req, timeout=timeout)
            return True, resp.header.revision, (_read_one(resp),)

        return await self._call(dict(compares=(), success=(Range(key, revision),), failure=()), send)


class _LeaseClient(_Client):
    """One lease at a time on the shared lease keys (see the module rules)."""

    def __init__(self, wl: EtcdWorkload, index: int, targets: dict[int, str], rng: random.Random) -> None:
        super().__init__(wl, index, targets, rng, name=f"l{index}")
        self.index = index
        self.leases = 0
        self.lease = {i: rpc_pb2_grpc.LeaseStub(ch) for i, ch in self.channels.items()}
        self.stop = asyncio.Event()  # the workload's, once running
        self.holding = 0  # the lease this client granted and has not seen end

    async def run(self, stop: asyncio.Event) -> None:
        self.stop = stop
        while not stop.is_set():
            await self.one_lease()

    async def _pause(self, seconds: float) -> None:
        """Wait ``seconds``, or less if the workload stops."""
        try:
            await asyncio.wait_for(self.stop.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    async def _step(self, answered: bool) -> None:
        if not answered:  # as the other clients: the next call goes to the next node
            self.node = self.ids[(self.ids.index(self.node) + 1) % len(self.ids)]
            await self._pause(self.wl.cfg.backoff_s * (1 + self.jitter.random()))

    def _lease_keys(self) -> list[str]:
        return [f"{KEY_PREFIX}lk{i}" for i in range(self.wl.cfg.lease_keys)]

    async def _read_keys(self) -> None:
        keys = self._lease_keys()
        if self.rng.random() < 0.5:
            await self._step(await self._range(self.rng.choice(keys), 0))
        else:
            await self._step(await self._txn((), tuple(Range(k) for k in self.rng.sample(keys, 2)), ()))

    async def one_lease(self) -> None:
        cfg = self.wl.cfg
        self.leases += 1
        lease_id = (self.index + 1) << _LEASE_ID_BITS | self.leases
        ttl = self.rng.choice(cfg.lease_ttls_s)
        self.holding = lease_id
        answered = await self._lease_call(LeaseCall("grant", lease_id, ttl))
        await self._step(answered)
        keys = self.rng.sample(self._lease_keys(), self.rng.randint(1, 2))
        for k in keys:
            await self._step(await self._txn((), (Put(k, self._value(), lease_id),), ()))
        await self._read_keys()
        fate = self.rng.random()
        granted_at = self.wl.clock()
        if fate < cfg.p_lease_keep:
            for _ in range(self.rng.randint(2, 4)):
                await self._pause(ttl / 3)
                if self.stop.is_set():
                    return
                await self._step(await self._lease_call(LeaseCall("keepalive", lease_id)))
                await self._read_keys()
        if fate < cfg.p_lease_keep + cfg.p_lease_revoke:
            if await self._lease_call(LeaseCall("revoke", lease_id)):
                self.holding = 0
            else:
                await self._step(False)
            await self._read_keys()
            return
        # Left to expire: poll until it is seen gone, reading its keys meanwhile.
        deadline = granted_at + ttl + cfg.lease_wait_s_max
        while not self.stop.is_set() and self.wl.clock() < deadline:
            await self._pause(cfg.lease_poll_s * (0.5 + self.jitter.random()))
            gone = await self._lease_call(LeaseCall("ttl", lease_id))
            await self._step(gone is not False)
            if gone is True:
                break
            await self._read_keys()
        else:
            return
        self.holding = 0
        self.wl.notes["lease expiry observed"] += 1
        for k in keys:  # gone with it (unless another lease took the key since)
            await self._step(await self._range(k, 0))
        await self._read_keys()
        await self._step(await self._txn((), (Put(self.rng.choice(keys), self._value(), lease_id),), ()))

    async def _lease_call(self, call: LeaseCall) -> bool | None:
        """One lease call, recorded; False: not answered; for a TimeToLive,
        True when it answered the lease gone, None when live."""
        timeout = self.wl.cfg.attempt_timeout_s
        seen_gone = False

        async def send(node):  # noqa: ANN001, ANN202
            nonlocal seen_gone
            stub = self.lease[node]
            if call.kind == "grant":
                resp = await stub.LeaseGrant(rpc_pb2.LeaseGrantRequest(ID=call.id, TTL=call.ttl), timeout=timeout)
                return True, resp.header.revision, ()
            if call.kind == "revoke":
                resp = await stub.LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=call.id), timeout=timeout)
                return True, resp.header.revision, ()
            if call.kind == "ttl":
                resp = await stub.LeaseTimeToLive(rpc_pb2.LeaseTimeToLiveRequest(ID=call.id), timeout=timeout)
                seen_gone = resp.TTL == -1
                return True, None, (), LEASE_NOT_FOUND if seen_gone else None
            stream = stub.LeaseKeepAlive(timeout=timeout)  # one keep-alive, as etcdctl keep-alive --once
            try:
                await stream.write(rpc_pb2.LeaseKeepAliveRequest(ID=call.id))
                resp = await stream.read()
            finally:
                stream.cancel()
            if resp is grpc.aio.EOF:
                raise _NoAnswer("the keep-alive stream ended without an answer")
            return True, None, (), LEASE_NOT_FOUND if resp.TTL == 0 else None

        answered = await self._call(dict(lease=call), send)
        if call.kind == "ttl" and answered:
            return True if seen_gone else None
        return answered


class _NoAnswer(Exception):
    """A call ended without an answer and without a status (a stream closed early)."""


class EtcdWorkload:
    """``clients`` concurrent etcd-API clients against ``targets`` (node id -> host:port)."""

    def __init__(
        self,
        cfg: EtcdWorkloadConfig,
        targets: dict[int, str],
        *,
        seed: int,
        clock: Callable[[], float] = time.monotonic,
        tls: ClientTLS | None = None,
    ) -> None:
        self.cfg = cfg
        self.clock = clock
        self.tls = tls  # the campaign's client certificate (None: plaintext)
        self.stats: Counter = Counter()
        self.notes: Counter = Counter()
        self._next_id = 0
        self._pending: dict[int, tuple[str, dict, float]] = {}
        self._done: list[TxnOp] = []
        self.clients = [_Client(self, c, targets, random.Random(f"{seed}/etcd-client/{c}")) for c in range(cfg.clients)]
        self.clients += [_LeaseClient(self, c, targets, random.Random(f"{seed}/etcd-lease-client/{c}"))
                         for c in range(cfg.lease_clients)]
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    def _invoke(self, client: str, spec: dict) -> int:
        op_id = self._next_id
        self._next_id += 1
        self._pending[op_id] = (client, spec, self.clock())
        return op_id

    def _complete(self, op_id: int, outcome: str, **output: object) -> None:
        client, spec, call = self._pending.pop(op_id)
        ret = max(call, self.clock())
        self._done.append(TxnOp(id=op_id, client=client, call=call, ret=ret, outcome=outcome, **spec, **output))

    def start(self) -> None:
        self._tasks = [asyncio.create_task(c.run(self._stop), name=c.name) for c in self.clients]

    async def stop(self) -> None:
        """Stop the clients, end the leases they hold (a lease left behind
        keeps the leader proposing checkpoints and its expiry while the
        members are compared), then close the connections."""
        await stop_clients(self._stop, self._tasks, [], self.cfg.attempt_timeout_s + 5.0)
        try:
            await self._end_leases()
        finally:
            for c in self.clients:
                await c.close()

    async def _end_leases(self) -> None:
        holders = [c for c in self.clients if isinstance(c, _LeaseClient)]
        if not holders:
            return
        for c in holders:
            if c.holding:
                for _ in c.ids:  # revoke it (recorded), on the next node if unanswered
                    if await c._lease_call(LeaseCall("revoke", c.holding)):
                        break
                    c.node = c.ids[(c.ids.index(c.node) + 1) % len(c.ids)]
        # Any other (an unknown grant, a revoke unanswered) ends by its TTL.
        deadline = time.monotonic() + max(self.cfg.lease_ttls_s) + 15.0
        stubs = holders[0].lease
        left: dict[int, object] = {}
        while time.monotonic() < deadline:
            left = {}
            for i, stub in sorted(stubs.items()):
                try:
                    resp = await stub.LeaseLeases(rpc_pb2.LeaseLeasesRequest(), timeout=self.cfg.attempt_timeout_s)
                    if resp.leases:
                        left[i] = sorted(x.ID for x in resp.leases)
                except grpc.aio.AioRpcError as exc:
                    left[i] = exc.code().name
            if not left:
                return
            await asyncio.sleep(0.2)
        self.notes[f"leases left after the run: {left}"] += 1

    def history(self) -> list[TxnOp]:
        """Every operation so far, by id; those in flight are unknown."""
        ops = list(self._done)
        ops += [TxnOp(id=i, client=c, call=t, ret=None, outcome="unknown", **spec)
                for i, (c, spec, t) in self._pending.items()]
        ops.sort(key=lambda o: o.id)
        return ops


def _surely_not_sent(exc: grpc.aio.AioRpcError) -> bool:
    """UNAVAILABLE before anything was proposed: the connection was never
    made (the node is down), or the member knew no leader (paxoskv answers
    etcd's "no leader" only for a call it did not propose)."""
    if exc.code() != grpc.StatusCode.UNAVAILABLE:
        return False
    if unreachable_reason(exc.code(), exc.details()) in ("connection refused", "cannot connect"):
        return True
    return exc.details() == "etcdserver: no leader"


async def key_counts(targets: dict[int, str], tls: ClientTLS | None = None) -> dict[int, int]:
    """How many etcd-workload keys each member holds (serializable count)."""
    out = {}
    for i, t in sorted(targets.items()):
        async with dial(t, f"etcd-count-n{i}", tls) as ch:
            req = rpc_pb2.RangeRequest(key=KEY_PREFIX.encode(), range_end=_prefix_end(KEY_PREFIX.encode()),
                                       count_only=True, serializable=True)
            out[i] = (await rpc_pb2_grpc.KVStub(ch).Range(req, timeout=5.0)).count
    return out


def _prefix_end(prefix: bytes) -> bytes:
    return prefix[:-1] + bytes([prefix[-1] + 1])


def foreign_writes(v1_history: Sequence) -> list[float]:  # noqa: ANN001 - paxoskv.check.Operation
    """The call times of the paxoskv.v1 writes that may have taken a revision."""
    return [o.call for o in v1_history if o.op != "get" and o.outcome != "fail"]


# ---- after the run ----------------------------------------------------------------------


async def check_members(
    cfg: EtcdWorkloadConfig, targets: dict[int, str], out: EtcdOutcome, *, concurrency: int = 4,
    tls: ClientTLS | None = None,
) -> None:
    """HashKV, per-revision Range and gap-free revisions on every member
    (the cluster has converged: every member applied the same index)."""
    channels = {i: dial(t, f"etcd-check-n{i}", tls) for i, t in targets.items()}
    try:
        kv = {i: rpc_pb2_grpc.KVStub(ch) for i, ch in channels.items()}
        mt = {i: rpc_pb2_grpc.MaintenanceStub(ch) for i, ch in channels.items()}
        status = {}
        for i in sorted(targets):
            status[i] = await mt[i].Status(rpc_pb2.StatusRequest(), timeout=5.0)
        revs = {i: s.header.revision for i, s in status.items()}
        if len(set(revs.values())) != 1:
            out.problems.append(f"etcd: members are at different revisions after convergence: {revs}")
            return
        current = next(iter(revs.values()))
        out.revision = current
        # (1) HashKV at the same revisions.
        t = time.monotonic()
        compact = 0
        hash_revs = sorted({current, *(max(1, current * k // cfg.hash_revisions) for k in range(1, cfg.hash_revisions))})
        for rev in hash_revs:
            got = {}
            for i in sorted(targets):
                h = await mt[i].HashKV(rpc_pb2.HashKVRequest(revision=rev), timeout=10.0)
                got[i] = (h.hash, h.compact_revision)
                compact = max(compact, h.compact_revision)
            out.hashes_compared += 1
            if len(set(got.values())) != 1:
                out.problems.append(f"etcd: HashKV at revision {rev} differs between members: {got}")
        out.timings["hashkv_s"] = time.monotonic() - t
        # (2) and (3): every member's state at every retained revision.
        t = time.monotonic()
        first = max(1, compact)
        if cfg.scan_revisions_max is not None:
            first = max(first, current - cfg.scan_revisions_max + 1)
        sem = asyncio.Semaphore(concurrency)

        async def states_at(i: int, revs: range) -> list[tuple[tuple[bytes, bytes, int, int, int], ...]]:
            """The whole store at each of ``revs``: one serializable read-only
            Txn of one Range per revision (at most etcd's 128 ops)."""
            ranges = [rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(
                key=b"\0", range_end=b"\0", revision=r, serializable=True)) for r in revs]
            async with sem:
                resp = await kv[i].Txn(rpc_pb2.TxnRequest(success=ranges), timeout=30.0)
            return [tuple((x.key, x.value, x.create_revision, x.mod_revision, x.version)
                          for x in r.response_range.kvs) for r in resp.responses]

        states: dict[int, list] = {}
        chunks = [range(r, min(r + _SCAN_OPS, current + 1)) for r in range(first, current + 1, _SCAN_OPS)]
        for i in sorted(targets):
            parts = await asyncio.gather(*(states_at(i, c) for c in chunks))
            states[i] = [s for part in parts for s in part]
        out.revisions_scanned = current - first + 1
        ref = min(targets)
        for i in sorted(targets):
            if i == ref:
                continue
            for k, rev in enumerate(range(first, current + 1)):
                if states[i][k] != states[ref][k]:
                    out.problems.append(f"etcd: a Range at revision {rev} differs: node {ref} {states[ref][k]!r:.300}, "
                                        f"node {i} {states[i][k]!r:.300}")
                    break
        for i in sorted(targets):
            problem, unchanged = _gap_free(states[i], first)
            if problem:
                out.problems.append(f"etcd: node {i}: {problem}")
            # A revision whose command left no net change (a paxoskv.v1 batch
            # that put and deleted a key) must still hold history rows: its
            # HashKV differs from the one before. A skipped revision's would not.
            for rev in unchanged:
                h = [await mt[i].HashKV(rpc_pb2.HashKVRequest(revision=r), timeout=10.0) for r in (rev - 1, rev)]
                if h[0].hash == h[1].hash:
                    out.problems.append(f"etcd: node {i}: revision {rev} holds nothing (HashKV as at {rev - 1})")
            out.unchanged_revisions = len(unchanged)
        if first == 1 and not out.problems:
            out.foreign_revisions = foreign_revisions_of(states[ref])
        out.timings["scan_s"] = time.monotonic() - t
    except grpc.aio.AioRpcError as exc:
        out.problems.append(f"etcd: a member check call failed: {exc.code().name} {exc.details()}")
    finally:
        for ch in channels.values():
            await ch.close(grace=None)


def foreign_revisions_of(states: Sequence[tuple]) -> list[int]:
    """The revisions (2 ... of ``states``, the whole store at revision 1, 2,
    ...) whose write changed no key of this workload: the other writers'
    (paxoskv.v1 writes on keys outside ``KEY_PREFIX``, a v1 batch that left
    no net change). Every write of this workload changes one of its keys
    (values are unique; etcd refuses a Txn naming a key twice; a revoke
    takes a revision only when it deletes keys), so the checker can give
    exactly these revisions to the foreign writes (``foreign_revisions``)
    instead of searching where each may have gone."""
    mine = KEY_PREFIX.encode()
    out: list[int] = []
    prev: dict[bytes, tuple] = {}
    for k, rows in enumerate(states):
        cur = {r[0]: r[1:] for r in rows}
        if k > 0:
            changed = [key for key in cur.keys() | prev.keys() if cur.get(key) != prev.get(key)]
            if not any(key.startswith(mine) for key in changed):
                out.append(k + 1)
        prev = cur
    return out


def _gap_free(states: Sequence[tuple], first: int) -> tuple[str, list[int]]:
    """(the first revision in ``states`` -- the state at ``first``, ``first +
    1``, ... -- that no single mutating command explains, or ""; the
    revisions with no net change, for HashKV to tell apart)."""
    prev: dict[bytes, tuple] | None = None
    unchanged: list[int] = []
    if first == 1 and states and states[0]:
        return f"the store is not empty at revision 1: {states[0]!r:.200}", unchanged
    for k, rows in enumerate(states):
        rev = first + k
        cur = {r[0]: r[1:] for r in rows}
        above = [key for key, r in cur.items() if r[2] > rev]
        if above:
            return f"at revision {rev} keys have a later mod revision: {above[:5]}", unchanged
        if prev is not None:
            changed = {key for key in cur.keys() | prev.keys() if cur.get(key) != prev.get(key)}
            if not changed:
                unchanged.append(rev)
            wrong = [key for key in changed if key in cur and cur[key][2] != rev]
            if wrong:
                return f"at revision {rev} keys changed without mod revision {rev}: {wrong[:5]}", unchanged
        prev = cur
    return "", unchanged


def check_history_of(wl: EtcdWorkload, v1_history: Sequence, time_budget_s: float | None,  # noqa: ANN001
                     foreign_revisions: Sequence[int] | None = None) -> TxnCheckResult:
    """Linearizability of the etcd history; the v1 writes may take revisions
    (exactly ``foreign_revisions`` when the members' scan told them)."""
    return check_txn_history(wl.history(), foreign=foreign_writes(v1_history), foreign_revisions=foreign_revisions,
                             time_budget_s=time_budget_s)


def lease_counts(history: Sequence[TxnOp]) -> Counter:
    """The lease calls of a history, by kind (``ok`` ones: ``<kind> ok``,
    ``<kind> gone`` when answered lease-not-found), and puts with a lease."""
    out: Counter = Counter()
    for o in history:
        if o.lease is not None:
            out[o.lease.kind] += 1
            if o.outcome == "ok":
                out[f"{o.lease.kind} {'gone' if o.error == LEASE_NOT_FOUND else 'ok'}"] += 1
        elif any(isinstance(x, Put) and x.lease for x in o.success):
            out["put"] += 1
            if o.outcome == "ok":
                out[f"put {'gone' if o.error == LEASE_NOT_FOUND else 'ok'}"] += 1
    return out


def summary_lines(out: EtcdOutcome) -> list[str]:
    """The etcd part of a campaign's summary.txt."""
    counts = out.counts()
    ch = out.check
    lines = [
        f"etcd workload: {len(out.history)} operations (ok {counts.get('ok', 0)}, fail {counts.get('fail', 0)}, "
        f"unknown {counts.get('unknown', 0)}); revision {out.revision} after the run",
        f"  checker: {ch.verdict + f', {ch.ops_checked} ops in {ch.elapsed_s:.1f}s ({ch.steps} steps)' if ch else 'not run'}",
        f"  members: HashKV equal at {out.hashes_compared} revisions, Range at each of {out.revisions_scanned} "
        f"revisions compared and gap-free: {'no' if out.problems else 'yes'} ({out.unchanged_revisions} with "
        f"no net change, each holding rows); the other writers' revisions "
        + (f"told to the checker: {len(out.foreign_revisions)}" if out.foreign_revisions is not None
           else "searched (the scan did not start at revision 1)"),
    ]
    lc = lease_counts(out.history)
    if lc:
        lines.append(
            f"  leases: {lc['grant']} grants ({lc['grant ok']} ok), {lc['put']} puts with a lease ({lc['put ok']} ok, "
            f"{lc['put gone']} lease not found), {lc['keepalive ok']} keep-alives answered, {lc['revoke ok']} revokes "
            f"answered ({lc['revoke gone']} not found), {lc['ttl ok'] + lc['ttl gone']} TimeToLive answered "
            f"({lc['ttl gone']} gone: expiries observed)")
    if ch is not None and ch.verdict != "ok":
        lines += [f"    {line}" for line in ch.explanation.splitlines()[:25]]
    if out.timings:
        lines.append("  timings: " + ", ".join(f"{k.removesuffix('_s')} {v:.1f}s" for k, v in out.timings.items()))
    return lines


def write_history(out: EtcdOutcome, path) -> None:  # noqa: ANN001 - a pathlib.Path
    """``etcd-history.jsonl``: one ``TxnOp.to_json`` per line."""
    import json

    with open(path, "w", encoding="utf-8") as f:
        for o in out.history:
            f.write(json.dumps(o.to_json()) + "\n")
