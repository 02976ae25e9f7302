"""A second etcd client, in Python's conventions: aetcd (PyPI, the `test`
extras) runs put/get/range/txn/delete/compact against a real three-node
paxoskv cluster, one aetcd client per member. It runs in a process of its
own (aetcd_session.py): its generated etcd protos and paxoskv's cannot live
in one protobuf descriptor pool."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import subprocess
import sys

from integration_cluster import LocalCluster

SESSION = pathlib.Path(__file__).with_name("aetcd_session.py")


def test_aetcd_put_get_range_txn_delete_compact_against_three_members(cluster: LocalCluster) -> None:
    assert importlib.util.find_spec("aetcd") is not None, "aetcd is not installed: run bin/setup (the test extras)"
    proc = subprocess.run(
        [sys.executable, str(SESSION), *cluster.endpoints],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)

    rev = seen["put_revision"]
    assert rev >= 2
    assert seen["get"] == ["ae/k1", "v1", rev, rev, 1] and seen["get_member"] != 0
    assert seen["prefix"] == [
        ["ae/k1", "v1", rev, rev, 1],
        ["ae/k2", "v2", rev + 1, rev + 1, 1],
        ["ae/k3", "v3", rev + 2, rev + 2, 1],
    ]
    assert [k for k, *_ in seen["range"]] == ["ae/k1", "ae/k2"]  # range_end excluded
    assert seen["missing"] is True
    # compare-and-swap on the mod revision: the first wins (and reads in its
    # branch), the second (at another member) fails and reads the winner's value
    assert seen["txn1"] == [True, [None, ["v2"]]]
    assert seen["txn2"] == [False, [["swapped"]]]
    assert seen["txn_create"] is True
    assert seen["delete"] == 1 and seen["delete_missing"] is True
    # compaction: a read below it and a compaction below it get etcd's error
    assert seen["below_compaction"] == ["OUT_OF_RANGE", "etcdserver: mvcc: required revision has been compacted"]
    assert seen["compact_again"] == ["ClientError", "etcdserver: mvcc: required revision has been compacted"]
    assert [v for _, v, *_ in seen["at_latest"]] == ["last"]
    assert seen["delete_prefix"] == 3 and seen["left"] == 0  # k1, k2, new
    version, has_leader = seen["status"]
    assert version.startswith("3.4") and has_leader
