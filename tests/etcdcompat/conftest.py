"""Fixtures of the etcd compatibility tests: real etcd 3.4 clusters.

``etcd_clusters(n)`` starts ``n`` independent 3-member etcd clusters at once
(``bench/clusters.py start_etcd``: 127.0.0.1, free ports, data under
the test's tmp dir), waits until each answers, and stops them by PID when
the test ends. The tests are skipped when etcd or etcdctl is missing
(``bin/setup`` installs Debian's etcd-server and etcd-client).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from etcdctl_compat import etcdctl_binary
import clusters

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
