"""SASL: amqscale's listener authenticating amqscale's and proton-python's clients, and
amqscale's client against a proton-python server, for PLAIN, SCRAM-SHA-1/256/512,
EXTERNAL and GSSAPI (a throw-away Kerberos realm), with each failure."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from proton_process_peer import finish, start_peer

import amqscale
from amqscale import AuthenticationError, ServerSASL
from amqscale.security import TLS
from amqscale.testing._process import LOOPBACK_V4, free_port
from amqscale.testing.certs import PKI
from amqscale.testing.faults import wait_until
from amqscale.testing.kerberos import KerberosRealm

TIMEOUT = 20
USERS = {"alice": "alice-pw-7f3a", "bob": "bob-pw-91c2"}
SCRAM = ["SCRAM-SHA-1", "SCRAM-SHA-256", "SCRAM-SHA-512"]


@pytest.fixture(scope="module")
def container() -> Iterator[amqscale.Container]:
    """This module's own workers: Cyrus's configuration is per worker process."""
    with amqscale.Container(workers=2) as c:
        yield c


@pytest.fixture(scope="module")
def plain_listener(container: amqscale.Container) -> amqscale.Listener:
    return container.listen("amqp://127.0.0.1:0", sasl=ServerSASL(users=USERS))


@pytest.fixture(scope="module")
def tls_listener(container: amqscale.Container, pki: PKI) -> amqscale.Listener:
    tls = TLS(cert=pki.server.cert, key=pki.server.key, verify="peer", ca=pki.ca)
    return container.listen("amqps://127.0.0.1:0", tls=tls, sasl=ServerSASL(
        users=USERS, mechanisms="EXTERNAL PLAIN SCRAM-SHA-256"))


def url_of(listener: amqscale.Listener, user: str | None = None,
           host: str = "127.0.0.1") -> str:
    scheme = "amqps" if listener.url.startswith("amqps") else "amqp"
    return f"{scheme}://{user + '@' if user else ''}{host}:{listener.port}"


def refused(container: amqscale.Container, url: str, **options: Any) -> AuthenticationError:
    with pytest.raises(AuthenticationError) as info:
        container.connect(url, timeout=TIMEOUT, **options)
    return info.value


# ---- amqscale to amqscale ------------------------------------------------------------------


@pytest.mark.parametrize("mechanism", SCRAM)
def test_scram_authenticates_and_both_ends_know_the_user(
        container: amqscale.Container, plain_listener: amqscale.Listener,
        mechanism: str) -> None:
    conn = container.connect(url_of(plain_listener), user="alice", password=USERS["alice"],
                             sasl_mechanisms=mechanism, timeout=TIMEOUT)
    assert conn.security.sasl_mechanism == mechanism and conn.security.user == "alice"
    peers = [peer.security for peer in plain_listener.peers]
    assert any(s.user == "alice" and s.sasl_mechanism == mechanism for s in peers)
    conn.close()


def test_credentials_in_the_url_and_the_strongest_mechanism_by_default(
        container: amqscale.Container, plain_listener: amqscale.Listener) -> None:
    url = url_of(plain_listener, f"bob:{USERS['bob']}")
    conn = container.connect(url, timeout=TIMEOUT)
    assert conn.security.sasl_mechanism == "SCRAM-SHA-512" and conn.security.user == "bob"
    conn.close()


def test_wrong_credentials_name_the_mechanism_and_outcome(
        container: amqscale.Container, plain_listener: amqscale.Listener) -> None:
    for user, password in (("alice", "wrong-pw"), ("mallory", "x")):
        error = refused(container, url_of(plain_listener), user=user, password=password,
                        sasl_mechanisms="SCRAM-SHA-256")
        assert error.mechanism == "SCRAM-SHA-256" and error.outcome == "auth"
        assert error.condition == "amqp:unauthorized-access"
        assert password not in str(error)


def test_a_mechanism_the_listener_does_not_offer(container: amqscale.Container,
                                                 tls_listener: amqscale.Listener,
                                                 pki: PKI) -> None:
    error = refused(container, url_of(tls_listener, host="localhost"), user="alice",
                    password=USERS["alice"], sasl_mechanisms="SCRAM-SHA-1",
                    tls=TLS(ca=pki.ca, cert=pki.client.cert, key=pki.client.key))
    assert error.mechanism is None and error.outcome == "perm"


def test_no_credentials_for_a_listener_that_requires_them(
        container: amqscale.Container, plain_listener: amqscale.Listener) -> None:
    error = refused(container, url_of(plain_listener))
    assert "require credentials" in str(error)
    # A client that skips SASL altogether is not let in either.
    with socket.create_connection(("127.0.0.1", plain_listener.port), timeout=TIMEOUT) as raw:
        raw.sendall(b"AMQP\x00\x01\x00\x00")
        answer = raw.recv(4096)
        assert not answer.startswith(b"AMQP\x00\x01")


def test_plain_needs_tls_on_both_sides(container: amqscale.Container,
                                       plain_listener: amqscale.Listener,
                                       tls_listener: amqscale.Listener, pki: PKI) -> None:
    # Over cleartext the listener does not offer PLAIN, even to a client that allows it.
    error = refused(container, url_of(plain_listener), user="alice", password=USERS["alice"],
                    sasl_mechanisms="PLAIN", allow_insecure_mechanisms=True)
    assert error.mechanism is None
    # Over TLS it does, and the client needs no insecure flag.
    conn = container.connect(url_of(tls_listener, host="localhost"), user="alice",
                             password=USERS["alice"], sasl_mechanisms="PLAIN",
                             tls=TLS(ca=pki.ca, cert=pki.client.cert, key=pki.client.key))
    assert conn.security.sasl_mechanism == "PLAIN" and conn.security.tls_protocol
    conn.close()


def test_a_listener_may_allow_plain_in_cleartext(container: amqscale.Container) -> None:
    listener = container.listen("amqp://127.0.0.1:0", sasl=ServerSASL(
        users=USERS, mechanisms="PLAIN", allow_insecure_mechanisms=True))
    conn = container.connect(url_of(listener), user="bob", password=USERS["bob"],
                             allow_insecure_mechanisms=True)
    assert conn.security.sasl_mechanism == "PLAIN"
    conn.close()
    listener.close()


def test_external_takes_the_client_certificate(container: amqscale.Container,
                                               tls_listener: amqscale.Listener,
                                               pki: PKI) -> None:
    tls = TLS(ca=pki.ca, cert=pki.client.cert, key=pki.client.key)
    conn = container.connect(url_of(tls_listener, host="localhost"), tls=tls,
                             sasl_mechanisms="EXTERNAL", timeout=TIMEOUT)
    assert conn.security.sasl_mechanism == "EXTERNAL"

    def users() -> set[str | None]:  # the listener's worker reports its side on its own
        return {peer.security.user for peer in tls_listener.peers
                if peer.security.sasl_mechanism == "EXTERNAL"}

    assert wait_until(lambda: f"CN={pki.client_name}" in users(), TIMEOUT), users()
    conn.close()
    with pytest.raises(amqscale.TLSError, match="certificate required"):
        container.connect(url_of(tls_listener, host="localhost"), tls=TLS(ca=pki.ca),
                          sasl_mechanisms="EXTERNAL", timeout=TIMEOUT)


def test_an_authzid_other_than_the_user_is_refused(
        container: amqscale.Container, plain_listener: amqscale.Listener) -> None:
    conn = container.connect(url_of(plain_listener), user="alice", password=USERS["alice"],
                             authzid="alice", timeout=TIMEOUT)
    assert conn.security.authzid == "alice"
    conn.close()
    error = refused(container, url_of(plain_listener), user="alice",
                    password=USERS["alice"], authzid="bob")
    assert "may not act as 'bob'" in str(error)


def test_listener_settings_are_checked(container: amqscale.Container,
                                       plain_listener: amqscale.Listener,
                                       tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="users= or config_path="):
        ServerSASL()
    with pytest.raises(ValueError, match="password of 'x'"):
        ServerSASL(users={"x": ""})
    with pytest.raises(FileNotFoundError, match="not a directory"):
        ServerSASL(config_path=tmp_path / "missing")
    assert "alice-pw" not in repr(ServerSASL(users=USERS))
    with pytest.raises(amqscale.ConnectionFailed, match="another password"):
        container.listen("amqp://127.0.0.1:0", sasl=ServerSASL(users={"alice": "other"}))
    with pytest.raises(amqscale.ConnectionFailed, match="one configuration per process"):
        container.listen("amqp://127.0.0.1:0", sasl=ServerSASL(config_path=tmp_path))


# ---- proton-python on the other end --------------------------------------------------------

def cyrus_dir(tmp_path: Path, mechanisms: str, users: dict[str, str]) -> Path:
    """A Cyrus server configuration with a sasldb holding `users`, for a proton server."""
    from amqscale.workers.cyrus import server_realm

    directory = tmp_path / "cyrus"
    directory.mkdir(mode=0o700)
    sasldb = directory / "users.sasldb"
    (directory / "proton-server.conf").write_text(
        f"mech_list: {mechanisms}\npwcheck_method: auxprop\nauxprop_plugin: sasldb\n"
        f"sasldb_path: {sasldb}\n")
    for name, password in users.items():
        subprocess.run(["/usr/sbin/saslpasswd2", "-c", "-p", "-f", str(sasldb), "-u",
                        server_realm(), name], input=password.encode(), check=True,
                       timeout=30)
    return directory


@pytest.mark.parametrize("mechanism", SCRAM)
def test_proton_python_clients_authenticate_to_amqscale(
        plain_listener: amqscale.Listener, mechanism: str) -> None:
    url = f"amqp://127.0.0.1:{plain_listener.port}"
    client = start_peer({"role": "client", "url": url, "user": "alice",
                         "password": USERS["alice"], "allowed_mechs": mechanism})
    delivery = plain_listener.receiver.receive(timeout=TIMEOUT)
    assert delivery.message.body == "authenticated"
    delivery.accept()
    events = finish(client)
    assert {"event": "opened", "user": "alice", "mech": mechanism} in events
    assert {"event": "accepted"} in events
    wrong = finish(start_peer({"role": "client", "url": url, "user": "alice",
                               "password": "wrong", "allowed_mechs": mechanism}))
    assert [e["name"] for e in wrong if e["event"] == "error"] == ["amqp:unauthorized-access"]


@pytest.mark.parametrize("mechanism", SCRAM)
def test_amqscale_authenticates_to_a_proton_python_server(
        container: amqscale.Container, tmp_path: Path, mechanism: str) -> None:
    config = cyrus_dir(tmp_path, " ".join(SCRAM), {"carol": "carol-pw"})
    env = {k: v for k, v in os.environ.items() if not k.startswith("PN_")}
    env["PN_SASL_CONFIG_PATH"] = str(config)
    port = free_port((LOOPBACK_V4,))
    server = start_peer({"role": "server", "url": f"127.0.0.1:{port}"}, env)
    conn = container.connect(f"amqp://127.0.0.1:{port}", user="carol", password="carol-pw",
                             sasl_mechanisms=mechanism, timeout=TIMEOUT)
    assert conn.security.sasl_mechanism == mechanism
    assert conn.open_sender("sasl-test").send(b"from amqscale").wait(TIMEOUT).accepted
    conn.close()
    events = finish(server)
    assert {"event": "opened", "user": "carol", "mech": mechanism} in events
    assert {"event": "message", "body": "from amqscale"} in events
    server = start_peer({"role": "server", "url": f"127.0.0.1:{port}"}, env)
    error = refused(container, f"amqp://127.0.0.1:{port}", user="carol", password="nope",
                    sasl_mechanisms=mechanism)
    assert error.outcome == "auth" and error.mechanism == mechanism
    finish(server)


# ---- GSSAPI (Kerberos) ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def realm() -> Iterator[KerberosRealm]:
    with KerberosRealm() as kdc:
        yield kdc


@pytest.fixture
def kerberos_env(realm: KerberosRealm, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """This process's environment joined to the realm (the workers inherit it)."""
    for key in list(os.environ):
        if key.startswith(("KRB5", "PN_SASL")):
            monkeypatch.delenv(key)
    env = realm.env()
    env.pop("PN_SASL_CONFIG_PATH")  # amqscale's listener names its configuration itself
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return dict(os.environ)


def test_gssapi_between_amqscale_peers(realm: KerberosRealm,
                                       kerberos_env: dict[str, str]) -> None:
    with amqscale.Container(workers=1) as c:
        listener = c.listen("amqp://127.0.0.1:0", sasl=ServerSASL(
            config_path=realm.sasl_config_dir, mechanisms="GSSAPI"))
        conn = c.connect(f"amqp://localhost:{listener.port}", sasl_mechanisms="GSSAPI")
        assert conn.security.sasl_mechanism == "GSSAPI"
        [peer] = listener.peers
        assert peer.security.user == realm.user and peer.security.sasl_mechanism == "GSSAPI"
        conn.close()


def test_gssapi_with_proton_python_both_ways(realm: KerberosRealm,
                                             kerberos_env: dict[str, str]) -> None:
    with amqscale.Container(workers=1) as c:
        listener = c.listen("amqp://127.0.0.1:0", sasl=ServerSASL(
            config_path=realm.sasl_config_dir, mechanisms="GSSAPI"))
        events = finish(start_peer({"role": "client", "url": f"127.0.0.1:{listener.port}",
                                    "allowed_mechs": "GSSAPI", "virtual_host": "localhost"},
                                   kerberos_env))
        assert [e["mech"] for e in events if e["event"] == "opened"] == ["GSSAPI"]
        assert listener.receiver.receive(timeout=TIMEOUT).message.body == "authenticated"

        port = free_port((LOOPBACK_V4,))
        server = start_peer({"role": "server", "url": f"127.0.0.1:{port}"},
                            dict(kerberos_env, **realm.env()))
        conn = c.connect(f"amqp://127.0.0.1:{port}", virtual_host="localhost",
                         sasl_mechanisms="GSSAPI", timeout=TIMEOUT)
        assert conn.security.sasl_mechanism == "GSSAPI"
        conn.close()
        assert {"event": "opened", "user": realm.user, "mech": "GSSAPI"} in finish(server)


def test_gssapi_without_credentials(realm: KerberosRealm, kerberos_env: dict[str, str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in realm.env(credentials=False).items():
        if key != "PN_SASL_CONFIG_PATH":
            monkeypatch.setenv(key, value)
    port = free_port((LOOPBACK_V4,))
    server = start_peer({"role": "server", "url": f"127.0.0.1:{port}"},
                        dict(os.environ, **realm.env()))
    with amqscale.Container(workers=1) as c:
        error = refused(c, f"amqp://localhost:{port}", sasl_mechanisms="GSSAPI")
        assert "No Kerberos credentials" in str(error) or "credentials" in str(error)
    finish(server)


def test_no_user_list_outlives_its_worker() -> None:
    """The sasldb holds passwords: gone when a worker is killed, and at close."""
    import signal
    import time

    from amqscale.workers.cyrus import own_directories

    with amqscale.Container(workers=2) as c:
        listener = c.listen("amqp://127.0.0.1:0", sasl=ServerSASL(users=USERS))
        c.connect(url_of(listener), user="bob", password=USERS["bob"]).close()
        killed, kept = c.worker_pids()
        assert own_directories(killed) and own_directories(kept)
        os.kill(killed, signal.SIGKILL)
        deadline = time.monotonic() + TIMEOUT
        while own_directories(killed) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not own_directories(killed)
    assert not own_directories(kept)


def test_a_killed_parent_s_user_lists_go_with_the_next_container() -> None:
    """When the user's process and its workers were all killed, nobody removed their
    sasldb: the next worker that writes one removes those of dead pids."""
    import tempfile

    from amqscale.workers.cyrus import own_directories

    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid that is no process now
    stale = Path(tempfile.mkdtemp(prefix=f"amqscale-sasl-{gone.pid}-"))
    (stale / "users.sasldb").write_bytes(b"passwords")
    with amqscale.Container(workers=1) as c:
        c.listen("amqp://127.0.0.1:0", sasl=ServerSASL(users=USERS))
        assert not stale.exists() and not own_directories(gone.pid)
