"""etcd watches on a real 3-node cluster: the guarantees etcd's robustness
suite checks (tests/robustness/validate/watch.go) while writers write and
the leader is killed and restarted, and the memory bound of many watches
and of a watcher that never reads."""

from __future__ import annotations

import asyncio
import os
import random
import selectors
import signal
import subprocess
import time
from collections.abc import Iterator

import grpc
import pytest

from integration_cluster import PAXOSKV, LocalCluster, run_cli
from paxoskv.client.etcd_watch import WatchBatch, watch
from paxoskv.etcdpb import kv_pb2 as mvccpb
from paxoskv.etcdpb import rpc_pb2, rpc_pb2_grpc
from paxoskv.util.wait import wait_until_async

R = rpc_pb2
PREFIX = b"/k/"
END = b"/k0"


async def _writer(cluster: LocalCluster, stop: asyncio.Event, seed: int, sent: list[float]) -> None:
    """Puts, deletes and two-key txns on random members, retried on failure
    (a write whose answer was lost may apply: the history is read at the end)."""
    rng = random.Random(seed)
    channels = [grpc.aio.insecure_channel(ep) for ep in cluster.endpoints]
    try:
        while not stop.is_set():
            kv = rpc_pb2_grpc.KVStub(rng.choice(channels))
            k = PREFIX + b"%d" % rng.randrange(8)
            roll = rng.random()
            t0 = time.monotonic()
            try:
                if roll < 0.15:
                    await kv.DeleteRange(R.DeleteRangeRequest(key=k), timeout=2)
                elif roll < 0.35:
                    ops = [R.RequestOp(request_put=R.PutRequest(key=PREFIX + b"t%d" % i, value=b"%d" % rng.randrange(99)))
                           for i in range(rng.randrange(2, 4))]
                    await kv.Txn(R.TxnRequest(success=ops), timeout=2)
                else:
                    await kv.Put(R.PutRequest(key=k, value=b"v%d" % rng.randrange(1000)), timeout=2)
                sent.append(time.monotonic() - t0)
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.02)  # a member down or electing: try another
    finally:
        for ch in channels:
            await ch.close(None)


async def _range(channels: list[grpc.aio.Channel], req: R.RangeRequest, timeout_s: float = 60.0) -> R.RangeResponse:
    """A Range on the first member that answers (a restarted one may still
    be catching up), retried until ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        for ch in channels:
            try:
                return await rpc_pb2_grpc.KVStub(ch).Range(req, timeout=5)
            except grpc.aio.AioRpcError:
                if time.monotonic() > deadline:
                    raise


async def _history(endpoints: list[str], first: int) -> tuple[int, dict[int, list[tuple[int, bytes, bytes]]]]:
    """The current revision, and the events of the prefix at every revision
    since ``first``, rebuilt from Range at each revision: (type, key, value)
    in key order (the order etcd writes a revision's events in, for the
    writes above: one key, or a txn's keys in order)."""
    out: dict[int, list[tuple[int, bytes, bytes]]] = {}
    channels = [grpc.aio.insecure_channel(ep) for ep in endpoints]
    try:
        last = (await _range(channels, R.RangeRequest(key=b"/none"))).header.revision
        prev = {x.key: x for x in (await _range(channels, R.RangeRequest(key=PREFIX, range_end=END, revision=first - 1))).kvs}
        for rev in range(first, last + 1):
            now = {x.key: x for x in (await _range(channels, R.RangeRequest(key=PREFIX, range_end=END, revision=rev))).kvs}
            evs = [(mvccpb.Event.PUT, k, x.value) for k, x in now.items() if x.mod_revision == rev]
            evs += [(mvccpb.Event.DELETE, k, b"") for k in prev if k not in now]
            if evs:
                out[rev] = sorted(evs, key=lambda e: e[1]) if len(evs) > 1 else evs
            prev = now
    finally:
        for ch in channels:
            await ch.close()
    return last, out


def _check(name: str, batches: list[WatchBatch], history: dict[int, list], first: int, last: int) -> int:
    """etcd's watch validation: ordered, unique, atomic, reliable (no gap
    from ``first`` to ``last`` compared with the history). Returns the count."""
    seen: list[tuple[int, int, bytes, bytes]] = []
    by_rev: dict[int, int] = {}
    for i, b in enumerate(batches):
        for e in b.events:
            ev = (e.mod_revision, mvccpb.Event.DELETE if e.type == "DELETE" else mvccpb.Event.PUT, e.key, e.value)
            seen.append(ev)
            assert by_rev.setdefault(e.mod_revision, i) == i, f"{name}: revision {e.mod_revision} split over batches"
    revs = [ev[0] for ev in seen]
    assert revs == sorted(revs), f"{name}: events out of revision order"
    assert len({(r, k) for r, _, k, _ in seen}) == len(seen), f"{name}: an event twice"
    got = [ev for ev in seen if first <= ev[0] <= last]
    got_by_rev: dict[int, list] = {}
    for r, t, k, v in got:
        got_by_rev.setdefault(r, []).append((t, k, v))
    want = {r: evs for r, evs in history.items() if first <= r <= last}
    assert {r: sorted(e, key=lambda x: x[1]) for r, e in got_by_rev.items()} == want, f"{name}: differs from the history"
    return len(got)


async def _collect(endpoints: list[str], start: int, out: list[WatchBatch], done: asyncio.Event, target: list[int]) -> None:
    async for b in watch(endpoints, PREFIX, prefix=True, start_revision=start, reconnect_s=30.0):
        out.append(b)
        if target and b.events and b.events[-1].mod_revision >= target[0]:
            done.set()


async def _progress_watcher(endpoint: str, stop: asyncio.Event, log: list[tuple[str, int]]) -> None:
    """A raw stream that asks for progress after every response; logs
    ("event", rev) and ("progress", rev) in arrival order. Ends when its
    member goes away."""
    async with grpc.aio.insecure_channel(endpoint) as ch:
        call = rpc_pb2_grpc.WatchStub(ch).Watch()
        await call.write(R.WatchRequest(create_request=R.WatchCreateRequest(key=PREFIX, range_end=END, start_revision=1)))
        try:
            async for resp in call:
                if resp.watch_id == -1 and not resp.created:
                    log.append(("progress", resp.header.revision))
                for e in resp.events:
                    log.append(("event", e.kv.mod_revision))
                if stop.is_set():
                    break
                if resp.events:  # not after a progress answer: no ping-pong
                    await call.write(R.WatchRequest(progress_request=R.WatchProgressRequest()))
        except grpc.aio.AioRpcError:
            return
        finally:
            call.cancel()


def _check_progress(log: list[tuple[str, int]], history: dict[int, list]) -> int:
    """Progress never lies: after a progress at R, no event <= R comes, and
    every event <= R came before it."""
    received: set[int] = set()
    promised = 0
    progresses = 0
    for kind, rev in log:
        if kind == "event":
            assert rev > promised, f"event {rev} after a progress at {promised}"
            received.add(rev)
        else:
            progresses += 1
            promised = max(promised, rev)
            missing = [r for r in history if r <= rev and r not in received]
            assert not missing, f"progress {rev} before events {missing[:5]}"
    return progresses


def _last(batches: list[WatchBatch]) -> int:
    return max((e.mod_revision for b in batches for e in b.events), default=0)


def test_watches_stay_exact_through_leader_kills_while_writers_write(cluster: LocalCluster) -> None:
    async def run() -> None:
        stop = asyncio.Event()
        latencies: list[float] = []
        eps = cluster.endpoints
        orders = [eps, eps[1:] + eps[:1], eps[2:] + eps[:2]]
        batches: list[list[WatchBatch]] = [[] for _ in orders]
        target: list[int] = []
        dones = [asyncio.Event() for _ in orders]
        watchers = [asyncio.create_task(_collect(o, 1, b, d, target)) for o, b, d in zip(orders, batches, dones)]
        plog: list[tuple[str, int]] = []
        follower = next(i for i in cluster.nodes if i != cluster.leader())
        progress = asyncio.create_task(_progress_watcher(cluster.endpoint(follower), stop, plog))
        writers = [asyncio.create_task(_writer(cluster, stop, seed, latencies)) for seed in range(3)]
        await wait_until_async("writes", lambda: len(latencies) > 50, 30)
        for _ in range(2):
            leader = await asyncio.to_thread(cluster.wait_leader)
            before = len(latencies)
            await asyncio.to_thread(cluster.kill, leader)
            await asyncio.to_thread(cluster.wait_leader, [i for i in cluster.nodes if i != leader])
            await wait_until_async("writes under the new leader", lambda: len(latencies) > before + 30, 30)
            await asyncio.to_thread(cluster.start, leader)
            await wait_until_async("writes after the restart", lambda: len(latencies) > before + 60, 30)
        stop.set()
        await asyncio.gather(*writers)
        last, history = await _history(eps, 2)
        target.append(last)
        assert history, "nothing was written"
        final = max(history)
        target[0] = final
        for i, d in enumerate(dones):
            if _last(batches[i]) < final:
                await asyncio.wait_for(d.wait(), 60)
        for w in watchers:
            w.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
        counts = [_check(f"watcher {i}", b, history, 2, final) for i, b in enumerate(batches)]
        # resumable: a new watch from the middle + 1 sees exactly the rest
        mid = sorted(history)[len(history) // 2]
        rest: list[WatchBatch] = []
        done = asyncio.Event()
        t = asyncio.create_task(_collect([eps[2]], mid + 1, rest, done, [final]))
        await asyncio.wait_for(done.wait(), 60)
        t.cancel()
        await asyncio.gather(t, return_exceptions=True)
        _check("resumed", rest, {r: e for r, e in history.items() if r > mid}, mid + 1, final)
        assert min(e.mod_revision for b in rest for e in b.events) > mid
        progress.cancel()
        await asyncio.gather(progress, return_exceptions=True)
        progresses = _check_progress(plog, history)
        print(f"revisions {final}, events per watcher {counts}, progress answers {progresses}, "
              f"writes {len(latencies)}")
        assert progresses > 0

    asyncio.run(run())


@pytest.fixture
def calm_cluster(tmp_path) -> Iterator[LocalCluster]:
    """Timed as etcd's defaults (election 1 s): 2,000 large puts on a busy
    machine should not be interrupted by elections."""
    c = LocalCluster(tmp_path / "calm", heartbeat_ms=100, election_ms=1000)
    try:
        c.start_all()
        yield c
    finally:
        c.close()


@pytest.mark.timeout(900)
def test_ten_thousand_watches_and_a_watcher_that_never_reads_keep_the_node_bounded(calm_cluster: LocalCluster) -> None:
    """Two followers apply the same writes; one serves 10,000 watches on one
    stream and a watcher that never reads 32 MiB of events. The difference
    of their RSS growth is what the watches cost."""
    cluster = calm_cluster
    leader = cluster.leader()
    watched, plain = (i for i in cluster.nodes if i != leader)
    ep = cluster.endpoint(watched)
    n = 2_000
    value = b"x" * (16 << 10)

    async def run() -> None:
        base = {i: cluster.rss_bytes(i) for i in (watched, plain)}
        async with grpc.aio.insecure_channel(ep) as ch, grpc.aio.insecure_channel(ep) as sch, \
                grpc.aio.insecure_channel(cluster.endpoint(leader)) as wch:
            many = rpc_pb2_grpc.WatchStub(ch).Watch()
            for i in range(10_000):
                await many.write(R.WatchRequest(create_request=R.WatchCreateRequest(key=b"/many/%05d" % i)))
            created = 0
            async for resp in many:
                assert resp.created and not resp.canceled and resp.watch_id == created
                created += 1
                if created == 10_000:
                    break
            with_watches = cluster.rss_bytes(watched)
            slow = rpc_pb2_grpc.WatchStub(sch).Watch()
            await slow.write(R.WatchRequest(create_request=R.WatchCreateRequest(key=b"/big/", range_end=b"/big0")))
            assert (await slow.read()).created
            kv = rpc_pb2_grpc.KVStub(wch)
            for i in range(n):
                await kv.Put(R.PutRequest(key=b"/big/%d" % (i % 50), value=value), timeout=10)
                if i % 500 == 0:
                    await kv.Put(R.PutRequest(key=b"/many/%05d" % i, value=b"m"), timeout=10)
            applied = cluster.status(leader).applied_index
            for i in (watched, plain):
                await asyncio.to_thread(cluster.wait_applied, i, applied, 60)
            after = {i: cluster.rss_bytes(i) for i in (watched, plain)}
            grow = {i: after[i] - base[i] for i in after}
            print(f"RSS of the follower with the watches: {base[watched] >> 20} MiB at start, "
                  f"{with_watches >> 20} MiB with 10,000 watches, {after[watched] >> 20} MiB after {n} x 16 KiB "
                  f"puts to a watcher that never reads; the other follower: {base[plain] >> 20} -> "
                  f"{after[plain] >> 20} MiB")
            assert with_watches - base[watched] < 64 << 20
            # what the silent watcher added, over what the other follower grew by: its 4 MiB outbox
            # and gRPC's buffers, not the 32 MiB it did not read
            assert grow[watched] - (with_watches - base[watched]) - grow[plain] < 16 << 20
            # the 10,000-watch stream got its 4 events
            got = 0
            async for resp in many:
                got += len(resp.events)
                if got == 4:
                    break
            # the slow reader, reading at last, gets every event once, in order
            revs: list[int] = []
            while len(revs) < n:
                resp = await slow.read()
                assert resp is not grpc.aio.EOF
                revs += [e.kv.mod_revision for e in resp.events]
            assert len(revs) == n and revs == sorted(revs) and len(set(revs)) == n
            slow.cancel()
            many.cancel()

    asyncio.run(run())


def _lines(proc: subprocess.Popen, n: int, timeout_s: float) -> list[bytes]:
    """The first ``n`` lines the process prints, read until a deadline."""
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    buf = b""
    deadline = time.monotonic() + timeout_s
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while buf.count(b"\n") < n and time.monotonic() < deadline:
            if sel.select(timeout=max(0.0, deadline - time.monotonic())):
                chunk = proc.stdout.read()
                if not chunk:
                    break
                buf += chunk
    return buf.split(b"\n")[:n]


def test_the_watch_command_prints_history_and_new_events_and_exits_5_below_the_compaction(cluster: LocalCluster) -> None:
    with grpc.insecure_channel(cluster.endpoints[0]) as ch:
        kv = rpc_pb2_grpc.KVStub(ch)
        kv.Put(R.PutRequest(key=b"/c/a", value=b"1"), timeout=10)
        kv.Put(R.PutRequest(key=b"/c/a", value=b"2"), timeout=10)
        proc = subprocess.Popen([str(PAXOSKV), "watch", "/c/", "--prefix", "--rev", "2", "--prev-kv",
                                 "--endpoints", ",".join(cluster.endpoints)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            first = _lines(proc, 8, 30)
            kv.DeleteRange(R.DeleteRangeRequest(key=b"/c/a"), timeout=10)
            later = _lines(proc, 5, 30)
        finally:
            os.kill(proc.pid, signal.SIGINT)
            proc.wait(timeout=10)
            proc.stdout.close()
            proc.stderr.close()
        assert first == [b"PUT", b"/c/a", b"1", b"PUT", b"/c/a", b"1", b"/c/a", b"2"]
        assert later == [b"DELETE", b"/c/a", b"2", b"/c/a", b""]
        assert proc.returncode == 0, proc.returncode  # Ctrl-C ends it, at once and cleanly
        kv.Compact(R.CompactionRequest(revision=4), timeout=10)
    r = run_cli("watch", "/c/a", "--rev", "2", "--endpoints", cluster.endpoints[1])
    assert r.returncode == 5 and "compacted" in r.stderr, r


def test_a_hasleader_stream_ends_with_no_leader_and_a_new_one_is_refused(calm_cluster: LocalCluster) -> None:
    cluster = calm_cluster  # a leader change under load would refuse the first stream
    leader = cluster.wait_leader()
    alone = next(i for i in cluster.nodes if i != leader)
    md = (("hasleader", "true"),)

    async def run() -> None:
        async with grpc.aio.insecure_channel(cluster.endpoint(alone)) as ch:
            stub = rpc_pb2_grpc.WatchStub(ch)
            strict, lax = stub.Watch(metadata=md), stub.Watch()
            for call in (strict, lax):
                await call.write(R.WatchRequest(create_request=R.WatchCreateRequest(key=b"k")))
                assert (await call.read()).created
            for i in cluster.nodes:
                if i != alone:
                    await asyncio.to_thread(cluster.kill, i)
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                await asyncio.wait_for(strict.read(), 30)
            assert (ended.value.code(), ended.value.details()) == (grpc.StatusCode.UNAVAILABLE, "etcdserver: no leader")
            # refused at open, before it reads a request: a write may race
            # the refusal and fail as the call is over, so only read
            fresh = stub.Watch(metadata=md)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await asyncio.wait_for(fresh.read(), 30)
            assert (refused.value.code(), refused.value.details()) == (grpc.StatusCode.UNAVAILABLE, "etcdserver: no leader")
            # without hasleader the stream stays, and answers
            await lax.write(R.WatchRequest(progress_request=R.WatchProgressRequest()))
            resp = await asyncio.wait_for(lax.read(), 30)
            assert resp.watch_id == -1 and resp.header.revision >= 1
            lax.cancel()

    asyncio.run(run())


def test_a_progress_notify_watch_hears_the_revision_at_the_serve_flags_interval(tmp_path) -> None:
    """``--experimental-watch-progress-notify-interval 200ms`` (etcd's flag;
    its default is 10 minutes): a progress_notify watch with no events gets
    ``{watch_id, header.revision}`` at that interval, again after an event,
    and a watch without progress_notify gets none."""
    c = LocalCluster(tmp_path / "c", size=1, extra_args=("--experimental-watch-progress-notify-interval", "200ms"))
    try:
        c.start_all()
        with grpc.insecure_channel(c.endpoint(1)) as ch:
            kv = rpc_pb2_grpc.KVStub(ch)
            rev = kv.Put(R.PutRequest(key=b"/p", value=b"1"), timeout=10).header.revision
            creates = [R.WatchRequest(create_request=R.WatchCreateRequest(key=k, watch_id=i, progress_notify=p))
                       for k, i, p in ((b"/p", 1, True), (b"/q", 2, False))]
            call = rpc_pb2_grpc.WatchStub(ch).Watch(iter(creates), timeout=30)
            notified: list[tuple[float, int]] = []
            events = 0
            for resp in call:
                assert resp.watch_id in (1, 2) and (resp.watch_id == 1 or resp.created), resp
                if resp.created:
                    continue
                if resp.events:
                    events += 1
                    continue
                notified.append((time.monotonic(), resp.header.revision))
                if len(notified) == 3:
                    kv.Put(R.PutRequest(key=b"/p", value=b"2"), timeout=10)
                if len(notified) == 5:
                    break
            call.cancel()
    finally:
        c.close()
    assert events == 1
    assert [r for _, r in notified] == [rev, rev, rev, rev + 1, rev + 1]
    gaps = [b - a for (a, _), (b, _) in zip(notified, notified[1:])]
    assert all(g >= 0.15 for g in gaps), gaps  # 200 ms of ticks (never made up early)
