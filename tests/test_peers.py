"""The test peers themselves, against real processes, with proton's BlockingConnection.

These pin down what the other tests rely on: each peer starts, carries messages, speaks TLS
and PLAIN where it should, refuses a wrong password, fails clearly on a taken port, and
leaves no process behind when stopped.
"""

from __future__ import annotations

import base64
import os
import secrets
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from cryptography import x509
from proton import ConnectionException, Message, SSLDomain
from proton.utils import BlockingConnection

from amqscale.testing import (
    ManagedProcess,
    PeerStartError,
    ProtonCBroker,
    RabbitMQ,
    RheaPeer,
    build_proton_examples,
    free_port,
    make_certificates,
)
from amqscale.testing.brokers import password_hash

TIMEOUT = 30


def link_name(kind: str) -> str:
    """Unique link names: rhea drops a session holding two links of the same name."""
    return f"{kind}-{secrets.token_hex(4)}"


def tls_domain(ca: Path) -> SSLDomain:
    domain = SSLDomain(SSLDomain.MODE_CLIENT)
    domain.set_trusted_ca_db(str(ca))
    domain.set_peer_authentication(SSLDomain.VERIFY_PEER_NAME)
    return domain


def send(conn: BlockingConnection, address: str, bodies: list[Any]) -> None:
    sender = conn.create_sender(address, name=link_name("sender"))
    for i, body in enumerate(bodies):
        sender.send(Message(id=i, body=body))
    # No sender.close(): RabbitMQ 3.10.8 answers detach(closed=true) with detach(closed=false),
    # which proton's BlockingLink.close waits on until it times out. Closing the connection
    # ends the links.


def receive(
    conn: BlockingConnection, address: str, count: int, *, presettled: bool = False
) -> list[Message]:
    """Receive `count` messages; `presettled`: the peer settles them (the C broker does)."""
    receiver = conn.create_receiver(address, name=link_name("receiver"), credit=count)
    messages = []
    for _ in range(count):
        messages.append(receiver.receive(timeout=TIMEOUT))
        if not presettled:
            receiver.accept()
    return messages  # not closed: see send()


def roundtrip(
    url: str, address: str, count: int = 3, *, presettled: bool = False, **kwargs: Any
) -> list[Any]:
    """Send `count` messages to `address`, receive them back, return their bodies."""
    bodies = [f"{address}-{i}" for i in range(count)]
    conn = BlockingConnection(url, timeout=TIMEOUT, **kwargs)
    try:
        send(conn, address, bodies)
        got = [m.body for m in receive(conn, address, count, presettled=presettled)]
    finally:
        conn.close()
    assert got == bodies
    return got


def run_c(program: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(program), *args], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture
def queue() -> str:
    return f"q-{secrets.token_hex(4)}"


# RabbitMQ.
def test_rabbitmq_queue_roundtrip(rabbitmq: RabbitMQ, queue: str) -> None:
    roundtrip(rabbitmq.url, f"/queue/{queue}")


def test_rabbitmq_listens_on_ipv6_loopback(rabbitmq: RabbitMQ, queue: str) -> None:
    roundtrip(f"amqp://[::1]:{rabbitmq.port}", f"/queue/{queue}")


def test_rabbitmq_tls_with_the_ca(rabbitmq: RabbitMQ, queue: str) -> None:
    roundtrip(rabbitmq.tls_url, f"/queue/{queue}", ssl_domain=tls_domain(rabbitmq.ca_path))


def test_rabbitmq_tls_rejects_an_unknown_ca(rabbitmq: RabbitMQ, tmp_path: Path) -> None:
    other_ca = make_certificates(tmp_path).ca
    with pytest.raises(ConnectionException):
        BlockingConnection(rabbitmq.tls_url, timeout=TIMEOUT, ssl_domain=tls_domain(other_ca))


@pytest.mark.parametrize("who", ["amqscale", "guest"])
def test_rabbitmq_plain_password(rabbitmq: RabbitMQ, queue: str, who: str) -> None:
    user, password = (rabbitmq.user, rabbitmq.password) if who == "amqscale" else ("guest", "guest")
    roundtrip(rabbitmq.url, f"/queue/{queue}", user=user, password=password, allowed_mechs="PLAIN")


def test_rabbitmq_wrong_password_is_unauthorized(rabbitmq: RabbitMQ) -> None:
    with pytest.raises(ConnectionException, match="amqp:unauthorized-access"):
        BlockingConnection(
            rabbitmq.url,
            timeout=TIMEOUT,
            user=rabbitmq.user,
            password="not-the-password",
            allowed_mechs="PLAIN",
        )


def test_rabbitmq_declare_list_delete_queue(rabbitmq: RabbitMQ, queue: str) -> None:
    rabbitmq.declare_queue(queue)
    assert rabbitmq.list_queues()[queue] == 0
    conn = BlockingConnection(rabbitmq.url, timeout=TIMEOUT)
    try:
        send(conn, f"/amq/queue/{queue}", ["a", "b"])  # /amq/queue/ needs an existing queue
    finally:
        conn.close()
    assert rabbitmq.list_queues()[queue] == 2
    rabbitmq.delete_queue(queue)
    assert queue not in rabbitmq.list_queues()


def test_password_hash_is_rabbitmq_sha256() -> None:
    import hashlib

    raw = base64.b64decode(password_hash("secret"))
    salt, digest = raw[:4], raw[4:]
    assert digest == hashlib.sha256(salt + b"secret").digest()


# The Proton C broker and its send/receive examples.
def test_proton_c_broker_roundtrip(proton_c_broker: ProtonCBroker, queue: str) -> None:
    roundtrip(proton_c_broker.url, queue, count=5, presettled=True)


def test_proton_c_broker_tls(proton_c_broker: ProtonCBroker, queue: str) -> None:
    domain = tls_domain(proton_c_broker.ca_path)
    roundtrip(proton_c_broker.tls_url, queue, presettled=True, ssl_domain=domain)


def test_c_send_to_proton_receiver(proton_c_broker: ProtonCBroker, queue: str) -> None:
    out = run_c(proton_c_broker.send_path, "127.0.0.1", str(proton_c_broker.port), queue, "4")
    assert "4 messages sent and acknowledged" in out.stdout
    conn = BlockingConnection(proton_c_broker.url, timeout=TIMEOUT)
    try:
        messages = receive(conn, queue, 4, presettled=True)
    finally:
        conn.close()
    assert [m.body for m in messages] == [{"sequence": i} for i in range(1, 5)]
    assert [m.id for m in messages] == [1, 2, 3, 4]


def test_proton_sender_to_c_receive(proton_c_broker: ProtonCBroker, queue: str) -> None:
    conn = BlockingConnection(proton_c_broker.url, timeout=TIMEOUT)
    try:
        send(conn, queue, ["x", "y", "z"])
    finally:
        conn.close()
    out = run_c(proton_c_broker.receive_path, "127.0.0.1", str(proton_c_broker.port), queue, "3")
    assert out.stdout.splitlines() == ['"x"', '"y"', '"z"', "3 messages received"]


def test_broker_window_is_built_in(tmp_path: Path) -> None:
    built = build_proton_examples(window=7, directory=tmp_path)
    again = build_proton_examples(window=7, directory=tmp_path)
    assert built == again  # cached by content
    assert build_proton_examples(window=8, directory=tmp_path).broker != built.broker


# rhea.
def test_rhea_sink_counts_and_records(rhea_peer: RheaPeer, queue: str) -> None:
    conn = BlockingConnection(rhea_peer.url, timeout=TIMEOUT)
    try:
        send(conn, queue, ["one", "two", "three"])
    finally:
        conn.close()
    entry = rhea_peer.stats()["addresses"][queue]
    assert entry["received"] == 3
    assert entry["ids"] == [0, 1, 2]
    assert entry["bodies"] == ["one", "two", "three"]


def test_rhea_source_sends_count(rhea_peer: RheaPeer) -> None:
    conn = BlockingConnection(rhea_peer.url, timeout=TIMEOUT)
    try:
        messages = receive(conn, "count/5", 5)
    finally:
        conn.close()
    assert [m.body for m in messages] == [f"message-{i}" for i in range(5)]
    assert [m.id for m in messages] == list(range(5))


def test_rhea_source_pads_bodies(rhea_peer: RheaPeer) -> None:
    conn = BlockingConnection(rhea_peer.url, timeout=TIMEOUT)
    try:
        messages = receive(conn, "count/2/size/100", 2)
    finally:
        conn.close()
    assert [len(str(m.body)) for m in messages] == [100, 100]
    assert all(str(m.body).startswith("message-") for m in messages)


def test_rhea_with_sender_and_receiver_in_one_session(rhea_peer: RheaPeer, queue: str) -> None:
    conn = BlockingConnection(rhea_peer.url, timeout=TIMEOUT)
    try:
        send(conn, queue, ["a"])
        assert [m.body for m in receive(conn, "count/1", 1)] == ["message-0"]
    finally:
        conn.close()


def test_c_programs_against_rhea(rhea_peer: RheaPeer, queue: str) -> None:
    examples = build_proton_examples()
    run_c(examples.send, "127.0.0.1", str(rhea_peer.port), queue, "6")
    assert rhea_peer.stats()["addresses"][queue]["received"] == 6
    out = run_c(examples.receive, "127.0.0.1", str(rhea_peer.port), "count/3", "3")
    assert out.stdout.splitlines()[-1] == "3 messages received"


def test_rhea_summary_after_stop() -> None:
    peer = RheaPeer(record=2)
    with peer:
        conn = BlockingConnection(peer.url, timeout=TIMEOUT)
        try:
            send(conn, "sink", ["a", "b", "c"])
        finally:
            conn.close()
    summary = peer.summary()
    assert summary is not None
    assert summary["received"] == 3
    assert summary["addresses"]["sink"]["ids"] == [0, 1]  # only `record` of them kept


# Lifecycle: stopping, taken ports, failed starts, the CLI.
def assert_gone(procs: list[psutil.Process]) -> None:
    """Each process has exited (a reused pid is another process: is_running checks that)."""
    alive = [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert alive == []


def snapshot(peer: ManagedProcess) -> list[psutil.Process]:
    return [psutil.Process(pid) for pid in peer.pids()]


def test_rabbitmq_stop_leaves_nothing() -> None:
    broker = RabbitMQ()
    with broker:
        procs = snapshot(broker)
        names = {p.name() for p in procs}
        workdir = broker.workdir
        roundtrip(broker.url, "/queue/stop-test", count=1)
    assert {"beam.smp", "epmd"} <= names
    assert_gone(procs)
    assert workdir is not None and not workdir.exists()
    for port in (broker.port, broker.tls_port, broker.epmd_port, broker.dist_port):
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is fine
            sock.bind(("127.0.0.1", port))  # but nothing listens there any more


@pytest.mark.parametrize("peer_class", [ProtonCBroker, RheaPeer])
def test_stop_leaves_nothing(peer_class: type[ManagedProcess]) -> None:
    peer = peer_class()
    with peer:
        procs = snapshot(peer)
    assert procs
    assert_gone(procs)
    assert not peer.running
    peer.stop()  # idempotent


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.parametrize("peer_class", [RabbitMQ, ProtonCBroker, RheaPeer])
def test_taken_port_fails_clearly(peer_class: type[ManagedProcess], taken_port: int) -> None:
    peer = peer_class(taken_port)
    with pytest.raises(PeerStartError, match=f"port already in use: 127.0.0.1:{taken_port}"):
        peer.start()
    assert not peer.running


class _Crashing(ManagedProcess):
    name = "crashing"

    def command(self) -> list[str]:
        return ["sh", "-c", "echo cannot start: bad config; exit 3"]


def test_failed_start_names_the_log() -> None:
    peer = _Crashing()
    with pytest.raises(PeerStartError) as info:
        peer.start()
    message = str(info.value)
    assert "exited with code 3" in message
    assert "cannot start: bad config" in message
    assert str(peer.log_path) in message and peer.log_path.exists()
    assert peer.workdir is not None
    for path in sorted(peer.workdir.iterdir()):
        path.unlink()
    peer.workdir.rmdir()


def test_certificates_name_loopback_as_dns(tmp_path: Path) -> None:
    certs = make_certificates(tmp_path)
    cert = x509.load_pem_x509_certificate(certs.cert.read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"localhost", "127.0.0.1", "::1"} <= set(sans.get_values_for_type(x509.DNSName))
    assert oct(certs.key.stat().st_mode & 0o777) == "0o600"


def test_cli_runs_until_interrupted() -> None:
    port = free_port()
    cli = subprocess.Popen(
        [sys.executable, "-m", "amqscale.testing.brokers", "proton-c", "--port", str(port)],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert cli.stdout is not None
        first = cli.stdout.readline()
        assert f"amqp://127.0.0.1:{port}" in first
        broker = [p for p in psutil.Process(cli.pid).children() if p.name().startswith("broker")]
        roundtrip(f"amqp://127.0.0.1:{port}", "cli-test", count=1, presettled=True)
        cli.send_signal(signal.SIGINT)
        assert cli.wait(timeout=60) == 0
        assert broker and not any(p.is_running() for p in broker)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()


def test_package_exports_resolve() -> None:
    import amqscale.testing

    for name in amqscale.testing.__all__:
        assert getattr(amqscale.testing, name) is not None
