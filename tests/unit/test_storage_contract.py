"""The storage contract (paxoskv.storage.base), run against every implementation.

Compaction, snapshot sources and snapshot installs are part of it: both
backends must give the same answers and even produce byte-identical
snapshots of the same state.

Each test gets a ``backend``: a place where a store lives across opens (a
LevelDB directory, or a MemoryDisk), so "close and reopen" means the same
thing for both. Tests that need a failing disk get a ``full_backend``, whose
``fill()`` makes every write fail (a filled tmpfs for LevelDB, the
``fault_full_disk`` toggle for memory).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import subprocess
from collections.abc import Iterator
from typing import Protocol

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from paxoskv.kv import Changes, Session
from paxoskv.paxos.bounds import BALLOT_ROUND_MAX, SLOT_MAX
from paxoskv.paxos.types import ZERO_BALLOT, Ballot, Entry, Value
from paxoskv.storage.leveldb import LevelDBStorage
from paxoskv.storage import (
    LoadedState,
    Locked,
    MemoryDisk,
    MemoryStorage,
    NotFound,
    NotWritable,
    OutOfRange,
    SnapshotCorrupt,
    SnapshotReader,
    SnapshotRefused,
    Storage,
    WrongCluster,
    WrongNode,
)
from paxoskv.storage.snapshot import snapshot_bytes
from paxoskv.v1 import kv_pb2

from kv_rows import changes, kv_of, rows_of, snapshot_of

OK = kv_pb2.CommandResult.OK


class Backend(Protocol):
    def open(self, node_id: int = 1, cluster_id: str = "c1", create: bool = True) -> Storage: ...


class LevelDBBackend:
    def __init__(self, root: pathlib.Path) -> None:
        self.root = root
        self.path = root / "db"

    def open(self, node_id: int = 1, cluster_id: str = "c1", create: bool = True) -> Storage:
        return LevelDBStorage.open(self.path, node_id, cluster_id, create=create)

    def fill(self) -> None:
        fill_filesystem(self.root / "filler")

    def free(self) -> None:
        (self.root / "filler").unlink()


class MemoryBackend:
    def __init__(self) -> None:
        self.disk = MemoryDisk("memory-disk")

    def open(self, node_id: int = 1, cluster_id: str = "c1", create: bool = True) -> Storage:
        return MemoryStorage(self.disk, node_id=node_id, cluster_id=cluster_id, create=create)

    def fill(self) -> None:
        self.disk.full = True

    def free(self) -> None:
        self.disk.full = False


@contextlib.contextmanager
def tmpfs(where: pathlib.Path, size: str) -> Iterator[pathlib.Path]:
    """A small tmpfs mounted at ``where`` (needs root), unmounted at the end."""
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], check=True)


def fill_filesystem(filler: pathlib.Path) -> None:
    """Write ``filler`` until the file system has no byte left."""
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        for chunk in (65536, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * chunk)
    finally:
        os.close(fd)
    assert os.statvfs(filler.parent).f_bavail == 0


@pytest.fixture(params=["leveldb", "memory"])
def backend(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Backend:
    if request.param == "leveldb":
        return LevelDBBackend(tmp_path)
    return MemoryBackend()


@pytest.fixture(params=[pytest.param("leveldb", marks=pytest.mark.root), "memory"])
def full_backend(
    request: pytest.FixtureRequest, tmp_path: pathlib.Path
) -> Iterator[LevelDBBackend | MemoryBackend]:
    if request.param == "leveldb":
        with tmpfs(tmp_path / "mnt", "2m") as root:
            yield LevelDBBackend(root)
    else:
        yield MemoryBackend()


@contextlib.contextmanager
def opened(backend: Backend, **kwargs: object) -> Iterator[Storage]:
    storage = backend.open(**kwargs)  # type: ignore[arg-type]
    try:
        yield storage
    finally:
        storage.close()


def result(
    index: int, existed: bool = False, code: int = OK, error: str = ""
) -> kv_pb2.CommandResult:
    return kv_pb2.CommandResult(code=code, index=index, existed=existed, error=error)


def assert_fresh(state: LoadedState) -> None:
    assert state == LoadedState(
        promised=ZERO_BALLOT,
        accepted={},
        chosen={},
        log_start=1,
        applied_index=0,
        history={},
        sessions={},
    )


# ---- round trips ----------------------------------------------------------------


def test_fresh_store_is_empty(backend: Backend) -> None:
    with opened(backend) as storage:
        assert isinstance(storage, Storage)
        assert_fresh(storage.load())
    with opened(backend) as storage:
        assert_fresh(storage.load())


VALUES: list[Value] = [
    (),  # the no-op
    (b"",),
    (b"one",),
    (b"a", b"", b"\x00\xff" * 1000),
    tuple(bytes([i]) * i for i in range(50)),
]


def test_persist_round_trip(backend: Backend) -> None:
    accepted = [Entry(slot, Ballot(slot, 3), value) for slot, value in enumerate(VALUES, 1)]
    accepted.append(Entry(SLOT_MAX, Ballot(BALLOT_ROUND_MAX, (1 << 32) - 1), (b"max",)))
    chosen = [(slot + 10, value) for slot, value in enumerate(VALUES, 1)]
    chosen.append((SLOT_MAX - 1, (b"big",)))
    with opened(backend) as storage:
        storage.persist(Ballot(7, 2), accepted, chosen, sync=True)
        seen = storage.load()
    with opened(backend) as storage:
        reopened = storage.load()
    for state in (seen, reopened):
        assert state.promised == Ballot(7, 2)
        assert state.accepted == {e.slot: e for e in accepted}
        assert state.chosen == dict(chosen)
        assert state.log_start == 1 and state.applied_index == 0
        assert all(type(v) is tuple for v in state.chosen.values())


# What a paxoskv before input checks may have saved from one peer message.
IMPOSSIBLE: dict[str, tuple[Ballot | None, list[Entry], list[tuple[int, Value]], str]] = {
    "promise round 2**64-1": (Ballot((1 << 64) - 1, 2), [], [], "a promise at ballot 18446744073709551615.2"),
    "promise round past the maximum": (Ballot(BALLOT_ROUND_MAX + 1, 2), [], [], "BALLOT_ROUND_MAX"),
    "accepted ballot round": (None, [Entry(4, Ballot((1 << 64) - 1, 2), (b"x",))], [], "entry of slot 4"),
    "accepted slot": (None, [Entry(SLOT_MAX + 1, Ballot(3, 2), (b"x",))], [], "SLOT_MAX"),
    "chosen slot": (None, [], [((1 << 64) - 1, (b"x",))], "a value chosen at slot 18446744073709551615"),
}


@pytest.mark.parametrize("case", sorted(IMPOSSIBLE))
def test_a_value_past_the_maxima_on_disk_refuses_the_load_and_says_how_to_recover(
    backend: Backend, case: str
) -> None:
    """A node that finds such a value would fail at its next election, and
    again at every restart: it refuses to start instead, in one line that
    says what it found and what to do, and changes nothing."""
    promised, accepted, chosen, what = IMPOSSIBLE[case]
    with opened(backend) as storage:
        storage.persist(promised, accepted, chosen, sync=True)
    for _ in range(2):
        with opened(backend) as storage:
            with pytest.raises(OutOfRange) as exc:
                storage.load()
        message = str(exc.value)
        assert "\n" not in message and what in message, message
        assert "move the directory away and restart the node with an empty one" in message
        assert "paxoskv snapshot restore" in message


def test_persist_without_promise_keeps_the_old_one_and_replaces_entries(backend: Backend) -> None:
    with opened(backend) as storage:
        storage.persist(Ballot(1, 1), [Entry(4, Ballot(1, 1), (b"x",))], [], sync=True)
        storage.persist(None, [Entry(4, Ballot(2, 3), (b"y",))], [(4, (b"y",))], sync=True)
        storage.persist(Ballot(5, 2), [], [], sync=False)
        storage.persist(None, [], [], sync=True)
    with opened(backend) as storage:
        state = storage.load()
    assert state.promised == Ballot(5, 2)
    assert state.accepted == {4: Entry(4, Ballot(2, 3), (b"y",))}
    assert state.chosen == {4: (b"y",)}


def test_unsynced_writes_are_visible_to_the_writer(backend: Backend) -> None:
    with opened(backend) as storage:
        storage.persist(
            Ballot(1, 1), [Entry(1, Ballot(1, 1), (b"x",)), Entry(2, Ballot(1, 1), (b"y",))], [(1, (b"x",))], sync=False
        )
        storage.apply(changes(1, {b"k": b"v"}), drop_accepted_through=0)
        state = storage.load()
    assert state.promised == Ballot(1, 1) and state.chosen == {1: (b"x",)}
    # Slot 1 is chosen and applied: its entry is no acceptance in play any more.
    assert {s: e.value for s, e in state.accepted.items()} == {2: (b"y",)}
    assert kv_of(state.history) == {b"k": b"v"} and state.applied_index == 1


def test_apply_round_trip(backend: Backend) -> None:
    s1 = Session(3, result(2, existed=True), 2)
    s2 = Session(1, result(2, code=kv_pb2.CommandResult.INVALID, error="key is empty"), 2)
    with opened(backend) as storage:
        storage.apply(
            changes(
                2,
                {b"a": b"1", b"b": b"", b"\x00\xff": b"\xff" * 5000, b"gone": None},
                {"client-1": s1, "ünïcode ✓": s2, "never": None},
            ),
            drop_accepted_through=0,
        )
        storage.apply(
            changes(3, {b"b": None, b"a": b"2"}, {"client-1": None, "c3": s1}),
            drop_accepted_through=0,
        )
        seen = storage.load()
    with opened(backend) as storage:
        reopened = storage.load()
    for state in (seen, reopened):
        assert kv_of(state.history) == {b"a": b"2", b"\x00\xff": b"\xff" * 5000}
        assert state.sessions == {"ünïcode ✓": s2, "c3": s1}
        assert state.applied_index == 3


def test_apply_drops_accepted_entries_through_the_given_slot(backend: Backend) -> None:
    def entry(slot: int) -> Entry:
        return Entry(slot, Ballot(1, 1), (str(slot).encode(),))

    with opened(backend) as storage:
        storage.persist(None, [entry(s) for s in range(1, 11)], [], sync=True)
        storage.apply(changes(1), drop_accepted_through=4)
        assert sorted(storage.load().accepted) == list(range(5, 11))
        storage.apply(changes(2), drop_accepted_through=2)  # lower: nothing more
        assert sorted(storage.load().accepted) == list(range(5, 11))
        # An entry accepted again below the last drop is dropped by a later one.
        storage.persist(None, [entry(3), entry(12)], [], sync=True)
        assert sorted(storage.load().accepted) == [3, *range(5, 11), 12]
        storage.apply(changes(3), drop_accepted_through=6)
        assert sorted(storage.load().accepted) == [7, 8, 9, 10, 12]
        storage.apply(changes(4), drop_accepted_through=0)
        assert sorted(storage.load().accepted) == [7, 8, 9, 10, 12]
    with opened(backend) as storage:
        assert sorted(storage.load().accepted) == [7, 8, 9, 10, 12]
        storage.apply(changes(5), drop_accepted_through=(1 << 64) - 1)
        assert storage.load().accepted == {}


def test_chosen_values_are_not_dropped_with_accepted_ones(backend: Backend) -> None:
    with opened(backend) as storage:
        storage.persist(None, [Entry(1, Ballot(1, 1), (b"x",))], [(1, (b"x",))], sync=True)
        storage.apply(changes(1, {b"x": b"x"}), drop_accepted_through=1)
        state = storage.load()
    assert state.accepted == {} and state.chosen == {1: (b"x",)}


def test_applied_index_never_goes_back(backend: Backend) -> None:
    with opened(backend) as storage:
        storage.apply(changes(5), drop_accepted_through=0)
        storage.apply(changes(5), drop_accepted_through=0)
        with pytest.raises(AssertionError):
            storage.apply(changes(4), drop_accepted_through=0)


# ---- identity and opening -------------------------------------------------------------


def test_other_node_or_cluster_is_refused_and_nothing_changes(backend: Backend) -> None:
    with opened(backend, node_id=3, cluster_id="prod") as storage:
        storage.persist(Ballot(2, 3), [Entry(1, Ballot(2, 3), (b"v",))], [(1, (b"v",))], True)
        storage.apply(changes(1, {b"k": b"v"}, {"c": Session(1, result(1), 1)}), 0)
        before = storage.load()
    with pytest.raises(WrongNode) as node_error:
        backend.open(node_id=4, cluster_id="prod")
    message = str(node_error.value)
    assert "node 3" in message and "node 4" in message and "\n" not in message
    assert (node_error.value.stored_node_id, node_error.value.node_id) == (3, 4)
    with pytest.raises(WrongCluster) as cluster_error:
        backend.open(node_id=3, cluster_id="staging")
    assert "'prod'" in str(cluster_error.value) and "'staging'" in str(cluster_error.value)
    with pytest.raises(WrongNode):  # the node is checked first
        backend.open(node_id=1, cluster_id="staging")
    with opened(backend, node_id=3, cluster_id="prod") as storage:
        assert storage.load() == before


def test_identity_is_recorded_by_the_first_open_even_if_nothing_else_is(backend: Backend) -> None:
    backend.open(node_id=2, cluster_id="a").close()
    with pytest.raises(WrongNode):
        backend.open(node_id=1, cluster_id="a")


def test_second_open_while_open_is_locked(backend: Backend) -> None:
    with opened(backend) as storage:
        storage.persist(Ballot(1, 1), [], [], sync=True)
        with pytest.raises(Locked) as error:
            backend.open()
        assert "another process" in str(error.value)
        assert storage.load().promised == Ballot(1, 1)  # the holder is unharmed
    with opened(backend) as storage:
        assert storage.load().promised == Ballot(1, 1)


def test_open_without_create_needs_an_initialised_store(backend: Backend) -> None:
    with pytest.raises(NotFound):
        backend.open(create=False)
    backend.open().close()
    with opened(backend, create=False) as storage:
        assert_fresh(storage.load())


@pytest.mark.parametrize(("node_id", "cluster_id"), [(0, "c"), (1 << 32, "c"), (1, "")])
def test_bad_identity_is_a_caller_error(backend: Backend, node_id: int, cluster_id: str) -> None:
    with pytest.raises(ValueError):
        backend.open(node_id=node_id, cluster_id=cluster_id)


def test_close_is_idempotent(backend: Backend) -> None:
    storage = backend.open()
    storage.close()
    storage.close()


# ---- a disk that cannot write ----------------------------------------------------------


def test_open_on_a_full_disk_is_not_writable(full_backend: LevelDBBackend | MemoryBackend) -> None:
    full_backend.open().close()
    full_backend.fill()
    with pytest.raises(NotWritable) as error:
        full_backend.open()
    assert "not writable" in str(error.value) and "\n" not in str(error.value)
    full_backend.free()
    full_backend.open().close()  # the lock was released


def test_a_failed_write_leaves_nothing_behind(full_backend: LevelDBBackend | MemoryBackend) -> None:
    """Atomicity: a batch that fails half-way is absent, whole, after reopening."""
    with opened(full_backend) as storage:
        storage.persist(Ballot(1, 1), [Entry(1, Ballot(1, 1), (b"x",))], [], sync=True)
        storage.apply(changes(1, {b"before": b"1"}), drop_accepted_through=0)
        storage.persist(None, [], [], sync=True)
        before = storage.load()
        full_backend.fill()
        big = {f"k{i}".encode(): b"v" * 4000 for i in range(200)}  # 800 kB: fails half-way
        with pytest.raises(NotWritable):
            storage.apply(changes(2, {b"before": None, **big}), drop_accepted_through=1)
        with pytest.raises(NotWritable):
            storage.persist(Ballot(2, 1), [Entry(2, Ballot(2, 1), (b"y",) * 1000)], [], sync=True)
    full_backend.free()
    with opened(full_backend) as storage:
        assert storage.load() == before


# ---- a model-based property --------------------------------------------------------------

slots = st.integers(1, 12)
values = st.lists(st.binary(max_size=6), max_size=3).map(tuple)
ballots = st.builds(Ballot, st.integers(0, 5), st.integers(0, 3))
persist_op = st.tuples(
    st.just("persist"),
    st.none() | ballots,
    st.lists(st.builds(Entry, slots, ballots, values), max_size=4),
    st.lists(st.tuples(slots, values), max_size=3),
    st.booleans(),
)
sessions = st.builds(
    Session, st.integers(1, 9), st.builds(result, st.integers(1, 9)), st.integers(1, 9)
)
apply_op = st.tuples(
    st.just("apply"),
    st.dictionaries(
        st.binary(min_size=1, max_size=3), st.none() | st.binary(max_size=4), max_size=4
    ),
    st.dictionaries(st.sampled_from(["a", "b", "é"]), st.none() | sessions, max_size=2),
    st.integers(0, 3),  # applied index increment
    st.integers(-1, 13),  # drop_accepted_through
)
reopen_op = st.just(("reopen",))
compact_op = st.tuples(st.just("compact"), st.integers(0, 4))  # how far below applied


class Model:
    def __init__(self) -> None:
        self.state = LoadedState(ZERO_BALLOT, {}, {}, 1, 0, {}, {})  # revision 1, no compaction

    def visible(self) -> LoadedState:
        """What load() shows: no accepted entry of a chosen, applied slot."""
        s = self.state
        accepted = {
            slot: e for slot, e in s.accepted.items() if not (slot <= s.applied_index and slot in s.chosen)
        }
        return dataclasses.replace(s, accepted=accepted)

    def persist(
        self, promised: Ballot | None, accepted: list[Entry], chosen: list[tuple[int, Value]]
    ) -> None:
        s = self.state
        self.state = LoadedState(
            promised if promised is not None else s.promised,
            {**s.accepted, **{e.slot: e for e in accepted}},
            {**s.chosen, **{slot: v for slot, v in chosen if slot >= s.log_start}},
            s.log_start,
            s.applied_index,
            s.history,
            s.sessions,
            s.revision,
            s.compact_revision,
            s.alarms,
        )

    def compact(self, through: int) -> None:
        s = self.state
        if through < s.log_start:
            return
        self.state = LoadedState(
            s.promised,
            {slot: e for slot, e in s.accepted.items() if slot > through},
            {slot: v for slot, v in s.chosen.items() if slot > through},
            through + 1,
            s.applied_index,
            s.history,
            s.sessions,
            s.revision,
            s.compact_revision,
            s.alarms,
        )

    def apply(self, ch: Changes, through: int) -> None:
        s = self.state
        history = dict(s.history)
        for k, v in ch.history.items():
            if v is None:
                history.pop(k, None)
            else:
                history[k] = v
        sess = dict(s.sessions)
        for c, v2 in ch.sessions.items():
            if v2 is None:
                sess.pop(c, None)
            else:
                sess[c] = v2
        accepted = {slot: e for slot, e in s.accepted.items() if slot > through}
        self.state = LoadedState(
            s.promised, accepted, s.chosen, s.log_start, ch.applied_index, history, sess,
            ch.revision, ch.compact_revision, ch.alarms,
        )


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=st.lists(persist_op | apply_op | reopen_op | compact_op, max_size=25))
def test_matches_a_model(tmp_path_factory: pytest.TempPathFactory, ops: list[tuple]) -> None:  # type: ignore[type-arg]
    backends: list[Backend] = [LevelDBBackend(tmp_path_factory.mktemp("model")), MemoryBackend()]
    for backend in backends:
        model = Model()
        storage = backend.open()
        try:
            for op in ops:
                if op[0] == "persist":
                    _, promised, accepted, chosen, sync = op
                    storage.persist(promised, accepted, chosen, sync)
                    model.persist(promised, accepted, chosen)
                elif op[0] == "apply":
                    _, kv, sess, step, through = op
                    ch = changes(model.state.applied_index + step, kv, sess)
                    storage.apply(ch, through)
                    model.apply(ch, through)
                elif op[0] == "compact":
                    through = max(0, model.state.applied_index - op[1])
                    storage.compact(through)
                    model.compact(through)
                else:
                    storage.close()
                    storage = backend.open()
                assert storage.load() == model.visible()
        finally:
            storage.close()


# ---- compaction ------------------------------------------------------------------------


def entry(slot: int, ballot: Ballot = Ballot(1, 1)) -> Entry:
    return Entry(slot, ballot, (b"v%d" % slot,))


def fill_log(storage: Storage, slots: range, applied: int) -> None:
    """Accept and choose every slot of ``slots``; apply through ``applied``."""
    storage.persist(
        Ballot(2, 1), [entry(s) for s in slots], [(s, (b"v%d" % s,)) for s in slots], sync=True
    )
    storage.apply(changes(applied, {b"k%d" % applied: b"x"}), drop_accepted_through=0)


def test_compact_drops_the_log_through_a_slot_and_moves_log_start(backend: Backend) -> None:
    with opened(backend) as storage:
        fill_log(storage, range(1, 21), applied=15)
        storage.compact(10)
        seen = storage.load()
    with opened(backend) as storage:
        reopened = storage.load()
    for state in (seen, reopened):
        assert state.log_start == 11
        assert sorted(state.chosen) == list(range(11, 21))
        # 11-15 are chosen and applied: no acceptances in play any more.
        assert sorted(state.accepted) == list(range(16, 21))
        assert state.promised == Ballot(2, 1) and state.applied_index == 15
        assert kv_of(state.history) == {b"k15": b"x"}


def test_compact_never_moves_log_start_back_nor_past_applied(backend: Backend) -> None:
    with opened(backend) as storage:
        fill_log(storage, range(1, 11), applied=8)
        storage.compact(6)
        storage.compact(3)  # lower: nothing
        storage.compact(6)  # the same: nothing
        state = storage.load()
        assert state.log_start == 7 and sorted(state.chosen) == [7, 8, 9, 10]
        with pytest.raises(AssertionError):
            storage.compact(9)  # slot 9 is not applied
        storage.compact(0)
        assert storage.load() == state
        storage.compact(8)
        assert storage.load().log_start == 9


def test_chosen_values_below_log_start_are_not_stored_again(backend: Backend) -> None:
    """A late catch-up reply may carry slots that were compacted meanwhile."""
    with opened(backend) as storage:
        fill_log(storage, range(1, 6), applied=5)
        storage.compact(5)
        storage.persist(None, [], [(3, (b"late",)), (6, (b"new",))], sync=True)
        assert storage.load().chosen == {6: (b"new",)}
    with opened(backend) as storage:
        assert storage.load().chosen == {6: (b"new",)}


def test_reclaim_changes_no_record(backend: Backend) -> None:
    with opened(backend) as storage:
        fill_log(storage, range(1, 50), applied=40)
        storage.compact(30)
        before = storage.load()
        storage.reclaim()
        storage.reclaim()
        assert storage.load() == before


# ---- snapshot sources --------------------------------------------------------------------

S1 = Session(2, result(4, existed=True), 4)
S2 = Session(7, result(5, code=kv_pb2.CommandResult.INVALID, error="too big"), 5)


def seed_state(storage: Storage) -> None:
    storage.persist(
        Ballot(3, 2), [entry(s) for s in range(1, 8)], [(s, (b"c",)) for s in range(1, 8)], True
    )
    storage.apply(
        changes(5, {b"a": b"1", b"b": b"", b"\x00": b"\xff" * 3000}, {"c1": S1, "ü": S2}), 0
    )


def read_snapshot(data: bytes) -> tuple[int, dict[bytes, bytes], dict[str, Session]]:
    """The applied index, history rows and sessions of a snapshot."""
    reader = SnapshotReader()
    rows, sessions = reader.feed(data)
    info = reader.finish()
    return info.applied_index, dict(rows), dict(sessions)


def test_a_snapshot_source_is_the_applied_state_at_open(backend: Backend) -> None:
    with opened(backend) as storage:
        seed_state(storage)
        source = storage.open_snapshot()
        # Writers go on while the source is open, and it does not see them.
        storage.apply(changes(6, {b"a": b"changed", b"new": b"x", b"b": None}, {"c1": None}), 5)
        storage.compact(6)
        try:
            assert source.applied_index == 5 and source.cluster_id == "c1"
            first = b"".join(source.chunks(100))
            again = b"".join(source.chunks())  # may be read again, same bytes
        finally:
            source.close()
        source.close()  # idempotent
    assert first == again
    index, rows, sessions = read_snapshot(first)
    assert (index, kv_of(rows), sessions) == (5, {b"a": b"1", b"b": b"", b"\x00": b"\xff" * 3000}, {"c1": S1, "ü": S2})
    assert first == snapshot_bytes("c1", 5, rows, sessions, revision=2)  # canonical bytes


def test_both_backends_write_the_same_bytes(tmp_path: pathlib.Path) -> None:
    out = []
    for backend in (LevelDBBackend(tmp_path), MemoryBackend()):
        with opened(backend) as storage:
            seed_state(storage)
            with storage.open_snapshot() as source:
                out.append(b"".join(source.chunks(4096)))
    assert out[0] == out[1]


def test_a_fresh_store_has_an_empty_snapshot(backend: Backend) -> None:
    with opened(backend) as storage, storage.open_snapshot() as source:
        assert read_snapshot(b"".join(source.chunks())) == (0, {}, {})


def test_closing_the_storage_releases_open_sources(backend: Backend) -> None:
    storage = backend.open()
    seed_state(storage)
    storage.open_snapshot()  # never closed by its user
    storage.close()
    with opened(backend) as storage:
        assert storage.load().applied_index == 5


# ---- snapshot installs -------------------------------------------------------------------

NEW_KV = {b"a": b"1", b"b": b"now set", b"c": b"new", b"\x00": b"\xff" * 3000}  # b"" and kept
NEW_SESSIONS = {"c1": Session(3, result(9), 9), "c9": S1}


def install(storage: Storage, data: bytes, chunk_bytes: int = 1000, **kwargs: object) -> int:
    with storage.begin_install(**kwargs) as installer:  # type: ignore[arg-type]
        assert installer.applied_index is None
        for start in range(0, len(data), chunk_bytes):
            installer.write(data[start : start + chunk_bytes])
        assert installer.applied_index is not None
        assert installer.bytes_written == len(data)
        return installer.finish()


def test_install_replaces_the_applied_state_and_the_log_it_covers(backend: Backend) -> None:
    with opened(backend) as storage:
        storage.persist(
            Ballot(4, 3),
            [entry(s, Ballot(4, 3)) for s in range(3, 16)],
            [(s, (b"c%d" % s,)) for s in range(1, 14)],
            sync=True,
        )
        storage.apply(changes(2, {b"a": b"1", b"b": b"", b"gone": b"x"}, {"c1": S1, "old": S2}), 0)
        assert install(storage, snapshot_of("c1", 10, NEW_KV, NEW_SESSIONS)) == 10
        seen = storage.load()
    with opened(backend) as storage:
        reopened = storage.load()
    for state in (seen, reopened):
        assert kv_of(state.history) == NEW_KV and state.sessions == NEW_SESSIONS
        assert state.applied_index == 10 and state.log_start == 11
        assert sorted(state.chosen) == [11, 12, 13]  # kept: beyond the snapshot
        assert sorted(state.accepted) == [11, 12, 13, 14, 15]
        assert state.promised == Ballot(4, 3)


def test_after_an_install_the_node_goes_on_from_the_index(backend: Backend) -> None:
    with opened(backend) as storage:
        install(storage, snapshot_of("c1", 10, NEW_KV, {}))
        with pytest.raises(AssertionError):
            storage.apply(changes(9), drop_accepted_through=0)
        storage.persist(None, [entry(11)], [(11, (b"v11",)), (9, (b"late",))], sync=True)
        storage.apply(changes(11, {b"c": None}), drop_accepted_through=11)
        storage.compact(11)
        state = storage.load()
    assert state.applied_index == 11 and state.log_start == 12
    assert state.chosen == {} and state.accepted == {}
    assert kv_of(state.history) == {k: v for k, v in NEW_KV.items() if k != b"c"}


def test_install_of_the_same_index_is_accepted(backend: Backend) -> None:
    with opened(backend) as storage:
        seed_state(storage)
        with storage.open_snapshot() as source:
            data = b"".join(source.chunks())
        before = storage.load()
        assert install(storage, data) == 5
        after = storage.load()
    assert (kv_of(after.history), after.sessions, after.applied_index) == (
        kv_of(before.history),
        before.sessions,
        before.applied_index,
    )
    assert after.log_start == 6 and sorted(after.chosen) == [6, 7]


def test_an_older_snapshot_is_refused_at_its_header(backend: Backend) -> None:
    with opened(backend) as storage:
        seed_state(storage)
        before = storage.load()
        data = snapshot_of("c1", 4, NEW_KV, {})
        installer = storage.begin_install()
        with pytest.raises(SnapshotRefused, match="index 4 is older than the applied index 5"):
            installer.write(data)
        with pytest.raises(AssertionError):  # the refusal aborted it
            installer.finish()
        assert storage.load() == before


def test_a_snapshot_overtaken_while_it_arrived_is_refused_at_finish(backend: Backend) -> None:
    with opened(backend) as storage:
        seed_state(storage)
        data = snapshot_of("c1", 6, NEW_KV, {})
        installer = storage.begin_install()
        installer.write(data)
        storage.apply(changes(7, {b"z": b"z"}), drop_accepted_through=0)
        before = storage.load()
        with pytest.raises(SnapshotRefused, match="older than the applied index 7"):
            installer.finish()
        assert storage.load() == before


def test_a_snapshot_of_another_cluster_is_refused_unless_restoring(backend: Backend) -> None:
    with opened(backend) as storage:
        seed_state(storage)
        before = storage.load()
        data = snapshot_of("other", 9, NEW_KV, {})
        with pytest.raises(SnapshotRefused, match="cluster 'other' cannot be installed"):
            install(storage, data)
        assert storage.load() == before
        assert install(storage, data, foreign_cluster_ok=True) == 9
        assert kv_of(storage.load().history) == NEW_KV


@pytest.mark.parametrize("damage", ["flip", "cut", "garbage"])
def test_a_damaged_snapshot_changes_nothing(backend: Backend, damage: str) -> None:
    data = bytearray(snapshot_of("c1", 10, NEW_KV, NEW_SESSIONS))
    if damage == "flip":
        data[len(data) // 2] ^= 0x40
    elif damage == "cut":
        del data[-3:]
    else:
        data += b"\x00"
    with opened(backend) as storage:
        seed_state(storage)
        before = storage.load()
        with pytest.raises(SnapshotCorrupt):
            install(storage, bytes(data))
        assert storage.load() == before
    with opened(backend) as storage:
        assert storage.load() == before


def test_an_aborted_install_changes_nothing(backend: Backend) -> None:
    data = snapshot_of("c1", 10, NEW_KV, NEW_SESSIONS)
    with opened(backend) as storage:
        seed_state(storage)
        before = storage.load()
        installer = storage.begin_install()
        installer.write(data[: len(data) // 2])
        installer.abort()
        installer.abort()  # idempotent
        with pytest.raises(AssertionError):
            installer.write(data[len(data) // 2 :])
        with storage.begin_install() as other:  # leaving the block aborts
            other.write(data)
        assert storage.load() == before
        installer = storage.begin_install()
        installer.write(data)
        assert installer.finish() == 10
        installer.abort()  # after finish: nothing to undo
        assert kv_of(storage.load().history) == NEW_KV


# ---- the MVCC history ------------------------------------------------------------------

HERE = pathlib.Path(__file__).resolve().parent


def test_history_rows_and_revisions_round_trip_and_are_read_by_row(backend: Backend) -> None:
    from paxoskv.kv.mvcc import encode_row, encode_tombstone, row_key

    r1 = {row_key(2, 0): encode_row(b"a", 2, 2, 1, b"1", 0), row_key(2, 1): encode_row(b"b", 2, 2, 1, b"2", 0)}
    r2 = {row_key(3, 0): encode_tombstone(b"a", 3), row_key(2, 1): None}
    with opened(backend) as storage:
        storage.apply(Changes(r1, {}, 1, revision=2, compact_revision=-1), 0)
        assert storage.history_row(row_key(2, 0)) == r1[row_key(2, 0)]  # unsynced, visible
        storage.apply(Changes(r2, {}, 2, revision=3, compact_revision=2, alarms=((7, 1),)), 0)
        storage.persist(None, [], [], sync=True)
        seen = storage.load()
        rows = list(storage.history_rows(b""))
        assert storage.history_row(row_key(2, 1)) is None
        assert list(storage.history_rows(row_key(2, 1), row_key(3, 0))) == []
        assert [k for k, _ in storage.history_rows(row_key(2, 0), row_key(2, 1))] == [row_key(2, 0)]
    with opened(backend) as storage:
        reopened = storage.load()
        assert list(storage.history_rows(b"")) == rows
    assert rows == [(row_key(2, 0), r1[row_key(2, 0)]), (row_key(3, 0), r2[row_key(3, 0)])]
    for state in (seen, reopened):
        assert state.history == dict(rows)
        assert (state.revision, state.compact_revision, state.alarms) == (3, 2, ((7, 1),))


def test_a_snapshot_carries_the_revisions_and_a_source_reads_its_own_rows(backend: Backend) -> None:
    with opened(backend) as storage:
        storage.apply(Changes(rows_of({b"k": b"v"}), {}, 4, revision=9, compact_revision=5, alarms=((3, 1),)), 0)
        with storage.open_snapshot() as source:
            storage.apply(Changes(rows_of({b"k": None, b"j": b"w"}), {}, 5, revision=10, compact_revision=5), 0)
            assert (source.revision, source.compact_revision) == (9, 5)
            assert kv_of(dict(source.history_rows())) == {b"k": b"v"}  # the view's, not the newer rows
            data = b"".join(source.chunks())
    reader = SnapshotReader()
    rows, _ = reader.feed(data)
    info = reader.finish()
    assert (info.revision, info.compact_revision, info.alarms, kv_of(rows)) == (9, 5, ((3, 1),), {b"k": b"v"})
    with opened(backend) as storage:
        assert install(storage, snapshot_bytes("c1", 6, dict(rows), {}, 9, 5, ((3, 1),))) == 6
        state = storage.load()
        assert (state.revision, state.compact_revision, state.alarms) == (9, 5, ((3, 1),))
        assert kv_of(state.history) == {b"k": b"v"}


def test_a_snapshot_from_before_revisions_is_refused_from_a_peer_and_restored_as_revision_2(backend: Backend) -> None:
    data = (HERE / "data" / "snapshot-format1.snap").read_bytes()
    with opened(backend) as storage:
        with pytest.raises(SnapshotRefused, match="snapshot format 1"):
            install(storage, data, foreign_cluster_ok=False)
        assert_fresh(storage.load())
        assert install(storage, data, foreign_cluster_ok=True) == 9
        state = storage.load()
    assert kv_of(state.history) == {b"a": b"1", b"b": b"2", b"\x00bin": b"\xff" * 3, b"big": b"x" * 5000}
    assert (state.revision, state.compact_revision) == (2, -1)
    assert {k: s.sequence for k, s in state.sessions.items()} == {"c1": 4}
