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

import grpc
from google.protobuf import descriptor_pb2

from integration_cluster import LocalCluster, run_cli
from paxoskv.reflection.v1 import reflection_pb2, reflection_pb2_grpc

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
        "grpc.reflection.v1.ServerReflection",
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


def test_reflection_v1_lists_and_describes_the_services(shared_cluster: LocalCluster) -> None:
    with grpc.insecure_channel(shared_cluster.endpoint(1)) as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        listed, described, missing = stub.ServerReflectionInfo(
            iter(
                [
                    reflection_pb2.ServerReflectionRequest(list_services=""),
                    reflection_pb2.ServerReflectionRequest(file_containing_symbol="paxoskv.v1.KV"),
                    reflection_pb2.ServerReflectionRequest(file_containing_symbol="no.such.Thing"),
                ]
            ),
            timeout=10,
        )
    names = {s.name for s in listed.list_services_response.service}
    assert {"paxoskv.v1.KV", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"} <= names
    files = [descriptor_pb2.FileDescriptorProto.FromString(b) for b in described.file_descriptor_response.file_descriptor_proto]
    kv = next(f for f in files if f.package == "paxoskv.v1" and any(s.name == "KV" for s in f.service))
    assert {m.name for m in next(s for s in kv.service if s.name == "KV").method} >= {"Get", "Put", "Delete", "Batch"}
    assert missing.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


def test_paxoskv_grpc_calls_unary_and_streaming_methods_from_json(shared_cluster: LocalCluster) -> None:
    ep = shared_cluster.endpoint(3)

    def grpc_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(sys.executable), "-m", "paxoskv.cli", "grpc", "--endpoints", ep, *args],
            input=stdin, capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    p = grpc_cli("-d", json.dumps({"key": _b64("via-grpc"), "value": _b64("v1")}), "paxoskv.v1.KV/Put")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["header"]["node_id"] == 3
    # Two requests on one bidirectional stream, the JSON from stdin, camelCase accepted.
    stream = json.dumps({"id": "1", "op": {"get": {"key": _b64("via-grpc")}}}) + "\n" + json.dumps(
        {"id": "2", "op": {"get": {"key": _b64("via-grpc"), "serializable": True}}}
    )
    p = grpc_cli("-d", "@", "paxoskv.v1.KV.Session", stdin=stream)
    assert p.returncode == 0, p.stderr
    decoder, answers, i = json.JSONDecoder(), [], 0
    while i < len(p.stdout.strip()):
        obj, i = decoder.raw_decode(p.stdout, i)
        answers.append(obj)
        while i < len(p.stdout) and p.stdout[i].isspace():
            i += 1
    assert sorted(a["id"] for a in answers) == ["1", "2"]
    assert all(a["result"]["get"]["value"] == _b64("v1") for a in answers)

    p = grpc_cli("list")
    assert p.returncode == 0 and "paxoskv.v1.Maintenance" in p.stdout.splitlines()
    for args, code, text in (
        (("-d", '{"key": ""}', "paxoskv.v1.KV/Get"), 2, "INVALID_ARGUMENT: "),
        (("-d", "{not json", "paxoskv.v1.KV/Get"), 2, "-d is not JSON"),
        (("-d", '{"nofield": 1}', "paxoskv.v1.KV/Get"), 2, "is not a paxoskv.v1.GetRequest"),
        (("paxoskv.v1.KV/Frobnicate",), 2, "no method paxoskv.v1.KV/Frobnicate"),
    ):
        p = grpc_cli(*args)
        assert p.returncode == code, (args, p.stderr)
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("paxoskv grpc: error: ") and text in lines[0], (args, p.stderr)
    assert run_cli("get", "--endpoints", ep, "via-grpc").stdout == "v1\n"
