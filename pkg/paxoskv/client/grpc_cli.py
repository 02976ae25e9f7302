"""``paxoskv grpc``: call any method of a node from JSON, as grpcurl does.

Rules:

- It knows no paxoskv message: it learns the services and their messages
  from the node's server reflection (v1, or v1alpha where a server has only
  that), so it works with any gRPC server that serves reflection.
- ``paxoskv grpc list`` prints the services, one per line, sorted.
  ``paxoskv grpc SERVICE/METHOD`` (or ``SERVICE.METHOD``) sends ``-d JSON``
  (default ``{}``; ``-d @`` reads it from stdin), several objects in a row for
  a client stream, and prints each response as grpcurl prints it: JSON with
  the proto field names, indented by two, int64 as strings, bytes as base64,
  fields at their default value left out. The request JSON is protobuf's
  JSON mapping (proto field names or lowerCamelCase).
- It talks to the first of ``--endpoints``; ``--timeout`` is the deadline of
  the whole call, reflection included. ``--cacert --cert --key`` speak TLS,
  as the other client commands (grpcurl's ``-cacert -cert -key``).
- Errors are one line on stderr, ``CODE: details`` for an error status, with
  the exit codes of the other client commands: 2 a request the server or
  this command refused as invalid (bad JSON, unknown method,
  INVALID_ARGUMENT, FAILED_PRECONDITION, OUT_OF_RANGE), 3 UNAVAILABLE or
  DEADLINE_EXCEEDED, 4 any other status.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from typing import NoReturn

import click
import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.descriptor_database import DescriptorDatabase
from grpc_reflection.v1alpha import reflection_pb2 as v1alpha_pb2
from grpc_reflection.v1alpha import reflection_pb2_grpc as v1alpha_grpc

from paxoskv.cli_options import option, tls_options
from paxoskv.reflection.v1 import reflection_pb2 as v1_pb2
from paxoskv.reflection.v1 import reflection_pb2_grpc as v1_grpc
from paxoskv.tls import channel as channel_to
from paxoskv.tls import client_tls
from paxoskv.wire import ConfigError, parse_endpoints

__all__ = ["ReflectionDatabase", "format_message", "grpc_cmd", "parse_messages"]

EXIT_INVALID = 2
EXIT_UNAVAILABLE = 3
EXIT_OTHER = 4
_INVALID_CODES = frozenset(
    {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.OUT_OF_RANGE}
)
_UNAVAILABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


class ReflectionDatabase(DescriptorDatabase):
    """The descriptors a server's reflection service gives, fetched on demand:
    v1 first, v1alpha if the server does not have v1 (the messages are the
    same on the wire)."""

    def __init__(self, channel: grpc.Channel, deadline: float) -> None:
        super().__init__()
        self._deadline = deadline
        self._versions = [(v1_grpc.ServerReflectionStub(channel), v1_pb2), (v1alpha_grpc.ServerReflectionStub(channel), v1alpha_pb2)]
        self._added: set[str] = set()

    def _ask(self, **request: str):  # noqa: ANN202 - a ServerReflectionResponse of either version
        while True:
            stub, pb = self._versions[0]
            try:
                (resp,) = stub.ServerReflectionInfo(
                    iter([pb.ServerReflectionRequest(**request)]), timeout=max(0.001, self._deadline - time.monotonic())
                )
            except grpc.RpcError as err:
                if err.code() == grpc.StatusCode.UNIMPLEMENTED and len(self._versions) > 1:
                    self._versions.pop(0)  # an older server: v1alpha only
                    continue
                raise
            if resp.HasField("error_response"):
                raise KeyError(resp.error_response.error_message)
            return resp

    def services(self) -> list[str]:
        return sorted(s.name for s in self._ask(list_services="").list_services_response.service)

    def _add_files(self, resp) -> None:  # noqa: ANN001
        for raw in resp.file_descriptor_response.file_descriptor_proto:
            fdp = descriptor_pb2.FileDescriptorProto.FromString(raw)
            if fdp.name not in self._added:
                self._added.add(fdp.name)
                self.Add(fdp)

    def FindFileByName(self, name: str) -> descriptor_pb2.FileDescriptorProto:  # noqa: N802 - the base's name
        try:
            return super().FindFileByName(name)
        except KeyError:
            self._add_files(self._ask(file_by_filename=name))
            return super().FindFileByName(name)

    def FindFileContainingSymbol(self, symbol: str) -> descriptor_pb2.FileDescriptorProto:  # noqa: N802
        try:
            return super().FindFileContainingSymbol(symbol)
        except KeyError:
            self._add_files(self._ask(file_containing_symbol=symbol))
            return super().FindFileContainingSymbol(symbol)


def parse_messages(text: str) -> list[dict]:
    """The JSON objects of ``text``, one after another (whitespace between)."""
    decoder = json.JSONDecoder()
    out: list[dict] = []
    i = 0
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i == len(text):
            return out
        obj, i = decoder.raw_decode(text, i)
        if not isinstance(obj, dict):
            raise ValueError(f"expected a JSON object, not {type(obj).__name__}")
        out.append(obj)


def format_message(message) -> str:  # noqa: ANN001 - any protobuf message
    """A response as grpcurl prints it."""
    return json_format.MessageToJson(message, preserving_proto_field_name=True, indent=2)


def _exit(message: str, code: int) -> NoReturn:
    one_line = " ".join(part.strip() for part in message.splitlines() if part.strip())
    click.echo(f"paxoskv grpc: error: {one_line}", err=True)
    sys.exit(code)


def _rpc_exit(err: grpc.RpcError) -> NoReturn:
    code = err.code()
    rc = EXIT_INVALID if code in _INVALID_CODES else EXIT_UNAVAILABLE if code in _UNAVAILABLE_CODES else EXIT_OTHER
    _exit(f"{code.name}: {err.details()}", rc)


def _call(channel: grpc.Channel, pool: descriptor_pool.DescriptorPool, method_name: str, requests: list[dict], deadline: float) -> Iterator[str]:
    service_name, sep, name = method_name.replace("/", ".").rpartition(".")
    if not sep or not service_name:
        raise ValueError(f"{method_name!r}: expected SERVICE/METHOD, e.g. paxoskv.v1.KV/Get")
    try:
        method = pool.FindServiceByName(service_name).FindMethodByName(name)
    except KeyError:
        raise ValueError(f"the server has no method {service_name}/{name} (paxoskv grpc list shows its services)") from None
    request_cls = message_factory.GetMessageClass(method.input_type)
    response_cls = message_factory.GetMessageClass(method.output_type)
    try:
        messages = [json_format.ParseDict(r, request_cls()) for r in requests or [{}]]
    except json_format.ParseError as exc:
        raise ValueError(f"the request is not a {method.input_type.full_name}: {exc}") from None
    if not method.client_streaming and len(messages) != 1:
        raise ValueError(f"{service_name}/{name} takes one request, not {len(messages)}")
    path = f"/{service_name}/{name}"
    kinds = {
        (False, False): channel.unary_unary,
        (False, True): channel.unary_stream,
        (True, False): channel.stream_unary,
        (True, True): channel.stream_stream,
    }
    call = kinds[(method.client_streaming, method.server_streaming)](
        path, request_serializer=request_cls.SerializeToString, response_deserializer=response_cls.FromString
    )
    timeout = max(0.001, deadline - time.monotonic())
    arg = iter(messages) if method.client_streaming else messages[0]
    if method.server_streaming:
        for resp in call(arg, timeout=timeout):
            yield format_message(resp)
    else:
        yield format_message(call(arg, timeout=timeout))


@click.command("grpc")
@click.argument("method")
@click.option(
    "-d",
    "--data",
    default=None,
    metavar="JSON",
    help="The request as JSON (as grpcurl's -d); several objects for a client stream; @ reads stdin. Default {}.",
)
@option("--endpoints", help="HOST:PORT of the node to call (the first one, if several).")
@option("--timeout")
@tls_options
def grpc_cmd(
    method: str,
    data: str | None,
    endpoints: str,
    timeout_s: float,
    tls_cacert: str | None,
    tls_cert: str | None,
    tls_key: str | None,
) -> None:
    """Call METHOD (SERVICE/METHOD) with a JSON request, or `list` the services,
    through the node's server reflection; print each response as JSON."""
    try:
        endpoint = parse_endpoints(endpoints)[0]
        tls = client_tls(tls_cacert, tls_cert, tls_key)
    except ConfigError as exc:
        _exit(str(exc), EXIT_INVALID)
    if data == "@":
        data = sys.stdin.read()
    try:
        requests = parse_messages(data) if data is not None else []
    except ValueError as exc:
        _exit(f"-d is not JSON: {exc}", EXIT_INVALID)
    deadline = time.monotonic() + timeout_s
    with channel_to(endpoint, tls) as channel:
        db = ReflectionDatabase(channel, deadline)
        try:
            if method == "list":
                for name in db.services():
                    click.echo(name)
                return
            for text in _call(channel, descriptor_pool.DescriptorPool(db), method, requests, deadline):
                click.echo(text)
        except grpc.RpcError as err:
            _rpc_exit(err)
        except (ValueError, KeyError) as exc:
            _exit(str(exc).strip("'\""), EXIT_INVALID)
