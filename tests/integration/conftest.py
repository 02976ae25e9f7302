"""Fixtures of the integration tests: real 3-node clusters on 127.0.0.1.

``cluster``: a fresh cluster per test (tests that kill nodes use it);
``insecure_cluster``: the same with ``--insecure-peer-bus``.
``shared_cluster``: one cluster per module, for tests that leave it healthy.
When a test fails, the nodes' log tails are printed in its report.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from integration_cluster import LocalCluster


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    rep = yield
    if rep.when == "call" and rep.failed:
        item.stash[_FAILED] = True
    return rep


_FAILED = pytest.StashKey[bool]()


def _finish(request: pytest.FixtureRequest, c: LocalCluster) -> None:
    try:
        c.close()
    finally:
        if request.node.stash.get(_FAILED, False):
            print(c.logs())


def _fresh(request: pytest.FixtureRequest, tmp_path, **kw: object) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path / "cluster", **kw)
    try:
        c.start_all()
        yield c
    finally:
        _finish(request, c)


@pytest.fixture
def cluster(request: pytest.FixtureRequest, tmp_path) -> Iterator[LocalCluster]:
    yield from _fresh(request, tmp_path)


@pytest.fixture
def insecure_cluster(request: pytest.FixtureRequest, tmp_path) -> Iterator[LocalCluster]:
    yield from _fresh(request, tmp_path, curve=False)


@pytest.fixture(scope="module")
def shared_cluster(request: pytest.FixtureRequest, tmp_path_factory) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path_factory.mktemp("shared"))
    try:
        c.start_all()
        yield c
    finally:
        c.close()
