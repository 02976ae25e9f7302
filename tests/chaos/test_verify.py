"""The post-run checks on hand-made histories: lost acknowledged writes and
node comparison. Fast, no processes."""

from __future__ import annotations

from paxoskv.chaos.monitor import NodeStatus
from paxoskv.chaos.verify import FinalState, compare_nodes, lost_writes
from paxoskv.check import Operation

_ids = iter(range(1_000_000))


def op(
    kind: str,
    key: str,
    call: float,
    ret: float | None,
    outcome: str = "ok",
    value: str | None = None,
    client: str = "c",
) -> Operation:
    return Operation(
        id=next(_ids), client=client, op=kind, key=key, value=value, call=call, ret=ret, outcome=outcome
    )


def test_an_acknowledged_put_overwritten_by_nothing_later_is_lost():
    a = op("put", "k", 0, 1, value="a")
    b = op("put", "k", 2, 3, value="b")
    lost = lost_writes([a, b], {"k": "a"})
    assert [lw.op.id for lw in lost] == [b.id]
    assert "returned before" in lost[0].why


def test_concurrent_writes_may_end_in_either_order():
    a = op("put", "k", 0, 2, value="a")
    b = op("put", "k", 1, 3, value="b")
    assert lost_writes([a, b], {"k": "a"}) == []
    assert lost_writes([a, b], {"k": "b"}) == []


def test_an_unknown_write_may_take_effect_any_time_after_its_call():
    a = op("put", "k", 0, None, outcome="unknown", value="a")
    b = op("put", "k", 2, 3, value="b")
    assert lost_writes([a, b], {"k": "a"}) == []  # a took effect after b
    d = op("delete", "k", 0, None, outcome="unknown")
    assert lost_writes([d, b], {"k": None}) == []


def test_a_failed_write_counts_for_nothing():
    a = op("put", "k", 0, 1, outcome="fail", value="a")
    b = op("put", "k", 2, 3, value="b")
    lost = lost_writes([a, b], {"k": "a"})
    assert [lw.why for lw in lost] == ["final value 'a' of k was never written by any put"]


def test_an_absent_key_loses_an_acknowledged_put_unless_a_delete_could_follow():
    p = op("put", "k", 2, 3, value="p")
    early_delete = op("delete", "k", 0, 1)
    assert [lw.op.id for lw in lost_writes([early_delete, p], {"k": None})] == [p.id]
    late_delete = op("delete", "k", 2.5, 4)
    assert lost_writes([p, late_delete], {"k": None}) == []
    assert [lw.op.id for lw in lost_writes([p], {"k": None})] == [p.id]


def test_an_acknowledged_delete_is_lost_when_an_older_value_survives():
    a = op("put", "k", 0, 1, value="a")
    d = op("delete", "k", 2, 3)
    assert [lw.op.id for lw in lost_writes([a, d], {"k": "a"})] == [d.id]


def test_gets_do_not_matter():
    a = op("put", "k", 0, 1, value="a")
    g = op("get", "k", 2, 3)
    assert lost_writes([a, g], {"k": "a"}) == []


def status(applied: int, keys: int) -> NodeStatus:
    return NodeStatus(
        at_s=0.0,
        role="follower",
        leader_id=1,
        ballot=(1, 1),
        commit_index=applied,
        applied_index=applied,
        keys=keys,
    )


def test_identical_nodes_compare_clean_and_any_difference_is_named():
    fs = FinalState(
        linearizable={1: {"k0": "a", "k1": None}, 2: {"k0": "a", "k1": None}},
        serializable={1: {"k0": "a", "k1": None}, 2: {"k0": "a", "k1": None}},
        status={1: status(10, 1), 2: status(10, 1)},
    )
    assert compare_nodes(fs, [1, 2], ["k0", "k1"]) == []
    fs.serializable[2]["k1"] = "zombie"
    fs.status[2] = status(11, 2)
    problems = compare_nodes(fs, [1, 2], ["k0", "k1"])
    assert any("applied index differs" in p for p in problems)
    assert any("key count differs" in p for p in problems)
    assert any("serializable reads of k1 differ" in p for p in problems)


def test_a_stray_key_outside_the_workload_set_is_noticed():
    fs = FinalState(
        linearizable={1: {"k0": "a"}},
        serializable={1: {"k0": "a"}},
        status={1: status(5, 2)},
    )
    assert compare_nodes(fs, [1], ["k0"]) == ["node 1 holds 2 keys, 1 of them from the workload's key set"]
