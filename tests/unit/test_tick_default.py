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


def test_the_watch_progress_interval_is_etcds_flag_and_bad_values_are_refused_clearly() -> None:
    assert _node(heartbeat_ms=100, election_ms=1000).watch_progress_interval_ms == 600_000  # etcd: 10 minutes
    for text, ms in (("5s", 5_000), ("1m30s", 90_000), ("250ms", 250), ("2", 2_000), ("0", 600_000)):
        node = _node(heartbeat_ms=100, election_ms=1000, watch_progress_notify_interval=text)
        assert node.watch_progress_interval_ms == ms, text
    flag = "--experimental-watch-progress-notify-interval"
    for text, words in (("soon", f"{flag}: duration 'soon'"), ("-1", f"{flag} must be >= 0, not '-1'"),
                        ("-1s", f"{flag}: duration '-1s': expected e.g. 1h, 30m, 10s, 1h30m, 500ms (or a number of seconds)"),
                        ("10ms", f"{flag} '10ms' is shorter than the tick of 50 ms"), ("", f"{flag}: duration is empty")):
        with pytest.raises(ConfigError) as err:
            _node(heartbeat_ms=100, election_ms=1000, watch_progress_notify_interval=text)
        assert str(err.value).startswith(words), (text, str(err.value))
