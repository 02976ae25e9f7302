"""``paxoskv.wire``: method paths from the proto, the leader hint both ways,
status codes, size limits and endpoint syntax."""

from __future__ import annotations

import pathlib

import grpc
import pytest

from paxoskv import wire
from paxoskv.kv.commands import Limits
from paxoskv.v1 import kv_pb2

GENERATED = pathlib.Path(wire.__file__).parent / "v1" / "kv_pb2_grpc.py"


def test_every_method_path_is_the_one_the_generated_stubs_call():
    generated = GENERATED.read_text()
    paths = [
        wire.method_path(service.name, method.name)
        for service in kv_pb2.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    ]
    assert "/paxoskv.v1.KV/PackedBatch" in paths and "/paxoskv.v1.Maintenance/Snapshot" in paths
    for path in paths:
        assert f"'{path}'" in generated, path
    assert (wire.KV_SERVICE, wire.MAINTENANCE_SERVICE) == ("paxoskv.v1.KV", "paxoskv.v1.Maintenance")
    with pytest.raises(KeyError):
        wire.method_path("KV", "Watch")


def test_the_leader_hint_round_trips_and_unusable_parts_are_none():
    assert wire.parse_leader_hint(wire.leader_hint(2, "10.0.0.2:50051")) == (2, "10.0.0.2:50051")
    assert wire.parse_leader_hint([("other", "x"), (wire.LEADER_METADATA_KEY, b"3=[fd00::3]:7")]) == (3, "[fd00::3]:7")
    assert wire.parse_leader_hint(None) is None
    assert wire.parse_leader_hint([("other", "1=h:1")]) is None
    for value, want in (
        ("2=0.0.0.0:50051", (2, None)),  # the leader listens on every address: no use to a client
        ("2=[::]:50051", (2, None)),
        ("2=hostonly", (2, None)),
        ("2=", (2, None)),
        ("x=h:1", (None, "h:1")),
    ):
        assert wire.parse_leader_hint([(wire.LEADER_METADATA_KEY, value)]) == want, value


def test_status_codes_and_limits():
    assert wire.status_code(wire.STALE.value[0]) is grpc.StatusCode.FAILED_PRECONDITION
    assert wire.status_code(999) is grpc.StatusCode.UNKNOWN
    assert wire.RETRYABLE == {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
    assert wire.is_too_large(grpc.StatusCode.RESOURCE_EXHAUSTED, "Received message larger than max (9 vs. 8)")
    assert not wire.is_too_large(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many streams")
    limits = Limits()
    # A request at every limit of the node still fits: the node refuses what is over them, not gRPC.
    assert limits.key_bytes_max + limits.value_bytes_max + limits.client_id_bytes_max + 64 < wire.MESSAGE_BYTES_MAX


def test_endpoints_as_people_type_them():
    assert wire.parse_endpoints("localhost,h:1,[::1]:2,h:1") == ["localhost:50051", "h:1", "[::1]:2"]
    assert wire.parse_endpoints(" h:1 , h:1 ", unique=False) == ["h:1", "h:1"]
    assert wire.parse_endpoint("[fd00::2]:9") == "[fd00::2]:9"
    assert wire.format_hostport("::1", 5) == "[::1]:5" and wire.format_hostport("h", 5) == "h:5"
    with pytest.raises(wire.ConfigError, match="expected HOST:PORT"):
        wire.parse_endpoints("localhost", default_port=None)
    for bad in ("", ",", "h:x", "[::1:5", "h:0", "h:1:2", ":1"):
        with pytest.raises(wire.ConfigError):
            wire.parse_endpoints(bad)


def test_unreachable_reason_tells_a_call_that_reached_no_server() -> None:
    import grpc

    from paxoskv.wire import unreachable_reason

    refused = "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: Failed to connect to remote host: Connection refused"
    assert unreachable_reason(grpc.StatusCode.UNAVAILABLE, refused) == "connection refused"
    resolving = "errors resolving nohost.invalid:50051: [field:hostname lookup error:address lookup failed]"
    assert unreachable_reason(grpc.StatusCode.UNAVAILABLE, resolving) == "host name not found"
    # What gRPC says when a TLS node refused the connection (as seen in
    # tests/integration/test_tls.py), and when a TLS client met a node whose
    # certificate it does not trust or that speaks plaintext.
    closed = "failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:27051: Socket closed"
    assert unreachable_reason(grpc.StatusCode.UNAVAILABLE, closed) == wire.TLS_CLOSED
    tls = ("failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:27051: Tls handshake failed "
           "(TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:1000007d:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED")  # fmt: skip
    assert unreachable_reason(grpc.StatusCode.UNAVAILABLE, tls) == wire.TLS_FAILED
    # A node's own UNAVAILABLE, and other codes, reached a server.
    assert unreachable_reason(grpc.StatusCode.UNAVAILABLE, "no leader is known") is None
    assert unreachable_reason(grpc.StatusCode.DEADLINE_EXCEEDED, refused) is None
    assert unreachable_reason(grpc.StatusCode.UNAVAILABLE, None) is None
