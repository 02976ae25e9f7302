"""Campaigns against real ``paxoskv serve`` processes.

CI runs, with fixed seeds and within about two and a half minutes of
campaign time: a 3-node campaign with every fault family (at least 5,000
operations, linearizable, no lost acknowledged write; its etcd history and
its watchers checked too, and a watch record with a response dropped must
fail its verdict), a 5-node campaign
with a tiny retained log (catch-up by snapshot under faults),
the weakened node (reads from local state) which must be caught, and the
CLI end to end. Every campaign runs its nodes as a deployment does: CURVE
on the peer bus, TLS with client certificates on the public port (each
node's log says so at every start; ``assert_secure``). With ``PAXOSKV_LONG=1`` the 3-node campaign lasts ten
minutes, with a random seed (printed).

Partition faults need root and network namespaces; where they are missing
the campaigns run kill and pause only and say so (a warning in the test
report and a note in the summary).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import warnings

import pytest

from paxoskv.chaos import CampaignConfig, CampaignResult, WorkloadConfig, run_campaign
from paxoskv.chaos.campaign import _decide
from paxoskv.chaos.net import namespace_support
from paxoskv.chaos.watch_workload import WatchWorkloadConfig
from etcd_support import ETCD_WORKLOAD, assert_etcd_clean, assert_read_after_expiry_caught

HERE = pathlib.Path(__file__).resolve().parent
WEAK_NODE = (sys.executable, str(HERE / "weak_serve.py"))
PARTITIONS_WHY_NOT = namespace_support()
ALL_FAULTS = frozenset({"kill", "pause", "partition"})
KILL_KINDS = {"kill", "kill-fsync", "kill-election"}
PARTITION_KINDS = {"isolate-leader", "split", "bridge"}
LONG = os.environ.get("PAXOSKV_LONG") == "1"


def campaign_seed(default: int) -> int:
    """Fixed in CI (a failure is a replayable fact); random and printed in long runs."""
    if LONG:
        seed = int.from_bytes(os.urandom(3), "big")
        print(f"PAXOSKV_LONG: chaos campaign seed {seed}")
        return seed
    return default


def show(res: CampaignResult) -> str:
    return (res.config.out_dir / "summary.txt").read_text()


def assert_batches_retried(res: CampaignResult) -> None:
    """Packed batches ran, and some were retried (the case exactly-once is about)."""
    stats = res.client_stats
    assert stats is not None and stats.batches >= 200, stats
    assert stats.batch_retries >= 1, stats


def assert_clean(res: CampaignResult) -> None:
    summary = show(res)
    print(summary)
    assert res.check is not None and res.check.verdict == "ok", summary
    assert res.lost == [], summary
    assert res.node_diffs == [], summary
    assert res.convergence is not None and res.convergence.ok, summary
    assert res.logs is not None and res.logs.findings == [], summary
    assert res.problems == [], summary
    assert res.verdict == "pass", summary
    assert not [n for n in res.client_notes if "should never happen" in n], res.client_notes
    # the files a person inspects afterwards
    out = res.config.out_dir
    verdict = json.loads((out / "verdict.json").read_text())
    assert verdict["verdict"] == "pass"
    assert len((out / "history.jsonl").read_text().splitlines()) == len(res.history)
    assert len((out / "faults.jsonl").read_text().splitlines()) == len(res.events)
    assert verdict["config"]["peer_bus"] == "curve" and verdict["config"]["tls"] is res.config.tls
    # nothing left running
    for i in range(1, res.config.nodes + 1):
        assert (out / f"n{i}" / "node.log").exists()
    assert_secure(res)
    assert all(code == 0 for code in res.exit_codes.values()), res.exit_codes


def assert_secure(res: CampaignResult) -> None:
    """Every start of every node served with CURVE on its bus and, with ``tls``, TLS and client certificates."""
    for i in range(1, res.config.nodes + 1):
        log = (res.config.out_dir / f"n{i}" / "node.log").read_text(errors="replace")
        serving = [line for line in log.splitlines() if " serving gRPC on " in line]
        assert serving, f"node {i} never said it served"
        for line in serving:
            assert "; bus port " in line and ", CURVE, " in line, line
            assert ("(TLS, client certificates of " in line) is res.config.tls, line


def assert_faults(res: CampaignResult) -> set[str]:
    kinds = {e.kind for e in res.events}
    assert kinds & KILL_KINDS and "pause" in kinds and "kill-all" in kinds, kinds
    if PARTITIONS_WHY_NOT is None:
        assert kinds & PARTITION_KINDS, kinds
        assert res.network.startswith("network namespaces"), res.network
    else:
        warnings.warn(f"partition faults skipped: {PARTITIONS_WHY_NOT}", stacklevel=2)
        assert any("partition faults skipped" in n for n in res.notes)
    assert all(e.end_s is not None for e in res.events)
    return kinds


def assert_no_leftovers(res: CampaignResult) -> None:
    if res.network.startswith("network namespaces"):
        bridge = res.network.split("bridge ")[1].split(",")[0]
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
        assert bridge not in links


@pytest.fixture(scope="module")
def three_nodes(tmp_path_factory) -> CampaignResult:
    """The 3-node campaign under every fault, with the etcd workload and the
    watchers: one run for the tests below."""
    return run_campaign(
        CampaignConfig(
            out_dir=tmp_path_factory.mktemp("three") / "campaign",
            nodes=3,
            duration_s=600 if LONG else 45,
            ops_min=6000,
            duration_max_s=100,  # only on a machine so slow that 45 s gave fewer than 6,000 operations
            faults=ALL_FAULTS,
            seed=campaign_seed(20240611),
            workload=WorkloadConfig(clients=12, keys=5, p_batch=0.2),
            etcd=ETCD_WORKLOAD,
            watch=WatchWorkloadConfig(),
            check_budget_s=600 if LONG else 120,
        )
    )


@pytest.mark.timeout(1500 if LONG else 240)
def test_three_nodes_under_every_fault_stay_linearizable(three_nodes):
    res = three_nodes
    assert_clean(res)
    assert_etcd_clean(res)
    assert_read_after_expiry_caught(res)
    kinds = assert_faults(res)
    assert KILL_KINDS <= kinds, kinds
    if PARTITIONS_WHY_NOT is None:
        assert PARTITION_KINDS <= kinds, kinds
    assert res.workload_ops >= 5000, res.workload_ops
    assert len(res.leaders) >= 3, "the leader should have changed under these faults"
    assert_batches_retried(res)
    assert_no_leftovers(res)


@pytest.mark.timeout(1500 if LONG else 240)
def test_watchers_on_every_member_see_every_event_through_the_faults(three_nodes):
    """Ordered, unique, atomic, reliable, resumable, progress never lies: for
    every watch the campaign's streams made, checked against the event log
    read from two members; the streams moved (faults, stalls, migrations)."""
    res = three_nodes
    w = res.watch
    summary = show(res)
    assert w is not None and w.checked and w.violations == [] and w.problems == [], summary
    assert w.watchers == 15 and w.log_members == (1, 2), summary
    assert w.events > 1000 and len(w.log) > 500 and w.progress > 20, summary
    assert w.reconnects >= 1 and w.moves["broken"] + w.moves["stalled"] >= 1, summary  # a fault moved a stream
    assert (LONG or not w.capped) and w.compact_revision <= 0 and w.revision >= res.etcd.revision, summary
    kinds = {(rec.prev_kv, bool(rec.filters), rec.range_end) for rec in w.records if rec.responses}
    assert len(kinds) >= 4, kinds  # prev_kv, filters, single keys, prefixes and the whole key space all saw events
    assert any(len(r) > 1 for rec in w.records for r in rec.responses), "no response held several events"
    assert "watch workload: 15 watchers" in summary and "violations: 0" in summary
    verdict = json.loads((res.config.out_dir / "verdict.json").read_text())["watch"]
    assert verdict["events_checked"] == w.events and verdict["reconnects"] == w.reconnects


@pytest.mark.timeout(1500 if LONG else 240)
def test_a_watch_record_missing_a_response_fails_the_campaign(three_nodes):
    """The watch check is not vacuous: the same run with one response dropped
    from one record (not its last) fails the verdict, as reliable."""
    res = three_nodes
    w = res.watch
    assert w is not None and w.violations == []
    k, rec = max(enumerate(w.records), key=lambda kr: len(kr[1].responses))
    assert len(rec.responses) >= 3, rec.name
    i = len(rec.responses) // 2
    lost = rec.responses[i]
    broken = dataclasses.replace(
        rec,
        responses=rec.responses[:i] + rec.responses[i + 1:],
        progress=[(n - (n > i), rev) for n, rev in rec.progress],
    )
    bad_watch = dataclasses.replace(w, records=[*w.records[:k], broken, *w.records[k + 1:]], violations=[], checked=False)
    bad_watch.judge()
    missing = [v for v in bad_watch.violations if v.startswith(f"{rec.name}: reliable: ") and lost[0].show() in v]
    assert missing, bad_watch.violations
    bad = dataclasses.replace(res, problems=[], verdict="unknown", watch=bad_watch)
    _decide(bad)
    assert bad.verdict == "fail" and any(p.startswith("watch: ") and "reliable" in p for p in bad.problems), bad.problems


@pytest.mark.timeout(240)
def test_five_nodes_under_every_fault_stay_linearizable(tmp_path):
    res = run_campaign(
        CampaignConfig(
            out_dir=tmp_path / "campaign",
            nodes=5,
            duration_s=30,
            faults=ALL_FAULTS,
            seed=5150,
            workload=WorkloadConfig(clients=15, keys=6, p_batch=0.2),
            retain_entries=100,  # compaction all the time: lagging nodes catch up by snapshot
        )
    )
    assert_clean(res)
    assert_faults(res)
    assert res.workload_ops >= 2000, res.workload_ops
    assert res.snapshots, "no node showed a snapshot: the catch-up by snapshot was not exercised"
    assert_no_leftovers(res)


@pytest.mark.timeout(180)
def test_a_node_that_reads_its_local_state_is_caught(tmp_path):
    faults = frozenset({"pause", "partition"}) if PARTITIONS_WHY_NOT is None else frozenset({"pause"})
    res = run_campaign(
        CampaignConfig(
            out_dir=tmp_path / "weak",
            nodes=3,
            duration_s=15,
            faults=faults,
            seed=7,
            node_command=WEAK_NODE,
        )
    )
    summary = show(res)
    print(summary)
    assert res.check is not None and res.check.verdict == "violation", summary
    assert res.verdict == "fail"
    assert any(p.startswith("not linearizable on key") for p in res.problems), res.problems
    bad = res.check.violations[0]
    assert bad.failing_op is not None and bad.failing_op.op == "get"  # a stale read, named
    assert "cannot linearize" in summary
    assert (
        json.loads((res.config.out_dir / "verdict.json").read_text())["checks"]["linearizable"] == "violation"
    )


@pytest.mark.timeout(120)
def test_the_cli_runs_a_campaign_and_writes_its_files(tmp_path):
    out = tmp_path / "cli"
    cp = subprocess.run(
        [
            sys.executable,
            "-c",
            "from paxoskv.cli import main; main()",
            "chaos",
            "--nodes",
            "3",
            "--duration",
            "10s",
            "--faults",
            "kill,pause",
            "--seed",
            "3",
            "--out",
            str(out),
            "--clients",
            "10",
            "--etcd-clients",
            "1",
            "--lease-clients",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert "VERDICT: PASS" in cp.stdout
    assert "latency of ok operations" in cp.stdout and "availability:" in cp.stdout
    assert "etcd workload: " in cp.stdout and "  leases: " in cp.stdout and "checker: ok" in cp.stdout
    verdict = json.loads((out / "verdict.json").read_text())
    assert verdict["verdict"] == "pass" and verdict["config"]["seed"] == 3
    assert verdict["config"]["tls"] is True and verdict["config"]["peer_bus"] == "curve"  # the default: secure
    assert verdict["operations"]["all"]["total"] > 0


def test_the_cli_refuses_bad_usage(tmp_path):
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-c", "from paxoskv.cli import main; main()", "chaos", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    cp = run("--faults", "kill,meteor", "--out", str(tmp_path / "x"))
    assert cp.returncode == 2 and "unknown fault(s) meteor" in cp.stderr
    cp = run("--duration", "soon", "--out", str(tmp_path / "x"))
    assert cp.returncode == 2 and "not a duration" in cp.stderr
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "history.jsonl").write_text("")
    cp = run("--out", str(tmp_path / "used"))
    assert cp.returncode == 2 and "is not empty" in cp.stderr
