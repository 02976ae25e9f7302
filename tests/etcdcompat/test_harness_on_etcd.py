"""The compatibility harness measured on real etcd against real etcd.

Two independent 3-member etcd 3.4 clusters run the same etcdctl command
lists (etcdctl_cases). After normalisation every output must match, so the
normaliser lets no noise through; the raw outputs must differ where ids,
ports and sizes appear, so there was noise to remove; and one extra write
on one cluster must show as a difference, so it hides nothing real.
"""

from __future__ import annotations

import os

import pytest

import etcdctl_cases
from etcdctl_compat import Case, Step, Target, compare, etcdctl, render_markdown, rows_from


def _targets(etcd_clusters, tmp_path) -> tuple[Target, Target]:
    a, b = etcd_clusters(2)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    return Target("etcd-a", a.endpoints, tmp_path / "a"), Target("etcd-b", b.endpoints, tmp_path / "b")


def test_two_etcd_clusters_agree_on_every_command_after_normalisation(etcd_clusters, tmp_path):
    a, b = _targets(etcd_clusters, tmp_path)
    assert a.ids.cluster_id != b.ids.cluster_id
    assert not {m.id for m in a.ids.members} & {m.id for m in b.ids.members}

    reports = [compare(case, a, b) for case in etcdctl_cases.ALL]
    rendered = "".join(r.render() for r in reports)
    assert all(r.all_same for r in reports), rendered

    steps = [s for r in reports for s in r.steps]
    by_args = {s.step.args: s for s in steps}
    # the commands meant to be refused were, and only they
    refused = [s.step.args for s in steps if s.runs[0].code not in (0, None)]  # None: stopped by the harness
    assert refused == [
        ("put", "/missing", "--ignore-value"), ("get", "/app/", "--prefix", "--count-only"),
        ("get", "/app/a", "--rev=999"), ("get", "/app/", "--prefix", "--print-value-only", "-w", "json"),
        ("txn", "-i"), ("get", "/app/a", "--rev=2"), ("compaction", "2"), ("lease", "revoke", "{lease}"),
        ("put", "/leased", "v", "--lease=1234"), ("lease", "keep-alive", "--once", "{lease}"),
        ("snapshot", "save", "{tmp}/snap2.db"),
        ("watch", "/w/a", "--rev={w0}"),
    ], rendered
    stopped = [s.step.args for s in steps if s.runs[0].code is None]
    assert stopped == [st.args for st in etcdctl_cases.WATCH.steps if st.until_lines], rendered
    # there was noise to remove: outputs naming ids, ports, sizes differ raw
    for args in (("get", "/app/a", "-w", "json"), ("get", "/app/a", "-w", "protobuf"), ("member", "list"),
                 ("endpoint", "status"), ("endpoint", "hashkv", "--cluster"), ("lease", "grant", "600"),
                 ("snapshot", "save", "{tmp}/snap.db")):
        assert not by_args[args].raw_same, args
    # and what the normaliser keeps is really there
    assert "etcdserver: mvcc: required revision has been compacted" in by_args[
        ("get", "/app/a", "--rev=2")].normalised[0]
    assert '"revision": 7' in by_args[("get", "/app/a", "-w", "json")].normalised[0]
    assert "(normalised: 1 row(s) report IS LEADER true)" in by_args[("endpoint", "status")].normalised[0]
    assert by_args[("endpoint", "hashkv", "--cluster")].normalised[0].count("<hash:1>") == 3

    table = render_markdown(row for r in reports for row in rows_from(r))
    assert table.count("\n") == 2 + len(steps)
    assert "| `get` | `--prefix --limit=2` | works |" in table


def test_the_normaliser_shows_a_write_only_one_cluster_saw(etcd_clusters, tmp_path):
    a, b = _targets(etcd_clusters, tmp_path)
    same = Case("before", (Step(("put", "/k", "1")), Step(("get", "/k", "-w", "json"))))
    assert compare(same, a, b).all_same
    assert etcdctl(a.endpoints, "put", "/extra", "x").code == 0
    after = compare(Case("after", (
        Step(("get", "", "--prefix", "--keys-only")),
        Step(("get", "/k", "-w", "json")),
        Step(("put", "/k", "2", "--prev-kv", "-w", "fields")),
        Step(("get", "/k")),
        Step(("endpoint", "hashkv", "--cluster")),
    )), a, b)
    # the extra key and every header's revision differ; the value of /k
    # does not, nor do the hashes (equal inside each cluster)
    assert [s.same for s in after.steps] == [False, False, False, True, True], after.render()
    assert "-/extra" in after.steps[0].diff()
    assert '"revision": 3' in after.steps[1].normalised[0] and '"revision": 2' in after.steps[1].normalised[1]


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("PAXOSKV_LONG") != "1", reason="two minutes of check perf: PAXOSKV_LONG=1")
def test_check_perf_passes_on_both_and_agrees_after_normalisation(etcd_clusters, tmp_path):
    a, b = _targets(etcd_clusters, tmp_path)
    report = compare(etcdctl_cases.CHECK_PERF, a, b)
    assert report.all_same, report.render()
    perf = report.steps[0]
    assert perf.runs[0].code == 0 and perf.normalised[0].split("--- stdout\n")[1].startswith(
        "PASS: Throughput is <n> writes/s\nPASS: Slowest request took <seconds>\n"), perf.normalised[0]
