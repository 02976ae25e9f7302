"""The etcd-API workload the CI campaigns run, and what a clean one shows."""

from __future__ import annotations

import dataclasses

from paxoskv.chaos import CampaignResult
from paxoskv.chaos.etcd_workload import EtcdWorkloadConfig, foreign_writes, lease_counts
from paxoskv.check.txn import LEASE_NOT_FOUND, Put, Range, TxnOp, check_txn_history

ETCD_WORKLOAD = EtcdWorkloadConfig(clients=3, keys=4)


def assert_etcd_clean(res: CampaignResult) -> None:
    """The etcd history is linearizable and every member check ran and passed,
    on a history with enough of each kind of operation to mean something."""
    out = res.etcd
    assert out is not None
    summary = (res.config.out_dir / "summary.txt").read_text()
    assert out.check is not None and out.check.verdict == "ok", summary
    assert out.problems == [], summary
    ok = [o for o in out.history if o.outcome == "ok"]
    cas = [o for o in ok if o.compares and o.success and o.success[0].__class__.__name__ == "Put" and len(o.success) == 1]
    assert sum(o.succeeded for o in cas) >= 20 and sum(not o.succeeded for o in cas) >= 5, summary
    assert sum(1 for o in ok if len(o.success) == 2 and o.compares) >= 20, summary  # multi-key txns
    assert sum(1 for o in ok if any(getattr(x, "revision", 0) for x in o.success)) >= 20, summary  # range at rev
    assert out.revisions_scanned == out.revision and out.revision > 100, summary  # every revision, from 1
    assert out.hashes_compared >= 2, summary
    assert (res.config.out_dir / "etcd-history.jsonl").exists()
    leases = lease_counts(out.history)
    assert leases["grant ok"] >= 5 and leases["put ok"] >= 5, (leases, summary)
    assert leases["keepalive ok"] >= 2 and leases["revoke ok"] >= 2, (leases, summary)
    assert leases["ttl gone"] >= 2 and leases["put gone"] >= 1, (leases, summary)  # expiries observed
    assert "leases: " in summary


def assert_read_after_expiry_caught(res: CampaignResult) -> None:
    """The campaign's etcd history, with one read of a lease's key after the
    lease was seen gone made to show the key, is not linearizable."""
    assert res.etcd is not None
    bad_history, bad = read_after_expiry(res.etcd.history)
    check = check_txn_history(bad_history, foreign=foreign_writes(res.history), time_budget_s=60)
    assert check.verdict == "violation", check.explanation
    assert check.failing_op == bad and "a lease ends once" in check.explanation, check.explanation


def read_after_expiry(history: list[TxnOp]) -> tuple[list[TxnOp], TxnOp]:
    """``history`` with one read made to see a lease's key after the lease was
    seen gone: a Range of key ``k`` called after a TimeToLive answered lease
    ``L`` gone, that answered ``k`` absent, now answers it as an earlier read
    showed it, written by a put with ``L``, when no other write of ``k`` was
    called between that read and this one (so only ``L``'s end deleted it)."""
    ok = sorted((o for o in history if o.outcome == "ok"), key=lambda o: o.call)
    gone: dict[int, float] = {}
    for o in ok:
        if o.lease is not None and o.lease.kind == "ttl" and o.error == LEASE_NOT_FOUND:
            gone.setdefault(o.lease.id, o.ret)
    lease_of = {x.value: x.lease for o in history for x in o.success if isinstance(x, Put) and x.lease}
    writes = sorted((o.call, x.key) for o in history for x in (*o.success, *o.failure) if not isinstance(x, Range))
    last_seen: dict[str, tuple[float, tuple]] = {}  # key -> (call, record) of its latest read showing a leased value
    for o in ok:
        plain = o.lease is None and not o.compares and o.error is None
        if not (plain and len(o.success) == 1 and isinstance(o.success[0], Range) and not o.success[0].revision):
            continue
        key, rec = o.success[0].key, o.reads[0]
        if rec is not None:
            if rec[0] in lease_of:
                last_seen[key] = (o.call, rec)
            continue
        if key not in last_seen:
            continue
        seen_at, rec = last_seen[key]
        lease_id = lease_of[rec[0]]
        if lease_id in gone and seen_at < gone[lease_id] < o.call:
            if not any(seen_at < t <= o.ret and k == key for t, k in writes):
                bad = dataclasses.replace(o, reads=(rec,))
                return [bad if x.id == o.id else x for x in history], bad
    raise AssertionError("no read of a lease's key after its expiry was observed: nothing to corrupt")
