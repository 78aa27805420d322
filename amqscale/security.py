"""TLS and SASL settings: what `connect()` and `listen()` take, checked at the call.

Safer than proton's defaults: a client verifies the server's certificate and name unless
told otherwise (and warns when told), PLAIN is never sent over a connection without TLS
unless `allow_insecure_mechanisms=True`, and an `amqps://` URL never falls back to
cleartext. Secrets (passwords, key passwords) travel to the workers through shared memory
only, never argv or the environment, and no repr or error message shows them.

    tls = TLS(ca="ca.pem")                                   # verify name and certificate
    conn = container.connect("amqps://broker:5671", tls=tls, user="me", password="...")
    conn.security.tls_protocol, conn.security.sasl_mechanism  # 'TLSv1.3', 'SCRAM-SHA-256'

    listener = container.listen("amqps://127.0.0.1:0",
                                tls=TLS(cert="server.pem", key="server-key.pem"),
                                sasl=ServerSASL(users={"alice": "..."}))
"""

from __future__ import annotations

import json
import os
import re
import socket
import ssl
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .url import URL
from .workers import protocol as p

__all__ = ["TLS", "ServerSASL", "Security", "InsecureTLSWarning", "TLS_VERSIONS",
           "load_connect_config", "ConnectConfigError"]

Security = p.Security
TLS_VERSIONS = ("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")
VERIFY_MODES = ("peer-name", "peer", "none")


class InsecureTLSWarning(UserWarning):
    """A client connects over TLS without checking the server's name or certificate."""


def _version(value: str | None, what: str) -> int | None:
    if value is None:
        return None
    name = value if value.startswith("TLS") else f"TLSv{value}"
    name = "TLSv1" if name == "TLSv1.0" else name
    if name not in TLS_VERSIONS:
        raise ValueError(f"{what} must be one of {', '.join(TLS_VERSIONS)}, not {value!r}")
    return TLS_VERSIONS.index(name)


def _readable(path: str | Path | None, what: str) -> str | None:
    if path is None:
        return None
    text = os.fspath(path)
    if not os.path.exists(text):
        raise FileNotFoundError(f"TLS {what} {text!r} does not exist")
    if not os.access(text, os.R_OK):
        raise PermissionError(f"TLS {what} {text!r} is not readable")
    return text


def _text(path: str | Path | None) -> str | None:
    return None if path is None else os.fspath(path)


@dataclass(frozen=True)
class TLS:
    """TLS settings for a client (`connect`) or a listener (`listen`).

    - `ca`: a PEM file or a directory of them (c_rehash'd) to trust; None: the system's
      trust store (a client), no client certificates accepted (a listener).
    - `verify`, for a client: "peer-name" (the default: the certificate is signed by a
      trusted CA and names the host, or `peer_name`), "peer" (signed by a trusted CA,
      any name) or "none" (anything, even no certificate); the last two warn. For a
      listener: "none" (the default: no client certificate asked for) or "peer" (a
      client certificate signed by `ca` is required; SASL EXTERNAL can then use it).
    - `cert`, `key`: our certificate (chain) and private key, PEM; `key` defaults to
      `cert` (one file holding both). `key_password` decrypts the key; it is a secret.
    - `peer_name`: the name sent as SNI and checked against the server's certificate
      (a client); default the URL's host.
    - `min_version`, `max_version`: "TLSv1", "TLSv1.1", "TLSv1.2" or "TLSv1.3" (or
      "1.2"...); None: whatever OpenSSL allows. Debian 12's OpenSSL 3.0 still negotiates
      TLS 1.0 and 1.1 with proton's default ciphers when both ends ask for them (Python's
      ssl module needs `DEFAULT:@SECLEVEL=0` for them).
    - `ciphers`: an OpenSSL cipher list for TLS 1.2 and below.
    """

    ca: str | Path | None = None
    verify: str | None = None
    cert: str | Path | None = None
    key: str | Path | None = None
    key_password: str | None = field(default=None, repr=False)
    peer_name: str | None = None
    min_version: str | None = None
    max_version: str | None = None
    ciphers: str | None = None

    def __post_init__(self) -> None:
        if self.verify is not None and self.verify not in VERIFY_MODES:
            raise ValueError(f"verify must be one of {', '.join(VERIFY_MODES)}, "
                             f"not {self.verify!r}")
        if self.key is not None and self.cert is None:
            raise ValueError("a TLS key without a certificate: give cert= too")
        if self.key_password is not None and self.cert is None:
            raise ValueError("a TLS key_password without a certificate: give cert= too")
        _readable(self.ca, "ca")
        _readable(self.cert, "certificate")
        _readable(self.key, "key")
        low = _version(self.min_version, "min_version")
        high = _version(self.max_version, "max_version")
        if low is not None and high is not None and low > high:
            raise ValueError(f"min_version {self.min_version!r} is above "
                             f"max_version {self.max_version!r}")
        for name in ("peer_name", "ciphers", "key_password"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise TypeError(f"TLS {name} must be a non-empty str")

    @property
    def protocols(self) -> str | None:
        """proton's protocol list for the version range (None: no restriction)."""
        if self.min_version is None and self.max_version is None:
            return None
        low = _version(self.min_version, "min_version") or 0
        high = _version(self.max_version, "max_version")
        high = len(TLS_VERSIONS) - 1 if high is None else high
        return " ".join(TLS_VERSIONS[low:high + 1])

    def wire(self, server: bool) -> p.TLSConfig:
        """The worker's form; for a listener, checks the settings a listener needs."""
        verify = self.verify or ("none" if server else "peer-name")
        if server:
            if self.cert is None:
                raise ValueError("a TLS listener needs cert= (and key=, unless the "
                                 "certificate file holds the key)")
            if verify == "peer-name":
                raise ValueError("a listener cannot check client names: verify='peer' "
                                 "requires a client certificate signed by ca=")
            if verify == "peer" and self.ca is None:
                raise ValueError("verify='peer' on a listener needs ca=, the CA file "
                                 "client certificates are checked against")
            if self.peer_name is not None:
                raise ValueError("peer_name is a client setting (SNI and the name checked)")
        elif verify != "peer-name":
            what = "any certificate" if verify == "peer" else "any server, or none at all"
            warnings.warn(f"TLS verify={verify!r}: the server's name is not checked, so "
                          f"{what} is accepted; use it for tests only",
                          InsecureTLSWarning, stacklevel=5)
        return p.TLSConfig(server, _text(self.ca), verify, _text(self.cert), _text(self.key),
                           self.key_password, self.protocols, self.ciphers)


def mechanism_list(mechanisms: str | Sequence[str] | None, what: str) -> str | None:
    """A SASL mechanism list as proton takes it: space-separated, upper case."""
    if mechanisms is None:
        return None
    names = mechanisms.split() if isinstance(mechanisms, str) else list(mechanisms)
    if not names or not all(isinstance(x, str) and x.strip() for x in names):
        raise ValueError(f"{what} must name at least one SASL mechanism, not {mechanisms!r}")
    return " ".join(x.strip().upper() for x in names)


@dataclass(frozen=True)
class ServerSASL:
    """How a listener authenticates the peers that connect to it (through Cyrus SASL).

    - `users`: name -> password; the worker writes them into a private Cyrus sasldb,
      so PLAIN and SCRAM-SHA-1/256/512 work against it.
    - `config_path`: instead, a directory holding your own Cyrus configuration,
      `<config_name>.conf` (its mech_list, sasldb_path, keytab for GSSAPI, ...).
      One configuration per Container: Cyrus reads it once per worker process.
    - `mechanisms`: those offered; default SCRAM-SHA-512/256/1 and PLAIN with `users`,
      the configuration's mech_list with `config_path`. Add EXTERNAL to accept TLS
      client certificates (with `TLS(verify="peer")`), ANONYMOUS to let anyone in.
    - `allow_insecure_mechanisms`: offer PLAIN over a connection without TLS too.
    """

    users: Mapping[str, str] | None = field(default=None, repr=False)
    config_path: str | Path | None = None
    config_name: str = "proton-server"
    mechanisms: str | Sequence[str] | None = None
    allow_insecure_mechanisms: bool = False

    def __post_init__(self) -> None:
        if (self.users is None) == (self.config_path is None) and not self._only_builtin():
            raise ValueError("ServerSASL needs users= or config_path= (one of them), "
                             "unless its mechanisms are only EXTERNAL and ANONYMOUS")
        if self.users is not None:
            if not isinstance(self.users, Mapping) or not self.users:
                raise ValueError("ServerSASL users must be a non-empty mapping of name "
                                 "to password")
            for name, password in self.users.items():
                if not isinstance(name, str) or not name or any(c in name for c in ":\n\0"):
                    raise ValueError(f"ServerSASL user name {name!r} is not a valid name")
                if not isinstance(password, str) or not password or "\n" in password:
                    raise ValueError(f"ServerSASL password of {name!r} must be a non-empty "
                                     "str on one line")
        if self.config_path is not None and not os.path.isdir(self.config_path):
            raise FileNotFoundError(f"ServerSASL config_path {os.fspath(self.config_path)!r} "
                                    "is not a directory")
        mechanism_list(self.mechanisms, "ServerSASL mechanisms")

    def _only_builtin(self) -> bool:
        names = set((mechanism_list(self.mechanisms, "mechanisms") or "").split())
        return bool(names) and names <= {"EXTERNAL", "ANONYMOUS"}

    def wire(self) -> p.ServerSASL:
        mechanisms = mechanism_list(self.mechanisms, "ServerSASL mechanisms")
        if mechanisms is None and self.users is not None:
            mechanisms = p.CREDENTIAL_MECHANISMS
        return p.ServerSASL(
            mechanisms, dict(self.users) if self.users is not None else None,
            os.fspath(self.config_path) if self.config_path is not None else None,
            self.config_name, self.allow_insecure_mechanisms)


def client_options(url: URL, *, tls: TLS | None = None, user: str | None = None,
                   password: str | None = None,
                   sasl_mechanisms: str | Sequence[str] | None = None,
                   allow_insecure_mechanisms: bool = False,
                   authzid: str | None = None) -> dict[str, Any]:
    """connect()'s security arguments, checked, as OpenConnection fields. Credentials in
    the URL count unless given as arguments."""
    if tls is not None and not isinstance(tls, TLS):
        raise TypeError(f"tls must be an amqscale.security.TLS, not {type(tls).__name__}")
    if tls is not None and not url.tls:
        raise ValueError(f"tls= given for {url}: TLS is never implied, use amqps://")
    user = user if user is not None else url.user
    password = password if password is not None else url.password
    for name, value in (("user", user), ("password", password), ("authzid", authzid)):
        if value is not None and not isinstance(value, str):
            raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    if password is not None and not user:
        raise ValueError("a password without a user name")
    if not isinstance(allow_insecure_mechanisms, bool):
        raise TypeError("allow_insecure_mechanisms must be a bool")
    mechanisms = mechanism_list(sasl_mechanisms, "sasl_mechanisms")
    if (mechanisms == "PLAIN" and not url.tls and not allow_insecure_mechanisms):
        raise ValueError(
            f"SASL PLAIN would send the password in cleartext to {url}: use amqps://, a "
            "SCRAM mechanism, or allow_insecure_mechanisms=True")
    wire = (tls or TLS()).wire(server=False) if url.tls else None
    return {"tls": wire, "peer_name": tls.peer_name if tls is not None else None,
            "user": user or None, "password": password, "sasl_mechanisms": mechanisms,
            "allow_insecure_mechanisms": allow_insecure_mechanisms, "authzid": authzid}


def listener_options(url: URL, *, tls: TLS | None = None, sasl: ServerSASL | None = None
                     ) -> dict[str, Any]:
    """listen()'s security arguments, checked, as Listen fields."""
    if tls is not None and not isinstance(tls, TLS):
        raise TypeError(f"tls must be an amqscale.security.TLS, not {type(tls).__name__}")
    if sasl is not None and not isinstance(sasl, ServerSASL):
        raise TypeError(f"sasl must be an amqscale.security.ServerSASL, "
                        f"not {type(sasl).__name__}")
    if url.tls and tls is None:
        raise ValueError(f"listening on {url} needs tls=TLS(cert=..., key=...)")
    if tls is not None and not url.tls:
        raise ValueError(f"tls= given for {url}: use amqps:// to listen with TLS")
    return {"tls": tls.wire(server=True) if tls is not None else None,
            "sasl": sasl.wire() if sasl is not None else None}


# ---- connect.json, as proton's clients read it ------------------------------------------


class ConnectConfigError(ValueError):
    """A connection configuration file (connect.json) that cannot be read as documented:
    bad JSON, an unknown key, a value of the wrong type, settings that contradict each
    other. The message names the file and the key."""


CONNECT_FILE_ENV = "MESSAGING_CONNECT_FILE"

# The keys of each object, and the JSON types each takes (null: as if absent). `enable` is
# the documented spelling, `enabled` proton-python's and rhea's (see load_connect_config).
_TOP_KEYS: dict[str, tuple[type, ...]] = {
    "scheme": (str,), "host": (str,), "port": (int, str), "user": (str,),
    "password": (str,), "sasl": (dict,), "tls": (dict,)}
_SASL_KEYS: dict[str, tuple[type, ...]] = {
    "enable": (bool,), "enabled": (bool,), "mechanisms": (list, str),
    "allow_insecure": (bool,)}
_TLS_KEYS: dict[str, tuple[type, ...]] = {
    "enable": (bool,), "enabled": (bool,), "ca": (str,), "cert": (str,), "key": (str,),
    "verify": (bool,)}
_JSON_TYPES = {str: "a string", int: "a number", dict: "an object", list: "a list",
               bool: "true or false"}
_PORT_NAMES = {"amqp": 5672, "amqps": 5671}


def connect_config_paths() -> list[Path]:
    """Where the connection configuration file is looked for, in order (proton's
    docs/connect-config.md): the file `MESSAGING_CONNECT_FILE` names, if it is set (and
    then only that one); else ./connect.json, ~/.config/messaging/connect.json and
    /etc/messaging/connect.json."""
    named = os.environ.get(CONNECT_FILE_ENV)
    if named:
        return [Path(named)]
    return [Path("connect.json"), Path.home() / ".config" / "messaging" / "connect.json",
            Path("/etc/messaging/connect.json")]


def load_connect_config(path: str | Path | None = None) -> dict[str, Any]:
    """`connect()`'s arguments from a connection configuration file, connect.json.

    The format is the documented one (Qpid Proton's docs/connect-config.md, the AMQ
    clients' "File-based configuration" chapter): a JSON object, with JavaScript comments
    allowed, every key optional, null meaning the default::

        {"scheme": "amqps", "host": "localhost", "port": "amqps",
         "user": null, "password": null,
         "sasl": {"enable": true, "mechanisms": null, "allow_insecure": false},
         "tls": {"ca": null, "cert": null, "key": null, "verify": true}}

    - `scheme` "amqp" or "amqps" (the default); `port` a number, or "amqp" (5672) or
      "amqps" (5671), by default the scheme's; `host` by default localhost.
    - `sasl.mechanisms`: a list of names, or one string of space-separated names.
      `sasl.allow_insecure` (default false): PLAIN may be sent without TLS.
    - `tls` is allowed with scheme amqps only; `verify` false accepts any server
      certificate, or none (it warns, as TLS(verify="none") does).

    Where proton-python 0.40 reads the file otherwise, the documented form wins and
    proton's spelling is accepted too (docs/security.md has the table):

    - `sasl.enable` is documented, proton-python (and rhea) read `sasl.enabled`: both are
      accepted, and must agree when both are given. False (no SASL layer at all) cannot
      be done: amqscale's workers always run SASL (their OpenConnection command has no
      field to leave it out), so it raises NotImplementedError rather than connect
      otherwise than configured.
    - `sasl.allow_insecure` is documented (default false) and ignored by proton-python,
      which always allows PLAIN in cleartext: amqscale honours it, so a file naming
      PLAIN over amqp without it is refused at connect().
    - `tls.enable` / `tls.enabled` is in neither the documentation nor proton-python
      (the scheme alone decides TLS): accepted only when it agrees with the scheme.
    - unknown keys and values of the wrong type raise ConnectConfigError naming the file
      and the key (proton-python ignores the first and fails later on the second).
    - With `MESSAGING_CONNECT_FILE` naming a file that does not exist, or no file at
      all, FileNotFoundError: proton-python connects to amqps://localhost:5671 instead.

    Returns url, and those of user, password, sasl_mechanisms, allow_insecure_mechanisms
    and tls that the file gives (tls: always, for amqps). `path`: read that file instead
    of looking for one (`connect_config_paths()`)."""
    candidates = [Path(path)] if path is not None else connect_config_paths()
    for candidate in candidates:
        if candidate.is_file():
            return _from_connect_json(candidate)
    if path is None and os.environ.get(CONNECT_FILE_ENV):
        raise FileNotFoundError(f"{CONNECT_FILE_ENV} names {str(candidates[0])!r}, which "
                                "is not a file")
    raise FileNotFoundError("no URL given and no connection configuration file: looked at "
                            + ", ".join(str(x) for x in candidates))


def _strip_json_comments(text: str) -> str:
    """JSON with JavaScript comments (/* */ and //) turned into plain JSON; what looks like
    a comment inside a string stays."""
    pattern = re.compile(r'//[^\n]*|/\*.*?\*/|"(?:\\.|[^\\"])*"', re.DOTALL)
    return pattern.sub(lambda m: m.group(0) if m.group(0).startswith('"') else " ", text)


def _checked(section: dict[str, Any], keys: dict[str, tuple[type, ...]], where: str,
             file: str) -> dict[str, Any]:
    """The section's non-null values, each of its key's types; unknown keys refused."""
    unknown = sorted(set(section) - set(keys))
    if unknown:
        name = ", ".join(f"{where}{key}" for key in unknown)
        raise ConnectConfigError(f"{file}: unknown key {name} (the keys of "
                                 f"{where[:-1] or 'the file'}: {', '.join(keys)})")
    values = {}
    for key, value in section.items():
        if value is None:
            continue
        types = keys[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            wanted = " or ".join(_JSON_TYPES[t] for t in types)
            raise ConnectConfigError(f"{file}: {where}{key} must be {wanted}, not "
                                     f"{json.dumps(value)}")
        values[key] = value
    return values


def _enabled(section: dict[str, Any], where: str, file: str) -> bool | None:
    """`enable` (documented) or `enabled` (proton-python's), which must agree."""
    enable, enabled = section.get("enable"), section.get("enabled")
    if enable is not None and enabled is not None and enable != enabled:
        raise ConnectConfigError(f"{file}: {where}enable and {where}enabled disagree")
    return enable if enable is not None else enabled


def _from_connect_json(path: Path) -> dict[str, Any]:
    file = str(path)
    try:
        config = json.loads(_strip_json_comments(path.read_text()))
    except OSError as exc:
        raise ConnectConfigError(f"cannot read the connection configuration {file}: "
                                 f"{exc.strerror or exc}") from None
    except ValueError as exc:
        raise ConnectConfigError(f"{file} is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise ConnectConfigError(f"{file}: the configuration must be a JSON object")
    top = _checked(config, _TOP_KEYS, "", file)
    sasl = _checked(top.get("sasl", {}), _SASL_KEYS, "sasl.", file)
    tls = _checked(top["tls"], _TLS_KEYS, "tls.", file) if "tls" in top else None

    scheme = top.get("scheme", "amqps")
    if scheme not in ("amqp", "amqps"):
        raise ConnectConfigError(f"{file}: scheme must be \"amqp\" or \"amqps\", not "
                                 f"{json.dumps(scheme)}")
    port = _port(top.get("port", scheme), file)
    host = top.get("host", "localhost")
    if not host:
        raise ConnectConfigError(f"{file}: host must not be empty")
    options: dict[str, Any] = {"url": f"{scheme}://{_bracket(host)}:{port}"}
    if top.get("user"):
        options["user"] = top["user"]
    if "password" in top:
        if not top.get("user"):
            raise ConnectConfigError(f"{file}: a password without a user")
        options["password"] = top["password"]

    if _enabled(sasl, "sasl.", file) is False:
        raise NotImplementedError(
            f"{file}: sasl.enable false (no SASL layer) is not supported by amqscale: its "
            "workers always run SASL (ANONYMOUS without a user); remove the key, or set it "
            "true")
    if "mechanisms" in sasl:
        mechanisms = sasl["mechanisms"]
        if isinstance(mechanisms, list) and not all(
                isinstance(x, str) and x.strip() for x in mechanisms):
            raise ConnectConfigError(f"{file}: sasl.mechanisms must be a list of mechanism "
                                     f"names, not {json.dumps(mechanisms)}")
        try:
            options["sasl_mechanisms"] = mechanism_list(mechanisms, "sasl.mechanisms")
        except ValueError as exc:
            raise ConnectConfigError(f"{file}: {exc}") from None
    if "allow_insecure" in sasl:
        options["allow_insecure_mechanisms"] = sasl["allow_insecure"]

    if tls is not None:
        enabled = _enabled(tls, "tls.", file)
        settings = {k: v for k, v in tls.items() if k not in ("enable", "enabled")}
        if scheme == "amqp" and (enabled or settings):
            raise ConnectConfigError(
                f"{file}: a tls section needs scheme \"amqps\" (the scheme is \"amqp\": "
                "TLS is never implied)")
        if scheme == "amqps" and enabled is False:
            raise ConnectConfigError(
                f"{file}: tls.enable false with scheme \"amqps\": for a connection without "
                "TLS set scheme \"amqp\" (amqps never falls back to cleartext)")
    if scheme == "amqps":
        options["tls"] = _connect_tls(tls or {}, file)
    return options


def _port(value: int | str, file: str) -> int:
    number = _PORT_NAMES.get(value) if isinstance(value, str) else value
    if isinstance(value, str) and number is None and value.isdigit():
        number = int(value)
    if not isinstance(number, int) or not 0 < number < 65536:
        raise ConnectConfigError(f"{file}: port must be a number from 1 to 65535, \"amqp\" "
                                 f"or \"amqps\", not {json.dumps(value)}")
    return number


def _connect_tls(tls: dict[str, Any], file: str) -> TLS:
    verify = tls.get("verify", True)
    try:
        return TLS(ca=tls.get("ca"), cert=tls.get("cert"), key=tls.get("key"),
                   verify="peer-name" if verify else "none")
    except (ValueError, OSError) as exc:
        error = ConnectConfigError if isinstance(exc, ValueError) else type(exc)
        raise error(f"{file}: tls: {exc}") from None


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


# ---- explaining a failed certificate check ----------------------------------------------


def explain_verify_failure(host: str, port: int, tls: TLS | None,
                           timeout: float = 3.0) -> str | None:
    """Why the server's certificate was refused, in OpenSSL's words ("certificate has
    expired", "Hostname mismatch ...", "unable to get local issuer certificate").

    proton reports only "certificate verify failed"; this checks the certificate again
    with Python's ssl module over one more connection (made only after a failure).
    None when it cannot tell."""
    tls = tls or TLS()
    context = ssl.create_default_context(cafile=None)
    if tls.ca is not None:
        ca = os.fspath(tls.ca)
        context = ssl.create_default_context(
            cafile=ca if os.path.isfile(ca) else None, capath=ca if os.path.isdir(ca) else None)
    context.check_hostname = (tls.verify or "peer-name") == "peer-name"
    if tls.cert is not None:
        context.load_cert_chain(os.fspath(tls.cert), tls.key and os.fspath(tls.key),
                                tls.key_password)
    name = tls.peer_name or host
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw, \
                context.wrap_socket(raw, server_hostname=name):
            pass
    except ssl.SSLCertVerificationError as exc:
        return str(exc.verify_message)
    except (OSError, ValueError):
        return None
    # Python accepts it: proton's own name check differs (it ignores IP addresses in
    # subjectAltName, and matches DNS names only).
    return (f"no DNS name in the certificate matches {name!r} (proton checks DNS names "
            "and the common name only, not IP addresses in subjectAltName)")
