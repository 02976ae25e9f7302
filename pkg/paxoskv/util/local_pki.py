"""TLS for local clusters (the chaos campaign, bench/compare): a throwaway CA,
a server certificate naming every node address, a client certificate.

Rules
-----
* ``make_local_pki(dir, hosts)`` makes everything anew under ``dir``
  (EC P-256 keys, valid from a day before to two days after now, keys
  0600): ``ca.pem``, ``node.pem``/``node.key`` (one certificate for every
  node, its SANs every address in ``hosts``, so a client checks the host it
  dialled), ``client.pem``/``client.key`` (CN ``local-client``).
* ``LocalPki.serve_args()`` are the nodes' flags: TLS on, and
  ``--client-cert-auth`` (a client without a certificate of this CA is
  refused at the handshake); ``LocalPki.client`` is the ``ClientTLS`` the
  clients dial with.
* Needs ``cryptography`` (the ``test`` extra): without it, a RuntimeError
  that says so (``paxoskv chaos --no-tls`` runs without TLS).
* Not for a deployment: the CA key lies beside the certificates in ``dir``
  (Ansible makes a deployment's PKI and keeps its CA key on the control
  machine).
"""

from __future__ import annotations

import datetime
import ipaddress
import pathlib
from collections.abc import Iterable
from dataclasses import dataclass

from paxoskv.tls import ClientTLS

__all__ = ["LocalPki", "make_local_pki"]

CLIENT_CN = "local-client"


@dataclass(frozen=True, slots=True)
class LocalPki:
    dir: pathlib.Path
    client: ClientTLS

    def serve_args(self) -> list[str]:
        d = self.dir
        return ["--cert-file", str(d / "node.pem"), "--key-file", str(d / "node.key"),
                "--trusted-ca-file", str(d / "ca.pem"), "--client-cert-auth"]


def _san(host: str):  # noqa: ANN202 - a cryptography GeneralName
    from cryptography import x509

    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def make_local_pki(dir: pathlib.Path, hosts: Iterable[str]) -> LocalPki:
    """Write the CA, the nodes' certificate for ``hosts`` and the client's under ``dir``."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError:
        raise RuntimeError(
            "TLS on a local cluster needs the cryptography package (pip install 'paxoskv[test]'), "
            "(paxoskv chaos: or --no-tls)"
        ) from None

    dir.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    day = datetime.timedelta(days=1)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write(stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None) -> None:
        (dir / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        if key is not None:
            path = dir / f"{stem}.key"
            path.touch(mode=0o600)
            path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))

    def builder(cn: str, issuer: x509.Name, key: ec.EllipticCurvePrivateKey, ca: bool) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - day)
            .not_valid_after(now + 2 * day)
            .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = builder("paxoskv local CA", name("paxoskv local CA"), ca_key, True).sign(ca_key, hashes.SHA256())
    write("ca", ca_cert, None)
    node_key = ec.generate_private_key(ec.SECP256R1())
    node_cert = (
        builder("local-node", ca_cert.subject, node_key, False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([_san(h) for h in dict.fromkeys(hosts)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    write("node", node_cert, node_key)
    client_key = ec.generate_private_key(ec.SECP256R1())
    client_cert = (
        builder(CLIENT_CN, ca_cert.subject, client_key, False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    write("client", client_cert, client_key)
    client = ClientTLS.from_files(str(dir / "ca.pem"), str(dir / "client.pem"), str(dir / "client.key"))
    return LocalPki(dir, client)
