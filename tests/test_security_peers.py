"""amqscale's TLS and SASL against real servers: RabbitMQ 3.10 (its TLS listener, PLAIN
over TLS, EXTERNAL with client certificates), the Proton C example broker, and rhea.

Each failure must come back as the right exception saying why; each success must carry a
message both ways. RabbitMQ and the C broker are the session-wide fixtures; EXTERNAL needs
a RabbitMQ node of its own (`rabbitmq_external`), and rhea serves TLS from a peer of its
own here (`TLSRheaPeer`).
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from proton import ConnectionException, SSLDomain
from proton.utils import BlockingConnection

import amqscale
from amqscale.errors import AuthenticationError, ConnectionFailed, TLSError
from amqscale.security import TLS
from amqscale.testing.brokers import ProtonCBroker, RabbitMQ, RheaPeer
from amqscale.testing.certs import PKI, KeyPair, make_pki

TIMEOUT = 30


@pytest.fixture(scope="module")
def container() -> Iterator[amqscale.Container]:
    with amqscale.Container(workers=1) as c:
        yield c


def rabbitmq_pki(rabbitmq: RabbitMQ) -> PKI:
    assert rabbitmq.pki is not None, "the rabbitmq fixture is started"
    return rabbitmq.pki


def send_and_receive(conn: amqscale.Connection, address: str, body: bytes) -> amqscale.Delivery:
    """Send `body` to `address`, check it was accepted, then receive it back from there."""
    tracker = conn.open_sender(address).send(body)
    assert tracker.wait(TIMEOUT).accepted
    delivery = conn.open_receiver(address, credit=10).receive(timeout=TIMEOUT)
    assert delivery.message.body == body
    delivery.accept()
    return delivery


def connect_strictly(container: amqscale.Container, url: str, **options: object
                     ) -> amqscale.Connection:
    """connect() with every warning an error: a verifying client has nothing to warn of."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return container.connect(url, timeout=TIMEOUT, **options)  # type: ignore[arg-type]


def channel_users(rabbitmq: RabbitMQ) -> list[str]:
    """The users of the node's channels now: an AMQP 1.0 session is one channel there (the
    AMQP 1.0 connections themselves are not in `list_connections` in 3.10)."""
    out = rabbitmq.rabbitmqctl("list_channels", "-q", "--formatter", "json", "user")
    return [row["user"] for row in json.loads(out or "[]")]


# ---- RabbitMQ: its TLS listener --------------------------------------------------------------


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_rabbitmq_tls_verifies_its_name_and_carries_a_message(
        container: amqscale.Container, rabbitmq: RabbitMQ, unique_name: str, host: str) -> None:
    conn = connect_strictly(container, f"amqps://{host}:{rabbitmq.tls_port}",
                            tls=TLS(ca=rabbitmq.ca_path))
    security = conn.security
    assert security.tls_protocol == "TLSv1.3"
    assert security.tls_cipher is not None and security.tls_cipher.startswith("TLS_")
    assert security.peer_subject == "CN=localhost"
    assert security.sasl_mechanism == "ANONYMOUS"  # no credentials: the node's guest
    send_and_receive(conn, f"/queue/{unique_name}", f"over tls to {host}".encode())
    conn.close()


def test_rabbitmq_plain_over_tls_needs_no_insecure_allowance(
        container: amqscale.Container, rabbitmq: RabbitMQ, unique_name: str) -> None:
    conn = connect_strictly(container, rabbitmq.tls_url, tls=TLS(ca=rabbitmq.ca_path),
                            user=rabbitmq.user, password=rabbitmq.password,
                            sasl_mechanisms="PLAIN")
    assert conn.security.sasl_mechanism == "PLAIN"
    assert conn.security.user == rabbitmq.user
    assert conn.security.tls_protocol == "TLSv1.3"
    send_and_receive(conn, f"/queue/{unique_name}", b"plain over tls")
    conn.close()


def test_rabbitmq_wrong_password_over_tls(container: amqscale.Container,
                                          rabbitmq: RabbitMQ) -> None:
    wrong = "not-" + rabbitmq.password
    with pytest.raises(AuthenticationError) as info:
        container.connect(rabbitmq.tls_url, tls=TLS(ca=rabbitmq.ca_path), user=rabbitmq.user,
                          password=wrong, sasl_mechanisms="PLAIN", timeout=TIMEOUT)
    error = info.value
    assert error.mechanism == "PLAIN" and error.outcome == "auth"
    assert error.condition == "amqp:unauthorized-access"
    assert "Authentication failed [mech=PLAIN]" in str(error)
    assert wrong not in str(error) and wrong not in error.description


def test_rabbitmq_tls_refuses_an_unknown_ca(container: amqscale.Container,
                                            rabbitmq: RabbitMQ) -> None:
    """RabbitMQ (Erlang's ssl) sends its CA certificate after its own, so OpenSSL's verdict
    for a client that does not trust that CA is "self-signed certificate in certificate
    chain", not the "unable to get local issuer certificate" of a server sending its own
    certificate only (the C broker and rhea, below)."""
    with pytest.raises(TLSError) as info:
        container.connect(rabbitmq.tls_url, tls=TLS(ca=rabbitmq_pki(rabbitmq).other_ca),
                          timeout=TIMEOUT)
    message = str(info.value)
    assert not isinstance(info.value, AuthenticationError)
    assert "certificate verify failed" in message
    assert "the server's certificate was refused: self-signed certificate in certificate " \
           "chain" in message


def plain_amqp_to_the_tls_port(container: amqscale.Container,
                               rabbitmq: RabbitMQ) -> ConnectionFailed:
    with pytest.raises(ConnectionFailed) as info:
        container.connect(f"amqp://127.0.0.1:{rabbitmq.tls_port}", timeout=TIMEOUT)
    return info.value


def test_rabbitmq_tls_port_refuses_plain_amqp(container: amqscale.Container,
                                             rabbitmq: RabbitMQ) -> None:
    error = plain_amqp_to_the_tls_port(container, rabbitmq)
    assert not isinstance(error, (TLSError, AuthenticationError))
    assert error.condition == "amqp:connection:framing-error"
    # The node answered our SASL header with a TLS alert record: 0x15 (alert), version
    # 3.1, length 2, fatal (2), unexpected_message (10).
    assert "Expected SASL protocol header got: Unknown protocol" in error.description
    assert "\\x15\\x03\\x01\\x00\\x02\\x02\\x0a" in error.description


def test_rabbitmq_tls_port_reached_with_amqp_says_use_amqps(
        container: amqscale.Container, rabbitmq: RabbitMQ) -> None:
    assert "use amqps://" in str(plain_amqp_to_the_tls_port(container, rabbitmq))


# ---- RabbitMQ: SASL EXTERNAL with client certificates ------------------------------------------


@pytest.fixture(scope="module")
def rabbitmq_external() -> Iterator[RabbitMQ]:
    """A node of its own with EXTERNAL (see `RabbitMQ`: off in the shared fixture, where it
    would make proton clients without credentials fail over TLS)."""
    with RabbitMQ(external=True) as broker:
        yield broker


def client_tls(rabbitmq: RabbitMQ, pair: KeyPair | None = None) -> TLS:
    if pair is None:
        pair = rabbitmq_pki(rabbitmq).client
    return TLS(ca=rabbitmq.ca_path, cert=pair.cert, key=pair.key)


def test_rabbitmq_external_logs_in_as_the_certificates_cn(
        container: amqscale.Container, rabbitmq_external: RabbitMQ, unique_name: str) -> None:
    broker = rabbitmq_external
    pki = rabbitmq_pki(broker)
    assert pki.client_name == broker.cert_user
    before = channel_users(broker).count(pki.client_name)
    conn = connect_strictly(container, broker.tls_url, tls=client_tls(broker),
                            sasl_mechanisms="EXTERNAL")
    assert conn.security.sasl_mechanism == "EXTERNAL"
    assert conn.security.tls_protocol == "TLSv1.3"
    sender = conn.open_sender(f"/queue/{unique_name}")
    assert sender.send(b"as the certificate's CN").wait(TIMEOUT).accepted
    # The node put our connection's session on a channel of the CN's user: we are
    # logged in as it.
    assert channel_users(broker).count(pki.client_name) > before
    delivery = conn.open_receiver(f"/queue/{unique_name}", credit=10).receive(timeout=TIMEOUT)
    assert delivery.message.body == b"as the certificate's CN"
    delivery.accept()
    conn.close()


def test_rabbitmq_external_without_a_client_certificate(container: amqscale.Container,
                                                        rabbitmq_external: RabbitMQ) -> None:
    with pytest.raises(AuthenticationError) as info:
        container.connect(rabbitmq_external.tls_url, tls=TLS(ca=rabbitmq_external.ca_path),
                          sasl_mechanisms="EXTERNAL", timeout=TIMEOUT)
    error = info.value
    assert error.mechanism == "EXTERNAL" and error.outcome == "auth"
    assert error.condition == "amqp:unauthorized-access"
    assert "Authentication failed [mech=EXTERNAL]" in str(error)


def test_rabbitmq_refuses_a_client_certificate_from_another_ca(
        container: amqscale.Container, rabbitmq_external: RabbitMQ) -> None:
    """verify_peer: the node checks any certificate it is shown, in the handshake, before
    SASL starts: TLSError, not AuthenticationError."""
    broker = rabbitmq_external
    tls = client_tls(broker, rabbitmq_pki(broker).client_other_ca)
    for mechanisms in ("EXTERNAL", None):
        with pytest.raises(TLSError) as info:
            container.connect(broker.tls_url, tls=tls, sasl_mechanisms=mechanisms,
                              timeout=TIMEOUT)
        assert not isinstance(info.value, AuthenticationError)
        assert "tlsv1 alert unknown ca" in str(info.value)


@pytest.mark.parametrize("certificate", [True, False])
def test_rabbitmq_external_node_still_lets_anonymous_in_as_guest(
        container: amqscale.Container, rabbitmq_external: RabbitMQ, unique_name: str,
        certificate: bool) -> None:
    """A client that does not ask for EXTERNAL gets in anonymously, with or without a
    certificate, as on a node without EXTERNAL."""
    broker = rabbitmq_external
    tls = client_tls(broker) if certificate else TLS(ca=broker.ca_path)
    before = channel_users(broker).count("guest")
    conn = connect_strictly(container, broker.tls_url, tls=tls)
    assert conn.security.sasl_mechanism == "ANONYMOUS"
    send_and_receive(conn, f"/queue/{unique_name}", b"anonymous over tls")
    assert channel_users(broker).count("guest") > before
    conn.close()


def test_rabbitmq_external_node_and_a_proton_client_naming_no_mechanism(
        rabbitmq_external: RabbitMQ) -> None:
    """Why EXTERNAL is opt-in: proton's client, given no mechanism and no certificate,
    picks EXTERNAL when offered and is refused; asking for ANONYMOUS gets it in."""
    broker = rabbitmq_external
    domain = SSLDomain(SSLDomain.MODE_CLIENT)
    domain.set_trusted_ca_db(str(broker.ca_path))
    domain.set_peer_authentication(SSLDomain.VERIFY_PEER_NAME)
    with pytest.raises(ConnectionException, match=re.escape("Authentication failed "
                                                            "[mech=EXTERNAL]")):
        BlockingConnection(broker.tls_url, timeout=TIMEOUT, ssl_domain=domain)
    conn = BlockingConnection(broker.tls_url, timeout=TIMEOUT, ssl_domain=domain,
                              allowed_mechs="ANONYMOUS")
    conn.close()


def test_rabbitmq_without_external_refuses_it(container: amqscale.Container,
                                             rabbitmq: RabbitMQ) -> None:
    """The shared node (no `external`) does not offer EXTERNAL, certificate or not."""
    with pytest.raises(AuthenticationError) as info:
        container.connect(rabbitmq.tls_url, tls=client_tls(rabbitmq),
                          sasl_mechanisms="EXTERNAL", timeout=TIMEOUT)
    assert info.value.mechanism is None


# ---- the Proton C example broker ---------------------------------------------------------------


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_proton_c_broker_over_tls(container: amqscale.Container,
                                  proton_c_broker: ProtonCBroker, unique_name: str,
                                  host: str) -> None:
    conn = connect_strictly(container, f"amqps://{host}:{proton_c_broker.port}",
                            tls=TLS(ca=proton_c_broker.ca_path))
    assert conn.security.tls_protocol == "TLSv1.3"
    assert conn.security.peer_subject == "CN=localhost"
    assert conn.security.sasl_mechanism == "ANONYMOUS"
    delivery = send_and_receive(conn, unique_name, b"to the C broker over tls")
    assert delivery.settled  # the broker pre-settles what it sends
    conn.close()


def test_proton_c_broker_refuses_an_unknown_ca(container: amqscale.Container,
                                               proton_c_broker: ProtonCBroker,
                                               tmp_path: Path) -> None:
    other = make_pki(tmp_path).other_ca
    with pytest.raises(TLSError, match="unable to get local issuer certificate"):
        container.connect(proton_c_broker.tls_url, tls=TLS(ca=other), timeout=TIMEOUT)


# ---- rhea ---------------------------------------------------------------------------------------


class TLSRheaPeer(RheaPeer):
    """`RheaPeer` listening with TLS only (rhea_peer.js --tls-cert/--tls-key), with the
    server certificate of a PKI of its own (`pki`, made at start)."""

    name = "rhea-tls"
    scheme = "amqps"

    def __init__(self, port: int = 0, *, record: int = 0) -> None:
        super().__init__(port, record=record)
        self.pki: PKI | None = None

    def prepare(self, workdir: Path) -> None:
        self.pki = make_pki(workdir / "certs")

    def command(self) -> list[str]:
        assert self.pki is not None
        return [*super().command(), "--tls-cert", str(self.pki.server.cert),
                "--tls-key", str(self.pki.server.key)]

    @property
    def ca(self) -> Path:
        assert self.pki is not None
        return self.pki.ca


@pytest.fixture(scope="module")
def rhea_tls() -> Iterator[TLSRheaPeer]:
    with TLSRheaPeer() as peer:
        yield peer


@pytest.mark.parametrize("mechanism", ["ANONYMOUS", "PLAIN"])
def test_rhea_over_tls(container: amqscale.Container, unique_name: str,
                       mechanism: str) -> None:
    body = f"to rhea over tls, {mechanism}".encode()
    credentials = {"user": "someone", "password": "anything",
                   "sasl_mechanisms": "PLAIN"} if mechanism == "PLAIN" else {}
    peer = TLSRheaPeer(record=10)
    with peer:
        conn = connect_strictly(container, f"amqps://localhost:{peer.port}",
                                tls=TLS(ca=peer.ca), **credentials)
        assert conn.security.tls_protocol == "TLSv1.3"
        assert conn.security.peer_subject == "CN=localhost"
        assert conn.security.sasl_mechanism == mechanism
        assert conn.security.user == credentials.get("user")
        assert conn.open_sender(unique_name).send(body).wait(TIMEOUT).accepted
        delivery = conn.open_receiver("count/1", credit=10).receive(timeout=TIMEOUT)
        assert delivery.message.body == "message-0"
        delivery.accept()
        conn.close()
    summary = peer.summary()
    assert summary is not None
    recorded = summary["addresses"][unique_name]
    assert recorded["received"] == 1
    assert recorded["bodies"][0]["content"] == {"binary": body.hex()}  # a data section


def test_rhea_tls_refuses_an_unknown_ca(container: amqscale.Container,
                                        rhea_tls: TLSRheaPeer) -> None:
    assert rhea_tls.pki is not None
    with pytest.raises(TLSError, match="unable to get local issuer certificate"):
        container.connect(rhea_tls.url, tls=TLS(ca=rhea_tls.pki.other_ca), timeout=TIMEOUT)


def test_rhea_tls_listener_refuses_plain_amqp(container: amqscale.Container,
                                              rhea_tls: TLSRheaPeer) -> None:
    with pytest.raises(ConnectionFailed) as info:
        container.connect(f"amqp://127.0.0.1:{rhea_tls.port}", timeout=TIMEOUT)
    assert not isinstance(info.value, (TLSError, AuthenticationError))
    assert "Expected SASL protocol header: no protocol header found" in str(info.value)
