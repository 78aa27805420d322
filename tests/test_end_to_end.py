"""Messages through amqscale: 200,000 peer-to-peer, 100,000 via RabbitMQ and via the Proton
C broker (the brokers are the slow part: half the count keeps the suite in its budget).

Each run: one Container with 2 workers and 4 shards sends 100-byte messages with unique
ids, at-least-once; a receiver in another process takes them. Every id must arrive
exactly once and every tracker must end accepted.
"""

from __future__ import annotations

from collections import Counter

from support import ChildReceiver

import amqscale
from amqscale.testing.brokers import ProtonCBroker, RabbitMQ

COUNT = 200_000
BROKER_COUNT = 100_000
BODY = b"m" * 100


def _send_all(url: str, address: str, count: int) -> list[amqscale.Tracker]:
    with amqscale.Container(workers=2) as container:
        conn = container.connect(url, shards=4)
        sender = conn.open_sender(address)
        trackers = [sender.send(amqscale.Message(id=i, body=BODY)) for i in range(count)]
        sender.flush(timeout=300)
        sender.close()
        conn.close()
    return trackers


def _check(trackers: list[amqscale.Tracker], ids: list[object], count: int) -> None:
    outcomes = Counter(t.outcome for t in trackers)
    assert outcomes == {"accepted": count}, outcomes
    assert all(t.settled for t in trackers)
    duplicates = [i for i, n in Counter(ids).items() if n > 1]
    assert not duplicates, f"{len(duplicates)} ids arrived more than once"
    assert len(ids) == count and set(ids) == set(range(count))


def test_peer_to_peer() -> None:
    receiver = ChildReceiver(None, "p2p", COUNT, workers=2)
    try:
        trackers = _send_all(receiver.url, "p2p", COUNT)
        _check(trackers, receiver.result().ids, COUNT)
    finally:
        receiver.close()


def test_through_rabbitmq(rabbitmq: RabbitMQ, unique_name: str) -> None:
    receiver = ChildReceiver(rabbitmq.url, unique_name, BROKER_COUNT, workers=2, shards=4)
    try:
        trackers = _send_all(rabbitmq.url, unique_name, BROKER_COUNT)
        _check(trackers, receiver.result().ids, BROKER_COUNT)
    finally:
        receiver.close()


def test_through_proton_c_broker(proton_c_broker: ProtonCBroker, unique_name: str) -> None:
    receiver = ChildReceiver(proton_c_broker.url, unique_name, BROKER_COUNT, workers=2,
                             shards=4)
    try:
        trackers = _send_all(proton_c_broker.url, unique_name, BROKER_COUNT)
        result = receiver.result()
        _check(trackers, result.ids, BROKER_COUNT)
        # This broker pre-settles every delivery to its receivers (a known quirk).
        assert result.settled_by_sender == BROKER_COUNT
    finally:
        receiver.close()


def test_at_most_once_peer_to_peer() -> None:
    count = 20_000
    receiver = ChildReceiver(None, "amo", count)
    try:
        with amqscale.Container(workers=2) as container:
            conn = container.connect(receiver.url, shards=2)
            sender = conn.open_sender("amo", presettled=True)
            trackers = [sender.send(amqscale.Message(id=i, body=BODY)) for i in range(count)]
            sender.flush(timeout=60)
            assert all(t.settled and t.outcome is None for t in trackers)
        ids = receiver.result().ids
        assert sorted(ids) == list(range(count))  # loopback and a live peer: none lost
    finally:
        receiver.close()
