"""Throw-away TLS certificates for the test peers (a trustme CA and a loopback server cert),
and `make_pki` for the security tests: client certificates, an expired and a wrong-name
server certificate, a key under a password, and a second, untrusted CA.

The server certificate is issued here rather than by `trustme.CA.issue_cert` because proton's
OpenSSL peer-name check ignores IP SANs: for `amqps://127.0.0.1` with VERIFY_PEER_NAME the
certificate must carry `DNS:127.0.0.1`, which trustme always turns into an IP SAN.
"""

from __future__ import annotations

import datetime
import ipaddress
import secrets
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


def _server_certificate(ca: trustme.CA, key: ec.EllipticCurvePrivateKey, *,
                        common_name: str = "localhost",
                        names: x509.SubjectAlternativeName | None = None,
                        expired: bool = False) -> x509.Certificate:
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    ca_key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise TypeError(f"unexpected CA key type {type(ca_key).__name__}")
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=30)
    if expired:
        start, end = now - datetime.timedelta(days=30), now - datetime.timedelta(days=1)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(names or _subject_alt_names(), critical=False)
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


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key, PEM files."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class PKI:
    """Everything the security tests need, signed by `ca` unless said otherwise.

    - `server`: localhost, 127.0.0.1 and ::1 (as DNS and IP names);
    - `expired`: the same names, expired yesterday; `wrong_name`: for other.example only;
    - `untrusted`: a valid-looking server certificate from `other_ca`;
    - `client`: a client certificate with CN `client_name`; `client_other_ca` from
      `other_ca`; `locked`: the server certificate's key under `key_password`.
    """

    ca: Path
    other_ca: Path
    server: KeyPair
    expired: KeyPair
    wrong_name: KeyPair
    untrusted: KeyPair
    client: KeyPair
    client_other_ca: KeyPair
    locked: KeyPair
    client_name: str
    key_password: str


def _write_pair(directory: Path, name: str, cert: x509.Certificate,
                key: ec.EllipticCurvePrivateKey, password: str | None = None) -> KeyPair:
    pair = KeyPair(directory / f"{name}-cert.pem", directory / f"{name}-key.pem")
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    encryption: serialization.KeySerializationEncryption = serialization.NoEncryption()
    if password is not None:
        encryption = serialization.BestAvailableEncryption(password.encode())
    pair.key.touch(mode=0o600)
    pair.key.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption))
    return pair


def _issue(ca: trustme.CA, directory: Path, name: str, password: str | None = None,
           **options: object) -> KeyPair:
    key = ec.generate_private_key(ec.SECP256R1())
    return _write_pair(directory, name, _server_certificate(ca, key, **options), key,  # type: ignore[arg-type]
                       password)


def make_pki(directory: Path, client_name: str = "amqscale-client") -> PKI:
    """Write a test PKI (see PKI) into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    ca, other = trustme.CA(), trustme.CA()
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    other.cert_pem.write_to_path(str(directory / "other-ca.pem"))
    client_names = x509.SubjectAlternativeName([x509.DNSName(client_name)])
    wrong = x509.SubjectAlternativeName([x509.DNSName("other.example")])
    password = "key-" + secrets.token_hex(8)
    return PKI(
        ca=directory / "ca.pem", other_ca=directory / "other-ca.pem",
        server=_issue(ca, directory, "server"),
        expired=_issue(ca, directory, "expired", expired=True),
        wrong_name=_issue(ca, directory, "wrong-name", common_name="other.example",
                          names=wrong),
        untrusted=_issue(other, directory, "untrusted"),
        client=_issue(ca, directory, "client", common_name=client_name, names=client_names),
        client_other_ca=_issue(other, directory, "client-other-ca", common_name=client_name,
                               names=client_names),
        locked=_issue(ca, directory, "locked", password=password),
        client_name=client_name, key_password=password)
