"""Server reflection v1 (``proto/paxoskv/reflection/v1``) is v1alpha under
another package: the same messages, fields, numbers, types and method, so
grpcio-reflection's v1alpha servicer answers it byte for byte."""

from __future__ import annotations

from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2 as v1alpha

from paxoskv.reflection.v1 import reflection_pb2 as v1


def _file(module) -> descriptor_pb2.FileDescriptorProto:
    fdp = descriptor_pb2.FileDescriptorProto()
    module.DESCRIPTOR.CopyToProto(fdp)
    return fdp


def _shape(fdp: descriptor_pb2.FileDescriptorProto) -> tuple[bytes, ...]:
    """The declarations, with the package written out of every type reference."""
    pkg = f".{fdp.package}."
    out = []
    for part in (*fdp.message_type, *fdp.service):
        part = type(part).FromString(part.SerializeToString())
        for msg in [part] if isinstance(part, descriptor_pb2.DescriptorProto) else []:
            for field in msg.field:
                field.type_name = field.type_name.replace(pkg, ".PKG.")
        for method in getattr(part, "method", ()):
            method.input_type = method.input_type.replace(pkg, ".PKG.")
            method.output_type = method.output_type.replace(pkg, ".PKG.")
        out.append(part.SerializeToString(deterministic=True))
    return tuple(out)


def test_v1_is_v1alpha_in_another_package() -> None:
    new, old = _file(v1), _file(v1alpha)
    assert (new.package, old.package) == ("grpc.reflection.v1", "grpc.reflection.v1alpha")
    assert [m.name for m in new.message_type] == [m.name for m in old.message_type]
    assert _shape(new) == _shape(old)


def test_a_v1alpha_message_parses_as_v1_unchanged() -> None:
    req = v1alpha.ServerReflectionRequest(host="h", file_containing_symbol="paxoskv.v1.KV")
    as_v1 = v1.ServerReflectionRequest.FromString(req.SerializeToString())
    assert (as_v1.host, as_v1.file_containing_symbol) == ("h", "paxoskv.v1.KV")
    resp = v1alpha.ServerReflectionResponse(
        list_services_response=v1alpha.ListServiceResponse(service=[v1alpha.ServiceResponse(name="x")])
    )
    assert v1.ServerReflectionResponse.FromString(resp.SerializeToString()).list_services_response.service[0].name == "x"
