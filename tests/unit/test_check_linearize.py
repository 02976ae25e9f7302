"""paxoskv.check.linearize: hand-made histories it must reject and accept,
unknown outcomes, budgets, explanations, throughput."""

from __future__ import annotations

import random
import time

import pytest

from paxoskv.check import CheckResult, Operation, check_history, check_key
from paxoskv.check.synth import SynthConfig, random_history


class H:
    """A terse history builder: ``h.put("c1", "k", "x", 0, 1)``; ids count up."""

    def __init__(self) -> None:
        self.ops: list[Operation] = []

    def _add(self, **fields: object) -> Operation:
        fields.setdefault("outcome", "ok")
        o = Operation(id=len(self.ops) + 1, **fields)  # type: ignore[arg-type]
        self.ops.append(o)
        return o

    def put(self, client, key, value, call, ret, outcome="ok", existed=None) -> Operation:
        return self._add(client=client, op="put", key=key, value=value, call=call, ret=ret,
                         outcome=outcome, output_existed=existed)

    def get(self, client, key, value, call, ret, outcome="ok") -> Operation:
        return self._add(client=client, op="get", key=key, call=call, ret=ret, outcome=outcome,
                         output_value=value)

    def delete(self, client, key, call, ret, outcome="ok", existed=None) -> Operation:
        return self._add(client=client, op="delete", key=key, call=call, ret=ret, outcome=outcome,
                         output_existed=existed)

    def check(self, **kw: object) -> CheckResult:
        return check_history(self.ops, **kw)  # type: ignore[arg-type]


def assert_violation(h: H, culprit: Operation, *phrases: str) -> CheckResult:
    r = h.check()
    assert r.verdict == "violation", r.summary()
    [bad] = r.violations
    assert bad.failing_op == culprit, bad.explanation
    assert bad.minimal
    assert f"key {culprit.key!r}" in bad.explanation
    assert culprit.describe() in bad.explanation
    for phrase in phrases:
        assert phrase in bad.explanation
    return r


# ---- Histories that must be rejected ------------------------------------------


def test_stale_read_after_an_acknowledged_write():
    h = H()
    h.put("c1", "k", "x", 0, 1)
    y = h.put("c2", "k", "y", 2, 3)
    g = h.get("c3", "k", "x", 4, 5)
    r = assert_violation(h, g, "stale read", y.describe())
    assert {o.id for o in r.violations[0].involved} >= {1, 2, 3}


def test_lost_write():
    h = H()
    h.put("c1", "k", "x", 0, 1)
    h.get("c2", "k", "x", 2, 3)
    g = h.get("c3", "k", None, 4, 5)
    assert_violation(h, g, "lost write")


def test_lost_write_behind_an_unknown_delete_needs_the_search():
    # The unknown delete may fall after the acknowledged put of y, so the
    # cheap rules are inconclusive; but it is needed earlier (the first read
    # of "absent"), and it can happen only once.
    h = H()
    h.put("c1", "k", "x", 0, 1)
    h.delete("c2", "k", 0, None, outcome="unknown")
    h.get("c3", "k", None, 2, 3)
    h.put("c1", "k", "y", 4, 5)
    g = h.get("c3", "k", None, 6, 7)
    assert_violation(h, g, "no order of the operations before it")


def test_read_of_a_value_before_its_write_was_invoked():
    h = H()
    g = h.get("c1", "k", "x", 0, 1)
    h.put("c2", "k", "x", 2, 3)
    assert_violation(h, g, "before any put of 'x' was invoked")


def test_two_readers_see_two_writes_in_different_orders():
    h = H()
    h.put("w1", "k", "x", 0, 20)
    h.put("w2", "k", "y", 0, 20)
    h.get("r1", "k", "x", 1, 2)
    h.get("r1", "k", "y", 3, 4)
    h.get("r2", "k", "y", 5, 6)
    g = h.get("r2", "k", "x", 7, 8)
    r = assert_violation(h, g, "no order of the operations before it")
    assert [o.id for o in r.violations[0].involved] == [1, 2, 3, 4, 5, 6]


def test_delete_says_absent_when_the_key_surely_existed():
    h = H()
    h.put("c1", "k", "x", 0, 1, existed=False)
    d = h.delete("c2", "k", 2, 3, existed=False)
    assert_violation(h, d)


def test_put_says_existed_on_a_fresh_key():
    h = H()
    p = h.put("c1", "k", "x", 0, 1, existed=True)
    assert_violation(h, p)


def test_read_of_a_value_never_written():
    h = H()
    h.put("c1", "k", "x", 0, 1)
    g = h.get("c2", "k", "zz", 2, 3)
    assert_violation(h, g, "no put ever wrote 'zz'")


def test_value_of_a_failed_put_cannot_be_read():
    h = H()
    h.put("c1", "k", "x", 0, 1, outcome="fail")
    g = h.get("c2", "k", "x", 2, 3)
    assert_violation(h, g, "no put ever wrote 'x'")


def test_the_violation_is_reported_on_its_key_only():
    h = H()
    h.put("c1", "a", "x", 0, 1)
    h.get("c2", "a", "x", 2, 3)
    h.put("c1", "b", "y", 0, 1)
    g = h.get("c2", "b", None, 2, 3)
    r = h.check()
    assert r.verdict == "violation"
    assert r.key("a").verdict == "ok"
    assert r.key("b").verdict == "violation" and r.key("b").failing_op == g


def test_the_first_failing_op_is_found_not_the_last():
    # A long valid stretch, a stale read in the middle, then more valid ops.
    h = H()
    t = 0.0
    for i in range(50):
        h.put("w", "k", f"v{i}", t, t + 1)
        h.get("r", "k", f"v{i}", t + 2, t + 3)
        t += 4
    bad = h.get("r", "k", "v3", t, t + 1)
    t += 2
    for i in range(50, 60):
        h.put("w", "k", f"v{i}", t, t + 1)
        h.get("r", "k", f"v{i}", t + 2, t + 3)
        t += 4
    r = h.check()
    assert r.violations[0].failing_op == bad
    assert r.violations[0].prefix_ops == 101


# ---- Histories that must be accepted ------------------------------------------


def test_empty_and_trivial_histories():
    assert check_history([]).verdict == "ok"
    h = H()
    h.get("c1", "k", None, 0, 1)
    h.delete("c1", "k", 2, 3, existed=False)
    assert h.check().verdict == "ok"


def test_heavy_concurrency_everything_overlaps():
    h = H()
    for i in range(12):
        h.put(f"w{i}", "k", f"v{i}", 0, 100)
    # Reads inside the window may see any write, in one consistent order.
    h.get("r1", "k", None, 0, 100)
    h.get("r2", "k", "v3", 1, 100)
    h.get("r3", "k", "v7", 2, 100)
    h.get("r4", "k", "v3", 3, 100)  # may be linearized before r3
    h.get("r5", "k", "v11", 50, 100)
    assert h.check().verdict == "ok"


def test_equal_times_count_as_concurrent():
    h = H()
    h.put("c1", "k", "x", 0, 5)
    h.get("c2", "k", None, 5, 6)  # invoked the instant the put returned: may precede it
    assert h.check().verdict == "ok"


def test_unknown_put_observed_later_is_accepted():
    h = H()
    h.put("c1", "k", "x", 0, None, outcome="unknown")
    h.get("c2", "k", None, 1, 2)
    h.get("c2", "k", "x", 50, 51)  # took effect long after the client gave up
    assert h.check().verdict == "ok"


def test_unknown_put_never_observed_is_accepted():
    h = H()
    h.put("c1", "k", "x", 0, 1, existed=False)
    h.put("c2", "k", "lost", 2, 3, outcome="unknown")
    h.get("c3", "k", "x", 4, 5)
    h.get("c3", "k", "x", 100, 101)
    assert h.check().verdict == "ok"


def test_unknown_delete_that_never_happened_cannot_fail_a_history():
    h = H()
    h.put("c1", "k", "x", 0, 1)
    h.delete("c2", "k", 0.5, 2, outcome="unknown")
    h.get("c3", "k", "x", 3, 4)
    assert h.check().verdict == "ok"


def test_unknown_put_cannot_be_observed_before_it_was_invoked():
    h = H()
    g = h.get("c1", "k", "x", 0, 1)
    h.put("c2", "k", "x", 2, None, outcome="unknown")
    assert_violation(h, g)


def test_unknown_put_happens_at_most_once():
    h = H()
    h.put("c1", "k", "x", 0, None, outcome="unknown")
    h.get("c2", "k", "x", 1, 2)
    h.put("c3", "k", "y", 3, 4)
    g = h.get("c2", "k", "x", 5, 6)
    assert_violation(h, g)


def test_fail_ops_are_ignored():
    h = H()
    h.put("c1", "k", "x", 0, 1, existed=False)
    h.delete("c2", "k", 2, 3, outcome="fail")
    h.put("c3", "k", "y", 2, 3, outcome="fail")
    h.get("c4", "k", "x", 4, 5)
    assert h.check().verdict == "ok"


def test_existed_flags_can_be_explained_by_unknown_ops():
    # The second delete found the key: only the unknown put can have recreated it.
    h = H()
    h.put("c1", "k", "x", 0, 1)
    h.delete("c1", "k", 2, 3, existed=True)
    h.put("c2", "k", "y", 2.5, None, outcome="unknown")
    h.delete("c1", "k", 10, 11, existed=True)
    h.get("c1", "k", None, 12, 13)
    assert h.check().verdict == "ok"
    # Without it, the same answers are a violation.
    h.ops = [o for o in h.ops if o.outcome != "unknown"]
    assert h.check().verdict == "violation"


def test_many_unknown_puts_on_one_key_stay_tractable():
    h = H()
    t = 0.0
    for i in range(300):
        h.put(f"c{i % 7}", "k", f"u{i}", t, None, outcome="unknown")
        h.delete("d", "k", t, None, outcome="unknown")
        if i % 10 == 0:
            h.put("w", "k", f"x{i}", t, t + 1)
            h.get("r", "k", f"x{i}", t + 2, t + 3)
        t += 3.5
    h.get("r", "k", "u150", t, t + 1)  # an unknown put observed at the end
    start = time.monotonic()
    r = h.check(time_budget_s=30)
    assert r.verdict == "ok", r.summary()
    assert time.monotonic() - start < 10
    # ... and the same history with an impossible read is still rejected.
    bad = h.get("r", "k", "x10", t + 2, t + 3)
    r = h.check(time_budget_s=30)
    assert r.verdict == "violation" and r.violations[0].failing_op == bad


def test_generated_histories_with_faults_are_accepted():
    config = SynthConfig(clients=12, keys=4, ops=3000, p_unknown=0.1, p_fail=0.05)
    r = check_history(random_history(random.Random(7), config), time_budget_s=60)
    assert r.verdict == "ok", r.summary()
    assert r.ops_total == 3000 and r.ops_checked < 3000


def test_subtle_violation_after_a_long_faulty_history_is_found():
    # Proving it means exhausting every linearization of the 1,500 ops
    # before it, a tenth of them with unknown outcomes.
    config = SynthConfig(clients=10, keys=1, ops=1500, p_unknown=0.1, p_fail=0.05)
    ops = random_history(random.Random(5), config)
    t = max(o.ret or o.call for o in ops) + 100
    h = H()
    h.ops = ops
    first = len(ops) + 1
    h.ops += [
        Operation(id=first, client="w1", op="put", key="k0", value="A", call=t, ret=t + 50, outcome="ok"),
        Operation(id=first + 1, client="w2", op="put", key="k0", value="B", call=t, ret=t + 50, outcome="ok"),
    ]
    h.get("r1", "k0", "A", t + 1, t + 2)
    h.get("r1", "k0", "B", t + 3, t + 4)
    h.get("r2", "k0", "B", t + 5, t + 6)
    assert h.check().verdict == "ok"
    bad = h.get("r2", "k0", "A", t + 7, t + 8)
    r = h.check(time_budget_s=60)
    assert r.verdict == "violation", r.summary()
    assert r.violations[0].failing_op == bad and r.violations[0].minimal


# ---- Budgets -------------------------------------------------------------------


def _adversarial(n_writes: int) -> H:
    """Writes that all overlap, then sequential reads that see two of them in
    turn: no linearization, but no cheap rule proves it, and proving it by
    search means trying every order of the writes."""
    h = H()
    for i in range(n_writes):
        h.put(f"w{i}", "k", f"v{i}", 0, 100)
    h.get("r", "k", "v0", 101, 102)
    h.get("r", "k", "v1", 103, 104)
    return h


def test_small_adversarial_history_is_decided():
    r = _adversarial(8).check()
    assert r.verdict == "violation"
    assert r.violations[0].failing_op.output_value == "v1"


def test_huge_adversarial_history_with_tiny_budget_is_unknown():
    h = _adversarial(60)
    r = h.check(step_budget=20_000)
    assert r.verdict == "unknown" and r.budget_reason == "steps"
    assert r.steps <= 20_000
    assert "budget exhausted" in r.explanation
    start = time.monotonic()
    r = h.check(time_budget_s=0.2)
    assert r.verdict == "unknown" and r.budget_reason == "time"
    assert time.monotonic() - start < 5
    r = h.check(memory_budget_bytes=1 << 20)
    assert r.verdict == "unknown" and r.budget_reason == "memory"


def test_budget_is_shared_and_never_yields_a_false_verdict():
    h = _adversarial(60)
    for i in range(5):  # an easy, valid key checked before the hard one
        h.put("c", "easy", f"e{i}", 200 + 2 * i, 201 + 2 * i)
    r = h.check(step_budget=5_000)
    assert r.verdict == "unknown"
    assert r.key("easy").verdict == "ok" and r.key("k").verdict == "unknown"
    # A violation elsewhere is still a violation, budget or not.
    h.get("c", "easy", "e1", 300, 301)
    r = h.check(step_budget=5_000)
    assert r.verdict == "violation" and r.key("easy").verdict == "violation"


def test_check_key_rejects_ops_of_another_key():
    h = H()
    h.put("c", "a", "x", 0, 1)
    with pytest.raises(ValueError, match="not 'b'"):
        check_key("b", h.ops)
    assert check_key("a", h.ops).verdict == "ok"


def test_duplicate_ids_are_rejected():
    h = H()
    o = h.put("c", "a", "x", 0, 1)
    with pytest.raises(ValueError, match="duplicate operation id"):
        check_history([o, o])


def test_result_json_is_serialisable():
    import json

    h = H()
    h.put("c1", "k", "x", 0, 1)
    h.get("c2", "k", None, 2, 3)
    doc = json.loads(json.dumps(h.check().to_json()))
    assert doc["verdict"] == "violation"
    [key] = doc["keys"]
    assert key["failing_op"]["id"] == 2 and key["minimal"] is True
    assert "lost write" in key["explanation"]


# ---- Throughput (recorded, not asserted) ---------------------------------------


def test_throughput_is_recorded(record_property, capsys):
    config = SynthConfig(clients=16, keys=10, ops=20_000, p_unknown=0.05, p_fail=0.02)
    ops = random_history(random.Random(11), config)
    r = check_history(ops, time_budget_s=120)
    assert r.verdict == "ok", r.summary()
    rate = r.ops_per_s()
    record_property("check_ops_per_s", round(rate))
    with capsys.disabled():
        print(f"\n[check throughput] {r.ops_checked} ops, {len(r.keys)} keys, {r.steps} steps "
              f"in {r.elapsed_s:.2f} s: {rate:,.0f} ops/s")
