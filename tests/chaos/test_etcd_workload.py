"""The etcd workload's member checks, on states made up here (no processes)."""

from __future__ import annotations

from paxoskv.chaos.etcd_workload import _gap_free, foreign_revisions_of


def row(key, value, create, mod, version):  # noqa: ANN001, ANN201
    return (key, value, create, mod, version)


def test_a_clean_run_of_revisions_is_gap_free():
    states = [
        (),
        (row(b"a", b"1", 2, 2, 1),),
        (row(b"a", b"1", 2, 2, 1), row(b"b", b"x", 3, 3, 1)),
        (row(b"b", b"x", 3, 3, 1),),  # a deleted at 4
    ]
    assert _gap_free(states, 1) == ("", [])


def test_a_revision_with_no_net_change_is_handed_to_hashkv():
    states = [(), (row(b"a", b"1", 2, 2, 1),), (row(b"a", b"1", 2, 2, 1),)]
    assert _gap_free(states, 1) == ("", [3])


def test_a_key_changed_without_its_mod_revision_is_caught():
    states = [(), (row(b"a", b"1", 2, 2, 1),), (row(b"a", b"2", 2, 2, 2),)]
    problem, _ = _gap_free(states, 1)
    assert "without mod revision 3" in problem


def test_a_mod_revision_from_the_future_is_caught():
    states = [(), (row(b"a", b"1", 2, 5, 1),)]
    problem, _ = _gap_free(states, 1)
    assert "later mod revision" in problem


def test_a_store_not_empty_at_revision_one_is_caught():
    problem, _ = _gap_free([(row(b"a", b"1", 1, 1, 1),)], 1)
    assert "not empty" in problem


def test_the_revisions_that_changed_no_etcd_workload_key_go_to_the_other_writers():
    e1, k0 = b"e/k1", b"k0"
    states = [
        (),                                                     # 1: empty
        (row(k0, b"c0-1", 2, 2, 1),),                           # 2: a v1 put
        (row(e1, b"e0-1", 3, 3, 1), row(k0, b"c0-1", 2, 2, 1)),  # 3: an etcd put
        (row(e1, b"e0-1", 3, 3, 1), row(k0, b"c0-1", 2, 2, 1)),  # 4: a v1 batch with no net change
        (row(e1, b"e0-1", 3, 3, 1),),                           # 5: a v1 delete
        (),                                                     # 6: an etcd delete (or a revoke)
        (row(e1, b"e1-1", 7, 7, 1), row(k0, b"c1-1", 7, 7, 1)),  # 7: both (never made: counts as etcd's)
    ]
    assert foreign_revisions_of(states) == [2, 4, 5]
