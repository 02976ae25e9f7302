"""The client/server contract of the public port, beyond the proto's messages.

Both sides import it, and neither imports the other: ``paxoskv.client`` and
``paxoskv.server`` meet here (a test checks the import graph).

Rules:

- Methods are those of ``proto/paxoskv/v1/kv.proto``. Typed calls go through
  the generated stubs (``kv_pb2_grpc.KVStub``, ``MaintenanceStub``); a raw
  call (bytes in, bytes out) takes its path from ``method_path``, which reads
  the generated descriptor: no method path is typed by hand.
- An UNAVAILABLE answer names the leader, when it is known, in its trailing
  metadata ``LEADER_METADATA_KEY: ID=HOST:PORT`` (``leader_hint``; read back
  with ``parse_leader_hint``). HOST:PORT is the leader's public port.
- ``MESSAGE_BYTES_MAX`` bounds every message either side sends, and what a
  client takes; a node takes at most its ``--max-request-bytes`` (default
  1.5 MiB as etcd's, at most this) + 512 KiB. Both are above the node's own limits (a
  1 MiB value), so a value too large is refused as INVALID_ARGUMENT by the
  node, not by gRPC.
- Status codes, one per cause (the README's table): ``INVALID`` nothing
  was written, fix the request; ``STALE`` the sequence is older than the
  client's last applied one; ``UNAVAILABLE`` no leader could serve it now, a
  write may or may not be applied, retry it with the same (client_id,
  sequence); ``DEADLINE`` the deadline passed, a write may still be applied;
  ``UNIMPLEMENTED`` a packed batch the cluster cannot take yet, nothing was
  written. ``RETRYABLE`` are those a client retries (and CANCELLED: a
  server that stops with the call in flight). A batch answers each op
  with a code's number (``ResponseOp.code``): ``status_code`` maps it back.
  gRPC's own refusal of a message over its limit (RESOURCE_EXHAUSTED) counts
  as INVALID (``is_too_large``).
- A call that reached no server (the connection was refused, the host
  name did not resolve, no address could be connected) fails UNAVAILABLE
  with gRPC's own details; ``unreachable_reason`` tells it from an
  UNAVAILABLE a node answered, and says why in a few words; a TLS node
  that refused the connection (``TLS_CLOSED``, ``TLS_FAILED``) is told
  from a port where nothing listens.
- Endpoints, as people type them (flags, environment): ``HOST:PORT``,
  ``[V6HOST]:PORT``, or a bare ``HOST`` meaning ``DEFAULT_PORT``; a list is
  comma-separated, kept in order, without duplicates. Every parser raises
  ``ConfigError`` with one line naming the offending text.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc

from paxoskv.v1 import kv_pb2

__all__ = [
    "DEADLINE",
    "DEFAULT_PORT",
    "INVALID",
    "KV_SERVICE",
    "LEADER_METADATA_KEY",
    "MAINTENANCE_SERVICE",
    "MESSAGE_BYTES_MAX",
    "RETRYABLE",
    "STALE",
    "UNAVAILABLE",
    "UNIMPLEMENTED",
    "ConfigError",
    "format_hostport",
    "is_too_large",
    "leader_hint",
    "method_path",
    "parse_endpoint",
    "parse_endpoints",
    "parse_hostport",
    "parse_leader_hint",
    "parse_port",
    "split_host",
    "status_code",
    "unreachable_reason",
]

KV_SERVICE = kv_pb2.DESCRIPTOR.services_by_name["KV"].full_name  # "paxoskv.v1.KV"
MAINTENANCE_SERVICE = kv_pb2.DESCRIPTOR.services_by_name["Maintenance"].full_name
LEADER_METADATA_KEY = "paxoskv-leader"
MESSAGE_BYTES_MAX = 8 << 20
DEFAULT_PORT = 50051

INVALID = grpc.StatusCode.INVALID_ARGUMENT
STALE = grpc.StatusCode.FAILED_PRECONDITION
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
DEADLINE = grpc.StatusCode.DEADLINE_EXCEEDED
UNIMPLEMENTED = grpc.StatusCode.UNIMPLEMENTED
# CANCELLED too: a client sees it when a server stops with its call in flight
# (its own cancellation is asyncio.CancelledError, never a status).
RETRYABLE = frozenset({UNAVAILABLE, DEADLINE, grpc.StatusCode.CANCELLED})

_CODE_BY_NUMBER = {c.value[0]: c for c in grpc.StatusCode}
_UNSPECIFIED_HOSTS = frozenset({"0.0.0.0", "::", ""})


# ---- methods ------------------------------------------------------------------------


def method_path(service: str, method: str) -> str:
    """``"/paxoskv.v1.KV/Put"`` for ``("KV", "Put")``; KeyError for a method
    the proto does not have."""
    m = kv_pb2.DESCRIPTOR.services_by_name[service].methods_by_name[method]
    return f"/{m.containing_service.full_name}/{m.name}"


# ---- status codes and the leader hint -----------------------------------------------


def status_code(number: int) -> grpc.StatusCode:
    """The status code of a ``ResponseOp.code`` number (UNKNOWN for a stranger)."""
    return _CODE_BY_NUMBER.get(number, grpc.StatusCode.UNKNOWN)


def is_too_large(code: grpc.StatusCode, details: str) -> bool:
    """Whether gRPC itself refused a message over its size limit."""
    return code == grpc.StatusCode.RESOURCE_EXHAUSTED and "message" in details.lower()


def unreachable_reason(code: grpc.StatusCode, details: str | None) -> str | None:
    """Why a call reached no server ("connection refused", ...), or None if a
    server answered it."""
    if code != UNAVAILABLE or not details:
        return None
    text = details.lower()
    if "connection refused" in text:
        return "connection refused"
    if "errors resolving" in text or "dns resolution failed" in text:
        return "host name not found"
    if "handshake failed" in text or "certificate_verify_failed" in text:
        return TLS_FAILED
    if "socket closed" in text:
        # What a TLS node does to a plaintext client, and to one without an
        # accepted client certificate.
        return TLS_CLOSED
    if "failed to connect to all addresses" in text:
        return "cannot connect"
    return None


TLS_FAILED = (
    "the TLS handshake failed: does the node speak TLS, and is its certificate signed by --cacert "
    "and made for this address?"
)
TLS_CLOSED = "the node closed the connection at once: does it need TLS (--cacert) or a client certificate (--cert --key)?"


def leader_hint(node_id: int, address: str) -> tuple[tuple[str, str], ...]:
    """The trailing metadata of an UNAVAILABLE answer naming the leader."""
    return ((LEADER_METADATA_KEY, f"{node_id}={address}"),)


def parse_leader_hint(metadata: Iterable[tuple[str, str | bytes]] | None) -> tuple[int | None, str | None] | None:
    """(leader id, ``host:port``) from trailing metadata, or None without a
    hint. Either part is None where it is unusable: an id that is no number,
    an address without a port or with an unspecified host (0.0.0.0, ::)."""
    for key, value in metadata or ():
        if key != LEADER_METADATA_KEY:
            continue
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        head, _, addr = text.partition("=")
        node_id = int(head) if head.isdigit() else None
        host, sep, port = addr.rpartition(":")
        usable = bool(sep) and port.isdigit() and host.strip("[]") not in _UNSPECIFIED_HOSTS
        return node_id, addr if usable else None
    return None


# ---- endpoints ----------------------------------------------------------------------


class ConfigError(ValueError):
    """A value a person typed (a flag, an environment variable) is wrong;
    ``str(err)`` is one line naming the text and what is expected."""


def parse_port(text: str | int, what: str = "port") -> int:
    try:
        port = int(text)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} {text!r} is not a number") from None
    if not 1 <= port <= 65535:
        raise ConfigError(f"{what} {port} is not in 1..65535")
    return port


def split_host(text: str) -> tuple[str, list[str]]:
    """``HOST:a:b`` or ``[V6]:a:b`` -> (host, [a, b])."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ConfigError(f"{text!r}: missing ']' after the IPv6 address")
        host, rest = text[1:end], text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ConfigError(f"{text!r}: expected ':' after ']'")
        parts = rest[1:].split(":") if rest else []
    else:
        host, *parts = text.split(":")
    if not host:
        raise ConfigError(f"{text!r}: the host is empty")
    return host, parts


def format_hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_hostport(text: str, default_port: int | None = None) -> tuple[str, int]:
    """``HOST:PORT`` / ``[V6]:PORT`` (or ``HOST`` when ``default_port`` is given)."""
    text = text.strip()
    host, parts = split_host(text)
    if not parts:
        if default_port is None:
            raise ConfigError(f"{text!r}: expected HOST:PORT")
        return host, default_port
    if len(parts) != 1:
        raise ConfigError(f"{text!r}: expected HOST:PORT (write IPv6 hosts as [::1]:PORT)")
    return host, parse_port(parts[0], f"port in {text!r}")


def parse_endpoint(text: str, default_port: int | None = DEFAULT_PORT) -> str:
    """A client endpoint, normalised to ``host:port`` (``[v6]:port``)."""
    host, port = parse_hostport(text, default_port)
    return format_hostport(host, port)


def parse_endpoints(text: str, default_port: int | None = DEFAULT_PORT, *, unique: bool = True) -> list[str]:
    """Comma-separated endpoints, in order, without duplicates (unless not
    ``unique``); at least one."""
    out: list[str] = []
    for item in text.split(","):
        if not item.strip():
            continue
        ep = parse_endpoint(item, default_port)
        if ep not in out or not unique:
            out.append(ep)
    if not out:
        raise ConfigError("no endpoint given: expected HOST:PORT[,HOST:PORT...]")
    return out
