"""paxoskv.kv.state_machine: apply, exactly-once sessions, eviction, change
sets, the MVCC revisions of paxoskv.v1 writes, etcd commands and the pool of
node-assigned identities."""

from __future__ import annotations

import dataclasses

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paxoskv.kv import Applied, Changes, KVStateMachine, Limits, Session, encode_delete, encode_put
from paxoskv.kv.mvcc import decode_row

from kv_rows import kv_of
from paxoskv.v1 import kv_pb2, storage_pb2

OK = kv_pb2.CommandResult.OK
INVALID = kv_pb2.CommandResult.INVALID
STALE = kv_pb2.CommandResult.STALE_SEQUENCE


def fresh(**kwargs: object) -> KVStateMachine:
    return KVStateMachine({}, {}, 0, Limits(), **kwargs)  # type: ignore[arg-type]


def codes(applied: list[Applied]) -> list[int]:
    return [a.result.code for a in applied]


def written(changes: Changes) -> dict[bytes, bytes | None]:
    """The keys a change set wrote: the value put, or None for a delete."""
    out: dict[bytes, bytes | None] = {}
    for _, row in sorted(changes.history.items()):
        if row is not None:
            rec = decode_row(row)
            out[rec.kv.key] = None if rec.tombstone else rec.kv.value
    return out


def test_put_get_delete_and_existed() -> None:
    sm = fresh()
    [a] = sm.apply(1, (encode_put("c", 1, b"k", b"v1"),))
    assert (a.client_id, a.sequence) == ("c", 1)
    assert (a.result.code, a.result.index, a.result.existed) == (OK, 1, False)
    assert sm.get(b"k") == b"v1" and len(sm) == 1 and sm.applied_index == 1
    [a] = sm.apply(2, (encode_put("c", 2, b"k", b"v2"),))
    assert (a.result.index, a.result.existed) == (2, True)
    assert sm.get(b"k") == b"v2"
    [a, b] = sm.apply(3, (encode_delete("c", 3, b"k"), encode_delete("c", 4, b"k")))
    assert (a.result.code, a.result.index, a.result.existed) == (OK, 3, True)
    assert (b.result.code, b.result.index, b.result.existed) == (OK, 3, False)
    assert sm.get(b"k") is None and len(sm) == 0


def test_empty_value_is_a_value() -> None:
    sm = fresh()
    sm.apply(1, (encode_put("", 0, b"k", b""),))
    assert sm.get(b"k") == b""
    [a] = sm.apply(2, (encode_delete("", 0, b"k"),))
    assert a.result.existed


def test_noop_advances_the_index_only() -> None:
    sm = fresh()
    assert sm.apply(1, ()) == []
    assert sm.applied_index == 1 and len(sm) == 0
    changes = sm.take_changes()
    assert (written(changes), changes.sessions, changes.applied_index) == ({}, {}, 1)


def test_apply_must_be_in_order_without_gaps() -> None:
    sm = fresh()
    with pytest.raises(AssertionError):
        sm.apply(2, ())
    sm.apply(1, ())
    with pytest.raises(AssertionError):
        sm.apply(1, ())


def test_commands_of_a_slot_apply_in_order() -> None:
    sm = fresh()
    out = sm.apply(
        1,
        (
            encode_put("a", 1, b"k", b"1"),
            encode_put("b", 1, b"k", b"2"),
            encode_delete("a", 2, b"k"),
            encode_put("b", 2, b"k", b"3"),
        ),
    )
    assert [(a.client_id, a.sequence, a.result.existed) for a in out] == [
        ("a", 1, False),
        ("b", 1, True),
        ("a", 2, True),
        ("b", 2, False),
    ]
    assert sm.get(b"k") == b"3"


def test_duplicate_is_answered_with_the_first_result_and_not_applied() -> None:
    sm = fresh()
    [first] = sm.apply(1, (encode_put("c", 5, b"k", b"mine"),))
    sm.apply(2, (encode_put("other", 1, b"k", b"theirs"),))
    [dup] = sm.apply(3, (encode_put("c", 5, b"k", b"mine"),))
    assert dup.result == first.result  # index 1, existed False
    assert (dup.client_id, dup.sequence, dup.result.index) == ("c", 5, 1)
    assert sm.get(b"k") == b"theirs"
    assert sm.session("c") == Session(5, first.result, 1)
    # A duplicate changes no state.
    sm.take_changes()
    sm.apply(4, (encode_put("c", 5, b"k", b"mine"),))
    changes = sm.take_changes()
    assert (written(changes), changes.sessions, changes.applied_index) == ({}, {}, 4)


def test_duplicate_results_are_copies() -> None:
    sm = fresh()
    sm.apply(1, (encode_put("c", 1, b"k", b"v"),))
    [dup] = sm.apply(2, (encode_put("c", 1, b"k", b"v"),))
    dup.result.index = 99
    [again] = sm.apply(3, (encode_put("c", 1, b"k", b"v"),))
    assert again.result.index == 1


def test_duplicate_within_one_slot() -> None:
    sm = fresh()
    cmd = encode_delete("c", 1, b"k")
    sm.apply(1, (encode_put("", 0, b"k", b"v"),))
    a, b = sm.apply(2, (cmd, cmd))
    assert a.result == b.result and a.result.existed


def test_stale_sequence_is_refused() -> None:
    sm = fresh()
    sm.apply(1, (encode_put("c", 5, b"k", b"v5"),))
    [a] = sm.apply(2, (encode_put("c", 4, b"k", b"v4"),))
    assert (a.result.code, a.result.index) == (STALE, 2)
    assert "older" in a.result.error
    assert sm.get(b"k") == b"v5" and sm.session("c").sequence == 5  # type: ignore[union-attr]


def test_sequence_may_skip_forward() -> None:
    sm = fresh()
    sm.apply(1, (encode_put("c", 1, b"k", b"1"),))
    [a] = sm.apply(2, (encode_put("c", 10, b"k", b"10"),))
    assert a.result.code == OK and sm.get(b"k") == b"10"
    assert sm.session("c") == Session(10, a.result, 2)


def test_commands_without_client_id_are_not_deduplicated() -> None:
    sm = fresh()
    cmd = encode_delete("", 0, b"k")
    sm.apply(1, (encode_put("", 0, b"k", b"v"),))
    [a] = sm.apply(2, (cmd,))
    [b] = sm.apply(3, (cmd,))
    assert (a.result.existed, b.result.existed) == (True, False)
    assert dict(sm.sessions) == {}


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"\xff\xff\xff", "not an encoded Command"),
        (encode_put("c", 1, b"", b"v"), "key is empty"),
        (encode_put("c", 1, b"k" * 11, b"v"), "key is 11 bytes"),
        (encode_put("c", 1, b"k", b"v" * 21), "value is 21 bytes"),
        (encode_put("c", 0, b"k", b"v"), "without a sequence"),
        (kv_pb2.Command(client_id="c", sequence=1).SerializeToString(), "no operation"),
    ],
)
def test_bad_commands_are_invalid_and_change_nothing(data: bytes, error: str) -> None:
    sm = KVStateMachine.from_kv({b"k": b"old"}, {}, 0, Limits(key_bytes_max=10, value_bytes_max=20))
    [bad, good] = sm.apply(1, (data, encode_put("d", 1, b"j", b"x")))
    assert (bad.result.code, bad.result.index) == (INVALID, 1)
    assert error in bad.result.error
    assert good.result.code == OK
    assert sm.get(b"k") == b"old" and sm.session("c") is None
    changes = sm.take_changes()
    assert written(changes) == {b"j": b"x"} and list(changes.sessions) == ["d"]


def test_invalid_command_does_not_touch_the_session() -> None:
    sm = fresh()
    sm.apply(1, (encode_put("c", 1, b"k", b"v"),))
    [a] = sm.apply(2, (encode_put("c", 2, b"", b"v"),))
    assert a.result.code == INVALID
    assert sm.session("c").sequence == 1  # type: ignore[union-attr]
    [b] = sm.apply(3, (encode_put("c", 2, b"k", b"w"),))
    assert b.result.code == OK and sm.get(b"k") == b"w"


def test_session_eviction_smallest_last_index_then_smallest_client_id() -> None:
    sm = fresh(sessions_max=3)
    sm.apply(1, (encode_put("z", 1, b"k", b"v"), encode_put("y", 1, b"k", b"v")))
    sm.apply(2, (encode_put("x", 1, b"k", b"v"),))
    sm.take_changes()
    # A fourth session: the oldest slot is 1, shared by z and y; y is smaller.
    sm.apply(3, (encode_put("w", 1, b"k", b"v"),))
    assert sorted(sm.sessions) == ["w", "x", "z"]
    assert sm.take_changes().sessions.keys() == {"w", "y"}
    # Touching z makes x the oldest.
    sm.apply(4, (encode_put("z", 2, b"k", b"v"),))
    sm.apply(5, (encode_put("v", 1, b"k", b"v"),))
    assert sorted(sm.sessions) == ["v", "w", "z"]
    changes = sm.take_changes()
    assert changes.sessions["x"] is None and changes.sessions["z"] == sm.session("z")
    # An evicted client's old command is applied again (documented limit).
    [a] = sm.apply(6, (encode_put("x", 1, b"k", b"again"),))
    assert a.result.code == OK and a.result.index == 6


def test_eviction_is_the_same_after_a_restart() -> None:
    """A machine rebuilt from its sessions (any order) evicts what the original would."""
    sm = fresh(sessions_max=50)
    rng = random.Random(7)
    index = 0
    for _ in range(40):
        index += 1
        batch = tuple(
            encode_put(f"c{rng.randrange(80)}", index, b"k", b"v") for _ in range(rng.randrange(4))
        )
        sm.apply(index, batch)
    items = list(sm.sessions.items())
    rng.shuffle(items)
    sm.take_changes()
    twin = KVStateMachine(
        dict(sm.store.history_rows()), dict(items), sm.applied_index, Limits(), sessions_max=50, revision=sm.revision
    )
    for _ in range(40):
        index += 1
        batch = tuple(
            encode_put(f"n{rng.randrange(80)}", 1, b"k", b"v") for _ in range(rng.randrange(4))
        )
        assert sm.apply(index, batch) == twin.apply(index, batch)
        assert dict(sm.sessions) == dict(twin.sessions)
    assert len(sm.sessions) == 50  # the table was full: evictions happened


def test_session_proto_round_trip() -> None:
    result = kv_pb2.CommandResult(code=OK, index=9, existed=True, error="")
    session = Session(sequence=3, result=result, last_index=9)
    pb = session.to_proto()
    assert isinstance(pb, storage_pb2.Session)
    back = Session.from_proto(storage_pb2.Session.FromString(pb.SerializeToString()))
    assert back == session


def test_constructor_checks() -> None:
    result = kv_pb2.CommandResult(index=5)
    with pytest.raises(ValueError, match="applied after"):
        KVStateMachine({}, {"c": Session(1, result, 5)}, 4, Limits())
    with pytest.raises(ValueError):
        fresh(sessions_max=0)


def test_take_changes_reports_and_resets() -> None:
    sm = KVStateMachine.from_kv({b"a": b"1", b"b": b"2"}, {}, 0, Limits())
    assert sm.revision == 2
    sm.apply(1, (encode_put("c", 1, b"a", b"x"), encode_delete("", 0, b"b")))
    sm.apply(2, (encode_delete("", 0, b"nothing"),))
    changes = sm.take_changes()
    assert written(changes) == {b"a": b"x", b"b": None}
    assert changes.sessions == {"c": sm.session("c")}
    assert (changes.applied_index, changes.revision, changes.compact_revision) == (2, 4, -1)
    again = sm.take_changes()
    assert (again.history, again.sessions, again.applied_index, again.revision) == ({}, {}, 2, 4)


# ---- properties ---------------------------------------------------------------

CLIENTS = ["", "a", "b", "c", "d"]
KEYS = [b"k1", b"k2", b"k3"]

command = st.builds(
    lambda client, seq, key, value, put: (
        encode_put(client, seq if client else 0, key, value)
        if put
        else encode_delete(client, seq if client else 0, key)
    ),
    st.sampled_from(CLIENTS),
    st.integers(1, 6),
    st.sampled_from(KEYS),
    st.binary(max_size=3),
    st.booleans(),
)
log = st.lists(st.lists(command | st.binary(max_size=4), max_size=4), max_size=30)


class Model:
    """The reference semantics, written the obvious way (no eviction)."""

    def __init__(self) -> None:
        self.kv: dict[bytes, bytes] = {}
        self.last: dict[str, tuple[int, tuple[int, int, bool]]] = {}

    def apply(self, index: int, data: bytes) -> tuple[int, int, bool]:
        try:
            cmd = kv_pb2.Command.FromString(data)
        except Exception:
            return (INVALID, index, False)
        op = cmd.WhichOneof("op")
        if op is None or (cmd.client_id == "") != (cmd.sequence == 0):
            return (INVALID, index, False)
        key = cmd.put.key if op == "put" else cmd.delete.key
        if not key:
            return (INVALID, index, False)
        if cmd.client_id in self.last:
            seq, result = self.last[cmd.client_id]
            if cmd.sequence == seq:
                return result
            if cmd.sequence < seq:
                return (STALE, index, False)
        existed = key in self.kv
        if op == "put":
            self.kv[key] = cmd.put.value
        else:
            self.kv.pop(key, None)
        result = (OK, index, existed)
        if cmd.client_id:
            self.last[cmd.client_id] = (cmd.sequence, result)
        return result


@settings(max_examples=150, deadline=None)
@given(log=log, restart_at=st.sets(st.integers(1, 30)))
def test_matches_the_model_and_survives_restarts_from_change_sets(
    log: list[list[bytes]], restart_at: set[int]
) -> None:
    """Random logs: results match a reference model; a machine rebuilt at any
    point from the accumulated change sets (what storage would hold) goes on
    exactly like one that never restarted."""
    model = Model()
    steady = fresh()
    stored_rows: dict[bytes, bytes] = {}
    stored_sessions: dict[str, Session] = {}
    restarted = fresh()
    for index, batch in enumerate(log, start=1):
        expected = [model.apply(index, data) for data in batch]
        out = steady.apply(index, tuple(batch))
        assert [(a.result.code, a.result.index, a.result.existed) for a in out] == expected
        assert restarted.apply(index, tuple(batch)) == out
        changes = restarted.take_changes()
        assert changes.applied_index == index
        for key, row in changes.history.items():
            if row is None:
                stored_rows.pop(key, None)
            else:
                stored_rows[key] = row
        for client_id, session in changes.sessions.items():
            if session is None:
                stored_sessions.pop(client_id, None)
            else:
                stored_sessions[client_id] = session
        assert kv_of(stored_rows) == model.kv
        assert changes.revision == steady.revision
        if index in restart_at:
            restarted = KVStateMachine(dict(stored_rows), dict(stored_sessions), index, Limits(), revision=changes.revision)
    assert dict(steady.items()) == model.kv
    assert {cid: s.sequence for cid, s in steady.sessions.items()} == {
        cid: seq for cid, (seq, _) in model.last.items()
    }


# ---- batch commands (KV.Batch / KV.Session writes as one log command) -------------


def _batch(ops: list[tuple[str, str, int, bytes, bytes]], waiter: bytes = b"w") -> bytes:
    """A batch command of (kind, client_id, sequence, key, value) ops."""
    cmd = kv_pb2.Command()
    cmd.batch.waiter = waiter
    for kind, client_id, sequence, key, value in ops:
        op = cmd.batch.ops.add()
        hdr = kv_pb2.RequestHeader(client_id=client_id, sequence=sequence)
        if kind == "put":
            op.put.request.CopyFrom(hdr)
            op.put.key, op.put.value = key, value
        elif kind == "delete":
            op.delete.request.CopyFrom(hdr)
            op.delete.key = key
        else:
            op.get.key = key
    return cmd.SerializeToString()


def _without_revisions(sessions: dict) -> dict:
    out = {}
    for cid, session in sessions.items():
        if session is not None and session.result.revision:
            result = kv_pb2.CommandResult()
            result.CopyFrom(session.result)
            result.revision = 0
            session = dataclasses.replace(session, result=result)
        out[cid] = session
    return out


def _single(kind: str, client_id: str, sequence: int, key: bytes, value: bytes) -> bytes:
    if kind == "put":
        return encode_put(client_id, sequence, key, value)
    return encode_delete(client_id, sequence, key)


batch_op = st.tuples(
    st.sampled_from(["put", "put", "delete"]),
    st.sampled_from(["", "a", "b", "é" * 100, "x" * 300]),  # the last two: over 256 bytes
    st.integers(0, 4),
    st.sampled_from([b"", b"k1", b"k2", b"K" * 4097]),
    st.binary(max_size=3),
)


@settings(max_examples=200, deadline=None)
@given(
    slots=st.lists(st.lists(batch_op, min_size=1, max_size=6), min_size=1, max_size=8),
    sessions_max=st.sampled_from([1, 2, 100_000]),
)
def test_a_batch_applies_exactly_like_its_ops_one_by_one(slots, sessions_max) -> None:
    """Each op of a batch keeps its own identity, validation and
    exactly-once result: applying the batch gives the same results, state,
    sessions (evictions included) and change sets as applying its ops as
    separate commands."""
    batched, single = fresh(sessions_max=sessions_max), fresh(sessions_max=sessions_max)
    for index, ops in enumerate(slots, start=1):
        [one] = batched.apply(index, (_batch(ops, waiter=b"\x01" + bytes([index])),))
        assert (one.client_id, one.sequence, one.waiter) == ("", 0, b"\x01" + bytes([index]))
        each = single.apply(index, tuple(_single(*op) for op in ops))
        assert [(r.code, r.index, r.existed) for r in one.result] == [
            (a.result.code, a.result.index, a.result.existed) for a in each
        ]
        b, s = batched.take_changes(), single.take_changes()
        # (a unary write's result carries the revision of its own command;
        # a batch's ops share one: the revision the batch left the store at)
        assert _without_revisions(b.sessions) == _without_revisions(s.sessions)
        assert dict(batched.items()) == dict(single.items())
        assert {r.revision for r in one.result if r.code == 0 and r.index == index} <= {batched.revision}
        assert all(x.result.revision == batched.revision for x in b.sessions.values() if x and x.last_index == index)
        # the same writes, but as ONE revision (sub-revisions in order)
        assert written(b) == written(s)
        assert {k[:8] for k in b.history} <= {b.revision.to_bytes(8, "big")}
        assert len(b.history) == len(s.history)
    assert dict(batched.items()) == dict(single.items())
    assert _without_revisions(dict(batched.sessions)) == _without_revisions(dict(single.sessions))


def test_a_batch_retried_in_a_later_slot_is_answered_with_the_first_results() -> None:
    sm = fresh()
    ops = [("put", "c", 1, b"k", b"v1"), ("delete", "d", 7, b"k", b"")]
    [first] = sm.apply(1, (_batch(ops),))
    assert [(r.code, r.index, r.existed) for r in first.result] == [(OK, 1, False), (OK, 1, True)]
    [again] = sm.apply(2, (_batch(ops),))
    assert [(r.code, r.index, r.existed) for r in again.result] == [(OK, 1, False), (OK, 1, True)]
    assert sm.get(b"k") is None
    [older] = sm.apply(3, (_batch([("put", "c", 1, b"k", b"x"), ("put", "d", 6, b"k", b"y")]),))
    assert [r.code for r in older.result] == [OK, STALE]  # c/1 is the same request; d/6 is older
    assert sm.get(b"k") is None


def test_a_bad_op_fails_alone_and_a_bad_batch_changes_nothing() -> None:
    sm = fresh()
    [a] = sm.apply(1, (_batch([("put", "c", 1, b"", b"v"), ("get", "", 0, b"k", b""), ("put", "c", 2, b"k", b"v")]),))
    assert [r.code for r in a.result] == [INVALID, INVALID, OK]
    assert "key is empty" in a.result[0].error and "only put and delete" in a.result[1].error
    assert sm.get(b"k") == b"v" and sm.session("c").sequence == 2  # type: ignore[union-attr]
    sm.take_changes()
    empty = kv_pb2.Command()
    empty.batch.waiter = b"w"
    [b] = sm.apply(2, (empty.SerializeToString(),))
    assert [r.code for r in b.result] == [INVALID] and "no ops" in b.result[0].error
    changes = sm.take_changes()
    assert (written(changes), changes.sessions, changes.applied_index) == ({}, {}, 2)


@settings(max_examples=300, deadline=None)
@given(
    sequence=st.integers(0, 2**64 - 1),
    last_index=st.integers(0, 2**64 - 1),
    code=st.sampled_from([OK, INVALID, STALE]),
    index=st.integers(0, 2**64 - 1),
    existed=st.booleans(),
    error=st.text(max_size=20),
    batch=st.binary(max_size=300),
)
def test_session_encode_is_the_protobuf_encoding(sequence, last_index, code, index, existed, error, batch) -> None:
    result = kv_pb2.CommandResult(code=code, index=index, existed=existed, error=error)
    session = Session(sequence, result, last_index, batch)
    expected = session.to_proto().SerializeToString()
    assert session.encode() == expected
    cache: dict[int, bytes] = {}
    assert session.encode(cache) == expected and session.encode(cache) == expected
    assert Session.from_proto(storage_pb2.Session.FromString(session.encode())) == session


# ---- packed batches (one identity for the whole batch: BatchOp.request) ------------


def _packed(
    client_id: str, first: int, ops: list[tuple[str, bytes, bytes]], waiter: bytes = b"w", headers: bool = False
) -> bytes:
    """A packed batch command of (kind, key, value) ops, sequences first, first+1, ..."""
    cmd = kv_pb2.Command()
    cmd.batch.waiter = waiter
    cmd.batch.request.client_id = client_id
    cmd.batch.request.sequence = first
    for kind, key, value in ops:
        op = cmd.batch.ops.add()
        if kind == "put":
            op.put.key, op.put.value = key, value
            if headers:
                op.put.request.client_id = client_id
        elif kind == "delete":
            op.delete.key = key
        else:
            op.get.key = key
    return cmd.SerializeToString()


def _outcomes(results) -> list[tuple[int, int, bool]]:  # noqa: ANN001
    return [(r.code, r.index, r.existed) for r in results]


packed_op = st.tuples(
    st.sampled_from(["put", "put", "delete", "get"]),
    st.sampled_from([b"", b"k1", b"k2", b"K" * 4097]),
    st.binary(max_size=3),
)


@settings(max_examples=200, deadline=None)
@given(slots=st.lists(st.lists(packed_op, min_size=1, max_size=6), min_size=1, max_size=8))
def test_a_packed_batch_applies_like_its_ops_one_by_one(slots) -> None:
    """Each op of a packed batch is validated and applied exactly as if it
    were a command of its own with sequence first+k: the same results, keys
    and key changes; its session ends at the batch's last sequence."""
    packed, single = fresh(), fresh()
    first = 1
    for index, ops in enumerate(slots, start=1):
        [one] = packed.apply(index, (_packed("c", first, ops),))
        each = single.apply(
            index,
            tuple(
                _batch([(kind, "c", first + k, key, value)]) if kind == "get" else _single(kind, "c", first + k, key, value)
                for k, (kind, key, value) in enumerate(ops)
            ),
        )
        expected = [
            (a.result[0] if isinstance(a.result, tuple) else a.result) for a in each
        ]  # a get alone in a batch: INVALID, like a get in a packed one
        assert _outcomes(one.result) == _outcomes(expected)
        assert [bool(r.error) for r in one.result] == [bool(r.error) for r in expected]
        assert written(packed.take_changes()) == written(single.take_changes())
        session = packed.session("c")
        assert session is not None and (session.sequence, session.last_index) == (first + len(ops) - 1, index)
        assert len(session.batch) == len(ops)
        first += len(ops)
    assert dict(packed.items()) == dict(single.items())


def test_a_packed_batch_retried_later_gets_its_first_results_and_applies_nothing() -> None:
    sm = fresh()
    ops = [("put", b"k", b"v1"), ("put", b"", b"bad"), ("delete", b"k", b""), ("put", b"j", b"v2")]
    [first] = sm.apply(1, (_packed("c", 5, ops),))
    assert _outcomes(first.result) == [(OK, 1, False), (INVALID, 1, False), (OK, 1, True), (OK, 1, False)]
    assert "key is empty" in first.result[1].error
    sm.take_changes()
    sm.apply(2, (encode_put("other", 1, b"k", b"x"),))  # the key changes meanwhile
    sm.take_changes()
    for index in (3, 4):  # a retry, and its retry
        [again] = sm.apply(index, (_packed("c", 5, ops),))
        assert _outcomes(again.result) == _outcomes(first.result)
        assert [r.error for r in again.result] == [r.error for r in first.result]
        changes = sm.take_changes()
        assert (written(changes), changes.sessions) == ({}, {})
    assert sm.get(b"k") == b"x" and sm.get(b"j") == b"v2"


def test_the_retry_survives_a_restart_from_stored_sessions() -> None:
    sm = fresh()
    ops = [("put", b"k", b"v"), ("put", b"k", b"w")]
    [first] = sm.apply(1, (_packed("c", 1, ops),))
    stored = {
        cid: Session.from_proto(storage_pb2.Session.FromString(s.encode()))
        for cid, s in sm.take_changes().sessions.items()
        if s is not None
    }
    restarted = KVStateMachine.from_kv(dict(sm.items()), sessions=stored, applied_index=1)
    [again] = restarted.apply(2, (_packed("c", 1, ops),))
    assert _outcomes(again.result) == _outcomes(first.result) == [(OK, 1, False), (OK, 1, True)]
    assert restarted.take_changes().history == {}


@pytest.mark.parametrize(
    "first, ops",
    [
        (3, [("put", b"k", b"x")]),  # inside the applied batch (1..3), not the same batch
        (2, [("put", b"k", b"x"), ("put", b"k", b"y")]),  # ends at the session, but starts inside it
        (1, [("put", b"k", b"x")] * 4),  # overlaps and goes past it
        (1, [("put", b"k", b"x")] * 2),  # older
    ],
)
def test_a_packed_batch_overlapping_its_session_is_stale_and_changes_nothing(first, ops) -> None:
    sm = fresh()
    sm.apply(1, (_packed("c", 1, [("put", b"k", b"v")] * 3),))
    sm.take_changes()
    [a] = sm.apply(2, (_packed("c", first, ops),))
    assert [r.code for r in a.result] == [STALE] * len(ops)
    assert all("older than its last applied sequence 3" in r.error for r in a.result)
    changes = sm.take_changes()
    assert (written(changes), changes.sessions) == ({}, {})
    assert sm.get(b"k") == b"v"


def test_a_packed_batch_after_a_unary_command_of_its_client() -> None:
    sm = fresh()
    sm.apply(1, (encode_put("c", 4, b"k", b"v"),))
    [same_last] = sm.apply(2, (_packed("c", 4, [("put", b"k", b"x")]),))  # sequence 4 was the unary put
    assert [r.code for r in same_last.result] == [STALE]
    [after] = sm.apply(3, (_packed("c", 5, [("put", b"k", b"x"), ("delete", b"k", b"")]),))
    assert _outcomes(after.result) == [(OK, 3, True), (OK, 3, True)]
    [unary_retry] = sm.apply(4, (encode_delete("c", 6, b"k"),))  # the packed batch's last sequence
    assert _outcomes([unary_retry.result]) == [(OK, 3, True)]
    [next_one] = sm.apply(5, (encode_put("c", 7, b"k", b"z"),))
    assert _outcomes([next_one.result]) == [(OK, 5, False)]


def test_an_op_of_a_packed_batch_with_a_header_of_its_own_fails_alone() -> None:
    sm = fresh()
    [a] = sm.apply(1, (_packed("c", 1, [("put", b"k", b"v"), ("delete", b"j", b"")], headers=True),))
    assert [r.code for r in a.result] == [INVALID, OK]
    assert "no request header of its own" in a.result[0].error
    assert sm.get(b"k") is None and sm.session("c").batch == bytes([2, 0])  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "client_id, first, error",
    [
        ("", 1, "needs a client_id and a sequence"),
        ("c", 0, "needs a client_id and a sequence"),
        ("c", 2**64 - 1, "do not fit in 64 bits"),
        ("x" * 300, 1, "client_id is 300 bytes"),
    ],
)
def test_a_packed_batch_with_a_bad_identity_is_invalid_and_changes_nothing(client_id, first, error) -> None:
    sm = fresh()
    [a] = sm.apply(1, (_packed(client_id, first, [("put", b"k", b"v"), ("put", b"j", b"v")]),))
    assert [r.code for r in a.result] == [INVALID] and error in a.result[0].error
    changes = sm.take_changes()
    assert (written(changes), changes.sessions, len(sm)) == ({}, {}, 0)


# ---- MVCC: revisions of every write, etcd commands, node-assigned identities ---------

from paxoskv.etcdpb import rpc_pb2  # noqa: E402
from paxoskv.kv import etcd  # noqa: E402
from paxoskv.kv.state_machine import DUPLICATE  # noqa: E402

NO_SPACE = kv_pb2.CommandResult.NO_SPACE


def _etcd(request: object, client_id: str = "anon-1", waiter: bytes = b"w", **kw: object) -> bytes:
    cmd = kv_pb2.Command(client_id=client_id, sequence=1 if client_id else 0)
    field = {
        rpc_pb2.PutRequest: "put", rpc_pb2.DeleteRangeRequest: "delete_range", rpc_pb2.TxnRequest: "txn",
        rpc_pb2.CompactionRequest: "compaction", rpc_pb2.AlarmRequest: "alarm",
    }[type(request)]
    getattr(cmd.etcd, field).CopyFrom(request)
    cmd.etcd.waiter = waiter
    return cmd.SerializeToString()


def test_every_paxoskv_write_command_is_one_revision() -> None:
    sm = fresh()
    assert sm.revision == 1
    sm.apply(1, (encode_put("c", 1, b"k", b"v"),))
    assert sm.revision == 2
    sm.apply(2, (encode_delete("c", 2, b"missing"),))
    assert sm.revision == 2  # nothing changed
    sm.apply(3, (_batch([("put", "c", 3, b"a", b"1"), ("put", "c", 4, b"b", b"2"), ("delete", "c", 5, b"k", b"")]),))
    assert sm.revision == 3
    rows = sm.take_changes().history
    assert sorted((int.from_bytes(k[:8], "big"), int.from_bytes(k[8:], "big")) for k in rows) == [
        (2, 0), (3, 0), (3, 1), (3, 2)
    ]
    sm.apply(4, (_packed("p", 1, [("put", b"a", b"x"), ("put", b"b", b"y")]),))
    assert sm.revision == 4
    r = sm.range(rpc_pb2.RangeRequest(key=b"a", range_end=b"c"))
    assert [(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version) for kv in r.kvs] == [
        (b"a", b"x", 3, 4, 2), (b"b", b"y", 3, 4, 2)
    ]
    assert r.header.revision == 4
    assert sm.range(rpc_pb2.RangeRequest(key=b"k", revision=2)).kvs[0].value == b"v"


def test_etcd_commands_apply_to_the_same_store_with_their_waiter() -> None:
    sm = fresh()
    sm.apply(1, (encode_put("c", 1, b"shared", b"from v1"),))
    [a] = sm.apply(2, (_etcd(rpc_pb2.PutRequest(key=b"e", value=b"etcd", prev_kv=True), waiter=b"w1"),))
    assert a.waiter == b"w1" and isinstance(a.result, rpc_pb2.PutResponse) and a.result.header.revision == 3
    assert sm.get(b"e") == b"etcd"  # a paxoskv.v1 read sees it
    txn = rpc_pb2.TxnRequest(
        compare=[rpc_pb2.Compare(key=b"shared", target=rpc_pb2.Compare.VALUE, value=b"from v1")],
        success=[rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"shared", value=b"cas"))],
    )
    [t] = sm.apply(3, (_etcd(txn, client_id="anon-2"),))
    assert t.result.succeeded and sm.get(b"shared") == b"cas" and sm.revision == 4
    [c] = sm.apply(4, (_etcd(rpc_pb2.CompactionRequest(revision=3), client_id="anon-3"),))
    assert c.result.header.revision == 4 and sm.compact_revision == 3
    [bad] = sm.apply(5, (_etcd(rpc_pb2.CompactionRequest(revision=2), client_id="anon-4"),))
    assert bad.result == etcd.ERR_COMPACTED
    [lease] = sm.apply(6, (_etcd(rpc_pb2.PutRequest(key=b"l", value=b"v", lease=5), client_id="anon-5"),))
    assert lease.result == etcd.ERR_LEASE_NOT_FOUND and sm.get(b"l") is None
    changes = sm.take_changes()
    assert (changes.revision, changes.compact_revision) == (4, 3)
    assert set(changes.sessions) == {"c", "anon-1", "anon-2", "anon-3", "anon-4", "anon-5"}


def test_an_etcd_command_reaching_the_log_twice_is_applied_once() -> None:
    sm = fresh()
    cmd = _etcd(rpc_pb2.DeleteRangeRequest(key=b"k"), client_id="anon-x")
    sm.apply(1, (encode_put("c", 1, b"k", b"v"),))
    [first] = sm.apply(2, (cmd,))
    sm.apply(3, (encode_put("c", 2, b"k", b"again"),))
    [second] = sm.apply(4, (cmd,))
    assert first.result.deleted == 1 and second.result is DUPLICATE
    assert sm.get(b"k") == b"again"


def test_a_structurally_bad_etcd_command_from_the_log_is_refused_and_changes_nothing() -> None:
    sm = fresh()
    dup = rpc_pb2.TxnRequest(success=[rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"k"))] * 2)
    [a, b, c] = sm.apply(1, (
        _etcd(dup),
        _etcd(rpc_pb2.PutRequest(key=b"", value=b"v"), client_id="anon-2"),
        kv_pb2.Command(client_id="anon-3", sequence=1, etcd=kv_pb2.EtcdOp(waiter=b"w")).SerializeToString(),
    ))
    assert a.result == etcd.ERR_DUPLICATE_KEY and b.result == etcd.ERR_EMPTY_KEY
    assert isinstance(c.result, etcd.EtcdError) and "has no request" in c.result.message and c.waiter == b"w"
    changes = sm.take_changes()
    assert (changes.history, changes.sessions, sm.revision) == ({}, {}, 1)


def test_node_assigned_identities_have_a_pool_of_their_own() -> None:
    sm = fresh(sessions_max=2, node_sessions_max=3)
    sm.apply(1, (encode_put("client-a", 1, b"k", b"v"), encode_put("client-b", 1, b"k", b"v")))
    for i in range(10):  # etcd write churn
        sm.apply(2 + i, (_etcd(rpc_pb2.PutRequest(key=b"e", value=b"%d" % i), client_id=f"anon-{i}"),))
    assert sorted(sm.sessions) == ["client-a", "client-b"]  # never evicted by it
    assert sorted(sm.node_sessions) == ["anon-7", "anon-8", "anon-9"]
    [again] = sm.apply(12, (encode_put("client-a", 1, b"k", b"retry"),))
    assert again.result.index == 1 and sm.get(b"k") == b"v"


def test_a_nospace_alarm_refuses_puts_of_both_apis_and_not_deletes() -> None:
    A = rpc_pb2.AlarmRequest
    sm = fresh()
    sm.apply(1, (encode_put("c", 1, b"k", b"v"),))
    [raised] = sm.apply(2, (_etcd(A(action=A.ACTIVATE, memberID=9, alarm=rpc_pb2.NOSPACE)),))
    assert sm.nospace and sm.alarms == ((9, rpc_pb2.NOSPACE),) and raised.result.alarms[0].memberID == 9
    [put] = sm.apply(3, (encode_put("c", 2, b"k", b"w"),))
    assert put.result.code == NO_SPACE and "database space exceeded" in put.result.error
    assert sm.session("c").sequence == 1  # type: ignore[union-attr]  # a retry later may apply
    [packed] = sm.apply(4, (_packed("p", 1, [("put", b"x", b"1"), ("delete", b"k", b"")]),))
    assert [r.code for r in packed.result] == [NO_SPACE, OK]
    [replay] = sm.apply(5, (_packed("p", 1, [("put", b"x", b"1"), ("delete", b"k", b"")]),))
    assert [r.code for r in replay.result] == [NO_SPACE, OK]
    [e] = sm.apply(6, (_etcd(rpc_pb2.PutRequest(key=b"e", value=b"v"), client_id="anon-2"),))
    assert e.result == etcd.ERR_NO_SPACE
    assert sm.get(b"k") is None and sm.get(b"x") is None
    sm.apply(7, (_etcd(A(action=A.DEACTIVATE, memberID=9, alarm=rpc_pb2.NOSPACE), client_id="anon-3"),))
    [ok] = sm.apply(8, (encode_put("c", 2, b"k", b"w"),))
    assert ok.result.code == OK and not sm.nospace and sm.take_changes().alarms == ()


# ---- revisions in the answers, and in the session table ------------------------------


def _reloaded(sm: KVStateMachine) -> KVStateMachine:
    """``sm``'s sessions as storage writes and reads them (Session.encode, storage.proto
    Session), in a new state machine at the same applied index: a restart."""
    sessions = {
        cid: Session.from_proto(storage_pb2.Session.FromString(s.encode()))
        for cid, s in (*sm.sessions.items(), *sm.node_sessions.items())
    }
    return KVStateMachine({}, sessions, sm.applied_index, Limits(), revision=sm.revision)


def test_every_write_answers_the_revision_it_left_and_a_retry_the_same_one_after_a_restart() -> None:
    sm = fresh()
    [put] = sm.apply(1, (encode_put("u", 1, b"k", b"v"),))
    assert put.result.revision == sm.revision == 2
    [gone] = sm.apply(2, (encode_delete("u", 2, b"missing"),))
    assert (gone.result.existed, gone.result.revision, sm.revision) == (False, 2, 2)  # nothing changed: no new revision
    [per_op] = sm.apply(3, (_batch([("put", "b", 1, b"k", b"w"), ("delete", "b2", 1, b"nope", b""), ("put", "", 0, b"x", b"1")]),))
    assert [r.revision for r in per_op.result] == [3, 3, 3] and sm.revision == 3
    [packed] = sm.apply(4, (_packed("p", 1, [("put", b"k", b"z"), ("put", b"", b"bad")]),))
    assert [r.code for r in packed.result] == [OK, INVALID]
    assert packed.result[0].revision == sm.revision == 4
    [only_missing] = sm.apply(5, (_batch([("delete", "d", 1, b"never", b"")]),))
    assert only_missing.result[0].revision == sm.revision == 4  # a batch that changed nothing
    sm.apply(6, (encode_put("other", 1, b"k", b"later"),))  # the store moves on
    assert sm.revision == 5
    for machine in (sm, _reloaded(sm)):
        [again] = machine.apply(7, (encode_put("u", 2, b"missing", b"ignored"),))
        assert again.result.revision == 2  # the delete's answer, from the session
        [again] = machine.apply(8, (_batch([("put", "b", 1, b"k", b"w")]),))
        assert again.result[0].revision == 3
        [again] = machine.apply(9, (_packed("p", 1, [("put", b"k", b"z"), ("put", b"", b"bad")]),))
        assert [(r.code, r.revision) for r in again.result][0] == (OK, 4)
        assert machine.revision == 5  # nothing applied again
    assert sm.get(b"k") == b"later"
