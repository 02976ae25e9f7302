"""paxoskv.storage.leveldb: what only a real LevelDB on a real disk can show.

Other processes (a lock holder, a writer killed with SIGKILL), a read-only
mount and a full file system (both need root: tests run as root), on-disk
corruption, the key layout, and the throughput of synced batches.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import plyvel
import pytest

from paxoskv.kv import Changes, Session
from paxoskv.paxos.types import Ballot, Entry
from paxoskv.storage import (
    Corrupt,
    LevelDBStorage,
    Locked,
    NotFound,
    NotWritable,
    StorageError,
    WrongFormat,
)
from paxoskv.storage.leveldb import _storage_error
from paxoskv.v1 import kv_pb2, storage_pb2


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
from paxoskv.storage import LevelDBStorage
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
from paxoskv.paxos.types import Ballot, Entry
from paxoskv.storage import LevelDBStorage
storage = LevelDBStorage.open(sys.argv[1], 1, "c")
deadline = time.monotonic() + 120
slot = 0
while slot < 100_000 and time.monotonic() < deadline:
    slot += 1
    storage.persist(Ballot(slot, 1), [Entry(slot, Ballot(slot, 1), (b"v%d" % slot,))], [], sync=True)
    storage.apply(Changes({b"k%d" % slot: b"x" * 50}, {}, slot), drop_accepted_through=0)
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
    assert state.kv == {b"k%d" % s: b"x" * 50 for s in range(1, state.applied_index + 1)}


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
        assert state.kv == {
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
            assert state.promised == Ballot(1, 1) and state.accepted == {} and state.kv == {}
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
    assert sorted(records) == [
        b"accepted/\x00\x00\x00\x00\x00\x00\x01\x02",
        b"acceptor",
        b"applied",
        b"chosen/\x00\x00\x00\x00\x00\x00\x00\x02",
        b"kv/key",
        b"meta",
        b"session/cli",
    ]
    meta = storage_pb2.NodeMeta.FromString(records[b"meta"])
    assert (meta.format_version, meta.node_id, meta.cluster_id) == (1, 7, "prod")
    assert storage_pb2.AppliedState.FromString(records[b"applied"]).applied_index == 2
    assert storage_pb2.AcceptorState.FromString(records[b"acceptor"]).promised.round == 3
    assert records[b"kv/key"] == b"val"


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
    meta = storage_pb2.NodeMeta(format_version=2, node_id=1, cluster_id="c")
    write_raw(path, b"meta", meta.SerializeToString())
    with pytest.raises(WrongFormat, match="format version 2"):
        LevelDBStorage.open(path, 1, "c")


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
