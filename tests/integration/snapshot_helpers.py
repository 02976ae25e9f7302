"""Helpers of the compaction and snapshot tests: bulk writers, state
comparison, log scanning and the disk-size figures.

Rules:

- Everything talks to real ``paxoskv serve`` processes through the public
  gRPC API (``KV.Batch``, ``Maintenance.Status``), never through internals,
  except ``stored_state`` which opens a STOPPED node's data directory the way
  the node itself does on start.
- Writers are exactly-once clients: each lane is one client session
  (``client_id``), its sequence grows by one per op, and a lane has at most
  one ``Batch`` in flight, so its ops reach the log in sequence order. An op
  that fails (no leader, leader changed, deadline) is sent again with a NEW
  sequence: a put of the same value to the same key is idempotent, so a
  duplicate only costs a log entry, and an old sequence is never reused (it
  would be refused as stale once a later one was applied).
- Every value a writer puts is ``VALUE_BYTES`` long and starts with the op's
  number, so the final map's size is known without reading it back, and every
  key's value is checked against the nodes' answers, never trusted.
- Nothing sleeps to synchronise; waits poll against a deadline
  (``paxoskv.util.wait.wait_until``).

Theory of operation: a ``BulkWriter`` runs ``lanes`` threads, each a loop of
synchronous ``Batch`` calls to the current leader (gRPC releases the GIL while
it waits), taking op numbers from a shared counter until ``total`` ops were
acknowledged or ``stop()`` was called. The leader is found from the nodes'
status and looked up again after a failure.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import random
import re
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import grpc

from integration_cluster import LocalCluster
from paxoskv.launch import node_status
from paxoskv.util.wait import WaitTimeout, wait_until
from paxoskv.v1 import kv_pb2, kv_pb2_grpc
from paxoskv.wire import MESSAGE_BYTES_MAX

CHANNEL_OPTIONS = (
    ("grpc.max_receive_message_length", MESSAGE_BYTES_MAX),
    ("grpc.max_send_message_length", MESSAGE_BYTES_MAX),
    ("grpc.use_local_subchannel_pool", 1),
)

_CODE_NAMES = {sc.value[0]: sc.name for sc in grpc.StatusCode}
_BAD_LOG = re.compile(r"Traceback|AssertionError|CRITICAL")


def key_of(i: int) -> bytes:
    return b"k%06d" % i


def value_of(op: int, value_bytes: int, rng: random.Random) -> bytes:
    """``value_bytes`` bytes: the op number, then incompressible filler (LevelDB
    compresses with snappy: a repetitive value would understate the sizes)."""
    head = b"%d:" % op
    assert len(head) < value_bytes, (op, value_bytes)
    return head + rng.randbytes(value_bytes - len(head))


def put_op(client_id: str, sequence: int, key: bytes, value: bytes) -> kv_pb2.RequestOp:
    return kv_pb2.RequestOp(
        put=kv_pb2.PutRequest(
            request=kv_pb2.RequestHeader(client_id=client_id, sequence=sequence),
            key=key,
            value=value,
        )
    )


def find_leader(cluster: LocalCluster, among: Iterable[int] | None = None) -> int | None:
    """The leader some running node names, if that node says it leads."""
    ids = [i for i in (among or cluster.nodes) if cluster.nodes[i].running]
    for i in ids:
        st = cluster.status(i)
        if st is not None and st.leader_id and st.leader_id in ids:
            lst = cluster.status(st.leader_id)
            if lst is not None and lst.role == "leader":
                return st.leader_id
    return None


@dataclass
class WriteStats:
    acked: int = 0  # ops answered OK
    resent: int = 0  # ops sent again after a failure
    batches: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0
    command_bytes: int = 0  # encoded Command bytes of the acked ops

    @property
    def ops_per_s(self) -> float:
        return self.acked / self.elapsed_s if self.elapsed_s > 0 else 0.0


class BulkWriter:
    """``total`` puts (or until ``stop()``) over ``keys`` keys, ``lanes``
    concurrent sessions of ``batch_ops``-op ``KV.Batch`` calls, sent to the
    leader of ``among`` (default: every node)."""

    def __init__(
        self,
        cluster: LocalCluster,
        *,
        total: int | None,
        keys: int,
        value_bytes: int,
        lanes: int = 4,
        batch_ops: int = 500,
        seed: int = 1,
        client_prefix: str = "bulk",
        among: list[int] | None = None,
        first_op: int = 0,
        call_timeout_s: float = 30.0,
        give_up_s: float = 60.0,
    ) -> None:
        self.cluster = cluster
        self.total = total
        self.keys = keys
        self.value_bytes = value_bytes
        self.lanes = lanes
        self.batch_ops = batch_ops
        self.seed = seed
        self.client_prefix = client_prefix
        self.among = among
        self.call_timeout_s = call_timeout_s
        self.give_up_s = give_up_s
        self.stats = WriteStats()
        self._lock = threading.Lock()
        self._next_op = first_op
        self._first_op = first_op
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._failure: BaseException | None = None
        self._leader: int | None = None
        self._started = 0.0

    # ---- control -------------------------------------------------------------------

    def run(self) -> WriteStats:
        """Write until done, in the calling thread's time; raise a lane's failure."""
        self.start()
        return self.join()

    def start(self) -> None:
        self._started = time.monotonic()
        for lane in range(self.lanes):
            t = threading.Thread(
                target=self._lane_main, args=(lane,), daemon=True, name=f"lane{lane}"
            )
            self._threads.append(t)
            t.start()

    def stop(self) -> WriteStats:
        self._stop.set()
        return self.join()

    def join(self) -> WriteStats:
        for t in self._threads:
            t.join()
        self.stats.elapsed_s = time.monotonic() - self._started
        if self._failure is not None:
            raise AssertionError(f"writer failed: {self._failure!r}") from self._failure
        return self.stats

    @property
    def acked(self) -> int:
        with self._lock:
            return self.stats.acked

    @property
    def next_op(self) -> int:
        """The first op number this writer has not used."""
        with self._lock:
            return self._next_op

    @property
    def failed(self) -> BaseException | None:
        return self._failure

    # ---- lanes ---------------------------------------------------------------------

    def _take(self, n: int) -> list[int]:
        with self._lock:
            if self.total is not None:
                n = min(n, self._first_op + self.total - self._next_op)
            ops = list(range(self._next_op, self._next_op + max(n, 0)))
            self._next_op += len(ops)
            return ops

    def _leader_endpoint(self) -> str:
        lid = self._leader
        if lid is None or not self.cluster.nodes[lid].running:
            lid = wait_until(
                "a leader for the writer",
                lambda: find_leader(self.cluster, self.among),
                self.give_up_s,
            )
            self._leader = lid
        return self.cluster.endpoint(lid)

    def _lane_main(self, lane: int) -> None:
        try:
            self._lane(lane)
        except BaseException as exc:  # noqa: BLE001 - reported by join()
            self._failure = exc
            self._stop.set()

    def _lane(self, lane: int) -> None:
        rng = random.Random(self.seed * 1_000_003 + lane)
        client_id = f"{self.client_prefix}-{lane}"
        sequence = 0
        pending: list[int] = []  # op numbers to (re)send
        channels: dict[str, grpc.Channel] = {}
        failing_since: float | None = None
        try:
            while not self._stop.is_set():
                if not pending:
                    pending = self._take(self.batch_ops)
                    if not pending:
                        return
                ep = self._leader_endpoint()
                ch = channels.get(ep)
                if ch is None:
                    ch = channels[ep] = grpc.insecure_channel(ep, options=CHANNEL_OPTIONS)
                stub = kv_pb2_grpc.KVStub(ch)
                req = kv_pb2.BatchRequest()
                sizes = []
                for op in pending:
                    sequence += 1
                    r = put_op(
                        client_id,
                        sequence,
                        key_of(op % self.keys),
                        value_of(op, self.value_bytes, rng),
                    )
                    req.ops.append(r)
                    sizes.append(
                        kv_pb2.Command(
                            client_id=client_id,
                            sequence=sequence,
                            put=kv_pb2.PutOp(key=r.put.key, value=r.put.value),
                        ).ByteSize()
                    )
                try:
                    resp = stub.Batch(req, timeout=self.call_timeout_s)
                    codes = [res.code for res in resp.results]
                    errors = [res.error for res in resp.results]
                except grpc.RpcError as exc:
                    codes = [exc.code().value[0]] * len(pending)
                    errors = [f"{exc.code().name}: {exc.details()}"] * len(pending)
                failed = [op for op, code in zip(pending, codes) if code != 0]
                with self._lock:
                    self.stats.batches += 1
                    self.stats.acked += len(pending) - len(failed)
                    self.stats.command_bytes += sum(s for s, c in zip(sizes, codes) if c == 0)
                    self.stats.resent += len(failed)
                    for code in codes:
                        if code != 0:
                            name = _CODE_NAMES.get(code, str(code))
                            self.stats.errors[name] = self.stats.errors.get(name, 0) + 1
                if failed:
                    self._leader = None  # look it up again
                    now = time.monotonic()
                    failing_since = failing_since or now
                    if now - failing_since > self.give_up_s:
                        raise AssertionError(
                            f"lane {lane}: writes failing for {self.give_up_s}s: {errors[:3]}"
                        )
                else:
                    failing_since = None
                pending = failed
        finally:
            for ch in channels.values():
                ch.close()


# ---- the cluster -------------------------------------------------------------------

# ---- state comparison ---------------------------------------------------------------


def read_all(
    endpoint: str, keys: list[bytes], *, serializable: bool = True, timeout_s: float = 30.0
) -> dict[bytes, bytes | None]:
    """Every key's value on ``endpoint`` (one Batch of Gets per 1,000 keys)."""
    out: dict[bytes, bytes | None] = {}
    with grpc.insecure_channel(endpoint, options=CHANNEL_OPTIONS) as ch:
        stub = kv_pb2_grpc.KVStub(ch)
        for start in range(0, len(keys), 1000):
            part = keys[start : start + 1000]
            req = kv_pb2.BatchRequest(
                ops=[
                    kv_pb2.RequestOp(get=kv_pb2.GetRequest(key=k, serializable=serializable))
                    for k in part
                ]
            )
            resp = stub.Batch(req, timeout=timeout_s)
            for k, res in zip(part, resp.results):
                assert res.code == 0, f"get {k!r} on {endpoint}: {res.code} {res.error}"
                out[k] = res.get.value if res.get.found else None
    return out


def wait_same_applied(cluster: LocalCluster, ids: list[int], timeout_s: float) -> int:
    """Wait until every node of ``ids`` has applied the same index, which is
    the leader's commit index; that index."""

    def probe() -> int | None:
        sts = [cluster.status(i) for i in ids]
        if any(s is None for s in sts):
            return None
        applied = {s.applied_index for s in sts}
        commits = {s.commit_index for s in sts if s.role == "leader"}
        if len(applied) == 1 and commits == applied:
            return applied.pop()
        return None

    return wait_until(f"nodes {ids} to apply the same index", probe, timeout_s)


def wait_quiet_applied(cluster: LocalCluster, ids: list[int], quiet_s: float, timeout_s: float) -> int:
    """``wait_same_applied``, until that index stayed the same ``quiet_s``
    (auto-compaction commits a compaction a while after the last write)."""
    deadline = time.monotonic() + timeout_s
    index = wait_same_applied(cluster, ids, timeout_s)
    since = time.monotonic()
    while time.monotonic() - since < quiet_s:
        assert time.monotonic() < deadline, f"nodes {ids} kept applying for {timeout_s}s"
        time.sleep(0.2)  # polling interval of a deadline-bounded wait
        now = wait_same_applied(cluster, ids, max(1.0, deadline - time.monotonic()))
        if now != index:
            index, since = now, time.monotonic()
    return index


def bad_log_lines(cluster: LocalCluster, node_id: int) -> list[str]:
    """Lines of a node's log that show a crash or a broken invariant."""
    return [ln for ln in cluster.log_text(node_id).splitlines() if _BAD_LOG.search(ln)]


def staging_files(data_dir: pathlib.Path) -> list[str]:
    try:
        names = os.listdir(data_dir)
    except FileNotFoundError:
        return []
    return [n for n in names if n.startswith("snapshot-incoming-") and n.endswith(".tmp")]


def stored_state(cluster: LocalCluster, node_id: int):  # -> paxoskv.storage.base.LoadedState
    """The state a STOPPED node's data directory holds, opened as the node
    does on start (this raises if the store is damaged)."""
    from paxoskv.storage.leveldb import LevelDBStorage

    n = cluster.nodes[node_id]
    assert not n.running, f"node {node_id} is running"
    with LevelDBStorage.open(str(n.data_dir), node_id, cluster.cluster_id, create=False) as st:
        return st.load()


def count_in_log(
    cluster: LocalCluster, node_id: int, text: str, *, since_start: int | None = None
) -> int:
    """Occurrences of ``text`` in a node's log (only after its start number
    ``since_start`` when given)."""
    log = cluster.log_text(node_id)
    if since_start is not None:
        marker = f"=== start #{since_start} of node {node_id} ==="
        at = log.find(marker)
        log = log[at:] if at >= 0 else ""
    return log.count(text)


def status_or_fail(endpoint: str) -> kv_pb2.StatusResponse:
    st = node_status(endpoint, timeout_s=5.0)
    assert st is not None, f"no status from {endpoint}"
    return st


@contextlib.contextmanager
def running(cluster: LocalCluster) -> Iterator[LocalCluster]:
    """Close ``cluster`` at the end (every process by PID); print the nodes'
    log tails when the body fails."""
    try:
        yield cluster
    except BaseException:
        print(cluster.logs())
        raise
    finally:
        cluster.close()


def start_and_time_first_read(
    cluster: LocalCluster, node_id: int, key: bytes, timeout_s: float = 30.0
) -> tuple[float, kv_pb2.GetResponse]:
    """Start a stopped node; the seconds from just before its process is
    spawned until it answers a linearizable Get of ``key``, and the answer."""
    n = cluster.nodes[node_id]
    started = time.monotonic()
    cluster.start(node_id, wait=False)

    def probe() -> tuple[float, kv_pb2.GetResponse] | None:
        if not n.running:
            raise AssertionError(f"node {node_id} exited:\n{cluster.log_text(node_id)[-3000:]}")
        # A fresh channel per try: a channel that failed to connect backs off
        # for a second before trying again, which would be measured too.
        with grpc.insecure_channel(n.endpoint) as ch:
            try:
                resp = kv_pb2_grpc.KVStub(ch).Get(kv_pb2.GetRequest(key=key), timeout=1.0)
            except grpc.RpcError:
                return None
        return time.monotonic() - started, resp

    return wait_until(
        f"node {node_id} to answer a linearizable get", probe, timeout_s, interval_s=0.005
    )


def settled_sizes(cluster: LocalCluster, ids: list[int], timeout_s: float = 20.0) -> dict[int, int]:
    """Each node's data directory size once it stopped changing (the reclaim
    of compacted entries runs in the background): two samples 0.5 s apart
    agree, or the last samples at the deadline."""
    from paxoskv.storage.leveldb import data_dir_bytes

    last: dict[int, int] = {}

    def probe() -> dict[int, int] | None:
        nonlocal last
        now = {i: data_dir_bytes(cluster.nodes[i].data_dir) for i in ids}
        same = now == last
        last = now
        return now if same else None

    try:
        return wait_until("data directories to stop changing", probe, timeout_s, interval_s=0.5)
    except WaitTimeout:
        return last


def live_keys(state) -> dict[bytes, bytes]:  # state: LoadedState
    """The live map of a loaded store (from its MVCC history rows)."""
    from paxoskv.kv.mvcc import decode_row

    out: dict[bytes, bytes] = {}
    for _, row in sorted(state.history.items()):
        rec = decode_row(row)
        if rec.tombstone:
            out.pop(rec.kv.key, None)
        else:
            out[rec.kv.key] = rec.kv.value
    return out


def stored_bytes(state) -> tuple[int, int, int]:  # state: LoadedState
    """(live, tail, kept entries) of a loaded store: live = the live data and
    the retained history, i.e. the bytes of every MVCC history row kept (row
    key + record: each live key's version and every version since the last
    compaction), plus client id + serialized session bytes of the sessions;
    tail = the stored size of the chosen entries kept (their record key and
    the encoded Value), kept = their count."""
    from paxoskv.v1 import peer_pb2

    live = sum(len(k) + len(v) for k, v in state.history.items())
    live += sum(len(cid.encode()) + s.to_proto().ByteSize() for cid, s in state.sessions.items())
    tail = sum(
        len(b"chosen/") + 8 + peer_pb2.Value(commands=v).ByteSize() for v in state.chosen.values()
    )
    return live, tail, len(state.chosen)


def snapshot_size(endpoint: str, timeout_s: float = 60.0) -> tuple[int, int]:
    """(applied index, total bytes) of the snapshot ``endpoint`` serves now
    (``Maintenance.Snapshot``; the bytes are those a peer transfer carries)."""
    total = 0
    index = 0
    with grpc.insecure_channel(endpoint, options=CHANNEL_OPTIONS) as ch:
        for resp in kv_pb2_grpc.MaintenanceStub(ch).Snapshot(
            kv_pb2.SnapshotRequest(), timeout=timeout_s
        ):
            total += len(resp.data)
            index = resp.applied_index
            if resp.sha256:
                assert resp.total_bytes == total, (resp.total_bytes, total)
    return index, total


def file_bytes(path: pathlib.Path) -> int | None:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return None


def assert_same_state(
    c: LocalCluster, ids: list[int], keys: list[bytes], leader: int
) -> dict[bytes, bytes | None]:
    """Every key read from every node (serializable) and from the leader
    (linearizable) is the same; the map."""
    maps = {i: read_all(c.endpoint(i), keys) for i in ids}
    ref = read_all(c.endpoint(leader), keys, serializable=False)
    for i, m in maps.items():
        diff = [k for k in keys if m[k] != ref[k]]
        assert not diff, f"node {i} differs from the leader on {len(diff)} keys, e.g. {diff[:3]}"
    return ref


# ---- the bounded-disk and restart figures ---------------------------------------------


@dataclass
class DiskFigures:
    """What ``disk_and_restart_figures`` measured (bytes unless named)."""

    stats: WriteStats
    index: int  # the applied index every node reached
    live: int  # history row bytes (live data + retained history) + client id + session bytes
    keys: int
    sessions: int
    entry_bytes: float  # average stored size of a kept log entry
    sizes: dict[int, int]  # data directory per node, settled, while running
    kept: dict[int, int]  # entries kept per node (applied_index - log_start + 1)
    kept_stored: int  # entries found in the stopped node's store
    victim: int
    restart_s: float  # process spawn -> linearizable Get answered

    def tail(self, node_id: int) -> float:
        return self.kept[node_id] * self.entry_bytes

    def ratio(self, node_id: int) -> float:
        """data dir / (live + tail): the bound is ``ratio <= 3``."""
        return self.sizes[node_id] / (self.live + self.tail(node_id))

    def ratio_history(self, node_id: int) -> float:
        """data dir / (live data + retained history), the Paxos log's tail not counted."""
        return self.sizes[node_id] / self.live

    def report(self) -> str:
        st = self.stats
        lines = [
            f"{st.acked} writes in {st.elapsed_s:.1f}s ({st.ops_per_s:.0f}/s), {st.batches} batches, "
            f"{st.resent} resent {st.errors}; {st.command_bytes} B of commands",
            f"applied index {self.index}; live data + retained history {self.live} B ({self.keys} keys, "
            f"{self.sessions} sessions); average kept entry {self.entry_bytes:.0f} B",
        ]
        for i in sorted(self.sizes):
            lines.append(
                f"node {i}: data dir {self.sizes[i]} B; kept {self.kept[i]} entries "
                f"(tail {self.tail(i):.0f} B); live + tail {self.live + self.tail(i):.0f} B; "
                f"ratio {self.ratio(i):.2f} (to live + history alone {self.ratio_history(i):.2f})"
            )
        lines.append(
            f"node {self.victim}: SIGKILL, restart, linearizable get answered {self.restart_s:.3f}s "
            f"after the process was spawned"
        )
        return "\n".join(lines)


def disk_and_restart_figures(
    c: LocalCluster,
    *,
    writes: int,
    keys: int,
    value_bytes: int,
    lanes: int = 8,
    batch_ops: int = 250,
) -> DiskFigures:
    """On a started cluster: ``writes`` puts over ``keys`` keys; every node
    ends with the same map; the settled data directory sizes; then a
    follower is SIGKILLed, its store measured (live data, kept entries) and
    it is restarted and timed to its first linearizable Get."""
    ids = sorted(c.nodes)
    stats = BulkWriter(
        c, total=writes, keys=keys, value_bytes=value_bytes, lanes=lanes, batch_ops=batch_ops
    ).run()
    assert stats.acked == writes, stats
    index = wait_quiet_applied(c, ids, quiet_s=3.0, timeout_s=120)
    leader = c.wait_leader()
    key_list = [key_of(i) for i in range(keys)]
    final = assert_same_state(c, ids, key_list, leader)
    assert all(v is not None and len(v) == value_bytes for v in final.values())

    sizes = settled_sizes(c, ids)
    statuses = {i: status_or_fail(c.endpoint(i)) for i in ids}
    assert {s.applied_index for s in statuses.values()} == {index}, statuses

    victim = next(i for i in ids if i != leader)
    c.kill(victim)
    state = stored_state(c, victim)
    assert state.applied_index == index, (state.applied_index, index)
    live, tail, kept = stored_bytes(state)
    assert kept == index - state.log_start + 1, (kept, index, state.log_start)
    restart_s, resp = start_and_time_first_read(c, victim, key_list[7])
    assert resp.found and resp.value == final[key_list[7]]
    return DiskFigures(
        stats=stats,
        index=index,
        live=live,
        keys=len(live_keys(state)),
        sessions=len(state.sessions),
        entry_bytes=tail / kept if kept else 0.0,
        sizes=sizes,
        kept={i: s.applied_index - s.log_start + 1 for i, s in statuses.items()},
        kept_stored=kept,
        victim=victim,
        restart_s=restart_s,
    )


def main() -> None:
    """The figures outside CI: ``python tests/integration/snapshot_helpers.py
    --writes 1000000 [--retain-entries N]`` (a 3-node cluster in a temporary
    directory, removed at the end)."""
    import argparse
    import tempfile

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--writes", type=int, default=1_000_000)
    ap.add_argument("--keys", type=int, default=1_000)
    ap.add_argument("--value-bytes", type=int, default=100)
    ap.add_argument("--retain-entries", type=int, default=50)
    ap.add_argument("--lanes", type=int, default=8)
    ap.add_argument("--batch-ops", type=int, default=250)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="paxoskv-figures-") as root:
        c = LocalCluster(
            pathlib.Path(root),
            heartbeat_ms=50,
            election_ms=1000,
            extra_args=("--retain-entries", str(args.retain_entries)),
        )
        with running(c):
            c.start_all()
            figures = disk_and_restart_figures(
                c,
                writes=args.writes,
                keys=args.keys,
                value_bytes=args.value_bytes,
                lanes=args.lanes,
                batch_ops=args.batch_ops,
            )
            print(f"--retain-entries {args.retain_entries}")
            print(figures.report())


if __name__ == "__main__":
    main()
