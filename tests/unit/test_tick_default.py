"""The core's tick follows the heartbeat unless --tick-ms is given (an idle
node's CPU is its tick rate: docs/benchmarks.md)."""

from __future__ import annotations

import pytest

from paxoskv.server.config import ConfigError, build_serve_options, default_tick_ms


def _node(**kw: object):  # noqa: ANN202
    return build_serve_options(
        node_id=1, cluster_id="c", listen="127.0.0.1", port=5000, bus_port=None, peers="",
        data_dir=None, insecure_peer_bus=True, **kw,
    ).node


def test_the_tick_is_half_the_heartbeat_unless_given() -> None:
    node = _node(heartbeat_ms=100, election_ms=1000)
    assert node.tick_ms == 50
    cfg = node.core_config()
    assert (cfg.heartbeat_ticks, cfg.election_ticks_min) == (2, 20)
    assert _node(heartbeat_ms=20, election_ms=200).tick_ms == 10
    assert _node(heartbeat_ms=100, election_ms=1000, tick_ms=10).tick_ms == 10
    assert default_tick_ms(1) == 1 and default_tick_ms(3) == 1


def test_a_given_tick_longer_than_the_heartbeat_is_refused() -> None:
    with pytest.raises(ConfigError, match="--heartbeat-ms 100 must be >= the tick of 200 ms"):
        _node(heartbeat_ms=100, election_ms=1000, tick_ms=200)
