"""A generic gRPC client (like grpcurl) that knows nothing of paxoskv learns
the API through server reflection alone, then calls Put, Get, Status and
the standard health check with dynamic messages built from JSON.

The client runs in a separate Python process that imports grpc, protobuf and
grpc_reflection only; it asserts no paxoskv module was ever loaded.
"""

from __future__ import annotations

import json
import subprocess
import sys

from integration_cluster import LocalCluster

GENERIC_CLIENT = r"""
import json, sys
import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

endpoint, calls = sys.argv[1], json.loads(sys.argv[2])
out = {}
with grpc.insecure_channel(endpoint) as channel:
    db = ProtoReflectionDescriptorDatabase(channel)
    out["services"] = sorted(db.get_services())
    pool = descriptor_pool.DescriptorPool(db)
    results = []
    for full_method, body in calls:
        service_name, method_name = full_method.rsplit("/", 1)
        method = pool.FindServiceByName(service_name).FindMethodByName(method_name)
        request_cls = message_factory.GetMessageClass(method.input_type)
        response_cls = message_factory.GetMessageClass(method.output_type)
        call = channel.unary_unary(
            f"/{service_name}/{method_name}",
            request_serializer=request_cls.SerializeToString,
            response_deserializer=response_cls.FromString,
        )
        try:
            response = call(json_format.Parse(json.dumps(body), request_cls()), timeout=10)
            results.append({"ok": json_format.MessageToDict(response)})
        except grpc.RpcError as err:
            results.append({"code": err.code().name, "details": err.details()})
    out["results"] = results
assert not [m for m in sys.modules if m.startswith("paxoskv")], "a paxoskv module was imported"
print(json.dumps(out))
"""


def _b64(text: str) -> str:
    import base64

    return base64.b64encode(text.encode()).decode()


def test_reflection_only_client_can_put_get_and_check_health(shared_cluster: LocalCluster) -> None:
    c = shared_cluster
    calls = [
        ("paxoskv.v1.KV/Put", {"key": _b64("reflected"), "value": _b64("works")}),
        ("paxoskv.v1.KV/Get", {"key": _b64("reflected")}),
        ("paxoskv.v1.KV/Get", {"key": _b64("no-such-key")}),
        ("paxoskv.v1.KV/Put", {"key": "", "value": _b64("x")}),
        ("paxoskv.v1.Maintenance/Status", {}),
        ("grpc.health.v1.Health/Check", {"service": ""}),
        ("grpc.health.v1.Health/Check", {"service": "paxoskv.v1.KV"}),
    ]
    p = subprocess.run(
        [sys.executable, "-c", GENERIC_CLIENT, c.endpoint(2), json.dumps(calls)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert {
        "paxoskv.v1.KV",
        "paxoskv.v1.Maintenance",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= set(out["services"])
    put, get, missing, empty, status, health, health_kv = out["results"]
    assert int(put["ok"]["header"]["index"]) > 0
    assert get["ok"]["found"] is True and get["ok"]["value"] == _b64("works")
    assert "found" not in missing["ok"]  # proto3 JSON leaves false out
    assert empty["code"] == "INVALID_ARGUMENT"
    assert status["ok"]["nodeId"] == 2 and status["ok"]["clusterId"] == c.cluster_id
    assert health["ok"]["status"] == "SERVING"
    assert health_kv["ok"]["status"] == "SERVING"
    with c.client() as client:
        assert client.get("reflected") == b"works"
