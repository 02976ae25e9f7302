"""Compaction, bounded disk, fast restart and snapshot catch-up, on real
``paxoskv serve`` processes (issue 5).

What each test proves, and how:

- ``test_disk_is_bounded_by_live_data_and_tail_and_a_restart_serves_fast``:
  200,000 writes over 1,000 keys (100-byte values); afterwards every node's
  data directory is at most 3x (live data + retained tail), and a node
  killed with SIGKILL answers a linearizable Get less than 2 s after its
  process is spawned.
- ``test_a_node_down_longer_than_the_tail_catches_up_by_snapshot_while_writes_continue``.
- ``test_sigkill_of_the_receiver_during_transfer_and_install_20_times``.

Definitions used for the bound (measured, not assumed):

- *live data*: the key + value bytes of the final map plus the client id +
  serialized bytes of every session, from the store of a stopped node.
- *retained tail* of a node: the entries it keeps (``Status``:
  ``applied_index - log_start + 1``) times the average stored size of a kept
  entry (record key + encoded ``Value``), measured on the stopped node's store.

A log entry is one slot, and one slot holds every command the leader batched
while the previous write was being fsync'ed (hundreds under this load), so
``--retain-entries`` is small here (50): the history written is then many
times the tail, and the bound says something. The test asserts that.
"""

from __future__ import annotations

import random
import signal
import time

from integration_cluster import LocalCluster, wait_until
from snapshot_helpers import (
    BulkWriter,
    bad_log_lines,
    count_in_log,
    key_of,
    read_all,
    running,
    settled_sizes,
    staging_files,
    start_and_time_first_read,
    stored_bytes,
    stored_state,
    wait_same_applied,
)

# A loaded 2-core machine runs these: a sticky leader, with room for pauses.
HEARTBEAT_MS = 50
ELECTION_MS = 1000


def _cluster(tmp_path, retain_entries: int) -> LocalCluster:
    return LocalCluster(
        tmp_path / "cluster",
        heartbeat_ms=HEARTBEAT_MS,
        election_ms=ELECTION_MS,
        extra_args=("--retain-entries", str(retain_entries)),
    )


def _follower(c: LocalCluster, leader: int) -> int:
    return next(i for i in sorted(c.nodes) if i != leader)


def _assert_same_state(c: LocalCluster, ids: list[int], keys: list[bytes], leader: int) -> dict[bytes, bytes | None]:
    """Every key read from every node (serializable) and from the leader
    (linearizable) is the same; the map."""
    maps = {i: read_all(c.endpoint(i), keys) for i in ids}
    ref = read_all(c.endpoint(leader), keys, serializable=False)
    for i, m in maps.items():
        diff = [k for k in keys if m[k] != ref[k]]
        assert not diff, f"node {i} differs from the leader on {len(diff)} keys, e.g. {diff[:3]}"
    return ref


# ---- 1. bounded disk, fast restart --------------------------------------------------

WRITES_1 = 200_000
KEYS_1 = 1_000
VALUE_BYTES_1 = 100
RETAIN_1 = 50


def test_disk_is_bounded_by_live_data_and_tail_and_a_restart_serves_fast(tmp_path):
    c = _cluster(tmp_path, RETAIN_1)
    with running(c):
        leader = c.start_all()
        ids = sorted(c.nodes)
        stats = BulkWriter(
            c, total=WRITES_1, keys=KEYS_1, value_bytes=VALUE_BYTES_1, lanes=8, batch_ops=250
        ).run()
        assert stats.acked == WRITES_1
        print(
            f"\n{stats.acked} writes in {stats.elapsed_s:.1f}s ({stats.ops_per_s:.0f}/s), "
            f"{stats.batches} batches, {stats.resent} resent {stats.errors}"
        )
        index = wait_same_applied(c, ids, 60)
        leader = c.wait_leader()
        keys = [key_of(i) for i in range(KEYS_1)]
        final = _assert_same_state(c, ids, keys, leader)
        assert all(v is not None and len(v) == VALUE_BYTES_1 for v in final.values())

        sizes = settled_sizes(c, ids)
        statuses = {i: c.status(i) for i in ids}
        for i, st in statuses.items():
            assert st.applied_index == index and st.log_start > 1, (i, st)

        victim = _follower(c, leader)
        c.kill(victim, signal.SIGKILL)
        state = stored_state(c, victim)
        assert state.applied_index == index
        live, tail, kept = stored_bytes(state)
        assert kept == index - state.log_start + 1 <= RETAIN_1 + max(1, RETAIN_1 // 10)
        entry_bytes = tail / kept
        history = stats.command_bytes
        # Without compaction the directory would hold the whole history: it
        # must be well over the bound, or the bound proves nothing.
        assert history >= 5 * (live + tail), f"history {history} B is not >> live {live} B + tail {tail} B"
        print(
            f"applied index {index}; live data {live} B ({len(state.kv)} keys, "
            f"{len(state.sessions)} sessions); average entry {entry_bytes:.0f} B; "
            f"history written {history} B"
        )
        for i in ids:
            kept_i = statuses[i].applied_index - statuses[i].log_start + 1
            bound = 3 * (live + kept_i * entry_bytes)
            print(
                f"node {i}: data dir {sizes[i]} B, kept entries {kept_i} "
                f"(tail {kept_i * entry_bytes:.0f} B), bound 3x(live + tail) = {bound:.0f} B, "
                f"ratio {sizes[i] / (bound / 3):.2f}"
            )
            assert sizes[i] <= bound, f"node {i}: data dir {sizes[i]} B > {bound:.0f} B"

        elapsed_s, resp = start_and_time_first_read(c, victim, keys[7])
        print(f"node {victim} restarted after SIGKILL and answered a linearizable get in {elapsed_s:.3f}s")
        assert resp.found and resp.value == final[keys[7]]
        assert elapsed_s < 2.0, f"restart to serving took {elapsed_s:.3f}s"
        for i in ids:
            assert not bad_log_lines(c, i), bad_log_lines(c, i)
