"""A short smoke of the watch and keep-alive loads (``paxoskv.bench.etcdstreams``,
``bench/compare`` jobs watch1, watch1000, keepalive) against a real local
3-node paxoskv cluster, through the etcd API its port serves.

No figure of speed is asserted (it depends on the machine); what is
asserted is that the figures were measured: events were received and
timed, every acknowledged put reached every watcher exactly once, the
keep-alives were answered with a live TTL, and CPU was counted.
"""

from __future__ import annotations

import argparse
import math

import pytest

import clusters  # bench/clusters.py (setup.cfg puts bench/ on sys.path)
import compare  # bench/compare.py
from paxoskv.bench.etcdstreams import WatchConfig, run_watch


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = clusters.start_paxoskv(tmp_path_factory.mktemp("streams") / "cluster")
    try:
        c.wait_ready(timeout_s=60.0)
        yield c
    finally:
        c.stop()
    assert all(p.poll() is not None for p in c.procs)


def _phases(cluster) -> dict:
    return dict(endpoints=tuple(cluster.endpoints), processes=2, warmup_s=0.5, duration_s=2.0, timeout_s=10.0,
                server_pids=tuple(cluster.live_pids()))


def test_every_watcher_gets_every_put_once_and_each_event_is_timed(cluster):
    cfg = WatchConfig(**_phases(cluster), streams=4, watchers_per_stream=5, put_rate_s=20.0)
    r = run_watch(cfg)
    assert r.errors == {}, r.error_samples
    # 20 puts/s for 2.5 s, less what had not been answered: some, and each reached all 20 watchers once
    assert r.puts_answered > 10
    assert r.missing == 0
    assert r.events_total == r.puts_answered * cfg.watchers
    # the window's events were timed, from the send instant in each put's value
    assert r.events.count >= cfg.watchers * 10, r.events.count
    assert 0 < r.events.min <= r.events.quantile(0.5) <= r.events.quantile(0.99) <= r.events.max < 10 * 10**9
    assert r.puts.count > 10 and r.puts.min > 0
    assert r.server_cpu_s is not None and r.server_cpu_s > 0 and r.client_cpu_s > 0


def test_the_compare_jobs_give_their_rows_and_keepalives_a_live_ttl(cluster):
    args = argparse.Namespace(
        processes=1, warmup_s=0.3, duration_s=1.5, timeout_s=10.0, value_bytes=100, watch_put_rate=20.0, watch_duration_s=1.5,
        leases=20, keepalive_streams=2, keepalive_depth=2, systems=["paxoskv"],
    )
    jobs = {j.key: j for j in compare.JOBS}
    results = {}
    for key in ("watch0", "watch1", "keepalive"):
        fig = compare.run_job(jobs[key], "paxoskv", cluster, args, {}, 0)
        results[key] = {"paxoskv": [fig]}
    watch = results["watch1"]["paxoskv"][0]
    assert watch["watchers"] == 1 and watch["missing"] == 0 and watch["errors"] == 0
    assert watch["events"] > 0 and not math.isnan(watch["p99_ms"]) and watch["p99_ms"] > 0
    assert watch["events_total"] == watch["puts_answered"]
    assert watch["server_us_per_op"] == pytest.approx(watch["server_cpu_s"] / watch["events"] * 1e6)
    alone = results["watch0"]["paxoskv"][0]  # the writer without watchers: the baseline of its put p99
    assert alone["watchers"] == 0 and alone["events_total"] == 0 and alone["missing"] == 0 and alone["errors"] == 0
    assert alone["puts_answered"] > 0 and alone["put_p99_ms"] > 0 and math.isnan(alone["p50_ms"])
    ka = results["keepalive"]["paxoskv"][0]
    # an answer with TTL 0 (lease unknown or expired) would be an error; every lease was kept alive
    assert ka["errors"] == 0, ka["error_samples"]
    assert ka["ops"] > args.leases and 0 < ka["p50_ms"] <= ka["p99_ms"] <= ka["max_ms"]
    assert ka["server_us_per_op"] == pytest.approx(ka["server_cpu_s"] / ka["ops"] * 1e6)
    text = compare.table(results, args)
    for label in ("event p50 ms", "event p99 ms", "events missing", "put p99 ms", "server us/event", "keep-alives/s"):
        assert label in text, text
