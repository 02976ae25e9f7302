"""Fixtures of the etcd compatibility tests: real etcd 3.4 clusters, and
paxoskv clusters to compare with them.

``etcd_clusters(n)`` starts ``n`` independent 3-member etcd clusters at once
(``bench/clusters.py start_etcd``: 127.0.0.1, free ports, data under
the test's tmp dir), waits until each answers, and stops them by PID when
the test ends. ``paxoskv_clusters(...)`` starts 3-node paxoskv clusters
(``tests/integration/integration_cluster.LocalCluster``: ``paxoskv serve``
processes on 127.0.0.1 and free ports) the same way. The tests are skipped
when etcd or etcdctl is missing (``bin/setup`` installs Debian's
etcd-server and etcd-client).
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Iterator

import pytest

from etcdctl_compat import etcdctl_binary
import clusters
from integration_cluster import LocalCluster

CLUSTER_READY_S = 60.0


@pytest.fixture(scope="session")
def etcd_installed() -> None:
    missing = [name for name, path in (("etcd", clusters.etcd_binary()), ("etcdctl", etcdctl_binary())) if not path]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed: bin/setup installs etcd-server and etcd-client")


def _start(base, n: int) -> list[clusters.Cluster]:
    started: list[clusters.Cluster] = []
    try:
        for i in range(n):
            started.append(clusters.start_etcd(base / f"etcd{i}"))
        for c in started:
            c.wait_ready(timeout_s=CLUSTER_READY_S)
    except BaseException:
        for c in started:
            c.stop()
        raise
    return started


def _stop_all(started: list[clusters.Cluster]) -> None:
    for c in started:
        c.stop()
    assert all(p.poll() is not None for c in started for p in c.procs)


@pytest.fixture
def etcd_clusters(etcd_installed, tmp_path) -> Iterator[Callable[[int], list[clusters.Cluster]]]:
    started: list[clusters.Cluster] = []

    def start(n: int) -> list[clusters.Cluster]:
        new = _start(tmp_path / f"set{len(started)}", n)
        started.extend(new)
        return new

    try:
        yield start
    finally:
        _stop_all(started)


@pytest.fixture(scope="module")
def etcd_cluster(etcd_installed, tmp_path_factory) -> Iterator[clusters.Cluster]:
    """One cluster shared by a module's tests."""
    started = _start(tmp_path_factory.mktemp("etcd"), 1)
    try:
        yield started[0]
    finally:
        _stop_all(started)


@pytest.fixture
def paxoskv_clusters(etcd_installed, tmp_path) -> Iterator[Callable[..., LocalCluster]]:
    """``start(name, extra_args=(), root=None)``: a started 3-node paxoskv
    cluster (with a leader), timed as etcd's defaults are (heartbeat 100 ms,
    election 1 s: etcdctl's writes are not retried, so a leader change in a
    busy test machine would fail a step); every one is stopped by PID at the
    end."""
    started: list[LocalCluster] = []

    def start(name: str, extra_args: tuple[str, ...] = (), root: pathlib.Path | None = None) -> LocalCluster:
        c = LocalCluster(
            root or tmp_path / name, cluster_id=name, heartbeat_ms=100, election_ms=1000, extra_args=extra_args
        )
        started.append(c)
        c.start_all()
        return c

    try:
        yield start
    finally:
        for c in started:
            c.close()
        assert all(not n.running for c in started for n in c.nodes.values())
