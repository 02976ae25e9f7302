"""Compaction, bounded disk, fast restart and snapshot catch-up, on real
``paxoskv serve`` processes (issue 5).

What each test proves, and how:

- ``test_disk_is_bounded_by_live_data_and_tail_and_a_restart_serves_fast``:
  200,000 writes over 1,000 keys (100-byte values), with auto-compaction of
  the MVCC history (revision mode: the last 50 revisions kept, looked at
  every second); afterwards every node's data directory is at most 3x (live
  data and retained history + retained tail) and at most 3x live data and
  retained history alone (issue 19), and a node killed with SIGKILL
  answers a linearizable Get less than 2 s after its process is spawned.
- ``test_a_node_down_longer_than_the_tail_catches_up_by_snapshot_while_writes_continue``:
  a follower is down until both other nodes compacted past its index; it
  restarts while writers keep writing, installs a snapshot (its status shows
  ``snapshot_index > 0``), reaches the leader's commit index, and after the
  writes stop every node has applied the same index and answers every key
  alike.
- ``test_sigkill_of_the_receiver_during_transfer_and_install_20_times``: 20
  seeded SIGKILLs of the receiver in the transfer or the install; after each
  its store (opened as the node opens it) holds exactly its old state or
  exactly the leader's, its log holds no traceback; at the end it catches up
  and is identical to the others.

Every process is a ``paxoskv serve`` on 127.0.0.1 at ports chosen at run
time, stopped by PID (``integration_cluster.LocalCluster``); the tests poll
conditions against deadlines. Figures are printed (``pytest -s``) and
recorded in ``docs/snapshots.md``.

Definitions used for the bound (measured, not assumed):

- *live data and retained history*: the bytes of every MVCC history row the
  store of a stopped node keeps (row key + record: each live key's version
  and every version since the last compaction) plus the client id +
  serialized bytes of every session.
- *retained tail* of a node: the entries it keeps (``Status``:
  ``applied_index - log_start + 1``) times the average stored size of a kept
  entry (record key + encoded ``Value``), measured on the stopped node's store.

A log entry is one slot, and one slot holds every command the leader batched
while the previous write was being fsync'ed (hundreds under this load), so
``--retain-entries`` is small here (20): the history written is then many
times the tail, and the bound says something. The test asserts that.
"""

from __future__ import annotations

import pathlib
import random
import signal
import statistics
import time

from integration_cluster import LocalCluster
from paxoskv.util.wait import wait_until
from snapshot_helpers import (
    BulkWriter,
    assert_same_state,
    bad_log_lines,
    count_in_log,
    disk_and_restart_figures,
    file_bytes,
    key_of,
    live_keys,
    read_all,
    running,
    snapshot_size,
    staging_files,
    status_or_fail,
    stored_state,
    wait_same_applied,
)

# A loaded 2-core machine runs these: a sticky leader, with room for pauses.
HEARTBEAT_MS = 50
ELECTION_MS = 1000


def _cluster(tmp_path, retain_entries: int, *more: str) -> LocalCluster:
    return LocalCluster(
        tmp_path / "cluster",
        heartbeat_ms=HEARTBEAT_MS,
        election_ms=ELECTION_MS,
        extra_args=("--retain-entries", str(retain_entries), *more),
    )


def _follower(c: LocalCluster, leader: int) -> int:
    return next(i for i in sorted(c.nodes) if i != leader)


# ---- 1. bounded disk, fast restart --------------------------------------------------

WRITES_1 = 200_000
KEYS_1 = 1_000
VALUE_BYTES_1 = 100
RETAIN_1 = 20
HISTORY_REVISIONS_1 = 50  # a 250-op batch is one revision: about 12,500 versions kept
HISTORY_1 = ("--auto-compaction-mode", "revision", "--auto-compaction-retention", str(HISTORY_REVISIONS_1),
             "--auto-compaction-interval", "1s")


def test_disk_is_bounded_by_live_data_and_tail_and_a_restart_serves_fast(tmp_path):
    c = _cluster(tmp_path, RETAIN_1, *HISTORY_1)
    with running(c):
        c.start_all()
        f = disk_and_restart_figures(c, writes=WRITES_1, keys=KEYS_1, value_bytes=VALUE_BYTES_1)
        print("\n" + f.report())
        assert f.keys == KEYS_1
        for i, kept in f.kept.items():
            assert 1 <= kept <= RETAIN_1 + max(1, RETAIN_1 // 10), (i, kept)
            assert f.index - kept + 1 > 1, f"node {i} never compacted"
        # Without compaction a directory would hold the whole history: it must
        # be well over the bound, or the bound proves nothing.
        tail_max = max(f.tail(i) for i in f.kept)
        assert f.stats.command_bytes >= 5 * (f.live + tail_max), f.report()
        for i in f.sizes:
            assert f.ratio(i) <= 3.0, f"node {i}: data dir over 3x (live + tail)\n{f.report()}"
            # The bound: within 3x of live data + retained MVCC history
            # alone (the Paxos log's tail, --retain-entries, counted as overhead).
            assert f.ratio_history(i) <= 3.0, f"node {i}: data dir over 3x (live + history)\n{f.report()}"
        assert f.restart_s < 2.0, f"restart to serving took {f.restart_s:.3f}s"
        for i in c.nodes:
            assert not bad_log_lines(c, i), bad_log_lines(c, i)


# ---- 2. snapshot catch-up while writes continue ---------------------------------------

RETAIN_2 = 200
KEYS_2 = 5_000
VALUE_BYTES_2 = 100


def test_a_node_down_longer_than_the_tail_catches_up_by_snapshot_while_writes_continue(tmp_path):
    c = _cluster(tmp_path, RETAIN_2)
    with running(c):
        leader = c.start_all()
        ids = sorted(c.nodes)
        keys = [key_of(i) for i in range(KEYS_2)]
        BulkWriter(
            c, total=KEYS_2, keys=KEYS_2, value_bytes=VALUE_BYTES_2, client_prefix="load"
        ).run()
        wait_same_applied(c, ids, 60)  # the victim holds the data before it goes down
        victim = _follower(c, leader)
        others = [i for i in ids if i != victim]
        c.kill(victim, signal.SIGKILL)
        behind = stored_state(c, victim).applied_index

        # Small batches: many log entries per second, so the tail is overtaken fast.
        writer = BulkWriter(
            c, total=None, keys=KEYS_2, value_bytes=VALUE_BYTES_2, lanes=4, batch_ops=20,
            first_op=KEYS_2, client_prefix="w", seed=2,
        )  # fmt: skip
        writer.start()
        try:

            def compacted_past_victim() -> bool:
                sts = [c.status(i) for i in others]
                return all(s is not None and s.log_start > behind + 1 for s in sts)

            wait_until(f"the others to compact past index {behind}", compacted_past_victim, 120)
            down_writes = writer.acked
            restarted = time.monotonic()
            c.start(victim)

            def installed() -> int | None:
                st = c.status(victim)
                return st.snapshot_index if st is not None and st.snapshot_index > 0 else None

            snap_index = wait_until(f"node {victim} to install a snapshot", installed, 60)
            installed_s = time.monotonic() - restarted
            target = status_or_fail(c.endpoint(leader)).commit_index
            caught = c.wait_applied(victim, target, timeout_s=60)
            caught_s = time.monotonic() - restarted
            writes_during_catch_up = writer.acked - down_writes
            # Writes went on through the restart and the catch-up, and still do.
            wait_until(
                "more writes after the catch-up",
                lambda: writer.acked > down_writes + writes_during_catch_up,
                30,
            )
        finally:
            stats = writer.stop()
        assert writes_during_catch_up > 0
        print(
            f"\nnode {victim} was at index {behind}; the others compacted past it after "
            f"{down_writes} writes; restarted, it installed a snapshot at index {snap_index} "
            f"after {installed_s:.2f}s and reached the leader's commit index {target} after "
            f"{caught_s:.2f}s (log start {caught.log_start}) while {writes_during_catch_up} writes "
            f"were acknowledged; writer: {stats.acked} writes, {stats.ops_per_s:.0f}/s, {stats.errors}"
        )
        assert snap_index > behind + RETAIN_2
        assert caught.log_start > behind + 1

        index = wait_same_applied(c, ids, 60)
        leader = c.wait_leader()
        final = assert_same_state(c, ids, keys, leader)
        assert all(v is not None and len(v) == VALUE_BYTES_2 for v in final.values())
        sts = {i: status_or_fail(c.endpoint(i)) for i in ids}
        assert sts[victim].snapshot_index > 0
        assert sts[leader].snapshot_index > 0  # the sender shows the snapshot it served
        assert count_in_log(c, victim, "installed a snapshot") >= 1
        print(
            "final: "
            + "; ".join(
                f"node {i} applied {s.applied_index} log_start {s.log_start} snapshot {s.snapshot_index}"
                for i, s in sts.items()
            )
        )
        assert {s.applied_index for s in sts.values()} == {index}
        for i in ids:
            assert not bad_log_lines(c, i), bad_log_lines(c, i)


# ---- 3. SIGKILL during snapshot transfer and install ------------------------------------

RETAIN_3 = 20
KEYS_3 = 20_000
VALUE_BYTES_3 = 400
KILLS_3 = 20
SEED_3 = 20240505
INSTALLED = "installed a snapshot"


def test_sigkill_of_the_receiver_during_transfer_and_install_20_times(tmp_path):
    """Each round: the receiver is down; the others write until they have
    compacted past its index, then stop writing, so the snapshot it gets is
    the leader's state at a known index (and of a known size); the receiver
    starts and, once its transfer has begun (a new staging file appears), is
    SIGKILLed at an instant drawn from a seeded RNG: in odd rounds over the
    length of a transfer (the mean of those timed so far), in even rounds over
    the install that follows the last chunk (the staging file is whole). Its store must then
    hold exactly its old state or exactly the leader's, and at the end it
    catches up and is identical to the others."""
    rng = random.Random(SEED_3)
    c = _cluster(tmp_path, RETAIN_3)
    with running(c):
        leader = c.start_all()
        ids = sorted(c.nodes)
        keys = [key_of(i) for i in range(KEYS_3)]
        load = BulkWriter(
            c, total=KEYS_3, keys=KEYS_3, value_bytes=VALUE_BYTES_3, client_prefix="load"
        )
        load.run()
        wait_same_applied(c, ids, 60)
        victim = _follower(c, leader)
        others = [i for i in ids if i != victim]
        data_dir = c.nodes[victim].data_dir
        next_op = load.next_op

        def overtake(round_no: int, behind: int) -> tuple[int, int, dict[bytes, bytes | None]]:
            """Write until both others compacted past ``behind``; stop; the
            index they all applied, the size of its snapshot, the map."""
            nonlocal next_op
            w = BulkWriter(
                c, total=None, keys=KEYS_3, value_bytes=VALUE_BYTES_3, lanes=2, batch_ops=20,
                first_op=next_op, client_prefix=f"r{round_no}", seed=round_no,
            )  # fmt: skip
            w.start()
            try:
                wait_until(
                    f"the others to compact past index {behind}",
                    lambda: all(
                        (s := c.status(i)) is not None and s.log_start > behind + 1 for i in others
                    ),
                    60,
                )
            finally:
                w.stop()
            next_op = w.next_op
            index = wait_same_applied(c, others, 30)
            ep = c.endpoint(c.wait_leader(others))
            snap_index, snap_bytes = snapshot_size(ep)
            assert snap_index == index
            return index, snap_bytes, read_all(ep, keys)

        def start_until_transfer() -> tuple[float, pathlib.Path | None, int]:
            """Start the receiver; return once its transfer has begun: the
            time, its staging file (None: the install was already logged),
            and the installs its log showed before."""
            before_files = set(staging_files(data_dir))
            installs = count_in_log(c, victim, INSTALLED)
            c.start(victim, wait=False)

            def began() -> tuple[float, pathlib.Path | None] | None:
                if not c.nodes[victim].running:
                    raise AssertionError(f"node {victim} exited:\n{c.log_text(victim)[-3000:]}")
                new = set(staging_files(data_dir)) - before_files
                if new:
                    return time.monotonic(), data_dir / new.pop()
                if count_in_log(c, victim, INSTALLED) > installs:
                    return time.monotonic(), None
                return None

            at, staged = wait_until(
                f"node {victim} to begin receiving a snapshot", began, 60, interval_s=0.002
            )
            return at, staged, installs

        def whole_at(staged: pathlib.Path | None, total: int, installs: int) -> float:
            """When the staging file held every byte (or the install was logged)."""

            def probe() -> float | None:
                size = file_bytes(staged) if staged is not None else None
                if size == total or count_in_log(c, victim, INSTALLED) > installs:
                    return time.monotonic()
                return None

            return wait_until("the last chunk", probe, 60, interval_s=0.001)

        # Calibration: one whole transfer and install, timed.
        c.kill(victim, signal.SIGKILL)
        old = stored_state(c, victim)
        target, total, ref = overtake(0, old.applied_index)
        began_at, staged, installs = start_until_transfer()
        whole = whole_at(staged, total, installs)
        wait_until(
            "the calibration install",
            lambda: count_in_log(c, victim, INSTALLED) > installs,
            60,
            interval_s=0.002,
        )
        done = time.monotonic()
        transfer_s, install_s = whole - began_at, done - whole
        c.wait_applied(victim, target, timeout_s=60)
        print(
            f"\ncalibration: a snapshot of {KEYS_3} keys x {VALUE_BYTES_3} B ({total} B) took "
            f"{transfer_s:.3f}s to transfer and {install_s:.3f}s to install"
        )

        outcomes: dict[tuple[str, str], int] = {}
        transfer_samples = [transfer_s]
        for round_no in range(1, KILLS_3 + 1):
            if c.nodes[victim].running:
                c.kill(victim, signal.SIGKILL)
            old = stored_state(c, victim)
            target, total, ref = overtake(round_no, old.applied_index)
            assert target > old.applied_index + RETAIN_3
            began_at, staged, installs = start_until_transfer()
            if round_no % 2:
                aim, t0, span_s = "transfer", began_at, 1.1 * statistics.mean(transfer_samples)
            else:
                aim, t0, span_s = "install", whole_at(staged, total, installs), 1.5 * install_s
                transfer_samples.append(t0 - began_at)  # the load changes: keep the aim current
            delay_s = rng.uniform(0.0, span_s)
            # The kill instant is drawn at random: this wait is the nemesis's
            # aim, not a synchronisation.
            time.sleep(max(0.0, t0 + delay_s - time.monotonic()))
            size = file_bytes(staged) if staged is not None else None
            c.kill(victim, signal.SIGKILL)
            logged = count_in_log(c, victim, INSTALLED) > installs
            if logged:
                phase = "after the install"
            elif size is not None and size < total:
                phase = f"transfer {100 * size // total}%"
            else:
                phase = "install"
            after = stored_state(c, victim)  # raises if the store is damaged
            assert not staging_files(data_dir), "the reopened store kept a staging file"
            if after.applied_index == old.applied_index:
                outcome = "old"
                assert not logged, "the log says installed but the store holds the old state"
                assert after.history == old.history, f"round {round_no}: old index, changed map"
                assert after.sessions == old.sessions
            else:
                outcome = "new"
                assert after.applied_index == target, (
                    round_no,
                    after.applied_index,
                    old.applied_index,
                    target,
                )
                assert after.log_start == target + 1
                assert live_keys(after) == {
                    k: v for k, v in ref.items() if v is not None
                }, f"round {round_no}: mixed map"
            key = ("transfer" if phase.startswith("transfer") else phase, outcome)
            outcomes[key] = outcomes.get(key, 0) + 1
            print(
                f"round {round_no:2d}: aimed at the {aim}, killed {delay_s:.3f}s in ({phase}): "
                f"{outcome} state (index {after.applied_index}; was {old.applied_index}, snapshot {target})"
            )
            assert not bad_log_lines(c, victim), bad_log_lines(c, victim)
        print(f"after {KILLS_3} kills, (phase, state): {outcomes}")

        # Back for good: it catches up and ends identical to the others.
        c.start(victim)
        index = wait_same_applied(c, ids, 60)
        leader = c.wait_leader()
        final = assert_same_state(c, ids, keys, leader)
        assert final == ref and index >= target
        for i in ids:
            assert not bad_log_lines(c, i), bad_log_lines(c, i)
