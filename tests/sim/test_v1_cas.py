"""The simulator's paxoskv.v1 CASes (``KV.Txn`` put-if-absent / put-if-present,
sim/clients.py) check the Txn path: healthy seeds pass, and a node layer
that retries a CAS under a new identity (not exactly-once) or a state
machine that ignores the compares is caught.

Figures when written (3 nodes; a third of the seeds draw no CASes): a CAS
without its identity, first caught at seed 17; compares ignored, seed 1.
"""

from __future__ import annotations

from paxoskv.kv import etcd
from paxoskv.replica.node import ReplicaNode
from paxoskv.sim import run_seed
from paxoskv.v1 import kv_pb2
from test_broken_node_layer import first_violation


def test_cas_seeds_pass_and_draw_txns(monkeypatch, tally) -> None:  # noqa: ANN001
    txns = []
    txn = ReplicaNode.txn

    def counted(self, req, timeout_s, on_done):  # noqa: ANN001, ANN202
        txns.append(req.compare[0].target)
        return txn(self, req, timeout_s, on_done)

    monkeypatch.setattr(ReplicaNode, "txn", counted)
    for seed in range(6):
        r = run_seed(seed)
        tally(r)
        assert r.ok, r.violations
    assert len(txns) > 50 and set(txns) == {etcd.rpc_pb2.Compare.VERSION, etcd.rpc_pb2.Compare.MOD}


def test_a_cas_retried_under_a_new_identity_is_caught_within_40_seeds(monkeypatch, tally) -> None:  # noqa: ANN001
    txn = ReplicaNode.txn

    def anonymous(self, req, timeout_s, on_done):  # noqa: ANN001, ANN202
        bare = kv_pb2.TxnRequest()
        bare.CopyFrom(req)
        bare.ClearField("request")  # a node-assigned identity per attempt: a retry may apply again
        return txn(self, bare, timeout_s, on_done)

    monkeypatch.setattr(ReplicaNode, "txn", anonymous)
    r = first_violation(40, tally)
    assert {v.kind for v in r.violations} & {"linearizability", "acknowledged-write", "state-machine"}, r.violations


def test_a_state_machine_ignoring_the_compares_is_caught_within_20_seeds(monkeypatch, tally) -> None:  # noqa: ANN001
    monkeypatch.setattr(etcd, "_compare", lambda store, c: True)
    r = first_violation(20, tally)
    assert r.violations, r
