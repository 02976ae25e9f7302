"""The Python lease client, its try-lock with a fencing token, and
``paxoskv lease`` against a real 3-node cluster (election 200 ms: a minimum
TTL of 1 s)."""

from __future__ import annotations

import time

import grpc

from integration_cluster import run_cli
from paxoskv.client.lease import LeaseClient, LeaseError, Lock
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
