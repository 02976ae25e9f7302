"""The simulator's etcd clients catch a deliberately broken etcd path.

Each test breaks one rule (only inside the test, with ``monkeypatch``), runs
seeds from 0 until the simulator reports a violation, and asserts it did so
within a stated number of seeds (the pattern of test_broken_node_layer.py).

Figures when written (3 nodes, etcd clients in three seeds of four): a
compare on mod_revision evaluated the wrong way round, first caught at seed
0 (by the reference replay and the history checker both); a Txn answered
with the revision before its write, seed 0; a Compaction at or below the
one done answered as done, seed 14. The bounds leave room for the run's
draws to change.
"""

from __future__ import annotations

from paxoskv.etcdpb import rpc_pb2
from paxoskv.kv import etcd as kv_etcd
from paxoskv.kv.mvcc import MVCCStore
from paxoskv.replica.calls import Call
from test_broken_node_layer import first_violation, kinds


def test_a_mod_revision_compare_evaluated_wrong_is_caught_within_30_seeds(monkeypatch, tally) -> None:
    compare_one = kv_etcd._compare_one

    def inverted(c, rec):  # noqa: ANN001, ANN202
        ok = compare_one(c, rec)
        return not ok if c.target == rpc_pb2.Compare.MOD else ok

    monkeypatch.setattr(kv_etcd, "_compare_one", inverted)
    r = first_violation(30, tally)
    assert "etcd-linearizability" in kinds(r), r.violations


def test_a_txn_answered_with_a_stale_revision_is_caught_within_30_seeds(monkeypatch, tally) -> None:
    """The node layer answers a write's header one revision low (the state is right)."""
    set_result = Call.set

    def stale(self, i, result):  # noqa: ANN001, ANN202
        if isinstance(result, rpc_pb2.TxnResponse) and any(
                r.WhichOneof("response") == "response_put" for r in result.responses):
            result.header.revision -= 1
        return set_result(self, i, result)

    monkeypatch.setattr(Call, "set", stale)
    r = first_violation(30, tally)
    assert "etcd-linearizability" in kinds(r), r.violations


def test_a_compaction_below_the_last_one_answered_as_done_is_caught_within_60_seeds(monkeypatch, tally) -> None:
    def no_compacted_check(store: MVCCStore, req):  # noqa: ANN001, ANN202
        if req.revision > store.revision:
            return kv_etcd.ERR_FUTURE_REV
        if req.revision > store.compact_revision:
            store.compact(req.revision)
        resp = rpc_pb2.CompactionResponse()
        resp.header.revision = store.revision
        return resp

    monkeypatch.setattr(kv_etcd, "apply_compaction", no_compacted_check)
    r = first_violation(60, tally)
    assert "etcd-linearizability" in kinds(r), r.violations
