"""paxoskv.check.txn: the etcd-API (CAS, multi-key Txn, Range at a revision) checker."""

from __future__ import annotations

import random

import pytest

from paxoskv.check import HistoryError
from paxoskv.check.txn import Compare, Delete, Put, Range, TxnModel, TxnOp, check_txn_history


class H:
    """Builds histories: ``op(...)`` records one call with its output."""

    def __init__(self, ops=()) -> None:  # noqa: ANN001
        self.ops: list[TxnOp] = list(ops)

    def op(self, call, ret, *, outcome="ok", compares=(), success=(), failure=(), succeeded=True,
           revision=None, reads=(), compact=0, error=None):  # noqa: ANN001, ANN201
        o = TxnOp(id=len(self.ops), client=f"c{len(self.ops) % 3}", call=call, ret=ret, outcome=outcome,
                  compares=tuple(compares), success=tuple(success), failure=tuple(failure),
                  succeeded=succeeded, revision=revision, reads=tuple(reads), compact=compact, error=error)
        self.ops.append(o)
        return o


def cas(h: H, call, ret, key, mod, value, *, succeeded, revision, now=None, outcome="ok"):  # noqa: ANN001, ANN201
    """Compare mod_revision(key) == mod, then put; else read the key."""
    return h.op(call, ret, outcome=outcome, compares=[Compare(key, "mod", "=", mod)],
                success=[Put(key, value)], failure=[Range(key)], succeeded=succeeded,
                revision=revision, reads=() if succeeded else (now,))


def test_sequential_cas_history_is_linearizable():
    h = H()
    h.op(0, 1, success=[Put("a", "v1")], revision=2)
    cas(h, 2, 3, "a", 2, "v2", succeeded=True, revision=3)
    cas(h, 4, 5, "a", 2, "v3", succeeded=False, revision=3, now=("v2", 2, 3, 2))
    h.op(6, 7, success=[Range("a")], revision=3, reads=[("v2", 2, 3, 2)])
    r = check_txn_history(h.ops)
    assert r.verdict == "ok", r.explanation


def test_two_cas_on_the_same_mod_revision_cannot_both_succeed():
    h = H()
    h.op(0, 1, success=[Put("a", "v1")], revision=2)
    cas(h, 2, 5, "a", 2, "x", succeeded=True, revision=3)
    cas(h, 2, 5, "a", 2, "y", succeeded=True, revision=4)  # a lost update: it saw mod 2 too
    r = check_txn_history(h.ops)
    assert r.verdict == "violation"
    assert r.failing_op is not None and r.failing_op.id in (1, 2)
    assert "cannot linearize" in r.explanation


def test_concurrent_cas_one_wins_the_other_sees_it():
    h = H()
    h.op(0, 1, success=[Put("a", "v1")], revision=2)
    cas(h, 2, 5, "a", 2, "x", succeeded=True, revision=3)
    cas(h, 2, 5, "a", 2, "y", succeeded=False, revision=3, now=("x", 2, 3, 2))
    assert check_txn_history(h.ops).verdict == "ok"


def test_a_compare_evaluated_wrong_is_caught():
    h = H()
    h.op(0, 1, success=[Put("a", "v1")], revision=2)
    h.op(2, 3, success=[Put("a", "v2")], revision=3)
    # mod_revision(a) is 3: a CAS on 2 must fail, yet it is reported as succeeded.
    cas(h, 4, 5, "a", 2, "v3", succeeded=True, revision=4)
    r = check_txn_history(h.ops)
    assert r.verdict == "violation" and r.failing_op is not None and r.failing_op.id == 2


def test_a_failed_cas_must_not_bump_the_revision():
    h = H()
    h.op(0, 1, success=[Put("a", "v1")], revision=2)
    cas(h, 2, 3, "a", 7, "v2", succeeded=False, revision=3, now=("v1", 2, 2, 1))
    assert check_txn_history(h.ops).verdict == "violation"


def test_revision_gap_needs_an_unknown_write():
    h = H()
    h.op(0, 1, success=[Put("a", "v1")], revision=2)
    h.op(2, 3, success=[Put("b", "w1")], revision=4)  # nothing took revision 3
    assert check_txn_history(h.ops).verdict == "violation"
    h.op(0.5, None, outcome="unknown", success=[Put("c", "u")])
    assert check_txn_history(h.ops).verdict == "ok"


def test_unknown_write_after_the_gap_cannot_fill_it():
    h = H()
    h.op(0, 1, success=[Put("a", "v1")], revision=2)
    h.op(2, 3, success=[Put("b", "w1")], revision=4)
    h.op(3.5, None, outcome="unknown", success=[Put("c", "u")])  # invoked after the op at 4 returned
    assert check_txn_history(h.ops).verdict == "violation"


def test_multi_key_txn_is_atomic_for_readers():
    h = H()
    h.op(0, 1, success=[Put("a", "a1"), Put("b", "b1")], revision=2)
    h.op(2, 5, success=[Put("a", "a2"), Put("b", "b2")], revision=3)
    # A two-key read that sees half of the second txn.
    h.op(3, 4, success=[Range("a"), Range("b")], revision=3, reads=[("a2", 2, 3, 2), ("b1", 2, 2, 1)])
    assert check_txn_history(h.ops).verdict == "violation"
    ok = H(h.ops[:2])
    ok.op(3, 4, success=[Range("a"), Range("b")], revision=3, reads=[("a2", 2, 3, 2), ("b2", 2, 3, 2)])
    assert check_txn_history(ok.ops).verdict == "ok"


def test_range_at_a_revision_reads_the_past():
    h = H()
    h.op(0, 1, success=[Put("a", "v1")], revision=2)
    h.op(2, 3, success=[Put("a", "v2")], revision=3)
    h.op(4, 5, success=[Range("a", revision=2)], revision=3, reads=[("v1", 2, 2, 1)])
    h.op(4, 5, success=[Range("a", revision=1)], revision=3, reads=[None])
    assert check_txn_history(h.ops).verdict == "ok"
    h.op(6, 7, success=[Range("a", revision=2)], revision=3, reads=[("v2", 2, 3, 2)])
    assert check_txn_history(h.ops).verdict == "violation"


def test_real_time_order_of_revisions():
    h = H()
    h.op(0, 1, success=[Put("a", "v1")], revision=3)  # returned before the op at 2 was invoked
    h.op(2, 3, success=[Put("b", "w1")], revision=2)
    assert check_txn_history(h.ops).verdict == "violation"


def test_a_delete_of_nothing_does_not_bump_the_revision():
    h = H()
    h.op(0, 1, success=[Delete("a")], revision=1)
    h.op(2, 3, success=[Put("a", "v")], revision=2)
    h.op(4, 5, success=[Delete("a")], revision=3)
    h.op(6, 7, success=[Range("a")], revision=3, reads=[None])
    assert check_txn_history(h.ops).verdict == "ok"
    bad = H()
    bad.op(0, 1, success=[Delete("a")], revision=2)
    assert check_txn_history(bad.ops).verdict == "violation"


def test_value_compare_on_a_missing_key_fails():
    h = H()
    h.op(0, 1, compares=[Compare("a", "value", "!=", "x")], success=[Put("a", "y")], failure=[],
         succeeded=True, revision=2)
    assert check_txn_history(h.ops).verdict == "violation"  # etcd: false on a missing key
    h2 = H()
    h2.op(0, 1, compares=[Compare("a", "version", "=", 0)], success=[Put("a", "y")], succeeded=True, revision=2)
    assert check_txn_history(h2.ops).verdict == "ok"


def test_validation():
    with pytest.raises(HistoryError):
        TxnOp(id=1, client="c", call=0, ret=1, outcome="ok", success=(Range("a"),), succeeded=True,
              revision=1, reads=())
    with pytest.raises(HistoryError):
        Compare("a", "mod", "=", "2")
    with pytest.raises(HistoryError):
        check_txn_history([TxnOp(id=1, client="c", call=0, ret=None, outcome="unknown")] * 2)


def _random_history(rng: random.Random, n: int, keys: int = 3, *, p_unknown: float = 0.1,
                    foreign: list[float] | None = None):  # noqa: ANN202
    """A history that is linearizable by construction: ops applied to the
    model at a point inside their interval; some made unknown. With
    ``foreign``, writes outside the history take revisions too (their call
    times are appended to it)."""
    model = TxnModel()
    ops = []
    t = 0.0
    for i in range(n):
        if foreign is not None and rng.random() < 0.3:
            foreign.append(t)
            model.apply(TxnOp(id=-1, client="v1", call=t, ret=None, outcome="unknown",
                              success=(Put("v1-key", f"f{i}"),)))
        k = f"k{rng.randrange(keys)}"
        k2 = f"k{rng.randrange(keys)}"
        shape = rng.random()
        if shape < 0.4:
            mod = model.kv[k][2] if k in model.kv and rng.random() < 0.7 else rng.randrange(1, model.revision + 1)
            spec = dict(compares=(Compare(k, "mod", "=", mod),), success=(Put(k, f"v{i}"),), failure=(Range(k),))
        elif shape < 0.6 and k2 != k:
            spec = dict(success=(Put(k, f"v{i}"), Delete(k2)))
        elif shape < 0.75:
            spec = dict(success=(Range(k, revision=rng.randrange(1, model.revision + 1)), Range(k2)))
        elif shape < 0.8:
            spec = dict(compact=rng.randint(max(1, model.revision - 8), model.revision + 1))
        else:
            spec = dict(success=(Put(k, f"v{i}"),))
        call = t
        lin = t + rng.random()
        ret = lin + rng.random() * 2
        t += rng.random() * 0.7
        probe = TxnOp(id=i, client="x", call=call, ret=ret, outcome="unknown", **spec)
        succeeded, rev, reads, error = model.apply(probe)
        outcome = "unknown" if rng.random() < p_unknown else "ok"
        ops.append(TxnOp(id=i, client=f"c{i % 4}", call=call, ret=ret if outcome == "ok" else None,
                         outcome=outcome, succeeded=succeeded, revision=rev, reads=reads, error=error, **spec))
    return ops


@pytest.mark.parametrize("seed", range(30))
def test_random_linearizable_histories_pass_and_a_flipped_cas_is_caught(seed):
    rng = random.Random(seed)
    ops = _random_history(rng, 60)
    r = check_txn_history(ops, time_budget_s=30)
    assert r.verdict == "ok", r.explanation
    # Flip the outcome of one ok CAS that failed: report it succeeded instead.
    flips = [o for o in ops if o.outcome == "ok" and o.compares and not o.succeeded]
    if not flips:
        return
    f = rng.choice(flips)
    bad = [TxnOp(id=o.id, client=o.client, call=o.call, ret=o.ret, outcome="ok", compares=o.compares,
                 success=o.success, failure=o.failure, succeeded=True, revision=o.revision, reads=())
           if o is f else o for o in ops]
    r = check_txn_history(bad, time_budget_s=30)
    assert r.verdict == "violation", f.describe()


def test_budget_exhaustion_is_unknown():
    rng = random.Random(7)
    ops = _random_history(rng, 300)
    r = check_txn_history(ops, step_budget=100)
    assert r.verdict == "unknown" and r.budget_reason == "steps"


def test_a_long_history_is_checked_fast():
    rng = random.Random(3)
    ops = _random_history(rng, 3000, keys=6)
    r = check_txn_history(ops, time_budget_s=60)
    assert r.verdict == "ok", r.explanation
    assert r.elapsed_s < 20, r.elapsed_s


def test_foreign_writes_may_take_revisions_but_only_after_their_call():
    h = H()
    h.op(0, 1, success=[Put("a", "v1")], revision=2)
    h.op(2, 3, success=[Put("a", "v2")], revision=5)  # 3 and 4 went to writes outside the history
    assert check_txn_history(h.ops).verdict == "violation"
    assert check_txn_history(h.ops, foreign=[0.5]).verdict == "violation"  # one is not enough
    assert check_txn_history(h.ops, foreign=[0.5, 2.5]).verdict == "ok"
    assert check_txn_history(h.ops, foreign=[0.5, 3.5]).verdict == "violation"  # invoked after it returned


def test_compaction_errors_and_reads_below_it():
    h = H()
    h.op(0, 1, success=[Put("a", "v1")], revision=2)
    h.op(2, 3, success=[Put("a", "v2")], revision=3)
    h.op(4, 5, compact=3, revision=3)
    h.op(6, 7, compact=3, revision=3, error="compacted")
    h.op(6, 7, compact=9, revision=3, error="future")
    h.op(8, 9, success=[Range("a", revision=2)], revision=3, error="compacted")
    h.op(8, 9, success=[Range("a", revision=3)], revision=3, reads=[("v2", 2, 3, 2)])
    assert check_txn_history(h.ops).verdict == "ok"
    # A compaction answered as done although the revision was compacted already.
    bad = H(h.ops[:3])
    bad.op(6, 7, compact=3, revision=3)
    assert check_txn_history(bad.ops).verdict == "violation"
    # A read below the compaction answered with data.
    bad = H(h.ops[:3])
    bad.op(8, 9, success=[Range("a", revision=2)], revision=3, reads=[("v1", 2, 2, 1)])
    assert check_txn_history(bad.ops).verdict == "violation"
    # A compaction must not take a revision.
    bad = H(h.ops[:2])
    bad.op(4, 5, compact=3, revision=4)
    assert check_txn_history(bad.ops).verdict == "violation"


def test_an_unknown_compaction_may_explain_a_compacted_read():
    h = H()
    h.op(0, 1, success=[Put("a", "v1")], revision=2)
    h.op(2, 3, success=[Put("a", "v2")], revision=3)
    h.op(3.5, None, outcome="unknown", compact=3)
    h.op(4, 5, success=[Range("a", revision=2)], revision=3, error="compacted")
    assert check_txn_history(h.ops).verdict == "ok"
    assert check_txn_history([o for o in h.ops if o.outcome == "ok"]).verdict == "violation"


def test_an_unknown_write_that_was_read_takes_the_revision_the_read_shows():
    h = H()
    h.op(0, 1, success=[Put("a", "v1")], revision=2)
    h.op(0.5, None, outcome="unknown", success=[Put("b", "u")])
    h.op(0.5, None, outcome="unknown", success=[Put("c", "w")])
    h.op(2, 3, success=[Put("a", "v2")], revision=4)
    h.op(4, 5, success=[Range("b"), Range("c")], revision=4, reads=[None, ("w", 3, 3, 1)])
    assert check_txn_history(h.ops).verdict == "ok"
    # The read says "w" was written at 3: it cannot also have been written at 5.
    bad = H(h.ops[:4])
    bad.op(4, 5, success=[Range("c")], revision=4, reads=[("w", 5, 5, 1)])
    assert check_txn_history(bad.ops).verdict == "violation"


@pytest.mark.parametrize("seed", range(3))
def test_many_unknown_ops_among_foreign_writes_are_checked_fast(seed):
    """The shape of a chaos campaign: a tenth of the ops unknown, v1 writes
    taking revisions in between. (With a quarter unknown, most never read,
    the search can run out of budget: verdict unknown, never a false one.)"""
    rng = random.Random(100 + seed)
    foreign: list[float] = []
    ops = _random_history(rng, 1000, keys=4, p_unknown=0.1, foreign=foreign)
    r = check_txn_history(ops, foreign=foreign, time_budget_s=60)
    assert r.verdict == "ok", r.explanation
    assert r.elapsed_s < 20, r.elapsed_s
