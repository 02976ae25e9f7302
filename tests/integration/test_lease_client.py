"""The Python lease client, its lock with a fencing token (try, and a
blocking acquire that waits on a watch), and ``paxoskv lease`` against a
real 3-node cluster (election 200 ms: a minimum TTL of 1 s)."""

from __future__ import annotations

import collections
import time

import grpc
import pytest

from integration_cluster import PAXOSKV, run_cli
from line_process import LineProcess, in_thread
from paxoskv.client.election import Election, NoLeader
from paxoskv.client.lease import LeaseClient, LeaseError, Lock, LockTimeout, prefix_range
from paxoskv.etcdpb import rpc_pb2, rpc_pb2_grpc
from paxoskv.util.wait import wait_until

R = rpc_pb2


def test_paxoskv_lease_grant_keep_alive_revoke(cluster) -> None:
    eps = ",".join(cluster.endpoints)
    short = run_cli("lease", "grant", "0", "--endpoints", eps)
    assert short.returncode == 0 and short.stdout.endswith("granted with TTL(1s)\n"), short  # the minimum
    granted = run_cli("lease", "grant", "30", "--endpoints", eps)
    assert granted.returncode == 0, granted.stderr
    words = granted.stdout.split()
    assert words[0] == "lease" and len(words[1]) == 16 and granted.stdout.endswith("granted with TTL(30s)\n")
    lease = words[1]
    once = run_cli("lease", "keep-alive", "--once", lease, "--endpoints", eps)
    assert once.returncode == 0 and once.stdout == f"lease {lease} keepalived with TTL(30)\n", once
    revoked = run_cli("lease", "revoke", lease, "--endpoints", eps)
    assert revoked.returncode == 0 and revoked.stdout == f"lease {lease} revoked\n", revoked
    again = run_cli("lease", "revoke", lease, "--endpoints", eps)
    assert again.returncode == 4 and "etcdserver: requested lease not found" in again.stderr, again
    gone = run_cli("lease", "keep-alive", "--once", lease, "--endpoints", eps)
    assert gone.returncode == 4 and gone.stdout == f"lease {lease} expired or revoked.\n", gone
    bad = run_cli("lease", "revoke", "not-hex", "--endpoints", eps)
    assert bad.returncode == 2 and "not a lease id" in bad.stderr


def test_a_lock_names_its_fencing_token_and_a_lease_kept_alive_outlives_its_ttl(cluster) -> None:
    with LeaseClient(cluster.endpoints) as c:
        a, ttl = c.grant(2)
        b, _ = c.grant(2)
        assert ttl == 2
        keeper = c.keep_alive(a, ttl)
        try:
            first, second = Lock(c, "mylock", a), Lock(c, "mylock", b)
            token = first.try_acquire()
            assert token is not None and second.try_acquire() is None
            with grpc.insecure_channel(cluster.endpoints[0]) as ch:
                kv = rpc_pb2_grpc.KVStub(ch).Range(R.RangeRequest(key=first.key), timeout=5).kvs[0]
            assert (kv.create_revision, kv.lease) == (token, a)  # the token is the key's create revision
            assert first.try_acquire() == token  # asking again while holding it: the same token
            first.release()
            later = second.try_acquire()
            assert later is not None and later > token  # the next holder's token is higher
            # b is not kept alive: its lock key goes with it; a lives on past its TTL
            wait_until("lease b's lock key to go with its lease", lambda: c.time_to_live(b).ttl == -1, 15)
            assert c.time_to_live(b, keys=True).keys == ()
            started = time.monotonic()
            wait_until("three TTLs to pass", lambda: time.monotonic() - started > 3 * ttl, 15, interval_s=0.2)
            alive = c.time_to_live(a, keys=True)
            assert alive.ttl > 0 and alive.granted_ttl == 2 and not keeper.lost.is_set()
        finally:
            keeper.stop()
        try:
            Lock(c, "mylock", b).try_acquire()
        except LeaseError as exc:
            assert (exc.code, exc.message) == ("NOT_FOUND", "etcdserver: requested lease not found")
        else:
            raise AssertionError("a lock through a lease that is gone was taken")


class _CountCalls(grpc.UnaryUnaryClientInterceptor):
    """Counts a client's unary calls by method name."""

    def __init__(self) -> None:
        self.calls: collections.Counter[str] = collections.Counter()

    def intercept_unary_unary(self, continuation, details, request):  # noqa: ANN001, ANN201
        self.calls[details.method.rsplit("/", 1)[-1]] += 1
        return continuation(details, request)


def _counted(client: LeaseClient) -> _CountCalls:
    counter = _CountCalls()
    client._channels = [grpc.intercept_channel(ch, counter) for ch in client._channels]
    return counter


def _keys(endpoint: str, prefix: bytes) -> list[bytes]:
    with grpc.insecure_channel(endpoint) as ch:
        resp = rpc_pb2_grpc.KVStub(ch).Range(R.RangeRequest(key=prefix, range_end=prefix_range(prefix)[1]), timeout=5)
    return [kv.key for kv in sorted(resp.kvs, key=lambda kv: kv.create_revision)]


def test_lock_acquire_waits_on_a_watch_until_the_holder_releases_or_its_lease_ends(shared_cluster) -> None:
    cluster = shared_cluster
    ep = cluster.endpoints[0]
    with LeaseClient(cluster.endpoints) as a, LeaseClient(cluster.endpoints) as b:
        ranges = _counted(b)
        la, ttl = a.grant(2)
        keeper = a.keep_alive(la, ttl)
        lb, _ = b.grant(60)
        try:
            first = Lock(a, "jobs", la)
            token = first.acquire(timeout=10)
            second = Lock(b, "jobs", lb)
            waiter, got = in_thread(lambda: second.acquire(timeout=60))
            wait_until("the second contender to read its predecessor", lambda: ranges.calls["Range"] >= 1, 10)
            assert _keys(ep, b"jobs/") == [first.key, second.key]
            # the first holds for a second of writes: the second waits on its watch and reads nothing
            started = time.monotonic()
            with grpc.insecure_channel(ep) as ch:
                kv = rpc_pb2_grpc.KVStub(ch)
                while time.monotonic() - started < 1.0:
                    kv.Put(R.PutRequest(key=b"/busy", value=b"x"), timeout=5)
            assert waiter.is_alive() and not got, got  # mutual exclusion
            assert ranges.calls["Range"] == 1, ranges.calls  # no polling
            first.release()
            waiter.join(15)
            assert not waiter.is_alive() and "error" not in got, got
            assert got["value"] > token and second.token == got["value"]
            # one Range for the predecessor, one finding none left, one that its key is still there
            assert ranges.calls["Range"] == 3, ranges.calls
            assert _keys(ep, b"jobs/") == [second.key]
            second.release()
        finally:
            keeper.stop()
        # a holder whose lease ends: the next one gets the lock once it expired
        lx, _ = a.grant(1)
        holder = Lock(a, "jobs2", lx)
        held = holder.acquire(timeout=10)
        with Lock(b, "jobs2", lb) as after:  # the context manager: acquire, then release
            assert after.token is not None and after.token > held
            assert a.time_to_live(lx).ttl == -1  # it waited for the lease to end
            assert _keys(ep, b"jobs2/") == [after.key]
            # a timeout: a clear error, and no key left behind
            lz, _ = a.grant(60)
            late = Lock(a, "jobs2", lz)
            with pytest.raises(LockTimeout) as err:
                late.acquire(timeout=0.5)
            assert err.value.code == "DEADLINE_EXCEEDED"
            assert err.value.message.startswith("lock jobs2 not acquired within 0.5 s"), err.value.message
            assert _keys(ep, b"jobs2/") == [after.key] and late.token is None
        assert _keys(ep, b"jobs2/") == []


def test_paxoskv_lock_and_elect_print_the_fencing_token(shared_cluster) -> None:
    eps = shared_cluster.endpoints
    ep, where = eps[0], ("--endpoints", ",".join(eps))
    ran = run_cli("lock", "clijob", *where, "--", "sh", "-c", 'echo "$PAXOSKV_LOCK_TOKEN $ETCD_LOCK_KEY"; exit 7')
    assert ran.returncode == 7, ran  # the command's
    key, token_line, seen = ran.stdout.splitlines()
    token = int(token_line.removeprefix("fencing token: "))
    assert key.startswith("clijob/") and seen == f"{token} {key}", ran.stdout
    assert _keys(ep, b"clijob/") == []  # released, its lease revoked
    with LeaseClient(eps) as c:
        held, _ = c.grant(60)
        lock = Lock(c, "clijob", held)
        assert lock.acquire(timeout=10) > token
        late = run_cli("lock", "clijob", "--acquire-timeout", "0.5", *where, "--", "true")
        assert late.returncode == 4 and late.stdout == "", late
        assert late.stderr.startswith("paxoskv lock: error: lock clijob not acquired within 0.5 s"), late.stderr
        assert _keys(ep, b"clijob/") == [lock.key]
        lock.release()
        procs = []
        try:
            observer = LineProcess([str(PAXOSKV), "elect", "-l", "clielect", *where])
            procs.append(observer)
            candidate = LineProcess([str(PAXOSKV), "elect", "clielect", "v1", *where])
            procs.append(candidate)
            key, value, token_line = candidate.line(), candidate.line(), candidate.line()
            token = int(token_line.removeprefix("fencing token: "))
            assert key.startswith("clielect/") and value == "v1"
            assert Election(c, "clielect").leader() == (b"v1", token)
            assert [observer.line(), observer.line()] == ["v1", f"fencing token: {token}"]
            rival = Election(c, "clielect", held)
            with pytest.raises(LockTimeout) as err:  # a campaign's timeout: its key deleted
                rival.campaign("v2", timeout=0.3)
            assert err.value.message.startswith("election clielect not won within 0.3 s"), err.value.message
            assert _keys(ep, b"clielect/") == [key.encode()] and rival.token is None
            assert candidate.interrupt() == 0
            with pytest.raises(NoLeader):  # it resigned (and revoked its lease)
                Election(c, "clielect").leader()
            assert observer.interrupt() == 0
        finally:
            for p in procs:
                p.stop()


def test_observe_reads_the_leader_again_when_its_watch_start_was_compacted(shared_cluster) -> None:
    """The revision after observe's read is compacted before its watch opens
    (forced here between the two): observe reads the leader again and goes
    on, rather than ending with the compaction's cancel."""
    import asyncio

    eps = shared_cluster.endpoints
    with LeaseClient(eps) as c:
        held, _ = c.grant(60)
        leader = Election(c, "obscompact", held)
        token = leader.campaign("v1", timeout=10)
        observer = Election(c, "obscompact")
        read = observer._first
        compacted = []

        def first_then_compact():  # noqa: ANN202
            kv, rev = read()
            if not compacted:
                with grpc.insecure_channel(eps[0]) as ch:
                    kv_stub = rpc_pb2_grpc.KVStub(ch)
                    for _ in range(3):
                        now = kv_stub.Put(R.PutRequest(key=b"/elsewhere", value=b"x"), timeout=5).header.revision
                    kv_stub.Compact(R.CompactionRequest(revision=now), timeout=5)
                compacted.append(now)
            return kv, rev

        observer._first = first_then_compact

        async def observe() -> list[tuple[bytes, int]]:
            seen = []
            async with __import__("contextlib").aclosing(observer.observe()) as it:
                async for item in it:
                    seen.append(item)
                    if len(seen) == 1:
                        await asyncio.to_thread(leader.proclaim, "v2")
                    if len(seen) == 2:
                        return seen
            return seen

        try:
            seen = asyncio.run(asyncio.wait_for(observe(), 20))
        finally:
            leader.resign()
        assert compacted, "the compaction was not forced"
        assert seen == [(b"v1", token), (b"v2", token)], seen
