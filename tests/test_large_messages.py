"""Messages of any size, and batches larger than a ring record.

AMQP 1.0 sets no limit on a message's size unless a peer announces one; a message that
does not fit in one ring record must cross the rings in parts and arrive whole. A limit,
the user's or the peer's, gives MessageTooLarge at the call, with nothing sent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from proton_peers import Sink, wait_for

import amqscale
from amqscale.links import encode_body
from amqscale.testing.brokers import ProtonCBroker, RabbitMQ

MB = 1_000_000


def _bench(tmp_path: Path, *args: str, timeout: float = 120) -> dict[str, object]:
    out = tmp_path / "result.json"
    done = subprocess.run(
        [sys.executable, "-m", "amqscale.cli", "bench", "--json", str(out), *args],
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    tail = (done.stdout + done.stderr)[-2000:]
    assert done.returncode == 0, tail
    summary: dict[str, object] = json.loads(out.read_text())["summary"]
    summary["accepted"] = summary["outcomes"].get("accepted", 0)  # type: ignore[attr-defined]
    return summary


# The counts are smaller than issue 8's (20000, 20000, 200, 3 of 100 MB) to keep CI short.
BENCH_CASES = [
    pytest.param(["--size", "8192", "--batch", "1000", "--count", "20000"], id="8KiB-batch"),
    pytest.param(["--size", "40000", "--count", "2000"], id="40kB-one-per-call"),
    pytest.param(["--size", "1000000", "--count", "50"], id="1MB"),
    pytest.param(["--size", "10000000", "--count", "3"], id="10MB"),
]


@pytest.mark.timeout(150)
@pytest.mark.parametrize("args", BENCH_CASES)
def test_bench_large_messages_peer_to_peer(tmp_path: Path, args: list[str]) -> None:
    result = _bench(tmp_path, *args)
    count = int(args[args.index("--count") + 1])
    assert result["sent"] == result["received"] == result["accepted"] == count
    assert result["lost"] == result["duplicates"] == 0


@pytest.mark.timeout(150)
@pytest.mark.parametrize("args", [
    pytest.param(["--size", "40000", "--count", "500"], id="40kB"),
    pytest.param(["--size", "1000000", "--count", "10", "--batch", "5"], id="1MB-batch"),
])
def test_bench_large_messages_through_rabbitmq(tmp_path: Path, rabbitmq: RabbitMQ,
                                               unique_name: str, args: list[str]) -> None:
    result = _bench(tmp_path, "--url", rabbitmq.url, "--address", f"/queue/{unique_name}",
                    *args)
    count = int(args[args.index("--count") + 1])
    assert result["sent"] == result["received"] == result["accepted"] == count
    assert result["lost"] == result["duplicates"] == 0


def _big_message(seed: int) -> amqscale.Message:
    body = os.urandom(10 * MB)
    return amqscale.Message(
        id=f"big-{seed}", subject="ten megabytes", body=body,
        properties={"seed": seed, "blob": os.urandom(MB), "text": "é" * 100_000},
        annotations={amqscale.symbol("x-opt-big"): "a" * 50_000},
    )


def _assert_same(got: amqscale.Message, sent: amqscale.Message) -> None:
    assert got.id == sent.id
    assert got.subject == sent.subject
    assert got.body == sent.body  # bytes compared whole, not a prefix
    assert got.properties == sent.properties
    assert got.annotations == sent.annotations


@pytest.mark.timeout(60)
def test_ten_megabyte_message_peer_to_peer() -> None:
    sent = _big_message(1)
    small = amqscale.Message(id="small-after", body=b"s")
    with amqscale.Container(workers=1) as server, amqscale.Container(workers=1) as client:
        listener = server.listen("amqp://127.0.0.1:0")
        sender = client.connect(listener.url).open_sender("big")
        tracker = sender.send(sent, timeout=30)
        after = sender.send(small, timeout=30)  # a small one behind it is not stuck
        got = listener.receiver.receive(timeout=30)
        _assert_same(got.message, sent)
        assert got.payload == sent.encode()
        got.accept()
        follower = listener.receiver.receive(timeout=30)
        assert follower.message.id == "small-after"
        follower.accept()
        assert tracker.wait(30).accepted and after.wait(30).accepted


@pytest.mark.timeout(60)
def test_ten_megabyte_message_through_rabbitmq(rabbitmq: RabbitMQ, unique_name: str) -> None:
    sent = _big_message(2)
    address = f"/queue/{unique_name}"
    with amqscale.Container(workers=1) as container:
        conn = container.connect(rabbitmq.url)
        receiver = conn.open_receiver(address, credit=2)
        sender = conn.open_sender(address)
        assert sender.send(sent, timeout=30).wait(30).accepted
        got = receiver.receive(timeout=30)
        _assert_same(got.message, sent)
        got.accept()


def _megabyte_bodies_through(broker: ProtonCBroker, count: int) -> list[int]:
    """Send `count` 1 MiB bodies (each of one repeated byte) from one Container to the
    broker and receive them in another; the indexes of those that came back changed."""
    size = 1 << 20
    changed = []
    with amqscale.Container(workers=1) as receiving, amqscale.Container(workers=1) as sending:
        receiver = receiving.connect(broker.url).open_receiver("big", credit=10)
        sender = sending.connect(broker.url).open_sender("big")
        for i in range(count):
            sender.send(bytes([i % 250 + 1]) * size)
        for i in range(count):
            delivery = receiver.receive(timeout=30)
            if delivery.payload != encode_body(bytes([i % 250 + 1]) * size):
                changed.append(i)
            delivery.accept()
        sender.flush(timeout=30)
    return changed


@pytest.mark.timeout(120)
def test_megabyte_messages_through_the_proton_c_broker() -> None:
    """A large message's last part reaches the worker, and the wire, after its first: the
    broker then reads the message in more than one batch. The example broker as shipped
    kept only the last piece in front (ProtonCBroker's BROKER_PIECE_READ, built fixed);
    about one run in two of these 40 showed it."""
    with ProtonCBroker() as broker:
        assert _megabyte_bodies_through(broker, 40) == []


@pytest.mark.timeout(60)
def test_ten_megabyte_message_to_a_proton_python_peer() -> None:
    """An independent receiver: proton-python gets the message whole."""
    sent = _big_message(3)
    with Sink(credit=10, accept=True) as sink, amqscale.Container(workers=1) as client:
        sender = client.connect(sink.url).open_sender("big")
        assert sender.send(sent, timeout=30).wait(30).accepted
        wait_for(lambda: len(sink.messages) == 1, 10, "the message at the peer")
        got = sink.messages[0]
        assert got.id == sent.id and got.body == sent.body
        assert got.properties == sent.properties


@pytest.mark.timeout(60)
def test_message_over_the_senders_limit_is_refused_at_the_call() -> None:
    """open_sender(max_message_size=N): a message encoding to more than N bytes raises
    MessageTooLarge at send(), nothing is sent, and the sender keeps working.

    The parameter's name is the rebuild's choice; `max_message_size` mirrors the
    protocol's OpenLink.max_message_size and proton's Link.max_message_size."""
    with amqscale.Container(workers=1) as server, amqscale.Container(workers=1) as client:
        listener = server.listen("amqp://127.0.0.1:0")
        sender = client.connect(listener.url).open_sender(
            "limited", max_message_size=100_000)  # type: ignore[call-arg]
        with pytest.raises(amqscale.MessageTooLarge, match=r"100[,_ ]?000"):
            sender.send(b"x" * 100_001)
        with pytest.raises(amqscale.MessageTooLarge):
            sender.send_many([b"fits", b"y" * 200_000])  # a bad one in a batch: none sent
        assert sender.unsettled == []
        tracker = sender.send(amqscale.Message(id="fits", body=b"z" * 90_000))
        got = listener.receiver.receive(timeout=20)
        assert got.message.id == "fits"
        got.accept()
        assert tracker.wait(20).accepted
        with pytest.raises(TimeoutError):
            listener.receiver.receive(timeout=0.5)  # nothing else came


@pytest.mark.timeout(60)
def test_message_over_the_peers_announced_limit_is_refused_at_the_call() -> None:
    """A proton-python peer announces max-message-size 100000 in its attach: a larger
    message raises MessageTooLarge at send(), naming the limit; a smaller one goes."""
    with Sink(credit=10, accept=True, max_message_size=100_000) as sink, \
            amqscale.Container(workers=1) as client:
        sender = client.connect(sink.url).open_sender("limited")
        with pytest.raises(amqscale.MessageTooLarge, match=r"100[,_ ]?000"):
            sender.send(b"x" * 200_000)
        assert sender.unsettled == []
        assert sender.send(amqscale.Message(id="ok", body=b"y" * 50_000)).wait(20).accepted
        wait_for(lambda: len(sink.messages) == 1, 10, "the small message")
        assert [m.id for m in sink.messages] == ["ok"]


@pytest.mark.timeout(60)
def test_listener_limit_is_announced_to_an_amqscale_sender() -> None:
    """listen(max_message_size=N) announces N; an amqscale sender to it refuses larger
    messages at the call (parameter name: the rebuild's choice)."""
    with amqscale.Container(workers=1) as server, amqscale.Container(workers=1) as client:
        listener = server.listen("amqp://127.0.0.1:0",
                                 max_message_size=100_000)  # type: ignore[call-arg]
        sender = client.connect(listener.url).open_sender("limited")
        with pytest.raises(amqscale.MessageTooLarge):
            sender.send(b"x" * 200_000)
        assert sender.unsettled == []


@pytest.mark.timeout(60)
@pytest.mark.parametrize("shards", [1, 2])
def test_send_many_larger_than_a_ring_record(shards: int) -> None:
    """1000 x 8 KiB in one send_many (8 MB, more than a 4 MB ring record): every message
    arrives once and every Tracker settles accepted."""
    bodies = [i.to_bytes(4, "big") + os.urandom(8192 - 4) for i in range(1000)]
    with amqscale.Container(workers=shards) as server, \
            amqscale.Container(workers=shards) as client:
        listener = server.listen("amqp://127.0.0.1:0", credit=1000)
        sender = client.connect(listener.url, shards=shards).open_sender("many")
        trackers = sender.send_many(bodies, timeout=30)
        assert len(trackers) == 1000
        got: list[bytes] = []
        while len(got) < 1000:
            deliveries = listener.receiver.receive_many(limit=1000, timeout=30)
            got += deliveries.bodies
            deliveries.accept()
        assert sorted(got) == sorted(bodies)
        trackers.wait(timeout=30)
        assert trackers.settled and trackers.accepted
        assert trackers.counts() == {"accepted": 1000}
        assert sender.unsettled == []


@pytest.mark.timeout(60)
def test_send_many_of_big_messages_in_a_small_ring() -> None:
    """With a 256 KiB ring, a batch of 20 x 100 kB messages (each near half a record)."""
    bodies = [bytes([i]) * 100_000 for i in range(20)]
    with amqscale.Container(workers=1) as server, \
            amqscale.Container(workers=1, ring_capacity=256 * 1024) as client:
        listener = server.listen("amqp://127.0.0.1:0")
        sender = client.connect(listener.url).open_sender("many")
        trackers = sender.send_many(bodies, timeout=30)
        got: list[bytes] = []
        while len(got) < 20:
            deliveries = listener.receiver.receive_many(limit=100, timeout=30)
            got += deliveries.bodies
            deliveries.accept()
        assert got == bodies  # one link: in order
        assert trackers.wait(timeout=30).accepted


@pytest.mark.timeout(60)
def test_large_inbound_message_to_a_small_ring() -> None:
    """A listener whose ring records hold 128 KiB receives a 1 MB message whole, and its
    worker lives (today the inbound event is larger than a record)."""
    body = os.urandom(MB)
    with amqscale.Container(workers=1, ring_capacity=256 * 1024) as server, \
            amqscale.Container(workers=1) as client:
        listener = server.listen("amqp://127.0.0.1:0")
        pids = server.worker_pids()
        sender = client.connect(listener.url).open_sender("in")
        tracker = sender.send(body, timeout=30)
        got = listener.receiver.receive(timeout=30)
        assert got.body == body
        got.accept()
        assert tracker.wait(30).accepted
        assert server.worker_pids() == pids
        assert len(server.worker_stats(timeout=10)) == 1  # the worker is alive
