"""Bad input and broken peers: a clear exception at the call, nothing half-sent or left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
from support import ChildReceiver, shm_segments, wait_gone

import amqscale
from amqscale.testing._process import free_port
from amqscale.testing.brokers import RabbitMQ


@pytest.fixture(scope="module")
def container() -> amqscale.Container:
    with amqscale.Container(workers=2) as c:
        yield c


@pytest.mark.parametrize("url, words", [
    ("localhost:5672", "expected amqp://"),
    ("http://localhost:5672", "scheme 'http'"),
    ("amqp://:5672", "no host"),
    ("amqp://localhost:99999", "out of range"),
    ("amqp://localhost:abc", "abc"),
])
def test_malformed_url(container: amqscale.Container, url: str, words: str) -> None:
    with pytest.raises(amqscale.URLError, match=words):
        container.connect(url)


def test_unreachable_host(container: amqscale.Container) -> None:
    port = free_port()  # nothing listens there
    with pytest.raises(amqscale.ConnectionFailed, match=f"127.0.0.1:{port}") as info:
        container.connect(f"amqp://127.0.0.1:{port}", shards=2, timeout=30)
    assert "connect" in str(info.value)


def test_bad_arguments(container: amqscale.Container) -> None:
    with pytest.raises(ValueError, match="shards"):
        container.connect("amqp://127.0.0.1:5672", shards=0)
    with pytest.raises(ValueError, match="workers"):
        amqscale.Container(workers=0)


def test_refused_address(rabbitmq: RabbitMQ, unique_name: str,
                         container: amqscale.Container) -> None:
    conn = container.connect(rabbitmq.url)
    try:
        with pytest.raises(amqscale.LinkDetached, match="amqp:not-found") as info:
            conn.open_receiver(f"/amq/queue/{unique_name}-missing", timeout=30)
        assert info.value.condition == "amqp:not-found"
        # The connection is still good for an address that exists.
        sender = conn.open_sender(f"/queue/{unique_name}")
        assert sender.send(b"still fine").wait(30).accepted
    finally:
        conn.close()


def test_unsupported_body_is_refused_before_sending(container: amqscale.Container) -> None:
    receiver = ChildReceiver(None, "x", 1)
    try:
        conn = container.connect(receiver.url)
        sender = conn.open_sender("x")
        with pytest.raises(TypeError, match="set"):
            sender.send(amqscale.Message(body={1, 2}))
        with pytest.raises(TypeError, match="Message or bytes"):
            sender.send(42)  # type: ignore[arg-type]
        assert sender.unsettled == []  # nothing half-sent
        tracker = sender.send(amqscale.Message(id="after", body=b"ok"))
        assert tracker.wait(30).accepted
        assert receiver.result().ids == ["after"]
        conn.close()
    finally:
        receiver.close()


def test_messages_larger_than_the_ring_cross_in_parts_both_ways() -> None:
    big = amqscale.Message(id="big", body=bytes(range(256)) * 1000, properties={"k": 1})
    receiver = ChildReceiver(None, "big", 2, keep=2, workers=1, ring_capacity=64 * 1024)
    try:
        with amqscale.Container(workers=1, ring_capacity=64 * 1024) as small:
            conn = small.connect(receiver.url)
            sender = conn.open_sender("big")
            assert sender.send(big).wait(30).accepted  # 256 KB: 16 parts of a 16 KB record
            assert sender.send(amqscale.Message(id=1, body=b"y" * 1000)).wait(30).accepted
            assert sender.unsettled == []
        result = receiver.result()
        assert result.ids == ["big", 1]
        assert result.messages[0].body == big.body and result.messages[0].properties == {"k": 1}
    finally:
        receiver.close()


def test_worker_killed_mid_stream_the_other_shard_goes_on() -> None:
    receiver = ChildReceiver(None, "kill", 10**9, idle=30)
    try:
        container = amqscale.Container(workers=2, restart_workers=False)
        pids = container.worker_pids()
        conn = container.connect(receiver.url, shards=2)
        sender = conn.open_sender("kill")
        for _ in range(5000):
            sender.send(b"before")
        os.kill(pids[0], signal.SIGKILL)
        wait_gone(pids[:1])
        trackers = [sender.send(b"after") for _ in range(3000)]
        assert [str(f) for f in sender.failures] == [
            f"worker 0 died (exit code {-signal.SIGKILL}); its unsettled messages are kept"]
        # What the dead worker carried is kept, unsettled, for a later replay; the rest
        # went over the other shard, and flush() says how many were left behind.
        try:
            sender.flush(timeout=30)
            failure = None
        except amqscale.WorkerDied as exc:
            failure = exc
        lost = sender.unsettled
        assert (failure is None) == (not lost)
        assert failure is None or f"{len(lost)} message(s) unsettled" in str(failure)
        assert all(not t.settled and t.payload for t in lost)
        # Sent after the kill: accepted over shard 1, or (handed to worker 0 before its
        # death was noticed) listed for replay.
        listed = {(t._batch, t._index) for t in lost}
        assert all(t.accepted or (t._batch, t._index) in listed for t in trackers)
        assert sum(t.accepted for t in trackers) >= 1500
        container.close()
        assert wait_gone(pids) == []
        assert shm_segments() == set()
    finally:
        receiver.close()


_ORPHAN = textwrap.dedent("""
    import sys, amqscale
    c = amqscale.Container(workers=2)
    print(" ".join(map(str, c.worker_pids())), flush=True)
    sys.stdin.read()
""")


def test_user_process_killed_leaves_nothing() -> None:
    before = shm_segments()
    child = subprocess.Popen([sys.executable, "-c", _ORPHAN], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    pids = [int(pid) for pid in child.stdout.readline().split()]
    assert len(pids) == 2 and wait_gone(pids, timeout=0) == pids
    child.kill()
    child.wait()
    assert wait_gone(pids, timeout=10) == []
    assert shm_segments() - before == set()


def test_send_blocks_on_a_full_window_then_times_out_without_sending() -> None:
    with amqscale.Container(workers=1) as server, amqscale.Container(workers=1) as client:
        listener = server.listen("amqp://127.0.0.1:0", credit=5)
        sender = client.connect(listener.url).open_sender("full", window=8)
        for _ in range(8):
            sender.send(b"fits")
        with pytest.raises(TimeoutError, match="room in the window"):
            sender.send(b"no room", timeout=0.3)
        assert len(sender.unsettled) == 8  # the ninth was not taken
        # Once the receiver settles, the window opens again.
        for _ in range(5):
            listener.receiver.receive(timeout=30).accept()
        assert sender.send(b"room again", timeout=30).payload is not None


def test_plain_credentials_and_a_wrong_password(rabbitmq: RabbitMQ, unique_name: str,
                                                container: amqscale.Container) -> None:
    host = f"127.0.0.1:{rabbitmq.port}"
    conn = container.connect(f"amqp://{rabbitmq.user}:{rabbitmq.password}@{host}",
                             allow_insecure_mechanisms=True)
    assert conn.security.sasl_mechanism == "PLAIN" and conn.security.user == rabbitmq.user
    assert conn.open_sender(f"/queue/{unique_name}").send(b"plain").wait(30).accepted
    conn.close()
    with pytest.raises(amqscale.AuthenticationError, match="unauthorized") as info:
        container.connect(f"amqp://{rabbitmq.user}:wrong-password@{host}", timeout=30,
                          allow_insecure_mechanisms=True)
    assert "wrong-password" not in str(info.value)
    assert info.value.mechanism == "PLAIN" and info.value.outcome == "auth"


def test_plain_is_not_sent_in_cleartext_unless_allowed(
        rabbitmq: RabbitMQ, container: amqscale.Container) -> None:
    url = f"amqp://{rabbitmq.user}:{rabbitmq.password}@127.0.0.1:{rabbitmq.port}"
    with pytest.raises(amqscale.AuthenticationError, match="PLAIN is used only over TLS"):
        container.connect(url, timeout=30)  # RabbitMQ offers PLAIN only (no SCRAM)
    with pytest.raises(ValueError, match="cleartext"):
        container.connect(url, sasl_mechanisms="PLAIN")


def test_passwords_stay_out_of_reprs() -> None:
    from amqscale.url import parse_url
    from amqscale.workers.protocol import OpenConnection

    url = parse_url("amqp://me:s3cret@127.0.0.1:5672")
    command = OpenConnection(1, "127.0.0.1", 5672, "c", user="me", password="s3cret")
    for text in (repr(url), str(url), repr(command)):
        assert "s3cret" not in text and "me" in text
