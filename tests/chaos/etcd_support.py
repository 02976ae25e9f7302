"""The etcd-API workload the CI campaigns run, and what a clean one shows."""

from __future__ import annotations

from paxoskv.chaos import CampaignResult
from paxoskv.chaos.etcd_workload import EtcdWorkloadConfig

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
