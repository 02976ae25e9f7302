"""paxoskv.storage.leveldb: what only a real LevelDB on a real disk can show.

Other processes (a lock holder, a writer killed with SIGKILL, an installer
killed with SIGKILL at every step of a snapshot install), a read-only mount
and a full file system (both need root: tests run as root), on-disk
corruption, the key layout, disk space given back by compaction, threads
reading snapshots while others write or close, and the throughput of
synced batches and of snapshots.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import plyvel
import pytest

from paxoskv.kv import Session

from kv_rows import kv_changes as Changes, kv_of, rows_of, snapshot_of
from paxoskv.paxos.types import Ballot, Entry
from paxoskv.storage import (
    FORMAT_VERSION,
    Corrupt,
    LoadedState,
    Locked,
    NotFound,
    NotWritable,
    SnapshotReader,
    StorageError,
    WrongFormat,
)
from paxoskv.storage.leveldb import (
    DROP_PROBE_SLOTS_MAX,
    STAGING_PREFIX,
    LevelDBStorage,
    _storage_error,
    data_dir_bytes,
)
from paxoskv.v1 import kv_pb2, peer_pb2, storage_pb2


@contextlib.contextmanager
def mounted(where: pathlib.Path, *commands: list[str]) -> Iterator[pathlib.Path]:
    """Run mount ``commands`` for ``where`` (needs root); unmount at the end."""
    where.mkdir(parents=True, exist_ok=True)
    try:
        for command in commands:
            subprocess.run(command, check=True)
        yield where
    finally:
        for _ in range(len(commands)):
            if not is_mount_point(where):
                break
            if subprocess.run(["umount", str(where)], check=False).returncode != 0:
                subprocess.run(["umount", "-l", str(where)], check=True)
        assert not is_mount_point(where)


def is_mount_point(where: pathlib.Path) -> bool:
    """Is ``where`` a mount point? (``os.path.ismount`` misses a bind mount of a
    directory onto itself: same device as its parent.)"""
    with open("/proc/self/mounts") as mounts:
        return any(line.split()[1] == str(where) for line in mounts)


def fill_filesystem(filler: pathlib.Path) -> None:
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        for chunk in (65536, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * chunk)
    finally:
        os.close(fd)
    assert os.statvfs(filler.parent).f_bavail == 0


@contextlib.contextmanager
def child(script: str, *args: str) -> Iterator[subprocess.Popen[str]]:
    """A Python subprocess running ``script``; killed by PID if still alive at the end."""
    proc = subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            assert stream is not None
            stream.close()


# ---- another process ---------------------------------------------------------------

HOLDER = """
import sys
from paxoskv.paxos.types import Ballot
from paxoskv.storage.leveldb import LevelDBStorage
storage = LevelDBStorage.open(sys.argv[1], 1, "c")
storage.persist(Ballot(4, 1), [], [], sync=True)
print("ready", flush=True)
sys.stdin.read()  # hold the database until killed
"""


def test_a_database_held_by_another_process_is_locked(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "db"
    with child(HOLDER, str(path)) as proc:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line == "ready\n", proc.stderr.read() if proc.stderr else ""
        with pytest.raises(Locked) as error:
            LevelDBStorage.open(path, 1, "c")
        message = str(error.value)
        assert str(path) in message and "another process" in message and "\n" not in message
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) == -signal.SIGTERM
    with LevelDBStorage.open(path, 1, "c") as storage:  # the dead holder's lock is gone
        assert storage.load().promised == Ballot(4, 1)


WRITER = """
import sys, time
from paxoskv.kv import Changes
from paxoskv.kv.mvcc import encode_row, row_key
from paxoskv.paxos.types import Ballot, Entry
from paxoskv.storage.leveldb import LevelDBStorage
storage = LevelDBStorage.open(sys.argv[1], 1, "c")
deadline = time.monotonic() + 120
slot = 0
while slot < 100_000 and time.monotonic() < deadline:
    slot += 1
    storage.persist(Ballot(slot, 1), [Entry(slot, Ballot(slot, 1), (b"v%d" % slot,))], [], sync=True)
    row = encode_row(b"k%d" % slot, slot + 1, slot + 1, 1, b"x" * 50, 0)
    storage.apply(Changes({row_key(slot + 1, 0): row}, {}, slot, revision=slot + 1), drop_accepted_through=0)
    print(slot, flush=True)
"""


def test_synced_writes_survive_sigkill_of_the_writer(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "db"
    with child(WRITER, str(path)) as proc:
        assert proc.stdout is not None
        confirmed = 0
        while confirmed < 300:
            line = proc.stdout.readline()
            assert line.endswith("\n"), proc.stderr.read() if proc.stderr else ""
            confirmed = int(line)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
        for line in proc.stdout.read().splitlines(keepends=True):
            if line.endswith("\n"):  # a line cut by the kill confirms nothing
                confirmed = int(line)
    with LevelDBStorage.open(path, 1, "c") as storage:
        state = storage.load()
    written = max(state.accepted)
    assert written >= confirmed
    # A prefix of the batches, each whole: slots 1..written, and the applied
    # state and index of the same apply batch.
    assert sorted(state.accepted) == list(range(1, written + 1))
    assert all(state.accepted[s].value == (b"v%d" % s,) for s in state.accepted)
    assert state.promised == Ballot(written, 1)
    assert state.applied_index in (written - 1, written)
    assert kv_of(state.history) == {b"k%d" % s: b"x" * 50 for s in range(1, state.applied_index + 1)}


def test_a_torn_log_tail_loses_whole_batches_only(tmp_path: pathlib.Path) -> None:
    """A crash in the middle of a write leaves a torn record at the end of
    LevelDB's log: recovery drops it, never applying part of a batch."""
    path = tmp_path / "db"
    batches = 8
    with LevelDBStorage.open(path, 1, "c") as storage:
        for i in range(1, batches + 1):
            kv: dict[bytes, bytes | None] = {b"a%d" % i: b"x" * 300, b"b%d" % i: b"y" * 300}
            storage.apply(Changes(kv, {}, i), drop_accepted_through=0)
    [log] = [p for p in path.iterdir() if p.suffix == ".log"]
    size = log.stat().st_size
    seen = set()
    for cut in [1, *range(50, 4000, 150)]:
        copy = tmp_path / f"cut{cut}"
        copy.mkdir()
        for item in path.iterdir():
            (copy / item.name).write_bytes(item.read_bytes())
        os.truncate(copy / log.name, size - cut)
        with LevelDBStorage.open(copy, 1, "c") as storage:
            state = storage.load()
        applied = state.applied_index
        assert kv_of(state.history) == {
            key: value
            for i in range(1, applied + 1)
            for key, value in ((b"a%d" % i, b"x" * 300), (b"b%d" % i, b"y" * 300))
        }, f"cut {cut}"
        seen.add(applied)
    assert max(seen) == batches - 1 and min(seen) < batches - 4  # the cuts reached far back


# ---- file systems that cannot write -----------------------------------------------------


@pytest.mark.root
def test_read_only_mount_is_not_writable(tmp_path: pathlib.Path) -> None:
    where = tmp_path / "ro"
    where.mkdir()
    LevelDBStorage.open(where / "db", 1, "c").close()
    with mounted(
        where,
        ["mount", "--bind", str(where), str(where)],
        ["mount", "-o", "remount,ro,bind", str(where)],
    ):
        with pytest.raises(NotWritable) as error:
            LevelDBStorage.open(where / "db", 1, "c")
        assert "Read-only file system" in str(error.value)
        with pytest.raises(NotWritable):  # nor can a new store be made there
            LevelDBStorage.open(where / "new", 1, "c")
        assert not (where / "new").exists()


@pytest.mark.root
def test_full_disk_fails_the_write_and_every_later_one(tmp_path: pathlib.Path) -> None:
    with mounted(
        tmp_path / "mnt", ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(tmp_path / "mnt")]
    ) as root:
        storage = LevelDBStorage.open(root / "db", 1, "c")
        try:
            storage.persist(Ballot(1, 1), [], [], sync=True)
            fill_filesystem(root / "filler")
            with pytest.raises(NotWritable, match="No space left on device"):
                storage.persist(Ballot(2, 1), [Entry(1, Ballot(2, 1), (b"v" * 100_000,))], [], True)
            (root / "filler").unlink()
            # Space is back, but the log may end in a torn record: no more writes.
            with pytest.raises(NotWritable, match="an earlier write failed"):
                storage.persist(Ballot(3, 1), [], [], sync=True)
            with pytest.raises(NotWritable, match="an earlier write failed"):
                storage.apply(Changes({b"k": b"v"}, {}, 1), drop_accepted_through=0)
        finally:
            storage.close()
        with LevelDBStorage.open(root / "db", 1, "c") as storage:
            state = storage.load()
            assert state.promised == Ballot(1, 1) and state.accepted == {} and kv_of(state.history) == {}
            storage.persist(Ballot(4, 1), [], [], sync=True)  # a fresh handle writes again


# ---- what is on disk -----------------------------------------------------------------------


def test_key_layout(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "db"
    result = kv_pb2.CommandResult(index=2)
    with LevelDBStorage.open(path, 7, "prod") as storage:
        storage.persist(
            Ballot(3, 7), [Entry(258, Ballot(3, 7), (b"c",))], [(2, (b"a", b"b"))], True
        )
        storage.apply(Changes({b"key": b"val"}, {"cli": Session(1, result, 2)}, 2), 0)
    db = plyvel.DB(str(path))
    try:
        records = dict(db.iterator())
    finally:
        db.close()
    row = b"rev/" + rows_of({b"key": b"val"}).popitem()[0]
    assert sorted(records) == [
        b"accepted/\x00\x00\x00\x00\x00\x00\x01\x02",
        b"acceptor",
        b"applied",
        b"chosen/\x00\x00\x00\x00\x00\x00\x00\x02",
        b"meta",
        row,
        b"session/cli",
    ]
    meta = storage_pb2.NodeMeta.FromString(records[b"meta"])
    assert (meta.format_version, meta.node_id, meta.cluster_id) == (FORMAT_VERSION, 7, "prod")
    # Slot 2 was chosen with a value this store did not accept: stored in full.
    assert peer_pb2.Value.FromString(records[b"chosen/\x00\x00\x00\x00\x00\x00\x00\x02"]).commands == [b"a", b"b"]
    applied = storage_pb2.AppliedState.FromString(records[b"applied"])
    assert (applied.applied_index, applied.revision, applied.compact_revision) == (2, 2, -1)
    assert storage_pb2.AcceptorState.FromString(records[b"acceptor"]).promised.round == 3
    record = storage_pb2.HistoryRecord.FromString(records[row])
    assert (record.kv.key, record.kv.value, record.kv.mod_revision, record.tombstone) == (b"key", b"val", 2, False)


def write_raw(path: pathlib.Path, key: bytes, value: bytes) -> None:
    db = plyvel.DB(str(path))
    try:
        db.put(key, value, sync=True)
    finally:
        db.close()


@pytest.mark.parametrize(
    ("key", "value", "detail"),
    [
        (b"acceptor", b"\xff\xff\xff", "is not a AcceptorState"),
        (b"accepted/\x00\x01", b"", "has no 8-byte slot"),
        (b"accepted/\x00\x00\x00\x00\x00\x00\x00\x05", b"\x08\x06", "holds slot 6"),
        (b"chosen/\x00\x00\x00\x00\x00\x00\x00\x05", b"\x0a", "is not a Value"),
        (b"session/\xff", b"", "is not UTF-8"),
        (b"applied", b"\x08", "is not a AppliedState"),
    ],
)
def test_a_corrupt_record_is_reported(
    tmp_path: pathlib.Path, key: bytes, value: bytes, detail: str
) -> None:
    path = tmp_path / "db"
    LevelDBStorage.open(path, 1, "c").close()
    write_raw(path, key, value)
    with pytest.raises(Corrupt) as error:
        with LevelDBStorage.open(path, 1, "c") as storage:
            storage.load()
    assert detail in str(error.value) and "\n" not in str(error.value)


def test_records_without_identity_are_corrupt(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "db"
    db = plyvel.DB(str(path), create_if_missing=True)
    db.put(b"kv/x", b"y")
    db.close()
    with pytest.raises(Corrupt, match="no meta record"):
        LevelDBStorage.open(path, 1, "c")


def test_another_format_version_is_refused(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "db"
    LevelDBStorage.open(path, 1, "c").close()
    meta = storage_pb2.NodeMeta(format_version=5, node_id=1, cluster_id="c")
    write_raw(path, b"meta", meta.SerializeToString())
    with pytest.raises(WrongFormat, match="format version 5, this paxoskv reads 1, 2, 3, 4"):
        LevelDBStorage.open(path, 1, "c")


def read_raw(path: pathlib.Path) -> dict[bytes, bytes]:
    db = plyvel.DB(str(path))
    try:
        return dict(db.iterator())
    finally:
        db.close()


def chosen_key(slot: int) -> bytes:
    return b"chosen/" + slot.to_bytes(8, "big")


def accepted_key(slot: int) -> bytes:
    return b"accepted/" + slot.to_bytes(8, "big")


@pytest.mark.parametrize("old_version", [1, 2])
def test_an_older_store_is_read_and_marked_the_current_version(tmp_path: pathlib.Path, old_version: int) -> None:
    """Version 1 stored every chosen value in full, versions 1 and 2 hold no
    packed batch: still read as is; the store is marked the current version
    before anything else is written, so an older paxoskv refuses it."""
    assert FORMAT_VERSION == 4
    path = tmp_path / "db"
    with LevelDBStorage.open(path, 1, "c") as storage:
        storage.persist(None, [Entry(1, Ballot(1, 1), (b"a",))], [], sync=True)
    meta = storage_pb2.NodeMeta(format_version=old_version, node_id=1, cluster_id="c")
    write_raw(path, b"meta", meta.SerializeToString())
    write_raw(path, chosen_key(1), peer_pb2.Value(commands=[b"a"]).SerializeToString())
    with LevelDBStorage.open(path, 1, "c") as storage:
        state = storage.load()
    assert state.chosen == {1: (b"a",)} and state.accepted[1].value == (b"a",)
    assert storage_pb2.NodeMeta.FromString(read_raw(path)[b"meta"]).format_version == FORMAT_VERSION


def test_a_chosen_value_it_accepted_is_stored_once(tmp_path: pathlib.Path) -> None:
    """Chosen with the value of its accepted record: a marker, the accepted
    record kept as the copy through apply, both deleted by compaction; a value
    learned otherwise is stored in full."""
    path = tmp_path / "db"
    big = (b"x" * 5000, b"y" * 3000)
    with LevelDBStorage.open(path, 1, "c") as storage:
        storage.persist(None, [Entry(1, Ballot(1, 1), big)], [], sync=True)
        storage.persist(None, [Entry(2, Ballot(1, 1), (b"b",))], [(1, big), (2, (b"b",))], sync=True)
        storage.persist(None, [Entry(3, Ballot(1, 1), (b"old",))], [(3, (b"new",))], sync=True)
        storage.apply(Changes({}, {}, 3), drop_accepted_through=3)
        records = read_raw_open(storage)
    assert records[chosen_key(1)] == records[chosen_key(2)] == b"\x00"
    assert peer_pb2.Value.FromString(records[chosen_key(3)]).commands == [b"new"]
    assert accepted_key(1) in records and accepted_key(2) in records  # the copies
    assert accepted_key(3) not in records  # not the chosen value: dropped
    for _ in range(2):  # as written, and reopened
        with LevelDBStorage.open(path, 1, "c") as storage:
            state = storage.load()
        assert state.chosen == {1: big, 2: (b"b",), 3: (b"new",)}
        assert state.accepted == {}
    with LevelDBStorage.open(path, 1, "c") as storage:
        storage.compact(2)
        assert storage.load().chosen == {3: (b"new",)}
    records = read_raw(path)
    assert not any(k.startswith((b"accepted/", b"chosen/")) and k != chosen_key(3) for k in records)


def read_raw_open(storage: LevelDBStorage) -> dict[bytes, bytes]:
    with storage._using() as db:  # noqa: SLF001 - the raw records of an open store
        return dict(db.iterator())


@pytest.mark.parametrize("slots", [5, DROP_PROBE_SLOTS_MAX + 10])
def test_an_apply_drops_the_accepted_records_it_passes_few_or_many(tmp_path: pathlib.Path, slots: int) -> None:
    """An apply deletes every accepted record up to its drop slot except the
    marked copies of applied slots, and one it drops ahead of its apply gets
    its chosen value in full: alike when it finds them in the handle's index
    (a few slots) and with an iterator (many), in the handle that wrote them
    and in a reopened one."""
    path = tmp_path / "db"
    b = Ballot(1, 1)
    top = 2 * slots

    def own(s: int) -> tuple[bytes, ...]:
        return (b"v%d" % s,)

    with LevelDBStorage.open(path, 1, "c") as storage:
        storage.persist(None, [Entry(s, b, own(s)) for s in range(1, top + 1)], [], sync=True)
        # Even slots chosen with their accepted value (markers), odd ones with another.
        storage.persist(None, [], [(s, own(s) if s % 2 == 0 else (b"other",)) for s in range(1, slots + 1)], sync=True)
        storage.apply(Changes({}, {}, slots), drop_accepted_through=slots)
        first = read_raw_open(storage)
    kept = {s for s in range(1, top + 1) if s > slots or s % 2 == 0}
    assert {s for s in range(1, top + 1) if accepted_key(s) in first} == kept
    with LevelDBStorage.open(path, 1, "c") as storage:  # the index read from the store
        storage.persist(None, [], [(s, own(s)) for s in range(slots + 1, top + 1)], sync=True)
        storage.apply(Changes({}, {}, top - 1), drop_accepted_through=top)  # slot top: dropped ahead
        second = read_raw_open(storage)
    assert {s for s in range(1, top + 1) if accepted_key(s) in second} == kept - {top}
    assert peer_pb2.Value.FromString(second[chosen_key(top)]).commands == list(own(top))
    with LevelDBStorage.open(path, 1, "c") as storage:
        state = storage.load()
    assert state.accepted == {}
    assert state.chosen == {s: own(s) if s % 2 == 0 or s > slots else (b"other",) for s in range(1, top + 1)}


def test_a_marked_record_overwritten_with_another_value_keeps_the_chosen_one(tmp_path: pathlib.Path) -> None:
    """Paxos never does it, the storage protocol allows it: the chosen record
    then gets the value itself."""
    path = tmp_path / "db"
    with LevelDBStorage.open(path, 1, "c") as storage:
        storage.persist(None, [Entry(1, Ballot(1, 1), (b"a",))], [(1, (b"a",))], sync=True)
        storage.persist(None, [Entry(1, Ballot(2, 1), (b"z",))], [], sync=True)
    with LevelDBStorage.open(path, 1, "c") as storage:
        state = storage.load()
    assert state.chosen == {1: (b"a",)} and state.accepted[1].value == (b"z",)


def test_a_marker_without_its_accepted_record_is_corrupt(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "db"
    with LevelDBStorage.open(path, 1, "c") as storage:
        storage.persist(None, [Entry(4, Ballot(1, 1), (b"a",))], [(4, (b"a",))], sync=True)
    db = plyvel.DB(str(path))
    try:
        db.delete(accepted_key(4), sync=True)
    finally:
        db.close()
    with LevelDBStorage.open(path, 1, "c") as storage, pytest.raises(Corrupt, match="chosen marker but slot 4 has no accepted entry"):
        storage.load()


def test_open_without_create_does_not_create(tmp_path: pathlib.Path) -> None:
    with pytest.raises(NotFound):
        LevelDBStorage.open(tmp_path / "missing", 1, "c", create=False)
    assert not (tmp_path / "missing").exists()


def test_a_file_in_the_way_is_a_storage_error(tmp_path: pathlib.Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(StorageError, match="is not a directory"):
        LevelDBStorage.open(tmp_path / "file", 1, "c")


def test_plyvel_errors_are_mapped() -> None:
    cases = [
        (plyvel.IOError(b"IO error: lock /d/LOCK: already held by process"), Locked),
        (plyvel.IOError(b"IO error: /d/LOCK: Read-only file system"), NotWritable),
        (plyvel.IOError(b"IO error: /d/000003.log: No space left on device"), NotWritable),
        (plyvel.IOError(b"IO error: /d/LOCK: Permission denied"), NotWritable),
        (plyvel.CorruptionError(b"Corruption: bad block"), Corrupt),
        (plyvel.Error(b"Invalid argument: whatever"), StorageError),
    ]
    for exc, kind in cases:
        error = _storage_error("/d", exc)
        assert type(error) is kind, (exc, error)
        assert "\n" not in str(error) and "b'" not in str(error)


# ---- throughput ----------------------------------------------------------------------------


def test_synced_persist_throughput(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Measured and printed, not asserted: 100 entries of 100 B per synced batch."""
    entries_per_batch, value_bytes = 100, 100
    batches_max, budget_s = 400, 3.0
    latencies_s: list[float] = []
    with LevelDBStorage.open(tmp_path / "db", 1, "c") as storage:
        slot = 0
        started = time.perf_counter()
        while len(latencies_s) < batches_max and time.perf_counter() - started < budget_s:
            batch = []
            for _ in range(entries_per_batch):
                slot += 1
                batch.append(Entry(slot, Ballot(1, 1), (os.urandom(value_bytes),)))
            t0 = time.perf_counter()
            storage.persist(Ballot(1, 1), batch, [], sync=True)
            latencies_s.append(time.perf_counter() - t0)
        elapsed_s = time.perf_counter() - started
        assert len(storage.load().accepted) == slot
    latencies_s.sort()
    batches = len(latencies_s)
    p50_ms = latencies_s[batches // 2] * 1e3
    p99_ms = latencies_s[min(batches - 1, batches * 99 // 100)] * 1e3
    busy_s = sum(latencies_s)
    with capsys.disabled():
        print(
            f"\nLevelDB persist(sync=True), {entries_per_batch} entries x {value_bytes} B: "
            f"{batches} batches in {elapsed_s:.2f} s; {batches / busy_s:.0f} batches/s, "
            f"{batches * entries_per_batch / busy_s:.0f} entries/s, "
            f"{batches * entries_per_batch * value_bytes / busy_s / 1e6:.1f} MB/s of values; "
            f"latency p50 {p50_ms:.2f} ms, p99 {p99_ms:.2f} ms"
        )


def test_synced_install_throughput(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Measured and printed, not asserted: a snapshot of 100,000 keys (100 B
    values) read from one store and installed into another that holds half
    of them, some changed."""
    keys = 100_000
    kv = {b"key%08d" % i: b"%0100d" % i for i in range(keys)}
    sessions = {f"client-{i}": Session(i, kv_pb2.CommandResult(index=7), 7) for i in range(1000)}
    with LevelDBStorage.open(tmp_path / "a", 1, "c") as a, LevelDBStorage.open(
        tmp_path / "b", 2, "c"
    ) as b:
        a.apply(Changes(dict(kv), dict(sessions), 7), drop_accepted_through=0)
        b.apply(
            Changes(
                {k: b"old" if i % 4 else v for i, (k, v) in enumerate(kv.items()) if i % 2}, {}, 3
            ),
            drop_accepted_through=0,
        )
        t0 = time.perf_counter()
        with a.open_snapshot() as source:
            chunks = list(source.chunks(1 << 20))
        t1 = time.perf_counter()
        with b.begin_install() as installer:
            for chunk in chunks:
                installer.write(chunk)
            t2 = time.perf_counter()
            assert installer.finish() == 7
        t3 = time.perf_counter()
        state = b.load()
        assert kv_of(state.history) == kv and state.sessions == sessions and state.applied_index == 7
    size_mb = sum(map(len, chunks)) / 1e6
    with capsys.disabled():
        print(
            f"\nLevelDB snapshot of {keys} keys + {len(sessions)} sessions, {size_mb:.1f} MB: "
            f"read {t1 - t0:.2f} s ({size_mb / (t1 - t0):.1f} MB/s); install: staged "
            f"{t2 - t1:.2f} s, verified and switched {t3 - t2:.2f} s, total {t3 - t1:.2f} s "
            f"({size_mb / (t3 - t1):.1f} MB/s)"
        )


# ---- disk space --------------------------------------------------------------------------


def test_compact_then_reclaim_gives_the_disk_space_back(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "db"
    slots = 20_000
    with LevelDBStorage.open(path, 1, "c") as storage:
        for start in range(1, slots + 1, 1000):
            batch = range(start, start + 1000)
            storage.persist(
                Ballot(1, 1),
                [Entry(s, Ballot(1, 1), (os.urandom(300),)) for s in batch],
                [(s, (os.urandom(300),)) for s in batch],
                sync=False,
            )
        storage.apply(Changes({b"k": b"v"}, {}, slots), drop_accepted_through=0)
        storage.persist(None, [], [], sync=True)
        full = data_dir_bytes(path)
        assert full > 2 * slots * 300
        storage.compact(slots - 100)
        storage.reclaim()
        shrunk = data_dir_bytes(path)
        state = storage.load()
        assert state.log_start == slots - 99 and len(state.chosen) == 100
    assert shrunk < full / 10, (full, shrunk)
    with LevelDBStorage.open(path, 1, "c") as storage:
        assert storage.load() == state


def test_reclaim_after_an_install_gives_the_old_state_space_back(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "db"
    with LevelDBStorage.open(path, 1, "c") as storage:
        big = {b"key%06d" % i: os.urandom(500) for i in range(10_000)}
        storage.apply(Changes(dict(big), {}, 1), drop_accepted_through=0)
        storage.persist(None, [], [], sync=True)
        full = data_dir_bytes(path)
        data = snapshot_of("c", 5, {b"small": b"x"}, {})
        with storage.begin_install() as installer:
            installer.write(data)
            installer.finish()
        storage.reclaim()
        assert kv_of(storage.load().history) == {b"small": b"x"}
        assert data_dir_bytes(path) < full / 10


def test_data_dir_bytes_counts_every_file(tmp_path: pathlib.Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a").write_bytes(b"x" * 100)
    (tmp_path / "sub" / "b").write_bytes(b"y" * 23)
    assert data_dir_bytes(tmp_path) == 123
    assert data_dir_bytes(tmp_path / "missing") == 0


# ---- snapshots: staging, threads --------------------------------------------------------------


def staging_files(path: pathlib.Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.name.startswith(STAGING_PREFIX))


def test_an_install_stages_in_the_data_dir_and_cleans_up(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "db"
    data = snapshot_of("c", 5, {b"k%d" % i: b"v" * 100 for i in range(200)}, {})
    with LevelDBStorage.open(path, 1, "c") as storage:
        installer = storage.begin_install()
        installer.write(data[:1000])
        assert len(staging_files(path)) == 1
        installer.abort()
        assert staging_files(path) == []
        installer = storage.begin_install()
        installer.write(data)
        assert len(staging_files(path)) == 1
        installer.finish()
        assert staging_files(path) == []
        # A staging file left by a crash is removed by the next open; other
        # files are left alone.
        (path / f"{STAGING_PREFIX}leftover.tmp").write_bytes(data[:77])
        (path / "operator-notes.txt").write_text("keep me")
    with LevelDBStorage.open(path, 1, "c") as storage:
        assert staging_files(path) == [] and (path / "operator-notes.txt").exists()
        assert storage.load().applied_index == 5


def test_a_refused_open_does_not_touch_staging_files(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "db"
    with LevelDBStorage.open(path, 1, "c") as storage:
        installer = storage.begin_install()
        installer.write(b"partial")
        with pytest.raises(Locked):  # another process would see this
            LevelDBStorage.open(path, 1, "c")
        assert len(staging_files(path)) == 1
        installer.abort()


def test_sources_are_read_while_other_threads_write(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "db"
    with LevelDBStorage.open(path, 1, "c") as storage:
        kv = {b"key%05d" % i: b"v0" for i in range(5000)}
        storage.apply(Changes(dict(kv), {}, 1), drop_accepted_through=0)
        stop = threading.Event()
        written = []

        def writer() -> None:
            index = 1
            while not stop.is_set():
                index += 1
                storage.apply(Changes({b"key%05d" % (index % 5000): b"v%d" % index}, {}, index), 0)
                written.append(index)

        thread = threading.Thread(target=writer)
        thread.start()
        try:
            snapshots = []
            for _ in range(3):
                with storage.open_snapshot() as source:
                    index = source.applied_index
                    data = b"".join(source.chunks(10_000))
                reader = SnapshotReader()
                got = kv_of(dict(reader.feed(data)[0]))
                assert reader.finish().applied_index == index
                snapshots.append((index, got))
        finally:
            stop.set()
            thread.join()
        assert len(written) > 10
    # Each snapshot is exactly the state at its index: every write up to it.
    for index, got in snapshots:
        expected = dict(kv)
        for i in range(2, index + 1):
            expected[b"key%05d" % (i % 5000)] = b"v%d" % i
        assert got == expected


def test_close_waits_for_a_reader_and_then_stops_it(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "db"
    storage = LevelDBStorage.open(path, 1, "c")
    storage.apply(Changes({b"key%05d" % i: b"v" * 100 for i in range(20_000)}, {}, 1), 0)
    source = storage.open_snapshot()
    chunks = source.chunks(1000)
    next(chunks)  # a read is under way
    storage.close()
    with pytest.raises(StorageError, match="was closed"):
        for _ in chunks:
            pass
    source.close()
    with LevelDBStorage.open(path, 1, "c") as storage:
        assert storage.load().applied_index == 1


def test_reclaim_runs_beside_writes(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "db"
    with LevelDBStorage.open(path, 1, "c") as storage:
        for slot in range(1, 3001):
            storage.persist(None, [], [(slot, (b"x" * 200,))], sync=False)
        storage.apply(Changes({}, {}, 3000), drop_accepted_through=0)
        storage.compact(2900)
        thread = threading.Thread(target=storage.reclaim)
        thread.start()
        for index in range(3001, 3201):
            storage.persist(None, [Entry(index, Ballot(1, 1), (b"y",))], [(index, (b"y",))], True)
            storage.apply(Changes({b"k": b"%d" % index}, {}, index), drop_accepted_through=index)
        thread.join()
        state = storage.load()
    assert state.applied_index == 3200 and kv_of(state.history) == {b"k": b"3200"}
    assert sorted(state.chosen) == list(range(2901, 3201)) and state.accepted == {}


def test_a_corrupt_session_record_stops_the_source(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "db"
    LevelDBStorage.open(path, 1, "c").close()
    write_raw(path, b"session/c", b"\xff\xff")
    with LevelDBStorage.open(path, 1, "c") as storage, storage.open_snapshot() as source:
        with pytest.raises(Corrupt, match="is not a Session"):
            b"".join(source.chunks())


# ---- SIGKILL during a snapshot install -------------------------------------------------------

INSTALLER = """
import sys
from paxoskv.storage.leveldb import LevelDBStorage
storage = LevelDBStorage.open(sys.argv[1], 1, "c")
installer = storage.begin_install()
print("begun", flush=True); sys.stdin.readline()
with open(sys.argv[2], "rb") as snapshot:
    while chunk := snapshot.read(256 * 1024):
        installer.write(chunk)
        print("chunk", flush=True); sys.stdin.readline()
print("finishing", flush=True); sys.stdin.readline()
print("done", installer.finish(), flush=True)
sys.stdin.readline()
"""


def old_store(path: pathlib.Path) -> LoadedState:
    """The state the installer starts from: keys the snapshot drops, changes
    and keeps, sessions, a promise, and log entries on both sides of the
    snapshot's index."""
    with LevelDBStorage.open(path, 1, "c") as storage:
        storage.persist(
            Ballot(5, 2),
            [Entry(s, Ballot(5, 2), (b"a%d" % s,)) for s in range(90, 110)],
            [(s, (b"c%d" % s,)) for s in range(1, 105)],
            sync=True,
        )
        kv = {b"key%06d" % i: b"old" if i % 3 else b"%060d" % i for i in range(0, 30_000, 2)}
        kv[b"only-old"] = b"x"
        sessions = {"c1": Session(1, kv_pb2.CommandResult(index=2), 2)}
        storage.apply(Changes(kv, dict(sessions), 80), drop_accepted_through=0)
        storage.persist(None, [], [], sync=True)
        return storage.load()


def test_sigkill_during_an_install_leaves_the_old_or_the_new_state(tmp_path: pathlib.Path) -> None:
    template = tmp_path / "template"
    old = old_store(template)
    kv = {b"key%06d" % i: b"%060d" % i for i in range(30_000)}
    sessions = {
        "c1": Session(4, kv_pb2.CommandResult(index=99), 99),
        "c2": Session(1, kv_pb2.CommandResult(index=3), 3),
    }
    snapshot = tmp_path / "snapshot"
    snapshot.write_bytes(snapshot_of("c", 100, kv, sessions))
    chunks = -(-snapshot.stat().st_size // (256 * 1024))
    new = LoadedState(
        promised=old.promised,
        accepted={s: e for s, e in old.accepted.items() if s > 100},
        chosen={s: v for s, v in old.chosen.items() if s > 100},
        log_start=101,
        applied_index=100,
        history={k: v for k, v in rows_of(kv).items() if v is not None},
        sessions=sessions,
        revision=2,
    )
    rng = random.Random(5)
    outcomes: list[tuple[str, str]] = []
    finish_s = 0.5  # a first guess; then the longest finish seen
    for run in range(20):
        path = tmp_path / f"run{run}"
        shutil.copytree(template, path)
        where = ["begun", "chunk", "finishing", "finishing", "done"][run % 5]
        kill_at_chunk = rng.randrange(1, chunks + 1)
        with child(INSTALLER, str(path), str(snapshot)) as proc:
            assert proc.stdin is not None and proc.stdout is not None
            seen_chunks = 0
            while True:
                line = proc.stdout.readline()
                assert line.endswith("\n"), proc.stderr.read() if proc.stderr else ""
                step = line.split()[0]
                seen_chunks += step == "chunk"
                if step == where and (step != "chunk" or seen_chunks == kill_at_chunk):
                    break
                proc.stdin.write("go\n")
                proc.stdin.flush()
            if where == "finishing":  # let the finish run for a random part of its time
                proc.stdin.write("go\n")
                proc.stdin.flush()
                started = time.monotonic()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=rng.uniform(0, finish_s))
                if proc.poll() is None:
                    os.kill(proc.pid, signal.SIGKILL)
                done = proc.stdout.readline()  # "done ..." if finish returned first
                if done.startswith("done"):
                    finish_s = max(finish_s, time.monotonic() - started)
            else:
                os.kill(proc.pid, signal.SIGKILL)
            assert proc.wait(timeout=30) == -signal.SIGKILL
        leftover = staging_files(path)
        with LevelDBStorage.open(path, 1, "c") as storage:
            state = storage.load()
        assert staging_files(path) == []
        if where in ("begun", "chunk"):
            assert leftover and state == old, (run, where)
        elif where == "done":
            assert state == new, (run, where)
        else:
            assert state in (old, new), (run, where)
        outcomes.append((where, "new" if state == new else "old"))
        shutil.rmtree(path)
    assert len(outcomes) == 20


def test_a_torn_install_batch_is_lost_whole(tmp_path: pathlib.Path) -> None:
    """A crash in the middle of writing the switch batch leaves a torn record
    at the end of LevelDB's log: recovery drops it, so the old state is back,
    never part of the new one."""
    template = tmp_path / "template"
    old = old_store(template)
    path = tmp_path / "installed"
    shutil.copytree(template, path)
    logs_before = {p.name: p.stat().st_size for p in path.iterdir() if p.suffix == ".log"}
    kv = {b"key%06d" % i: b"%060d" % i for i in range(5_000)}
    with LevelDBStorage.open(path, 1, "c") as storage:
        with storage.begin_install() as installer:
            installer.write(snapshot_of("c", 100, kv, {}))
            installer.finish()
        new = storage.load()
    assert kv_of(new.history) == kv
    [log] = [p for p in path.iterdir() if p.suffix == ".log" and p.name not in logs_before]
    size = log.stat().st_size
    assert size > 5_000 * 70  # the switch batch is in this log
    for cut in [1, 100, 4096, size // 3, size // 2, size - 5_000 * 70 + 10]:
        copy = tmp_path / f"cut{cut}"
        shutil.copytree(path, copy)
        os.truncate(copy / log.name, size - cut)
        with LevelDBStorage.open(copy, 1, "c") as storage:
            assert storage.load() == old, f"cut {cut}"
        shutil.rmtree(copy)


def test_a_store_switches_compression_and_reads_what_it_wrote_before(tmp_path: pathlib.Path) -> None:
    """Blocks written with snappy are read after a reopen without compression,
    and the other way round; an unknown compression is refused."""
    path = tmp_path / "db"
    value = b"compressible " * 100
    for round_, compression in enumerate(["snappy", None, "snappy", None]):
        with LevelDBStorage.open(path, 1, "c", compression=compression) as storage:
            state = storage.load()
            assert {k: v for k, v in kv_of(state.history).items()} == {b"k%d" % i: value for i in range(round_)}
            storage.apply(Changes(kv={b"k%d" % round_: value}, sessions={}, applied_index=round_ + 1), 0)
            storage.reclaim()  # a full compaction: the records go to table files, in this round's compression
    with pytest.raises(ValueError, match="compression must be one of"):
        LevelDBStorage.open(path, 1, "c", compression="zstd")


def test_without_compression_the_table_files_hold_the_bytes_as_they_are(tmp_path: pathlib.Path) -> None:
    sizes = {}
    for compression in (None, "snappy"):
        path = tmp_path / str(compression)
        with LevelDBStorage.open(path, 1, "c", compression=compression) as storage:
            kv = {b"k%05d" % i: b"compressible " * 80 for i in range(2000)}
            storage.apply(Changes(kv=kv, sessions={}, applied_index=1), 0)
        with LevelDBStorage.open(path, 1, "c", compression=compression) as storage:  # the log becomes a table
            assert len(kv_of(storage.load().history)) == 2000
        sizes[compression] = sum(f.stat().st_size for f in path.glob("*.ldb"))
    assert sizes[None] > 2000 * 1040 > 10 * sizes["snappy"], sizes
