"""Real AMQP 1.0 peers for amqscale's tests and benchmarks: RabbitMQ, the Proton C broker, rhea.

Each class starts one private server on loopback (127.0.0.1, and ::1 for RabbitMQ) on ports
picked at run time, in its own temporary directory, logging to a file there, and stops it by
pid. They need what `scripts/setup.sh` installs: the Debian packages `rabbitmq-server`,
`libqpid-proton11-dev`, `libqpid-proton11-dev-examples` and `build-essential`, Node.js with
rhea in `tests/peers/node_modules`, and the Python packages `trustme` and
`python-qpid-proton`. Use them as context managers or through the pytest fixtures in
`amqscale.testing.fixtures`; `python -m amqscale.testing.brokers NAME --port N` runs one in
the foreground until Ctrl-C.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from amqscale.testing._process import (
    LOOPBACK_V4,
    LOOPBACK_V6,
    Listener,
    ManagedProcess,
    PeerStartError,
    free_port,
    stop_processes,
)
from amqscale.testing.certs import PKI, Certificates, make_certificates, make_pki

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
PROTON_EXAMPLES = Path("/usr/share/proton/examples/c")
REPO_ROOT = Path(__file__).resolve().parents[2]
RHEA_PEER_SCRIPT = REPO_ROOT / "tests" / "peers" / "rhea_peer.js"
SPEC_BROKER_SCRIPT = REPO_ROOT / "tests" / "peers" / "spec_broker.py"


def cache_dir() -> Path:
    """Where built helper binaries live: `$AMQSCALE_CACHE_DIR`, else `.run/` of the checkout."""
    if "AMQSCALE_CACHE_DIR" in os.environ:
        return Path(os.environ["AMQSCALE_CACHE_DIR"])
    if (REPO_ROOT / "pyproject.toml").exists():
        return REPO_ROOT / ".run"
    return Path.home() / ".cache" / "amqscale"


def _require(path: Path, what: str) -> None:
    if not path.exists():
        raise PeerStartError(f"{what} not found at {path}: run scripts/setup.sh")


def password_hash(password: str) -> str:
    """RabbitMQ's `rabbit_password_hashing_sha256`: base64(salt4 + sha256(salt4 + password))."""
    salt = secrets.token_bytes(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def fetch_stats(url: str, timeout: float) -> dict[str, Any]:
    """What a test peer of ours (rhea's, the spec broker) says at its `$stats` source: one
    message, its body the JSON of its counts. Read with proton-python, not amqscale."""
    from proton.utils import BlockingConnection

    conn = BlockingConnection(url, timeout=timeout)
    try:
        receiver = conn.create_receiver("$stats", name=f"stats-{secrets.token_hex(4)}")
        message = receiver.receive(timeout=timeout)
        receiver.accept()
    finally:
        conn.close()
    if not isinstance(message.body, str):
        raise RuntimeError(f"unexpected $stats body {message.body!r}")
    return dict(json.loads(message.body))


class RabbitMQ(ManagedProcess):
    """A private RabbitMQ 3.10.8 node with the AMQP 1.0 plugin, on loopback only.

    Its own HOME (Erlang cookie), config, Mnesia and log directories, node name
    `amqscale-<random>@localhost`, and its own epmd on a free port bound to loopback, so it
    never meets a system node or a system epmd. Listeners: AMQP on 127.0.0.1 and ::1 at
    `port`, TLS at `tls_port` (server certificate for localhost/127.0.0.1/::1 signed by the
    CA at `ca_path`). Connections without credentials (SASL ANONYMOUS, or none) act as
    `guest`; PLAIN works with `user`/`password` and with guest/guest from loopback.

    Its certificates come from one test PKI, `pki` (`amqscale.testing.certs.make_pki`):
    the server's is `pki.server`, and `pki.client` (CN `cert_user`, a user with all
    permissions on `/` and no password) is a client certificate from the same CA.

    `external=True` adds SASL EXTERNAL (plugin `rabbitmq_auth_mechanism_ssl`): the TLS
    listener asks for a client certificate without requiring one (a certificate from
    another CA fails the handshake), and EXTERNAL logs the client in as the user its
    certificate's CN names. Off by default because the node then offers EXTERNAL on every
    TLS connection, and a proton client that names no mechanism picks it even without a
    certificate (its Cyrus client takes the server's certificate subject for its own
    external identity) and is refused: such clients must then ask for ANONYMOUS, or
    give a user and password. amqscale's client asks for EXTERNAL only when told to.

    Quirk seen here beyond PEERS.md: it answers a link's detach(closed=true) with
    detach(closed=false), so proton's `BlockingSender.close()` times out; close the
    connection instead.

    Queues: an attach to `/queue/NAME` declares NAME (durable); `declare_queue` does exactly
    that, `list_queues` and `delete_queue` go through rabbitmqctl (about a second each).
    """

    name = "rabbitmq"
    start_timeout = 120.0
    stop_timeout = 30.0
    user = "amqscale"
    password = "amqscale-secret"
    cert_user = "amqscale-client"  # the CN of `pki.client`: SASL EXTERNAL's user

    def __init__(self, port: int = 0, *, tls_port: int = 0, external: bool = False,
                 keep_workdir: bool = False) -> None:
        _require(RABBITMQ_BIN / "rabbitmq-server", "rabbitmq-server")
        super().__init__(port, keep_workdir=keep_workdir)
        self.external = external
        self.tls_port = tls_port or free_port()
        self.dist_port = free_port()
        self.epmd_port = free_port()
        self.nodename = f"amqscale-{secrets.token_hex(4)}@localhost"
        self.certificates: Certificates | None = None
        self.pki: PKI | None = None
        self._epmd: subprocess.Popen[bytes] | None = None

    @property
    def tls_url(self) -> str:
        return f"amqps://{self.host}:{self.tls_port}"

    @property
    def ca_path(self) -> Path:
        if self.certificates is None:
            raise RuntimeError("rabbitmq was never started")
        return self.certificates.ca

    def listeners(self) -> list[Listener]:
        return [
            (LOOPBACK_V4, self.port),
            (LOOPBACK_V6, self.port),
            (LOOPBACK_V4, self.tls_port),
            (LOOPBACK_V4, self.dist_port),
            (LOOPBACK_V4, self.epmd_port),
        ]

    def is_ready(self, listening: set[Listener]) -> bool:
        # epmd is a separate process (not in the node's tree): only the node's own sockets.
        # Listeners open just before boot ends: wait for the banner's last line as well.
        if not set(self.listeners()[:3]) <= listening:
            return False
        with contextlib.suppress(OSError):
            return b"Starting broker... completed" in self.log_path.read_bytes()
        return False

    def command(self) -> list[str]:
        return [str(RABBITMQ_BIN / "rabbitmq-server")]

    def environment(self) -> dict[str, str]:
        assert self.workdir is not None
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            HOME=str(self.workdir / "home"),
            LANG="C.UTF-8",
            LC_ALL="C.UTF-8",
            RABBITMQ_CONF_ENV_FILE=str(self.workdir / "rabbitmq-env.conf"),
            ERL_EPMD_ADDRESS=f"{LOOPBACK_V4},{LOOPBACK_V6}",
            ERL_EPMD_PORT=str(self.epmd_port),
            ERL_INETRC=str(self.workdir / "inetrc"),
        )
        return env

    def prepare(self, workdir: Path) -> None:
        for sub in ("home", "mnesia", "log", "conf.d"):
            (workdir / sub).mkdir()
        self.pki = make_pki(workdir / "certs", client_name=self.cert_user)
        self.certificates = Certificates(self.pki.ca, self.pki.server.cert, self.pki.server.key)
        plugins = ["rabbitmq_amqp1_0"]
        if self.external:
            plugins.append("rabbitmq_auth_mechanism_ssl")
        (workdir / "enabled_plugins").write_text(f"[{','.join(plugins)}].\n")
        (workdir / "definitions.json").write_text(json.dumps(self._definitions(), indent=1))
        (workdir / "rabbitmq.conf").write_text(self._config(workdir))
        (workdir / "rabbitmq-env.conf").write_text(self._env_config(workdir))
        (workdir / "inetrc").write_text(self._inetrc())
        self._start_epmd(workdir)

    def _env_config(self, workdir: Path) -> str:
        erl_args = "-kernel inet_dist_use_interface {127,0,0,1}"
        return "\n".join(
            [
                f"NODENAME={self.nodename}",
                f"CONFIG_FILE={workdir / 'rabbitmq.conf'}",
                f"CONFIG_FILES={workdir / 'conf.d'}",
                f"ADVANCED_CONFIG_FILE={workdir / 'advanced.config'}",
                f"ENABLED_PLUGINS_FILE={workdir / 'enabled_plugins'}",
                f"MNESIA_BASE={workdir / 'mnesia'}",
                f"LOG_BASE={workdir / 'log'}",
                f"PID_FILE={workdir / 'rabbitmq.pid'}",
                f"DIST_PORT={self.dist_port}",
                f'SERVER_ADDITIONAL_ERL_ARGS="{erl_args}"',
                f'CTL_ERL_ARGS="{erl_args}"',
                "",
            ]
        )

    @staticmethod
    def _inetrc() -> str:
        """Erlang name resolution from this table only: no DNS query ever leaves the machine.

        Without it the node asks the system's name server, e.g. for the reverse name of ::1
        when it opens the ::1 listener (not in /etc/hosts), and may wait on its time-out.
        """
        names = ", ".join(f'"{n}"' for n in dict.fromkeys(["localhost", socket.gethostname()]))
        return "\n".join(
            [
                "{lookup, [file]}.",
                f"{{host, {{127,0,0,1}}, [{names}]}}.",
                '{host, {0,0,0,0,0,0,0,1}, ["localhost"]}.',
                "",
            ]
        )

    def _config(self, workdir: Path) -> str:
        assert self.certificates is not None
        certs = self.certificates
        # EXTERNAL: ask for a client certificate (verified), require none.
        verify = "verify_peer" if self.external else "verify_none"
        # ANONYMOUS is the AMQP 1.0 plugin's own (offered while amqp1_0.default_user is
        # set), not one of auth_mechanisms.
        mechanisms = ["PLAIN", "AMQPLAIN", "EXTERNAL"] if self.external else ["PLAIN", "AMQPLAIN"]
        return "\n".join(
            [
                f"listeners.tcp.1 = {LOOPBACK_V4}:{self.port}",
                f"listeners.tcp.2 = {LOOPBACK_V6}:{self.port}",
                f"listeners.ssl.1 = {LOOPBACK_V4}:{self.tls_port}",
                f"ssl_options.cacertfile = {certs.ca}",
                f"ssl_options.certfile = {certs.cert}",
                f"ssl_options.keyfile = {certs.key}",
                f"ssl_options.verify = {verify}",
                "ssl_options.fail_if_no_peer_cert = false",
                *(f"auth_mechanisms.{i} = {name}" for i, name in enumerate(mechanisms, 1)),
                "ssl_cert_login_from = common_name",
                f"load_definitions = {workdir / 'definitions.json'}",
                "amqp1_0.default_user = guest",
                "loopback_users.guest = true",
                "disk_free_limit.absolute = 50MB",
                "log.file.level = info",
                "",
            ]
        )

    def _definitions(self) -> dict[str, Any]:
        users = {"guest": "guest", self.user: self.password}
        password_users = [
            {
                "name": name,
                "password_hash": password_hash(password),
                "hashing_algorithm": "rabbit_password_hashing_sha256",
                "tags": ["administrator"],
            }
            for name, password in users.items()
        ]
        # No password hash: this user can log in with its certificate (EXTERNAL) only.
        cert_user = {
            "name": self.cert_user,
            "password_hash": "",
            "hashing_algorithm": "rabbit_password_hashing_sha256",
            "tags": [],
        }
        return {
            "users": [*password_users, cert_user],
            "vhosts": [{"name": "/"}],
            "permissions": [
                {"user": name, "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}
                for name in [*users, self.cert_user]
            ],
        }

    def _start_epmd(self, workdir: Path) -> None:
        """Our own epmd (foreground, so its pid is ours): the node registers with it."""
        with open(workdir / "epmd.log", "ab") as log:
            self._epmd = subprocess.Popen(
                ["epmd", "-port", str(self.epmd_port), "-address", f"{LOOPBACK_V4},{LOOPBACK_V6}"],
                cwd=workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def extra_processes(self) -> list[psutil.Process]:
        """Our epmd, and any other epmd on our epmd port (one the node started itself)."""
        procs: dict[int, psutil.Process] = {}
        if self._epmd is not None and self._epmd.poll() is None:
            with contextlib.suppress(psutil.Error):
                procs[self._epmd.pid] = psutil.Process(self._epmd.pid)
        try:
            conns = psutil.net_connections(kind="inet")
        except psutil.AccessDenied:  # not root: our own epmd is all we can find
            conns = []
        for conn in conns:
            if conn.laddr and conn.laddr.port == self.epmd_port and conn.pid:
                with contextlib.suppress(psutil.Error):
                    proc = psutil.Process(conn.pid)
                    if proc.name() == "epmd":
                        procs[conn.pid] = proc
        return list(procs.values())

    def stop(self) -> None:
        super().stop()
        if self._epmd is not None and self._epmd.poll() is None:
            # Normally ended by the base class (extra_processes); never wait unbounded.
            stop_processes([psutil.Process(self._epmd.pid)], self.stop_timeout)
        if self._epmd is not None:
            self._epmd.wait(timeout=self.stop_timeout)

    # Helpers for tests.
    def rabbitmqctl(self, *args: str, timeout: float = 60.0) -> str:
        """Run `rabbitmqctl -n NODE ARGS` against this node and return its stdout."""
        result = subprocess.run(
            [str(RABBITMQ_BIN / "rabbitmqctl"), "-n", self.nodename, *args],
            env=self.environment(),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        if result.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    def declare_queue(self, name: str, durable: bool = False) -> None:
        """Make queue `name` exist: an AMQP 1.0 attach to `/queue/NAME` declares it, a
        durable one (surviving a restart of the node) if the target is durable."""
        from proton import Terminus
        from proton.reactor import SenderOption
        from proton.utils import BlockingConnection

        class DurableTarget(SenderOption):
            def apply(self, sender: Any) -> None:
                sender.target.durability = Terminus.DELIVERIES

        conn = BlockingConnection(self.url, timeout=30)
        try:
            conn.create_sender(f"/queue/{name}", name=f"declare-{secrets.token_hex(4)}",
                               options=DurableTarget() if durable else None)
        finally:
            conn.close()

    def list_queues(self) -> dict[str, int]:
        """Queue name -> number of messages ready or unacknowledged, from rabbitmqctl."""
        out = self.rabbitmqctl("list_queues", "-q", "--formatter", "json", "name", "messages")
        return {row["name"]: int(row["messages"]) for row in json.loads(out or "[]")}

    def delete_queue(self, name: str) -> None:
        self.rabbitmqctl("delete_queue", name)


@dataclass(frozen=True)
class ProtonExamples:
    """Built Proton C examples: `broker HOST PORT`, `send HOST PORT ADDRESS COUNT` (sends
    COUNT messages, body map {"sequence": I}, id I, waits for each to be accepted) and
    `receive HOST PORT ADDRESS COUNT` (prints each body, then "N messages received")."""

    broker: Path
    send: Path
    receive: Path


def _build(source: Path, output_dir: Path, stem: str,
           replace: tuple[tuple[str, str], ...] = ()) -> Path:
    """Compile one example (with each (old, new) text of `replace` replaced), cached by
    content hash."""
    text = source.read_text()
    for old, new in replace:
        if old not in text:
            raise PeerStartError(f"{source} has no {old!r} to replace")
        text = text.replace(old, new)
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    binary = output_dir / f"{stem}-{digest}"
    if binary.exists():
        return binary
    output_dir.mkdir(parents=True, exist_ok=True)
    src = output_dir / f"{stem}-{digest}.{os.getpid()}.c"
    tmp = output_dir / f"{stem}-{digest}.{os.getpid()}.tmp"
    src.write_text(text)
    cmd = ["gcc", "-O2", "-o", str(tmp), str(src), f"-I{PROTON_EXAMPLES}"]
    cmd += ["-lqpid-proton", "-lpthread"]
    result = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    src.unlink()
    if result.returncode != 0:
        raise PeerStartError(f"building {source.name} failed:\n{result.stderr}")
    os.replace(tmp, binary)  # atomic: concurrent builders never see half a binary
    return binary


# broker.c's PN_DELIVERY handler grows its buffer by what is pending but reads it into the
# buffer's start: a message whose transfer frames arrive in more than one batch of events
# (a large one whose last part comes a little later) keeps only its last piece in front,
# then stale bytes. The fix reads each piece after the ones before it.
BROKER_PIECE_READ = ("recv = pn_link_recv(l, m->start, m->size);",
                     "recv = pn_link_recv(l, m->start + m->size - size, size);")


def build_proton_examples(window: int = 1000, directory: Path | None = None, *,
                          stock_receive: bool = False) -> ProtonExamples:
    """Build (once, cached) the C broker with a credit window of `window`, and send/receive.
    The broker is built with BROKER_PIECE_READ fixed unless `stock_receive`."""
    _require(PROTON_EXAMPLES / "broker.c", "the Proton C examples")
    out = directory or cache_dir() / "proton-examples"
    window_line = ("const int WINDOW=5;", f"const int WINDOW={int(window)};")
    replace = (window_line,) if stock_receive else (window_line, BROKER_PIECE_READ)
    stem = f"broker-w{window}" + ("-stock" if stock_receive else "")
    return ProtonExamples(
        broker=_build(PROTON_EXAMPLES / "broker.c", out, stem, replace),
        send=_build(PROTON_EXAMPLES / "send.c", out, "send"),
        receive=_build(PROTON_EXAMPLES / "receive.c", out, "receive"),
    )


def build_c_example(name: str) -> Path:
    """Build (once, cached beside build_proton_examples') the Proton C example `name`
    unchanged, e.g. "direct" (`direct HOST PORT ADDRESS COUNT`: listens, receives COUNT
    messages, accepting each, then exits), and return the binary's path."""
    source = PROTON_EXAMPLES / f"{name}.c"
    _require(source, f"the Proton C example {name}.c")
    return _build(source, cache_dir() / "proton-examples", name)


class ProtonCBroker(ManagedProcess):
    """The Qpid Proton C example broker (`broker.c`), built with a chosen credit window.

    Any address is a queue, created on first use. amqp and amqps share `port` (TLS with a
    certificate signed by the CA at `ca_path`). Quirks: deliveries to receivers are
    pre-settled, SASL is ANONYMOUS only, a link with a null address crashes it. As shipped
    it corrupts a message whose frames arrive in more than one batch (BROKER_PIECE_READ):
    it is built with that fixed unless `stock_receive`. `send_path` and `receive_path` are
    the C send/receive examples, for interop tests and native baselines.
    """

    name = "proton-c-broker"
    start_timeout = 30.0

    def __init__(self, port: int = 0, *, window: int = 1000, keep_workdir: bool = False,
                 stock_receive: bool = False) -> None:
        super().__init__(port, keep_workdir=keep_workdir)
        self.window = window
        self.examples = build_proton_examples(window, stock_receive=stock_receive)
        self.certificates: Certificates | None = None

    @property
    def send_path(self) -> Path:
        return self.examples.send

    @property
    def receive_path(self) -> Path:
        return self.examples.receive

    @property
    def tls_url(self) -> str:
        return f"amqps://{self.host}:{self.port}"

    @property
    def ca_path(self) -> Path:
        if self.certificates is None:
            raise RuntimeError("the broker was never started")
        return self.certificates.ca

    def prepare(self, workdir: Path) -> None:
        # broker.c loads ssl-certs/tserver-{certificate,private-key}.pem from its cwd.
        self.certificates = make_certificates(workdir / "ssl-certs")
        self.certificates.cert.rename(workdir / "ssl-certs" / "tserver-certificate.pem")
        self.certificates.key.rename(workdir / "ssl-certs" / "tserver-private-key.pem")

    def command(self) -> list[str]:
        return [str(self.examples.broker), self.host, str(self.port)]


class RheaPeer(ManagedProcess):
    """A listening rhea peer (`tests/peers/rhea_peer.js`): a sink and a source.

    Senders: every message is accepted and counted per target address (the first `record`
    ids and bodies of each address are kept). Receivers: source `count/N` (or
    `count/N/size/B`) gets N messages, body "message-I" and id I; other addresses are
    endless. `stats()` asks the running peer for its counts; `summary()` reads the counts it
    wrote when stopped. Name links uniquely: rhea drops a connection whose session has a
    sender and a receiver with the same link name.

    `record_full=N` keeps the first N messages of each address whole (every field, in the
    address's "messages"); `outcomes="outcome"` settles each message whose application
    property `outcome` is set as it says: accept, reject, release or modify (the header
    comment of rhea_peer.js tells which other properties it reads).
    """

    name = "rhea"
    start_timeout = 30.0

    def __init__(self, port: int = 0, *, record: int = 0, record_full: int = 0,
                 outcomes: str | None = None, keep_workdir: bool = False) -> None:
        _require(RHEA_PEER_SCRIPT.parent / "node_modules" / "rhea", "rhea (npm)")
        if shutil.which("node") is None:
            raise PeerStartError("node not found: run scripts/setup.sh")
        super().__init__(port, keep_workdir=keep_workdir)
        self.record = record
        self.record_full = record_full
        self.outcomes = outcomes
        self._summary: dict[str, Any] | None = None

    def command(self) -> list[str]:
        assert self.workdir is not None
        cmd = [
            "node",
            str(RHEA_PEER_SCRIPT),
            "--host", self.host,
            "--port", str(self.port),
            "--record", str(self.record),
            "--summary", str(self.workdir / "summary.json"),
        ]  # fmt: skip
        if self.record_full:
            cmd += ["--record-full", str(self.record_full)]
        if self.outcomes:
            cmd += ["--outcomes", self.outcomes]
        return cmd

    def stats(self, timeout: float = 30.0) -> dict[str, Any]:
        """The peer's counts now: {"received", "sent", "addresses": {ADDR: {...}}}."""
        return fetch_stats(self.url, timeout)

    def on_stopped(self, workdir: Path) -> None:
        # SIGTERM made the peer write its counts: keep them past the directory's removal.
        with contextlib.suppress(OSError, ValueError):
            self._summary = json.loads((workdir / "summary.json").read_text())

    def summary(self) -> dict[str, Any] | None:
        """The counts the peer wrote on SIGTERM (None before `stop`, or if it was killed)."""
        return self._summary


class SpecBroker(ManagedProcess):
    """The AMQP 1.0 test broker on proton-python's engine (`tests/peers/spec_broker.py`).

    Queues (move and browse), topics with durable and shared subscriptions, JMS selectors,
    dynamic nodes, the anonymous relay, drain, local transactions and every outcome, all in
    memory; its docstring is the contract. `refuse_coordinator=True` refuses transactions;
    `window` is the credit it gives to senders. `stats()` returns its state: "queues"
    {ADDR: depth}, "topics" {ADDR: [subscription]}, "subscriptions" {NAME: depth},
    "dead_letter", "transactions" {"declared", "committed", "aborted", "open"} and
    "connections" (what each client sent in its open and attaches).
    """

    name = "spec-broker"
    start_timeout = 30.0

    def __init__(
        self,
        port: int = 0,
        *,
        window: int = 100,
        refuse_coordinator: bool = False,
        keep_workdir: bool = False,
    ) -> None:
        _require(SPEC_BROKER_SCRIPT, "the spec broker script")
        super().__init__(port, keep_workdir=keep_workdir)
        self.window = window
        self.refuse_coordinator = refuse_coordinator

    def command(self) -> list[str]:
        cmd = [
            sys.executable,
            str(SPEC_BROKER_SCRIPT),
            "--host", self.host,
            "--port", str(self.port),
            "--window", str(self.window),
        ]  # fmt: skip
        return cmd + (["--refuse-coordinator"] if self.refuse_coordinator else [])

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def stats(self, timeout: float = 30.0) -> dict[str, Any]:
        """The broker's state now (see the class docstring for the keys)."""
        return fetch_stats(self.url, timeout)


PEERS: dict[str, type[ManagedProcess]] = {
    "rabbitmq": RabbitMQ,
    "proton-c": ProtonCBroker,
    "rhea": RheaPeer,
    "spec-broker": SpecBroker,
}


def _describe(peer: ManagedProcess) -> str:
    lines = [f"{peer.name} ready in {peer.started_in:.1f} s: {peer.url} (pid {peer.pid})"]
    if isinstance(peer, RabbitMQ):
        lines.append(f"  TLS {peer.tls_url}, CA {peer.ca_path}")
        lines.append(f"  PLAIN {peer.user}/{peer.password}; node {peer.nodename}")
        if peer.pki is not None and peer.external:
            lines.append(f"  EXTERNAL as {peer.cert_user}: client certificate "
                         f"{peer.pki.client.cert}, key {peer.pki.client.key}")
    if isinstance(peer, ProtonCBroker):
        lines.append(f"  window {peer.window}; send {peer.send_path}; receive {peer.receive_path}")
    lines.append(f"  log {peer.log_path}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run one peer in the foreground until Ctrl-C (or SIGTERM), then stop it."""
    parser = argparse.ArgumentParser(prog="python -m amqscale.testing.brokers")
    parser.add_argument("peer", choices=sorted(PEERS))
    parser.add_argument("--port", type=int, default=0, help="AMQP port (default: a free one)")
    parser.add_argument("--window", type=int, default=1000, help="proton-c: credit window")
    args = parser.parse_args(argv)
    if args.peer == "proton-c":
        peer: ManagedProcess = ProtonCBroker(args.port, window=args.window)
    else:
        peer = PEERS[args.peer](args.port)
    # Started in the background by a non-interactive shell, SIGINT arrives ignored: restore it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with peer:
        print(_describe(peer), flush=True)
        try:
            while peer.running:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        print(f"stopping {peer.name}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
