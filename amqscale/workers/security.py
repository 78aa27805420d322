"""TLS and SASL on a worker's transports: proton's SSL domains and Cyrus SASL, configured.

The engine calls `configure_client` / `configure_server` while it sets a transport up
(before binding: binding copies the credentials into SASL), `negotiated` once the peer's
open arrives, and `failed_in` when a connection ends before it opened. A `Domains` keeps
one proton SSL domain per distinct TLSConfig for the worker's life: OpenSSL's context is
costly to build (it reads the CA store) and is shared by every connection using it.
"""

from __future__ import annotations

from typing import Any

from cproton_ffi import ffi, lib

from . import protocol as p

_VERIFY = {
    "peer-name": lib.PN_SSL_VERIFY_PEER_NAME,
    "peer": lib.PN_SSL_VERIFY_PEER,
    "none": lib.PN_SSL_ANONYMOUS_PEER,
}
_SASL_FAILED = {lib.PN_SASL_AUTH: "auth", lib.PN_SASL_SYS: "sys", lib.PN_SASL_PERM: "perm",
                lib.PN_SASL_TEMP: "temp"}
_NAME_BUFFER = 128


class TLSSetupFailed(Exception):
    """A TLS configuration proton or OpenSSL refused (a file it cannot read, a key that
    does not match its certificate or its password, a cipher list it does not know)."""


def _text(c_string: Any) -> str | None:
    return None if c_string == ffi.NULL else ffi.string(c_string).decode("utf-8", "replace")


def _build_domain(config: p.TLSConfig) -> Any:
    mode = lib.PN_SSL_MODE_SERVER if config.server else lib.PN_SSL_MODE_CLIENT
    domain = lib.pn_ssl_domain(mode)
    if domain == ffi.NULL:
        raise TLSSetupFailed("this proton build has no TLS (OpenSSL) support")
    try:
        _configure_domain(domain, config)
    except BaseException:
        lib.pn_ssl_domain_free(domain)
        raise
    return domain


def _configure_domain(domain: Any, config: p.TLSConfig) -> None:
    def check(status: int, what: str) -> None:
        if status:
            raise TLSSetupFailed(what)

    if config.protocols:
        check(lib.pn_ssl_domain_set_protocols(domain, config.protocols.encode()),
              f"OpenSSL refused the protocol list {config.protocols!r}")
    if config.ciphers:
        check(lib.pn_ssl_domain_set_ciphers(domain, config.ciphers.encode()),
              f"OpenSSL refused the cipher list {config.ciphers!r}")
    if config.cert:
        password = config.key_password.encode() if config.key_password else ffi.NULL
        check(lib.pn_ssl_domain_set_credentials(
            domain, config.cert.encode(), (config.key or config.cert).encode(), password),
            f"cannot use the certificate {config.cert!r} with the key "
            f"{config.key or config.cert!r} (unreadable, not PEM, not matching each other, "
            "or a wrong or missing key password)")
    if config.ca:
        check(lib.pn_ssl_domain_set_trusted_ca_db(domain, config.ca.encode()),
              f"cannot load trusted CAs from {config.ca!r}")
    if config.server:
        if config.verify == "peer":  # a client certificate signed by `ca` is required
            check(lib.pn_ssl_domain_set_peer_authentication(
                domain, lib.PN_SSL_VERIFY_PEER, config.ca.encode() if config.ca else ffi.NULL),
                "requiring client certificates needs the listener's certificate and a CA "
                "file to check them against")
        return
    check(lib.pn_ssl_domain_set_peer_authentication(domain, _VERIFY[config.verify], ffi.NULL),
          f"OpenSSL refused the verify mode {config.verify!r}")


class Domains:
    """The worker's SSL domains, one per distinct configuration, built on first use."""

    def __init__(self) -> None:
        self._domains: dict[p.TLSConfig, Any] = {}

    def get(self, config: p.TLSConfig) -> Any:
        domain = self._domains.get(config)
        if domain is None:
            domain = self._domains[config] = _build_domain(config)
        return domain

    def __len__(self) -> int:
        return len(self._domains)


def configure_client(domains: Domains, ptr: Any, transport: Any,
                     cmd: p.OpenConnection) -> None:
    """TLS and SASL of an outbound connection (raises TLSSetupFailed)."""
    if cmd.tls is not None:
        ssl = lib.pn_ssl(transport)
        if lib.pn_ssl_init(ssl, domains.get(cmd.tls), ffi.NULL):
            raise TLSSetupFailed("proton could not start TLS on the connection")
        lib.pn_ssl_set_peer_hostname(ssl, (cmd.peer_name or cmd.host).encode())
    if cmd.user:
        lib.pn_connection_set_user(ptr, cmd.user.encode())
        if cmd.password is not None:
            lib.pn_connection_set_password(ptr, cmd.password.encode())
    if cmd.authzid:
        lib.pn_connection_set_authorization(ptr, cmd.authzid.encode())
    sasl = lib.pn_sasl(transport)
    # With credentials, never fall back to ANONYMOUS: Cyrus would pick it when the peer
    # offers it, and a wrong password would then connect as the anonymous user.
    mechs = cmd.sasl_mechanisms or (p.CREDENTIAL_MECHANISMS if cmd.user else "ANONYMOUS")
    lib.pn_sasl_allowed_mechs(sasl, mechs.encode())
    lib.pn_sasl_set_allow_insecure_mechs(sasl, cmd.allow_insecure_mechanisms)


def configure_server(domains: Domains, transport: Any, tls: p.TLSConfig | None,
                     sasl_config: p.ServerSASL | None) -> None:
    """TLS and SASL of an inbound connection (Cyrus's configuration: workers.cyrus)."""
    if tls is not None and lib.pn_ssl_init(lib.pn_ssl(transport), domains.get(tls), ffi.NULL):
        raise TLSSetupFailed("proton could not start TLS on the connection")
    sasl = lib.pn_sasl(transport)
    if sasl_config is None:
        lib.pn_sasl_allowed_mechs(sasl, b"ANONYMOUS")
        return
    if sasl_config.mechanisms:
        lib.pn_sasl_allowed_mechs(sasl, sasl_config.mechanisms.encode())
    lib.pn_sasl_set_allow_insecure_mechs(sasl, sasl_config.allow_insecure_mechanisms)
    if "ANONYMOUS" not in (sasl_config.mechanisms or "").split():
        # Else a client that skips SASL altogether would get in unauthenticated.
        lib.pn_transport_require_auth(transport, True)


def refused_authorization(transport: Any) -> p.Condition | None:
    """proton's server grants any authzid a client asks for: refuse one that is not
    the authenticated user (amqscale has no authorization rules to allow it)."""
    sasl = lib.pn_sasl(transport)
    user = _text(lib.pn_sasl_get_user(sasl))
    authzid = _text(lib.pn_sasl_get_authorization(sasl))
    if not user or not authzid or authzid == user:
        return None
    return p.Condition("amqp:unauthorized-access",
                       f"{user!r} may not act as {authzid!r} (authzid)")


def _ssl_name(getter: Any, ssl: Any, buffer: Any) -> str | None:
    return ffi.string(buffer).decode() if getter(ssl, buffer, _NAME_BUFFER) else None


def negotiated(transport: Any, uses_tls: bool) -> p.Security:
    """What the transport negotiated, read once the peer's open has arrived."""
    protocol = cipher = subject = None
    if uses_tls:
        ssl = lib.pn_ssl(transport)
        buffer = ffi.new("char[]", _NAME_BUFFER)
        protocol = _ssl_name(lib.pn_ssl_get_protocol_name, ssl, buffer)
        cipher = _ssl_name(lib.pn_ssl_get_cipher_name, ssl, buffer)
        subject = _text(lib.pn_ssl_get_remote_subject(ssl))
    sasl = lib.pn_sasl(transport)
    return p.Security(protocol, cipher, subject, _text(lib.pn_sasl_get_mech(sasl)),
                      _text(lib.pn_sasl_get_user(sasl)),
                      _text(lib.pn_sasl_get_authorization(sasl)),
                      _SASL_FAILED.get(lib.pn_sasl_outcome(sasl)))


def failed_in(transport: Any, uses_tls: bool, condition: p.Condition | None) -> str | None:
    """Where a connection that never opened failed: "tls", "sasl" or None."""
    if uses_tls:  # proton's TLS errors all start so; no protocol: no handshake at all
        if condition is not None and condition.description.startswith("SSL"):
            return "tls"
        buffer = ffi.new("char[]", _NAME_BUFFER)
        if not lib.pn_ssl_get_protocol_name(lib.pn_ssl(transport), buffer, _NAME_BUFFER):
            return "tls"
    if lib.pn_sasl_outcome(lib.pn_sasl(transport)) in _SASL_FAILED:
        return "sasl"
    if condition is not None and condition.name == "amqp:unauthorized-access":
        return "sasl"
    return None
