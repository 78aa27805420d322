"""Cyrus SASL's server configuration for a worker's listeners.

Cyrus reads its configuration once per process, from the directory of the first
`pn_sasl_config_path` call (or `PN_SASL_CONFIG_PATH`); later calls are ignored. So the
first listener of a worker decides it for the worker's life:

- a ServerSASL with `config_path`: the user's own directory;
- else, with PN_SASL_CONFIG_PATH set and no `users`: that;
- else amqscale's own: a private directory (mode 0700) holding `proton-server.conf` and a
  sasldb that `users` are written into with `saslpasswd2` (the password on its stdin,
  never argv). Cyrus reads the sasldb at each authentication, so a later listener's users
  are added to it; they share it (one user list per Container).

Each listener then offers only its own mechanisms (pn_sasl_allowed_mechs).
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile

from cproton_ffi import lib

from . import protocol as p

SASLPASSWD2 = "/usr/sbin/saslpasswd2"
CONFIG_NAME = "proton-server"
# Everything a listener may offer; each listener narrows it with its own mechanisms.
OWN_MECHANISMS = ("SCRAM-SHA-512 SCRAM-SHA-384 SCRAM-SHA-256 SCRAM-SHA-224 SCRAM-SHA-1 "
                  "PLAIN EXTERNAL ANONYMOUS GSSAPI")


def own_directories(pid: int) -> list[str]:
    """The private configuration directories worker `pid` made (they hold passwords):
    the user's process removes them once the worker has exited, however it ended."""
    return glob.glob(os.path.join(tempfile.gettempdir(), f"amqscale-sasl-{pid}-*"))


def remove_own_directories(pid: int) -> None:
    for directory in own_directories(pid):
        shutil.rmtree(directory, ignore_errors=True)


def remove_stale_directories() -> None:
    """Remove the directories of workers that are gone without their parent having
    removed them (both were killed): their pid is no process of ours any more."""
    pattern = os.path.join(tempfile.gettempdir(), "amqscale-sasl-*-*")
    for directory in glob.glob(pattern):
        pid = os.path.basename(directory).split("-")[2]
        if not pid.isdigit() or os.stat(directory).st_uid != os.getuid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(directory, ignore_errors=True)
        except PermissionError:
            pass  # a live process of another user's: not ours


class CyrusConfigError(Exception):
    """A listener's ServerSASL cannot work with the worker's Cyrus configuration."""


def server_realm() -> str:
    """The realm Cyrus's server puts on a user name without one: the host's canonical
    name, lowercased (Cyrus's get_fqhostname). saslpasswd2's default differs (the bare
    host name), so users are written with this realm explicitly."""
    host = socket.gethostname()
    if "." not in host:
        with contextlib.suppress(OSError):
            host = socket.getaddrinfo(host, None, flags=socket.AI_CANONNAME,
                                      type=socket.SOCK_STREAM)[0][3] or host
    return host.lower()


def _set_config(path: str, name: str) -> None:
    """Point this process's Cyrus at `path`/`name` (first call wins: before any
    server transport authenticates)."""
    transport = lib.pn_transport()
    try:
        sasl = lib.pn_sasl(transport)
        lib.pn_sasl_config_path(sasl, path.encode())
        lib.pn_sasl_config_name(sasl, name.encode())
    finally:
        lib.pn_decref(transport)


class CyrusServer:
    """The worker's Cyrus server configuration, decided by its first listener."""

    def __init__(self) -> None:
        self.source: str | None = None  # "user", "environment" or "own", once decided
        self.path: str | None = None
        self.name = CONFIG_NAME
        self.users: dict[str, str] = {}
        self._sasldb: str | None = None

    def apply(self, sasl: p.ServerSASL | None) -> None:
        """Make the configuration serve `sasl` (a listener's), deciding it if this is
        the worker's first listener; CyrusConfigError if it cannot."""
        if self.source is None:
            self._decide(sasl)
        if sasl is None:
            return
        if sasl.config_path is not None and (
                self.source != "user" or os.path.realpath(sasl.config_path) != self.path):
            raise CyrusConfigError(
                f"config_path {sasl.config_path!r}: this Container's listeners already use "
                f"{self._describe()}; Cyrus reads one configuration per process, so give "
                "config_path on the first listener (and the same on every other)")
        if sasl.users:
            if self.source != "own":
                raise CyrusConfigError(
                    f"users= needs amqscale's own Cyrus configuration, but this Container "
                    f"uses {self._describe()}: add the users to its sasldb instead")
            self._add_users(sasl.users)

    def _describe(self) -> str:
        if self.source == "own":
            return "amqscale's own configuration (users=)"
        return f"the configuration in {self.path!r} ({self.source})"

    def _decide(self, sasl: p.ServerSASL | None) -> None:
        if sasl is not None and sasl.config_path is not None:
            self.source, self.path = "user", os.path.realpath(sasl.config_path)
            self.name = sasl.config_name
            _set_config(self.path, self.name)
        elif os.environ.get("PN_SASL_CONFIG_PATH") and not (sasl is not None and sasl.users):
            self.source, self.path = "environment", os.environ["PN_SASL_CONFIG_PATH"]
        else:
            self.source, self.path = "own", self._write_own()
            _set_config(self.path, self.name)

    def _write_own(self) -> str:
        remove_stale_directories()
        directory = tempfile.mkdtemp(prefix=f"amqscale-sasl-{os.getpid()}-")  # mode 0700
        atexit.register(shutil.rmtree, directory, True)  # and remove_own_directories
        self._sasldb = os.path.join(directory, "users.sasldb")
        config = os.path.join(directory, f"{CONFIG_NAME}.conf")
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(f"mech_list: {OWN_MECHANISMS}\npwcheck_method: auxprop\n"
                       f"auxprop_plugin: sasldb\nsasldb_path: {self._sasldb}\n")
        return directory

    def _add_users(self, users: dict[str, str]) -> None:
        realm = server_realm()  # one host-name lookup for the lot
        for name, password in users.items():
            known = self.users.get(name)
            if known == password:
                continue
            if known is not None:
                raise CyrusConfigError(
                    f"user {name!r} is already a user of another listener of this Container, "
                    "with another password (the listeners share one user list)")
            self._saslpasswd2(name, password, realm)
            self.users[name] = password

    def _saslpasswd2(self, name: str, password: str, realm: str) -> None:
        if not os.path.exists(SASLPASSWD2):
            raise CyrusConfigError(f"{SASLPASSWD2} not found: install Debian's sasl2-bin")
        assert self._sasldb is not None
        result = subprocess.run(
            [SASLPASSWD2, "-c", "-p", "-f", self._sasldb, "-u", realm, name],
            input=password.encode(), capture_output=True, timeout=30, check=False)
        if result.returncode:
            raise CyrusConfigError(f"saslpasswd2 could not add user {name!r}: "
                                   f"{result.stderr.decode(errors='replace').strip()}")
