"""A throw-away MIT Kerberos realm for GSSAPI tests: its own KDC on loopback, stopped by pid.

`KerberosRealm` creates, in its own temporary directory, a realm (`AMQSCALE.TEST` unless
told otherwise) with its own `krb5.conf` and `kdc.conf`, a database made with
`kdb5_util create -s`, a user principal and a service principal (`amqp/localhost@REALM`),
each with a random key and a keytab, and runs `krb5kdc -n` in the foreground as its child,
listening on 127.0.0.1 only (UDP and TCP, one port picked at run time). No kadmind runs. It
needs the Debian packages `krb5-kdc`, `krb5-admin-server` and `krb5-user` (for `kdb5_util`,
`kadmin.local`, `krb5kdc`, `kinit`, `klist`) that `scripts/setup.sh` installs, and for
proton's GSSAPI `libsasl2-modules-gssapi-mit`.

A process joins the realm through `env()`: `KRB5_CONFIG` and `KRB5_KDC_PROFILE` (nothing of
/etc/krb5.conf is read), a file credential cache `KRB5CCNAME`, `KRB5_CLIENT_KTNAME` (the
user's keytab: MIT's GSSAPI gets the user's initial ticket from it by itself, no kinit
needed), `KRB5_KTNAME` (the service keytab), `KRB5RCACHEDIR` (replay cache in the realm's
directory, not /var/tmp), and `PN_SASL_CONFIG_PATH`, the directory of a Cyrus SASL
`proton-server.conf` (`mech_list: GSSAPI`, `keytab: <service keytab>`) for a proton server.

What a proton client and server need (verified by tests/test_kerberos_realm.py):

* The client asks for the service ticket `amqp/<host>`, where host is the connection's
  hostname: the URL's host, or `virtual_host`. `krb5.conf` turns host canonicalisation
  off (`dns_canonicalize_hostname = false`, `rdns = false`), so the name is taken as
  given: connect to `amqp://localhost:PORT`, or to 127.0.0.1 with
  `virtual_host="localhost"` (`amqp://127.0.0.1` alone asks for `amqp/127.0.0.1`, which
  does not exist unless passed in `service_hosts`). proton leaves GSSAPI out of a
  client's mechanisms unless `allowed_mechs` names it.
* Proton's Cyrus server calls `sasl_server_new("amqp", NULL, ...)`, so Cyrus takes the
  machine's own hostname (`amqp/<gethostname()>`) as the acceptor name; `krb5.conf` sets
  `ignore_acceptor_hostname = true` so that any `amqp/*` key in the keytab accepts.
* The server reports the user as the principal without the realm (`amqscale`, not
  `amqscale@AMQSCALE.TEST`) when the realm is its default realm: Cyrus's GSSAPI plugin
  strips it.

Use `with KerberosRealm() as realm:`; at exit the KDC gets SIGTERM (SIGKILL after a bounded
wait) by its pid, and the directory is removed.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path

import psutil

from amqscale.testing._process import (
    LOOPBACK_V4,
    Listener,
    ManagedProcess,
    PeerStartError,
    free_port,
)

SBIN = Path("/usr/sbin")
KRB5KDC = SBIN / "krb5kdc"
KDB5_UTIL = SBIN / "kdb5_util"
KADMIN_LOCAL = SBIN / "kadmin.local"
# A keytab file with no entries: just the format's version header (0x0502).
_EMPTY_KEYTAB = b"\x05\x02"


def _udp_bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_tcp_udp_port(host: str = LOOPBACK_V4) -> int:
    """A port free on `host` now for both TCP and UDP (the KDC listens on both)."""
    for _ in range(100):
        port = free_port((host,))
        if _udp_bindable(host, port):
            return port
    raise PeerStartError(f"no port free for both TCP and UDP on {host}")


def _tool(name: str) -> str:
    """The path of a Kerberos command, or a start error that says what to install."""
    for candidate in (SBIN / name, Path("/usr/bin") / name):
        if candidate.exists():
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise PeerStartError(
            f"{name} not found: install krb5-kdc krb5-admin-server krb5-user (scripts/setup.sh)"
        )
    return found


class KerberosRealm(ManagedProcess):
    """A private MIT Kerberos realm with one KDC (`krb5kdc -n`) on 127.0.0.1, UDP and TCP.

    Principals: `user_principal` (`<user>@REALM`, keytab `client_keytab`) and one service
    principal `<service>/<host>@REALM` per entry of `service_hosts`, all in
    `service_keytab`; `service_principal` is the first (`amqp/localhost@AMQSCALE.TEST`).
    Every key is random. The database's master password is random too and reaches
    `kdb5_util` on its stdin, never in argv; it is kept only in the realm's stash file.
    """

    name = "krb5kdc"
    scheme = "kerberos"
    start_timeout = 30.0
    stop_timeout = 10.0
    tool_timeout = 60.0

    def __init__(
        self,
        realm: str = "AMQSCALE.TEST",
        *,
        user: str = "amqscale",
        service: str = "amqp",
        service_hosts: Sequence[str] = ("localhost",),
        port: int = 0,
        keep_workdir: bool = False,
    ) -> None:
        if not service_hosts:
            raise ValueError("service_hosts must name at least one host")
        for path in (KRB5KDC, KDB5_UTIL, KADMIN_LOCAL):
            if not path.exists():
                raise PeerStartError(
                    f"{path} not found: install krb5-kdc krb5-admin-server krb5-user "
                    "(scripts/setup.sh)"
                )
        super().__init__(port or free_tcp_udp_port(), keep_workdir=keep_workdir)
        self.realm = realm.upper()
        self.user = user
        self.service = service
        self.service_hosts = tuple(service_hosts)

    # Names.
    @property
    def user_principal(self) -> str:
        return f"{self.user}@{self.realm}"

    @property
    def service_principals(self) -> list[str]:
        return [f"{self.service}/{host}@{self.realm}" for host in self.service_hosts]

    @property
    def service_principal(self) -> str:
        return self.service_principals[0]

    @property
    def kdc_address(self) -> str:
        return f"{self.host}:{self.port}"

    # Files (in the realm's directory; they exist while it runs).
    def _path(self, name: str) -> Path:
        if self.workdir is None:
            raise RuntimeError("the Kerberos realm was never started")
        return self.workdir / name

    @property
    def krb5_conf(self) -> Path:
        return self._path("krb5.conf")

    @property
    def kdc_conf(self) -> Path:
        return self._path("kdc.conf")

    @property
    def client_keytab(self) -> Path:
        return self._path("client.keytab")

    @property
    def service_keytab(self) -> Path:
        return self._path("service.keytab")

    @property
    def empty_keytab(self) -> Path:
        """A valid keytab without keys (for clients that must have no credentials)."""
        return self._path("empty.keytab")

    @property
    def ccache(self) -> Path:
        """The file credential cache `env()` names (created by the first ticket)."""
        return self._path("ccache")

    @property
    def sasl_config_dir(self) -> Path:
        """Directory with a Cyrus `proton-server.conf`: `mech_list: GSSAPI`, this keytab."""
        return self._path("sasl")

    def env(self, *, credentials: bool = True) -> dict[str, str]:
        """The environment variables a client or server process of this realm needs.

        Merge them over the process's environment (`{**os.environ, **realm.env()}`).
        `credentials=False` gives a client nothing to authenticate with: a new, empty
        credential cache and a keytab without keys.
        """
        if credentials:
            ccache, client_keytab = self.ccache, self.client_keytab
        else:
            ccache = self._path(f"ccache-none-{secrets.token_hex(4)}")
            client_keytab = self.empty_keytab
        return {
            "KRB5_CONFIG": str(self.krb5_conf),
            "KRB5_KDC_PROFILE": str(self.kdc_conf),
            "KRB5CCNAME": f"FILE:{ccache}",
            "KRB5_CLIENT_KTNAME": f"FILE:{client_keytab}",
            "KRB5_KTNAME": f"FILE:{self.service_keytab}",
            "KRB5RCACHEDIR": str(self._path("rcache")),
            "PN_SASL_CONFIG_PATH": str(self.sasl_config_dir),
        }

    def kinit(
        self,
        principal: str | None = None,
        *,
        keytab: Path | None = None,
        ccache: Path | None = None,
    ) -> None:
        """Get `principal`'s initial ticket (default: the user) from its keytab into `ccache`
        (default: the realm's cache). Not needed for GSSAPI clients, which use the keytab."""
        principal = principal or self.user_principal
        if keytab is None:
            service = principal in self.service_principals
            keytab = self.service_keytab if service else self.client_keytab
        ccache = ccache or self.ccache
        self._run([_tool("kinit"), "-k", "-t", str(keytab), "-c", f"FILE:{ccache}", principal])

    def keytab_principals(self, keytab: Path) -> set[str]:
        """The principals that have keys in `keytab` (from `klist -k`)."""
        out = self._run([_tool("klist"), "-k", str(keytab)])
        found: set[str] = set()
        for line in out.splitlines():
            fields = line.split()
            if len(fields) == 2 and fields[0].isdigit():
                found.add(fields[1])
        return found

    # ManagedProcess.
    def command(self) -> list[str]:
        return [str(KRB5KDC), "-n", "-r", self.realm]

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KRB5")}
        env.update(self.env())
        return env

    def listeners(self) -> list[Listener]:
        return [(self.host, self.port)]

    def is_ready(self, listening: set[Listener]) -> bool:
        if not set(self.listeners()) <= listening:
            return False
        # The UDP socket as well, the KDC's own (krb5 clients try UDP first).
        if self.pid is None:
            return False
        with contextlib.suppress(psutil.Error):
            for conn in psutil.Process(self.pid).net_connections(kind="udp4"):
                if conn.laddr and (conn.laddr.ip, conn.laddr.port) == (self.host, self.port):
                    return True
        return False

    def prepare(self, workdir: Path) -> None:
        if not _udp_bindable(self.host, self.port):
            raise PeerStartError(f"UDP port already in use: {self.host}:{self.port}")
        (workdir / "rcache").mkdir()
        self.sasl_config_dir.mkdir()
        self.krb5_conf.write_text(self._krb5_conf())
        self.kdc_conf.write_text(self._kdc_conf(workdir))
        (workdir / "kadm5.acl").write_text("")
        self.empty_keytab.write_bytes(_EMPTY_KEYTAB)
        (self.sasl_config_dir / "proton-server.conf").write_text(
            f"mech_list: GSSAPI\nkeytab: {self.service_keytab}\n"
        )
        # kdb5_util reads the master password (twice) from stdin when it is no terminal.
        password = secrets.token_urlsafe(24)
        self._run(
            [str(KDB5_UTIL), "-r", self.realm, "create", "-s"],
            stdin=f"{password}\n{password}\n",
        )
        # kadmin.local runs the commands on its stdin; it exits 0 even when one fails, so
        # the keytabs are checked afterwards.
        script = [f"addprinc -randkey {self.user_principal}"]
        script += [f"addprinc -randkey {p}" for p in self.service_principals]
        script.append(f"ktadd -k {self.client_keytab} {self.user_principal}")
        script.append(f"ktadd -k {self.service_keytab} {' '.join(self.service_principals)}")
        self._run([str(KADMIN_LOCAL), "-r", self.realm], stdin="\n".join(script) + "\n")
        for keytab, wanted in (
            (self.client_keytab, {self.user_principal}),
            (self.service_keytab, set(self.service_principals)),
        ):
            missing = wanted - self.keytab_principals(keytab)
            if missing:
                raise PeerStartError(
                    f"kadmin.local left {sorted(missing)} out of {keytab}; log: {self._setup_log}"
                )

    # Internals.
    @property
    def _setup_log(self) -> Path:
        return self._path("setup.log")

    def _run(self, cmd: list[str], *, stdin: str | None = None) -> str:
        """Run one Kerberos tool in the realm's environment (bounded); its stdout."""
        result = subprocess.run(
            cmd,
            cwd=self.workdir,
            env=self.environment(),
            input=stdin if stdin is not None else "",
            capture_output=True,
            text=True,
            timeout=self.tool_timeout,
        )
        with open(self._setup_log, "a") as log:
            log.write(f"$ {' '.join(cmd)}\n{result.stdout}{result.stderr}")
        if result.returncode != 0:
            raise PeerStartError(
                f"{' '.join(cmd)} exited with code {result.returncode}: "
                f"{result.stderr.strip()}; log: {self._setup_log}"
            )
        return result.stdout

    def _krb5_conf(self) -> str:
        domain_realm = "".join(f"  {host} = {self.realm}\n" for host in self.service_hosts)
        return (
            "[libdefaults]\n"
            f"  default_realm = {self.realm}\n"
            f"  default_ccache_name = FILE:{self.ccache}\n"
            "  dns_lookup_kdc = false\n"
            "  dns_lookup_realm = false\n"
            "  dns_canonicalize_hostname = false\n"
            "  rdns = false\n"
            "  ignore_acceptor_hostname = true\n"
            "  spake_preauth_groups = edwards25519\n"
            "\n[realms]\n"
            f"  {self.realm} = {{\n"
            f"    kdc = {self.kdc_address}\n"
            "  }\n"
            "\n[domain_realm]\n"
            f"{domain_realm}"
        )

    def _kdc_conf(self, workdir: Path) -> str:
        return (
            "[kdcdefaults]\n"
            f"  kdc_listen = {self.kdc_address}\n"
            f"  kdc_tcp_listen = {self.kdc_address}\n"
            "\n[realms]\n"
            f"  {self.realm} = {{\n"
            f"    database_name = {workdir / 'principal'}\n"
            f"    key_stash_file = {workdir / 'stash'}\n"
            f"    acl_file = {workdir / 'kadm5.acl'}\n"
            f"    kdc_listen = {self.kdc_address}\n"
            f"    kdc_tcp_listen = {self.kdc_address}\n"
            "  }\n"
            "\n[logging]\n"
            "  kdc = STDERR\n"
            f"  admin_server = FILE:{workdir / 'kadmin.log'}\n"
            f"  default = FILE:{workdir / 'kadmin.log'}\n"
        )
