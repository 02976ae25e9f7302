"""paxoskv.check.txn with leases: grant, put with a lease, revoke, keep-alive,
TimeToLive, and the expiry the checker searches a place for."""

from __future__ import annotations

import json

from paxoskv.check.txn import (
    LEASE_NOT_FOUND,
    Delete,
    LeaseCall,
    Put,
    Range,
    TxnModel,
    TxnOp,
    check_txn_history,
    txn_op_from_json,
)

L = 0x51  # the lease of most tests


class H:
    """Builds histories, one call at a time."""

    def __init__(self) -> None:
        self.ops: list[TxnOp] = []

    def _add(self, call, ret, **kw) -> TxnOp:  # noqa: ANN001
        kw.setdefault("outcome", "ok")
        if kw["outcome"] == "ok":
            kw.setdefault("succeeded", True)
            kw.setdefault("reads", ())
        o = TxnOp(id=len(self.ops), client=f"c{len(self.ops) % 3}", call=call, ret=ret, **kw)
        self.ops.append(o)
        return o

    def grant(self, call, ret, lease_id=L, *, revision=1, outcome="ok") -> TxnOp:  # noqa: ANN001
        return self._add(call, ret, lease=LeaseCall("grant", lease_id, 2), revision=revision, outcome=outcome)

    def lease(self, kind, call, ret, lease_id=L, *, revision=None, gone=False, outcome="ok") -> TxnOp:  # noqa: ANN001
        return self._add(call, ret, lease=LeaseCall(kind, lease_id), revision=revision,
                         error=LEASE_NOT_FOUND if gone else None, outcome=outcome)

    def put(self, call, ret, key, value, lease_id=0, *, revision=None, error=None, outcome="ok") -> TxnOp:  # noqa: ANN001
        return self._add(call, ret, success=(Put(key, value, lease_id),), revision=revision, error=error,
                         outcome=outcome)

    def read(self, call, ret, *keys_and_records, revision) -> TxnOp:  # noqa: ANN001
        keys = keys_and_records[::2]
        return self._add(call, ret, success=tuple(Range(k) for k in keys), revision=revision,
                         reads=tuple(keys_and_records[1::2]))


def leased_pair() -> H:
    """Lease L granted; a (revision 2) and b (revision 3) attached to it."""
    h = H()
    h.grant(0, 1)
    h.put(2, 3, "a", "va", L, revision=2)
    h.put(4, 5, "b", "vb", L, revision=3)
    return h


A = ("va", 2, 2, 1)
B = ("vb", 3, 3, 1)


def test_a_correct_lease_history_is_linearizable():
    h = leased_pair()
    h.lease("keepalive", 6, 7)
    h.read(8, 9, "a", A, "b", B, revision=3)
    h.read(10, 16, "a", A, revision=3)  # concurrent with the expiry: before it
    h.lease("ttl", 12, 13, gone=True)  # the expiry was observed
    h.read(14, 15, "a", None, "b", None, revision=4)  # both gone, at the expiry's one revision
    h.put(17, 18, "c", "vc", L, error=LEASE_NOT_FOUND)
    h.lease("keepalive", 19, 20, gone=True)
    h.lease("revoke", 21, 22, gone=True)
    r = check_txn_history(h.ops)
    assert r.verdict == "ok", r.explanation
    assert r.ops_total == len(h.ops) + 1  # and one expiry, searched


def test_a_key_read_present_after_the_expiry_was_observed_is_a_violation():
    h = leased_pair()
    h.lease("ttl", 6, 7, gone=True)
    h.read(8, 9, "a", A, revision=3)  # still there: the expiry did not delete it
    r = check_txn_history(h.ops)
    assert r.verdict == "violation"
    assert r.failing_op is not None and r.failing_op.id in (3, 4)
    assert "cannot linearize" in r.explanation and "lease 51" in r.explanation


def test_an_expiry_concurrent_with_a_read_may_come_after_it():
    h = leased_pair()
    h.read(6, 9, "a", A, revision=3)
    h.lease("ttl", 6, 7, gone=True)
    assert check_txn_history(h.ops).verdict == "ok"


def test_keys_of_one_lease_vanishing_at_different_revisions_is_a_violation():
    h = leased_pair()
    h.read(6, 7, "a", None, "b", B, revision=4)  # a gone, b not, at one revision: no single revoke did that
    assert check_txn_history(h.ops).verdict == "violation"
    h = leased_pair()
    h.read(6, 7, "a", None, revision=4)
    h.read(8, 9, "b", B, revision=4)  # two reads, one revision
    assert check_txn_history(h.ops).verdict == "violation"
    h = leased_pair()
    h.read(6, 7, "a", None, revision=4)
    h.read(8, 9, "b", None, revision=4)  # the same, both gone: one expiry
    assert check_txn_history(h.ops).verdict == "ok"


def test_a_put_with_an_expired_lease_that_succeeds_is_a_violation():
    h = leased_pair()
    h.lease("keepalive", 6, 7, gone=True)
    h.put(8, 9, "c", "vc", L, revision=5)
    r = check_txn_history(h.ops)
    assert r.verdict == "violation" and r.failing_op is not None and r.failing_op.id == 4
    h = leased_pair()
    h.lease("keepalive", 6, 7, gone=True)
    h.put(8, 9, "c", "vc", L, error=LEASE_NOT_FOUND)
    assert check_txn_history(h.ops).verdict == "ok"


def test_a_put_with_a_live_lease_refused_as_not_found_is_a_violation():
    h = leased_pair()
    h.put(6, 7, "c", "vc", L, error=LEASE_NOT_FOUND)
    h.lease("keepalive", 8, 9)  # alive afterwards
    assert check_txn_history(h.ops).verdict == "violation"


def test_a_revoke_that_leaves_a_key_is_a_violation():
    h = leased_pair()
    h.lease("revoke", 6, 7, revision=4)
    h.read(8, 9, "b", B, revision=4)
    assert check_txn_history(h.ops).verdict == "violation"
    h = leased_pair()
    h.lease("revoke", 6, 7, revision=5)  # two revisions for one revoke
    assert check_txn_history(h.ops).verdict == "violation"
    h = leased_pair()
    h.lease("revoke", 6, 7, revision=4)
    h.read(8, 9, "a", None, "b", None, revision=4)
    h.lease("ttl", 10, 11, gone=True)
    assert check_txn_history(h.ops).verdict == "ok"


def test_a_put_without_lease_detaches_the_key():
    h = leased_pair()
    h.put(6, 7, "a", "va2", revision=4)  # no lease: a is no longer the lease's
    h.lease("revoke", 8, 9, revision=5)
    h.read(10, 11, "a", ("va2", 2, 4, 2), "b", None, revision=5)
    assert check_txn_history(h.ops).verdict == "ok"
    h = leased_pair()
    h.put(6, 7, "a", "va2", revision=4)
    h.lease("revoke", 8, 9, revision=5)
    h.read(10, 11, "a", None, revision=5)  # the revoke took a detached key
    assert check_txn_history(h.ops).verdict == "violation"


def test_a_delete_detaches_and_a_revoke_of_no_keys_takes_no_revision():
    h = H()
    h.grant(0, 1)
    h.put(2, 3, "a", "va", L, revision=2)
    h._add(4, 5, success=(Delete("a"),), revision=3)
    h.lease("revoke", 6, 7, revision=3)
    h.read(8, 9, "a", None, revision=3)
    assert check_txn_history(h.ops).verdict == "ok"


def test_a_keep_alive_answered_alive_after_the_expiry_was_observed_is_a_violation():
    h = leased_pair()
    h.lease("ttl", 6, 7, gone=True)
    h.lease("keepalive", 8, 9)
    assert check_txn_history(h.ops).verdict == "violation"


def test_an_unknown_grant_may_or_may_not_have_happened():
    h = H()
    h.grant(0, None, outcome="unknown")
    h.put(2, 3, "a", "va", L, revision=2)  # it did
    h.lease("ttl", 4, 5, gone=True)  # and expired
    h.read(6, 7, "a", None, revision=3)
    assert check_txn_history(h.ops).verdict == "ok"
    h = H()
    h.grant(0, None, outcome="unknown")
    h.put(2, 3, "a", "va", L, error=LEASE_NOT_FOUND)  # not yet
    h.put(4, 5, "b", "vb", L, revision=2)  # now it did: the grant's call was earlier, its effect may be later
    assert check_txn_history(h.ops).verdict == "ok"


def test_a_lease_never_granted_is_never_live():
    h = H()
    h.put(0, 1, "a", "va", L, revision=2)
    assert check_txn_history(h.ops).verdict == "violation"


def test_an_exhausted_budget_is_unknown_never_a_pass():
    h = leased_pair()
    h.lease("ttl", 6, 7, gone=True)
    h.read(8, 9, "a", None, revision=4)
    r = check_txn_history(h.ops, step_budget=2)
    assert r.verdict == "unknown" and r.budget_reason == "steps"


def test_lease_ops_round_trip_through_json():
    h = leased_pair()
    h.lease("ttl", 6, 7, gone=True)
    h.lease("revoke", 8, None, outcome="unknown")
    for o in h.ops:
        assert txn_op_from_json(json.loads(json.dumps(o.to_json()))) == o
    assert "lease-grant(51, ttl=2)" in h.ops[0].describe() and "lease=51" in h.ops[1].describe()


def test_the_model_revokes_every_attached_key_in_one_revision():
    m = TxnModel()
    h = leased_pair()
    for o in h.ops:
        m.apply(o)
    assert m.attached(L) == ["a", "b"] and m.lease_of("a") == L and m.revision == 3
    _, rev, _, err = m.apply(TxnOp(id=9, client="c", call=0, ret=1, outcome="ok", succeeded=True, reads=(),
                                   revision=4, lease=LeaseCall("revoke", L)))
    assert (rev, err) == (4, None) and m.kv == {} and not m.live(L)
    m.undo()
    assert m.live(L) and m.attached(L) == ["a", "b"] and m.revision == 3


def test_a_lease_seen_live_gone_and_live_again_is_named_without_a_search():
    h = leased_pair()
    h.lease("ttl", 6, 7, gone=True)
    h.read(8, 9, "a", A, revision=3)
    r = check_txn_history(h.ops)
    assert r.verdict == "violation" and r.steps == 0  # the quick test found it
    assert r.failing_op is not None and r.failing_op.id == 4
    assert "#3 c0 lease-ttl(51)" in r.explanation and "a lease ends once" in r.explanation


def test_a_lease_seen_gone_before_its_grant_took_effect_is_no_violation():
    h = H()
    h.grant(0, None, outcome="unknown")
    h.lease("ttl", 1, 2, gone=True)  # before the grant took effect
    h.put(3, 4, "a", "va", L, revision=2)
    h.lease("keepalive", 5, 6)
    assert check_txn_history(h.ops).verdict == "ok"


def test_a_key_recreated_after_its_lease_ended_places_the_unknown_revoke_before_the_put():
    def history(then_alive: bool) -> H:
        h = H()
        h.grant(0, 1)
        h.put(2, 3, "a", "va", L, revision=2)
        h.lease("revoke", 3, None, outcome="unknown")
        h.put(4, 5, "a", "vb", revision=4)  # revision 3 is the revoke's
        h.read(6, 7, "a", ("vb", 4, 4, 1), revision=4)  # created afresh: the revoke deleted a before
        if then_alive:
            h.lease("keepalive", 8, 9)  # but the lease lives on: nothing deleted a
        return h

    assert check_txn_history(history(False).ops).verdict == "ok"
    assert check_txn_history(history(True).ops).verdict == "violation"
