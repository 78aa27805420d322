"""TLS between amqscale's client and amqscale's listener: verify modes, client
certificates, protocol versions, ciphers, and a clear TLSError for each failure."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from proton_process_peer import finish, start_peer

import amqscale
from amqscale.errors import TLSError
from amqscale.handlers import MessagingHandler
from amqscale.message import Message
from amqscale.reactor import Container
from amqscale.security import TLS, InsecureTLSWarning
from amqscale.testing._process import LOOPBACK_V4, free_port
from amqscale.testing.certs import PKI, KeyPair

TIMEOUT = 20


@pytest.fixture(scope="module")
def container() -> Iterator[amqscale.Container]:
    with amqscale.Container(workers=2) as c:
        yield c


def listen(container: amqscale.Container, pair: KeyPair, host: str = "127.0.0.1",
           **options: object) -> amqscale.Listener:
    url = f"amqps://[{host}]:0" if ":" in host else f"amqps://{host}:0"
    return container.listen(url, tls=TLS(cert=pair.cert, key=pair.key, **options),  # type: ignore[arg-type]
                            timeout=TIMEOUT)


def roundtrip(conn: amqscale.Connection, listener: amqscale.Listener) -> None:
    tracker = conn.open_sender("tls-check").send(b"over tls")
    delivery = listener.receiver.receive(timeout=TIMEOUT)
    assert delivery.message.body == b"over tls"
    delivery.accept()
    assert tracker.wait(TIMEOUT).accepted


def refused(container: amqscale.Container, url: str, tls: TLS | None) -> TLSError:
    with pytest.raises(TLSError) as info:
        container.connect(url, tls=tls, timeout=TIMEOUT)
    return info.value


# ---- what works ---------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "::1"])
def test_the_default_verifies_name_and_certificate_and_reports_the_session(
        container: amqscale.Container, pki: PKI, host: str) -> None:
    listener = listen(container, pki.server, "::1" if host == "::1" else "127.0.0.1")
    url_host = f"[{host}]" if ":" in host else host
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the safe default warns of nothing
        conn = container.connect(f"amqps://{url_host}:{listener.port}", shards=2,
                                 tls=TLS(ca=pki.ca), timeout=TIMEOUT)
    security = conn.security
    assert security.tls_protocol == "TLSv1.3"
    assert security.tls_cipher and security.tls_cipher.startswith("TLS_")
    assert security.peer_subject == "CN=localhost"
    assert security.sasl_mechanism == "ANONYMOUS"
    roundtrip(conn, listener)
    conn.close()
    listener.close()


def test_peer_name_is_the_name_checked_and_sent(container: amqscale.Container,
                                                pki: PKI) -> None:
    listener = listen(container, pki.wrong_name)  # valid for other.example only
    url = f"amqps://127.0.0.1:{listener.port}"
    conn = container.connect(url, tls=TLS(ca=pki.ca, peer_name="other.example"))
    assert conn.security.peer_subject == "CN=other.example"
    conn.close()
    error = refused(container, url, TLS(ca=pki.ca, peer_name="localhost"))
    assert "Hostname mismatch" in str(error)
    listener.close()


def test_a_directory_of_trusted_cas(container: amqscale.Container, pki: PKI,
                                    tmp_path: Path) -> None:
    directory = tmp_path / "cas"
    directory.mkdir()
    for ca in (pki.ca, pki.other_ca):
        (directory / ca.name).write_bytes(ca.read_bytes())
    subprocess.run(["openssl", "rehash", str(directory)], check=True, timeout=30)
    listener = listen(container, pki.server)
    conn = container.connect(f"amqps://localhost:{listener.port}", tls=TLS(ca=directory))
    roundtrip(conn, listener)
    conn.close()
    listener.close()


def test_one_tls_context_per_worker_per_configuration(pki: PKI) -> None:
    with amqscale.Container(workers=2) as c:
        listener = listen(c, pki.server)
        url = f"amqps://localhost:{listener.port}"
        conns = [c.connect(url, shards=2, tls=TLS(ca=pki.ca)) for _ in range(3)]
        conns.append(c.connect(url, shards=2, tls=TLS(ca=pki.ca, max_version="TLSv1.2")))
        # Per worker: the listener's domain, and the two client configurations.
        assert [s["tls_contexts"] for s in c.worker_stats()] == [3, 3]
        for conn in conns:
            conn.close()


def test_verify_peer_accepts_another_name_and_warns(container: amqscale.Container,
                                                   pki: PKI) -> None:
    listener = listen(container, pki.wrong_name)
    with pytest.warns(InsecureTLSWarning, match="name is not checked"):
        tls = TLS(ca=pki.ca, verify="peer")
        conn = container.connect(f"amqps://localhost:{listener.port}", tls=tls)
    assert conn.security.peer_subject == "CN=other.example"
    conn.close()
    listener.close()


def test_verify_none_accepts_an_unknown_ca_and_warns(container: amqscale.Container,
                                                    pki: PKI) -> None:
    listener = listen(container, pki.untrusted)
    with pytest.warns(InsecureTLSWarning):
        conn = container.connect(f"amqps://localhost:{listener.port}", tls=TLS(verify="none"))
    roundtrip(conn, listener)
    conn.close()
    listener.close()


def test_a_required_client_certificate(container: amqscale.Container, pki: PKI) -> None:
    listener = listen(container, pki.server, verify="peer", ca=pki.ca)
    url = f"amqps://localhost:{listener.port}"
    conn = container.connect(url, tls=TLS(ca=pki.ca, cert=pki.client.cert,
                                          key=pki.client.key))
    roundtrip(conn, listener)
    conn.close()
    missing = refused(container, url, TLS(ca=pki.ca))
    assert "certificate required" in str(missing)
    other = refused(container, url, TLS(ca=pki.ca, cert=pki.client_other_ca.cert,
                                        key=pki.client_other_ca.key))
    assert "unknown ca" in str(other)
    listener.close()


def test_a_key_under_a_password(container: amqscale.Container, pki: PKI) -> None:
    wrong = "not-" + pki.key_password
    with pytest.raises(TLSError, match="wrong or missing key password") as info:
        listen(container, pki.locked, key_password=wrong)
    assert wrong not in str(info.value)
    listener = listen(container, pki.locked, key_password=pki.key_password)
    conn = container.connect(f"amqps://localhost:{listener.port}", tls=TLS(ca=pki.ca))
    roundtrip(conn, listener)
    conn.close()
    listener.close()
    tls = TLS(cert=pki.locked.cert, key=pki.locked.key, key_password=pki.key_password)
    assert pki.key_password not in repr(tls) and pki.key_password not in repr(tls.wire(True))


# ---- protocol versions and ciphers ---------------------------------------------------------


def python_client_version(port: int, ca: Path, version: ssl.TLSVersion) -> str | None:
    """The protocol Python's ssl (not proton) negotiates with a listener."""
    context = ssl.create_default_context(cafile=str(ca))
    with warnings.catch_warnings():  # TLS 1.0 and 1.1 are deprecated: that is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = context.maximum_version = version
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        return tls.version()


@pytest.mark.parametrize(("name", "python_version"), [
    ("TLSv1", ssl.TLSVersion.TLSv1), ("TLSv1.1", ssl.TLSVersion.TLSv1_1),
    ("TLSv1.2", ssl.TLSVersion.TLSv1_2), ("TLSv1.3", ssl.TLSVersion.TLSv1_3)])
def test_each_protocol_version_debian_allows(container: amqscale.Container, pki: PKI,
                                            name: str, python_version: ssl.TLSVersion
                                            ) -> None:
    """Debian 12's OpenSSL 3.0 still negotiates TLS 1.0 and 1.1 with proton's default
    ciphers; amqscale allows each version only when asked. Python's ssl client (the
    witness of the version: proton reports the cipher suite's) needs SECLEVEL=0."""
    listener = listen(container, pki.server, min_version=name, max_version=name)
    assert python_client_version(listener.port, pki.ca, python_version) == name
    url = f"amqps://localhost:{listener.port}"
    conn = container.connect(url, tls=TLS(ca=pki.ca, min_version=name, max_version=name))
    roundtrip(conn, listener)
    conn.close()
    if name != "TLSv1.3":  # a client that wants newer is refused
        newer = {"TLSv1": "TLSv1.1", "TLSv1.1": "TLSv1.2", "TLSv1.2": "TLSv1.3"}[name]
        error = refused(container, url, TLS(ca=pki.ca, min_version=newer))
        assert "protocol version" in str(error) or "no protocols" in str(error)
    listener.close()


def test_a_cipher_list(container: amqscale.Container, pki: PKI) -> None:
    listener = listen(container, pki.server, max_version="TLSv1.2")
    url = f"amqps://localhost:{listener.port}"
    conn = container.connect(url, tls=TLS(ca=pki.ca, ciphers="ECDHE-ECDSA-AES128-GCM-SHA256"))
    assert conn.security.tls_cipher == "ECDHE-ECDSA-AES128-GCM-SHA256"
    assert conn.security.tls_protocol == "TLSv1.2"
    conn.close()
    error = refused(container, url, TLS(ca=pki.ca, ciphers="NO-SUCH-CIPHER"))
    assert "cipher list 'NO-SUCH-CIPHER'" in str(error)
    listener.close()


# ---- failures -----------------------------------------------------------------------------


@pytest.mark.parametrize(("pair", "reason"), [
    ("untrusted", "unable to get local issuer certificate"),
    ("expired", "certificate has expired"),
    ("wrong_name", "Hostname mismatch"),
])
def test_a_refused_server_certificate_says_why(container: amqscale.Container, pki: PKI,
                                              pair: str, reason: str) -> None:
    listener = listen(container, getattr(pki, pair))
    error = refused(container, f"amqps://localhost:{listener.port}", TLS(ca=pki.ca))
    assert "certificate verify failed" in str(error) and reason in str(error)
    listener.close()


def test_the_system_trust_store_does_not_know_a_test_ca(container: amqscale.Container,
                                                        pki: PKI) -> None:
    listener = listen(container, pki.server)
    error = refused(container, f"amqps://localhost:{listener.port}", None)
    assert "unable to get local issuer certificate" in str(error)
    listener.close()


def test_plain_amqp_to_a_tls_listener_is_refused(container: amqscale.Container,
                                                 pki: PKI) -> None:
    listener = listen(container, pki.server)
    with pytest.raises(amqscale.ConnectionFailed, match="use amqps://"):
        container.connect(f"amqp://127.0.0.1:{listener.port}", timeout=TIMEOUT)
    with pytest.raises(TimeoutError):  # nothing got through
        listener.receiver.receive(timeout=0.5)
    listener.close()


def test_tls_to_a_plain_listener_never_falls_back(container: amqscale.Container,
                                                  pki: PKI) -> None:
    listener = container.listen("amqp://127.0.0.1:0")
    error = refused(container, f"amqps://localhost:{listener.port}", TLS(ca=pki.ca))
    assert "does the peer speak TLS" in str(error)
    listener.close()


def test_bad_settings_fail_at_the_call(pki: PKI, tmp_path: Path,
                                       container: amqscale.Container) -> None:
    with pytest.raises(FileNotFoundError, match="ca"):
        TLS(ca=tmp_path / "missing.pem")
    with pytest.raises(ValueError, match="verify must be one of"):
        TLS(verify="sometimes")
    with pytest.raises(ValueError, match="min_version"):
        TLS(min_version="TLSv1.3", max_version="TLSv1.2")
    with pytest.raises(ValueError, match="must be one of"):
        TLS(min_version="SSLv3")
    with pytest.raises(ValueError, match="key without a certificate"):
        TLS(key=pki.client.key)
    with pytest.raises(ValueError, match="TLS is never implied"):
        container.connect("amqp://127.0.0.1:5672", tls=TLS(ca=pki.ca))
    with pytest.raises(ValueError, match="needs tls="):
        container.listen("amqps://127.0.0.1:0")
    with pytest.raises(ValueError, match="needs cert="):
        container.listen("amqps://127.0.0.1:0", tls=TLS(ca=pki.ca))
    with pytest.raises(ValueError, match="needs ca="):
        container.listen("amqps://127.0.0.1:0", tls=TLS(cert=pki.server.cert,
                                                         key=pki.server.key, verify="peer"))
    with pytest.raises(TypeError, match="amqscale.security.TLS"):
        container.connect("amqps://127.0.0.1:5671", tls="ca.pem")  # type: ignore[arg-type]


# ---- connect.json and the event-driven face ------------------------------------------------


def test_connect_json_gives_the_url_and_tls(container: amqscale.Container, pki: PKI,
                                            tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    listener = listen(container, pki.server)
    config = tmp_path / "connect.json"
    config.write_text(json.dumps({"scheme": "amqps", "host": "localhost",
                                  "port": listener.port, "tls": {"ca": str(pki.ca)}}))
    monkeypatch.setenv("MESSAGING_CONNECT_FILE", str(config))
    conn = container.connect(timeout=TIMEOUT)
    assert conn.security.peer_subject == "CN=localhost"
    roundtrip(conn, listener)
    conn.close()
    config.write_text(json.dumps({"scheme": "amqp", "tls": {"ca": str(pki.ca)}}))
    with pytest.raises(ValueError, match='tls section needs scheme "amqps"'):
        container.connect()
    config.write_text(json.dumps({"hots": "localhost"}))
    with pytest.raises(ValueError, match="unknown key hots"):
        container.connect()
    listener.close()


class TLSHelloWorld(MessagingHandler):
    """proton's helloworld_direct over TLS, with proton's container.ssl calls."""

    def __init__(self, pki: PKI) -> None:
        super().__init__()
        self.pki = pki
        self.seen: list[Any] = []

    def on_start(self, event: Any) -> None:
        container = event.container
        container.ssl.server.set_credentials(str(self.pki.server.cert),
                                             str(self.pki.server.key), None)
        container.ssl.client.set_trusted_ca_db(str(self.pki.ca))
        self.acceptor = container.listen("amqps://127.0.0.1:0")
        port = self.acceptor.url.rsplit(":", 1)[1]
        container.create_sender(f"amqps://localhost:{port}/examples")

    def on_connection_opened(self, event: Any) -> None:
        self.seen.append(event.connection.security.tls_protocol)

    def on_sendable(self, event: Any) -> None:
        event.sender.send(Message(body="Hello TLS"))
        event.sender.close()

    def on_message(self, event: Any) -> None:
        self.seen.append(event.message.body)

    def on_accepted(self, event: Any) -> None:
        event.connection.close()

    def on_transport_error(self, event: Any) -> None:
        self.seen.append(event.transport.error)

    def on_connection_closed(self, event: Any) -> None:
        self.acceptor.close()


def test_the_event_driven_face_with_proton_style_ssl(pki: PKI) -> None:
    handler = TLSHelloWorld(pki)
    Container(handler, workers=1).run()
    assert "Hello TLS" in handler.seen and "TLSv1.3" in handler.seen
    assert not [x for x in handler.seen if isinstance(x, Exception)]


def test_the_event_driven_face_reports_a_refused_certificate(pki: PKI) -> None:
    class Refused(TLSHelloWorld):
        def on_start(self, event: Any) -> None:
            event.container.ssl.server.set_credentials(str(self.pki.expired.cert),
                                                       str(self.pki.expired.key), None)
            event.container.ssl.client.set_trusted_ca_db(str(self.pki.ca))
            self.acceptor = event.container.listen("amqps://127.0.0.1:0")
            port = self.acceptor.url.rsplit(":", 1)[1]
            event.container.create_sender(f"amqps://localhost:{port}/examples")

        def on_disconnected(self, event: Any) -> None:
            self.acceptor.close()

    handler = Refused(pki)
    Container(handler, workers=1).run()
    errors = [x for x in handler.seen if isinstance(x, Exception)]
    assert errors and isinstance(errors[0], TLSError)
    with pytest.raises(TypeError, match="cannot be read back"):
        import proton
        Container(workers=1).connect("amqps://localhost:1", ssl_domain=proton.SSLDomain(
            proton.SSLDomain.MODE_CLIENT))


# ---- proton-python on the other end --------------------------------------------------------


def test_proton_python_clients_over_tls_to_amqscale(container: amqscale.Container,
                                                    pki: PKI) -> None:
    listener = listen(container, pki.server)
    url = f"amqps://localhost:{listener.port}"
    client = start_peer({"role": "client", "url": url, "ca": str(pki.ca)})
    delivery = listener.receiver.receive(timeout=TIMEOUT)
    assert delivery.message.body == "authenticated"
    delivery.accept()
    events = finish(client)
    assert [e.get("tls") for e in events if e["event"] == "opened"] == ["TLSv1.3"]
    untrusting = finish(start_peer({"role": "client", "url": url, "ca": str(pki.other_ca)}))
    [error] = [e for e in untrusting if e["event"] == "error"]
    assert "certificate verify failed" in error["description"]
    listener.close()


def test_an_amqscale_listener_requiring_certificates_of_proton_python_clients(
        container: amqscale.Container, pki: PKI) -> None:
    listener = listen(container, pki.server, verify="peer", ca=pki.ca)
    url = f"amqps://localhost:{listener.port}"
    client = start_peer({"role": "client", "url": url, "ca": str(pki.ca),
                         "cert": str(pki.client.cert), "key": str(pki.client.key)})
    delivery = listener.receiver.receive(timeout=TIMEOUT)
    delivery.accept()
    assert {"event": "accepted"} in finish(client)
    for cert in (None, pki.client_other_ca):
        config = {"role": "client", "url": url, "ca": str(pki.ca)}
        if cert is not None:
            config.update(cert=str(cert.cert), key=str(cert.key))
        events = finish(start_peer(config))
        [error] = [e for e in events if e["event"] == "error"]
        assert "SSL" in error["description"], error
        assert {"event": "accepted"} not in events
    listener.close()


def test_amqscale_over_tls_to_a_proton_python_server(container: amqscale.Container,
                                                     pki: PKI) -> None:
    port = free_port((LOOPBACK_V4,))
    server = start_peer({"role": "server", "url": f"127.0.0.1:{port}",
                         "cert": str(pki.server.cert), "key": str(pki.server.key)})
    conn = container.connect(f"amqps://localhost:{port}", tls=TLS(ca=pki.ca),
                             timeout=TIMEOUT)
    assert conn.security.tls_protocol == "TLSv1.3"
    assert conn.open_sender("tls-test").send(b"to proton").wait(TIMEOUT).accepted
    conn.close()
    assert {"event": "message", "body": "to proton"} in finish(server)
    # A server that requires client certificates: ours is accepted, none is refused.
    server = start_peer({"role": "server", "url": f"127.0.0.1:{port}", "ca": str(pki.ca),
                         "cert": str(pki.server.cert), "key": str(pki.server.key)})
    conn = container.connect(f"amqps://localhost:{port}", timeout=TIMEOUT,
                             tls=TLS(ca=pki.ca, cert=pki.client.cert, key=pki.client.key))
    conn.close()
    finish(server)
    server = start_peer({"role": "server", "url": f"127.0.0.1:{port}", "ca": str(pki.ca),
                         "cert": str(pki.server.cert), "key": str(pki.server.key)})
    refused(container, f"amqps://localhost:{port}", TLS(ca=pki.ca))
    finish(server)


def test_a_worker_survives_garbage_on_a_tls_listener(container: amqscale.Container,
                                                     pki: PKI) -> None:
    listener = listen(container, pki.server)
    for junk in (b"\x16\x03\x01\x00\x05hello", b"GET / HTTP/1.0\r\n\r\n", bytes(range(256))):
        with socket.create_connection(("127.0.0.1", listener.port), timeout=TIMEOUT) as raw:
            raw.sendall(junk)
            raw.recv(4096)  # the listener answers or closes; either way it lives on
    conn = container.connect(f"amqps://localhost:{listener.port}", tls=TLS(ca=pki.ca))
    roundtrip(conn, listener)
    conn.close()
    listener.close()
