"""amqscale with peers that are not amqscale: Proton C, proton-python and rhea."""

from __future__ import annotations

import subprocess
import threading

import pytest
from proton import Message as ProtonMessage
from proton.utils import BlockingConnection

import amqscale
from amqscale.testing.brokers import ProtonCBroker, RheaPeer


def _receive_all(receiver: amqscale.Receiver, count: int) -> list[amqscale.Message]:
    messages = []
    for _ in range(count):
        delivery = receiver.receive(timeout=60)
        messages.append(delivery.message)
        delivery.accept()
    return messages


@pytest.mark.interop("listen: inbound sender", "proton-c")
def test_receives_from_proton_c_send(proton_c_broker: ProtonCBroker) -> None:
    """The Proton C `send` example connects straight to an amqscale listener."""
    count = 2000
    with amqscale.Container(workers=2) as container:
        listener = container.listen("amqp://127.0.0.1:0")
        send = subprocess.Popen(
            [str(proton_c_broker.send_path), "127.0.0.1", str(listener.port), "examples",
             str(count)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        messages = _receive_all(listener.receiver, count)
        output, _ = send.communicate(timeout=60)
    assert send.returncode == 0, output
    assert f"{count} messages sent and acknowledged" in output
    assert sorted(m.id for m in messages) == list(range(1, count + 1))  # ids count from 1
    assert all(m.body == {"sequence": m.id} for m in messages)


def _proton_send(url: str, count: int, errors: list[BaseException]) -> None:
    try:
        conn = BlockingConnection(url, timeout=30)
        try:
            sender = conn.create_sender("from-proton")
            for i in range(count):  # each send() waits for its outcome
                sender.send(ProtonMessage(id=i, body=f"hello {i}", properties={"i": i}))
        finally:
            conn.close()
    except BaseException as exc:
        errors.append(exc)


@pytest.mark.interop("listen: inbound sender", "proton-python")
def test_receives_from_proton_python() -> None:
    errors: list[BaseException] = []
    with amqscale.Container(workers=1) as container:
        listener = container.listen("amqp://127.0.0.1:0")
        thread = threading.Thread(target=_proton_send, args=(listener.url, 100, errors))
        thread.start()
        messages = _receive_all(listener.receiver, 100)
        thread.join(60)
    assert errors == []
    assert [m.id for m in messages] == list(range(100))
    assert [m.body for m in messages] == [f"hello {i}" for i in range(100)]
    assert [m.properties for m in messages] == [{"i": i} for i in range(100)]


@pytest.mark.interop("send", "proton-c")
def test_sends_to_proton_c_receive(proton_c_broker: ProtonCBroker, unique_name: str) -> None:
    """amqscale -> the Proton C broker -> the Proton C `receive` example."""
    count = 500
    host, port = "127.0.0.1", str(proton_c_broker.port)
    receive = subprocess.Popen(
        [str(proton_c_broker.receive_path), host, port, unique_name, str(count)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        with amqscale.Container(workers=2) as container:
            conn = container.connect(proton_c_broker.url, shards=2)
            sender = conn.open_sender(unique_name)
            for i in range(count):
                sender.send(amqscale.Message(id=i, body={"sequence": i}))
            sender.flush(timeout=60)
            assert sender.counts == {0x24: count}
        output, _ = receive.communicate(timeout=60)
    finally:
        receive.kill()
    assert f"{count} messages received" in output, output
    assert '{"sequence"=0}' in output


@pytest.mark.interop("send", "rhea")
def test_sends_to_rhea(rhea_peer: RheaPeer, unique_name: str) -> None:
    count = 3000
    with amqscale.Container(workers=2) as container:
        conn = container.connect(rhea_peer.url, shards=3)
        sender = conn.open_sender(unique_name)
        for i in range(count):
            sender.send(amqscale.Message(id=i, body=f"body-{i}"))
        sender.flush(timeout=60)
        assert sender.counts == {0x24: count}
    stats = rhea_peer.stats()["addresses"][unique_name]
    assert stats["received"] == count
    recorded = stats["ids"]  # the first 1000 to arrive; shards interleave them
    assert len(recorded) == 1000 and len(set(recorded)) == 1000
    assert all(0 <= i < count for i in recorded)


@pytest.mark.interop("receive", "rhea")
def test_receives_from_rhea(rhea_peer: RheaPeer) -> None:
    with amqscale.Container(workers=1) as container:
        conn = container.connect(rhea_peer.url)
        receiver = conn.open_receiver("count/200", credit=50)
        messages = _receive_all(receiver, 200)
    assert [m.id for m in messages] == list(range(200))
    assert [m.body for m in messages] == [f"message-{i}" for i in range(200)]
