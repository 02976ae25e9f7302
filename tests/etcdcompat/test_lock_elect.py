"""etcdctl's ``lock`` and ``elect`` with two contenders, run against a real
etcd 3.4 cluster and a paxoskv cluster in the same test, compared.

What must hold on both, and be the same: the first contender holds the lock
(prints its key, ``NAME/<lease>``); a second one registers its own key and
waits (it prints nothing while the first holds: checked once the second's
key is in the store, so the wait is real); when the first ends its session
(SIGINT: etcdctl revokes its lease) the second gets the lock, and its key's
create revision, the fencing token, is above the first's. ``elect -l``
observes the leader's proposal, then the next one's after the first leader
resigns. Every etcdctl process is stopped by PID.

Also paxoskv's own ``Election`` (paxoskv.client.election) against
``etcdctl elect`` on one name of a paxoskv cluster: one leader at a time,
a growing fencing token, and both observers see every leader and value.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import grpc
import pytest

from etcdctl_compat import etcdctl_binary
from line_process import LINE_S, LineProcess, in_thread
from paxoskv.client.election import Election, NoLeader, NotLeader
from paxoskv.client.lease import LeaseClient
from paxoskv.etcdpb import rpc_pb2, rpc_pb2_grpc
from paxoskv.util.wait import wait_until


class Etcdctl(LineProcess):
    """One long-running etcdctl process (SIGINT: etcdctl ends its session, its lease revoked)."""

    def __init__(self, endpoints: Sequence[str], *args: str) -> None:
        binary = etcdctl_binary()
        assert binary is not None
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL")}
        env["ETCDCTL_API"] = "3"
        super().__init__((binary, f"--endpoints={','.join(endpoints)}", *args), env)


@contextmanager
def _contenders() -> Iterator[list[Etcdctl]]:
    procs: list[Etcdctl] = []
    try:
        yield procs
    finally:
        for p in procs:
            p.stop()
        assert all(p.proc.poll() is not None for p in procs)


def _keys(endpoint: str, prefix: bytes) -> list[tuple[bytes, int]]:
    with grpc.insecure_channel(endpoint) as ch:
        end = prefix[:-1] + bytes([prefix[-1] + 1])
        resp = rpc_pb2_grpc.KVStub(ch).Range(rpc_pb2.RangeRequest(key=prefix, range_end=end), timeout=10)
    return sorted(((kv.key, kv.create_revision) for kv in resp.kvs), key=lambda k: k[1])


_LEASE = re.compile(r"/[0-9a-f]+$")


def _shape(line: str) -> str:
    return _LEASE.sub("/<lease>", line)


def _lock(endpoints: Sequence[str]) -> list[str]:
    """Two contenders for one lock; what they printed, in shape, in order."""
    seen: list[str] = []
    with _contenders() as procs:
        first = Etcdctl(endpoints, "lock", "mylock")
        procs.append(first)
        held = first.line()
        seen.append(f"first: {_shape(held)}")
        second = Etcdctl(endpoints, "lock", "mylock")
        procs.append(second)
        wait_until("the second contender's key", lambda: len(_keys(endpoints[0], b"mylock/")) == 2, LINE_S)
        keys = _keys(endpoints[0], b"mylock/")
        assert keys[0][0].decode() == held, (keys, held)
        assert second.printed_nothing_new(), f"the second contender got the lock while the first held it: {second.lines}"
        seen.append("second: waits")
        assert first.interrupt() in (0, 130, -signal.SIGINT), "etcdctl lock did not end on SIGINT"
        got = second.line()
        seen.append(f"second: {_shape(got)}")
        assert got == keys[1][0].decode() and keys[1][1] > keys[0][1], (got, keys)  # the fencing token grew
        wait_until("the first contender's key to go", lambda: [k for k, _ in _keys(endpoints[0], b"mylock/")] == [keys[1][0]],
                   LINE_S)
        second.interrupt()
    wait_until("every lock key to go", lambda: _keys(endpoints[0], b"mylock/") == [], LINE_S)
    return seen


def _elect(endpoints: Sequence[str]) -> list[str]:
    """An observer (``elect -l``) and two candidates; what was printed, in shape."""
    seen: list[str] = []
    with _contenders() as procs:
        observer = Etcdctl(endpoints, "elect", "-l", "myelection")
        procs.append(observer)
        p1 = Etcdctl(endpoints, "elect", "myelection", "p1")
        procs.append(p1)
        seen += [f"p1: {_shape(p1.line())}", f"p1: {p1.line()}"]
        seen += [f"observer: {_shape(observer.line())}", f"observer: {observer.line()}"]
        p2 = Etcdctl(endpoints, "elect", "myelection", "p2")
        procs.append(p2)
        wait_until("the second candidate's key", lambda: len(_keys(endpoints[0], b"myelection/")) == 2, LINE_S)
        assert p2.printed_nothing_new(), f"a second leader while the first leads: {p2.lines}"
        p1.interrupt()
        seen += [f"p2: {_shape(p2.line())}", f"p2: {p2.line()}"]
        seen += [f"observer: {_shape(observer.line())}", f"observer: {observer.line()}"]
        p2.interrupt()
    return seen


def test_lock_and_elect_with_two_contenders_as_etcd(etcd_clusters, paxoskv_clusters) -> None:
    (etcd,) = etcd_clusters(1)
    paxos = paxoskv_clusters("lock")
    for run in (_lock, _elect):
        on_etcd, on_paxoskv = run(etcd.endpoints), run(paxos.endpoints)
        print(f"{run.__name__}: etcd {on_etcd}\n{run.__name__}: paxoskv {on_paxoskv}")
        assert on_paxoskv == on_etcd


def _observe(election: Election, want: int) -> tuple[threading.Thread, list[tuple[bytes, int]]]:
    """Our ``observe()`` in a thread of its own, until ``want`` leaderships were seen."""
    seen: list[tuple[bytes, int]] = []

    async def run() -> None:
        async for leader in election.observe():
            seen.append(leader)
            if len(seen) >= want:
                return

    t = threading.Thread(target=lambda: asyncio.run(run()), daemon=True)
    t.start()
    return t, seen


def test_our_election_and_etcdctl_elect_contend_on_one_name(paxoskv_clusters) -> None:
    """paxoskv's Election and ``etcdctl elect`` on one name of a paxoskv
    cluster: one leader at a time, the fencing token grows, and both
    observers (ours and ``elect -l``) see every leader and value."""
    eps = paxoskv_clusters("elect-py").endpoints
    with LeaseClient(eps) as c, _contenders() as procs:
        watcher = Etcdctl(eps, "elect", "-l", "shared")
        procs.append(watcher)
        observer, observed = _observe(Election(c, "shared"), 4)
        p1 = Etcdctl(eps, "elect", "shared", "p1")
        procs.append(p1)
        k1 = p1.line()
        assert p1.line() == "p1"
        lease, ttl = c.grant(10)
        keeper = c.keep_alive(lease, ttl)
        try:
            ours = Election(c, "shared", lease)
            campaign, got = in_thread(lambda: ours.campaign("py", timeout=60))
            wait_until("our candidate's key", lambda: len(_keys(eps[0], b"shared/")) == 2, LINE_S)
            (_, r1), (our_key, _) = _keys(eps[0], b"shared/")
            assert campaign.is_alive() and not got, got  # etcdctl leads: we wait
            assert ours.leader() == (b"p1", r1) and our_key == ours.key
            p1.interrupt()
            campaign.join(LINE_S)
            assert "value" in got, got
            token = got["value"]
            assert token > r1 and ours.leader() == (b"py", token)
            p2 = Etcdctl(eps, "elect", "shared", "p2")
            procs.append(p2)
            wait_until("etcdctl's second candidate's key", lambda: len(_keys(eps[0], b"shared/")) == 2, LINE_S)
            ours.proclaim("py2")
            assert ours.leader() == (b"py2", token)
            assert p2.printed_nothing_new(), f"etcdctl leads while we do: {p2.lines}"
            ours.resign()
            k2 = p2.line()
            assert p2.line() == "p2"
            with pytest.raises(NotLeader):
                ours.proclaim("late")
            r2 = _keys(eps[0], b"shared/")[0][1]
            assert k2.encode() == _keys(eps[0], b"shared/")[0][0] and r2 > token
        finally:
            keeper.stop()
        observer.join(LINE_S)
        assert observed == [(b"p1", r1), (b"py", token), (b"py2", token), (b"p2", r2)]
        lines = [watcher.line() for _ in range(8)]
        assert lines == [k1, "p1", our_key.decode(), "py", our_key.decode(), "py2", k2, "p2"]
        p2.interrupt()
        with pytest.raises(NoLeader):
            wait_until("the last leader to go", lambda: ours.leader() is None, LINE_S)

