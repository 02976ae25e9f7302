"""paxoskv.storage.memory: the crash model and the full-disk fault.

The crash model's promise: after ``crash(rng)``, ``load()`` equals the state
after some prefix of the batches written, at least every batch up to the last
synced one; never a batch in part.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest

from paxoskv.kv import Changes as RawChanges, Session

from kv_rows import kv_changes as Changes, kv_of, snapshot_of
from paxoskv.paxos.types import Ballot, Entry
from paxoskv.storage import LoadedState, Locked, MemoryDisk, MemoryStorage, NotWritable
from paxoskv.v1 import kv_pb2


def random_write(storage: MemoryStorage, rng: random.Random, step: int, applied: int) -> int:
    """One random persist or apply (several records each); returns the applied index."""
    if rng.random() < 0.5:
        entries = [
            Entry(rng.randrange(1, 20), Ballot(step, 1), (f"{step}".encode(),))
            for _ in range(rng.randrange(1, 4))
        ]
        chosen = [(rng.randrange(1, 20), (f"c{step}".encode(),)) for _ in range(rng.randrange(3))]
        promised = Ballot(step, 2) if rng.random() < 0.5 else None
        storage.persist(promised, entries, chosen, sync=rng.random() < 0.3)
        return applied
    applied += 1
    kv: dict[bytes, bytes | None] = {
        f"k{rng.randrange(8)}".encode(): (None if rng.random() < 0.3 else f"{step}".encode())
        for _ in range(rng.randrange(1, 4))
    }
    session = Session(step, kv_pb2.CommandResult(index=applied), applied)
    sessions: dict[str, Session | None] = {f"c{rng.randrange(3)}": session}
    storage.apply(Changes(kv, sessions, applied), drop_accepted_through=rng.randrange(10))
    return applied


def test_crash_keeps_a_prefix_of_batches_that_includes_every_synced_one() -> None:
    outcomes: Counter[str] = Counter()
    for seed in range(300):
        rng = random.Random(seed)
        storage = MemoryStorage(MemoryDisk(f"disk-{seed}"))
        states: list[LoadedState] = [storage.load()]  # states[i]: after i batches
        last_synced = 0
        applied = 0
        for step in range(1, rng.randrange(2, 30)):
            syncs = storage.disk.syncs
            applied = random_write(storage, rng, step, applied)
            states.append(storage.load())
            if storage.disk.syncs > syncs:
                last_synced = len(states) - 1
        lost = storage.crash(rng)
        survived = storage.load()
        assert 0 <= lost <= len(states) - 1 - last_synced
        assert survived == states[len(states) - 1 - lost], f"seed {seed}"
        outcomes["lost some" if lost else "lost none"] += 1
        if lost and last_synced < len(states) - 1 - lost:
            outcomes["kept some unsynced"] += 1
        # The handle goes on as the restarted process; a second crash loses nothing.
        assert storage.disk.pending_batches == 0
        assert storage.crash(rng) == 0 and storage.load() == survived
    # The model really does both things.
    assert outcomes["lost some"] > 50 and outcomes["lost none"] > 50
    assert outcomes["kept some unsynced"] > 10


def test_synced_batch_makes_every_earlier_batch_durable() -> None:
    storage = MemoryStorage()
    storage.apply(Changes({b"a": b"1"}, {}, 1), drop_accepted_through=0)
    storage.persist(None, [Entry(2, Ballot(1, 1), (b"x",))], [], sync=False)
    storage.persist(Ballot(3, 1), [], [], sync=True)
    before = storage.load()
    for seed in range(20):
        storage.apply(Changes({b"b": b"2"}, {}, 2 + seed), drop_accepted_through=0)
        storage.crash(random.Random(seed))
        state = storage.load()
        assert kv_of(state.history).get(b"a") == b"1" and state.promised == Ballot(3, 1)
        assert state.accepted == before.accepted
    assert storage.disk.syncs >= 2


def test_unsynced_write_is_lost_for_some_seeds_and_kept_for_others() -> None:
    kept = set()
    for seed in range(40):
        storage = MemoryStorage()
        storage.persist(Ballot(9, 1), [], [], sync=False)
        storage.crash(random.Random(seed))
        kept.add(storage.load().promised == Ballot(9, 1))
    assert kept == {True, False}


def test_close_and_reopen_is_not_a_crash() -> None:
    """A process that exits loses nothing: only a crash of the machine does."""
    disk = MemoryDisk()
    storage = MemoryStorage(disk, node_id=2)
    storage.persist(Ballot(1, 2), [], [], sync=False)
    storage.close()
    storage = MemoryStorage(disk, node_id=2)
    assert storage.load().promised == Ballot(1, 2)
    assert storage.crash(random.Random(0)) == 0  # reopening synced (the probe)
    assert storage.load().promised == Ballot(1, 2)


def test_crash_then_reopen_by_another_handle() -> None:
    disk = MemoryDisk()
    storage = MemoryStorage(disk)
    storage.persist(Ballot(1, 1), [], [], sync=True)
    storage.crash(random.Random(1))
    with pytest.raises(Locked):  # the crashed handle stands for the restarted process
        MemoryStorage(disk)
    storage.close()
    assert MemoryStorage(disk).load().promised == Ballot(1, 1)


def test_full_disk_fault_refuses_writes_and_changes_nothing() -> None:
    storage = MemoryStorage()
    storage.persist(Ballot(1, 1), [], [], sync=False)
    before = storage.load()
    written = storage.disk.batches_written
    storage.fault_full_disk = True
    assert storage.fault_full_disk and storage.disk.full
    with pytest.raises(NotWritable):
        storage.persist(Ballot(2, 1), [Entry(1, Ballot(2, 1), ())], [], sync=True)
    with pytest.raises(NotWritable):
        storage.apply(Changes({b"k": b"v"}, {}, 1), drop_accepted_through=0)
    assert storage.load() == before and storage.disk.batches_written == written
    # The failed sync did not make the earlier batch durable either.
    assert storage.disk.pending_batches == 1
    storage.fault_full_disk = False
    storage.apply(Changes({b"k": b"v"}, {}, 1), drop_accepted_through=0)
    assert kv_of(storage.load().history) == {b"k": b"v"}


def test_full_disk_refuses_open() -> None:
    disk = MemoryDisk("d")
    disk.full = True
    with pytest.raises(NotWritable, match="data directory d is not writable"):
        MemoryStorage(disk)
    assert disk.batches_written == 0


def test_storage_is_what_was_stored_not_a_view_of_the_caller_data() -> None:
    storage = MemoryStorage()
    kv: dict[bytes, bytes | None] = {b"k": b"v"}
    storage.apply(Changes(kv, {}, 1), drop_accepted_through=0)
    kv[b"k"] = b"changed"
    loaded = storage.load()
    loaded.history.clear()
    assert kv_of(storage.load().history) == {b"k": b"v"}


def test_bad_values_are_caught_at_the_call() -> None:
    storage = MemoryStorage()
    with pytest.raises(AssertionError):
        storage.persist(None, [Entry(1, Ballot(1, 1), [b"list"])], [], sync=True)  # type: ignore[arg-type]
    with pytest.raises(AssertionError):
        storage.persist(None, [], [(0, ())], sync=True)
    with pytest.raises(AssertionError):
        storage.apply(RawChanges({"str": b"v"}, {}, 1), drop_accepted_through=0)  # type: ignore[dict-item]
    with pytest.raises(AssertionError):
        storage.apply(RawChanges({b"short": b"v"}, {}, 1), drop_accepted_through=0)  # a row key is 16 bytes


# ---- crashes during a snapshot install ------------------------------------------------------


def test_a_crash_at_any_step_of_an_install_leaves_the_old_or_the_new_state() -> None:
    """Power loss after each step of an install (begin, every chunk, finish),
    with an unsynced batch of the old state still pending: the store comes
    back on a prefix of the old batches before ``finish`` returned, and on
    the new state after."""
    
    kv = {b"key%03d" % i: b"new%d" % i for i in range(0, 300, 3)}
    sessions = {"c1": Session(5, kv_pb2.CommandResult(index=40), 40)}
    data = snapshot_of("test", 50, kv, sessions)
    chunk_bytes = 256
    chunks = [data[i : i + chunk_bytes] for i in range(0, len(data), chunk_bytes)]
    steps = len(chunks) + 2  # begin, each chunk, finish
    outcomes: Counter[str] = Counter()
    for step in range(steps):
        for seed in range(6):
            rng = random.Random(seed * 1000 + step)
            storage = MemoryStorage(MemoryDisk(f"disk-{step}-{seed}"))
            storage.persist(
                Ballot(3, 1),
                [Entry(s, Ballot(3, 1), (b"a",)) for s in range(45, 56)],
                [(s, (b"c",)) for s in range(1, 54)],
                sync=True,
            )
            storage.apply(Changes({b"key%03d" % i: b"old" for i in range(200)}, {}, 30), 0)
            storage.persist(None, [], [], sync=True)
            synced = storage.load()
            storage.apply(Changes({b"unsynced": b"x"}, {}, 31), 0)
            unsynced = storage.load()
            installer = storage.begin_install()
            for chunk in chunks[: step - 1] if step else []:
                installer.write(chunk)
            finished = step == steps - 1
            if finished:
                for chunk in chunks[step - 1 :]:
                    installer.write(chunk)
                assert installer.finish() == 50
            storage.crash(rng)
            state = storage.load()
            if finished:
                assert kv_of(state.history) == kv and state.sessions == sessions
                assert state.applied_index == 50 and state.log_start == 51
                assert sorted(state.chosen) == [51, 52, 53]
                assert sorted(state.accepted) == list(range(51, 56))
                assert state.promised == Ballot(3, 1)
                outcomes["new"] += 1
            else:
                assert state in (synced, unsynced), (step, seed)
                outcomes["old"] += 1
                # The installer belonged to the process that died.
                with pytest.raises(AssertionError, match="did not survive the crash"):
                    installer.finish()
    assert outcomes["new"] == 6 and outcomes["old"] == 6 * (steps - 1)


def test_the_install_is_one_synced_batch() -> None:
    
    storage = MemoryStorage(cluster_id="test")
    storage.apply(Changes({b"a": b"1"}, {}, 1), 0)
    written, syncs = storage.disk.batches_written, storage.disk.syncs
    with storage.begin_install() as installer:
        installer.write(snapshot_of("test", 9, {b"b": b"2", b"c": b"3"}, {}))
        installer.finish()
    assert storage.disk.batches_written == written + 1 and storage.disk.syncs == syncs + 1
    assert storage.disk.pending_batches == 0


def test_compaction_is_not_synced_and_a_crash_may_lose_it() -> None:
    kept = set()
    for seed in range(30):
        storage = MemoryStorage()
        storage.persist(None, [], [(s, (b"c",)) for s in range(1, 11)], sync=True)
        storage.apply(Changes({}, {}, 10), 0)
        storage.persist(None, [], [], sync=True)
        storage.compact(8)
        storage.crash(random.Random(seed))
        state = storage.load()
        assert (state.log_start, sorted(state.chosen)) in ((1, list(range(1, 11))), (9, [9, 10]))
        kept.add(state.log_start)
    assert kept == {1, 9}
