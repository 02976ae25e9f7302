"""What the public gRPC port lets in: TLS, client certificates, the admin
gate, and the transport's own limits.

Rules:

- TLS (``ServerTLS``) is on when ``--cert-file`` and ``--key-file`` are given,
  for the whole port: every service on it (paxoskv's, etcd's, health and
  reflection) speaks TLS 1.2 or 1.3 (gRPC's floor; a TLS 1.1 client is
  refused at the handshake). ``--client-cert-auth`` makes the handshake
  require a client certificate signed by a CA of ``--trusted-ca-file``, so
  a client without one never reaches a handler -- health checks included.
  ``--trusted-ca-file`` alone changes nothing (as etcd: it is read only with
  ``--client-cert-auth``, which needs it).
- The files are checked when the flags are read (readable, PEM, the key
  belongs to the certificate, the CA file loads) and read again whenever one
  of them changes: a new handshake after a change uses the new files (a
  file that does not load is logged and the old ones stay in use), so
  certificates rotate without a restart. Connections already open keep the
  certificate they started with.
- ``--admin-cn NAME`` (repeatable, needs ``--client-cert-auth``) limits the
  calls of ``ADMIN_METHODS`` -- a copy of the whole database, or a change
  to the cluster itself -- to clients whose certificate's Common Name is one
  of the NAMEs; any other is answered PERMISSION_DENIED. Without it every
  client the handshake let in may call them.
- ``FacadeLimits`` are the transport's bounds (each a ``serve`` flag): what
  one request, one ``Session`` stream, one connection and the whole node may
  hold. The rules about a call's content (ops per batch, bytes of a
  command) are the node layer's (``paxoskv.replica.node.CallLimits``).
"""

from __future__ import annotations

import logging
import os
import resource
import ssl
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import grpc

from paxoskv.kv.commands import Limits
from paxoskv.replica.etcd import GRPC_OVERHEAD_BYTES
from paxoskv.replica.node import CallLimits
from paxoskv.tls import read_pem
from paxoskv.wire import MESSAGE_BYTES_MAX, ConfigError

__all__ = [
    "ADMIN_METHODS",
    "AdminGate",
    "FacadeLimits",
    "GRPC_OVERHEAD_BYTES",
    "PublicOptions",
    "ServerTLS",
    "build_public_options",
    "connections_cap",
]

log = logging.getLogger("paxoskv.grpc")

# Whole-database and cluster-changing calls: those --admin-cn restricts. The
# etcd paths are those etcd 3.4 keeps to its root role (Maintenance's
# Snapshot, Defragment, Hash, HashKV; the member changes) plus MoveLeader
# and Alarm (they change the cluster); a path no service serves is never
# called, so listing one costs nothing.
ADMIN_METHODS = frozenset(
    {
        "/paxoskv.v1.Maintenance/Snapshot",
        "/etcdserverpb.Maintenance/Snapshot",
        "/etcdserverpb.Maintenance/Defragment",
        "/etcdserverpb.Maintenance/Hash",
        "/etcdserverpb.Maintenance/HashKV",
        "/etcdserverpb.Maintenance/MoveLeader",
        "/etcdserverpb.Maintenance/Alarm",
        "/etcdserverpb.Maintenance/Downgrade",
        "/etcdserverpb.Cluster/MemberAdd",
        "/etcdserverpb.Cluster/MemberRemove",
        "/etcdserverpb.Cluster/MemberUpdate",
        "/etcdserverpb.Cluster/MemberPromote",
    }
)


# ---- TLS -------------------------------------------------------------------------------


def _check_pair(cert: str, key: str) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(cert, key, password=lambda: b"")  # an encrypted key fails, never prompts
    except ssl.SSLError as exc:
        raise ConfigError(f"--cert-file {cert} and --key-file {key} do not load together ({exc.reason or exc}): "
                          f"is the key the certificate's, and not encrypted?") from None
    except OSError as exc:
        raise ConfigError(f"--cert-file {cert} / --key-file {key}: {exc.strerror or exc}") from None


def _check_ca(ca: str) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        ctx.load_verify_locations(cafile=ca)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"--trusted-ca-file {ca}: not a PEM CA certificate ({exc})") from None


@dataclass(frozen=True, slots=True)
class _Files:
    key: bytes
    chain: bytes
    roots: bytes | None
    stamp: tuple


class ServerTLS:
    """The public port's TLS: ``credentials()`` for ``add_secure_port``.

    Made by ``from_flags`` (which checks the files); see the module rules."""

    def __init__(self, cert_file: str, key_file: str, trusted_ca_file: str | None, client_cert_auth: bool) -> None:
        self.cert_file = cert_file
        self.key_file = key_file
        self.trusted_ca_file = trusted_ca_file
        self.client_cert_auth = client_cert_auth
        self._lock = threading.Lock()
        self._files = self._load()
        self.reloads = 0
        self._refused_stamp: tuple | None = None

    @classmethod
    def from_flags(
        cls,
        cert_file: str | None,
        key_file: str | None,
        trusted_ca_file: str | None,
        client_cert_auth: bool,
        admin_cns: Iterable[str] = (),
    ) -> ServerTLS | None:
        """None (plaintext) when no certificate is given; ``ConfigError`` for
        flags that do not go together or files that do not load."""
        admin_cns = tuple(admin_cns)
        if cert_file is None and key_file is None:
            if client_cert_auth:
                raise ConfigError("--client-cert-auth needs TLS: give --cert-file and --key-file")
            if admin_cns:
                raise ConfigError("--admin-cn needs --client-cert-auth (and TLS)")
            return None
        if cert_file is None or key_file is None:
            raise ConfigError("--cert-file and --key-file go together: give both")
        if client_cert_auth and trusted_ca_file is None:
            raise ConfigError("--client-cert-auth needs --trusted-ca-file (the CA that signs client certificates)")
        if admin_cns and not client_cert_auth:
            raise ConfigError("--admin-cn needs --client-cert-auth: without client certificates there is no CN to check")
        if any(not cn for cn in admin_cns):
            raise ConfigError("--admin-cn must not be empty")
        return cls(cert_file, key_file, trusted_ca_file, client_cert_auth)

    def _stamp(self) -> tuple:
        out = []
        for path in (self.cert_file, self.key_file, self.trusted_ca_file):
            if path is None:
                out.append(None)
                continue
            st = os.stat(path)
            out.append((st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(out)

    def _load(self) -> _Files:
        try:
            stamp = self._stamp()  # before reading: a change after it is seen next time
        except OSError as exc:
            raise ConfigError(f"TLS file {exc.filename}: {exc.strerror or exc}") from None
        chain = read_pem(self.cert_file, "--cert-file", ("CERTIFICATE",))
        key = read_pem(self.key_file, "--key-file", ("PRIVATE KEY", "EC PRIVATE KEY", "RSA PRIVATE KEY"))
        _check_pair(self.cert_file, self.key_file)
        roots = None
        if self.client_cert_auth:
            assert self.trusted_ca_file is not None
            roots = read_pem(self.trusted_ca_file, "--trusted-ca-file", ("CERTIFICATE",))
            _check_ca(self.trusted_ca_file)
        return _Files(key, chain, roots, stamp)

    def _paths(self) -> list[str]:
        return [p for p in (self.cert_file, self.key_file, self.trusted_ca_file) if p is not None]

    def _config(self, files: _Files) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration([(files.key, files.chain)], root_certificates=files.roots)

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC asks before each handshake: the new files if they changed, else None."""
        try:
            with self._lock:
                stamp = self._stamp()
                if stamp == self._files.stamp or stamp == self._refused_stamp:
                    return None
                try:
                    files = self._load()
                except ConfigError as exc:
                    self._refused_stamp = stamp
                    log.warning("TLS files changed but do not load, still using the previous ones: %s", exc)
                    return None
                self._files = files
                self.reloads += 1
            log.info("TLS: loaded the changed certificate files (%s)", ", ".join(self._paths()))
            return self._config(files)
        except OSError as exc:  # a file is being replaced right now: next handshake
            log.debug("TLS files not readable right now (%s): keeping the loaded ones", exc)
            return None
        except Exception:  # noqa: BLE001 - never fail a handshake over a reload
            log.exception("TLS: checking the certificate files failed; keeping the loaded ones")
            return None

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self._config(self._files), self._fetch, require_client_authentication=self.client_cert_auth
        )

    def describe(self) -> str:
        if self.client_cert_auth:
            return f"TLS, client certificates of {self.trusted_ca_file} required"
        return "TLS, no client certificates"


# ---- the admin gate ----------------------------------------------------------------------


def peer_common_name(context: grpc.aio.ServicerContext) -> str | None:
    """The Common Name of the client certificate the call came with, if any."""
    names = context.auth_context().get("x509_common_name")
    if not names:
        return None
    return names[0].decode("utf-8", "replace")


class AdminGate(grpc.aio.ServerInterceptor):
    """Lets a call of ``methods`` through only from a certificate whose CN is
    one of ``admin_cns``; every other call passes untouched."""

    def __init__(self, admin_cns: Iterable[str], methods: frozenset[str] = ADMIN_METHODS) -> None:
        self.admin_cns = frozenset(admin_cns)
        self.methods = methods

    async def intercept_service(
        self, continuation: Callable, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method not in self.methods:
            return handler
        return _guarded(handler, method, self.admin_cns)


def _guarded(handler: grpc.RpcMethodHandler, method: str, admin_cns: frozenset[str]) -> grpc.RpcMethodHandler:
    async def check(context: grpc.aio.ServicerContext) -> None:
        cn = peer_common_name(context)
        if cn not in admin_cns:
            who = f"CN={cn!r}" if cn is not None else "no client certificate"
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{method} is for admin certificates only (--admin-cn {' / '.join(sorted(admin_cns))}); "
                f"this client has {who}",
            )

    des, ser = handler.request_deserializer, handler.response_serializer
    for kind, make in _KINDS:
        inner = getattr(handler, kind)
        if inner is None:
            continue
        if kind.endswith("_stream"):  # the answer is a stream: an async generator

            async def guarded(request, context, inner=inner):  # noqa: ANN001, ANN202
                await check(context)
                async for item in inner(request, context):
                    yield item

        else:

            async def guarded(request, context, inner=inner):  # noqa: ANN001, ANN202
                await check(context)
                return await inner(request, context)

        return make(guarded, des, ser)
    return handler


_KINDS = (
    ("unary_unary", grpc.unary_unary_rpc_method_handler),
    ("stream_unary", grpc.stream_unary_rpc_method_handler),
    ("unary_stream", grpc.unary_stream_rpc_method_handler),
    ("stream_stream", grpc.stream_stream_rpc_method_handler),
)


# ---- transport limits ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class FacadeLimits:
    """The public port's transport bounds (see each ``serve`` flag)."""

    request_bytes_max: int = 1536 << 10  # --max-request-bytes (etcd's default): gRPC takes at most this + GRPC_OVERHEAD_BYTES
    stream_requests_max: int = 1024  # --max-stream-requests: a Session's requests read and not yet answered
    stream_bytes_max: int = 4 << 20  # --max-stream-bytes: and their bytes, answers included
    pending_bytes_max: int = 256 << 20  # --max-pending-mb: request and answer bytes the node holds, all calls
    concurrent_streams_max: int = 1024  # --max-concurrent-streams: calls at once on one connection
    concurrent_rpcs_max: int = 10_000  # --max-concurrent-rpcs: calls at once on the node
    connections_max: int = 3000  # --max-connections: connections at once (a TLS one costs ~64 KiB idle)
    handshake_timeout_ms: int = 10_000  # a connection that has not finished TLS/HTTP2 by then is closed

    def __post_init__(self) -> None:
        for name in self.__slots__:  # type: ignore[attr-defined]
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, not {getattr(self, name)}")

    @property
    def receive_bytes_max(self) -> int:
        return self.request_bytes_max + GRPC_OVERHEAD_BYTES


FD_RESERVE = 1024 + 64  # LevelDB's open files (max_open_files 1000), the bus, logs


def connections_cap(wanted: int) -> tuple[int, str | None]:
    """How many connections the node may take: ``wanted``, or fewer if the
    open-files limit (raised to its hard limit first) cannot hold them plus
    LevelDB's files; and a warning when it had to be lowered."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard and (hard == resource.RLIM_INFINITY or soft < hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY or soft - FD_RESERVE >= wanted:
        return wanted, None
    cap = max(16, soft - FD_RESERVE)
    return cap, (
        f"--max-connections {wanted} lowered to {cap}: the open-files limit is {soft} and LevelDB and the bus "
        f"need {FD_RESERVE} (raise LimitNOFILE / ulimit -n)"
    )


# ---- the flags, together ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PublicOptions:
    """What ``serve``'s public-port flags asked for, checked."""

    tls: ServerTLS | None = None
    admin_cns: tuple[str, ...] = ()
    limits: FacadeLimits = field(default_factory=FacadeLimits)
    call_limits: CallLimits = field(default_factory=CallLimits)

    def describe(self) -> str:
        if self.tls is None:
            return "plaintext"
        admin = f", admin calls for CN {', '.join(self.admin_cns)}" if self.admin_cns else ""
        return self.tls.describe() + admin


def build_public_options(
    *,
    cert_file: str | None = None,
    key_file: str | None = None,
    trusted_ca_file: str | None = None,
    client_cert_auth: bool = False,
    admin_cn: Iterable[str] = (),
    max_request_bytes: int = CallLimits().request_bytes_max,
    max_batch_ops: int = CallLimits().batch_ops_max,
    max_stream_requests: int = FacadeLimits().stream_requests_max,
    max_stream_bytes: int = FacadeLimits().stream_bytes_max,
    max_pending_mb: int = FacadeLimits().pending_bytes_max >> 20,
    max_concurrent_streams: int = FacadeLimits().concurrent_streams_max,
    max_concurrent_rpcs: int = FacadeLimits().concurrent_rpcs_max,
    max_connections: int = FacadeLimits().connections_max,
) -> PublicOptions:
    """Check the public-port flags together; ``ConfigError`` names the one at fault."""
    admin_cns = tuple(dict.fromkeys(admin_cn))
    tls = ServerTLS.from_flags(cert_file, key_file, trusted_ca_file, client_cert_auth, admin_cns)
    data = Limits()
    one_op = data.key_bytes_max + data.value_bytes_max + data.client_id_bytes_max + 1024  # the largest put
    for flag, value in (
        ("--max-batch-ops", max_batch_ops),
        ("--max-stream-requests", max_stream_requests),
        ("--max-pending-mb", max_pending_mb),
        ("--max-concurrent-streams", max_concurrent_streams),
        ("--max-concurrent-rpcs", max_concurrent_rpcs),
        ("--max-connections", max_connections),
    ):
        if value < 1:
            raise ConfigError(f"{flag} must be >= 1, not {value}")
    if not one_op <= max_request_bytes <= MESSAGE_BYTES_MAX:
        raise ConfigError(
            f"--max-request-bytes {max_request_bytes} must be in {one_op}..{MESSAGE_BYTES_MAX} "
            f"(at least the largest put: a {data.value_bytes_max}-byte value)"
        )
    if max_stream_bytes < one_op:
        raise ConfigError(f"--max-stream-bytes {max_stream_bytes} must be at least {one_op} (the largest put or answer)")
    if max_stream_requests > max_batch_ops:
        raise ConfigError(
            f"--max-stream-requests {max_stream_requests} must not exceed --max-batch-ops {max_batch_ops} "
            f"(a stream's requests go to the node as one batch)"
        )
    limits = FacadeLimits(
        request_bytes_max=max_request_bytes,
        stream_requests_max=max_stream_requests,
        stream_bytes_max=max_stream_bytes,
        pending_bytes_max=max_pending_mb << 20,
        concurrent_streams_max=max_concurrent_streams,
        concurrent_rpcs_max=max_concurrent_rpcs,
        connections_max=max_connections,
    )
    floor = 2 * max(limits.receive_bytes_max, max_stream_bytes)
    if limits.pending_bytes_max < floor:
        raise ConfigError(
            f"--max-pending-mb {max_pending_mb} must hold two of the largest requests or streams: at least "
            f"{(floor + (1 << 20) - 1) >> 20}"
        )
    return PublicOptions(
        tls=tls,
        admin_cns=admin_cns,
        limits=limits,
        call_limits=CallLimits(batch_ops_max=max_batch_ops, request_bytes_max=max_request_bytes),
    )
