"""The public port's flags checked together (``server.public``), the node
layer's call limits (``replica.node.CallLimits``) and the open-files cap of
``--max-connections``."""

from __future__ import annotations

import pytest

from paxoskv.replica.node import CallLimits
from paxoskv.server import public
from paxoskv.server.public import FD_RESERVE, build_public_options, connections_cap
from paxoskv.wire import MESSAGE_BYTES_MAX, ConfigError


def test_defaults_and_their_derived_bounds() -> None:
    opts = build_public_options()
    assert opts.tls is None and opts.admin_cns == () and opts.describe() == "plaintext"
    assert opts.call_limits == CallLimits(batch_ops_max=10_000, request_bytes_max=1536 << 10)
    assert opts.limits.receive_bytes_max == (1536 << 10) + (512 << 10) < MESSAGE_BYTES_MAX
    assert opts.limits.stream_requests_max <= opts.call_limits.batch_ops_max


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        ({"max_request_bytes": 1000}, "--max-request-bytes 1000"),
        ({"max_request_bytes": MESSAGE_BYTES_MAX + 1}, "--max-request-bytes"),
        ({"max_stream_bytes": 4096}, "--max-stream-bytes"),
        ({"max_stream_requests": 20_000}, "must not exceed --max-batch-ops"),
        ({"max_pending_mb": 7}, "--max-pending-mb 7"),
        ({"max_connections": 0}, "--max-connections"),
        ({"max_batch_ops": 0}, "--max-batch-ops"),
        ({"admin_cn": ["admin"]}, "--admin-cn needs"),
        ({"client_cert_auth": True}, "needs TLS"),
    ],
)
def test_flags_that_do_not_go_together_are_refused(flags: dict, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        build_public_options(**flags)


def test_call_limits_name_the_flag_and_pass_the_limit_itself() -> None:
    limits = CallLimits(batch_ops_max=3, request_bytes_max=100)
    assert limits.too_many_ops(3) is None and limits.too_large(100) is None
    assert "--max-batch-ops" in str(limits.too_many_ops(4))
    err = limits.too_large(101)
    assert err is not None and str(err).startswith("request is too large: 101 bytes") and "--max-request-bytes" in str(err)


def test_max_connections_is_lowered_to_fit_the_open_files_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(public.resource, "getrlimit", lambda _r: (2048, 2048))
    monkeypatch.setattr(public.resource, "setrlimit", lambda *_a: pytest.fail("already at the hard limit"))
    cap, warning = connections_cap(4096)
    assert cap == 2048 - FD_RESERVE and warning is not None and "LimitNOFILE" in warning
    assert connections_cap(100) == (100, None)
    raised: list[tuple[int, int]] = []
    monkeypatch.setattr(public.resource, "getrlimit", lambda _r: (1024, 65536))
    monkeypatch.setattr(public.resource, "setrlimit", lambda _r, v: raised.append(v))
    assert connections_cap(4096) == (4096, None)  # after raising the soft limit to the hard one
    assert raised == [(65536, 65536)]
