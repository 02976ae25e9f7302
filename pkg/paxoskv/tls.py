"""The client side of TLS on the public port: what a client trusts and shows.

Rules:

- ``ClientTLS`` holds the PEM bytes of the CA to trust (``--cacert``) and,
  for client-certificate auth, a certificate and its key (``--cert``,
  ``--key``), read once when made (``from_files``). A certificate without
  its key, or the reverse, is a ``ConfigError``, as is a file that cannot be
  read or holds no PEM block of the expected kind. Without ``--cacert`` the
  server is checked against gRPC's bundled public roots.
- ``tls=None`` everywhere means a plaintext channel; a ``ClientTLS`` means a
  TLS channel (TLS 1.2 or 1.3, gRPC's defaults) whose server must present a
  certificate for the dialled host name or IP address, signed by the CA.
- ``channel`` / ``aio_channel`` are the one way this package dials a node
  (the Python client, ``paxoskv bench``, the launcher's status probes, the
  CLI), so every caller gets TLS the same way. A ``ClientTLS`` pickles (the
  benchmark hands it to its worker processes).
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from paxoskv.wire import ConfigError

__all__ = ["ClientTLS", "aio_channel", "channel", "client_tls"]

ChannelOptions = Sequence[tuple[str, Any]]


def read_pem(path: str | pathlib.Path, what: str, kinds: tuple[str, ...]) -> bytes:
    """The bytes of PEM file ``path`` (``what``: the flag naming it), checked
    to hold a block of one of ``kinds`` (``CERTIFICATE``, ``PRIVATE KEY``, ...)."""
    try:
        data = pathlib.Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot read it ({exc.strerror or exc})") from None
    if not any(f"-----BEGIN {kind}-----".encode() in data for kind in kinds):
        raise ConfigError(f"{what} {path}: no PEM {' or '.join(kinds)} block in it")
    return data


_KEY_KINDS = ("PRIVATE KEY", "EC PRIVATE KEY", "RSA PRIVATE KEY")


@dataclass(frozen=True, slots=True)
class ClientTLS:
    """PEM bytes: the CA to trust (None: gRPC's public roots) and the client's
    own certificate chain and key (both or neither)."""

    root_certificates: bytes | None = None
    certificate_chain: bytes | None = None
    private_key: bytes | None = None

    def __post_init__(self) -> None:
        if (self.certificate_chain is None) != (self.private_key is None):
            raise ConfigError("a client certificate needs its key and a key its certificate: give --cert and --key")

    @classmethod
    def from_files(cls, cacert: str | None = None, cert: str | None = None, key: str | None = None) -> ClientTLS:
        if (cert is None) != (key is None):
            raise ConfigError("--cert and --key go together: give both (or neither)")
        return cls(
            root_certificates=read_pem(cacert, "--cacert", ("CERTIFICATE",)) if cacert else None,
            certificate_chain=read_pem(cert, "--cert", ("CERTIFICATE",)) if cert else None,
            private_key=read_pem(key, "--key", _KEY_KINDS) if key else None,
        )

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(self.root_certificates, self.private_key, self.certificate_chain)


def client_tls(cacert: str | None, cert: str | None, key: str | None) -> ClientTLS | None:
    """The ``ClientTLS`` of the ``--cacert --cert --key`` flags; None (plaintext)
    when none is given."""
    if cacert is None and cert is None and key is None:
        return None
    return ClientTLS.from_files(cacert, cert, key)


def channel(target: str, tls: ClientTLS | None = None, options: ChannelOptions = ()) -> grpc.Channel:
    """A blocking channel to ``target``: TLS with ``tls``, plaintext without."""
    if tls is None:
        return grpc.insecure_channel(target, options=list(options))
    return grpc.secure_channel(target, tls.credentials(), options=list(options))


def aio_channel(target: str, tls: ClientTLS | None = None, options: ChannelOptions = ()) -> grpc.aio.Channel:
    """An asyncio channel to ``target``: TLS with ``tls``, plaintext without."""
    if tls is None:
        return grpc.aio.insecure_channel(target, options=list(options))
    return grpc.aio.secure_channel(target, tls.credentials(), options=list(options))
