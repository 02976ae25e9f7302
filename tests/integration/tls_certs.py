"""Certificates for the TLS tests, made at run time (nothing secret is kept in the repo).

``make_pki(dir)`` writes, as PEM files under ``dir``:

- ``ca.pem`` / ``ca.key``: the cluster's CA;
- ``server.pem`` / ``server.key``: a server certificate signed by it, SANs
  ``127.0.0.1``, ``::1`` and ``localhost`` (what the tests dial);
- ``client.pem`` / ``client.key``: a client certificate signed by it, CN ``client``;
- ``admin.pem`` / ``admin.key``: one with CN ``admin`` (the ``--admin-cn`` tests);
- ``other-ca.pem``, ``stranger.pem`` / ``stranger.key``: another CA and a
  client certificate it signed (a node must refuse it);
- ``expired.pem`` / ``expired.key``: signed by the right CA, but expired.

EC P-256 keys (fast to make). Uses ``cryptography`` (a test dependency).
"""

from __future__ import annotations

import datetime
import ipaddress
import pathlib
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["Pki", "make_pki"]

_DAY = datetime.timedelta(days=1)


@dataclass(frozen=True, slots=True)
class Pki:
    dir: pathlib.Path

    def path(self, name: str) -> str:
        return str(self.dir / name)

    @property
    def ca(self) -> str:
        return self.path("ca.pem")

    def pair(self, name: str) -> tuple[str, str]:
        """(certificate, key) paths of ``name`` (server, client, admin, stranger, expired)."""
        return self.path(f"{name}.pem"), self.path(f"{name}.key")

    def read(self, name: str) -> bytes:
        return (self.dir / name).read_bytes()

    def server_args(self, *, client_cert_auth: bool = False, admin_cns: tuple[str, ...] = ()) -> list[str]:
        """The ``paxoskv serve`` flags of a TLS node with this PKI."""
        cert, key = self.pair("server")
        args = ["--cert-file", cert, "--key-file", key, "--trusted-ca-file", self.ca]
        if client_cert_auth:
            args.append("--client-cert-auth")
        for cn in admin_cns:
            args += ["--admin-cn", cn]
        return args

    def client_args(self, name: str | None = "client") -> list[str]:
        """The client commands' flags: ``--cacert`` and, with ``name``, ``--cert --key``."""
        args = ["--cacert", self.ca]
        if name is not None:
            cert, key = self.pair(name)
            args += ["--cert", cert, "--key", key]
        return args


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write(dir: pathlib.Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    (dir / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path = dir / f"{name}.key"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    path.chmod(0o600)


def _ca(cn: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _DAY)
        .not_valid_after(now + 30 * _DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf(
    cn: str,
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    *,
    server: bool,
    expired: bool = False,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    ca_cert, ca_key = ca
    key = _key()
    now = datetime.datetime.now(datetime.timezone.utc)
    not_before, not_after = (now - 10 * _DAY, now - _DAY) if expired else (now - _DAY, now + 30 * _DAY)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                if server
                else [ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
    return builder.sign(ca_key, hashes.SHA256()), key


def make_pki(dir: pathlib.Path) -> Pki:
    """Write every certificate of the module docstring under ``dir``."""
    dir.mkdir(parents=True, exist_ok=True)
    ca = _ca("paxoskv test CA")
    other = _ca("another CA")
    _write(dir, "ca", *ca)
    _write(dir, "other-ca", *other)
    _write(dir, "server", *_leaf("node", ca, server=True))
    _write(dir, "client", *_leaf("client", ca, server=False))
    _write(dir, "admin", *_leaf("admin", ca, server=False))
    _write(dir, "stranger", *_leaf("client", other, server=False))
    _write(dir, "expired", *_leaf("client", ca, server=False, expired=True))
    return Pki(dir)
