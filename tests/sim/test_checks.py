"""The simulator's own checkers, fed hand-made logs, histories and states."""

from __future__ import annotations

from paxoskv.kv.commands import encode_delete, encode_put
from paxoskv.sim.checks import (
    AppliedLog,
    check_acknowledged_writes,
    check_convergence,
    check_prefixes,
    reference_state,
)
from paxoskv.sim.history import DELETE, FAIL, GET, OK, PUT, UNKNOWN, Operation

A = (b"a",)
B = (b"b",)


def test_agreement_holds_for_the_same_value_on_every_node_and_life() -> None:
    log = AppliedLog([1, 2])
    assert log.record(1, 1, A) is None
    assert log.record(2, 1, A) is None
    assert log.record(1, 1, A) is None  # re-applied after a restart: same value
    assert log.applications == 3


def test_agreement_violation_names_the_slot_and_node() -> None:
    log = AppliedLog([1, 2])
    log.record(1, 5, A)
    problem = log.record(2, 5, B)
    assert problem is not None and "slot 5" in problem and "node 2" in problem


def test_prefixes_accept_logs_of_different_lengths() -> None:
    assert check_prefixes({1: {1: A, 2: B}, 2: {1: A}, 3: {}}) == []


def test_prefixes_find_a_hole() -> None:
    problems = check_prefixes({1: {1: A, 3: B}, 2: {1: A}})
    assert any("holes" in p and "[2]" in p for p in problems)


def test_prefixes_find_divergence() -> None:
    problems = check_prefixes({1: {1: A, 2: A}, 2: {1: A, 2: B}})
    assert any("slot 2" in p for p in problems)


def test_prefixes_allow_a_gap_below_an_installed_snapshot() -> None:
    assert check_prefixes({1: {1: A, 2: B, 3: A}, 2: {3: A}}, {2: 2}) == []
    assert check_prefixes({1: {1: A, 2: B, 3: A}, 2: {3: A}}) != []


def op(
    op_id: int,
    kind: str,
    key: bytes,
    value: bytes | None,
    call: int,
    ret: int | None,
    outcome: str,
    existed: bool | None = None,
) -> Operation:
    o = Operation(
        op_id=op_id,
        client_id=f"c{op_id}",
        kind=kind,
        key=key,
        value=value,
        sequence=1 if kind != GET else 0,
        call_us=call,
    )
    o.finish(outcome, ret if ret is not None else call)
    o.existed = existed
    return o


def test_acknowledged_write_present_is_fine() -> None:
    h = [op(0, PUT, b"k", b"v0", 0, 10, OK)]
    assert check_acknowledged_writes(h, {b"k": b"v0"}) == []


def test_lost_acknowledged_write_is_found() -> None:
    h = [op(0, PUT, b"k", b"v0", 0, 10, OK)]
    problems = check_acknowledged_writes(h, {})
    assert len(problems) == 1 and "never overwritten" in problems[0]


def test_overwritten_write_coming_back_is_found() -> None:
    h = [op(0, PUT, b"k", b"v0", 0, 10, OK), op(1, PUT, b"k", b"v1", 20, 30, OK)]
    assert check_acknowledged_writes(h, {b"k": b"v1"}) == []
    problems = check_acknowledged_writes(h, {b"k": b"v0"})
    assert len(problems) == 1 and "came after it" in problems[0]


def test_concurrent_writes_may_end_either_way() -> None:
    h = [op(0, PUT, b"k", b"v0", 0, 30, OK), op(1, PUT, b"k", b"v1", 10, 20, OK)]
    assert check_acknowledged_writes(h, {b"k": b"v0"}) == []
    assert check_acknowledged_writes(h, {b"k": b"v1"}) == []


def test_unknown_writes_may_or_may_not_have_happened() -> None:
    h = [
        op(0, PUT, b"k", b"v0", 0, 10, OK),
        op(1, DELETE, b"k", None, 20, None, UNKNOWN),
        op(2, PUT, b"k", b"v2", 30, None, UNKNOWN),
    ]
    for final in ({b"k": b"v0"}, {}, {b"k": b"v2"}):
        assert check_acknowledged_writes(h, final) == [], final


def test_failed_write_must_not_be_visible() -> None:
    h = [op(0, PUT, b"k", b"v0", 0, 10, FAIL)]
    problems = check_acknowledged_writes(h, {b"k": b"v0"})
    assert len(problems) == 1 and "failed write" in problems[0]
    assert check_acknowledged_writes(h, {}) == []


def test_failed_delete_does_not_explain_an_absent_key() -> None:
    h = [op(0, PUT, b"k", b"v0", 0, 10, OK), op(1, DELETE, b"k", None, 20, 30, FAIL)]
    assert check_acknowledged_writes(h, {}) != []


def test_value_nobody_wrote_is_found() -> None:
    h = [op(0, PUT, b"k", b"v0", 0, 10, OK)]
    problems = check_acknowledged_writes(h, {b"k": b"v0", b"other": b"zz"})
    assert len(problems) == 1 and "no put on it wrote" in problems[0]


def test_convergence() -> None:
    assert check_convergence({1: 5, 2: 5}, {1: {b"k": b"v"}, 2: {b"k": b"v"}}) == []
    assert check_convergence({1: 5, 2: 4}, {1: {}, 2: {}}) != []
    problems = check_convergence({1: 5, 2: 5}, {1: {b"k": b"v"}, 2: {b"k": b"w"}})
    assert len(problems) == 1 and "k" in problems[0]


def test_reference_state_applies_each_client_sequence_once() -> None:
    log = {
        1: (encode_put("c1", 1, b"k", b"a"),),
        2: (encode_put("c2", 1, b"k", b"b"), encode_put("c1", 1, b"k", b"a")),  # a retry
        3: (),  # a no-op
        4: (encode_delete("c2", 2, b"k"), encode_put("c1", 2, b"j", b"x")),
        5: (encode_put("c2", 1, b"j", b"old"),),  # stale
    }
    assert reference_state(log, 2) == {b"k": b"b"}
    assert reference_state(log, 5) == {b"j": b"x"}
