"""Throw-away TLS certificates for the test peers (a trustme CA and a loopback server cert).

The server certificate is issued here rather than by `trustme.CA.issue_cert` because proton's
OpenSSL peer-name check ignores IP SANs: for `amqps://127.0.0.1` with VERIFY_PEER_NAME the
certificate must carry `DNS:127.0.0.1`, which trustme always turns into an IP SAN.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVER_NAMES = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class Certificates:
    """PEM files: the CA a client trusts, and the server's certificate and unencrypted key."""

    ca: Path
    cert: Path
    key: Path


def _subject_alt_names() -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = [x509.DNSName(name) for name in SERVER_NAMES]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in SERVER_NAMES[1:]]
    return x509.SubjectAlternativeName(names)


def _server_certificate(ca: trustme.CA, key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    ca_key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise TypeError(f"unexpected CA key type {type(ca_key).__name__}")
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_subject_alt_names(), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )


def make_certificates(directory: Path) -> Certificates:
    """Write `ca.pem`, `server-cert.pem` and `server-key.pem` (mode 0600) into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    key = ec.generate_private_key(ec.SECP256R1())
    certs = Certificates(
        directory / "ca.pem", directory / "server-cert.pem", directory / "server-key.pem"
    )
    ca.cert_pem.write_to_path(str(certs.ca))
    certs.cert.write_bytes(_server_certificate(ca, key).public_bytes(serialization.Encoding.PEM))
    certs.key.touch(mode=0o600)
    certs.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    return certs
