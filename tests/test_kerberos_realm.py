"""GSSAPI SASL between proton-python peers, in a throw-away Kerberos realm (KerberosRealm).

The peers are plain python-qpid-proton (no amqscale code), each in its own process: Cyrus
SASL's server initialisation in proton is process-global (the config path and name are
set once, first caller wins), and the Kerberos environment differs per peer. What works:

* Server: `Container.listen("127.0.0.1:PORT")` in a process with `realm.env()`, i.e.
  `PN_SASL_CONFIG_PATH=<dir>` holding `proton-server.conf` with `mech_list: GSSAPI` and
  `keytab: <service keytab>` (Cyrus hands it to GSSAPI; `KRB5_KTNAME` alone works too),
  and `KRB5_CONFIG` with `ignore_acceptor_hostname = true` (proton's Cyrus server names
  no host, so Cyrus uses the machine's hostname: `amqp/<gethostname()>`).
* Client: `allowed_mechs="GSSAPI"` (proton leaves GSSAPI out otherwise), host `localhost`
  (`virtual_host="localhost"` with a 127.0.0.1 URL): the client asks for
  `amqp/<connection hostname>@REALM`. `KRB5_CLIENT_KTNAME` gets its ticket, no kinit.
* The server sees `sasl.user == transport.user == "amqscale"`: the principal
  `amqscale@AMQSCALE.TEST` without the default realm; `sasl.mech == "GSSAPI"`.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from amqscale.testing._process import LOOPBACK_V4, free_port
from amqscale.testing.kerberos import KerberosRealm

# One proton-python peer, `server URL` or `client URL MECHS VHOST` ("" for none). It prints
# one JSON object a line for what it sees and exits after its one connection (or 30 s).
PEER = r"""
import json, sys
from proton import Message
from proton.handlers import MessagingHandler
from proton.reactor import Container

def emit(**fields):
    print(json.dumps(fields), flush=True)

def emit_error(event):
    cond = event.transport.condition
    emit(event="error", name=cond and cond.name, description=cond and cond.description)

class Deadline:
    def on_timer_task(self, event):
        emit(event="timeout")
        event.container.stop()

class Server(MessagingHandler):
    def __init__(self, url):
        super().__init__()
        self.url = url
    def on_start(self, event):
        self.acceptor = event.container.listen(self.url)
        event.container.schedule(30, Deadline())
        emit(event="listening")
    def on_connection_opened(self, event):
        sasl = event.transport.sasl()
        emit(event="authenticated", user=sasl.user, mech=sasl.mech,
             transport_user=event.connection.transport.user,
             hostname=event.connection.remote_hostname)
    def on_message(self, event):
        emit(event="message", body=event.message.body)
    def on_transport_error(self, event):
        emit_error(event)
    def on_transport_closed(self, event):
        self.acceptor.close()
        event.container.stop()

class Client(MessagingHandler):
    def __init__(self, url, mechs, vhost):
        super().__init__()
        self.url, self.mechs, self.vhost = url, mechs, vhost
        self.sent = False
    def on_start(self, event):
        options = {"reconnect": False}
        if self.mechs:
            options["allowed_mechs"] = self.mechs
        if self.vhost:
            options["virtual_host"] = self.vhost
        conn = event.container.connect(self.url, **options)
        event.container.create_sender(conn, "kerberos-test")
        event.container.schedule(30, Deadline())
    def on_connection_opened(self, event):
        emit(event="opened", mech=event.transport.sasl().mech)
    def on_sendable(self, event):
        if not self.sent:
            event.sender.send(Message(body="over GSSAPI"))
            self.sent = True
    def on_accepted(self, event):
        emit(event="accepted")
        event.connection.close()
    def on_transport_error(self, event):
        emit_error(event)
    def on_transport_closed(self, event):
        event.container.stop()

if sys.argv[1] == "server":
    Container(Server(sys.argv[2])).run()
else:
    Container(Client(*sys.argv[2:5])).run()
"""

Events = list[dict[str, Any]]


@pytest.fixture(scope="module")
def realm() -> Iterator[KerberosRealm]:
    with KerberosRealm() as kdc:
        yield kdc


def _env(realm: KerberosRealm, *, credentials: bool = True, **extra: str) -> dict[str, str]:
    """This process's environment without Kerberos/proton variables, plus the realm's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KRB5", "PN_"))}
    env.update(realm.env(credentials=credentials))
    env.update(extra)
    return env


def _parse(output: str) -> Events:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def _errors(events: Events) -> list[tuple[str, str]]:
    return [(e["name"], e["description"]) for e in events if e["event"] == "error"]


def _exchange(
    server_env: dict[str, str],
    client_env: dict[str, str],
    *,
    mechs: str = "GSSAPI",
    vhost: str = "localhost",
) -> tuple[Events, Events]:
    """One connection from a proton client to a proton server: (client's, server's) events."""
    port = free_port((LOOPBACK_V4,))
    server = subprocess.Popen(
        [sys.executable, "-c", PEER, "server", f"{LOOPBACK_V4}:{port}"],
        env=server_env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        ready, _, _ = select.select([server.stdout], [], [], 30)
        first = server.stdout.readline() if ready else ""
        assert '"listening"' in first, f"server did not start: {first!r}"
        client = subprocess.run(
            [sys.executable, "-c", PEER, "client", f"amqp://{LOOPBACK_V4}:{port}", mechs, vhost],
            env=client_env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=60)
        server_out, server_err = server.communicate(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert client.returncode == 0, client.stderr
    assert server.returncode == 0, server_err
    return _parse(client.stdout), _parse(server_out)


def _klist(ccache: Path, env: dict[str, str]) -> str:
    return subprocess.run(["klist", "-c", f"FILE:{ccache}"], env=env, capture_output=True,
                          text=True, timeout=30, check=True).stdout


def test_realm_issues_tickets_from_its_keytabs(realm: KerberosRealm, tmp_path: Path) -> None:
    assert realm.user_principal == "amqscale@AMQSCALE.TEST"
    assert realm.service_principal == "amqp/localhost@AMQSCALE.TEST"
    assert realm.keytab_principals(realm.client_keytab) == {realm.user_principal}
    assert realm.keytab_principals(realm.service_keytab) == {realm.service_principal}
    assert realm.keytab_principals(realm.empty_keytab) == set()
    realm.kinit(ccache=tmp_path / "user.ccache")
    out = _klist(tmp_path / "user.ccache", _env(realm))
    assert f"Default principal: {realm.user_principal}" in out
    assert f"krbtgt/{realm.realm}@{realm.realm}" in out


def test_gssapi_authenticates_the_user(realm: KerberosRealm, tmp_path: Path) -> None:
    ccache = tmp_path / "client.ccache"  # new and empty: the client keytab fills it
    client_env = _env(realm, KRB5CCNAME=f"FILE:{ccache}")
    client, server = _exchange(_env(realm), client_env)
    assert _errors(client) == [] and _errors(server) == []
    assert {"event": "opened", "mech": "GSSAPI"} in client
    assert {"event": "accepted"} in client
    assert {"event": "authenticated", "user": realm.user, "mech": "GSSAPI",
            "transport_user": realm.user, "hostname": "localhost"} in server
    assert {"event": "message", "body": "over GSSAPI"} in server
    assert f"{realm.service_principal}" in _klist(ccache, client_env)


def test_client_without_credentials_fails(realm: KerberosRealm) -> None:
    client, server = _exchange(_env(realm), _env(realm, credentials=False))
    [(name, description)] = _errors(client)
    assert name == "amqp:unauthorized-access"
    assert description.startswith("SASL(-1): generic failure: GSSAPI Error: No credentials")
    assert "No Kerberos credentials available" in description
    assert description.endswith("(Authentication failed [mech=none])")
    # It fails before its sasl-init: the server sees the connection dropped.
    assert _errors(server) == [("amqp:connection:framing-error", "connection aborted")]
    assert all(e["event"] == "error" for e in server)


def test_server_without_the_service_key_fails(realm: KerberosRealm, tmp_path: Path) -> None:
    (tmp_path / "proton-server.conf").write_text(
        f"mech_list: GSSAPI\nkeytab: {realm.client_keytab}\n")  # the user's key only
    server_env = _env(realm, PN_SASL_CONFIG_PATH=str(tmp_path),
                      KRB5_KTNAME=f"FILE:{realm.client_keytab}")
    client, server = _exchange(server_env, _env(realm))
    assert _errors(client) == [("amqp:unauthorized-access", "Authentication failed [mech=GSSAPI]")]
    [(name, description)] = _errors(server)
    assert name == "amqp:unauthorized-access"
    assert "No key table entry found matching amqp/" in description
    assert description.endswith("(Failed to authenticate client [mech=GSSAPI])")


def test_client_asks_for_the_connection_hostname(realm: KerberosRealm) -> None:
    """Without virtual_host the client wants amqp/127.0.0.1, which the realm lacks."""
    client, _ = _exchange(_env(realm), _env(realm), vhost="")
    [(name, description)] = _errors(client)
    assert name == "amqp:unauthorized-access"
    assert f"Server amqp/127.0.0.1@{realm.realm} not found in Kerberos database" in description


def test_proton_client_leaves_gssapi_out_by_default(realm: KerberosRealm) -> None:
    client, server = _exchange(_env(realm), _env(realm), mechs="")
    [(name, description)] = _errors(client)
    assert name == "amqp:unauthorized-access"
    assert description.endswith("Authentication failed [mech=none]")
    assert not [e for e in server if e["event"] == "authenticated"]


def test_kdc_stops_at_exit() -> None:
    with KerberosRealm(realm="STOP.TEST", user="someone") as kdc:
        pid, workdir = kdc.pid, kdc.workdir
        assert pid is not None and workdir is not None
        assert psutil.Process(pid).name() == "krb5kdc"
        assert {(LOOPBACK_V4, kdc.port)} <= {
            (c.laddr.ip, c.laddr.port) for c in psutil.Process(pid).net_connections("inet")}
    assert not psutil.pid_exists(pid)
    assert not workdir.exists()
